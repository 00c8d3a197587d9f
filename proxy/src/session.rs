//! One websocket client's loop: receive its subscription, forward the
//! matching changes as text frames (the plugin's bytes unchanged), and close
//! with a code and reason when it falls behind, the stream stops or the
//! server shuts down.

use crate::hub::{Hub, Kick, Subscription};
use crate::metrics::Metrics;
use crate::query::{self, Query};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// Frames written before each flush when a client has a backlog.
const MAX_BATCH: usize = 512;

/// How long a client may take to send its subscription frame.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

async fn close(ws: &mut Ws, code: CloseCode, reason: &str) {
    // Close reasons are limited to 123 bytes by the protocol.
    let mut r = reason.to_owned();
    while r.len() > 123 {
        r.pop();
    }
    let _ = ws
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: r.into(),
        })))
        .await;
    let _ = ws.close(None).await;
}

async fn error_frame(ws: &mut Ws, err: &query::QueryError) {
    let body = serde_json::json!({"error": err.message, "position": err.position});
    let _ = ws.send(Message::Text(body.to_string().into())).await;
}

/// Reads `{"subscribe":{"query":"..."}}` as the first text frame.
async fn first_frame_query(ws: &mut Ws) -> Result<Query, String> {
    let msg = tokio::time::timeout(SUBSCRIBE_TIMEOUT, ws.next())
        .await
        .map_err(|_| {
            "no subscription within 10 s: send {\"subscribe\":{\"query\":\"...\"}} first".to_owned()
        })?;
    let text = match msg {
        Some(Ok(Message::Text(t))) => t,
        _ => return Err("expected a text frame {\"subscribe\":{\"query\":\"...\"}}".into()),
    };
    let v: serde_json::Value = serde_json::from_str(text.as_str())
        .map_err(|e| format!("subscription frame is not JSON: {e}"))?;
    let q = v
        .get("subscribe")
        .and_then(|s| s.get("query"))
        .and_then(|q| q.as_str())
        .ok_or_else(|| "subscription frame needs {\"subscribe\":{\"query\":\"...\"}}".to_owned())?;
    match query::parse(q) {
        Ok(q) => Ok(q),
        Err(e) => {
            error_frame(ws, &e).await;
            Err(format!("invalid query: {e}"))
        }
    }
}

/// Serves one client until it leaves, is disconnected or the server stops.
///
/// `sub` is the subscription made before the upgrade was answered (query in
/// the URL), so no change committed after the client saw the upgrade is
/// missed; without one the client's first frame names the query.
pub async fn run(
    mut ws: Ws,
    hub: Hub,
    sub: Option<Subscription>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sub = match sub {
        Some(s) => s,
        None => match first_frame_query(&mut ws).await {
            Ok(q) => hub.subscribe(q),
            Err(reason) => {
                close(&mut ws, CloseCode::Policy, &reason).await;
                return;
            }
        },
    };
    metrics.clients.fetch_add(1, Ordering::Relaxed);
    loop {
        tokio::select! {
            change = sub.rx.recv() => match change {
                Some(first) => {
                    // Write everything already queued, then flush once: one
                    // syscall for a burst instead of one per frame.
                    let (mut next, mut taken, mut sent, mut failed) = (Some(first), 0, 0u64, false);
                    while let Some(change) = next.take() {
                        taken += 1;
                        if let Ok(text) = Utf8Bytes::try_from(change.raw.clone()) {
                            if ws.feed(Message::Text(text)).await.is_err() {
                                failed = true;
                                break;
                            }
                            sent += 1;
                        }
                        if taken < MAX_BATCH {
                            next = sub.rx.try_recv().ok();
                        }
                    }
                    if failed || ws.flush().await.is_err() {
                        break;
                    }
                    metrics.frames_out.fetch_add(sent, Ordering::Relaxed);
                }
                None => {
                    match sub.kick_reason() {
                        Some(Kick::Lagging { bound }) => {
                            let reason = format!("too slow: {bound} changes were waiting for this client (the queue bound); reconnect");
                            close(&mut ws, CloseCode::Again, &reason).await;
                        }
                        Some(Kick::Closed { reason }) => close(&mut ws, CloseCode::Error, &reason).await,
                        None => close(&mut ws, CloseCode::Away, "stream ended").await,
                    }
                    break;
                }
            },
            msg = ws.next() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            },
            _ = shutdown.changed() => {
                close(&mut ws, CloseCode::Away, "server shutting down").await;
                break;
            }
        }
    }
    metrics.clients.fetch_sub(1, Ordering::Relaxed);
}
