//! The durable streams this proxy knows: creating a slot with an exported
//! snapshot (held on an idle replication connection until the stream is
//! opened or the TTL passes), listing and dropping stream slots, and the
//! one-consumer-per-slot rule.

use super::{is_stream_slot_name, valid_word};
use crate::backfill::driver::Plan;
use crate::catalog::Catalog;
use crate::metrics::Metrics;
use crate::refusal::{Kind, Refusal};
use crate::replication::ReplicationClient;
use crate::sql::SqlPool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_postgres::error::SqlState;
use walcast_format::{Lsn, TablePattern};

/// Settings of durable streams.
#[derive(Debug, Clone)]
pub struct StreamsConfig {
    /// How long an exported snapshot stays readable.
    pub snapshot_ttl: Duration,
    /// Most rows per snapshot page.
    pub page_cap: u64,
    /// Most bytes per snapshot page.
    pub page_max_bytes: u64,
    /// Lag limit per slot, in bytes.
    pub max_lag: Option<u64>,
    /// Drop slots past the limit (when no consumer is connected).
    pub drop_lagging: bool,
    /// How often the lag guard looks.
    pub lag_check_interval: Duration,
    /// Silence before a heartbeat; `None`: no heartbeats.
    pub heartbeat: Option<Duration>,
    /// Standby status update interval of consumers.
    pub status_interval: Duration,
    /// Create stream slots as failover slots on PostgreSQL 17+.
    pub failover_slots: bool,
    /// The proxy's live slot (never a durable stream).
    pub live_slot: String,
    /// The proxy-wide table allow-list (`--tables`), as given and parsed.
    pub tables: Option<(String, Vec<TablePattern>)>,
}

/// 404 for a slot that is not a durable stream.
fn not_found(slot: &str) -> Refusal {
    Refusal::new(
        Kind::NotFound,
        format!("no durable stream {slot:?} (see GET /v1/streams)"),
    )
}

/// Why a recorded stream can no longer be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// `walcast.streams` records it, and this server has no slot of that
    /// name: lost in a failover to a server without it, or dropped outside
    /// walcast.
    NoSlot,
    /// Its slot is still there but PostgreSQL invalidated it
    /// (`wal_status = 'lost'`: WAL it needed was removed).
    Invalidated,
}

impl Lost {
    /// What happened, for the 410 body, the listing and the log.
    pub fn reason(self) -> &'static str {
        match self {
            Lost::NoSlot => "its replication slot is not on this server (lost in a failover to a server without it, or dropped outside walcast: docs/operations.md#failover)",
            Lost::Invalidated => "PostgreSQL invalidated its replication slot (WAL it still needed was removed: max_slot_wal_keep_size)",
        }
    }

    /// The word `GET /v1/streams` shows.
    pub fn word(self) -> &'static str {
        match self {
            Lost::NoSlot => "no_slot",
            Lost::Invalidated => "invalidated",
        }
    }
}

/// Refuses a stream's table allow-list that does not parse, is empty, or
/// has nowhere to be kept (`recorded`: the database has `walcast.streams`).
fn check_tables(tables: &str, recorded: bool) -> Result<(), Refusal> {
    let patterns = TablePattern::parse_list(tables)
        .map_err(|e| Refusal::invalid(format!("invalid tables: {e}")))?;
    if patterns.is_empty() {
        return Err(Refusal::invalid("tables is empty"));
    }
    if !recorded {
        return Err(Refusal::invalid(
            "a table allow-list per stream is kept in walcast.streams: run CREATE EXTENSION walcast in this database first",
        ));
    }
    Ok(())
}

/// 410 `STREAM_LOST` for a stream that is recorded but cannot be read.
fn lost(slot: &str, why: Lost) -> Refusal {
    Refusal::new(
        Kind::Gone,
        format!(
            "durable stream {slot} is lost: {}; the changes after its last ACK cannot be read. Delete it (DELETE /v1/streams/{slot}) and create a new stream with POST /v1/init (a new snapshot)",
            why.reason()
        ),
    )
    .code("STREAM_LOST")
}

/// The state of a stream's exported snapshot.
enum Snapshot {
    Held {
        name: String,
        expires: SystemTime,
        release: Option<oneshot::Sender<()>>,
    },
    Ended {
        reason: &'static str,
    },
}

struct Consumer {
    id: u64,
    stop: watch::Sender<Option<String>>,
    /// Re-snapshots asked for while it is connected.
    backfills: mpsc::Sender<Vec<Plan>>,
}

/// Re-snapshot requests a consumer takes at once, at most.
const BACKFILL_REQUESTS: usize = 16;

/// How long a stream's record written on the primary may take to reach the
/// standby the stream is made on.
const RECORD_REPLAY_WAIT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Inner {
    snapshots: HashMap<String, Snapshot>,
    consumers: HashMap<String, Consumer>,
    /// Per stream, what its last consumer here was sent: the position of
    /// its last frame and the timeline it was read on (checked against the
    /// server's history after a promotion).
    sent: HashMap<String, (Lsn, u32)>,
    next_id: u64,
}

/// What `/v1/init` answers.
#[derive(Debug, Clone)]
pub struct Created {
    pub slot: String,
    /// The exported snapshot and when it expires (`None`: not exported).
    pub snapshot: Option<(String, SystemTime)>,
    pub lsn: Lsn,
}

/// Why a stream created without an exported snapshot has none.
const NOT_EXPORTED: &str =
    "the stream was created without an exported snapshot (read rows inside the stream: &snapshot= on /v1/lr/stream)";

/// One row of `GET /v1/streams`.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    pub slot: String,
    pub active: bool,
    pub active_pid: Option<i32>,
    pub confirmed_lsn: Option<Lsn>,
    pub lag_bytes: Option<i64>,
    /// `"held"` (readable until `snapshot_expires`), `"ended"` with a reason, or `"none"`.
    pub snapshot: String,
    pub snapshot_expires: Option<SystemTime>,
    pub tables: Option<String>,
    /// Set when the stream is recorded but cannot be read.
    pub lost: Option<Lost>,
}

/// The consumer slot a `/v1/lr/stream` connection holds; released on drop.
pub struct ConsumerGuard {
    inner: Arc<Mutex<Inner>>,
    released: Arc<Notify>,
    slot: String,
    id: u64,
    /// Becomes `Some(reason)` when the stream is deleted under the consumer.
    pub stop: watch::Receiver<Option<String>>,
    /// Re-snapshots asked for with `POST /v1/streams/{slot}/snapshot`.
    pub backfills: Option<mpsc::Receiver<Vec<Plan>>>,
}

impl ConsumerGuard {
    /// Remembers that the stream's consumer was sent frames up to `end`,
    /// read on `timeline`.
    pub fn sent(&self, end: Lsn, timeline: u32) {
        crate::locks::lock(&self.inner)
            .sent
            .insert(self.slot.clone(), (end, timeline));
    }
}

impl Drop for ConsumerGuard {
    fn drop(&mut self) {
        {
            let mut inner = crate::locks::lock(&self.inner);
            if inner.consumers.get(&self.slot).map(|c| c.id) == Some(self.id) {
                inner.consumers.remove(&self.slot);
            }
        }
        self.released.notify_waiters();
    }
}

/// How `GET /v1/streams` shows a stream's snapshot: `held` (with when it
/// expires), `ended: <reason>` or `none`.
fn snapshot_state(inner: &Inner, slot: &str) -> (String, Option<SystemTime>) {
    match inner.snapshots.get(slot) {
        Some(Snapshot::Held { expires, .. }) => ("held".to_owned(), Some(*expires)),
        Some(Snapshot::Ended { reason }) => (format!("ended: {reason}"), None),
        None => ("none".to_owned(), None),
    }
}

/// Words for stream names when the client gives none.
const WORDS: &[&str] = &[
    "amber", "birch", "cedar", "delta", "ember", "fjord", "grove", "heron", "iris", "juniper",
    "kestrel", "lotus", "maple", "nova", "onyx", "pine", "quartz", "raven", "sage", "tide",
    "umber", "vale", "willow", "yarrow", "zephyr",
];

fn default_word() -> &'static str {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as usize)
        .unwrap_or(0);
    WORDS[(nanos / 1000) % WORDS.len()]
}

/// The word of a new stream's name: the client's, if it is a valid one,
/// else one of `WORDS`.
fn stream_word(word: Option<&str>) -> Result<String, Refusal> {
    match word {
        Some(w) if valid_word(w) => Ok(w.to_owned()),
        Some(w) => Err(Refusal::invalid(format!(
            "invalid stream name {w:?}: use 1 to 40 lower case letters, with single underscores between words"
        ))),
        None => Ok(default_word().to_owned()),
    }
}

/// Ends the snapshot of `slot` when `ttl` passes or `release` fires (the
/// stream was opened), then closes `client`, the connection that held it.
async fn release_snapshot(
    inner: Arc<Mutex<Inner>>,
    slot: String,
    ttl: Duration,
    release: oneshot::Receiver<()>,
    client: ReplicationClient,
) {
    let reason = tokio::select! {
        _ = tokio::time::sleep(ttl) => "the snapshot's time to live passed",
        _ = release => "the stream was opened",
    };
    // Ended before the connection goes, so a page read from now on
    // is told why rather than what PostgreSQL says of a snapshot it
    // no longer has.
    {
        let mut i = crate::locks::lock(&inner);
        if let Some(s @ Snapshot::Held { .. }) = i.snapshots.get_mut(&slot) {
            *s = Snapshot::Ended { reason };
        }
    }
    drop(client);
    tracing::info!(slot = %slot, "snapshot released: {reason}");
}

/// The durable streams of one database.
pub struct Streams {
    pub cfg: StreamsConfig,
    pub catalog: Catalog,
    pub pool: SqlPool,
    pub metrics: Arc<Metrics>,
    database: crate::database::Database,
    inner: Arc<Mutex<Inner>>,
    /// Woken whenever a consumer leaves.
    released: Arc<Notify>,
    /// On an edge: streams are JetStream consumers, not slots.
    pub jet: Option<Arc<super::jet::JetStreams>>,
}

impl Streams {
    pub fn new(
        cfg: StreamsConfig,
        database: crate::database::Database,
        pool: SqlPool,
        metrics: Arc<Metrics>,
    ) -> Streams {
        Streams {
            cfg,
            catalog: Catalog::new(pool.clone()),
            pool,
            metrics,
            database,
            inner: Arc::new(Mutex::new(Inner::default())),
            released: Arc::new(Notify::new()),
            jet: None,
        }
    }

    /// Durable streams as consumers of this JetStream stream (an edge).
    pub fn on_jetstream(mut self, jet: super::jet::JetStreams) -> Streams {
        self.jet = Some(Arc::new(jet));
        self
    }

    /// The replication connection settings.
    pub fn database(&self) -> &crate::database::Database {
        &self.database
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        crate::locks::lock(&self.inner)
    }

    /// What the last consumer of `slot` here was sent (see
    /// [`ConsumerGuard::sent`]).
    pub fn sent_of(&self, slot: &str) -> Option<(Lsn, u32)> {
        self.lock().sent.get(slot).copied()
    }

    /// Creates a stream: a permanent slot `walcast_<word><n>` with an
    /// exported snapshot kept readable for the TTL.
    pub async fn create(
        &self,
        word: Option<&str>,
        tables: Option<&str>,
        export: bool,
    ) -> Result<Created, Refusal> {
        let word = stream_word(word)?;
        let recorded = self.metadata_table().await?;
        if let Some(t) = tables {
            check_tables(t, recorded)?;
        }
        let (client, created) = match &self.jet {
            Some(jet) => self.create_on_jetstream(jet, &word).await?,
            None => {
                self.create_slot(&word, export, recorded.then_some(tables))
                    .await?
            }
        };
        let snapshot = match created.snapshot.clone() {
            Some(s) => s,
            None if !export => String::new(),
            None => {
                return Err(Refusal::unavailable(
                    "PostgreSQL exported no snapshot for the new slot",
                ))
            }
        };
        if let (Some(t), Some(jet)) = (tables, &self.jet) {
            self.record_tables(jet, &created.name, t).await?;
        }
        // A name used before begins with nothing sent.
        self.lock().sent.remove(&created.name);
        if !export {
            drop(client);
            self.lock().snapshots.insert(
                created.name.clone(),
                Snapshot::Ended {
                    reason: NOT_EXPORTED,
                },
            );
            tracing::info!(slot = %created.name, lsn = %created.consistent_point, "created durable stream (no exported snapshot)");
            return Ok(Created {
                slot: created.name,
                snapshot: None,
                lsn: created.consistent_point,
            });
        }
        let expires = self.hold_snapshot(&created.name, snapshot.clone(), client);
        tracing::info!(slot = %created.name, lsn = %created.consistent_point, "created durable stream");
        Ok(Created {
            slot: created.name,
            snapshot: Some((snapshot, expires)),
            lsn: created.consistent_point,
        })
    }

    /// Records the table allow-list of the new JetStream stream `slot` in
    /// `walcast.streams`; if that fails, drops the stream again.
    async fn record_tables(
        &self,
        jet: &super::jet::JetStreams,
        slot: &str,
        tables: &str,
    ) -> Result<(), Refusal> {
        if let Err(e) = self.insert_record(slot, Some(tables), true).await {
            let _ = jet.delete(slot).await;
            return Err(e);
        }
        Ok(())
    }

    /// Writes the record of `slot` in `walcast.streams`: replacing one that
    /// is there, or not (`replace` false); whether a row was written.
    async fn insert_record(
        &self,
        slot: &str,
        tables: Option<&str>,
        replace: bool,
    ) -> Result<bool, Refusal> {
        let sql = if replace {
            "INSERT INTO walcast.streams (slot_name, tables) VALUES ($1, $2) \
             ON CONFLICT (slot_name) DO UPDATE SET tables = EXCLUDED.tables, created_at = now()"
        } else {
            "INSERT INTO walcast.streams (slot_name, tables) VALUES ($1, $2) \
             ON CONFLICT (slot_name) DO NOTHING"
        };
        let written = self
            .pool
            .writes()
            .get()
            .await
            .map_err(Refusal::unavailable)?
            .execute(sql, &[&slot, &tables])
            .await
            .map_err(|e| {
                Refusal::unavailable(format!(
                    "cannot record the stream in walcast.streams: {}",
                    crate::sql::with_cause(&e)
                ))
            })?;
        if written == 1 {
            self.wait_record_replayed(slot, tables).await?;
        }
        Ok(written == 1)
    }

    /// When the record was written on the primary of a standby the streams
    /// are read from: waits until the standby has it, so that the stream's
    /// table list is never read before it arrives (a stream without one
    /// streams every table).
    async fn wait_record_replayed(&self, slot: &str, tables: Option<&str>) -> Result<(), Refusal> {
        if std::ptr::eq(self.pool.writes(), &self.pool) {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + RECORD_REPLAY_WAIT;
        loop {
            if let Some(here) = self.record_of(slot).await? {
                if here.as_deref() == tables {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Refusal::unavailable(format!(
                    "the record of {slot} written on the primary did not reach the standby within {} s",
                    RECORD_REPLAY_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Holds the exported `snapshot` of the new stream `slot` on its idle
    /// replication connection `client` until the stream is opened or the
    /// TTL passes; returns when it expires.
    fn hold_snapshot(&self, slot: &str, snapshot: String, client: ReplicationClient) -> SystemTime {
        let expires = SystemTime::now() + self.cfg.snapshot_ttl;
        let (release_tx, release_rx) = oneshot::channel::<()>();
        self.lock().snapshots.insert(
            slot.to_owned(),
            Snapshot::Held {
                name: snapshot,
                expires,
                release: Some(release_tx),
            },
        );
        // The snapshot stays valid while this connection is open and idle.
        tokio::spawn(release_snapshot(
            self.inner.clone(),
            slot.to_owned(),
            self.cfg.snapshot_ttl,
            release_rx,
            client,
        ));
        expires
    }

    /// A permanent slot `walcast_<word><n>` with an exported snapshot, and
    /// the replication connection that holds the snapshot. With `record`
    /// (the database has `walcast.streams`), the name is first recorded
    /// there with the stream's table list: a name recorded before, even
    /// with its slot gone, is never taken again (that stream is told it
    /// was lost, not silently replaced), and the record follows the data
    /// to a standby, so a failover that loses the slot is noticed there.
    async fn create_slot(
        &self,
        word: &str,
        export: bool,
        record: Option<Option<&str>>,
    ) -> Result<(ReplicationClient, crate::replication::CreatedSlot), Refusal> {
        let mut client = ReplicationClient::connect(&self.database)
            .await
            .map_err(|e| Refusal::unavailable(format!("cannot create the stream: {e}")))?;
        let mut n = 1u32;
        let created = loop {
            let name = format!("walcast_{word}{n}");
            if n > 10_000 {
                return Err(Refusal::unavailable(
                    "no free stream name; drop unused streams",
                ));
            }
            n += 1;
            if client
                .slot(&name)
                .await
                .map_err(|e| Refusal::unavailable(e.message))?
                .is_some()
            {
                continue;
            }
            if let Some(tables) = record {
                if !self.reserve(&name, tables).await? {
                    continue;
                }
            }
            match client
                .create_slot(&name, false, export, self.cfg.failover_slots)
                .await
            {
                Ok(c) => break c,
                Err(e) => {
                    if record.is_some() {
                        self.forget(&name).await;
                    }
                    // Someone else took the name between the check and the creation.
                    if e.is(&SqlState::DUPLICATE_OBJECT) {
                        continue;
                    }
                    return Err(Refusal::unavailable(format!(
                        "cannot create the stream: {e}"
                    )));
                }
            }
        };
        Ok((client, created))
    }

    /// Records the name `slot` (with its table list) in `walcast.streams`
    /// before its slot is created; false when the name is recorded already.
    async fn reserve(&self, slot: &str, tables: Option<&str>) -> Result<bool, Refusal> {
        self.insert_record(slot, tables, false).await
    }

    /// Removes the record of `slot` from `walcast.streams` (logged when
    /// that fails: the stream would then be reported lost).
    async fn forget(&self, slot: &str) {
        let removed = match self.pool.writes().get().await {
            Ok(c) => c
                .execute("DELETE FROM walcast.streams WHERE slot_name = $1", &[&slot])
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = removed {
            tracing::warn!(slot, %error, "could not remove the stream's record from walcast.streams");
        }
    }

    /// On an edge: a temporary slot exports the snapshot (and goes with its
    /// connection); the stream is a JetStream consumer that starts where the
    /// stream was before the slot existed and skips what the snapshot holds.
    async fn create_on_jetstream(
        &self,
        jet: &super::jet::JetStreams,
        word: &str,
    ) -> Result<(ReplicationClient, crate::replication::CreatedSlot), Refusal> {
        // Every message from here on committed after this moment or was
        // published late; the consistent point tells them apart.
        let start = jet.next_sequence().await?;
        let mut client = ReplicationClient::connect(&self.database)
            .await
            .map_err(|e| Refusal::unavailable(format!("cannot create the stream: {e}")))?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let temporary = format!("walcast_snapshot_{:x}_{:x}", std::process::id(), nanos);
        let mut created = client
            .create_slot(&temporary, true, true, false)
            .await
            .map_err(|e| Refusal::unavailable(format!("cannot create the stream: {e}")))?;
        let mut n = 1u32;
        let name = loop {
            let name = format!("walcast_{word}{n}");
            if !jet.exists(&name).await? {
                break name;
            }
            n += 1;
            if n > 10_000 {
                return Err(Refusal::unavailable(
                    "no free stream name; drop unused streams",
                ));
            }
        };
        jet.create(
            &name,
            super::jet::Origin {
                snapshot_lsn: created.consistent_point,
                start,
                resume: start,
            },
        )
        .await?;
        created.name = name;
        Ok((client, created))
    }

    /// The snapshot of `slot` if it is still readable (404: no stream; 410: ended).
    pub async fn snapshot_name(&self, slot: &str) -> Result<String, Refusal> {
        self.require(slot).await?;
        match self.lock().snapshots.get(slot) {
            Some(Snapshot::Held { name, .. }) => Ok(name.clone()),
            Some(Snapshot::Ended { reason }) => Err(Refusal::new(
                Kind::Gone,
                format!("the snapshot of {slot} is no longer readable: {reason}"),
            )),
            None => Err(Refusal::new(
                Kind::Gone,
                format!("the snapshot of {slot} is no longer readable (the proxy restarted since the stream was created)"),
            )),
        }
    }

    /// PostgreSQL refused to import the snapshot of `slot`: its reason, the
    /// one the proxy recorded if it ended the snapshot itself (a read that
    /// began just before the time to live passed), else PostgreSQL's
    /// `detail`, recorded for the next request.
    pub fn snapshot_lost(&self, slot: &str, detail: &str) -> String {
        let mut i = crate::locks::lock(&self.inner);
        match i.snapshots.get(slot) {
            Some(Snapshot::Ended { reason }) => (*reason).to_owned(),
            _ => {
                i.snapshots.insert(
                    slot.to_owned(),
                    Snapshot::Ended {
                        reason: "PostgreSQL no longer knows it",
                    },
                );
                detail.to_owned()
            }
        }
    }

    /// Takes the consumer place of `slot` and ends its snapshot: from now on
    /// the stream, not the snapshot, is read. A consumer of this proxy that
    /// is leaving (its client just went away, its replication connection is
    /// closing) is waited for until `deadline`, so a client reconnecting at
    /// once is not refused; a consumer still connected then gives 409.
    pub async fn claim_consumer(
        &self,
        slot: &str,
        deadline: tokio::time::Instant,
    ) -> Result<ConsumerGuard, Refusal> {
        loop {
            // Registered before the check, so a release in between wakes us.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(guard) = self.try_claim(slot)? {
                return Ok(guard);
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return Err(Refusal::new(
                    Kind::InUse,
                    format!("{slot} already has a consumer; one consumer per stream at a time"),
                ));
            }
        }
    }

    fn try_claim(&self, slot: &str) -> Result<Option<ConsumerGuard>, Refusal> {
        let mut inner = self.lock();
        if inner.consumers.contains_key(slot) {
            return Ok(None);
        }
        inner.next_id += 1;
        let id = inner.next_id;
        let (tx, rx) = watch::channel(None);
        let (backfills, requests) = mpsc::channel(BACKFILL_REQUESTS);
        inner.consumers.insert(
            slot.to_owned(),
            Consumer {
                id,
                stop: tx,
                backfills,
            },
        );
        if let Some(Snapshot::Held { release, .. }) = inner.snapshots.get_mut(slot) {
            if let Some(r) = release.take() {
                let _ = r.send(());
            }
        }
        Ok(Some(ConsumerGuard {
            inner: self.inner.clone(),
            released: self.released.clone(),
            slot: slot.to_owned(),
            id,
            stop: rx,
            backfills: Some(requests),
        }))
    }

    /// Hands re-snapshots to the consumer of `slot` connected to this proxy.
    pub fn request_backfill(&self, slot: &str, plans: Vec<Plan>) -> Result<(), Refusal> {
        let inner = self.lock();
        let Some(c) = inner.consumers.get(slot) else {
            return Err(Refusal::new(
                Kind::InUse,
                format!(
                    "{slot} has no consumer on this proxy: the rows are sent on the stream, so \
                     connect /v1/lr/stream?slotName={slot} first (or add &snapshot=<tables> to it)"
                ),
            ));
        };
        c.backfills.try_send(plans).map_err(|_| {
            Refusal::new(
                Kind::Unavailable,
                format!("{slot} has {BACKFILL_REQUESTS} snapshot requests waiting; retry later"),
            )
        })
    }

    /// Whether `slot`'s exported snapshot is still held (being read).
    pub fn snapshot_held(&self, slot: &str) -> bool {
        matches!(
            crate::locks::lock(&self.inner).snapshots.get(slot),
            Some(Snapshot::Held { .. })
        )
    }

    /// Whether this proxy serves a consumer of `slot` now.
    pub fn has_consumer(&self, slot: &str) -> bool {
        crate::locks::lock(&self.inner).consumers.contains_key(slot)
    }

    async fn metadata_table(&self) -> Result<bool, Refusal> {
        let c = self.pool.get().await.map_err(Refusal::unavailable)?;
        let row = c
            .query_one(
                "SELECT pg_catalog.to_regclass('walcast.streams') IS NOT NULL",
                &[],
            )
            .await
            .map_err(|e| Refusal::unavailable(format!("reading the catalog failed: {e}")))?;
        Ok(row.get(0))
    }

    /// The table allow-list recorded for `slot` at creation, if any.
    pub async fn stream_tables(&self, slot: &str) -> Result<Option<String>, Refusal> {
        if !self.metadata_table().await? {
            return Ok(None);
        }
        Ok(self.record_of(slot).await?.flatten())
    }

    /// The record of `slot` in `walcast.streams` on the server streams are
    /// read from: `None` when there is none, else its table list.
    async fn record_of(&self, slot: &str) -> Result<Option<Option<String>>, Refusal> {
        let c = self.pool.get().await.map_err(Refusal::unavailable)?;
        let row = c
            .query_opt(
                "SELECT tables FROM walcast.streams WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| Refusal::unavailable(format!("reading walcast.streams failed: {e}")))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// The table lists recorded in `walcast.streams`, by stream (none
    /// unless `wanted`: a single stream's lookup does not need them).
    async fn recorded_tables(
        &self,
        wanted: bool,
    ) -> Result<HashMap<String, Option<String>>, Refusal> {
        if !wanted || !self.metadata_table().await? {
            return Ok(HashMap::new());
        }
        let c = self.pool.get().await.map_err(Refusal::unavailable)?;
        Ok(
            c.query("SELECT slot_name::text, tables FROM walcast.streams", &[])
                .await
                .map_err(|e| Refusal::unavailable(format!("reading walcast.streams failed: {e}")))?
                .into_iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect(),
        )
    }

    /// Every durable stream slot of this database.
    pub async fn list(&self) -> Result<Vec<StreamInfo>, Refusal> {
        match &self.jet {
            Some(jet) => self.consumers(jet, None).await,
            None => self.slots(None).await,
        }
    }

    /// On an edge: the durable streams as JetStream knows them (only
    /// `only`, when given).
    async fn consumers(
        &self,
        jet: &super::jet::JetStreams,
        only: Option<&str>,
    ) -> Result<Vec<StreamInfo>, Refusal> {
        let found = match only {
            Some(name) => {
                if !jet.exists(name).await? {
                    return Ok(Vec::new());
                }
                vec![super::jet::JetInfo {
                    name: name.to_owned(),
                    active: false,
                    confirmed_lsn: None,
                    lag_bytes: 0,
                }]
            }
            None => jet.list().await?,
        };
        let tables = self.recorded_tables(only.is_none()).await?;
        let inner = self.lock();
        Ok(found
            .into_iter()
            .map(|j| {
                let (snapshot, expires) = snapshot_state(&inner, &j.name);
                StreamInfo {
                    active: j.active,
                    active_pid: None,
                    confirmed_lsn: j.confirmed_lsn,
                    lag_bytes: Some(j.lag_bytes),
                    snapshot,
                    snapshot_expires: expires,
                    tables: tables.get(&j.name).cloned().flatten(),
                    lost: None,
                    slot: j.name,
                }
            })
            .collect())
    }

    /// The stream slots of this database (only `only`, when given), and
    /// the streams `walcast.streams` records whose slot is gone. The table
    /// lists are read for a full listing, or when `only` has no slot.
    async fn slots(&self, only: Option<&str>) -> Result<Vec<StreamInfo>, Refusal> {
        let c = self.pool.get().await.map_err(Refusal::unavailable)?;
        let rows = c
            .query(
                "SELECT slot_name::text, active, active_pid, confirmed_flush_lsn::text, \
                 ((CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() \
                   ELSE pg_catalog.pg_current_wal_lsn() END) - confirmed_flush_lsn)::int8, \
                 wal_status IS NOT DISTINCT FROM 'lost' \
                 FROM pg_catalog.pg_replication_slots \
                 WHERE slot_type = 'logical' AND plugin = 'walcast' \
                 AND database = pg_catalog.current_database() \
                 AND ($1::text IS NULL OR slot_name = $1) ORDER BY slot_name",
                &[&only],
            )
            .await
            .map_err(|e| Refusal::unavailable(format!("listing slots failed: {e}")))?;
        drop(c);
        let mut tables = self
            .recorded_tables(only.is_none() || rows.is_empty())
            .await?;
        let inner = self.lock();
        let mut out = Vec::new();
        for r in rows {
            let slot: String = r.get(0);
            if !is_stream_slot_name(&slot) || slot == self.cfg.live_slot {
                continue;
            }
            let (snapshot, expires) = snapshot_state(&inner, &slot);
            out.push(StreamInfo {
                active: r.get(1),
                active_pid: r.get(2),
                confirmed_lsn: r.get::<_, Option<String>>(3).and_then(|l| l.parse().ok()),
                lag_bytes: r.get(4),
                snapshot,
                snapshot_expires: expires,
                tables: tables.remove(&slot).flatten(),
                lost: r.get::<_, bool>(5).then_some(Lost::Invalidated),
                slot,
            });
        }
        // What is left is recorded without a slot here.
        let mut gone: Vec<(String, Option<String>)> = tables
            .into_iter()
            .filter(|(slot, _)| {
                is_stream_slot_name(slot)
                    && *slot != self.cfg.live_slot
                    && only.is_none_or(|o| o == slot.as_str())
            })
            .collect();
        gone.sort();
        out.extend(gone.into_iter().map(|(slot, tables)| StreamInfo {
            active: false,
            active_pid: None,
            confirmed_lsn: None,
            lag_bytes: None,
            snapshot: "none".to_owned(),
            snapshot_expires: None,
            tables,
            lost: Some(Lost::NoSlot),
            slot,
        }));
        Ok(out)
    }

    /// The stream `slot`, lost or not (404 when it is not a durable stream
    /// of this database); `tables` is filled in only for a lost one (see
    /// [`Streams::stream_tables`]).
    async fn find(&self, slot: &str) -> Result<StreamInfo, Refusal> {
        if !is_stream_slot_name(slot) || slot == self.cfg.live_slot {
            return Err(not_found(slot));
        }
        let found = match &self.jet {
            Some(jet) => self.consumers(jet, Some(slot)).await?,
            None => self.slots(Some(slot)).await?,
        };
        found
            .into_iter()
            .find(|s| s.slot == slot)
            .ok_or_else(|| not_found(slot))
    }

    /// The stream `slot`, readable: 404 when it is not a durable stream of
    /// this database, 410 `STREAM_LOST` when it is recorded but lost.
    pub async fn require(&self, slot: &str) -> Result<StreamInfo, Refusal> {
        let info = self.find(slot).await?;
        match info.lost {
            Some(why) => Err(lost(slot, why)),
            None => Ok(info),
        }
    }

    async fn drop_slot_sql(&self, slot: &str) -> Result<(), Refusal> {
        let c = self.pool.get().await.map_err(Refusal::unavailable)?;
        c.execute("SELECT pg_catalog.pg_drop_replication_slot($1)", &[&slot])
            .await
            .map_err(|e| {
                let in_use = e.code() == Some(&SqlState::OBJECT_IN_USE);
                let status = if in_use {
                    Kind::InUse
                } else {
                    Kind::Unavailable
                };
                let text = e
                    .as_db_error()
                    .map(|d| d.message().to_owned())
                    .unwrap_or_else(|| e.to_string());
                Refusal::new(status, format!("cannot drop {slot}: {text}"))
            })?;
        Ok(())
    }

    /// Drops the stream: its consumer here is closed (1000, with `reason`),
    /// its slot and its record are removed. 409 while another connection
    /// (not this proxy) streams from the slot.
    pub async fn delete(&self, slot: &str, reason: &str) -> Result<(), Refusal> {
        let info = self.find(slot).await?;
        if info.lost == Some(Lost::NoSlot) {
            self.forget(slot).await;
            tracing::info!(slot, "forgot lost durable stream: {reason}");
            return Ok(());
        }
        let ours = {
            let mut inner = self.lock();
            if let Some(Snapshot::Held { release, .. }) = inner.snapshots.get_mut(slot) {
                if let Some(r) = release.take() {
                    let _ = r.send(());
                }
            }
            match inner.consumers.get(slot) {
                Some(c) => {
                    let _ = c.stop.send(Some(reason.to_owned()));
                    true
                }
                None => false,
            }
        };
        if let Some(jet) = &self.jet {
            // Its connection, on whichever edge, ends with the consumer.
            jet.delete(slot).await?;
        } else if info.active && !ours {
            return Err(Refusal::new(
                Kind::InUse,
                format!(
                    "{slot} is in use by another connection (walsender pid {}); stop that consumer first",
                    info.active_pid.unwrap_or(0)
                ),
            ));
        }
        // The consumer's walsender needs a moment to release the slot.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.jet.is_none() {
            match self.drop_slot_sql(slot).await {
                Ok(()) => break,
                Err(e) if e.kind == Kind::InUse && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => return Err(e),
            }
        }
        {
            let mut inner = crate::locks::lock(&self.inner);
            inner.snapshots.remove(slot);
            inner.sent.remove(slot);
        }
        if self.metadata_table().await.unwrap_or(false) {
            self.forget(slot).await;
        }
        tracing::info!(slot, "dropped durable stream: {reason}");
        Ok(())
    }
}
