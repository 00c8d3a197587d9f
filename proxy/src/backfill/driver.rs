//! One backfill's task: chunk after chunk, write the low watermark, read
//! the chunk, hand its keys and snapshot to the hub, write the high
//! watermark, wait for the hub's verdict, and hand the rows it leaves to the
//! client's session, which sends them at the high watermark's place in the
//! stream. One chunk is in flight per backfill; the session takes at most
//! [`AHEAD`] chunks ahead of what it sent.

use super::chunk::{self, From, ReadError};
use super::marks::{Edge, Mark, PREFIX};
use super::window::{ChunkRead, Spec, Verdict, Windows};
use super::{Event, Places, Ready, Settings};
use crate::catalog::{Catalog, TableInfo};
use crate::change::{Action, Change};
use crate::frames::{Frame, Progress, Snapshot, Typed};
use crate::log::Entry;
use crate::metrics::{Gauge, Metrics};
use crate::query::{Query, RowFilter};
use crate::replication::reader::Backoff;
use crate::sql::SqlPool;
use bytes::Bytes;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

/// Chunks handed to the session ahead of what it sent.
pub const AHEAD: usize = 2;

/// Reads of one chunk before the backfill gives up.
pub const MAX_ATTEMPTS: u32 = 20;

/// What backfills share: the turn to run and each table's rate.
pub struct Shared {
    pub settings: Settings,
    turns: Arc<Semaphore>,
    /// Per table: when its next rows may be read.
    next_read: Mutex<HashMap<u32, Instant>>,
}

impl Shared {
    pub fn new(settings: Settings) -> Shared {
        Shared {
            turns: Arc::new(Semaphore::new(settings.max_running.max(1))),
            next_read: Mutex::new(HashMap::new()),
            settings,
        }
    }

    /// Waits until `rows` more rows of the table may be read.
    async fn pace(&self, table: u32, rows: usize) {
        let rate = self.settings.rows_per_second;
        if rate == 0 || rows == 0 {
            return;
        }
        let start = {
            let mut next = crate::locks::lock(&self.next_read);
            let now = Instant::now();
            let slot = next.entry(table).or_insert(now);
            let start = (*slot).max(now);
            *slot = start + Duration::from_secs_f64(rows as f64 / rate as f64);
            if next.len() > 10_000 {
                next.retain(|_, at| *at > now);
            }
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

/// What a backfill reads and for whom.
#[derive(Debug, Clone)]
pub struct Plan {
    pub table: TableInfo,
    /// The subscription's row filters (already narrowed by the user's rules).
    pub filters: Vec<RowFilter>,
    /// Start after this key (resuming an interrupted backfill).
    pub after: Option<Vec<Value>>,
}

/// Who judges a backfill's chunks, in stream order: the hub's windows
/// ([`crate::live::hub::Hub::windows`]) for live subscriptions, a durable
/// stream consumer's own for its stream.
pub type Judge = Arc<Mutex<Windows>>;

/// Runs `f` on the judge's windows.
fn judged<T>(judge: &Judge, f: impl FnOnce(&mut Windows) -> T) -> T {
    f(&mut crate::locks::lock(judge))
}

/// A backfill's watch; dropped, its judge forgets it.
struct Watch {
    judge: Judge,
    id: u64,
    verdicts: mpsc::UnboundedReceiver<Verdict>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        judged(&self.judge, |w| w.remove(self.id));
    }
}

/// A running backfill as its session holds it: the events, the places of
/// its chunks, and the task (aborted when this is dropped).
pub struct Handle {
    pub events: mpsc::Receiver<Event>,
    pub places: Arc<Places>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a backfill of `plan` judged by `judge`. Its watermarks and its
/// chunks go to the server that takes writes (`SqlPool::writes`): a chunk's
/// snapshot must come from the server whose transactions the watermarks
/// bracket, and a standby's snapshots do not list running transactions.
pub fn spawn(
    judge: Judge,
    pool: SqlPool,
    shared: Arc<Shared>,
    plan: Plan,
    metrics: Arc<Metrics>,
) -> Handle {
    let (tx, events) = mpsc::channel(AHEAD);
    let places = Arc::new(Places::default());
    let pool = pool.writes().clone();
    let task = tokio::spawn(run(judge, pool, shared, plan, places.clone(), tx, metrics));
    Handle {
        events,
        places,
        task,
    }
}

/// Runs a backfill to its end (or until the session goes away: then the
/// task is dropped). Errors reach the session as [`Event::Failed`]. Counts
/// it done only when its last chunk was handed over.
async fn run(
    judge: Judge,
    pool: SqlPool,
    shared: Arc<Shared>,
    plan: Plan,
    places: Arc<Places>,
    tx: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
) {
    let result = drive(&judge, &pool, &shared, &plan, places, &tx, &metrics).await;
    match result {
        Ok(true) => {
            metrics.backfill.done.fetch_add(1, Ordering::Relaxed);
        }
        // The client left first.
        Ok(false) => {}
        Err(reason) => {
            metrics.backfill.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(table = %plan.table.qualified_sql(), "backfill failed: {reason}");
            let _ = tx.send(Event::Failed(reason)).await;
        }
    }
}

/// Why an attempt at a chunk did not get as far as its verdict.
enum Fault {
    /// PostgreSQL went away (a restart, a failover): the chunk is read
    /// again once it is back, for at most [`OUTAGE`].
    Gone(String),
    /// Anything else ends the backfill.
    Failed(String),
}

impl std::convert::From<crate::sql::PoolError> for Fault {
    fn from(e: crate::sql::PoolError) -> Fault {
        if e.may_pass() {
            Fault::Gone(e.to_string())
        } else {
            Fault::Failed(e.to_string())
        }
    }
}

/// How long a backfill waits for PostgreSQL to come back (or for the
/// server that took over) before it fails.
const OUTAGE: Duration = Duration::from_secs(60);

async fn emit(pool: &SqlPool, mark: Mark) -> Result<(), Fault> {
    let conn = pool.get().await?;
    conn.execute(
        "SELECT pg_catalog.pg_logical_emit_message(true, $1, $2)",
        &[&PREFIX, &mark.content()],
    )
    .await
    .map_err(|e| {
        let what = format!("writing a watermark failed: {}", crate::sql::with_cause(&e));
        if crate::sql::may_pass(&e) {
            Fault::Gone(what)
        } else {
            Fault::Failed(what)
        }
    })?;
    Ok(())
}

async fn drive(
    judge: &Judge,
    pool: &SqlPool,
    shared: &Shared,
    plan: &Plan,
    places: Arc<Places>,
    tx: &mpsc::Sender<Event>,
    metrics: &Metrics,
) -> Result<bool, String> {
    let waiting = Gauge::up(&metrics.backfill.waiting);
    let _turn = shared
        .turns
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| "the proxy is shutting down".to_owned())?;
    drop(waiting);
    let _running = Gauge::up(&metrics.backfill.running);
    let table = &plan.table;
    let key: Vec<String> = table
        .primary_key
        .iter()
        .map(|&i| table.columns[i].name.clone())
        .collect();
    let spec = Spec {
        schema: table.schema.clone(),
        table: table.name.clone(),
        key: key.clone(),
    };
    let id = super::window::new_id();
    let (verdict_tx, verdicts) = mpsc::unbounded_channel();
    judged(judge, |w| w.add(id, spec, verdict_tx, places));
    let watch = Watch {
        judge: judge.clone(),
        id,
        verdicts,
    };
    let limit = shared.settings.chunk_rows.max(1);
    let estimate = chunk::estimated_rows(&*pool.get().await?, table).await;
    let chunks_estimated = estimate.div_ceil(limit as u64).max(1);
    let mut reader = Reader {
        pool,
        shared,
        plan,
        watch,
        limit,
        name: format!("{}.{}", table.schema, table.name),
        metrics,
    };
    let mut from: From = plan.after.clone();
    let mut total = 0u64;
    let mut n = 0u32;
    loop {
        n += 1;
        let (read, keep, pos) = reader.chunk(n, &from).await?;
        let rows: Vec<_> = keep
            .into_iter()
            .filter_map(|i| read.rows.get(i))
            .filter_map(|text| read_event(table, text, &plan.filters, pos))
            .collect();
        total += rows.len() as u64;
        metrics.backfill.chunks.fetch_add(1, Ordering::Relaxed);
        metrics
            .backfill
            .rows
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        let last = read.next.is_none();
        let frame = Frame::Typed(Typed::Snapshot(Snapshot {
            state: if last { "done" } else { "running" },
            table: &reader.name,
            progress: Some(Progress {
                chunk: n,
                chunks_estimated: chunks_estimated.max(u64::from(n)),
                rows: total,
                next: read.next.clone().flatten().map(serde_json::Value::from),
            }),
            error: None,
        }))
        .text();
        let ready = Ready {
            chunk: n,
            rows,
            frame,
        };
        if tx.send(Event::Ready(ready)).await.is_err() {
            return Ok(false);
        }
        match read.next {
            Some(next) => from = next,
            None => return Ok(true),
        }
    }
}

/// Reads a backfill's chunks between watermarks, each until its window can
/// be trusted.
struct Reader<'a> {
    pool: &'a SqlPool,
    shared: &'a Shared,
    plan: &'a Plan,
    watch: Watch,
    limit: usize,
    /// `schema.table`.
    name: String,
    metrics: &'a Metrics,
}

impl Reader<'_> {
    /// Chunk `n` from `from`: the read, which of its rows to send (the
    /// others changed while it was read: the stream carries them), and the
    /// stream position the rows take.
    async fn chunk(
        &mut self,
        n: u32,
        from: &From,
    ) -> Result<(chunk::Chunk, Vec<usize>, walcast_format::Position), String> {
        let mut attempt = 0u32;
        let mut retries = 0u32;
        // Since when PostgreSQL has been away, and the waits for it.
        let mut away: Option<(tokio::time::Instant, Backoff)> = None;
        loop {
            let read = match self.attempt(n, attempt, from).await {
                Ok(read) => read,
                Err(Fault::Failed(reason)) => return Err(reason),
                Err(Fault::Gone(reason)) => {
                    let (since, backoff) = away
                        .get_or_insert_with(|| (tokio::time::Instant::now(), Backoff::default()));
                    if since.elapsed() >= OUTAGE {
                        return Err(format!(
                            "PostgreSQL was away for more than {} s while chunk {n} of {} was read: {reason}",
                            OUTAGE.as_secs(),
                            self.name
                        ));
                    }
                    tracing::debug!(
                        chunk = n,
                        attempt,
                        "reading a chunk again once PostgreSQL is back: {reason}"
                    );
                    tokio::time::sleep(backoff.wait()).await;
                    // A watermark of this attempt may be in the stream: the
                    // next attempt's marks are told from it.
                    attempt += 1;
                    continue;
                }
            };
            away = None;
            match self.verdict(n, attempt).await? {
                Verdict::Rows { keep, pos, .. } => return Ok((read, keep, pos)),
                Verdict::Retry { reason, .. } => {
                    self.metrics
                        .backfill
                        .retries
                        .fetch_add(1, Ordering::Relaxed);
                    attempt += 1;
                    retries += 1;
                    if retries >= MAX_ATTEMPTS {
                        return Err(format!(
                            "chunk {n} of {} could not be read consistently in {MAX_ATTEMPTS} attempts: {reason}",
                            self.name
                        ));
                    }
                    tracing::debug!(chunk = n, attempt, "reading a chunk again: {reason}");
                    tokio::time::sleep(Duration::from_millis(5 * u64::from(retries))).await;
                }
            }
        }
    }

    /// One attempt at chunk `n`: its low watermark, its read and its high
    /// watermark.
    async fn attempt(&mut self, n: u32, attempt: u32, from: &From) -> Result<chunk::Chunk, Fault> {
        let (id, table) = (self.watch.id, &self.plan.table);
        self.shared.pace(table.oid, self.limit).await;
        judged(&self.watch.judge, |w| w.expect(id, n, attempt));
        let mark = |edge| Mark {
            id,
            chunk: n,
            attempt,
            edge,
        };
        emit(self.pool, mark(Edge::Low)).await?;
        let read = {
            let mut conn = self.pool.get().await?;
            chunk::read(&mut conn, table, &self.plan.filters, from, self.limit)
                .await
                .map_err(|e| match e {
                    ReadError::Value(m) => {
                        Fault::Failed(format!("a value of the query does not fit its column: {m}"))
                    }
                    ReadError::Failed(m) => {
                        Fault::Failed(format!("reading {} failed: {m}", self.name))
                    }
                    ReadError::Gone(m) => Fault::Gone(format!("reading {}: {m}", self.name)),
                })?
        };
        let keys = ChunkRead {
            visibility: read.visibility.clone(),
            keys: read.keys.clone(),
            rows: read.rows.len(),
        };
        judged(&self.watch.judge, |w| w.read(id, n, attempt, keys));
        emit(self.pool, mark(Edge::High)).await?;
        Ok(read)
    }

    /// The verdict on attempt `attempt` of chunk `n` (older ones are stale).
    async fn verdict(&mut self, n: u32, attempt: u32) -> Result<Verdict, String> {
        loop {
            let Some(v) = self.watch.verdicts.recv().await else {
                return Err("the change stream stopped".into());
            };
            match &v {
                Verdict::Rows {
                    chunk, attempt: a, ..
                }
                | Verdict::Retry {
                    chunk, attempt: a, ..
                } if *chunk == n && *a == attempt => return Ok(v),
                _ => continue,
            }
        }
    }
}

/// A row as a read event (`"action":"R"`, the shape of an insert), if it
/// passes the subscription's filters as the stream's matching reads them.
fn read_event(
    table: &TableInfo,
    row: &str,
    filters: &[RowFilter],
    pos: walcast_format::Position,
) -> Option<Entry> {
    if !filters.is_empty() {
        let parsed: Map<String, Value> = serde_json::from_str(row).ok()?;
        if !filters.iter().all(|f| f.holds(Some(&parsed))) {
            return None;
        }
    }
    let mut raw = String::with_capacity(row.len() + 64 + table.name.len());
    raw.push_str(r#"{"action":""#);
    raw.push_str(Action::Read.letter());
    raw.push_str(r#"","schema":"#);
    raw.push_str(&Value::from(table.schema.as_str()).to_string());
    raw.push_str(r#","table":"#);
    raw.push_str(&Value::from(table.name.as_str()).to_string());
    raw.push_str(r#","columns":"#);
    raw.push_str(row);
    raw.push('}');
    let change = Change::parse(Bytes::from(raw), pos.commit).ok()?;
    Some(Entry::outside_log(Arc::new(change), pos))
}

/// Why a table cannot be backfilled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotRefused {
    /// A partitioned table: its rows are in its partitions (schema, name).
    #[error(
        "snapshot: {0}.{1} is partitioned; the stream names the partition that holds each row, \
         so subscribe to its partitions"
    )]
    Partitioned(String, String),
    /// A table without a primary key (schema, name).
    #[error(
        "snapshot: {0}.{1} has no primary key. Read events replace rows by key; without one a \
         client cannot tell a row read from the same row inserted meanwhile. Give the table \
         a primary key"
    )]
    NoPrimaryKey(String, String),
}

/// Why a `snapshot=1` subscription has no plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The catalog could not be read: why.
    #[error("{0}")]
    Catalog(String),
    /// The query names no table there is: its name.
    #[error("snapshot: there is no table {0:?}")]
    NoTable(String),
    /// The table cannot be backfilled.
    #[error(transparent)]
    Refused(#[from] SnapshotRefused),
}

/// What a `snapshot=1` subscription to `query` reads: its table (the one
/// the search path finds when the query names no schema) and its filters.
pub async fn plan_for(catalog: &Catalog, query: &Query) -> Result<Plan, PlanError> {
    let table = catalog
        .table_info(query.table.schema.as_deref(), &query.table.name)
        .await
        .map_err(|e| PlanError::Catalog(e.to_string()))?
        .ok_or_else(|| PlanError::NoTable(query.table.name.clone()))?;
    readable(&table)?;
    Ok(Plan {
        table,
        filters: query.filters.clone(),
        after: None,
    })
}

/// Whether a backfill can read `table`: it needs a primary key, and not to
/// be partitioned.
pub fn readable(table: &TableInfo) -> Result<(), SnapshotRefused> {
    if table.partitioned {
        return Err(SnapshotRefused::Partitioned(
            table.schema.clone(),
            table.name.clone(),
        ));
    }
    if table.primary_key.is_empty() {
        return Err(SnapshotRefused::NoPrimaryKey(
            table.schema.clone(),
            table.name.clone(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(partitioned: bool, primary_key: Vec<usize>) -> TableInfo {
        TableInfo {
            oid: 1,
            schema: "public".into(),
            name: "t".into(),
            columns: Vec::new(),
            primary_key,
            partitioned,
        }
    }

    #[test]
    fn tables_without_a_key_or_partitioned_are_refused_in_words() {
        assert_eq!(readable(&table(false, vec![0])), Ok(()));
        assert_eq!(
            readable(&table(true, vec![0])).map_err(|e| e.to_string()),
            Err(
                "snapshot: public.t is partitioned; the stream names the partition that holds \
                 each row, so subscribe to its partitions"
                    .to_owned()
            )
        );
        assert_eq!(
            readable(&table(false, Vec::new())).map_err(|e| e.to_string()),
            Err(
                "snapshot: public.t has no primary key. Read events replace rows by key; \
                 without one a client cannot tell a row read from the same row inserted \
                 meanwhile. Give the table a primary key"
                    .to_owned()
            )
        );
        assert_eq!(
            PlanError::NoTable("x".into()).to_string(),
            "snapshot: there is no table \"x\""
        );
    }
}
