//! The hub: where changes enter the change log and where clients subscribe.
//!
//! A source (the replication reader, `replication/reader.rs`) hands the hub batches of
//! changes in stream order. The hub stores each change once in the log
//! (`log.rs`) and, for every *group* of identical queries whose query the
//! change matches, appends the change's seq to the group's match list.
//! Groups are indexed by table, and by (table, column, value) for queries
//! with an `eq` filter, so the cost of a change follows the groups it may
//! match, not the number of clients. Clients read through cursors
//! (`cursor.rs`): clients with the same query share one match list, and a
//! client costs the same however far behind it is. Clients without a query
//! (a WASM filter decides) read the log itself.
//!
//! The hub never waits for a client. Wake-ups go once per batch to the
//! groups that got changes.

use crate::backfill::window::{is_mark, Windows};
use crate::change::Change;
use crate::live::cursor::{Cursor, CursorShared, Source};
use crate::live::group::{leaves, listed, may_leave, Group, Listed, Matches};

use crate::log::{ChangeLog, Held, Resume};
use crate::metrics::LogReport;
use crate::query::{self, Query};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::Notify;
use walcast_format::{Lsn, Position};

/// Matching work the hub does for one group on one change at most, in the
/// units of [`query::RowFilter::cost`] (bytes scanned): about 30 µs. A change
/// whose filters would take more (a `like` on a large text value) is listed
/// as *deferred*: the group's cursors evaluate it on their own tasks,
/// within their time budget (`cursor.rs`), and the hub goes on.
pub const HUB_MATCH_COST: usize = 64 << 10;

/// Where a group is indexed: under its table, or, when its query has
/// an `eq` filter, under (table, column, value) so that a change only meets
/// the groups whose value it carries.
#[derive(Clone, PartialEq, Eq, Hash)]
enum IndexKey {
    Table(String),
    Eq {
        table: String,
        column: String,
        value: EqKey,
    },
}

/// A value normalised so that equal values (as `eq` compares them) are equal keys.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum EqKey {
    /// A number, by its `f64` image: `eq` compares two integers exactly and
    /// anything else as `f64`, so values it calls equal always share their
    /// image (integers that share one are told apart by the query itself).
    Number(u64),
    Text(String),
}

impl EqKey {
    /// The key a group is indexed under for an `eq` operand.
    fn of_operand(s: &str) -> EqKey {
        if let Some(k) = number_key(s) {
            k
        } else if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false") {
            EqKey::Text(s.to_ascii_lowercase())
        } else {
            EqKey::Text(s.to_owned())
        }
    }

    /// Every key under which a group whose `eq` can match `v` may be
    /// indexed (a superset is fine: the full query decides).
    fn lookups(v: &serde_json::Value, out: &mut Vec<EqKey>) {
        match v {
            serde_json::Value::Null => {}
            serde_json::Value::Number(n) => out.extend(number_key(&n.to_string())),
            serde_json::Value::Bool(b) => out.push(EqKey::Text(b.to_string())),
            serde_json::Value::String(s) => {
                out.push(EqKey::Text(s.clone()));
                out.extend(number_key(s));
                if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false") {
                    out.push(EqKey::Text(s.to_ascii_lowercase()));
                }
            }
            other => out.push(EqKey::Text(other.to_string())),
        }
    }
}

fn number_key(s: &str) -> Option<EqKey> {
    let f: f64 = s.parse().ok()?;
    if !f.is_finite() {
        return None;
    }
    // -0.0 and 0.0 are equal.
    let f = if f == 0.0 { 0.0 } else { f };
    Some(EqKey::Number(f.to_bits()))
}

/// The index key of a query: its first `eq` filter whose operand is a value.
fn index_key(q: &Query) -> IndexKey {
    for f in &q.filters {
        if let (query::Op::Eq, query::Operand::Value(v)) = (&f.op, &f.operand) {
            return IndexKey::Eq {
                table: q.table.name.clone(),
                column: f.column.clone(),
                value: EqKey::of_operand(v),
            };
        }
    }
    IndexKey::Table(q.table.name.clone())
}

#[derive(Default)]
struct Index {
    /// Group id -> (group, where it is indexed, members).
    groups: HashMap<u64, (Arc<Group>, IndexKey, usize)>,
    /// Canonical query -> group id.
    by_query: HashMap<String, u64>,
    index: HashMap<IndexKey, Vec<u64>>,
    /// Per table, the columns that some group's `eq` index uses.
    eq_columns: HashMap<String, HashMap<String, usize>>,
    /// Per table, the groups with row filters that want updates or
    /// deletes: every update and delete of the table is listed for them
    /// (`Listed::Unmatched` when their query does not match it).
    leaving: HashMap<String, Vec<u64>>,
    next_id: u64,
}

impl Index {
    /// The group for `query`, made when missing, with one more member.
    fn join(&mut self, query: Query, head: u64) -> (u64, Arc<Group>) {
        // The parsed form is canonical: `INSERT:users` and `insert:users` share.
        let canonical = format!("{query:?}");
        if let Some(id) = self.by_query.get(&canonical) {
            if let Some((g, _, members)) = self.groups.get_mut(id) {
                *members += 1;
                return (*id, g.clone());
            }
        }
        let key = index_key(&query);
        if let IndexKey::Eq { table, column, .. } = &key {
            *self
                .eq_columns
                .entry(table.clone())
                .or_default()
                .entry(column.clone())
                .or_default() += 1;
        }
        self.next_id += 1;
        let id = self.next_id;
        if leaves(&query) {
            self.leaving
                .entry(query.table.name.clone())
                .or_default()
                .push(id);
        }
        let group = Arc::new(Group {
            query: Some(query),
            matches: Mutex::new(Matches {
                seqs: VecDeque::new(),
                complete_from: head,
                lost_upto: 0,
            }),
            notify: Notify::new(),
        });
        self.index.entry(key.clone()).or_default().push(id);
        self.groups.insert(id, (group.clone(), key, 1));
        self.by_query.insert(canonical, id);
        (id, group)
    }

    /// One member fewer; the group goes with its last member.
    fn leave(&mut self, id: u64) {
        let Some((_, _, members)) = self.groups.get_mut(&id) else {
            return;
        };
        *members -= 1;
        if *members > 0 {
            return;
        }
        let Some((g, key, _)) = self.groups.remove(&id) else {
            return;
        };
        if let Some(q) = &g.query {
            self.by_query.remove(&format!("{q:?}"));
            if let Some(ids) = self.leaving.get_mut(&q.table.name) {
                ids.retain(|x| *x != id);
                if ids.is_empty() {
                    self.leaving.remove(&q.table.name);
                }
            }
        }
        if let Some(ids) = self.index.get_mut(&key) {
            ids.retain(|x| *x != id);
            if ids.is_empty() {
                self.index.remove(&key);
            }
        }
        if let IndexKey::Eq { table, column, .. } = &key {
            if let Some(cols) = self.eq_columns.get_mut(table) {
                if let Some(n) = cols.get_mut(column) {
                    *n -= 1;
                    if *n == 0 {
                        cols.remove(column);
                    }
                }
                if cols.is_empty() {
                    self.eq_columns.remove(table);
                }
            }
        }
    }

    /// Groups that may want a change of `table` with `row`.
    fn candidates<'a>(
        &self,
        table: &str,
        row: impl Fn() -> Option<&'a serde_json::Map<String, serde_json::Value>>,
        out: &mut Vec<u64>,
    ) {
        if let Some(ids) = self.index.get(&IndexKey::Table(table.to_owned())) {
            out.extend(ids);
        }
        if let Some(cols) = self.eq_columns.get(table) {
            let Some(row) = row() else { return };
            let mut keys = Vec::new();
            for column in cols.keys() {
                let Some(v) = row.get(column) else { continue };
                keys.clear();
                EqKey::lookups(v, &mut keys);
                for value in keys.drain(..) {
                    let key = IndexKey::Eq {
                        table: table.to_owned(),
                        column: column.clone(),
                        value,
                    };
                    if let Some(ids) = self.index.get(&key) {
                        out.extend(ids);
                    }
                }
            }
        }
    }

    /// Groups that may want `change`, and (updates, deletes) the groups
    /// whose clients may hold its row.
    fn candidates_of(&self, change: &Change, action: query::RowAction, out: &mut Vec<u64>) {
        if matches!(action, query::RowAction::Update | query::RowAction::Delete) {
            if let Some(ids) = self.leaving.get(&*change.table) {
                out.extend(ids);
            }
        }
        if action == query::RowAction::Truncate {
            // A truncate has no row: every group of a table it names may want it.
            for (_, t) in change.truncated() {
                for (key, ids) in &self.index {
                    let table = match key {
                        IndexKey::Table(t) | IndexKey::Eq { table: t, .. } => t,
                    };
                    if table == t {
                        out.extend(ids);
                    }
                }
            }
        } else {
            self.candidates(&change.table, || change.row(), out);
        }
        out.sort_unstable();
        out.dedup();
    }
}

/// Why a subscription could not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeError {
    /// Changes after the requested position are no longer held (`reason`:
    /// why, when they will never be: the stream lost them).
    Gone {
        oldest: Option<Position>,
        reason: Option<String>,
    },
    /// The stream has not started yet: the log cannot tell what it holds.
    NotReady,
    /// The stream stopped for good.
    Closed(String),
}

/// Changes the source lost (see [`Hub::lost`]).
struct Gap {
    /// Cursors from this id on were opened after it.
    first_after: u64,
    /// Positions before this one cannot be resumed from.
    floor: Position,
    reason: String,
}

struct Inner {
    log: ChangeLog,
    index: RwLock<Index>,
    /// The group of clients without a query: they read the log itself.
    all: Arc<Group>,
    /// Seq after the last change whose matches are all in the lists.
    published: AtomicU64,
    /// Every cursor's shared state (for lags), by cursor id.
    cursors: Mutex<HashMap<u64, Arc<CursorShared>>>,
    next_cursor: AtomicU64,
    /// Why the stream stopped for everyone.
    closed: Mutex<Option<String>>,
    /// Changes the source lost: cursors made before it (ids below the
    /// first) are stopped with the reason; resumes from before are gone.
    gap: Mutex<Option<Gap>>,
    /// Whether `gap` is set: read on every cursor read without the lock.
    has_gap: AtomicBool,
    /// Whether `closed` is set: read on every cursor read without the lock.
    is_closed: AtomicBool,
    /// Log evictions at the last sweep of the match lists.
    swept_at: AtomicU64,
    counters: Arc<MatchCounters>,
    /// Matching time per second each cursor may use, in nanoseconds.
    match_budget_ns: AtomicU64,
    /// Backfills' watermark windows and the recent commits.
    windows: Arc<Mutex<Windows>>,
    /// Where the server's history left an earlier timeline (the earliest
    /// such point, `u64::MAX`: none): a resume from there on must name a
    /// change the log holds ([`Hub::history_left_at`]).
    history_left: AtomicU64,
}

/// The default of [`Hub::set_match_budget`]: 50 ms per second (5% of a core).
pub const DEFAULT_MATCH_BUDGET: std::time::Duration = std::time::Duration::from_millis(50);

/// What deferred matching did (reported in `/metrics`).
#[derive(Default, Debug)]
pub struct MatchCounters {
    /// Matches the hub left to the clients' cursors (too costly for it).
    pub deferred: AtomicU64,
    /// Times a cursor paused because its client used its matching time.
    pub throttled: AtomicU64,
}

/// Shared entry point of changes and subscriptions.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

/// The hub as its cursors see it.
impl Source for Hub {
    fn log(&self) -> &ChangeLog {
        &self.inner.log
    }

    fn published(&self) -> u64 {
        Hub::published(self)
    }

    fn match_budget(&self) -> std::time::Duration {
        Hub::match_budget(self)
    }

    fn closed_reason(&self) -> Option<String> {
        Hub::closed_reason(self)
    }

    fn lost_for(&self, cursor: u64) -> Option<String> {
        Hub::lost_for(self, cursor)
    }

    fn count_throttled(&self) {
        self.inner
            .counters
            .throttled
            .fetch_add(1, Ordering::Relaxed);
    }

    fn leave(&self, cursor: u64, group: Option<u64>) {
        Hub::leave(self, cursor, group)
    }
}

/// Reusable buffers of the source's task.
#[derive(Default)]
pub struct PublishScratch {
    candidates: Vec<u64>,
    matched: Vec<(usize, Arc<Group>, Listed)>,
    counts: Vec<usize>,
}

/// Log evictions between sweeps of the match lists.
const SWEEP_EVERY: u64 = 4096;

impl Hub {
    /// A hub whose log holds at most `buffer_bytes`.
    pub fn new(buffer_bytes: usize) -> Hub {
        Hub {
            inner: Arc::new(Inner {
                log: ChangeLog::new(buffer_bytes),
                index: RwLock::default(),
                all: Arc::new(Group {
                    query: None,
                    matches: Mutex::new(Matches {
                        seqs: VecDeque::new(),
                        complete_from: 0,
                        lost_upto: 0,
                    }),
                    notify: Notify::new(),
                }),
                published: AtomicU64::new(0),
                cursors: Mutex::default(),
                next_cursor: AtomicU64::new(1),
                closed: Mutex::new(None),
                is_closed: AtomicBool::new(false),
                gap: Mutex::new(None),
                has_gap: AtomicBool::new(false),
                swept_at: AtomicU64::new(0),
                counters: Arc::default(),
                match_budget_ns: AtomicU64::new(DEFAULT_MATCH_BUDGET.as_nanos() as u64),
                windows: Arc::default(),
                history_left: AtomicU64::new(u64::MAX),
            }),
        }
    }

    /// The change log.
    pub fn log(&self) -> &ChangeLog {
        &self.inner.log
    }

    /// The matching time per second each client's cursor may use for the
    /// matches the hub deferred and for its own scans (a resume from before
    /// its group started); past it the client waits for the next second.
    pub fn set_match_budget(&self, per_second: std::time::Duration) {
        let ns = u64::try_from(per_second.as_nanos()).unwrap_or(u64::MAX);
        self.inner.match_budget_ns.store(ns, Ordering::Relaxed);
    }

    pub(crate) fn match_budget(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.inner.match_budget_ns.load(Ordering::Relaxed))
    }

    /// What deferred matching did.
    pub fn match_counters(&self) -> Arc<MatchCounters> {
        self.inner.counters.clone()
    }

    /// Seq after the last change whose matches are all published.
    pub(crate) fn published(&self) -> u64 {
        self.inner.published.load(Ordering::Acquire)
    }

    /// The stream starts at `floor` (see [`ChangeLog::set_floor`]), on a
    /// new connection: every backfill chunk waiting for its watermarks is
    /// read again.
    pub fn stream_starts_at(&self, floor: Position) {
        self.inner.log.set_floor(floor);
        // A backfill's watermark written before may never come.
        let mut verdicts = Vec::new();
        crate::locks::lock(&self.inner.windows).restarted(&mut verdicts);
        for (tx, verdict) in verdicts {
            let _ = tx.send(verdict);
        }
    }

    /// The newest position in the log.
    pub fn last_position(&self) -> Option<Position> {
        self.inner.log.last_position()
    }

    /// Stores a batch of row changes (stream order, each with its position)
    /// and wakes the clients that match them.
    pub fn publish(&self, batch: Vec<Change>, scratch: &mut PublishScratch) {
        if batch.is_empty() {
            return;
        }
        let index = crate::locks::read(&self.inner.index);
        let PublishScratch {
            candidates,
            matched,
            counts,
        } = scratch;
        matched.clear();
        counts.clear();
        let mut batch = batch;
        // Backfills see every change in order; watermarks go no further.
        let mut verdicts = Vec::new();
        {
            let mut w = crate::locks::lock(&self.inner.windows);
            let mut seq = self.inner.log.next_seq();
            let mut marks = false;
            for change in &batch {
                if is_mark(change) {
                    w.mark(change, seq, &mut verdicts);
                    marks = true;
                } else if change.pos.is_some() {
                    w.observe(change);
                    seq += 1;
                }
            }
            if marks {
                batch.retain(|c| !is_mark(c));
            }
        }
        let mut deferred_count = 0;
        for (i, change) in batch.iter_mut().enumerate() {
            let mut n = 0;
            if let Some(action) = change.row_action() {
                candidates.clear();
                index.candidates_of(change, action, candidates);
                for id in candidates.iter() {
                    let Some((g, _, _)) = index.groups.get(id) else {
                        continue;
                    };
                    let Some(q) = &g.query else { continue };
                    let how = match change.matched_within(q, HUB_MATCH_COST) {
                        Some(true) => Listed::Matched,
                        None => Listed::Deferred,
                        Some(false) if may_leave(q, change) => Listed::Unmatched,
                        Some(false) => continue,
                    };
                    deferred_count += u64::from(how == Listed::Deferred);
                    matched.push((i, g.clone(), how));
                    n += 1;
                }
            }
            counts.push(n);
            // The parsed row was for matching; the log keeps only the JSON.
            change.forget_row();
        }
        let entries = batch.into_iter().zip(counts.iter()).filter_map(|(c, n)| {
            let pos = c.pos?;
            Some((Arc::new(c), pos, *n))
        });
        let first = self.inner.log.append(entries);
        for (i, g, how) in matched.iter() {
            {
                let mut m = crate::locks::lock(&g.matches);
                m.push(first + *i as u64, *how);
            }
        }
        if deferred_count > 0 {
            self.inner
                .counters
                .deferred
                .fetch_add(deferred_count, Ordering::Relaxed);
        }
        self.inner
            .published
            .store(self.inner.log.next_seq(), Ordering::Release);
        // After the rows are readable: a backfill's session that wakes on
        // its verdict finds every change before it.
        for (tx, verdict) in verdicts {
            let _ = tx.send(verdict);
        }
        // Wake each group once, after all of its pushes.
        matched.sort_unstable_by_key(|(_, g, _)| Arc::as_ptr(g));
        matched.dedup_by_key(|(_, g, _)| Arc::as_ptr(g));
        for (_, g, _) in matched.drain(..) {
            g.notify.notify_waiters();
        }
        self.inner.all.notify.notify_waiters();
        self.sweep(&index);
    }

    /// Drops match-list entries of changes the log no longer holds.
    fn sweep(&self, index: &Index) {
        let stats = self.inner.log.stats();
        let last = self.inner.swept_at.load(Ordering::Relaxed);
        if stats.evicted < last + SWEEP_EVERY {
            return;
        }
        self.inner.swept_at.store(stats.evicted, Ordering::Relaxed);
        for (g, _, _) in index.groups.values() {
            {
                let mut m = crate::locks::lock(&g.matches);
                trim(&mut m, stats.first_seq);
            }
        }
    }

    /// The backfills' windows, judged in stream order by [`Hub::publish`].
    pub fn windows(&self) -> Arc<Mutex<Windows>> {
        self.inner.windows.clone()
    }

    /// A cursor for `query` (`None`: every row change) starting after
    /// `after`, or at the newest change when `after` is `None`.
    pub fn subscribe(
        &self,
        query: Option<Query>,
        after: Option<Position>,
    ) -> Result<Cursor, SubscribeError> {
        if let Some(reason) = self.closed_reason() {
            // A stream that stopped because it lost changes will never
            // serve a resume: say so, rather than "try again".
            return Err(match after.and_then(|a| self.lost_before(a)) {
                Some(lost) => SubscribeError::Gone {
                    oldest: None,
                    reason: Some(lost),
                },
                None => SubscribeError::Closed(reason),
            });
        }
        if let Some(p) = after {
            self.on_history(p)?;
        }
        let mut index = crate::locks::write(&self.inner.index);
        // No batch is being published while the index is held for writing.
        let head = self.inner.log.next_seq();
        let start = match after {
            None => head,
            Some(p) => match self.inner.log.resume(p) {
                Resume::From(seq) => seq,
                Resume::Gone { oldest } => {
                    return Err(SubscribeError::Gone {
                        oldest,
                        reason: self.lost_before(p),
                    })
                }
                Resume::NotReady => return Err(SubscribeError::NotReady),
            },
        };
        let (group_id, group) = match query {
            Some(q) => {
                let (id, g) = index.join(q, head);
                (Some(id), g)
            }
            None => (None, self.inner.all.clone()),
        };
        drop(index);
        let scan_until = crate::locks::lock(&group.matches).complete_from.max(start);
        let id = self.inner.next_cursor.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(CursorShared::new(start, group.clone()));
        {
            let mut c = crate::locks::lock(&self.inner.cursors);
            c.insert(id, shared.clone());
        }
        Ok(Cursor::new(
            Box::new(self.clone()),
            id,
            group_id,
            group,
            start,
            scan_until,
            after,
            shared,
        ))
    }

    /// A cursor ends (called by `Cursor::drop`).
    pub(crate) fn leave(&self, cursor: u64, group: Option<u64>) {
        {
            let mut c = crate::locks::lock(&self.inner.cursors);
            c.remove(&cursor);
        }
        if let Some(g) = group {
            {
                let mut index = crate::locks::write(&self.inner.index);
                index.leave(g);
            }
        }
    }

    /// Number of cursors (clients reading the log).
    pub fn len(&self) -> usize {
        crate::locks::lock(&self.inner.cursors).len()
    }

    /// True when nobody reads the log.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of match groups (distinct queries).
    pub fn groups(&self) -> usize {
        crate::locks::read(&self.inner.index).groups.len()
    }

    /// Ends every subscription with `reason` (the stream stopped for good).
    pub fn close_all(&self, reason: &str) {
        {
            let mut c = crate::locks::lock(&self.inner.closed);
            *c = Some(reason.to_owned());
        }
        self.inner.is_closed.store(true, Ordering::Release);
        self.inner.all.notify.notify_waiters();
        {
            let index = crate::locks::read(&self.inner.index);
            for (g, _, _) in index.groups.values() {
                g.notify.notify_waiters();
            }
        }
    }

    /// The source lost the changes after the newest one here and up to
    /// `floor` (a JetStream stream dropped them before an edge read them).
    /// Every client connected now is closed with `reason` at its next read
    /// (it cannot have them), and a resume from before `floor` answers that
    /// they are gone. Called before the changes after the gap are published.
    pub fn lost(&self, floor: Position, reason: &str) {
        self.inner.log.raise_floor(floor);
        let first_after = self.inner.next_cursor.load(Ordering::Acquire);
        {
            let mut g = crate::locks::lock(&self.inner.gap);
            *g = Some(Gap {
                first_after,
                floor,
                reason: reason.to_owned(),
            });
        }
        self.inner.has_gap.store(true, Ordering::Release);
        self.inner.all.notify.notify_waiters();
        {
            let index = crate::locks::read(&self.inner.index);
            for (g, _, _) in index.groups.values() {
                g.notify.notify_waiters();
            }
        }
    }

    /// The server was promoted: its history left an earlier timeline at
    /// `switch`. A client resuming from a position at or after it may hold
    /// changes the old primary delivered past that point, which never
    /// happened on this server; a position this log holds is of a change
    /// on its history (positions of changes that never happened would only
    /// match by chance).
    pub fn history_left_at(&self, switch: Lsn) {
        self.inner
            .history_left
            .fetch_min(switch.0, Ordering::AcqRel);
    }

    /// Whether a resume from `after` is on the server's history (see
    /// [`Hub::history_left_at`]): the log must hold a change there, or
    /// tell later (503) when it has not read that far yet.
    fn on_history(&self, after: Position) -> Result<(), SubscribeError> {
        let switch = self.inner.history_left.load(Ordering::Acquire);
        if after.commit.0 < switch {
            return Ok(());
        }
        match self.inner.log.holds(after) {
            Held::Exactly | Held::Before => Ok(()),
            Held::Ahead => Err(SubscribeError::NotReady),
            Held::Missing => Err(SubscribeError::Gone {
                oldest: None,
                reason: Some(format!(
                    "no change at {after} on this server: it was promoted, its history left an \
                     earlier timeline at {}, and a change delivered from the old primary after \
                     that point never happened here (a failover without \
                     synchronized_standby_slots: docs/operations.md#failover); re-sync",
                    Lsn(switch)
                )),
            }),
        }
    }

    /// Why a resume from `after` cannot be served, when the source lost the
    /// changes after it.
    fn lost_before(&self, after: Position) -> Option<String> {
        self.gap_reason(|gap| after < gap.floor)
    }

    /// Why the cursor `id` must stop: it was open when the source lost changes.
    pub(crate) fn lost_for(&self, id: u64) -> Option<String> {
        self.gap_reason(|gap| id < gap.first_after)
    }

    /// The reason of the source's gap, when there is one and `applies`.
    fn gap_reason(&self, applies: impl Fn(&Gap) -> bool) -> Option<String> {
        if !self.inner.has_gap.load(Ordering::Acquire) {
            return None;
        }
        let g = crate::locks::lock(&self.inner.gap);
        g.as_ref()
            .filter(|gap| applies(gap))
            .map(|gap| gap.reason.clone())
    }

    /// Why the stream stopped for everyone, once it did.
    pub fn closed_reason(&self) -> Option<String> {
        if !self.inner.is_closed.load(Ordering::Acquire) {
            return None;
        }
        crate::locks::lock(&self.inner.closed).clone()
    }

    /// The log's sizes, every cursor's backlog in changes waiting for it,
    /// and the number of groups.
    pub fn report(&self) -> LogReport {
        let stats = self.inner.log.stats();
        let published = self.published();
        let cursors: Vec<Arc<CursorShared>> = crate::locks::lock(&self.inner.cursors)
            .values()
            .cloned()
            .collect();
        LogReport {
            stats,
            waiting: cursors.iter().map(|c| c.waiting(published)).collect(),
            groups: self.groups(),
            match_deferred: self.inner.counters.deferred.load(Ordering::Relaxed),
            match_throttled: self.inner.counters.throttled.load(Ordering::Relaxed),
        }
    }
}

/// Drops the seqs the log no longer holds from the front of a match list.
pub(crate) fn trim(m: &mut Matches, first_seq: u64) {
    while let Some(&code) = m.seqs.front() {
        let (s, _) = listed(code);
        if s >= first_seq {
            break;
        }
        m.seqs.pop_front();
        m.lost_upto = m.lost_upto.max(s + 1);
    }
}

/// The hub as the sink of a source (the replication reader, a NATS edge):
/// it publishes with scratch space of its own.
pub struct Publisher {
    hub: Hub,
    scratch: PublishScratch,
}

impl Hub {
    /// A sink that hands a source's changes to this hub.
    pub fn publisher(&self) -> Publisher {
        Publisher {
            hub: self.clone(),
            scratch: PublishScratch::default(),
        }
    }
}

impl crate::sink::Sink for Publisher {
    fn starts_at(&self, floor: Position) {
        self.hub.stream_starts_at(floor);
    }

    fn last_position(&self) -> Option<Position> {
        self.hub.last_position()
    }

    fn publish(&mut self, batch: Vec<Change>) {
        self.hub.publish(batch, &mut self.scratch);
    }

    fn lost(&self, floor: Position, reason: &str) {
        self.hub.lost(floor, reason);
    }

    fn close_all(&self, reason: &str) {
        self.hub.close_all(reason);
    }

    fn max_bytes(&self) -> usize {
        self.hub.log().max_bytes()
    }

    fn history_left_at(&self, switch: Lsn) {
        self.hub.history_left_at(switch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::RowView;
    use bytes::Bytes;
    use walcast_format::Lsn;

    fn change(n: u32, columns: &str) -> Change {
        let raw = format!(
            r#"{{"action":"I","lsn":"0/1","pos":"{}","schema":"public","table":"t","columns":{columns}}}"#,
            Position::new(Lsn(u64::from(n) + 1), 0)
        );
        Change::parse(Bytes::from(raw), Lsn(1)).expect("change")
    }

    #[test]
    fn indexed_eq_delivers_exactly_what_the_query_matches() {
        let queries = [
            "insert:t:a.eq.5",
            "insert:t:a.eq.5.0",
            "insert:t:a.eq.\"5\"",
            "insert:t:a.eq.05",
            "insert:t:b.eq.TRUE",
            "insert:t:b.eq.true",
            "insert:t:c.eq.abc",
            "insert:t:c.eq.abc:a.gt.1",
            "insert:t:a.neq.5",
            "insert:t",
            "INSERT:t",
            "insert:other:a.eq.5",
            "insert:t:a.eq.9007199254740993",
            // Found by fuzzing: integers past 1e30 and integers against
            // floats were indexed under keys their `eq` matches missed.
            "insert:t:a.eq.5666000000000000000000000000000",
            "insert:t:a.eq.0",
        ];
        let rows = [
            r#"{"a":5,"b":true,"c":"abc"}"#,
            r#"{"a":5.0,"b":"TRUE","c":"x"}"#,
            r#"{"a":"5","b":"true","c":"abc"}"#,
            r#"{"a":"05","b":false,"c":null}"#,
            r#"{"a":null,"b":null}"#,
            r#"{"a":9007199254740993,"c":"abc"}"#,
            r#"{"a":9007199254740992}"#,
            r#"{"a":[5],"c":{"k":1}}"#,
            r#"{"a":5.666e+30}"#,
            r#"{"a":9007199254740992.0}"#,
            r#"{"a":-0.0}"#,
        ];
        let hub = Hub::new(1 << 20);
        hub.stream_starts_at(Position::default());
        let mut subs: Vec<(Query, Cursor)> = queries
            .iter()
            .map(|q| {
                let parsed = query::parse(q).expect("query");
                let c = hub
                    .subscribe(Some(parsed.clone()), None)
                    .expect("subscribe");
                (parsed, c)
            })
            .collect();
        // Identical queries share a group (`INSERT:t` and `insert:t`; `a.eq."5"`
        // and `a.eq.5` parse the same).
        assert_eq!(hub.groups(), queries.len() - 2, "{:?}", queries);
        let mut scratch = PublishScratch::default();
        let mut got = Vec::new();
        for (n, row) in rows.iter().enumerate() {
            let c = change(n as u32, row);
            let view_row = c.row().cloned();
            hub.publish(vec![change(n as u32, row)], &mut scratch);
            for (q, cur) in subs.iter_mut() {
                let view = RowView {
                    action: query::RowAction::Insert,
                    schema: "public",
                    table: "t",
                    truncated: &[],
                    row: view_row.as_ref(),
                };
                let want = q.matches(&view);
                got.clear();
                cur.fill(64, &mut got).expect("fill");
                assert_eq!(got.len(), usize::from(want), "query {q:?} on row {row}");
            }
        }
    }

    #[test]
    fn changes_the_source_lost_are_told_to_clients_and_to_resumes_from_before() {
        let hub = Hub::new(1 << 20);
        hub.stream_starts_at(Position::default());
        let mut scratch = PublishScratch::default();
        hub.publish(vec![change(1, r#"{"a":1}"#)], &mut scratch);
        let mut open = hub.subscribe(None, None).expect("subscribe");
        let floor = Position::new(Lsn(100), 0);
        hub.lost(floor, "slot lost");
        let mut got = Vec::new();
        match open.fill(8, &mut got) {
            Err(crate::live::cursor::Stop::Lost(reason)) => assert_eq!(reason, "slot lost"),
            other => panic!("an open client must be told: {other:?}"),
        }
        // A resume from before the gap is gone, with the reason; after it,
        // fine; a new client is not affected.
        match hub.subscribe(None, Some(Position::new(Lsn(2), 0))) {
            Err(SubscribeError::Gone { reason, .. }) => {
                assert_eq!(reason.as_deref(), Some("slot lost"))
            }
            other => panic!("expected gone: {:?}", other.err()),
        }
        assert!(hub.subscribe(None, Some(floor)).is_ok());
        let mut fresh = hub.subscribe(None, None).expect("subscribe");
        assert!(fresh.fill(8, &mut got).is_ok());
        // Stopped for good after the loss: a resume is gone (410), a new
        // subscription is refused as closed (503).
        hub.lost(Position::new(Lsn(u64::MAX), 0), "stopped: slot lost");
        hub.close_all("stopped: slot lost");
        assert!(matches!(
            hub.subscribe(None, Some(floor)),
            Err(SubscribeError::Gone {
                reason: Some(_),
                ..
            })
        ));
        assert!(matches!(
            hub.subscribe(None, None),
            Err(SubscribeError::Closed(_))
        ));
    }

    fn row_change(n: u32, action: &str, body: &str) -> Change {
        let raw = format!(
            r#"{{"action":"{action}","lsn":"0/1","pos":"{}","schema":"public","table":"t",{body}}}"#,
            Position::new(Lsn(u64::from(n) + 1), 0)
        );
        Change::parse(Bytes::from(raw), Lsn(1)).expect("change")
    }

    #[test]
    fn updates_and_deletes_reach_filtered_views_as_unmatched_on_every_path() {
        let hub = Hub::new(1 << 20);
        hub.stream_starts_at(Position::default());
        let batch = || {
            vec![
                row_change(1, "I", r#""columns":{"id":1,"a":1}"#),
                row_change(2, "U", r#""columns":{"id":1,"a":2},"identity":{"id":1}"#),
                row_change(3, "D", r#""identity":{"id":1}"#),
                row_change(4, "U", r#""columns":{"id":2,"a":1},"identity":{"id":2}"#),
            ]
        };
        let how = |cur: &mut Cursor| -> Vec<(String, bool)> {
            let mut got = Vec::new();
            cur.fill(64, &mut got).expect("fill");
            got.iter()
                .map(|e| (format!("{:?}", e.change.action), e.unmatched))
                .collect()
        };
        let want_view = vec![
            ("Insert".to_owned(), false),
            ("Update".to_owned(), true),
            ("Delete".to_owned(), true),
            ("Update".to_owned(), false),
        ];
        let mut scratch = PublishScratch::default();
        // Listed by the hub: a view gets the unmatched update and delete;
        // an insert-only query and an unfiltered one get what they match.
        let subscribe = |q: &str| {
            hub.subscribe(Some(query::parse(q).expect("query")), None)
                .expect("subscribe")
        };
        let (mut view, mut inserts, mut all) = (
            subscribe("*:t:a.eq.1"),
            subscribe("insert:t:a.eq.1"),
            subscribe("*:t"),
        );
        hub.publish(batch(), &mut scratch);
        assert_eq!(how(&mut view), want_view);
        assert_eq!(how(&mut inserts), vec![("Insert".to_owned(), false)]);
        assert!(how(&mut all).iter().all(|(_, unmatched)| !unmatched));
        // Read by a resuming cursor's own scan (from before its group
        // existed): the same.
        let mut late = hub
            .subscribe(
                Some(query::parse("*:t:a.lt.2").expect("query")),
                Some(Position::default()),
            )
            .expect("resume");
        assert_eq!(how(&mut late), want_view);
    }

    #[test]
    fn costly_matches_are_deferred_to_the_cursor_and_decided_there() {
        let hub = Hub::new(64 << 20);
        hub.stream_starts_at(Position::default());
        let q = query::parse(r#"insert:t:s.like."%a_c%""#).expect("query");
        let mut cursor = hub.subscribe(Some(q), None).expect("subscribe");
        let big = "x".repeat(HUB_MATCH_COST);
        let rows = [
            format!(r#"{{"s":"{big}abc"}}"#),
            format!(r#"{{"s":"{big}"}}"#),
            r#"{"s":"abc"}"#.to_owned(),
            r#"{"s":"abd"}"#.to_owned(),
        ];
        let mut scratch = PublishScratch::default();
        for (n, row) in rows.iter().enumerate() {
            hub.publish(vec![change(n as u32, row)], &mut scratch);
        }
        // The two large rows were left to the cursor; the small ones decided.
        assert_eq!(hub.report().match_deferred, 2);
        // Filled in calls of at most one time slice each.
        let mut got = Vec::new();
        loop {
            cursor.fill(64, &mut got).expect("fill");
            match cursor.paused_until() {
                None => break,
                Some(at) => {
                    std::thread::sleep(at.saturating_duration_since(std::time::Instant::now()))
                }
            }
        }
        let sizes: Vec<usize> = got.iter().map(|e| e.change.raw().len()).collect();
        assert_eq!(got.len(), 2, "{sizes:?}");
        assert!(got[0].change.raw().len() > HUB_MATCH_COST);
        assert!(got[1].change.raw().len() < 200);
    }

    #[test]
    fn a_cursor_past_its_matching_budget_waits_and_then_goes_on() {
        let hub = Hub::new(256 << 20);
        hub.stream_starts_at(Position::default());
        hub.set_match_budget(std::time::Duration::from_micros(1));
        let q = query::parse(r#"insert:t:s.ilike."%a_c%""#).expect("query");
        let mut cursor = hub.subscribe(Some(q), None).expect("subscribe");
        // Costly enough to be deferred, quick enough to evaluate (well under
        // a second even in a debug build on a busy machine).
        let row = format!(r#"{{"s":"{}ABC"}}"#, "x".repeat(HUB_MATCH_COST));
        let mut scratch = PublishScratch::default();
        for n in 0..3 {
            hub.publish(vec![change(n, &row)], &mut scratch);
        }
        let mut got = Vec::new();
        let mut waits = 0;
        let started = std::time::Instant::now();
        while got.len() < 3 {
            cursor.fill(64, &mut got).expect("fill");
            if let Some(at) = cursor.paused_until() {
                waits += 1;
                std::thread::sleep(at.saturating_duration_since(std::time::Instant::now()));
            }
            assert!(started.elapsed() < std::time::Duration::from_secs(30));
        }
        // One evaluation per one-second window, each over the budget.
        assert!(waits >= 2, "{waits}");
        assert!(hub.report().match_throttled >= 2);
        assert!(started.elapsed() >= std::time::Duration::from_secs(2));
    }
}
