//! A client for walcast-proxy, for Rust services on tokio: live
//! subscriptions ([`Subscription`]) and durable streams ([`Durable`]).
//!
//! ```no_run
//! # async fn run() -> Result<(), walcast_client::Error> {
//! use walcast_client::{Frame, Options, Subscription};
//!
//! let mut sub = Subscription::new("ws://localhost:8080", "insert:orders", Options::default())?;
//! while let Some(frame) = sub.next().await? {
//!     if let Frame::Change(change) = frame {
//!         println!("{} {:?}", change.action, change.columns);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! A subscription connects when first read, subscribes in its first frame,
//! and after a dropped connection reconnects with jittered backoff, resuming
//! after the position of the last change it returned: every change once, in
//! order. It reads from the socket only when the application asks for the
//! next frame, so a slow application holds no backlog in this process (the
//! proxy keeps the changes in its log, up to its `--buffer-size`).
//!
//! A live view ([`View`]) keeps the rows a filtered query selects, by key:
//! it applies every frame of a snapshot subscription, including the
//! deletes and leaves of rows it holds, and reads its rows again after a
//! dropped connection:
//!
//! ```no_run
//! # async fn run() -> Result<(), walcast_client::Error> {
//! use walcast_client::{Options, View, ViewEvent};
//!
//! let mut view = View::new("ws://localhost:8080", "*:orders:status.eq.open", &["id"], Options::default())?;
//! while let Some(event) = view.next().await? {
//!     match event {
//!         ViewEvent::Put { key, row } => println!("{key}: {row:?}"),
//!         ViewEvent::Remove { key, .. } => println!("{key} gone"),
//!         ViewEvent::Ready => println!("{} rows", view.rows().len()),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! A durable stream is a replication slot of its own: changes are kept in
//! PostgreSQL until the application ACKs them, so none is lost across
//! restarts of the application or the proxy (at least once):
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use walcast_client::{Create, Durable, DurableOptions, Event, StreamOptions};
//!
//! let api = Durable::new("http://localhost:8080", DurableOptions::default())?;
//! let created = api.create(&Create { name: Some("orders".into()), ..Create::default() }).await?;
//! let mut stream = api.stream(&created.slot_name, StreamOptions::default());
//! while let Some(event) = stream.next_event().await? {
//!     if let Event::Transaction(tx) = event {
//!         println!("{} changes", tx.changes.len()); // apply them
//!         stream.ack(&tx.end_lsn).await?; // only once they are applied
//!     }
//! }
//! # Ok(()) }
//! ```

mod durable;
mod http;
mod live;
mod view;

pub use durable::{
    compare_lsn, Create, Created, Durable, DurableFrame, DurableOptions, DurableStream, Event,
    HandlerError, SnapshotPage, StreamOptions, Transaction,
};
pub use live::{Frame, Options, Selection, Subscription};
pub use view::{Removed, View, ViewEvent};

use futures_util::StreamExt;
use serde_json::{Map, Value};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What reading a socket gave.
enum Read {
    Text(Utf8Bytes),
    Closed {
        code: u16,
        reason: String,
    },
    /// The connection broke without a close frame.
    Lost,
}

/// Sends a text frame on the open socket, if there is one; a failed send
/// drops the socket, so the next read reconnects.
async fn send_text(socket: &mut Option<Socket>, text: String) {
    use futures_util::SinkExt;
    if let Some(s) = socket.as_mut() {
        if s.send(Message::Text(text.into())).await.is_err() {
            *socket = None;
        }
    }
}

/// The body of a refused websocket upgrade as JSON (`Null` when it is not).
fn upgrade_body(response: &tokio_tungstenite::tungstenite::handshake::client::Response) -> Value {
    response
        .body()
        .as_deref()
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or(Value::Null)
}

/// Closes a socket with the closing handshake: the close frame, then
/// reading until the server's own close (for at most 2 s). Dropping a
/// socket with frames still unread would reset the connection, and the
/// server could lose what was sent just before (a durable stream's last
/// ACK).
async fn close_socket(mut socket: Socket) {
    if socket.close(None).await.is_ok() {
        let drain = async { while let Some(Ok(_)) = socket.next().await {} };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    }
}

/// The next text frame or close of a socket; pings and other frames are
/// skipped (tungstenite answers pings itself).
async fn read(socket: &mut Socket) -> Read {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(t))) => return Read::Text(t),
            Some(Ok(Message::Close(close))) => {
                let (code, reason) = close
                    .map(|c| (u16::from(c.code), c.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                return Read::Closed { code, reason };
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Read::Lost,
        }
    }
}

/// Why a subscription, a stream or a request ended. Everything else (a
/// dropped connection, the proxy restarting, a full proxy, a client that
/// fell behind) is retried.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The proxy no longer holds the changes after the position: re-sync,
    /// then subscribe without `after`.
    #[error("{message}")]
    PositionGone {
        message: String,
        /// The oldest position held, or `None` when the proxy started after it.
        oldest: Option<String>,
    },
    /// Refused: a malformed query (`position`), an unknown or forbidden
    /// table, a filter that cannot start, a refused token (`status` 401), a
    /// stream that does not exist (404).
    #[error("{message}")]
    Refused {
        message: String,
        code: Option<String>,
        status: Option<u16>,
        position: Option<usize>,
    },
    /// Closed by the proxy for a reason retrying cannot fix: a policy close
    /// (1008: a token expired, a filter detached), or a durable stream
    /// deleted (1000).
    #[error("closed by the proxy ({code}): {reason}")]
    Closed { code: u16, reason: String },
    /// An HTTP request of the durable stream API could not reach the proxy.
    #[error("cannot reach the proxy: {0}")]
    Transport(String),
    /// The URL or the options cannot work.
    #[error("{0}")]
    Invalid(String),
}

/// What a change is: its `action` letters (docs/format.md). A [`Change`]
/// is a row change (`I U D T`), a read event (`R`), a held row leaving a
/// view (`L`), a message (`M`) or a schema change (`DDL`); transactions'
/// `B` and `C` are frames of durable streams.
pub use walcast_abi::Action;

/// One change (docs/format.md); `raw` has every field.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub action: Action,
    pub schema: Option<String>,
    pub table: Option<String>,
    /// The row after an insert or update, or a read event's row.
    pub columns: Option<Map<String, Value>>,
    /// The key (or old row) of an update or delete.
    pub identity: Option<Map<String, Value>>,
    /// Where the change is in a live stream; absent on read events and in
    /// durable streams.
    pub pos: Option<String>,
    /// The change's WAL position (`X/Y`); absent on read events.
    pub lsn: Option<String>,
    pub raw: Value,
}

impl Change {
    /// The change a frame holds, or the frame back when it is not one.
    fn parse(v: Value) -> Result<Change, Value> {
        let Some(action) = v
            .get("action")
            .and_then(Value::as_str)
            .and_then(Action::from_letter)
            .filter(|a| {
                !matches!(
                    a,
                    Action::Begin
                        | Action::Commit
                        | Action::StreamStart
                        | Action::StreamStop
                        | Action::StreamCommit
                        | Action::StreamAbort
                )
            })
        else {
            return Err(v);
        };
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let object = |k: &str| v.get(k).and_then(Value::as_object).cloned();
        Ok(Change {
            action,
            schema: text("schema"),
            table: text("table"),
            columns: object("columns"),
            identity: object("identity"),
            pos: text("pos"),
            lsn: text("lsn"),
            raw: v,
        })
    }
}

/// Waits between reconnects: doubling from the first to the longest wait,
/// each drawn between half and all of it; back to the first after a
/// success.
#[derive(Debug, Clone)]
struct Backoff {
    first: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    fn new((first, max): (Duration, Duration)) -> Backoff {
        Backoff {
            first,
            max,
            attempt: 0,
        }
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }

    async fn wait(&mut self) {
        let full = self
            .first
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt += 1;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let jitter = 0.5 + f64::from(nanos % 1000) / 2000.0;
        tokio::time::sleep(full.mul_f64(jitter)).await;
    }
}

/// The default first and longest wait between reconnects.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(10));

/// The error an error object of the proxy (`{"error","code",...}`) means.
fn refusal(v: &Value, message: &str, code: Option<String>, status: Option<u16>) -> Error {
    if code.as_deref() == Some("POSITION_GONE") {
        return Error::PositionGone {
            message: message.to_owned(),
            oldest: v.get("oldest").and_then(Value::as_str).map(str::to_owned),
        };
    }
    Error::Refused {
        message: message.to_owned(),
        code,
        status,
        position: v
            .get("position")
            .and_then(Value::as_u64)
            .and_then(|p| usize::try_from(p).ok()),
    }
}

/// The error of a refused HTTP answer: its `{"error","code"}` body, or its
/// status alone.
fn refused_http(status: u16, body: &Value) -> Error {
    let message = body
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("HTTP {status}"));
    let code = body.get("code").and_then(Value::as_str).map(str::to_owned);
    refusal(body, &message, code, Some(status))
}

/// Percent-encodes a query parameter's value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_parse_and_other_frames_come_back() {
        let c = Change::parse(serde_json::json!({
            "action": "U", "lsn": "0/16B3748", "table": "t",
            "columns": {"id": 1}, "identity": {"id": 2}
        }))
        .expect("a change");
        assert_eq!(c.action, Action::Update);
        assert_eq!(c.lsn.as_deref(), Some("0/16B3748"));
        assert_eq!(
            c.identity.and_then(|m| m.get("id").cloned()),
            Some(2.into())
        );
        let other = serde_json::json!({"type": "snapshot"});
        assert_eq!(Change::parse(other.clone()), Err(other));
        assert_eq!(encode("a b/+"), "a%20b%2F%2B");
    }
}
