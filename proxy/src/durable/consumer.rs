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
use crate::delivery::{self, Outcome, Pipeline};
use crate::filter::BATCH_EVENTS;
use crate::frames::{self, Frame};
use crate::liveness::{Dead, Due, KeepAlive, Watch};
use crate::metrics::{CloseReason, Gauge, Metrics};
use crate::query::Query;
use crate::refusal::{Kind, Refusal};
use crate::replication::{ReplicationClient, ReplicationError, ReplicationStream, XLogData};
use crate::ws::{close, Ws};
use futures_util::{FutureExt, SinkExt, StreamExt};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_postgres::error::SqlState;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
pub use walcast_core::requests::{AckOutcome, Acks};
use walcast_format::{Lsn, TablePattern};

/// Frames written before each flush when PostgreSQL has more ready.
const MAX_BATCH: usize = 512;

/// How long to wait for a slot still held by a connection that is going
/// away (a consumer that just disconnected) before answering 409.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// What the client asked for besides the slot.
pub struct Options {
    pub query: Option<Query>,
    /// A WASM filter, applied after the query (taken into the consumer's
    /// delivery pipeline).
    pub filter: Option<crate::filter::FilterInstance>,
    /// Forward the proxy's heartbeat messages (`walcast.heartbeat`).
    pub heartbeats: bool,
    /// The client's grant: its rules apply to every change before the
    /// query and the filter; it expires unless refreshed.
    pub access: crate::auth::Access,
    /// Tables whose current rows to send first (`&snapshot=`), and how.
    pub backfills: Vec<crate::backfill::driver::Plan>,
    /// Warning frames sent first (`{"warning": ...}`).
    pub warnings: Vec<String>,
    pub backfill_runner: (crate::sql::SqlPool, Arc<crate::backfill::driver::Shared>),
}

/// Where a durable stream's frames come from.
pub enum Source {
    /// The stream's own slot.
    Slot(ReplicationStream),
    /// On an edge: the stream's JetStream consumer (`jet.rs`).
    Jet(Box<super::jet::JetSource>),
}

/// Why a durable stream's source failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The slot's replication connection.
    #[error(transparent)]
    Slot(#[from] ReplicationError),
    /// Reading the JetStream consumer.
    #[error(transparent)]
    Read(#[from] super::jet::ReadError),
    /// JetStream did not take an acknowledgement.
    #[error(transparent)]
    Ack(#[from] super::jet::AckError),
}

impl Source {
    /// The next plugin message. Cancel safe as the slot's stream and a
    /// pull consumer's message stream are.
    async fn next(&mut self) -> Result<Option<XLogData>, SourceError> {
        Ok(match self {
            Source::Slot(s) => s.next().await?,
            Source::Jet(j) => j.next().await?,
        })
    }

    fn confirm(&mut self, lsn: Lsn) {
        match self {
            Source::Slot(s) => s.confirm(lsn),
            Source::Jet(j) => j.confirm(lsn),
        }
    }

    /// Makes the confirmed position durable (a status update to
    /// PostgreSQL; an acknowledgement JetStream confirms).
    async fn send_status(&mut self) -> Result<(), SourceError> {
        match self {
            Source::Slot(s) => s.send_status(false).await?,
            Source::Jet(j) => j.send_status().await?,
        }
        Ok(())
    }

    fn set_caught_up(&mut self, yes: bool) {
        if let Source::Slot(s) = self {
            s.set_caught_up(yes);
        }
    }

    /// Tells PostgreSQL the proxy is there while a client's write waits (a
    /// walsender that hears nothing for `wal_sender_timeout` ends the
    /// connection). A failure shows at the next read.
    async fn keep_alive(&mut self) {
        if let Source::Slot(s) = self {
            let _ = s.send_status(false).await;
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

impl KeepAlive for Source {
    fn keep_alive(&mut self) -> impl std::future::Future<Output = ()> + Send {
        Source::keep_alive(self)
    }
}

/// A stream started and waiting for its websocket.
pub struct Opened {
    slot: String,
    stream: Source,
    /// The replication connection's timeline (none on an edge).
    timeline: Option<u32>,
    /// Where streaming starts: the slot's confirmed position, or the
    /// client's last ACK (`acked=`) when that is further.
    start: Lsn,
    /// The client's `acked=` moved the start past the slot's position:
    /// confirm it to PostgreSQL at once.
    confirm_start: bool,
    /// A warning frame sent first.
    notice: Option<String>,
    guard: ConsumerGuard,
    /// Allow-lists checked here (each must admit a row change): the
    /// proxy-wide one when the plugin applied the stream's own, both on an
    /// edge (the stream holds every table).
    global_tables: Vec<Vec<TablePattern>>,
}

/// Where a stream resumes: after the client's last ACK `acked` when it is
/// past the slot's confirmed position (an ACK that never reached
/// PostgreSQL, the connection having dropped first), else after the slot's
/// position. An `acked` beyond the end of WAL (`confirmed + lag`) is no
/// position this stream ever sent: refused.
pub fn resume_point(
    confirmed: Lsn,
    lag_bytes: Option<i64>,
    acked: Option<Lsn>,
) -> Result<Lsn, Refusal> {
    let Some(acked) = acked.filter(|a| *a > confirmed) else {
        return Ok(confirmed);
    };
    if let Some(lag) = lag_bytes {
        let end = Lsn(confirmed.0.saturating_add(lag.max(0) as u64));
        if acked > end {
            return Err(Refusal::invalid(format!(
                "acked={acked} is ahead of the end of WAL ({end}): pass the end_lsn of the last transaction you ACKed"
            ))
            .code("ACKED_AHEAD"));
        }
    }
    Ok(acked)
}

/// Where a stream's client is when it connects, for [`diverged`].
struct Where {
    /// The server's timeline.
    timeline: u32,
    /// The slot's confirmed position.
    confirmed: Lsn,
    /// The client's `acked=`.
    acked: Option<Lsn>,
    /// What this proxy last sent the stream's consumer, and the timeline it
    /// was read on ([`Streams::sent_of`]).
    sent: Option<(Lsn, u32)>,
}

/// After a promotion (the server's history left earlier timelines at the
/// `switches`): 410 `STREAM_DIVERGED` when the stream's client may hold
/// transactions the old primary sent that are not on this server's
/// history, so that going on would leave them standing or skip the new
/// primary's transactions at the same positions.
///
/// - This proxy sent transactions read on an earlier timeline past the
///   point where the history left it: they never happened here.
/// - The client ACKed a position past a switch point that the slot never
///   confirmed: it cannot be told whether that position is the old
///   primary's (never happened) or this one's (an ACK that did not reach
///   PostgreSQL before the connection dropped), unless this proxy sent it
///   on this timeline. Refused rather than guessed.
fn diverged(slot: &str, switches: &[(u32, Lsn)], at: &Where) -> Option<Refusal> {
    let left = |tli: u32| switches.iter().find(|(t, _)| *t == tli).map(|(_, s)| *s);
    let refuse = |why: String| {
        Refusal::new(
            Kind::Gone,
            format!(
                "durable stream {slot}: {why}; the transactions from there on were sent by the old \
                 primary and never happened on this server (a failover without \
                 synchronized_standby_slots: docs/operations.md#failover). The client's data must be \
                 read again: create a new stream with POST /v1/init (a new snapshot) and delete this \
                 one (DELETE /v1/streams/{slot})"
            ),
        )
        .code("STREAM_DIVERGED")
    };
    if let Some((end, tli)) = at.sent.filter(|(_, t)| *t != at.timeline) {
        if let Some(switch) = left(tli).filter(|s| end > *s) {
            return Some(refuse(format!(
                "its consumer was sent transactions up to {end} on timeline {tli}, and the promoted \
                 server's history left that timeline at {switch}"
            )));
        }
    }
    let acked = at.acked.filter(|a| *a > at.confirmed)?;
    let sent_here = at
        .sent
        .is_some_and(|(end, t)| t == at.timeline && end >= acked);
    if sent_here {
        return None;
    }
    switches
        .iter()
        .find(|(_, s)| at.confirmed <= *s && *s < acked)
        .map(|(tli, switch)| {
            refuse(format!(
                "acked={acked} is past {switch}, where the promoted server's history left timeline \
                 {tli}, and the stream's slot confirmed only {}",
                at.confirmed
            ))
        })
}

/// Claims the consumer place of `slot` and starts streaming from it, or
/// from `acked` (see [`resume_point`]).
pub async fn open(streams: &Streams, slot: &str, acked: Option<Lsn>) -> Result<Opened, Refusal> {
    if let Some(jet) = &streams.jet {
        return open_on_jetstream(streams, jet, slot, acked).await;
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
        return Err(Refusal::new(
            Kind::InUse,
            format!(
                "{slot} is in use by another connection (walsender pid {}); one consumer per stream at a time",
                info.active_pid.unwrap_or(0)
            ),
        ));
    }
    let confirmed = info.confirmed_lsn.unwrap_or(Lsn::INVALID);
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
            Kind::InUse
        } else {
            Kind::Unavailable
        };
        Refusal::new(status, format!("cannot start streaming {slot}: {e}"))
    };
    let mut client = ReplicationClient::connect(streams.database())
        .await
        .map_err(start_failed)?;
    // After a promotion: where the client is must be on the server's
    // history (before the ACK's check against the end of WAL, which a
    // position that never happened here may also fail).
    let timeline = client
        .identify_system()
        .await
        .map_err(start_failed)?
        .timeline;
    let switches = client.switch_points(timeline).await.map_err(start_failed)?;
    let at = Where {
        timeline,
        confirmed,
        acked,
        sent: streams.sent_of(slot),
    };
    if let Some(refusal) = diverged(slot, &switches, &at) {
        return Err(refusal);
    }
    let from = resume_point(confirmed, info.lag_bytes, acked)?;
    if streams.cfg.failover_slots {
        client
            .keep_failover(slot, None)
            .await
            .map_err(start_failed)?;
    }
    // 0/0: PostgreSQL starts at the slot's confirmed position. Past it,
    // PostgreSQL skips every transaction whose commit ends at or before
    // `from`, as an ACK of `from` says.
    let confirm_start = from > confirmed;
    let requested = if confirm_start { from } else { Lsn::INVALID };
    let stream = client
        .start(slot, requested, &options, streams.cfg.status_interval)
        .await
        .map_err(start_failed)?;
    Ok(Opened {
        slot: slot.to_owned(),
        stream: Source::Slot(stream),
        timeline: Some(timeline),
        start: from,
        confirm_start,
        notice: None,
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
    acked: Option<Lsn>,
) -> Result<Opened, Refusal> {
    streams.require(slot).await?;
    let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
    let guard = streams.claim_consumer(slot, deadline).await?;
    let mut global_tables = Vec::new();
    if let Some(own) = streams.stream_tables(slot).await? {
        global_tables.push(TablePattern::parse_list(&own).map_err(|e| {
            Refusal::unavailable(format!("the stream's recorded tables do not parse: {e}"))
        })?);
    }
    if let Some((_, global)) = &streams.cfg.tables {
        global_tables.push(global.clone());
    }
    let (source, start) = jet.take_over(slot).await?;
    // The JetStream consumer resumes at its own acknowledged position.
    let notice = acked.filter(|a| *a > start).map(|a| {
        format!("acked={a} is past this stream's position {start} on this edge: transactions up to it come again; ACK them again")
    });
    Ok(Opened {
        slot: slot.to_owned(),
        stream: Source::Jet(Box::new(source)),
        timeline: None,
        start,
        confirm_start: false,
        notice,
        guard,
        global_tables,
    })
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
    /// The client's pings and progress (liveness.rs).
    watch: Watch,
    stream: Source,
    acks: Acks,
    opts: Options,
    /// The client's filter, run through the delivery pipeline.
    pipeline: Pipeline,
    global_tables: Vec<Vec<TablePattern>>,
    metrics: Arc<Metrics>,
    /// Between a `B` and its `C`.
    in_txn: bool,
    /// The position of the last frame of the stream sent to the client
    /// (what it may hold; [`ConsumerGuard::sent`]).
    forwarded: Lsn,
    /// Re-snapshots read into this stream.
    backfills: super::backfill::Backfills,
}

/// Why a session ends.
enum End {
    Client,
    Close(CloseCode, String),
}

impl Consumer {
    /// Runs a websocket write while the client keeps taking bytes; the
    /// replication connection hears from the proxy while it waits.
    async fn write(&mut self, msg: Option<Message>, flush: bool) -> Result<(), End> {
        let Consumer {
            ws,
            watch,
            stream,
            metrics,
            ..
        } = self;
        let done = match msg {
            Some(m) if flush => watch.write_keeping(ws.send(m), stream).await,
            Some(m) => watch.write_keeping(ws.feed(m), stream).await,
            None => watch.write_keeping(ws.flush(), stream).await,
        };
        done.map_err(|d| dead(watch, metrics, d))
    }

    /// Queues a text frame (sent at the next flush).
    async fn feed(
        &mut self,
        text: impl Into<tokio_tungstenite::tungstenite::Utf8Bytes>,
    ) -> Result<(), End> {
        self.write(Some(Message::Text(text.into())), false).await
    }

    /// Sends a text frame and everything queued before it.
    async fn send(
        &mut self,
        text: impl Into<tokio_tungstenite::tungstenite::Utf8Bytes>,
    ) -> Result<(), End> {
        self.write(Some(Message::Text(text.into())), true).await
    }

    async fn flush(&mut self) -> Result<(), End> {
        self.write(None, false).await
    }

    fn allowed_globally(&self, c: &Change) -> bool {
        self.global_tables.iter().all(|g| allowed_by(g, c))
    }

    /// Handles one plugin message: forwards its changes (fed, not flushed)
    /// or not.
    async fn handle(&mut self, msg: XLogData) -> Result<(), End> {
        let metrics = self.metrics.clone();
        for change in crate::replication::reader::changes(&msg, &metrics) {
            self.change(change, msg.wal_start).await?;
        }
        Ok(())
    }

    /// Forwards one change (fed, not flushed) or not.
    async fn change(&mut self, change: Change, wal_start: Lsn) -> Result<(), End> {
        let position = change.end_lsn().unwrap_or(change.lsn).max(wal_start);
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
                if selected {
                    // Through the delivery pipeline, one change at a time:
                    // each is an ACK point, and the next may be far away.
                    if let Some(wait) = self.pipeline.pause() {
                        self.flush().await?;
                        tokio::time::sleep(wait).await;
                    }
                    let outcome = match self.pipeline.judge(std::slice::from_ref(&change)) {
                        None => Some(Outcome::Send(change.text.clone())),
                        Some(mut judged) => judged.next(),
                    };
                    match outcome {
                        Some(Outcome::Send(text)) => replaced = Some(text),
                        Some(Outcome::Report(frame)) => replaced = Some(frame.into()),
                        Some(Outcome::Detach(frame, reason)) => {
                            let _ = self.send(frame).await;
                            return Err(End::Close(CloseCode::Policy, reason));
                        }
                        Some(Outcome::Skip) | None => {}
                    }
                }
                false
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
            self.feed(text).await?;
            self.metrics.frames_out.fetch_add(1, Ordering::Relaxed);
            self.forwarded = position;
        } else if forward {
            self.feed(change.text.clone()).await?;
            self.metrics.frames_out.fetch_add(1, Ordering::Relaxed);
            self.forwarded = position;
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
                // Through the delivery pipeline in batches, as a live
                // session's chunks go.
                let mut sent = 1u64;
                for rows in ready.rows.chunks(BATCH_EVENTS) {
                    if let Some(wait) = self.pipeline.pause() {
                        self.flush().await?;
                        tokio::time::sleep(wait).await;
                    }
                    let outcomes: Vec<Outcome> = match self.pipeline.judge(rows) {
                        None => rows
                            .iter()
                            .map(|r| Outcome::Send(r.change.text.clone()))
                            .collect(),
                        Some(judged) => judged.collect(),
                    };
                    for outcome in outcomes {
                        let text = match outcome {
                            Outcome::Send(text) => text,
                            Outcome::Skip => continue,
                            Outcome::Report(frame) => frame.into(),
                            Outcome::Detach(frame, reason) => {
                                let _ = self.send(frame).await;
                                return Err(End::Close(CloseCode::Policy, reason));
                            }
                        };
                        self.feed(text).await?;
                        sent += 1;
                    }
                }
                self.metrics.frames_out.fetch_add(sent, Ordering::Relaxed);
                ready.frame
            }
            Err(failed) => failed.to_string(),
        };
        self.feed(frame).await
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
                let frame = crate::frames::snapshot_failed(&format!("{schema}.{name}"), reason);
                self.send(frame).await?;
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

    async fn reply(&mut self, frame: Frame<'_>) -> Result<(), End> {
        self.send(frame.text()).await
    }

    /// Handles a frame from the client (an ACK).
    async fn client_frame(&mut self, text: &str) -> Result<(), End> {
        match self.opts.access.on_frame(text) {
            None => {}
            Some(Ok(reply)) => return self.send(reply).await,
            Some(Err(reason)) => return Err(End::Close(CloseCode::Policy, reason.to_string())),
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
                    self.reply(Frame::Ack {
                        ack: lsn.to_string(),
                    })
                    .await?;
                }
                Ok(())
            }
            AckOutcome::Unchanged => Ok(()),
            AckOutcome::Warning(w) => self.reply(Frame::Warning { warning: &w }).await,
            AckOutcome::Error(e) => self.reply(Frame::Error(frames::Error::new(&e))).await,
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
                _ = self.watch.tick() => {
                    let due = match self.watch.on_tick() {
                        Ok(Due::Ping) => self.write(Some(Message::Ping(Default::default())), true).await,
                        Ok(Due::Wait) => Ok(()),
                        Err(d) => Err(dead(&self.watch, &self.metrics, d)),
                    };
                    if let Err(end) = due {
                        return end;
                    }
                }
                msg = self.ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        self.watch.heard();
                        if let Err(end) = self.client_frame(t.as_str()).await {
                            return end;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        if let Err(end) = self.reply(Frame::Error(frames::Error::new("binary frames are not understood; send {\"lsn\":\"X/Y\"} as text"))).await {
                            return end;
                        }
                    }
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return End::Client,
                    // Any frame (a pong above all) shows the client is there.
                    Some(Ok(_)) => self.watch.heard(),
                },
                step = self.backfills.next() => {
                    let done = match step {
                        super::backfill::Step::Requested(plans) => self.requested(plans).await,
                        super::backfill::Step::Failed(frame) => {
                            self.backfills.finish();
                            self.send(frame).await
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
                            Err(SourceError::Read(super::jet::ReadError::Lost(why))) => return End::Close(CloseCode::Again, format!("the relay stopped: {why}; the stream cannot go on")),
                            Err(e) => return End::Close(CloseCode::Error, format!("replication interrupted: {e}; reconnect to resume from your last ACK")),
                        }
                        if handled < MAX_BATCH {
                            next = self.stream.next().now_or_never();
                        }
                    }
                    if let Err(end) = self.flush().await {
                        return end;
                    }
                }
            }
        }
    }
}

/// How a consumer that is judged gone ends (liveness.rs).
fn dead(watch: &Watch, metrics: &Metrics, d: Dead) -> End {
    match d {
        Dead::Gone => End::Client,
        Dead::Stalled => {
            metrics.count_close(CloseReason::Stalled);
            End::Close(
                CloseCode::Again,
                format!(
                    "{}; reconnect to resume from your last ACK",
                    watch.stalled_reason()
                ),
            )
        }
        Dead::Silent => {
            metrics.count_close(CloseReason::PingTimeout);
            End::Close(CloseCode::Away, watch.silent_reason())
        }
    }
}

/// Serves one consumer until it leaves, the stream is deleted, replication
/// fails or the server stops; then confirms the last ACK and ends the
/// replication connection.
#[tracing::instrument(name = "consumer", skip_all, fields(slot = %opened.slot))]
pub async fn run(
    ws: Ws,
    watch: Watch,
    opened: Opened,
    opts: Options,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let Opened {
        slot,
        stream,
        timeline,
        start,
        confirm_start,
        notice,
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
        watch,
        stream,
        acks: Acks {
            last: start,
            sent: start,
        },
        pipeline: Pipeline::durable(opts.filter.take(), metrics.clone()),
        opts,
        global_tables,
        metrics: metrics.clone(),
        in_txn: false,
        forwarded: start,
        backfills,
    };
    consumer.update_caught_up();
    if confirm_start {
        consumer.stream.confirm(start);
        if let Err(e) = consumer.stream.send_status().await {
            crate::limited!(warn, slot = %slot, error = %e, "could not confirm the client's acked position at start; it is confirmed with the next status update");
        }
    }
    // A client already gone is noticed by the loop.
    let warnings = std::mem::take(&mut consumer.opts.warnings);
    for n in notice.into_iter().chain(warnings) {
        let _ = consumer.reply(Frame::Warning { warning: &n }).await;
    }
    let _ = consumer.requested(first).await;
    let end = consumer.run(&shutdown, &mut guard.stop).await;
    let Consumer {
        mut ws,
        stream,
        acks,
        forwarded,
        ..
    } = consumer;
    // Confirm the last ACK and end the copy before the slot is released.
    stream.close().await;
    if let Some(timeline) = timeline {
        guard.sent(forwarded, timeline);
    }
    if let End::Close(code, reason) = &end {
        close(&mut ws, *code, reason).await;
    }
    crate::limited!(info, slot = %slot, last_ack = %acks.last, "durable stream consumer left");
    drop(guard);
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Lsn = Lsn(0x5000);

    fn at(confirmed: u64, acked: Option<u64>, sent: Option<(u64, u32)>) -> Where {
        Where {
            timeline: 2,
            confirmed: Lsn(confirmed),
            acked: acked.map(Lsn),
            sent: sent.map(|(e, t)| (Lsn(e), t)),
        }
    }

    fn code(w: &Where) -> Option<String> {
        diverged("walcast_s1", &[(1, S)], w).map(|r| {
            assert_eq!(r.kind, Kind::Gone, "{r:?}");
            r.code.unwrap_or_default().to_owned()
        })
    }

    #[test]
    fn a_client_past_the_switch_point_of_the_old_timeline_is_refused() {
        let refused = Some("STREAM_DIVERGED".to_owned());
        // Sent on the old timeline past the point where the history left it.
        assert_eq!(code(&at(0x4000, None, Some((0x5100, 1)))), refused);
        // ACKed past it, and neither the slot nor this proxy says where.
        assert_eq!(code(&at(0x4000, Some(0x5100), None)), refused);
        assert_eq!(code(&at(0x5000, Some(0x5100), None)), refused);
    }

    #[test]
    fn a_client_on_the_shared_history_or_known_on_this_timeline_goes_on() {
        // Everything before the switch point is on the new history.
        assert_eq!(code(&at(0x4000, Some(0x5000), Some((0x5000, 1)))), None);
        assert_eq!(code(&at(0x4000, Some(0x4800), None)), None);
        // The slot confirmed past the switch point: on this timeline.
        assert_eq!(code(&at(0x5200, Some(0x5100), None)), None);
        assert_eq!(code(&at(0x5100, Some(0x5300), None)), None);
        // An ACK this proxy sent on this timeline, not yet confirmed.
        assert_eq!(code(&at(0x4000, Some(0x5100), Some((0x5200, 2)))), None);
        // No promotion.
        assert_eq!(
            diverged("walcast_s1", &[], &at(0, Some(0x9000), None)),
            None
        );
    }
}
