//! Live subscriptions (`/ws`): the changes a query or a WASM filter
//! selects, from now (or from a saved position), resumed across dropped
//! connections without a gap or a repeat.

use crate::{
    close_socket, encode, read, refusal, refused_http, send_text, upgrade_body, Backoff, Change,
    Error, Read, Socket, BACKOFF,
};
use futures_util::{SinkExt, Stream};
use serde_json::{Map, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

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
    /// With [`Options::resync`]: the connection was lost and is open again,
    /// with a snapshot: the frames after this read the rows again.
    Resynced,
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
    /// After an interruption, subscribe again with a snapshot instead of
    /// resuming after the last position ([`Frame::Resynced`] first): a live
    /// view's rows are read again, so rows that left it while the
    /// connection was down are noticed (`View` uses it).
    pub resync: bool,
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
            resync: false,
            token: None,
            backoff: BACKOFF,
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
    backoff: Backoff,
    /// Open connections lost so far.
    lost: u64,
    /// A connection opened before (with `resync`, the next one re-reads).
    opened_before: bool,
    /// A resync started: [`Frame::Resynced`] is returned next.
    resynced: bool,
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
            backoff: Backoff::new(options.backoff),
            options,
            socket: None,
            lost: 0,
            opened_before: false,
            resynced: false,
            ended: false,
        })
    }

    /// The position of the last change returned (save it to resume).
    pub fn position(&self) -> Option<&str> {
        self.position.as_deref()
    }

    /// How many times an open connection was lost (and opened again on the
    /// next read), [`Subscription::reconnect`] aside.
    pub fn reconnects(&self) -> u64 {
        self.lost
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
            if self.resynced {
                self.resynced = false;
                return Ok(Some(Frame::Resynced));
            }
            let Some(socket) = self.socket.as_mut() else {
                if self.options.resync && self.opened_before {
                    // A view reads its rows again rather than resuming.
                    self.snapshot_pending = true;
                    self.position = None;
                }
                self.connect().await?;
                if self.socket.is_some() {
                    self.resynced = self.options.resync && self.opened_before;
                    self.opened_before = true;
                }
                continue;
            };
            match read(socket).await {
                Read::Text(text) => {
                    // A frame came: the connection works, so the next
                    // interruption waits the shortest time again.
                    self.backoff.reset();
                    if let Some(frame) = self.frame(text.as_str())? {
                        return Ok(Some(frame));
                    }
                }
                Read::Closed { code, reason } if code == u16::from(CloseCode::Policy) => {
                    self.socket = None;
                    self.ended = true;
                    return Err(Error::Closed { code, reason });
                }
                Read::Closed { .. } | Read::Lost => {
                    self.socket = None;
                    self.lost += 1;
                    self.backoff.wait().await;
                }
            }
        }
    }

    /// Ends the subscription.
    pub async fn close(&mut self) {
        self.ended = true;
        if let Some(s) = self.socket.take() {
            close_socket(s).await;
        }
    }

    /// A fresh token: sent on the open socket (`{"access_token": ...}`), so
    /// the connection outlives the token it opened with, and used for every
    /// reconnect.
    pub async fn set_token(&mut self, token: String) -> Result<(), Error> {
        // A failed send: the next read reconnects, with the new token.
        let frame = serde_json::json!({ "access_token": token }).to_string();
        send_text(&mut self.socket, frame).await;
        self.options.token = Some(token);
        Ok(())
    }

    /// The subscription as a [`Stream`] of frames; it ends after the first
    /// error.
    pub fn into_stream(self) -> impl Stream<Item = Result<Frame, Error>> {
        futures_util::stream::unfold(Some(self), |sub| async move {
            let mut sub = sub?;
            match sub.next().await {
                Ok(Some(frame)) => Some((Ok(frame), Some(sub))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
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
        let change = match Change::parse(v) {
            Ok(c) => c,
            Err(other) => return Ok(Some(Frame::Other(other))),
        };
        if let Some(p) = &change.pos {
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
        Ok(Some(Frame::Change(Box::new(change))))
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
                } else {
                    self.backoff.wait().await;
                }
                Ok(())
            }
            Err(tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                if status == 429 || status >= 500 {
                    self.backoff.wait().await;
                    return Ok(());
                }
                self.ended = true;
                Err(refused_http(status, &upgrade_body(&response)))
            }
            Err(_) => {
                // Out of reach: retried.
                self.backoff.wait().await;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Action;

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
