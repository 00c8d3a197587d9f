//! A client's cursor into the change log: the next seq it reads and the
//! group whose match list it follows. A cursor costs the same whether its
//! client is 1 or 100,000 changes behind.
//!
//! Three ways to read, chosen per call:
//!
//! - no query (a WASM filter decides): every change of the log in order;
//! - a query, before the group's match list starts (a client resuming from
//!   a position older than its group): the cursor evaluates its query on
//!   the log entries itself, a bounded number per call;
//! - a query, within the match list: the seqs in the list, looked up in the
//!   log.
//!
//! A cursor falls behind when a change it still had to read was dropped
//! from the log; matches of other queries do not count.
//!
//! The matching a cursor does itself (its scans, and the matches the hub
//! deferred because they cost too much for the hub, see
//! [`crate::live::hub::HUB_MATCH_COST`]) runs on the client's task and is timed:
//! at most [`SLICE`] per call, and at most the hub's match budget per
//! second. Past the budget the client waits ([`Cursor::paused_until`]), so a
//! client with costly filters slows itself, never the hub or other clients;
//! if it waits long enough to fall out of the log, it is closed like any
//! client that fell behind.

use crate::live::group::{listed, may_leave, Group, Listed};
use crate::log::{ChangeLog, Entry, Missing};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use walcast_format::Position;

/// What a cursor reads and reports to: the hub (hub.rs), as its cursors
/// see it.
pub(crate) trait Source: Send + Sync {
    fn log(&self) -> &ChangeLog;
    /// Seq after the last change whose matches are all published.
    fn published(&self) -> u64;
    /// Matching time per second a cursor may use.
    fn match_budget(&self) -> Duration;
    /// Why the stream stopped for everyone, once it did.
    fn closed_reason(&self) -> Option<String>;
    /// Why cursor `cursor` must stop: the source lost changes it needed.
    fn lost_for(&self, cursor: u64) -> Option<String>;
    /// A cursor paused: its client used its matching time.
    fn count_throttled(&self);
    /// A cursor ends.
    fn leave(&self, cursor: u64, group: Option<u64>);
}

/// Log entries a cursor evaluates itself per call at most.
const SCAN_BUDGET: u64 = 4096;

/// Matching time per call at most: a call that reaches it returns what it
/// has, and the client's task yields before the next.
pub const SLICE: Duration = Duration::from_millis(2);

/// The matching time a cursor used: per call, and per one-second window.
struct MatchClock {
    per_second: Duration,
    window: Instant,
    used: Duration,
    /// Time used in the current call.
    call: Duration,
    /// When to call again, if the last call stopped early: its slice or
    /// the window's budget ran out.
    stopped: Option<Instant>,
    /// The last call stopped because the window's budget ran out.
    over_budget: bool,
}

impl MatchClock {
    fn new(per_second: Duration) -> MatchClock {
        MatchClock {
            per_second,
            window: Instant::now(),
            used: Duration::ZERO,
            call: Duration::ZERO,
            stopped: None,
            over_budget: false,
        }
    }

    fn start_call(&mut self) {
        self.call = Duration::ZERO;
        self.stopped = None;
        self.over_budget = false;
    }

    /// Whether there is time for one more evaluation; records why not.
    fn has_time(&mut self) -> bool {
        if self.used >= self.per_second {
            let now = Instant::now();
            if now.duration_since(self.window) >= Duration::from_secs(1) {
                self.window = now;
                self.used = Duration::ZERO;
            } else {
                self.stopped = Some(self.window + Duration::from_secs(1));
                self.over_budget = true;
                return false;
            }
        }
        if self.call >= SLICE {
            self.stopped = Some(Instant::now());
            return false;
        }
        true
    }

    /// Runs `f`, counting its time.
    fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        let took = t.elapsed();
        self.used += took;
        self.call += took;
        out
    }
}

/// Why a cursor cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// A change the cursor still had to read was dropped from the log.
    FellBehind {
        /// Changes of the log between the cursor and the newest one.
        behind_changes: u64,
    },
    /// The stream stopped for everyone.
    Closed(String),
    /// The source lost changes this client would have had (the hub's `lost`).
    Lost(String),
}

/// What the hub's metrics see of a cursor.
pub struct CursorShared {
    next: AtomicU64,
    scan_until: AtomicU64,
    group: Arc<Group>,
}

impl CursorShared {
    pub(crate) fn new(start: u64, group: Arc<Group>) -> CursorShared {
        CursorShared {
            next: AtomicU64::new(start),
            scan_until: AtomicU64::new(start),
            group,
        }
    }

    /// Changes waiting for this cursor (an upper bound while it evaluates
    /// its query itself).
    pub fn waiting(&self, published: u64) -> u64 {
        let next = self.next.load(Ordering::Relaxed);
        if self.group.query.is_none() {
            return published.saturating_sub(next);
        }
        let scan_until = self.scan_until.load(Ordering::Relaxed);
        let scanning = scan_until.saturating_sub(next);
        let from = next.max(scan_until);
        let listed = {
            let m = crate::locks::lock(&self.group.matches);
            (m.seqs.len() - m.index_of(from)) as u64
        };
        scanning + listed
    }
}

/// One client's read position.
pub struct Cursor {
    hub: Box<dyn Source>,
    id: u64,
    group_id: Option<u64>,
    group: Arc<Group>,
    next: u64,
    scan_until: u64,
    /// Entries at or before this position are skipped (a resume from a
    /// position the log has not reached yet).
    after: Option<Position>,
    shared: Arc<CursorShared>,
    seqs: Vec<u64>,
    scanned: Vec<Entry>,
    clock: MatchClock,
}

impl Cursor {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        hub: Box<dyn Source>,
        id: u64,
        group_id: Option<u64>,
        group: Arc<Group>,
        start: u64,
        scan_until: u64,
        after: Option<Position>,
        shared: Arc<CursorShared>,
    ) -> Cursor {
        shared.scan_until.store(scan_until, Ordering::Relaxed);
        Cursor {
            id,
            group_id,
            group,
            next: start,
            scan_until,
            after,
            shared,
            seqs: Vec::new(),
            scanned: Vec::new(),
            clock: MatchClock::new(hub.match_budget()),
            hub,
        }
    }

    /// When the last [`Cursor::fill`] stopped because its matching time ran
    /// out: the instant to call it again (now, after a yield, when only the
    /// call's slice ran out). `None` when it stopped for another reason.
    pub fn paused_until(&self) -> Option<Instant> {
        self.clock.stopped
    }

    /// What to wait on for new changes: `group().notify.notified()`,
    /// enabled before [`Cursor::fill`] and awaited only if that found nothing.
    pub fn group(&self) -> Arc<Group> {
        self.group.clone()
    }

    /// The next seq this cursor reads: every entry before it was read.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Appends up to `max` entries for this client to `out` (none when it
    /// is caught up).
    pub fn fill(&mut self, max: usize, out: &mut Vec<Entry>) -> Result<(), Stop> {
        // Lost changes first: a stream that lost them and then stopped
        // tells its clients what they miss, not only that it stopped.
        if let Some(reason) = self.hub.lost_for(self.id) {
            return Err(Stop::Lost(reason));
        }
        if let Some(reason) = self.hub.closed_reason() {
            return Err(Stop::Closed(reason));
        }
        let start = out.len();
        self.clock.start_call();
        let group = self.group.clone();
        let result = match &group.query {
            None => self.read_all(max, out),
            Some(q) => self.read_matching(q, max, out),
        };
        if let Some(after) = self.after {
            // Positions only grow: once one is past `after`, all later are.
            let skip = out[start..].iter().take_while(|e| e.pos <= after).count();
            out.drain(start..start + skip);
            if out.len() > start {
                self.after = None;
            }
        }
        if self.clock.over_budget {
            self.hub.count_throttled();
        }
        self.shared.next.store(self.next, Ordering::Relaxed);
        result.map_err(|Missing::Evicted { behind_changes }| Stop::FellBehind { behind_changes })
    }

    fn read_all(&mut self, max: usize, out: &mut Vec<Entry>) -> Result<(), Missing> {
        self.next = self.hub.log().read(self.next, max, out)?;
        Ok(())
    }

    fn read_matching(
        &mut self,
        q: &crate::query::Query,
        max: usize,
        out: &mut Vec<Entry>,
    ) -> Result<(), Missing> {
        let start = out.len();
        let mut budget = SCAN_BUDGET;
        while self.next < self.scan_until && out.len() - start < max && budget > 0 {
            let n = (self.scan_until - self.next).min(256).min(budget) as usize;
            self.scanned.clear();
            let end = self.hub.log().read(self.next, n, &mut self.scanned)?;
            if end == self.next {
                break;
            }
            // Entries are consecutive from `next`; stop at one there is no
            // time for, and read it again on the next call.
            for e in self.scanned.drain(..) {
                if !self.clock.has_time() {
                    break;
                }
                let mut e = e;
                if self.clock.time(|| e.change.matched_by_without_caching(q)) {
                    out.push(e);
                } else if may_leave(q, &e.change) {
                    e.unmatched = true;
                    out.push(e);
                }
                self.next += 1;
                budget = budget.saturating_sub(1);
            }
            if self.clock.stopped.is_some() {
                break;
            }
            debug_assert_eq!(self.next, end);
        }
        if self.next < self.scan_until || out.len() - start >= max {
            return Ok(());
        }
        // Every match before `published` is in the list once it is read.
        let published = self.hub.published();
        let room = max - (out.len() - start);
        {
            let m = crate::locks::lock(&self.group.matches);
            if self.next < m.lost_upto {
                return Err(Missing::Evicted {
                    behind_changes: published.saturating_sub(self.next),
                });
            }
            let i = m.index_of(self.next);
            self.seqs.clear();
            self.seqs.extend(m.seqs.range(i..).take(room));
        }
        let before = out.len();
        self.hub
            .log()
            .read_seqs(self.seqs.iter().map(|code| listed(*code).0), out)?;
        let read = out.len() - before;
        let consumed = self.judge_listed(q, out, before, read);
        if consumed == read && read == self.seqs.len() && read < room {
            // Caught up with the list.
            self.next = self.next.max(published);
            if let Some(&last) = self.seqs.last() {
                self.next = self.next.max(listed(last).0 + 1);
            }
        } else if consumed > 0 {
            self.next = listed(self.seqs[consumed - 1]).0 + 1;
        }
        Ok(())
    }

    /// Of the `read` entries listed for the group (at `out[before..]`, as
    /// `self.seqs` lists them): keeps the matched and unmatched, evaluates
    /// the ones the hub deferred while the clock allows and drops those
    /// that do not match. Returns how many listed entries were consumed
    /// (the rest are read again on the next call).
    fn judge_listed(
        &mut self,
        q: &crate::query::Query,
        out: &mut Vec<Entry>,
        before: usize,
        read: usize,
    ) -> usize {
        let mut consumed = read;
        if self.seqs[..read]
            .iter()
            .all(|code| listed(*code).1 == Listed::Matched)
        {
            return consumed;
        }
        let mut kept = before;
        for j in 0..read {
            let keep = match listed(self.seqs[j]).1 {
                Listed::Matched => true,
                Listed::Unmatched => {
                    out[before + j].unmatched = true;
                    true
                }
                Listed::Deferred => {
                    if !self.clock.has_time() {
                        consumed = j;
                        break;
                    }
                    let e = &mut out[before + j];
                    let change = &e.change;
                    let matched = self.clock.time(|| {
                        crate::blocking::off_workers(|| change.matched_by_without_caching(q))
                    });
                    if !matched && may_leave(q, &e.change) {
                        e.unmatched = true;
                    }
                    matched || e.unmatched
                }
            };
            if keep {
                out.swap(kept, before + j);
                kept += 1;
            }
        }
        out.truncate(kept);
        consumed
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        self.hub.leave(self.id, self.group_id);
    }
}
