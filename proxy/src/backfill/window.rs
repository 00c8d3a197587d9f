//! The hub's side of backfills: what the stream did between a chunk's
//! watermarks, and which of the chunk's rows that leaves to send.
//!
//! The hub sees every change in stream order, so it keeps, per backfill, the
//! window of the chunk being read: opened by the low watermark, closed by the
//! high one. In between it notes the key and transaction of every change to
//! the backfill's table. At the high watermark, a row of the chunk is sent
//! unless a transaction the chunk's snapshot did not see changed its key
//! before that point: that change is in the stream already, and the row as
//! read would undo it.
//!
//! One case the window cannot see: a transaction whose commit record is
//! before the low watermark but which was not yet visible when the chunk was
//! read (PostgreSQL makes a commit visible a moment after writing it). The
//! hub remembers the commit of the last [`RECENT`] transactions it was given;
//! a chunk whose snapshot still counted one of them as running is read again.

use super::marks::{Edge, Mark, Visibility};
use super::{Place, Places};
use crate::change::{Action, Change};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use tokio::sync::mpsc;
use walcast_format::{Lsn, Position};

/// Transactions whose commit the hub remembers for the check above.
pub const RECENT: usize = 16384;

/// Keys noted in one window before the chunk's rows are known; past it the
/// chunk is read again (a window that long means a table written very fast
/// while one chunk was read).
pub const MAX_NOTED: usize = 1 << 18;

/// The table a backfill reads.
#[derive(Debug, Clone)]
pub struct Spec {
    pub schema: String,
    pub table: String,
    /// Primary key column names in key order; empty: the table has none.
    pub key: Vec<String>,
}

/// What a chunk's read found, handed to the hub before the high watermark
/// is written.
#[derive(Debug)]
pub struct ChunkRead {
    pub visibility: Visibility,
    /// Each row's key ([`key_text`]); empty for a table without a key.
    pub keys: Vec<String>,
    /// Rows read.
    pub rows: usize,
}

/// A chunk's read as the window keeps it.
struct Read {
    visibility: Visibility,
    /// Row keys in the chunk's order.
    order: Vec<String>,
    set: HashSet<String>,
    rows: usize,
}

/// The hub's answer at a chunk's high watermark.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send the rows at these indexes (ascending) after every log entry
    /// before `seq`, and before every entry from it on; `pos` is the high
    /// watermark's position.
    Rows {
        chunk: u32,
        attempt: u32,
        keep: Vec<usize>,
        seq: u64,
        pos: Position,
    },
    /// The window cannot be trusted: read the chunk again.
    Retry {
        chunk: u32,
        attempt: u32,
        reason: String,
    },
}

/// A new backfill id: random, so that the proxies reading one stream (edges,
/// durable streams, restarts) never take another's watermarks for theirs.
pub fn new_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// The canonical text of a key: the JSON array of its values.
pub fn key_text(row: &Map<String, Value>, key: &[String]) -> Option<String> {
    let mut values = Vec::with_capacity(key.len());
    for k in key {
        values.push(row.get(k)?);
    }
    serde_json::to_string(&values).ok()
}

/// One chunk's window.
#[derive(Default)]
struct Window {
    low: Option<Position>,
    /// (key, xid) of changes to the table; pruned to the chunk's keys and
    /// to transactions the snapshot did not see once the read is known.
    noted: Vec<(String, u32)>,
    /// Transactions that truncated the table.
    truncated: Vec<u32>,
    /// Transactions that updated or deleted rows of a table without a key,
    /// or changed a key the hub could not read.
    unkeyed: Vec<u32>,
    overflow: bool,
}

struct Watch {
    spec: Spec,
    /// The chunk and attempt whose watermarks count.
    expect: Option<(u32, u32)>,
    window: Window,
    read: Option<Read>,
    tx: mpsc::UnboundedSender<Verdict>,
    places: Arc<Places>,
}

impl Watch {
    /// Waits for the watermarks of `expect` (none: nothing), afresh.
    fn reset(&mut self, expect: Option<(u32, u32)>) {
        self.expect = expect;
        self.window = Window::default();
        self.read = None;
    }

    fn note(&mut self, change: &Change) {
        let w = &mut self.window;
        let xid = change.xid.unwrap_or(0);
        if let Some(read) = &self.read {
            if read.visibility.sees(xid) {
                return;
            }
        }
        if change.action == Action::Truncate {
            w.truncated.push(xid);
            return;
        }
        if self.spec.key.is_empty() {
            if change.action != Action::Insert {
                w.unkeyed.push(xid);
            }
            return;
        }
        let mut keys = Vec::with_capacity(2);
        if change.action != Action::Delete {
            match change.row().and_then(|r| key_text(r, &self.spec.key)) {
                Some(k) => keys.push(k),
                None => w.unkeyed.push(xid),
            }
        }
        if let Some((s, e)) = change.identity_range() {
            match serde_json::from_slice::<Map<String, Value>>(&change.raw()[s..e])
                .ok()
                .and_then(|r| key_text(&r, &self.spec.key))
            {
                Some(k) => keys.push(k),
                None => w.unkeyed.push(xid),
            }
        } else if change.action == Action::Delete {
            w.unkeyed.push(xid);
        }
        for k in keys {
            if let Some(read) = &self.read {
                if !read.set.contains(&k) {
                    continue;
                }
            }
            if w.noted.len() >= MAX_NOTED {
                w.overflow = true;
                return;
            }
            w.noted.push((k, xid));
        }
    }
}

/// The transactions most recently given to the hub and where they committed.
#[derive(Default)]
struct Recent {
    commits: VecDeque<(u32, Lsn)>,
    last: Option<u32>,
}

impl Recent {
    fn note(&mut self, xid: u32, commit: Lsn) {
        if self.last == Some(xid) {
            return;
        }
        self.last = Some(xid);
        if self.commits.len() >= RECENT {
            self.commits.pop_front();
        }
        self.commits.push_back((xid, commit));
    }

    /// A transaction the snapshot counted as running that committed before `low`.
    fn committed_unseen(&self, vis: &Visibility, low: Lsn) -> Option<u32> {
        if vis.xip.is_empty() {
            return None;
        }
        self.commits
            .iter()
            .find(|(x, commit)| *commit < low && vis.xip.contains(x))
            .map(|(x, _)| *x)
    }
}

/// Every backfill's window, and the recent commits (kept by the hub).
#[derive(Default)]
pub struct Windows {
    watches: HashMap<u64, Watch>,
    recent: Recent,
}

pub use walcast_core::marks::is_mark;

/// A watermark's content.
fn mark_of(change: &Change) -> Option<Mark> {
    #[derive(serde::Deserialize)]
    struct Content<'a> {
        #[serde(borrow)]
        content: Option<&'a str>,
    }
    let c: Content = serde_json::from_slice(change.raw()).ok()?;
    Mark::parse(c.content?)
}

impl Windows {
    /// Whether any backfill runs.
    pub fn is_empty(&self) -> bool {
        self.watches.is_empty()
    }

    /// Starts watching for backfill `id`; verdicts go to `tx`, the places
    /// of the chunks to send to `places`.
    pub fn add(
        &mut self,
        id: u64,
        spec: Spec,
        tx: mpsc::UnboundedSender<Verdict>,
        places: Arc<Places>,
    ) {
        self.watches.insert(
            id,
            Watch {
                spec,
                expect: None,
                window: Window::default(),
                read: None,
                tx,
                places,
            },
        );
    }

    pub fn remove(&mut self, id: u64) {
        self.watches.remove(&id);
    }

    /// The next watermarks of `id` are for this chunk and attempt.
    pub fn expect(&mut self, id: u64, chunk: u32, attempt: u32) {
        if let Some(w) = self.watches.get_mut(&id) {
            w.reset(Some((chunk, attempt)));
        }
    }

    /// The chunk was read: prunes what the window noted to what matters.
    pub fn read(&mut self, id: u64, chunk: u32, attempt: u32, read: ChunkRead) {
        let Some(w) = self.watches.get_mut(&id) else {
            return;
        };
        if w.expect != Some((chunk, attempt)) {
            return;
        }
        let set: HashSet<String> = read.keys.iter().cloned().collect();
        let vis = read.visibility;
        let win = &mut w.window;
        win.noted
            .retain(|(k, xid)| !vis.sees(*xid) && set.contains(k));
        win.truncated.retain(|x| !vis.sees(*x));
        win.unkeyed.retain(|x| !vis.sees(*x));
        w.read = Some(Read {
            visibility: vis,
            order: read.keys,
            set,
            rows: read.rows,
        });
    }

    /// Notes a row change given to the hub (not a watermark), or a
    /// transaction's commit: a stream whose changes carry no `pos` (a
    /// durable stream) learns where its transactions committed from their
    /// C frames, which the read of a chunk is checked against.
    pub fn observe(&mut self, change: &Change) {
        if change.action == Action::Commit {
            if let Some(xid) = change.xid {
                self.recent.note(xid, change.lsn);
            }
            return;
        }
        if let (Some(xid), Some(pos)) = (change.xid, change.pos) {
            self.recent.note(xid, pos.commit);
        }
        if self.watches.is_empty() {
            return;
        }
        for w in self.watches.values_mut() {
            if w.window.low.is_none() || w.window.overflow {
                continue;
            }
            let ours = match change.action {
                Action::Insert | Action::Update | Action::Delete => {
                    change.schema == w.spec.schema && change.table == w.spec.table
                }
                Action::Truncate => change
                    .truncated()
                    .iter()
                    .any(|(s, t)| *s == w.spec.schema && *t == w.spec.table),
                _ => false,
            };
            if ours {
                w.note(change);
            }
        }
    }

    /// The stream started again (a reconnect, or a failover to a server
    /// whose history may lack a watermark already written): every chunk
    /// waiting for its watermarks is read again.
    pub fn restarted(&mut self, out: &mut Vec<(mpsc::UnboundedSender<Verdict>, Verdict)>) {
        for w in self.watches.values_mut() {
            let Some((chunk, attempt)) = w.expect else {
                continue;
            };
            w.reset(None);
            let reason = "the change stream started again (a reconnect or a failover)".to_owned();
            out.push((
                w.tx.clone(),
                Verdict::Retry {
                    chunk,
                    attempt,
                    reason,
                },
            ));
        }
    }

    /// A watermark at `pos`; the next change stored gets `seq`. A verdict
    /// to send goes to `out`.
    pub fn mark(
        &mut self,
        change: &Change,
        seq: u64,
        out: &mut Vec<(mpsc::UnboundedSender<Verdict>, Verdict)>,
    ) {
        let Some(m) = mark_of(change) else { return };
        let Some(w) = self.watches.get_mut(&m.id) else {
            return;
        };
        if w.expect != Some((m.chunk, m.attempt)) {
            return;
        }
        let pos = change.pos.unwrap_or(Position::new(change.lsn, 0));
        match m.edge {
            Edge::Low => w.window.low = Some(pos),
            Edge::High => {
                let verdict = judge(w, &self.recent, &m, seq, pos);
                if let Verdict::Rows {
                    chunk, seq, pos, ..
                } = &verdict
                {
                    w.places.push(Place {
                        chunk: *chunk,
                        seq: *seq,
                        pos: *pos,
                    });
                }
                w.reset(None);
                out.push((w.tx.clone(), verdict));
            }
        }
    }
}

/// The verdict on a chunk at its high watermark.
fn judge(w: &Watch, recent: &Recent, m: &Mark, seq: u64, pos: Position) -> Verdict {
    let retry = |reason: String| Verdict::Retry {
        chunk: m.chunk,
        attempt: m.attempt,
        reason,
    };
    let Some(low) = w.window.low else {
        return retry("the stream did not carry the chunk's low watermark".into());
    };
    let Some(read) = &w.read else {
        return retry("the chunk's read did not reach the hub".into());
    };
    if w.window.overflow {
        return retry(format!(
            "over {MAX_NOTED} changes to the table while the chunk was read"
        ));
    }
    if let Some(x) = recent.committed_unseen(&read.visibility, low.commit) {
        return retry(format!(
            "transaction {x} committed before the low watermark but was not yet visible to the chunk's read"
        ));
    }
    if let Some(x) = w.window.unkeyed.first() {
        return retry(format!(
            "transaction {x} updated or deleted rows of the table by no key the proxy can read while the chunk was read"
        ));
    }
    let keep = if !w.window.truncated.is_empty() {
        Vec::new()
    } else if w.spec.key.is_empty() {
        (0..read.rows).collect()
    } else {
        let changed: HashSet<&str> = w.window.noted.iter().map(|(k, _)| k.as_str()).collect();
        read.order
            .iter()
            .enumerate()
            .filter(|(_, k)| !changed.contains(k.as_str()))
            .map(|(i, _)| i)
            .collect()
    };
    Verdict::Rows {
        chunk: m.chunk,
        attempt: m.attempt,
        keep,
        seq,
        pos,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn change(json: String) -> Change {
        Change::parse(Bytes::from(json), Lsn(1)).expect("change")
    }

    fn row(action: &str, xid: u32, commit: u64, id: i64, old: Option<i64>) -> Change {
        let identity = old
            .map(|o| format!(r#","identity":{{"id":{o}}}"#))
            .unwrap_or_default();
        let columns = if action == "D" {
            String::new()
        } else {
            format!(r#","columns":{{"id":{id},"v":"x"}}"#)
        };
        change(format!(
            r#"{{"action":"{action}","lsn":"0/1","xid":{xid},"pos":"{commit:016X}:00000000","schema":"public","table":"t"{columns}{identity}}}"#
        ))
    }

    fn mark(m: Mark, commit: u64) -> Change {
        change(format!(
            r#"{{"action":"M","lsn":"0/1","xid":1,"transactional":true,"prefix":"{}","content":"{}","pos":"{commit:016X}:00000000"}}"#,
            super::super::marks::PREFIX,
            m.content()
        ))
    }

    fn spec() -> Spec {
        Spec {
            schema: "public".into(),
            table: "t".into(),
            key: vec!["id".into()],
        }
    }

    fn edge(edge: Edge) -> Mark {
        Mark {
            id: 9,
            chunk: 1,
            attempt: 0,
            edge,
        }
    }

    /// Runs a window: changes before the read, the read (rows 1..=5 seen by
    /// a snapshot with xmin 100, xmax 110, 105 running), changes after it.
    fn run(before: &[Change], after: &[Change], ring: &[Change]) -> Verdict {
        let mut ws = Windows::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        ws.add(9, spec(), tx, Arc::default());
        for c in ring {
            ws.observe(c);
        }
        ws.expect(9, 1, 0);
        let mut out = Vec::new();
        ws.mark(&mark(edge(Edge::Low), 1000), 0, &mut out);
        for c in before {
            ws.observe(c);
        }
        ws.read(
            9,
            1,
            0,
            ChunkRead {
                visibility: Visibility::parse("100:110:105").expect("vis"),
                keys: (1..=5).map(|i| format!("[{i}]")).collect(),
                rows: 5,
            },
        );
        for c in after {
            ws.observe(c);
        }
        ws.mark(&mark(edge(Edge::High), 2000), 42, &mut out);
        assert_eq!(out.len(), 1);
        for (tx, v) in out {
            let _ = tx.send(v);
        }
        rx.try_recv().expect("verdict")
    }

    fn kept(v: Verdict) -> Vec<usize> {
        match v {
            Verdict::Rows { keep, seq, pos, .. } => {
                assert_eq!(seq, 42);
                assert_eq!(pos, Position::new(Lsn(2000), 0));
                keep
            }
            other => panic!("expected rows, got {other:?}"),
        }
    }

    #[test]
    fn a_chunk_waiting_for_its_watermarks_is_read_again_when_the_stream_restarts() {
        let mut ws = Windows::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        ws.add(9, spec(), tx, Arc::default());
        let mut out = Vec::new();
        // Nothing waits: nothing to say.
        ws.restarted(&mut out);
        assert!(out.is_empty());
        ws.expect(9, 1, 0);
        ws.mark(&mark(edge(Edge::Low), 1000), 0, &mut out);
        ws.restarted(&mut out);
        assert_eq!(out.len(), 1);
        for (tx, v) in out.drain(..) {
            let _ = tx.send(v);
        }
        assert!(matches!(
            rx.try_recv(),
            Ok(Verdict::Retry {
                chunk: 1,
                attempt: 0,
                ..
            })
        ));
        // The attempt's high watermark, if it comes after all, is stale.
        ws.mark(&mark(edge(Edge::High), 2000), 42, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn rows_changed_by_transactions_the_read_did_not_see_are_left_out() {
        let v = run(
            // 105 was running at the read, 111 started after it: both unseen.
            &[row("U", 105, 1500, 2, None), row("U", 99, 1100, 3, None)],
            &[
                row("D", 111, 1600, 0, Some(4)),
                row("U", 111, 1600, 9, Some(1)),
                row("I", 112, 1700, 77, None),
            ],
            &[],
        );
        // 3 was changed by a transaction the read saw: its row is newer.
        assert_eq!(kept(v), vec![2, 4]);
    }

    #[test]
    fn an_unseen_truncate_supersedes_the_whole_chunk() {
        let t = change(
            r#"{"action":"T","lsn":"0/1","xid":120,"pos":"00000000000005DC:00000000","tables":["public.t"]}"#
                .into(),
        );
        assert_eq!(kept(run(&[t], &[], &[])), Vec::<usize>::new());
    }

    #[test]
    fn a_commit_before_the_low_mark_unseen_by_the_read_means_read_again() {
        // 105 committed at 900, before the low watermark at 1000, yet the
        // read counted it as running.
        let v = run(&[], &[], &[row("U", 105, 900, 1, None)]);
        assert!(matches!(v, Verdict::Retry { .. }), "{v:?}");
        // Seen committing after the low mark, it is an ordinary window change.
        let v = run(&[row("U", 105, 1500, 1, None)], &[], &[]);
        assert_eq!(kept(v), vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_stream_without_positions_learns_commits_from_its_c_frames() {
        // A durable stream: no `pos` on its changes or watermarks; its C
        // frames carry the xid and the commit LSN. 105 committed at 0x384,
        // before the low watermark at 0x3E8, yet the read counted it as
        // running: the chunk is read again.
        let verdict = |commit: &str| {
            let mut ws = Windows::default();
            let (tx, mut rx) = mpsc::unbounded_channel();
            ws.add(9, spec(), tx, Arc::default());
            ws.observe(&change(format!(
                r#"{{"action":"C","xid":105,"lsn":"{commit}","end_lsn":"0/500"}}"#
            )));
            ws.expect(9, 1, 0);
            let watermark = |m: Mark, lsn: &str| {
                change(format!(
                    r#"{{"action":"M","lsn":"{lsn}","xid":1,"transactional":true,"prefix":"{}","content":"{}"}}"#,
                    super::super::marks::PREFIX,
                    m.content()
                ))
            };
            let mut out = Vec::new();
            ws.mark(&watermark(edge(Edge::Low), "0/3E8"), 0, &mut out);
            ws.read(
                9,
                1,
                0,
                ChunkRead {
                    visibility: Visibility::parse("100:110:105").expect("vis"),
                    keys: (1..=5).map(|i| format!("[{i}]")).collect(),
                    rows: 5,
                },
            );
            ws.mark(&watermark(edge(Edge::High), "0/7D0"), 1, &mut out);
            for (tx, v) in out {
                let _ = tx.send(v);
            }
            rx.try_recv().expect("verdict")
        };
        let v = verdict("0/384");
        assert!(matches!(v, Verdict::Retry { .. }), "{v:?}");
        // Committed after the low watermark: an ordinary window change
        // (no row of it was seen here, so every row is kept).
        let v = verdict("0/400");
        assert!(
            matches!(v, Verdict::Rows { ref keep, .. } if keep.len() == 5),
            "{v:?}"
        );
    }

    #[test]
    fn watermarks_of_other_chunks_and_attempts_do_not_count() {
        let mut ws = Windows::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        ws.add(9, spec(), tx, Arc::default());
        ws.expect(9, 1, 1);
        let mut out = Vec::new();
        // Attempt 0's watermarks are late: ignored.
        ws.mark(&mark(edge(Edge::Low), 10), 0, &mut out);
        ws.mark(&mark(edge(Edge::High), 20), 0, &mut out);
        assert!(out.is_empty());
        let high = Mark {
            attempt: 1,
            ..edge(Edge::High)
        };
        ws.read(
            9,
            1,
            1,
            ChunkRead {
                visibility: Visibility::parse("1:1:").expect("vis"),
                keys: vec!["[1]".into()],
                rows: 1,
            },
        );
        // A high watermark without its low one: read again.
        ws.mark(&mark(high, 30), 0, &mut out);
        for (tx, v) in out {
            let _ = tx.send(v);
        }
        assert!(matches!(
            rx.try_recv(),
            Ok(Verdict::Retry { attempt: 1, .. })
        ));
    }

    #[test]
    fn a_table_without_a_key_is_read_again_when_rows_change_unseen() {
        let mut ws = Windows::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        ws.add(
            9,
            Spec {
                key: Vec::new(),
                ..spec()
            },
            tx,
            Arc::default(),
        );
        let mut verdict = |changes: &[Change]| {
            ws.expect(9, 1, 0);
            let mut out = Vec::new();
            ws.mark(&mark(edge(Edge::Low), 1000), 0, &mut out);
            ws.read(
                9,
                1,
                0,
                ChunkRead {
                    visibility: Visibility::parse("100:110:").expect("vis"),
                    keys: Vec::new(),
                    rows: 3,
                },
            );
            for c in changes {
                ws.observe(c);
            }
            ws.mark(&mark(edge(Edge::High), 2000), 5, &mut out);
            for (tx, v) in out {
                let _ = tx.send(v);
            }
            rx.try_recv().expect("verdict")
        };
        // Inserts add rows the chunk did not have: harmless.
        let v = verdict(&[row("I", 120, 1500, 1, None)]);
        assert!(
            matches!(v, Verdict::Rows { ref keep, .. } if keep == &vec![0, 1, 2]),
            "{v:?}"
        );
        let v = verdict(&[row("D", 120, 1500, 0, Some(1))]);
        assert!(matches!(v, Verdict::Retry { .. }), "{v:?}");
    }
}
