//! A client's websocket as both paths use it, below the front door that
//! opens it (`http/upgrade.rs`): the socket type, its close, and what an
//! open one holds of the proxy's admission.

use futures_util::SinkExt;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A server-side websocket over an upgraded HTTP connection.
pub type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// How long a close frame may take to leave before the connection is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends a close frame (reason cut to the protocol's 123 bytes) and closes.
pub async fn close(ws: &mut Ws, code: CloseCode, reason: &str) {
    // Close reasons are limited to 123 bytes by the protocol.
    let mut r = reason.to_owned();
    while r.len() > 123 {
        r.pop();
    }
    // A client that reads nothing would hold this forever: bounded.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = ws
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: r.into(),
            })))
            .await;
        let _ = ws.close(None).await;
    })
    .await;
}

/// Places the proxy's admission gave a connection (its connection place,
/// its place among `--max-clients`, its handshake place): each is given
/// back when dropped.
pub type Held = Box<dyn Send + Sync>;

/// An open websocket and what it holds.
pub struct Opened {
    pub ws: Ws,
    /// The TCP socket under it, for liveness by progress.
    pub socket: Option<crate::liveness::Socket>,
    /// Held for the websocket's life: its connection place and its place
    /// among `--max-clients`.
    pub places: Held,
    /// Held until its subscription is made: its handshake place.
    pub handshake: Held,
}
