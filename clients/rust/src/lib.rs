//! A client for walcast-proxy's live change streams, for Rust services.
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

use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a subscription ended. Everything else (a dropped connection, the
/// proxy restarting its websocket side, a full proxy, a client that fell
/// behind) is retried.
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
    /// The subscription was refused: a malformed query (`position`), an
    /// unknown or forbidden table, a filter that cannot start, a refused
    /// token (`status` 401).
    #[error("{message}")]
    Refused {
        message: String,
        code: Option<String>,
        status: Option<u16>,
        position: Option<usize>,
    },
    /// Closed by policy (a token expired, a filter detached).
    #[error("closed by the proxy ({code}): {reason}")]
    Closed { code: u16, reason: String },
    /// The URL or the options cannot work.
    #[error("{0}")]
    Invalid(String),
}

/// What a change is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Insert,
    Update,
    Delete,
    Truncate,
    Message,
    Ddl,
    /// A read event of a snapshot: "put this row".
    Read,
}

impl Action {
    fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "I" => Action::Insert,
            "U" => Action::Update,
            "D" => Action::Delete,
            "T" => Action::Truncate,
            "M" => Action::Message,
            "DDL" => Action::Ddl,
            "R" => Action::Read,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Insert => "I",
            Action::Update => "U",
            Action::Delete => "D",
            Action::Truncate => "T",
            Action::Message => "M",
            Action::Ddl => "DDL",
            Action::Read => "R",
        })
    }
}

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
    /// Where the change is in the stream; absent on read events.
    pub pos: Option<String>,
    pub raw: Value,
}

/// What a subscription returns.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Change(Box<Change>),
    /// `{"type":"snapshot",...}`: a snapshot's progress (`state` `done` at the end).
    Snapshot(Value),
    /// `{"type":"filter_error",...}`: the client's WASM filter failed on a change.
    FilterError(Value),
    /// Anything else, such as a WASM filter's own objects.
    Other(Value),
}

/// What a subscription asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    Query(String),
    /// An uploaded WASM filter, after an optional query.
    Filter {
        id: String,
        config: Value,
        query: Option<String>,
    },
}

impl From<&str> for Selection {
    fn from(q: &str) -> Selection {
        Selection::Query(q.to_owned())
    }
}

/// How a subscription connects.
#[derive(Debug, Clone)]
pub struct Options {
    /// Resume after this position.
    pub after: Option<String>,
    /// The query's current rows first, as read events.
    pub snapshot: bool,
    /// Sent as `access_token`.
    pub token: Option<String>,
    /// First and longest wait between reconnects.
    pub backoff: (Duration, Duration),
}

impl Default for Options {
    fn default() -> Options {
        Options {
            after: None,
            snapshot: false,
            token: None,
            backoff: (Duration::from_millis(100), Duration::from_secs(10)),
        }
    }
}

/// A live subscription.
pub struct Subscription {
    url: String,
    selection: Selection,
    options: Options,
    socket: Option<Socket>,
    /// The position of the last change returned: where a reconnect resumes.
    position: Option<String>,
    snapshot_pending: bool,
    attempt: u32,
    ended: bool,
}

fn is_position(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 25
        && b[16] == b':'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 16 || c.is_ascii_digit() || (b'A'..=b'F').contains(c))
}

impl Subscription {
    /// A subscription to `url` (the proxy's base, `ws://` or `wss://`); it
    /// connects at the first [`Subscription::next`].
    pub fn new(
        url: &str,
        selection: impl Into<Selection>,
        options: Options,
    ) -> Result<Subscription, Error> {
        if let Some(a) = &options.after {
            if !is_position(a) {
                return Err(Error::Invalid(format!(
                    "after: {a:?} is not a position like 0000000001A2B400:00000000"
                )));
            }
        }
        let base = url.trim_end_matches('/').trim_end_matches("/ws");
        let ws = if let Some(rest) = base.strip_prefix("http") {
            format!("ws{rest}/ws")
        } else {
            format!("{base}/ws")
        };
        if !ws.starts_with("ws://") && !ws.starts_with("wss://") {
            return Err(Error::Invalid(format!(
                "{url}: the proxy's URL starts with ws://, wss://, http:// or https://"
            )));
        }
        Ok(Subscription {
            url: ws,
            selection: selection.into(),
            snapshot_pending: options.snapshot,
            position: options.after.clone(),
            options,
            socket: None,
            attempt: 0,
            ended: false,
        })
    }

    /// The position of the last change returned (save it to resume).
    pub fn position(&self) -> Option<&str> {
        self.position.as_deref()
    }

    /// Drops the connection; the next read reconnects and resumes.
    pub fn reconnect(&mut self) {
        self.socket = None;
    }

    /// The next frame; `Ok(None)` once closed, `Err` when it ended for good.
    pub async fn next(&mut self) -> Result<Option<Frame>, Error> {
        loop {
            if self.ended {
                return Ok(None);
            }
            let Some(socket) = self.socket.as_mut() else {
                self.connect().await?;
                continue;
            };
            let msg = match socket.next().await {
                Some(Ok(m)) => m,
                Some(Err(_)) | None => {
                    self.socket = None;
                    self.wait().await;
                    continue;
                }
            };
            match msg {
                Message::Text(text) => {
                    if let Some(frame) = self.frame(text.as_str())? {
                        return Ok(Some(frame));
                    }
                }
                Message::Close(close) => {
                    self.socket = None;
                    let (code, reason) = close
                        .map(|c| (u16::from(c.code), c.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    if code == u16::from(CloseCode::Policy) {
                        self.ended = true;
                        return Err(Error::Closed { code, reason });
                    }
                    self.wait().await;
                }
                _ => {}
            }
        }
    }

    /// Ends the subscription.
    pub async fn close(&mut self) {
        self.ended = true;
        if let Some(mut s) = self.socket.take() {
            let _ = s.close(None).await;
        }
    }

    /// One text frame: a frame for the application, nothing (a frame seen
    /// already, a token answer), or the error that ends the subscription.
    fn frame(&mut self, text: &str) -> Result<Option<Frame>, Error> {
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return Ok(Some(Frame::Other(Value::String(text.to_owned()))));
        };
        if let Some(message) = v.get("error").and_then(Value::as_str) {
            if v.get("action").is_none() && v.get("type").is_none() {
                let code = v.get("code").and_then(Value::as_str).map(str::to_owned);
                if code.as_deref() == Some("NOT_READY") {
                    // Retried: the proxy closes the socket next.
                    return Ok(None);
                }
                self.ended = true;
                self.socket = None;
                return Err(refusal(&v, message, code, None));
            }
        }
        match v.get("type").and_then(Value::as_str) {
            Some("token") => return Ok(None),
            Some("snapshot") => {
                if v.get("state").and_then(Value::as_str) == Some("done") {
                    self.snapshot_pending = false;
                }
                return Ok(Some(Frame::Snapshot(v)));
            }
            Some("filter_error") => return Ok(Some(Frame::FilterError(v))),
            _ => {}
        }
        let Some(action) = v
            .get("action")
            .and_then(Value::as_str)
            .and_then(Action::parse)
        else {
            return Ok(Some(Frame::Other(v)));
        };
        let pos = v.get("pos").and_then(Value::as_str).map(str::to_owned);
        if let Some(p) = &pos {
            // Positions compare as strings; one at or before the last
            // returned was returned already.
            if self
                .position
                .as_deref()
                .is_some_and(|last| p.as_str() <= last)
            {
                return Ok(None);
            }
            self.position = Some(p.clone());
        }
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let object = |k: &str| v.get(k).and_then(Value::as_object).cloned();
        Ok(Some(Frame::Change(Box::new(Change {
            action,
            schema: text("schema"),
            table: text("table"),
            columns: object("columns"),
            identity: object("identity"),
            pos,
            raw: v,
        }))))
    }

    fn subscribe_frame(&self) -> String {
        let mut sub = Map::new();
        match &self.selection {
            Selection::Query(q) => {
                sub.insert("query".into(), q.clone().into());
            }
            Selection::Filter { id, config, query } => {
                if let Some(q) = query {
                    sub.insert("query".into(), q.clone().into());
                }
                sub.insert(
                    "filter".into(),
                    serde_json::json!({"id": id, "config": config}),
                );
            }
        }
        if let Some(p) = &self.position {
            sub.insert("after".into(), p.clone().into());
        }
        if self.snapshot_pending {
            sub.insert("snapshot".into(), true.into());
        }
        serde_json::json!({ "subscribe": sub }).to_string()
    }

    async fn connect(&mut self) -> Result<(), Error> {
        let url = match &self.options.token {
            Some(t) => format!("{}?access_token={}", self.url, encode(t)),
            None => self.url.clone(),
        };
        let request = url
            .into_client_request()
            .map_err(|e| Error::Invalid(format!("{}: {e}", self.url)))?;
        match tokio_tungstenite::connect_async(request).await {
            Ok((mut socket, _)) => {
                if socket
                    .send(Message::Text(self.subscribe_frame().into()))
                    .await
                    .is_ok()
                {
                    self.socket = Some(socket);
                    self.attempt = 0;
                } else {
                    self.wait().await;
                }
                Ok(())
            }
            Err(tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                if status == 429 || status >= 500 {
                    self.wait().await;
                    return Ok(());
                }
                let body: Value = response
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                let message = body
                    .get("error")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("HTTP {status}"));
                let code = body.get("code").and_then(Value::as_str).map(str::to_owned);
                self.ended = true;
                Err(refusal(&body, &message, code, Some(status)))
            }
            Err(_) => {
                // Out of reach: retried.
                self.wait().await;
                Ok(())
            }
        }
    }

    /// Waits the next backoff: doubling from the first to the longest
    /// wait, each drawn between half and all of it.
    async fn wait(&mut self) {
        let (first, max) = self.options.backoff;
        let full = first.saturating_mul(1u32 << self.attempt.min(20)).min(max);
        self.attempt += 1;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let jitter = 0.5 + f64::from(nanos % 1000) / 2000.0;
        tokio::time::sleep(full.mul_f64(jitter)).await;
    }
}

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
    fn urls_and_positions() {
        let s = Subscription::new("http://h:1/", "insert:t", Options::default()).expect("url");
        assert_eq!(s.url, "ws://h:1/ws");
        let s = Subscription::new("wss://h/ws", "insert:t", Options::default()).expect("url");
        assert_eq!(s.url, "wss://h/ws");
        assert!(Subscription::new("ftp://h", "insert:t", Options::default()).is_err());
        let bad = Options {
            after: Some("0/1".into()),
            ..Options::default()
        };
        assert!(Subscription::new("ws://h", "insert:t", bad).is_err());
        assert!(is_position("0000000001A2B400:00000000"));
        assert!(!is_position("0000000001a2b400:00000000"));
        assert_eq!(encode("a b/+"), "a%20b%2F%2B");
    }

    #[test]
    fn frames_are_typed_and_repeats_dropped() {
        let mut s = Subscription::new("ws://h", "insert:t", Options::default()).expect("url");
        let c =
            r#"{"action":"I","pos":"0000000000000010:00000000","table":"t","columns":{"id":1}}"#;
        let Ok(Some(Frame::Change(change))) = s.frame(c) else {
            panic!("a change")
        };
        assert_eq!(change.action, Action::Insert);
        assert_eq!(s.position(), Some("0000000000000010:00000000"));
        assert_eq!(s.frame(c), Ok(None), "a repeat is dropped");
        let gone = r#"{"error":"gone","code":"POSITION_GONE","oldest":null}"#;
        assert!(matches!(
            s.frame(gone),
            Err(Error::PositionGone { oldest: None, .. })
        ));
    }
}
