//! The live stream's source: one replication connection on the proxy's slot
//! -> parsed changes -> the hub (and so the change log).
//!
//! The reader creates the proxy's permanent slot on first start, streams from
//! its confirmed position with the plugin's `include-position`, hands the
//! hub row changes in batches (at most [`BATCH`], and at every commit),
//! confirms each transaction's end once its changes are in the log,
//! reconnects with backoff after transient errors and stops (reporting on
//! `/healthz`, closing clients with the reason) after definite ones.

use crate::change::{Action, Change};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::replication::{
    ErrorKind, ReplicationClient, ReplicationError, ReplicationStream, SystemInfo, XLogData,
};
use crate::sink::Sink;
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use walcast_core::marks::is_mark;
use walcast_format::{Lsn, Position};

/// Row changes handed to the hub at once at most.
pub const BATCH: usize = 256;

/// The plugin's `batch-bytes`: fewer, larger messages from the walsender
/// (one send per batch instead of one per change).
const PLUGIN_BATCH_BYTES: &str = "16384";

/// What the plugin puts between the objects of one message.
const RECORD_SEPARATOR: u8 = 0x1E;

/// What the reader needs.
#[derive(Clone)]
pub struct ReaderConfig {
    pub database: crate::database::Database,
    pub slot: String,
    /// `schema.table` patterns passed to the plugin as `add-tables`.
    pub tables: Option<String>,
    pub status_interval: Duration,
    /// Make the slot a failover slot on PostgreSQL 17+ (`--failover-slots`).
    pub failover_slots: bool,
    /// Make a new slot in place of a lost one and go on
    /// (`--recreate-lost-slot`); otherwise a lost slot stops streaming.
    pub recreate_lost_slot: bool,
}

/// What has been handed to the hub, kept across reconnects so that a
/// reconnect neither skips nor repeats changes.
#[derive(Debug, Default, Clone, Copy)]
struct Handed {
    /// End of the last transaction handed over completely (where to resume).
    committed: Lsn,
    /// Inside a transaction: after a reconnect PostgreSQL sends it again
    /// from its start, and the changes already in the log are skipped by
    /// their positions.
    in_txn: bool,
}

/// What a reader (or the relay) knows of its slot across reconnects.
#[derive(Debug, Default)]
pub struct Slot {
    /// The slot existed once: its disappearance is a definite error.
    seen: bool,
    /// The database system and timeline of the last connection.
    system: Option<SystemInfo>,
    /// Set when [`open`] made a new slot in place of a lost one: where the
    /// new one starts (the changes before it since the lost slot's last
    /// confirmed position are missing).
    replaced: Option<Lsn>,
    /// Before the first connection: the timeline what was handed on was
    /// read on, when an earlier process says it (the relay's last message
    /// in JetStream).
    earlier_timeline: Option<u32>,
    /// The server's timeline and where its history left each earlier one
    /// (`TIMELINE_HISTORY`, read once per timeline).
    history: Option<(u32, Vec<(u32, Lsn)>)>,
}

/// Changes handed on, the last one committed at `last`, that the promoted
/// server's history, which left the old timeline at `switch`, does not hold.
fn diverged(switch: Lsn, last: Lsn) -> ReplicationError {
    ReplicationError {
        kind: ErrorKind::Diverged,
        message: format!(
            "the promoted server's history left the old timeline at {switch}, but changes \
             committed up to {last} were already delivered from the old primary: those from \
             {switch} on never happened on this server (a failover without synchronized_standby_slots). \
             Clients must re-sync; docs/operations.md#failover says how to go on"
        ),
        sqlstate: None,
    }
}

/// Why a slot is lost: `seen` (this process used it) or only recorded.
fn lost_slot(name: &str, seen: bool) -> ReplicationError {
    let what = if seen {
        "is gone from the server while this proxy used it"
    } else {
        "is recorded in walcast.streams but not on this server"
    };
    ReplicationError {
        kind: ErrorKind::SlotLost,
        message: format!(
            "the replication slot {name} {what} (lost in a failover to a server without it, or \
             dropped outside walcast: docs/operations.md#failover); the changes committed since \
             its last confirmed position cannot be read. To go on from a new slot: \
             --recreate-lost-slot (clients resuming from before it are told the changes are \
             gone); for the relay, docs/scale-out.md#failures"
        ),
        sqlstate: None,
    }
}

/// The slot exists, but PostgreSQL invalidated it.
fn invalidated_slot(name: &str) -> ReplicationError {
    ReplicationError {
        kind: ErrorKind::SlotLost,
        message: format!(
            "the replication slot {name} was invalidated by PostgreSQL (it fell behind \
             max_slot_wal_keep_size, or, on a standby, the primary removed rows it needed: \
             pg_replication_slots says why); the changes committed since its last confirmed \
             position cannot be read. To go on from a new slot: --recreate-lost-slot (clients \
             resuming from before it are told the changes are gone); for the relay, \
             docs/scale-out.md#failures"
        ),
        sqlstate: None,
    }
}

impl Slot {
    /// A slot whose changes, up to the `delivered` given to [`open`], were
    /// read on `timeline` by an earlier process: the first connection is
    /// checked against that timeline as a reconnect is against the last.
    pub(crate) fn read_earlier_on(timeline: u32) -> Slot {
        Slot {
            earlier_timeline: Some(timeline),
            ..Slot::default()
        }
    }

    /// The timeline of the last connection.
    pub(crate) fn timeline(&self) -> Option<u32> {
        self.system.as_ref().map(|s| s.timeline)
    }

    /// Where the server's history left its earliest earlier timeline, when
    /// it was promoted: positions from there on may be of changes an old
    /// primary delivered that never happened on it.
    fn history_left(&self) -> Option<Lsn> {
        let (_, switches) = self.history.as_ref()?;
        switches.iter().map(|(_, s)| *s).min()
    }

    /// Reads the history of the server on `timeline` through `client`,
    /// unless it is known already.
    async fn learn_history(
        &mut self,
        client: &mut ReplicationClient,
        timeline: u32,
    ) -> Result<(), ReplicationError> {
        if self.history.as_ref().map(|(t, _)| *t) != Some(timeline) {
            self.history = Some((timeline, client.switch_points(timeline).await?));
        }
        Ok(())
    }

    /// Where the server's history left the timeline `earlier`.
    fn switch_point(&self, earlier: u32) -> Option<Lsn> {
        let (_, switches) = self.history.as_ref()?;
        switches
            .iter()
            .find(|(t, _)| *t == earlier)
            .map(|(_, s)| *s)
    }

    /// Checks a new connection's `IDENTIFY_SYSTEM` against the last one's.
    /// Another system is a definite error: the URL now leads to another
    /// cluster, which cannot have this slot's history. A new timeline (a
    /// standby promoted) is reported and returned (the earlier timeline);
    /// the slot, if the promoted server has it, goes on from its confirmed
    /// position.
    fn identified(&mut self, slot: &str, now: SystemInfo) -> Result<Option<u32>, ReplicationError> {
        if let Some(before) = &self.system {
            if before.system_id != now.system_id {
                return Err(ReplicationError::definite(format!(
                    "the database URL now leads to another PostgreSQL cluster (system {} instead \
                     of {}), which does not have the history of slot {slot}; restart \
                     walcast-proxy to start over on it",
                    now.system_id, before.system_id
                )));
            }
        }
        let before = self.timeline().or(self.earlier_timeline.take());
        let switched = before.filter(|b| *b != now.timeline);
        if let Some(before) = switched {
            tracing::warn!(
                from = before,
                to = now.timeline,
                "the server is on a new timeline (a standby was promoted); going on from the slot's confirmed position"
            );
        }
        self.system = Some(now);
        Ok(switched)
    }
}

/// The live path's source: the proxy's slot, read into a sink (the hub).
pub struct Reader {
    cfg: ReaderConfig,
    sink: Box<dyn Sink>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    slot: Slot,
    handed: Handed,
}

/// Runs until `shutdown` becomes true or a definite error stops streaming.
pub async fn run(
    cfg: ReaderConfig,
    sink: impl Sink + 'static,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("reader", slot = %cfg.slot);
    let reader = Reader {
        cfg,
        sink: Box::new(sink),
        metrics,
        health,
        slot: Slot::default(),
        handed: Handed::default(),
    };
    reader.run(shutdown).instrument(span).await
}

impl Reader {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let before = self.handed.committed;
            let result = self.stream_once(&shutdown).await;
            // A connection that got transactions through was a success: the
            // next failure starts the backoff again.
            if self.handed.committed > before {
                backoff.reset();
            }
            match result {
                Ok(()) => return,
                Err(e) if e.kind == ErrorKind::Transient => {
                    let what = "replication interrupted; reconnecting";
                    let (health, metrics) = (&self.health, &self.metrics);
                    if !retry_after(&e, what, &mut backoff, health, metrics, &shutdown).await {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "replication stopped");
                    self.health.failed(&e.message);
                    let reason = format!("replication stopped: {}", e.message);
                    if e.kind == ErrorKind::SlotLost {
                        self.metrics.slots_lost.fetch_add(1, Ordering::Relaxed);
                    }
                    match e.kind {
                        ErrorKind::SlotLost | ErrorKind::Diverged => {
                            self.sink.lost_for_good(&reason)
                        }
                        _ => self.sink.close_all(&reason),
                    }
                    return;
                }
            }
        }
    }
}

/// After a transient error: logs it, reports it on `/healthz`, counts the
/// reconnect and waits the next backoff. False when shutdown came first.
pub(crate) async fn retry_after(
    e: &ReplicationError,
    what: &str,
    backoff: &mut Backoff,
    health: &Health,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> bool {
    let wait = backoff.wait();
    tracing::warn!(error = %e, "{what} in {wait:?}");
    health.reconnecting(&e.message);
    metrics
        .replication_reconnects
        .fetch_add(1, Ordering::Relaxed);
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = shutdown.cancelled() => false,
    }
}

/// Waits between reconnects: from 100 ms, doubling to 5 s, each wait
/// drawn between half and all of it (so that processes that lost the same
/// server do not come back at the same instant); [`Backoff::reset`] after a
/// connection that worked.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            next: Backoff::FIRST,
        }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    /// The next wait.
    pub fn wait(&mut self) -> Duration {
        use std::hash::BuildHasher;
        let full = self.next;
        self.next = (self.next * 2).min(Backoff::MAX);
        let random =
            std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now());
        full.mul_f64(0.5 + (random % 1000) as f64 / 2000.0)
    }

    /// Starts again from the first wait.
    pub fn reset(&mut self) {
        self.next = Backoff::FIRST;
    }
}

impl Reader {
    /// One replication connection, until it fails or shutdown.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped mid-transaction, `handed` says what is in
    /// the log, and the next call resumes from it. It is only ever awaited
    /// to completion (shutdown is one of its own `select!` arms).
    async fn stream_once(&mut self, shutdown: &CancellationToken) -> Result<(), ReplicationError> {
        let Reader {
            cfg,
            sink,
            metrics,
            health,
            slot,
            handed: position,
        } = self;
        let delivered = sink.last_position().map(|p| p.commit);
        let (mut stream, slot_start) = open(cfg, slot, position.committed, delivered).await?;
        if let Some(start) = slot.replaced.take() {
            // A new slot in place of a lost one: what the clients connected
            // now were reading is gone, and so is resuming from before it.
            let reason = format!(
                "the replication slot {} was lost and made again at {start} (--recreate-lost-slot): changes committed before it since the lost slot's last confirmed position are missing; re-sync",
                cfg.slot
            );
            sink.lost(Position::new(start, 0), &reason);
            metrics.slots_lost.fetch_add(1, Ordering::Relaxed);
            metrics.slots_recreated.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(switch) = slot.history_left() {
            sink.history_left_at(switch);
        }
        // Every transaction committed from here on will come (PostgreSQL
        // decodes those whose commit is at or after the start).
        sink.starts_at(Position::new(position.committed.max(slot_start), 0));
        // Between transactions: keepalive positions may be confirmed.
        stream.set_caught_up(true);
        health.streaming();
        tracing::info!(slot = %cfg.slot, "streaming changes");
        let mut backlog_report = tokio::time::interval(Duration::from_secs(1));
        // Changes at or before this are in the log already (a reconnect inside
        // a transaction sends it again from its start).
        let last = sink.last_position();
        let mut handover = Handover {
            sink: sink.as_mut(),
            metrics,
            handed: position,
            batch: Vec::with_capacity(BATCH),
            last,
        };
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => {
                    // Confirm the last position and end the copy cleanly.
                    let _ = tokio::time::timeout(Duration::from_secs(2), stream.close()).await;
                    return Ok(());
                }
                _ = backlog_report.tick() => {
                    health.positions(stream.confirmed(), stream.received());
                    metrics.lag_bytes.store(stream.received().0.saturating_sub(stream.confirmed().0), Ordering::Relaxed);
                    continue;
                }
                n = stream.next() => n?,
            };
            let Some(msg) = next else {
                return Err(ReplicationError::transient(
                    "PostgreSQL ended the replication stream",
                ));
            };
            for change in changes(&msg, metrics) {
                handover.take(change, msg.wal_start, &mut stream)?;
            }
        }
    }
}

/// One connection's changes on their way to the sink: a transaction's
/// changes in batches, handed over whole at its commit, which is then
/// confirmed.
struct Handover<'a> {
    sink: &'a mut dyn Sink,
    metrics: &'a Metrics,
    handed: &'a mut Handed,
    batch: Vec<Change>,
    /// The newest position in the log: older ones come again after a
    /// reconnect inside a transaction and are skipped.
    last: Option<Position>,
}

impl Handover<'_> {
    /// One change from the stream (`wal_start`: its message's position).
    fn take(
        &mut self,
        change: Change,
        wal_start: Lsn,
        stream: &mut ReplicationStream,
    ) -> Result<(), ReplicationError> {
        match change.action {
            Action::Begin => {
                stream.set_caught_up(false);
                self.handed.in_txn = true;
            }
            Action::Commit => {
                self.sink.publish(std::mem::take(&mut self.batch));
                // Activity is noted once per transaction, not per change.
                self.metrics.activity();
                stream.set_caught_up(true);
                // Every change of the transaction is in the log now.
                let end = change.end_lsn().unwrap_or(wal_start);
                stream.confirm(end);
                self.handed.committed = end;
                self.handed.in_txn = false;
                self.metrics.confirmed_lsn.store(end.0, Ordering::Relaxed);
            }
            // Row changes, and the watermarks of backfills.
            _ if change.row_action().is_some() || is_mark(&change) => {
                let Some(pos) = change.pos else {
                    return Err(ReplicationError::definite(
                        "the walcast plugin on the server wrote a change without \"pos\": \
                     install the walcast extension of the same version as walcast-proxy",
                    ));
                };
                if self.last.is_some_and(|l| pos <= l) {
                    return Ok(());
                }
                self.last = Some(pos);
                if change.row_action().is_some() {
                    self.metrics.count_action(change.action.name());
                }
                self.batch.push(change);
                if self.batch.len() >= BATCH {
                    let full = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
                    self.sink.publish(full);
                }
            }
            // Between transactions: nothing before a heartbeat is left to
            // hand over, so the slot may advance to it.
            _ if change.is_heartbeat() && !self.handed.in_txn => {
                stream.confirm(wal_start);
                self.handed.committed = self.handed.committed.max(wal_start);
            }
            _ => {}
        }
        Ok(())
    }
}

/// Connects, creates the slot on first start (or checks it is the walcast
/// plugin's) and starts streaming from `from` (0/0: the slot's confirmed
/// position) with the options every reader of the slot uses. Returns the
/// stream and the slot's confirmed position when it started. `slot`
/// remembers what the last connection saw (see [`Slot`]); after a switch to
/// a new timeline, `delivered` (the commit LSN of the last change handed
/// on) must lie before the switch point, or the error is
/// [`ErrorKind::Diverged`].
pub(crate) async fn open(
    cfg: &ReaderConfig,
    slot: &mut Slot,
    from: Lsn,
    delivered: Option<Lsn>,
) -> Result<(ReplicationStream, Lsn), ReplicationError> {
    let mut client = ReplicationClient::connect(&cfg.database).await?;
    let system = client.identify_system().await?;
    let timeline = system.timeline;
    let switched = slot.identified(&cfg.slot, system)?;
    slot.learn_history(&mut client, timeline).await?;
    if let (Some(old), Some(last)) = (switched, delivered) {
        // The changes handed on must be on the new history. The switch
        // point is a record boundary: a commit record at or after it is
        // not on the new timeline.
        if let Some(switch) = slot.switch_point(old) {
            if last >= switch {
                return Err(diverged(switch, last));
            }
        }
    }
    if client.major() < super::STANDBY_DECODING_SINCE && client.in_recovery().await? {
        return Err(ReplicationError::definite(format!(
            "the server is a standby, and PostgreSQL {} cannot decode on a standby (16 and newer can): point --database-url at the primary (docs/operations.md#decoding-on-a-standby)",
            client.major()
        )));
    }
    let mut found = client.slot(&cfg.slot).await?;
    let invalidated = found
        .as_ref()
        .is_some_and(|i| i.invalidated && i.plugin.as_deref() == Some("walcast"));
    if invalidated {
        if !cfg.recreate_lost_slot {
            return Err(invalidated_slot(&cfg.slot));
        }
        // It exists, and will never be read again: made anew below.
        client.drop_slot(&cfg.slot).await?;
        tracing::warn!(slot = %cfg.slot, "dropped the replication slot PostgreSQL invalidated (--recreate-lost-slot)");
        found = None;
    }
    let slot_start = match found {
        None => {
            let recorded = client.recorded(&cfg.slot).await?;
            let lost = invalidated || slot.seen || recorded == Some(true);
            if lost && !cfg.recreate_lost_slot {
                return Err(lost_slot(&cfg.slot, slot.seen));
            }
            match recorded {
                Some(false) => client.record(&cfg.slot).await,
                None => {
                    tracing::warn!(slot = %cfg.slot, "no walcast.streams this role can read and write in this database (CREATE EXTENSION walcast; GRANT USAGE ON SCHEMA walcast, SELECT, INSERT ON walcast.streams): a slot lost in a failover cannot be told from a first start, and a new one would be made")
                }
                Some(true) => {}
            }
            let created = client
                .create_slot(&cfg.slot, false, false, cfg.failover_slots)
                .await?;
            if lost {
                tracing::warn!(slot = %cfg.slot, lsn = %created.consistent_point, "made a new replication slot in place of the lost one (--recreate-lost-slot): the changes committed after the lost slot's last confirmed position and before this one are missing");
                slot.replaced = Some(created.consistent_point);
            } else {
                tracing::info!(slot = %cfg.slot, lsn = %created.consistent_point, "created replication slot");
            }
            created.consistent_point
        }
        Some(info) if info.plugin.as_deref() != Some("walcast") => {
            return Err(ReplicationError::definite(format!(
                "the slot {} exists but uses the plugin {:?}; choose another --slot name",
                cfg.slot, info.plugin
            )))
        }
        Some(info) => {
            if cfg.failover_slots {
                client.keep_failover(&cfg.slot, Some(&info)).await?;
            }
            // A slot made before slots were recorded is recorded now.
            if !slot.seen && client.recorded(&cfg.slot).await? == Some(false) {
                client.record(&cfg.slot).await;
            }
            info.confirmed_flush.unwrap_or(Lsn::INVALID)
        }
    };
    slot.seen = true;
    let mut options: Vec<(&str, &str)> = vec![
        ("include-transaction", "on"),
        ("include-position", "on"),
        ("batch-bytes", PLUGIN_BATCH_BYTES),
    ];
    if let Some(t) = &cfg.tables {
        options.push(("add-tables", t));
    }
    // PostgreSQL skips what committed before `from`.
    let stream = client
        .start(&cfg.slot, from, &options, cfg.status_interval)
        .await?;
    Ok((stream, slot_start))
}

/// The changes of one message of the plugin (several with `batch-bytes`),
/// as the reader, the relay and a durable stream's consumer read them: each
/// counted in `walcast_changes_in_total`; one that does not parse is counted
/// in `walcast_unparseable_messages_total`, logged and skipped.
pub(crate) fn changes<'a>(
    msg: &'a XLogData,
    metrics: &'a Metrics,
) -> impl Iterator<Item = Change> + 'a {
    objects(&msg.data).filter_map(move |part| {
        metrics.changes_in.fetch_add(1, Ordering::Relaxed);
        match Change::parse(part, msg.wal_start) {
            Ok(change) => Some(change),
            Err(e) => {
                metrics.unparseable_messages.fetch_add(1, Ordering::Relaxed);
                crate::limited!(error, error = %e, lsn = %msg.wal_start, "skipping a plugin message the proxy cannot parse");
                None
            }
        }
    })
}

/// The objects of one plugin message, split at the record separator that
/// `batch-bytes` puts between them.
pub(crate) fn objects(data: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start > data.len() {
            return None;
        }
        let end = memchr::memchr(RECORD_SEPARATOR, &data[start..])
            .map(|i| start + i)
            .unwrap_or(data.len());
        let part = data.slice(start..end);
        start = end + 1;
        Some(part)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::default();
        let waits: Vec<Duration> = (0..8).map(|_| b.wait()).collect();
        for (i, w) in waits.iter().enumerate() {
            let full =
                (Duration::from_millis(100) * 2u32.pow(i as u32)).min(Duration::from_secs(5));
            assert!(*w >= full / 2 && *w <= full, "wait {i}: {w:?} for {full:?}");
        }
        b.reset();
        assert!(b.wait() <= Duration::from_millis(100));
    }

    #[test]
    fn messages_split_at_record_separators() {
        let split = |b: &'static [u8]| -> Vec<Bytes> { objects(&Bytes::from_static(b)).collect() };
        assert_eq!(split(b"{\"a\":1}"), vec![Bytes::from_static(b"{\"a\":1}")]);
        assert_eq!(
            split(b"{}\x1e{\"b\":\"x\ny\"}\x1e[]"),
            vec![
                Bytes::from_static(b"{}"),
                Bytes::from_static(b"{\"b\":\"x\ny\"}"),
                Bytes::from_static(b"[]")
            ]
        );
    }
}
