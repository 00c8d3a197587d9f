//! `GET /v1/lr/stream?slotName=...`: one consumer of a durable stream.
//!
//! The replication stream is started before the websocket upgrade is
//! answered (so errors are HTTP statuses), from the slot's confirmed
//! position. Frames are the plugin's JSON: `B`, the row changes, `DDL`,
//! messages and `C` (whose `end_lsn` is what a client ACKs). The client
//! sends `{"lsn":"X/Y"}`; the proxy confirms that position to PostgreSQL,
//! which may then release the WAL before it, and a later connection resumes
//! with the first transaction that commits after it.
//!
//! There is no queue: the proxy reads from PostgreSQL only as fast as the
//! client takes frames, so a slow client holds WAL back, never proxy memory.

use super::streams::{ConsumerGuard, Streams};
use crate::change::{Action, Change};
use crate::delivery::{self, filter_change, Outcome};
use crate::http::upgrade::{close, Ws};
use crate::http::ApiError;
use crate::metrics::{Gauge, Metrics};
use crate::query::Query;
use crate::replication::{ReplicationClient, ReplicationError, ReplicationStream, XLogData};
use futures_util::{FutureExt, SinkExt, StreamExt};
use hyper::StatusCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_postgres::error::SqlState;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use walcast_format::{Lsn, TablePattern};

/// Frames written before each flush when PostgreSQL has more ready.
const MAX_BATCH: usize = 512;

/// How long to wait for a slot still held by a connection that is going
/// away (a consumer that just disconnected) before answering 409.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// What the client asked for besides the slot.
pub struct Options {
    pub query: Option<Query>,
    /// A WASM filter, applied after the query.
    pub filter: Option<crate::filter::FilterInstance>,
    /// Forward the proxy's heartbeat messages (`walcast.heartbeat`).
    pub heartbeats: bool,
    /// The client's grant: its rules apply to every change before the
    /// query and the filter; it expires unless refreshed.
    pub access: crate::auth::Access,
    /// Tables whose current rows to send first (`&snapshot=`), and how.
    pub backfills: Vec<crate::backfill::driver::Plan>,
    pub backfill_runner: (crate::sql::SqlPool, Arc<crate::backfill::driver::Shared>),
}

/// Where a durable stream's frames come from.
pub enum Source {
    /// The stream's own slot.
    Slot(ReplicationStream),
    /// On an edge: the stream's JetStream consumer (`jet.rs`).
    Jet(Box<super::jet::JetSource>),
}

impl Source {
    /// The next plugin message. Cancel safe as the slot's stream and a
    /// pull consumer's message stream are.
    async fn next(&mut self) -> Result<Option<XLogData>, String> {
        match self {
            Source::Slot(s) => s.next().await.map_err(|e| e.to_string()),
            Source::Jet(j) => j.next().await,
        }
    }

    fn confirm(&mut self, lsn: Lsn) {
        match self {
            Source::Slot(s) => s.confirm(lsn),
            Source::Jet(j) => j.confirm(lsn),
        }
    }

    /// Makes the confirmed position durable (a status update to
    /// PostgreSQL; an acknowledgement JetStream confirms).
    async fn send_status(&mut self) -> Result<(), String> {
        match self {
            Source::Slot(s) => s.send_status(false).await.map_err(|e| e.to_string()),
            Source::Jet(j) => j.send_status().await,
        }
    }

    fn set_caught_up(&mut self, yes: bool) {
        if let Source::Slot(s) = self {
            s.set_caught_up(yes);
        }
    }

    async fn close(self) {
        match self {
            Source::Slot(s) => {
                let _ = tokio::time::timeout(Duration::from_secs(2), s.close()).await;
            }
            Source::Jet(mut j) => {
                let _ = tokio::time::timeout(Duration::from_secs(2), j.send_status()).await;
            }
        }
    }
}

/// A stream started and waiting for its websocket.
pub struct Opened {
    slot: String,
    stream: Source,
    /// The slot's confirmed position when streaming started.
    start: Lsn,
    guard: ConsumerGuard,
    /// Allow-lists checked here (each must admit a row change): the
    /// proxy-wide one when the plugin applied the stream's own, both on an
    /// edge (the stream holds every table).
    global_tables: Vec<Vec<TablePattern>>,
}

/// Claims the consumer place of `slot` and starts streaming from it.
pub async fn open(streams: &Streams, slot: &str) -> Result<Opened, ApiError> {
    if let Some(jet) = &streams.jet {
        return open_on_jetstream(streams, jet, slot).await;
    }
    let mut info = streams.require(slot).await?;
    // One wait for both: this proxy's previous consumer leaving, then
    // PostgreSQL releasing the slot.
    let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
    let guard = streams.claim_consumer(slot, deadline).await?;
    while info.active && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        info = streams.require(slot).await?;
    }
    if info.active {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "{slot} is in use by another connection (walsender pid {}); one consumer per stream at a time",
                info.active_pid.unwrap_or(0)
            ),
        ));
    }
    let own = streams.stream_tables(slot).await?;
    let (tables, global_tables) = match (&own, &streams.cfg.tables) {
        (Some(own), Some((_, global))) => (Some(own.clone()), vec![global.clone()]),
        (Some(own), None) => (Some(own.clone()), Vec::new()),
        (None, Some((text, _))) => (Some(text.clone()), Vec::new()),
        (None, None) => (None, Vec::new()),
    };
    let mut options: Vec<(&str, &str)> = vec![("include-transaction", "on"), ("include-lsn", "on")];
    if let Some(t) = &tables {
        options.push(("add-tables", t));
    }
    let start_failed = |e: ReplicationError| {
        let status = if e.is(&SqlState::OBJECT_IN_USE) {
            StatusCode::CONFLICT
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        ApiError::new(status, format!("cannot start streaming {slot}: {e}"))
    };
    let client = ReplicationClient::connect(streams.database())
        .await
        .map_err(start_failed)?;
    // 0/0: PostgreSQL starts at the slot's confirmed position.
    let stream = client
        .start(slot, Lsn::INVALID, &options, streams.cfg.status_interval)
        .await
        .map_err(start_failed)?;
    Ok(Opened {
        slot: slot.to_owned(),
        stream: Source::Slot(stream),
        start: info.confirmed_lsn.unwrap_or(Lsn::INVALID),
        guard,
        global_tables,
    })
}

/// On an edge: claims the stream here and takes its consumer over (a
/// connection to it on another edge ends).
async fn open_on_jetstream(
    streams: &Streams,
    jet: &super::jet::JetStreams,
    slot: &str,
) -> Result<Opened, ApiError> {
    streams.require(slot).await?;
    let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
    let guard = streams.claim_consumer(slot, deadline).await?;
    let mut global_tables = Vec::new();
    if let Some(own) = streams.stream_tables(slot).await? {
        global_tables.push(TablePattern::parse_list(&own).map_err(|e| {
            ApiError::unavailable(format!("the stream's recorded tables do not parse: {e}"))
        })?);
    }
    if let Some((_, global)) = &streams.cfg.tables {
        global_tables.push(global.clone());
    }
    let (source, start) = jet.take_over(slot).await?;
    Ok(Opened {
        slot: slot.to_owned(),
        stream: Source::Jet(Box::new(source)),
        start,
        guard,
        global_tables,
    })
}

/// A client frame's verdict.
#[derive(Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// Accepted: confirm this position; reply when asked.
    Accepted { lsn: Lsn, reply: bool },
    /// Nothing to do (the same position again).
    Unchanged,
    /// Ignored with a warning frame.
    Warning(String),
    /// Ignored with an error frame.
    Error(String),
}

/// ACK bookkeeping of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Acks {
    /// The last accepted ACK (the slot's position at the start).
    pub last: Lsn,
    /// The highest position of any frame handled, sent or filtered out.
    pub sent: Lsn,
}

impl Acks {
    /// Judges a client frame `{"lsn":"X/Y"[,"reply":true]}`.
    pub fn judge(&self, text: &str) -> AckOutcome {
        let v: serde_json::Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                return AckOutcome::Error(format!("not JSON ({e}); send {{\"lsn\":\"X/Y\"}}"))
            }
        };
        let Some(given) = v.get("lsn") else {
            return AckOutcome::Error("no \"lsn\": send {\"lsn\":\"X/Y\"} to ACK".into());
        };
        let Some(lsn) = given.as_str().and_then(|s| s.parse::<Lsn>().ok()) else {
            return AckOutcome::Error(format!("{given} is not an LSN (X/Y in hexadecimal)"));
        };
        let reply = v.get("reply").and_then(|r| r.as_bool()).unwrap_or(false);
        if lsn > self.sent {
            AckOutcome::Error(format!(
                "ACK {lsn} is ahead of what was sent (up to {}); ignored",
                self.sent
            ))
        } else if lsn < self.last {
            AckOutcome::Warning(format!(
                "ACK {lsn} is behind the last ACK {}; ignored",
                self.last
            ))
        } else if lsn == self.last {
            if reply {
                AckOutcome::Accepted { lsn, reply }
            } else {
                AckOutcome::Unchanged
            }
        } else {
            AckOutcome::Accepted { lsn, reply }
        }
    }
}

/// Whether the allow-list `g` admits a row change (other objects pass).
fn allowed_by(g: &[TablePattern], c: &Change) -> bool {
    match c.action {
        Action::Insert | Action::Update | Action::Delete => {
            g.iter().any(|p| p.matches(&c.schema, &c.table))
        }
        Action::Truncate => c
            .truncated()
            .iter()
            .any(|(s, t)| g.iter().any(|p| p.matches(s, t))),
        _ => true,
    }
}

struct Consumer {
    ws: Ws,
    stream: Source,
    acks: Acks,
    opts: Options,
    global_tables: Vec<Vec<TablePattern>>,
    metrics: Arc<Metrics>,
    slot: String,
    /// Between a `B` and its `C`.
    in_txn: bool,
    /// Re-snapshots read into this stream.
    backfills: super::backfill::Backfills,
}

/// Why a session ends.
enum End {
    Client,
    Close(CloseCode, String),
}

impl Consumer {
    fn allowed_globally(&self, c: &Change) -> bool {
        self.global_tables.iter().all(|g| allowed_by(g, c))
    }

    /// Handles one plugin message: forwards it (fed, not flushed) or not.
    async fn handle(&mut self, msg: XLogData) -> Result<(), End> {
        self.metrics.changes_in.fetch_add(1, Ordering::Relaxed);
        let change = match Change::parse(msg.data, msg.wal_start) {
            Ok(c) => c,
            Err(e) => {
                self.metrics
                    .unparseable_messages
                    .fetch_add(1, Ordering::Relaxed);
                crate::limited!(error, slot = %self.slot, error = %e, "skipping a plugin message the proxy cannot parse");
                return Ok(());
            }
        };
        let position = change.end_lsn().unwrap_or(change.lsn).max(msg.wal_start);
        let mut replaced = None;
        let forward = match change.action {
            Action::Begin | Action::Commit => true,
            Action::Insert | Action::Update | Action::Delete | Action::Truncate => {
                let selected = self.allowed_globally(&change)
                    && delivery::selects(
                        self.opts.query.as_ref(),
                        self.opts.access.grant().read_limits().map(|r| &**r),
                        &change,
                    );
                if selected && self.opts.filter.is_some() {
                    if let Some(wait) = self.opts.filter.as_mut().and_then(|f| f.throttle()) {
                        self.ws.flush().await.map_err(|_| End::Client)?;
                        tokio::time::sleep(wait).await;
                    }
                    match filter_change(self.opts.filter.as_mut(), &change, &self.metrics) {
                        Outcome::Send(text) => replaced = Some(text),
                        Outcome::Skip => {}
                        Outcome::Report(frame) => replaced = Some(frame.into()),
                        Outcome::Detach(frame, reason) => {
                            let _ = self.ws.send(Message::Text(frame.into())).await;
                            return Err(End::Close(CloseCode::Policy, reason));
                        }
                    }
                    false
                } else {
                    selected
                }
            }
            Action::Message if change.is_heartbeat() => {
                if !self.opts.heartbeats && !self.in_txn && self.acks.last >= self.acks.sent {
                    // Everything sent is acknowledged and every transaction
                    // before the heartbeat was sent: its position is safe to
                    // confirm, so an idle stream's slot keeps advancing.
                    self.acks.last = position;
                    self.stream.confirm(position);
                }
                self.opts.heartbeats
            }
            // Watermarks of live subscriptions' backfills are the proxy's own.
            Action::Message if crate::backfill::window::is_mark(&change) => false,
            Action::Message | Action::Ddl => delivery::selects(
                self.opts.query.as_ref(),
                self.opts.access.grant().read_limits().map(|r| &**r),
                &change,
            ),
            _ => false,
        };
        if position > self.acks.sent {
            self.acks.sent = position;
        }
        match change.action {
            Action::Begin => self.in_txn = true,
            Action::Commit => {
                self.in_txn = false;
                self.metrics.activity();
            }
            _ => {}
        }
        self.update_caught_up();
        let due = self.backfills.observe(&change);
        if let Some(text) = replaced {
            self.ws
                .feed(Message::Text(text))
                .await
                .map_err(|_| End::Client)?;
            self.metrics.frames_out.fetch_add(1, Ordering::Relaxed);
        } else if forward {
            self.ws
                .feed(Message::Text(change.text.clone()))
                .await
                .map_err(|_| End::Client)?;
            self.metrics.frames_out.fetch_add(1, Ordering::Relaxed);
        }
        if due {
            self.send_chunk().await?;
        }
        Ok(())
    }

    /// Sends a re-snapshot's chunk whose high watermark was just handled:
    /// its rows (through the client's filter) and its progress frame.
    async fn send_chunk(&mut self) -> Result<(), End> {
        let frame = match self.backfills.take().await {
            Ok(ready) => {
                for entry in &ready.rows {
                    let text = match filter_change(
                        self.opts.filter.as_mut(),
                        &entry.change,
                        &self.metrics,
                    ) {
                        Outcome::Send(text) => text,
                        Outcome::Skip => continue,
                        Outcome::Report(frame) => frame.into(),
                        Outcome::Detach(frame, reason) => {
                            let _ = self.ws.send(Message::Text(frame.into())).await;
                            return Err(End::Close(CloseCode::Policy, reason));
                        }
                    };
                    self.ws
                        .feed(Message::Text(text))
                        .await
                        .map_err(|_| End::Client)?;
                }
                self.metrics
                    .frames_out
                    .fetch_add(ready.rows.len() as u64 + 1, Ordering::Relaxed);
                ready.frame
            }
            Err(frame) => frame,
        };
        self.ws
            .feed(Message::Text(frame.into()))
            .await
            .map_err(|_| End::Client)
    }

    /// Checks re-snapshots against this consumer's own rules and query,
    /// then queues them; what cannot be read gets a `failed` frame.
    async fn requested(&mut self, plans: Vec<crate::backfill::driver::Plan>) -> Result<(), End> {
        let mut ok = Vec::with_capacity(plans.len());
        for mut plan in plans {
            let (schema, name) = (&plan.table.schema, &plan.table.name);
            let refused = if self
                .opts
                .access
                .grant()
                .read_limits()
                .is_some_and(|r| !r.table_allowed(schema, name))
            {
                Some("this stream's token does not allow the table")
            } else if self
                .opts
                .query
                .as_ref()
                .is_some_and(|q| !q.matches_table(schema, name))
            {
                Some("this stream's query is on another table")
            } else {
                None
            };
            if let Some(reason) = refused {
                let frame = serde_json::json!({
                    "type": "snapshot",
                    "state": "failed",
                    "table": format!("{schema}.{name}"),
                    "error": reason,
                });
                self.reply(frame).await?;
                continue;
            }
            if let Some(r) = self.opts.access.grant().read_limits() {
                plan.filters.extend(r.row_filter.iter().cloned());
            }
            if let Some(q) = &self.opts.query {
                plan.filters.extend(q.filters.iter().cloned());
            }
            ok.push(plan);
        }
        self.backfills.add(ok);
        Ok(())
    }

    /// Everything sent is acknowledged and no transaction is open.
    fn update_caught_up(&mut self) {
        self.stream
            .set_caught_up(!self.in_txn && self.acks.last >= self.acks.sent);
    }

    async fn reply(&mut self, body: serde_json::Value) -> Result<(), End> {
        self.ws
            .send(Message::Text(body.to_string().into()))
            .await
            .map_err(|_| End::Client)
    }

    /// Handles a frame from the client (an ACK).
    async fn client_frame(&mut self, text: &str) -> Result<(), End> {
        match self.opts.access.on_frame(text) {
            None => {}
            Some(Ok(reply)) => {
                return self
                    .ws
                    .send(Message::Text(reply.into()))
                    .await
                    .map_err(|_| End::Client)
            }
            Some(Err(reason)) => return Err(End::Close(CloseCode::Policy, reason)),
        }
        match self.acks.judge(text) {
            AckOutcome::Accepted { lsn, reply } => {
                self.acks.last = lsn;
                self.stream.confirm(lsn);
                self.update_caught_up();
                self.metrics.acks.fetch_add(1, Ordering::Relaxed);
                // Tell PostgreSQL now, so the WAL can go and a reconnect
                // anywhere resumes after this ACK.
                if let Err(e) = self.stream.send_status().await {
                    return Err(End::Close(
                        CloseCode::Error,
                        format!(
                            "replication interrupted: {e}; reconnect to resume from your last ACK"
                        ),
                    ));
                }
                if reply {
                    self.reply(serde_json::json!({"ack": lsn.to_string()}))
                        .await?;
                }
                Ok(())
            }
            AckOutcome::Unchanged => Ok(()),
            AckOutcome::Warning(w) => self.reply(serde_json::json!({ "warning": w })).await,
            AckOutcome::Error(e) => self.reply(serde_json::json!({ "error": e })).await,
        }
    }

    async fn run(
        &mut self,
        shutdown: &CancellationToken,
        stop: &mut watch::Receiver<Option<String>>,
    ) -> End {
        loop {
            let expiry = self.opts.access.deadline();
            tokio::select! {
                _ = shutdown.cancelled() => return End::Close(CloseCode::Away, "server shutting down; reconnect to resume from your last ACK".into()),
                _ = tokio::time::sleep_until(expiry.unwrap_or_else(tokio::time::Instant::now)), if expiry.is_some() => {
                    self.metrics.count_close(crate::metrics::CloseReason::TokenExpired);
                    return End::Close(CloseCode::Policy, "token expired".into());
                }
                changed = stop.changed() => {
                    let reason = match changed {
                        Ok(()) => stop.borrow().clone().unwrap_or_default(),
                        Err(_) => String::new(),
                    };
                    return End::Close(CloseCode::Normal, format!("stream deleted {reason}").trim().to_owned());
                }
                msg = self.ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        if let Err(end) = self.client_frame(t.as_str()).await {
                            return end;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        if let Err(end) = self.reply(serde_json::json!({"error": "binary frames are not understood; send {\"lsn\":\"X/Y\"} as text"})).await {
                            return end;
                        }
                    }
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return End::Client,
                    Some(Ok(_)) => {}
                },
                step = self.backfills.next() => {
                    let done = match step {
                        super::backfill::Step::Requested(plans) => self.requested(plans).await,
                        super::backfill::Step::Failed(frame) => {
                            self.backfills.finish();
                            self.ws.send(Message::Text(frame.into())).await.map_err(|_| End::Client)
                        }
                        super::backfill::Step::Ended => {
                            self.backfills.finish();
                            Ok(())
                        }
                        super::backfill::Step::Quiet => Ok(()),
                    };
                    if let Err(end) = done {
                        return end;
                    }
                }
                next = self.stream.next() => {
                    let mut next = Some(next);
                    let mut handled = 0;
                    // Feed what PostgreSQL has ready, then flush once.
                    while let Some(n) = next.take() {
                        match n {
                            Ok(Some(msg)) => {
                                if let Err(end) = self.handle(msg).await {
                                    return end;
                                }
                                handled += 1;
                            }
                            Ok(None) => return End::Close(CloseCode::Error, "the stream ended (PostgreSQL ended replication, or another connection took the stream over); reconnect to resume from your last ACK".into()),
                            Err(e) => return End::Close(CloseCode::Error, format!("replication interrupted: {e}; reconnect to resume from your last ACK")),
                        }
                        if handled < MAX_BATCH {
                            next = self.stream.next().now_or_never();
                        }
                    }
                    if self.ws.flush().await.is_err() {
                        return End::Client;
                    }
                }
            }
        }
    }
}

/// Serves one consumer until it leaves, the stream is deleted, replication
/// fails or the server stops; then confirms the last ACK and ends the
/// replication connection.
#[tracing::instrument(name = "consumer", skip_all, fields(slot = %opened.slot))]
pub async fn run(
    ws: Ws,
    opened: Opened,
    opts: Options,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let Opened {
        slot,
        stream,
        start,
        mut guard,
        global_tables,
    } = opened;
    let _consumer = Gauge::up(&metrics.stream_consumers);
    crate::limited!(info, slot = %slot, from = %start, "durable stream consumer connected");
    let mut opts = opts;
    let first = std::mem::take(&mut opts.backfills);
    let (pool, shared) = opts.backfill_runner.clone();
    let backfills =
        super::backfill::Backfills::new(guard.backfills.take(), pool, shared, metrics.clone());
    let mut consumer = Consumer {
        ws,
        stream,
        acks: Acks {
            last: start,
            sent: start,
        },
        opts,
        global_tables,
        metrics: metrics.clone(),
        slot: slot.clone(),
        in_txn: false,
        backfills,
    };
    consumer.update_caught_up();
    // A client already gone is noticed by the loop.
    let _ = consumer.requested(first).await;
    let end = consumer.run(&shutdown, &mut guard.stop).await;
    let Consumer {
        mut ws,
        stream,
        acks,
        ..
    } = consumer;
    // Confirm the last ACK and end the copy before the slot is released.
    stream.close().await;
    if let End::Close(code, reason) = &end {
        close(&mut ws, *code, reason).await;
    }
    crate::limited!(info, slot = %slot, last_ack = %acks.last, "durable stream consumer left");
    drop(guard);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_rules() {
        let a = Acks {
            last: Lsn(0x100),
            sent: Lsn(0x200),
        };
        assert_eq!(
            a.judge(r#"{"lsn":"0/180"}"#),
            AckOutcome::Accepted {
                lsn: Lsn(0x180),
                reply: false
            }
        );
        assert_eq!(
            a.judge(r#"{"lsn":"0/200","reply":true}"#),
            AckOutcome::Accepted {
                lsn: Lsn(0x200),
                reply: true
            }
        );
        assert_eq!(a.judge(r#"{"lsn":"0/100"}"#), AckOutcome::Unchanged);
        assert!(matches!(
            a.judge(r#"{"lsn":"0/80"}"#),
            AckOutcome::Warning(_)
        ));
        assert!(matches!(
            a.judge(r#"{"lsn":"0/201"}"#),
            AckOutcome::Error(_)
        ));
        assert!(matches!(a.judge(r#"{"lsn":"zz"}"#), AckOutcome::Error(_)));
        assert!(matches!(a.judge(r#"{"lsn":5}"#), AckOutcome::Error(_)));
        assert!(matches!(a.judge("{}"), AckOutcome::Error(_)));
        assert!(matches!(a.judge("nope"), AckOutcome::Error(_)));
    }
}
