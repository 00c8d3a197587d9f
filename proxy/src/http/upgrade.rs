//! The websocket upgrade: is the request one the server can take (a
//! websocket key, room for another client), the `101 Switching Protocols`
//! answer, and the socket once hyper hands the connection over.

use super::{json_error, unavailable, AppState, ClientAddr, ClientSocket, Resp};
use crate::http::listener::{Handshake, Place};
use crate::metrics::Metrics;
use axum::body::Body;
use axum::extract::Request;
use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

pub use crate::ws::{close, Opened, Ws};

/// Checks the address's upgrade rate, then takes a handshake place: the
/// handshake, or the answer (429 or 503).
pub fn begin(req: &Request, state: &AppState) -> Result<Handshake, Box<Resp>> {
    if let Some(ClientAddr(addr)) = req.extensions().get::<ClientAddr>().copied() {
        if !state.connections.upgrade_allowed(addr) {
            let mut r = json_error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many websocket connections from this address; retry in a second (--max-upgrades-per-address)",
                None,
            );
            r.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
            return Err(Box::new(r));
        }
    }
    state
        .connections
        .begin_handshake()
        .ok_or_else(|| Box::new(too_many_handshakes()))
}

/// The answer when `--max-handshakes` upgrades are in flight.
pub fn too_many_handshakes() -> Resp {
    unavailable(
        "too many websocket handshakes in progress; retry in a moment",
        "1",
    )
}

/// An accepted websocket upgrade, until the connection is handed over.
pub struct Upgrade {
    /// The `Sec-WebSocket-Accept` value of the 101 answer.
    pub accept: String,
    on_upgrade: hyper::upgrade::OnUpgrade,
    place: Option<Place>,
    handshake: Handshake,
    client: OwnedSemaphorePermit,
    socket: Option<crate::liveness::Socket>,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Upgrade {
    /// The websocket, once the 101 answer is out; `None` when the client
    /// left or took longer than the handshake timeout.
    pub async fn open(self) -> Option<Opened> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.on_upgrade).await {
            Ok(Ok(upgraded)) => Some(Opened {
                ws: server_socket(upgraded).await,
                socket: self.socket,
                places: Box::new((self.place, self.client)),
                handshake: Box::new(self.handshake),
            }),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                None
            }
            Err(_) => {
                self.metrics
                    .connections
                    .timed_out_handshake
                    .fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

/// Checks that `req` is a websocket upgrade the server can take; returns
/// the pending upgrade, or the error response.
pub fn accept_upgrade(
    req: &mut Request,
    state: &AppState,
    handshake: Handshake,
) -> Result<Upgrade, Box<Resp>> {
    let key = req.headers().get("sec-websocket-key").cloned();
    let is_upgrade = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = key.filter(|_| is_upgrade) else {
        return Err(Box::new(json_error(
            StatusCode::BAD_REQUEST,
            "this endpoint speaks websocket: connect with a websocket client (e.g. new WebSocket('ws://host/ws?query=insert:users'))",
            None,
        )));
    };
    // A place among --max-clients, held by the websocket for its life:
    // no two upgrades can take the last one.
    let Ok(client) = state.clients.clone().try_acquire_owned() else {
        state
            .metrics
            .connections
            .refused_clients
            .fetch_add(1, Ordering::Relaxed);
        return Err(Box::new(unavailable(
            "too many clients; try again later",
            "5",
        )));
    };
    Ok(Upgrade {
        accept: derive_accept_key(key.as_bytes()),
        on_upgrade: hyper::upgrade::on(&mut *req),
        place: req
            .extensions()
            .get::<ClientAddr>()
            .map(|a| state.connections.hold(a.0)),
        handshake,
        client,
        socket: req.extensions().get::<ClientSocket>().map(|s| s.0),
        timeout: state.timeouts.handshake,
        metrics: state.metrics.clone(),
    })
}

/// The websocket over an upgraded connection. Clients only send small
/// frames (pongs, ACKs, a subscription, a token): a 1 KiB read buffer (it
/// grows for a larger frame) and a message cap keep memory per client low
/// and bounded; 4 KiB cost 3 KB more per idle client, and left the heap
/// fragmented (docs/benchmarks.md).
async fn server_socket(upgraded: hyper::upgrade::Upgraded) -> Ws {
    let config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(32 * 1024)
        .max_message_size(Some(64 * 1024))
        .max_frame_size(Some(64 * 1024));
    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await
}

/// The `101 Switching Protocols` answer.
pub fn switching_protocols(accept: &str) -> Resp {
    let mut r = Resp::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(accept) {
        h.insert("sec-websocket-accept", v);
    }
    r
}
