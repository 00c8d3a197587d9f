//! One websocket client's loop: receive its subscription, forward the
//! matching changes as text frames (the plugin's bytes unchanged), and close
//! with a code and reason when it falls behind, the stream stops or the
//! server shuts down.

use crate::change::Change;
use crate::filter::{FilterInstance, Filters, Verdict, BATCH_EVENTS};
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

/// A server-side websocket over an upgraded HTTP connection.
pub(crate) type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// Frames written before each flush when a client has a backlog.
const MAX_BATCH: usize = 512;

/// How long a client may take to send its subscription frame.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends a close frame (reason cut to the protocol's 123 bytes) and closes.
pub(crate) async fn close(ws: &mut Ws, code: CloseCode, reason: &str) {
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

/// What a first frame asks for.
struct FirstFrame {
    query: Option<Query>,
    filter: Option<(String, Vec<u8>)>,
}

/// The bytes given to `walcast_init`: a JSON string's content, or the
/// compact JSON text of any other value.
pub fn config_bytes(v: &serde_json::Value) -> Vec<u8> {
    match v {
        serde_json::Value::String(s) => s.as_bytes().to_vec(),
        serde_json::Value::Null => Vec::new(),
        other => other.to_string().into_bytes(),
    }
}

/// Reads `{"subscribe":{"query":"...","filter":{"id":"sha256:...","config":...}}}`
/// as the first text frame.
async fn first_frame(ws: &mut Ws) -> Result<FirstFrame, String> {
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
    let sub = v.get("subscribe");
    let q = sub.and_then(|s| s.get("query")).and_then(|q| q.as_str());
    let filter = match sub.and_then(|s| s.get("filter")) {
        None => None,
        Some(f) => {
            let id = f
                .get("id")
                .and_then(|i| i.as_str())
                .ok_or("the filter needs an \"id\" (from POST /v1/filters)")?;
            let config = f.get("config").map(config_bytes).unwrap_or_default();
            Some((id.to_owned(), config))
        }
    };
    if q.is_none() && filter.is_none() {
        return Err(
            "subscription frame needs {\"subscribe\":{\"query\":\"...\"}} and/or a \"filter\""
                .into(),
        );
    }
    let query = match q.map(query::parse) {
        None => None,
        Some(Ok(q)) => Some(q),
        Some(Err(e)) => {
            error_frame(ws, &e).await;
            return Err(format!("invalid query: {e}"));
        }
    };
    Ok(FirstFrame { query, filter })
}

/// What a change becomes for one client.
pub(crate) enum Outcome {
    Send(Utf8Bytes),
    Skip,
    /// A filter error frame, then go on.
    Report(String),
    /// A filter error frame, then close 1008 with the reason.
    Detach(String, String),
}

/// A change for a client without a filter.
fn unfiltered(change: &Change) -> Outcome {
    match Utf8Bytes::try_from(change.raw.clone()) {
        Ok(t) => Outcome::Send(t),
        Err(_) => Outcome::Skip,
    }
}

/// Runs the client's filter (if any) on a change.
pub(crate) fn filter_change(
    filter: Option<&mut FilterInstance>,
    change: &Change,
    metrics: &Metrics,
) -> Outcome {
    match filter {
        None => unfiltered(change),
        Some(f) => outcome(change, f.run(change), metrics),
    }
}

/// What the filter's verdict on `change` makes of it.
fn outcome(change: &Change, verdict: Verdict, metrics: &Metrics) -> Outcome {
    metrics.filter_events.fetch_add(1, Ordering::Relaxed);
    let frame = |code: &str, message: &str| {
        serde_json::json!({
            "type": "filter_error",
            "code": code,
            "message": message,
            "lsn": change.lsn.to_string(),
        })
        .to_string()
    };
    match verdict {
        Verdict::Drop => Outcome::Skip,
        Verdict::Keep => unfiltered(change),
        Verdict::Replace(out) => match String::from_utf8(out) {
            Ok(s) => Outcome::Send(s.into()),
            Err(_) => Outcome::Skip,
        },
        Verdict::Failed(e) => {
            metrics.filter_errors.fetch_add(1, Ordering::Relaxed);
            Outcome::Report(frame(e.code.as_str(), &e.message))
        }
        Verdict::Detached(e) => {
            metrics.filter_errors.fetch_add(1, Ordering::Relaxed);
            metrics.filters_detached.fetch_add(1, Ordering::Relaxed);
            Outcome::Detach(frame(e.code.as_str(), &e.message), e.message)
        }
    }
}

/// Opens a filter for a subscription: `Err((code, message))` when the id
/// is unknown or the module cannot start with this config.
pub fn open_filter(
    filters: &Filters,
    id: &str,
    config: Vec<u8>,
) -> Result<FilterInstance, (&'static str, String)> {
    let module = filters.get(id).ok_or_else(|| {
        (
            "FILTER_NOT_FOUND",
            format!("no filter {id:?} on this proxy: upload it with POST /v1/filters"),
        )
    })?;
    FilterInstance::new(filters, module, config).map_err(|e| (e.code.as_str(), e.message))
}

/// How a session starts: subscribed before the upgrade was answered (URL
/// parameters), or waiting for the client's first frame.
pub enum Start {
    Ready(Subscription, Option<Box<FilterInstance>>),
    FirstFrame,
}

/// What every session shares.
#[derive(Clone)]
pub struct Context {
    pub hub: Hub,
    pub filters: Arc<Filters>,
    pub metrics: Arc<Metrics>,
    pub shutdown: watch::Receiver<bool>,
}

async fn error_close(ws: &mut Ws, code: &str, message: &str) {
    let body = serde_json::json!({"error": message, "code": code});
    let _ = ws.send(Message::Text(body.to_string().into())).await;
    close(ws, CloseCode::Policy, message).await;
}

/// Serves one client until it leaves, is disconnected or the server stops.
///
/// With [`Start::Ready`] the subscription was made before the upgrade was
/// answered (query in the URL), so no change committed after the client saw
/// the upgrade is missed; otherwise the client's first frame names the
/// query and/or the filter.
pub async fn run(mut ws: Ws, start: Start, ctx: Context) {
    let Context {
        hub,
        filters,
        metrics,
        mut shutdown,
    } = ctx;
    let (mut sub, mut filter) = match start {
        Start::Ready(s, f) => (s, f.map(|f| *f)),
        Start::FirstFrame => match first_frame(&mut ws).await {
            Ok(first) => {
                let filter = match first.filter {
                    None => None,
                    Some((id, config)) => match open_filter(&filters, &id, config) {
                        Ok(f) => Some(f),
                        Err((code, message)) => {
                            error_close(&mut ws, code, &message).await;
                            return;
                        }
                    },
                };
                let sub = match first.query {
                    Some(q) => hub.subscribe(q),
                    None => hub.subscribe_all(),
                };
                (sub, filter)
            }
            Err(reason) => {
                close(&mut ws, CloseCode::Policy, &reason).await;
                return;
            }
        },
    };
    metrics.clients.fetch_add(1, Ordering::Relaxed);
    // Grown by the bursts that come, not reserved up front: idle clients
    // cost nothing.
    let (mut burst, mut verdicts) = (Vec::new(), Vec::new());
    'serve: loop {
        tokio::select! {
            change = sub.rx.recv() => match change {
                Some(first) => {
                    // Take everything already queued (up to MAX_BATCH),
                    // write it, then flush once: one syscall for a burst
                    // instead of one per frame.
                    burst.clear();
                    burst.push(first);
                    while burst.len() < MAX_BATCH {
                        match sub.rx.try_recv() {
                            Ok(change) => burst.push(change),
                            Err(_) => break,
                        }
                    }
                    let mut sent = 0u64;
                    for chunk in burst.chunks(BATCH_EVENTS) {
                        if let Some(f) = filter.as_mut() {
                            if let Some(wait) = f.throttle() {
                                // The filter used its CPU budget for this second.
                                if ws.flush().await.is_err() {
                                    break 'serve;
                                }
                                tokio::time::sleep(wait).await;
                            }
                            f.run_batch(chunk, &mut verdicts);
                        }
                        let mut judged = verdicts.drain(..);
                        for change in chunk {
                            let outcome = match filter {
                                None => unfiltered(change),
                                Some(_) => match judged.next() {
                                    Some(v) => outcome(change, v, &metrics),
                                    None => break,
                                },
                            };
                            let text = match outcome {
                                Outcome::Send(text) => text,
                                Outcome::Skip => continue,
                                Outcome::Report(frame) => frame.into(),
                                Outcome::Detach(frame, reason) => {
                                    let _ = ws.send(Message::Text(frame.into())).await;
                                    close(&mut ws, CloseCode::Policy, &reason).await;
                                    break 'serve;
                                }
                            };
                            if ws.feed(Message::Text(text)).await.is_err() {
                                break 'serve;
                            }
                            sent += 1;
                        }
                    }
                    if ws.flush().await.is_err() {
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
