//! Durable streams (docs/streams.md): a replication slot of their own, a
//! snapshot consistent with it, a stream that resumes after the last ACK.
//! Delivery is at least once: a transaction after the last ACK comes again
//! after a reconnect. [`DurableStream::next_event`] hands over whole
//! transactions and drops the ones that come again at or before the last
//! ACK, so an application that ACKs each transaction once it is applied
//! applies each one once.

use crate::http::{request, Endpoint};
use crate::{
    close_socket, encode, read, refused_http, send_text, upgrade_body, Backoff, Change, Error,
    Read, Socket, BACKOFF,
};
use hyper::header::{HeaderValue, AUTHORIZATION};
use hyper::Method;
use serde_json::{Map, Value};
use std::cmp::Ordering;
use std::future::Future;
use std::time::Duration;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// An LSN (`X/Y`, hexadecimal) as a number.
fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    let hi = u32::from_str_radix(hi, 16).ok()?;
    let lo = u32::from_str_radix(lo, 16).ok()?;
    Some((u64::from(hi) << 32) | u64::from(lo))
}

/// Compares two LSNs (`X/Y`); `None` when either is not one.
pub fn compare_lsn(a: &str, b: &str) -> Option<Ordering> {
    Some(parse_lsn(a)?.cmp(&parse_lsn(b)?))
}

/// How the durable API authenticates and reconnects.
#[derive(Debug, Clone)]
pub struct DurableOptions {
    /// Sent as `Authorization: Bearer ...` on every request and connection.
    pub token: Option<String>,
    /// First and longest wait between reconnects of a stream.
    pub backoff: (Duration, Duration),
}

impl Default for DurableOptions {
    fn default() -> DurableOptions {
        DurableOptions {
            token: None,
            backoff: BACKOFF,
        }
    }
}

/// What [`Durable::create`] creates.
#[derive(Debug, Clone, Default)]
pub struct Create {
    /// The slot is named `walcast_<name><n>`; without it a word is picked.
    pub name: Option<String>,
    /// The stream's table allow-list (`schema.table` patterns); empty for
    /// every table.
    pub tables: Vec<String>,
    /// Create the slot without exporting a snapshot: read rows inside the
    /// stream instead ([`Durable::resnapshot`], [`StreamOptions::snapshot`]).
    pub without_snapshot: bool,
}

/// A created stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    pub slot_name: String,
    /// The exported snapshot, or `None` when created without one.
    pub snapshot: Option<String>,
    /// The slot's consistent point.
    pub lsn: String,
    /// When the snapshot stops being readable (Unix seconds).
    pub snapshot_expires_at: Option<u64>,
}

/// One page of a table's rows in a stream's snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotPage {
    pub rows: Vec<Map<String, Value>>,
    /// What to pass as `after` for the next page; `None` after the last.
    pub next: Option<Value>,
}

/// What a stream sends.
#[derive(Debug, Clone, Default)]
pub struct StreamOptions {
    /// Only the row changes this query selects (`B` and `C` always come).
    pub query: Option<String>,
    /// An uploaded WASM filter's id, and its config.
    pub filter: Option<(String, Option<String>)>,
    /// The proxy's heartbeat messages while the stream is idle.
    pub heartbeats: bool,
    /// These tables' current rows inside the stream (read events) from the
    /// start.
    pub snapshot: Vec<String>,
}

/// The durable stream endpoints of one proxy.
#[derive(Debug, Clone)]
pub struct Durable {
    endpoint: Endpoint,
    options: DurableOptions,
}

impl Durable {
    /// The API of the proxy at `url` (`http://`, `https://`, `ws://` or
    /// `wss://`, with an optional path prefix).
    pub fn new(url: &str, options: DurableOptions) -> Result<Durable, Error> {
        Ok(Durable {
            endpoint: Endpoint::parse(url)?,
            options,
        })
    }

    /// Uses a fresh token from now on (streams opened before keep theirs:
    /// see [`DurableStream::set_token`]).
    pub fn set_token(&mut self, token: String) {
        self.options.token = Some(token);
    }

    /// One request; a status other than 2xx is the error its body says.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<crate::http::Response, Error> {
        let res = request(
            &self.endpoint,
            method,
            path,
            self.options.token.as_deref(),
            body,
        )
        .await?;
        if !(200..300).contains(&res.status) {
            return Err(refused_http(res.status, &res.json()));
        }
        Ok(res)
    }

    /// Creates a stream: a slot and (unless `without_snapshot`) a snapshot
    /// consistent with it.
    pub async fn create(&self, what: &Create) -> Result<Created, Error> {
        let mut body = Map::new();
        if let Some(n) = &what.name {
            body.insert("name".into(), n.clone().into());
        }
        if !what.tables.is_empty() {
            body.insert("tables".into(), what.tables.clone().into());
        }
        if what.without_snapshot {
            body.insert("export_snapshot".into(), false.into());
        }
        let v = self
            .call(Method::POST, "/v1/streams", Some(&Value::Object(body)))
            .await?
            .json();
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        match (text("slotName"), text("lsn")) {
            (Some(slot_name), Some(lsn)) => Ok(Created {
                slot_name,
                snapshot: text("snapshot"),
                lsn,
                snapshot_expires_at: v.get("snapshotExpiresAt").and_then(Value::as_u64),
            }),
            _ => Err(Error::Transport(format!(
                "the proxy's answer to POST /v1/streams has no slotName or lsn: {v}"
            ))),
        }
    }

    /// The streams of the proxy's database (`GET /v1/streams`).
    pub async fn list(&self) -> Result<Vec<Value>, Error> {
        let v = self.call(Method::GET, "/v1/streams", None).await?.json();
        Ok(v.get("streams")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// Drops a stream and its slot.
    pub async fn delete(&self, slot_name: &str) -> Result<(), Error> {
        let path = format!("/v1/streams/{}", encode(slot_name));
        self.call(Method::DELETE, &path, None).await.map(|_| ())
    }

    /// A page of `table`'s rows in the stream's snapshot, by primary key:
    /// `after` is the previous page's `next` (`None` for the first).
    pub async fn snapshot_page(
        &self,
        slot_name: &str,
        table: &str,
        limit: u32,
        after: Option<&Value>,
    ) -> Result<SnapshotPage, Error> {
        let mut body = serde_json::json!({"slotName": slot_name, "table": table, "limit": limit});
        if let Some(a) = after {
            body["after"] = a.clone();
        }
        let res = self
            .call(Method::POST, "/v1/snapshot/data", Some(&body))
            .await?;
        let rows: Vec<Map<String, Value>> = match res.json() {
            Value::Array(rows) => rows
                .into_iter()
                .filter_map(|r| match r {
                    Value::Object(m) => Some(m),
                    _ => None,
                })
                .collect(),
            other => {
                return Err(Error::Transport(format!(
                    "the proxy's snapshot page is not an array of rows: {other}"
                )))
            }
        };
        if rows.is_empty() {
            return Ok(SnapshotPage { rows, next: None });
        }
        let next = res
            .headers
            .get("x-walcast-after")
            .and_then(|h| h.to_str().ok())
            .and_then(|h| serde_json::from_str::<Value>(h).ok());
        if next.is_none() {
            return Err(Error::Invalid(format!(
                "{table} has no primary key: its snapshot cannot be paged by key (read it inside the stream, or page it by offset)"
            )));
        }
        Ok(SnapshotPage { rows, next })
    }

    /// Asks for tables' current rows inside the open stream (read events),
    /// without a held snapshot; `after` resumes a table after a key
    /// (`{"schema.table": [key...]}`). The stream must be connected to this
    /// proxy (otherwise 409).
    pub async fn resnapshot(
        &self,
        slot_name: &str,
        tables: &[&str],
        after: Option<&Value>,
    ) -> Result<(), Error> {
        let mut body = serde_json::json!({ "tables": tables });
        if let Some(a) = after {
            body["after"] = a.clone();
        }
        let path = format!("/v1/streams/{}/snapshot", encode(slot_name));
        self.call(Method::POST, &path, Some(&body))
            .await
            .map(|_| ())
    }

    /// Opens the stream (it connects at the first read); it reconnects
    /// after interruptions and resumes after the last ACK.
    pub fn stream(&self, slot_name: &str, options: StreamOptions) -> DurableStream {
        let mut params = vec![format!("slotName={}", encode(slot_name))];
        if let Some(q) = &options.query {
            params.push(format!("query={}", encode(q)));
        }
        if let Some((id, config)) = &options.filter {
            params.push(format!("filter={}", encode(id)));
            if let Some(c) = config {
                params.push(format!("config={}", encode(c)));
            }
        }
        if options.heartbeats {
            params.push("heartbeats=true".into());
        }
        if !options.snapshot.is_empty() {
            params.push(format!("snapshot={}", encode(&options.snapshot.join(","))));
        }
        DurableStream {
            url: format!(
                "{}?{}",
                self.endpoint.ws_url("/v1/lr/stream"),
                params.join("&")
            ),
            token: self.options.token.clone(),
            backoff: Backoff::new(self.options.backoff),
            socket: None,
            acked: None,
            delivered: None,
            reach: None,
            connected_before: false,
            building: None,
            lost: 0,
            ended: false,
        }
    }
}

/// One frame of a durable stream.
#[derive(Debug, Clone, PartialEq)]
pub enum DurableFrame {
    /// `B`: a transaction begins.
    Begin(Value),
    /// A change: inside a transaction, or outside one (a re-snapshot's read
    /// event `R`, a non-transactional message `M`).
    Change(Box<Change>),
    /// `C`: the transaction ends; ACK `end_lsn` once it is processed.
    Commit { end_lsn: String, raw: Value },
    /// A re-snapshot's progress (`{"type":"snapshot",...}`).
    Snapshot(Value),
    /// Anything else, such as a WASM filter's own objects.
    Other(Value),
    /// The connection was lost and is open again: the stream goes on after
    /// the last ACK, so a transaction begun before this comes again from
    /// its `Begin`.
    Resumed,
}

/// A whole transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    pub xid: Option<u64>,
    /// Its changes (those the stream's query and filter pass), in order.
    pub changes: Vec<Change>,
    /// What to [`DurableStream::ack`] once the transaction is processed.
    pub end_lsn: String,
    pub begin: Value,
    pub commit: Value,
}

/// What [`DurableStream::next_event`] hands over.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A whole transaction: apply it, then ACK its `end_lsn`.
    Transaction(Transaction),
    /// A change outside any transaction: a re-snapshot's read event (put
    /// this row), or a non-transactional message. It needs no ACK.
    Change(Box<Change>),
    /// A re-snapshot's progress.
    Snapshot(Value),
    Other(Value),
}

/// Why [`DurableStream::process`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError<E> {
    /// The stream ended.
    #[error(transparent)]
    Stream(Error),
    /// The handler failed: its transaction was not ACKed, so it comes again
    /// on the next connection.
    #[error("the handler failed: {0}")]
    Handler(E),
}

/// An open durable stream.
pub struct DurableStream {
    url: String,
    token: Option<String>,
    backoff: Backoff,
    socket: Option<Socket>,
    /// The last LSN ACKed: every connection resumes after it (`acked=`).
    acked: Option<String>,
    /// The last ACK the proxy has taken (sent on a socket that had sent
    /// its transaction, or carried by a connection's URL).
    delivered: Option<String>,
    /// The furthest `end_lsn` the open socket sent (or its URL carried):
    /// what it may ACK (the proxy refuses ACKs beyond what it sent).
    reach: Option<String>,
    /// Whether a connection opened before (the next one resumes).
    connected_before: bool,
    /// The transaction [`DurableStream::next_event`] is collecting.
    building: Option<(Value, Vec<Change>)>,
    /// Open connections lost so far.
    lost: u64,
    ended: bool,
}

impl DurableStream {
    /// The last LSN ACKed.
    pub fn acked(&self) -> Option<&str> {
        self.acked.as_deref()
    }

    /// How many times an open connection was lost (and opened again on the
    /// next read), [`DurableStream::reconnect`] aside.
    pub fn reconnects(&self) -> u64 {
        self.lost
    }

    /// The next frame; `Ok(None)` once closed, `Err` when the stream ended
    /// for good (deleted, refused, a policy close).
    pub async fn next(&mut self) -> Result<Option<DurableFrame>, Error> {
        loop {
            if self.ended {
                return Ok(None);
            }
            let Some(socket) = self.socket.as_mut() else {
                let resuming = self.connected_before;
                if self.connect().await? && resuming {
                    self.building = None;
                    return Ok(Some(DurableFrame::Resumed));
                }
                continue;
            };
            match read(socket).await {
                Read::Text(text) => {
                    // A frame came: the connection works, so the next
                    // interruption waits the shortest time again.
                    self.backoff.reset();
                    if let Some(frame) = frame(text.as_str()) {
                        if let DurableFrame::Commit { end_lsn, .. } = &frame {
                            raise(&mut self.reach, end_lsn);
                            // An ACK given before this connection sent its
                            // transaction.
                            if self.undelivered() {
                                if let Some(a) = self.acked.clone() {
                                    self.send_ack(&a).await;
                                }
                            }
                        }
                        return Ok(Some(frame));
                    }
                }
                // 1000: the stream was deleted; 1008: policy.
                Read::Closed { code, reason } if code == 1000 || code == 1008 => {
                    self.socket = None;
                    self.ended = true;
                    return Err(Error::Closed { code, reason });
                }
                Read::Closed { .. } | Read::Lost => {
                    self.socket = None;
                    self.reach = None;
                    self.lost += 1;
                    self.backoff.wait().await;
                }
            }
        }
    }

    /// The next whole transaction, or a frame outside one. Transactions that
    /// come again after a reconnect at or before the last ACK are skipped
    /// (and ACKed again, so the proxy confirms them). A transaction is held
    /// in memory until its `C`: for transactions too large for that, read
    /// frames with [`DurableStream::next`].
    pub async fn next_event(&mut self) -> Result<Option<Event>, Error> {
        loop {
            let Some(frame) = self.next().await? else {
                return Ok(None);
            };
            match frame {
                DurableFrame::Begin(v) => self.building = Some((v, Vec::new())),
                DurableFrame::Change(c) => match self.building.as_mut() {
                    Some((_, changes)) => changes.push(*c),
                    None => return Ok(Some(Event::Change(c))),
                },
                DurableFrame::Commit { end_lsn, raw } => {
                    let Some((begin, changes)) = self.building.take() else {
                        continue;
                    };
                    let seen = self.acked.as_deref().is_some_and(|a| {
                        compare_lsn(&end_lsn, a).is_some_and(|o| o != Ordering::Greater)
                    });
                    if seen {
                        self.send_ack(&end_lsn).await;
                        continue;
                    }
                    return Ok(Some(Event::Transaction(Transaction {
                        xid: begin.get("xid").and_then(Value::as_u64),
                        changes,
                        end_lsn,
                        begin,
                        commit: raw,
                    })));
                }
                DurableFrame::Snapshot(v) => return Ok(Some(Event::Snapshot(v))),
                DurableFrame::Other(v) => return Ok(Some(Event::Other(v))),
                DurableFrame::Resumed => self.building = None,
            }
        }
    }

    /// At least once, with the ACK after the handler: each event goes to
    /// `handler`, and a transaction is ACKed once its handler returned
    /// `Ok`. A failing handler stops the loop before the ACK, so its
    /// transaction comes again on the next connection.
    pub async fn process<F, Fut, E>(&mut self, mut handler: F) -> Result<(), HandlerError<E>>
    where
        F: FnMut(Event) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        while let Some(event) = self.next_event().await.map_err(HandlerError::Stream)? {
            let end = match &event {
                Event::Transaction(t) => Some(t.end_lsn.clone()),
                _ => None,
            };
            handler(event).await.map_err(HandlerError::Handler)?;
            if let Some(lsn) = end {
                self.ack(&lsn).await.map_err(HandlerError::Stream)?;
            }
        }
        Ok(())
    }

    /// Says that every transaction up to this `end_lsn` is processed. Call
    /// it only once the application has processed it: what is not ACKed
    /// comes again after a reconnect.
    pub async fn ack(&mut self, end_lsn: &str) -> Result<(), Error> {
        if parse_lsn(end_lsn).is_none() {
            return Err(Error::Invalid(format!(
                "{end_lsn:?} is not an LSN: ACK the end_lsn of a C frame"
            )));
        }
        raise(&mut self.acked, end_lsn);
        self.send_ack(end_lsn).await;
        Ok(())
    }

    /// Sends an ACK on the open socket when that socket sent its
    /// transaction; otherwise it waits: the next connection carries
    /// `acked`, or the transaction comes again here and is ACKed then. A
    /// failed send drops the socket (the next read reconnects and resumes
    /// after the last ACK).
    async fn send_ack(&mut self, lsn: &str) {
        let within = self
            .reach
            .as_deref()
            .is_some_and(|r| compare_lsn(lsn, r).is_some_and(|o| o != Ordering::Greater));
        if self.socket.is_none() || !within {
            return;
        }
        let frame = serde_json::json!({ "lsn": lsn }).to_string();
        send_text(&mut self.socket, frame).await;
        if self.socket.is_some() {
            raise(&mut self.delivered, lsn);
        }
    }

    /// Whether the last ACK has not reached the proxy yet.
    fn undelivered(&self) -> bool {
        match (&self.acked, &self.delivered) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(a), Some(d)) => compare_lsn(a, d) == Some(Ordering::Greater),
        }
    }

    /// A fresh token: sent on the open socket (`{"access_token": ...}`), so
    /// the stream outlives the token it opened with, and used for every
    /// reconnect.
    pub async fn set_token(&mut self, token: String) {
        let frame = serde_json::json!({ "access_token": token }).to_string();
        send_text(&mut self.socket, frame).await;
        self.token = Some(token);
    }

    /// Drops the connection; the next read reconnects and resumes after
    /// the last ACK (the transaction in progress comes again whole).
    pub fn reconnect(&mut self) {
        self.socket = None;
        self.reach = None;
    }

    /// Ends the stream (the slot stays; [`Durable::delete`] drops it) once
    /// the proxy has the last ACK: when it has not reached the proxy yet
    /// (given while reconnecting), one short connection carries it. `Err`
    /// when that connection cannot be made within 10 s.
    pub async fn close(&mut self) -> Result<(), Error> {
        if let Some(s) = self.socket.take() {
            close_socket(s).await;
        }
        let result = if self.ended || !self.undelivered() {
            Ok(())
        } else {
            let carried = tokio::time::timeout(Duration::from_secs(10), async {
                // `connect` waits between tries.
                while !self.connect().await? {}
                Ok::<_, Error>(())
            })
            .await;
            if let Some(s) = self.socket.take() {
                close_socket(s).await;
            }
            match carried {
                Ok(done) => done,
                Err(_) => Err(Error::Invalid(format!(
                    "the last ACK {} did not reach the proxy within 10 s",
                    self.acked.as_deref().unwrap_or_default()
                ))),
            }
        };
        self.ended = true;
        result
    }

    /// Opens a connection: `Ok(true)` when one is open, `Ok(false)` after a
    /// wait when it should be tried again, `Err` when it is refused for good.
    async fn connect(&mut self) -> Result<bool, Error> {
        // The proxy resumes after the last ACK, even one that never reached
        // it, and confirms it as it starts.
        let url = match &self.acked {
            Some(a) => format!("{}&acked={}", self.url, encode(a)),
            None => self.url.clone(),
        };
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| Error::Invalid(format!("{}: {e}", self.url)))?;
        if let Some(t) = &self.token {
            let value = HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| Error::Invalid("the token is not a valid header value".into()))?;
            request.headers_mut().insert(AUTHORIZATION, value);
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => {
                self.socket = Some(socket);
                self.connected_before = true;
                self.reach = self.acked.clone();
                if let Some(a) = self.acked.clone() {
                    raise(&mut self.delivered, &a);
                }
                Ok(true)
            }
            Err(tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                // 409: the previous connection is still leaving; 429 and
                // 5xx: a full or restarting proxy, PostgreSQL out of reach.
                let transient = matches!(status, 409 | 429) || status >= 500;
                if transient {
                    self.backoff.wait().await;
                    return Ok(false);
                }
                self.ended = true;
                Err(refused_http(status, &upgrade_body(&response)))
            }
            Err(_) => {
                // Out of reach: retried.
                self.backoff.wait().await;
                Ok(false)
            }
        }
    }
}

/// Sets `slot` to `lsn` when that is further.
fn raise(slot: &mut Option<String>, lsn: &str) {
    let further = slot
        .as_deref()
        .is_none_or(|s| compare_lsn(lsn, s) == Some(Ordering::Greater));
    if further {
        *slot = Some(lsn.to_owned());
    }
}

/// A text frame of the stream, or `None` for the answers to ACKs and token
/// refreshes (they are not frames of the stream).
fn frame(text: &str) -> Option<DurableFrame> {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return Some(DurableFrame::Other(Value::String(text.to_owned())));
    };
    if v.get("ack").is_some()
        || v.get("warning").is_some()
        || (v.get("error").is_some() && v.get("action").is_none() && v.get("type").is_none())
        || v.get("type").and_then(Value::as_str) == Some("token")
    {
        return None;
    }
    let action = v
        .get("action")
        .and_then(Value::as_str)
        .and_then(crate::Action::from_letter);
    match action {
        Some(crate::Action::Begin) => return Some(DurableFrame::Begin(v)),
        Some(crate::Action::Commit) => {
            return Some(match v.get("end_lsn").and_then(Value::as_str) {
                Some(end) => DurableFrame::Commit {
                    end_lsn: end.to_owned(),
                    raw: v,
                },
                None => DurableFrame::Other(v),
            })
        }
        _ => {}
    }
    if v.get("type").and_then(Value::as_str) == Some("snapshot") {
        return Some(DurableFrame::Snapshot(v));
    }
    Some(match Change::parse(v) {
        Ok(c) => DurableFrame::Change(Box::new(c)),
        Err(other) => DurableFrame::Other(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_compare_as_numbers() {
        assert_eq!(compare_lsn("0/A", "0/9"), Some(Ordering::Greater));
        assert_eq!(compare_lsn("1/0", "0/FFFFFFFF"), Some(Ordering::Greater));
        assert_eq!(compare_lsn("0/16B3748", "0/16B3748"), Some(Ordering::Equal));
        assert_eq!(compare_lsn("0/1", "x"), None);
    }

    #[test]
    fn frames_are_typed_and_answers_left_out() {
        assert!(matches!(
            frame(r#"{"action":"B","xid":7,"lsn":"0/10"}"#),
            Some(DurableFrame::Begin(_))
        ));
        assert!(matches!(
            frame(r#"{"action":"C","xid":7,"lsn":"0/20","end_lsn":"0/28"}"#),
            Some(DurableFrame::Commit { end_lsn, .. }) if end_lsn == "0/28"
        ));
        assert!(matches!(
            frame(r#"{"action":"R","table":"t","columns":{"id":1}}"#),
            Some(DurableFrame::Change(c)) if c.action == crate::Action::Read
        ));
        assert!(matches!(
            frame(r#"{"type":"snapshot","state":"done"}"#),
            Some(DurableFrame::Snapshot(_))
        ));
        assert_eq!(frame(r#"{"ack":"0/28"}"#), None);
        assert_eq!(frame(r#"{"warning":"behind the last ACK"}"#), None);
        assert_eq!(frame(r#"{"error":"not an LSN"}"#), None);
        assert_eq!(frame(r#"{"type":"token","expires_at":1}"#), None);
    }

    #[test]
    fn stream_urls_carry_the_options() {
        let api = Durable::new("http://127.0.0.1:8080", DurableOptions::default()).expect("url");
        let s = api.stream(
            "walcast_orders1",
            StreamOptions {
                query: Some("*:orders:total.gt.10".into()),
                heartbeats: true,
                snapshot: vec!["public.orders".into()],
                ..StreamOptions::default()
            },
        );
        assert_eq!(
            s.url,
            "ws://127.0.0.1:8080/v1/lr/stream?slotName=walcast_orders1&query=%2A%3Aorders%3Atotal.gt.10&heartbeats=true&snapshot=public.orders"
        );
    }
}
