//! The change log: every change the proxy serves, stored once, in stream
//! order, bounded by bytes.
//!
//! Each change gets a sequence number (`seq`, local to this process) and
//! carries its stream position (`pos`, the plugin's commit LSN and index,
//! the same in every process). Clients read the log through cursors
//! (`cursor.rs`); nobody ever waits for a client: when the log is over its
//! byte bound, the oldest changes go, and a cursor that still pointed at
//! them learns that it fell behind.
//!
//! The log also knows from where it is complete (`floor`): every change
//! positioned after the floor is in the log or still to come. A client that
//! resumes after a position below the floor may have missed changes.

use crate::change::Change;
use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use walcast_format::Position;

/// Bytes a change costs beyond its JSON: the `Change` struct and its
/// allocation, its log slot, its share of the protocol framing and read
/// buffers kept with its bytes, and the filter record head (the slot
/// twice: the ring grows by doubling). Schema and table names are shared
/// between changes (`change::Name`). Measured: a
/// full log of 250-byte changes took about this
/// much per change in RSS (docs/benchmarks.md).
pub const ENTRY_OVERHEAD: usize =
    std::mem::size_of::<Change>() + 2 * std::mem::size_of::<Entry>() + 256;
/// Bytes one match-list entry costs (a `seq` in a group's list).
pub const MATCH_COST: usize = 8;

/// A change in the log.
#[derive(Clone)]
pub struct Entry {
    pub change: Arc<Change>,
    pub pos: Position,
    /// What this entry counts against the bound (saturated: a change over
    /// 4 GiB counts as 4 GiB).
    cost: u32,
    /// Handed to a client whose query did not match it: an update or
    /// delete that may remove a row the client holds (`view.rs`). Always
    /// false in the log itself.
    pub unmatched: bool,
}

impl Entry {
    /// An entry that is not in the log (a backfill's read event), sent
    /// like one.
    pub fn outside_log(change: Arc<Change>, pos: Position) -> Entry {
        Entry {
            change,
            pos,
            cost: 0,
            unmatched: false,
        }
    }
}

impl std::borrow::Borrow<Change> for Entry {
    fn borrow(&self) -> &Change {
        &self.change
    }
}

/// Where a resume request stands against the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Every change after the position is in the log from `seq` on.
    From(u64),
    /// Changes after the position may be gone; `oldest` is the oldest held.
    Gone { oldest: Option<Position> },
    /// The log does not know yet from where it is complete (no stream yet).
    NotReady,
}

/// Whether the log holds a change at a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// A change at exactly that position.
    Exactly,
    /// No change there, though the log holds every change around it.
    Missing,
    /// Before the oldest position the log is complete from.
    Before,
    /// After the newest change (or the log has not started).
    Ahead,
}

/// What a cursor gets when it asks for `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// `seq` was dropped: the cursor fell out of what the log retains.
    Evicted {
        /// Changes between the cursor and the newest change.
        behind_changes: u64,
    },
}

struct State {
    entries: VecDeque<Entry>,
    /// Seq of `entries[0]`.
    first_seq: u64,
    bytes: usize,
    /// Positions after this are all in the log or still to come.
    floor: Option<Position>,
    /// The newest position appended.
    last: Option<Position>,
    /// Changes and bytes dropped since the start.
    evicted: u64,
}

/// The shared log.
pub struct ChangeLog {
    state: RwLock<State>,
    max_bytes: usize,
}

/// A snapshot of the log's size, for metrics and health.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogStats {
    pub changes: usize,
    pub bytes: usize,
    pub max_bytes: usize,
    pub first_seq: u64,
    pub next_seq: u64,
    pub oldest: Option<Position>,
    pub newest: Option<Position>,
    pub evicted: u64,
}

impl ChangeLog {
    /// An empty log holding at most `max_bytes` (JSON plus per-change overhead).
    pub fn new(max_bytes: usize) -> ChangeLog {
        ChangeLog {
            state: RwLock::new(State {
                entries: VecDeque::new(),
                first_seq: 0,
                bytes: 0,
                floor: None,
                last: None,
                evicted: 0,
            }),
            max_bytes: max_bytes.max(1),
        }
    }

    /// The byte bound.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// The stream starts (or restarts) at `floor`: every change positioned
    /// after it is still to come. Only ever moves forward.
    pub fn set_floor(&self, floor: Position) {
        {
            let mut s = crate::locks::write(&self.state);
            if s.entries.is_empty() && s.floor.is_none_or(|f| f < floor) {
                s.floor = Some(floor);
            }
        }
    }

    /// Changes positioned at or before `floor` and after the newest one
    /// here were lost (the source could not deliver them): a client
    /// resuming from before `floor` is told they are gone. Only moves forward.
    pub fn raise_floor(&self, floor: Position) {
        {
            let mut s = crate::locks::write(&self.state);
            if s.floor.is_none_or(|f| f < floor) {
                s.floor = Some(floor);
            }
        }
    }

    /// The newest position appended.
    pub fn last_position(&self) -> Option<Position> {
        crate::locks::read(&self.state).last
    }

    /// Seq the next appended change gets.
    pub fn next_seq(&self) -> u64 {
        let s = crate::locks::read(&self.state);
        s.first_seq + s.entries.len() as u64
    }

    /// Appends changes (in stream order) with the number of match-list
    /// entries each got, then drops the oldest while over the bound.
    /// Returns the seq of the first appended change.
    pub fn append(&self, changes: impl Iterator<Item = (Arc<Change>, Position, usize)>) -> u64 {
        let mut s = crate::locks::write(&self.state);
        let first = s.first_seq + s.entries.len() as u64;
        for (change, pos, matches) in changes {
            let cost = change.raw().len() + ENTRY_OVERHEAD + matches * MATCH_COST;
            let cost = u32::try_from(cost).unwrap_or(u32::MAX);
            s.bytes += cost as usize;
            s.last = Some(pos);
            s.entries.push_back(Entry {
                change,
                pos,
                cost,
                unmatched: false,
            });
        }
        while s.bytes > self.max_bytes {
            let Some(e) = s.entries.pop_front() else {
                break;
            };
            s.bytes -= e.cost as usize;
            s.first_seq += 1;
            s.evicted += 1;
            s.floor = Some(e.pos);
        }
        first
    }

    /// Copies entries from `seq` on (at most `max`) into `out`; `Err` when
    /// `seq` was dropped. Returns the seq after the last one copied.
    pub fn read(&self, seq: u64, max: usize, out: &mut Vec<Entry>) -> Result<u64, Missing> {
        let s = crate::locks::read(&self.state);
        let start = s.check(seq)?;
        let end = (start + max).min(s.entries.len());
        out.extend(s.entries.range(start..end).cloned());
        Ok(s.first_seq + end as u64)
    }

    /// Copies the entries with the given seqs (ascending) into `out`, up to
    /// the first one not appended yet; `Err` when the first was dropped.
    pub fn read_seqs(
        &self,
        seqs: impl Iterator<Item = u64>,
        out: &mut Vec<Entry>,
    ) -> Result<(), Missing> {
        let s = crate::locks::read(&self.state);
        for seq in seqs {
            let i = s.check(seq)?;
            match s.entries.get(i) {
                Some(e) => out.push(e.clone()),
                None => break,
            }
        }
        Ok(())
    }

    /// Where a client resuming after `after` starts.
    pub fn resume(&self, after: Position) -> Resume {
        let s = crate::locks::read(&self.state);
        let Some(floor) = s.floor else {
            return Resume::NotReady;
        };
        if after < floor {
            return Resume::Gone {
                oldest: s.entries.front().map(|e| e.pos),
            };
        }
        let i = s.entries.partition_point(|e| e.pos <= after);
        Resume::From(s.first_seq + i as u64)
    }

    /// Whether the log holds a change at exactly `pos`.
    pub fn holds(&self, pos: Position) -> Held {
        let s = crate::locks::read(&self.state);
        match (s.floor, s.last) {
            (None, _) => Held::Ahead,
            (Some(floor), _) if pos < floor => Held::Before,
            (_, Some(last)) if pos <= last => {
                match s.entries.binary_search_by(|e| e.pos.cmp(&pos)) {
                    Ok(_) => Held::Exactly,
                    Err(_) => Held::Missing,
                }
            }
            _ => Held::Ahead,
        }
    }

    /// Sizes and positions.
    pub fn stats(&self) -> LogStats {
        let s = crate::locks::read(&self.state);
        LogStats {
            changes: s.entries.len(),
            bytes: s.bytes,
            max_bytes: self.max_bytes,
            first_seq: s.first_seq,
            next_seq: s.first_seq + s.entries.len() as u64,
            oldest: s.entries.front().map(|e| e.pos),
            newest: s.last,
            evicted: s.evicted,
        }
    }
}

impl State {
    /// The index of `seq` in `entries` (may be one past the end).
    fn check(&self, seq: u64) -> Result<usize, Missing> {
        if seq < self.first_seq {
            let next = self.first_seq + self.entries.len() as u64;
            return Err(Missing::Evicted {
                behind_changes: next - seq,
            });
        }
        Ok((seq - self.first_seq) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use walcast_format::Lsn;

    fn change(i: u32, size: usize) -> (Arc<Change>, Position, usize) {
        let pad = "x".repeat(size);
        let raw = format!(
            r#"{{"action":"I","lsn":"0/1","schema":"public","table":"t","columns":{{"i":{i},"p":"{pad}"}}}}"#
        );
        let c = Change::parse(Bytes::from(raw), Lsn(1)).expect("change");
        (Arc::new(c), Position::new(Lsn(100 + u64::from(i)), 0), 0)
    }

    #[test]
    fn the_oldest_changes_go_when_over_the_bound_and_readers_learn_it() {
        let one = change(0, 100).0.raw().len() + ENTRY_OVERHEAD;
        let log = ChangeLog::new(one * 3);
        log.set_floor(Position::new(Lsn(50), 0));
        assert_eq!(log.append((0..5).map(|i| change(i, 100))), 0);
        let st = log.stats();
        assert_eq!((st.changes, st.first_seq, st.next_seq), (3, 2, 5));
        let mut out = Vec::new();
        assert_eq!(
            log.read(1, 10, &mut out),
            Err(Missing::Evicted { behind_changes: 4 })
        );
        assert_eq!(log.read(2, 2, &mut out), Ok(4));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].pos, Position::new(Lsn(102), 0));
        // Resuming: after a dropped change is gone, after the floor is fine.
        assert_eq!(
            log.resume(Position::new(Lsn(100), 0)),
            Resume::Gone {
                oldest: Some(Position::new(Lsn(102), 0))
            }
        );
        assert_eq!(log.resume(Position::new(Lsn(101), 0)), Resume::From(2));
        assert_eq!(log.resume(Position::new(Lsn(103), 0)), Resume::From(4));
        assert_eq!(log.resume(Position::new(Lsn(999), 0)), Resume::From(5));
    }

    #[test]
    fn a_raised_floor_makes_older_positions_gone() {
        let log = ChangeLog::new(1 << 20);
        log.set_floor(Position::new(Lsn(50), 0));
        log.append((1..3).map(|i| change(i, 10)));
        // Changes between 102 and 200 were lost.
        log.raise_floor(Position::new(Lsn(199), u32::MAX));
        assert!(matches!(
            log.resume(Position::new(Lsn(102), 0)),
            Resume::Gone { .. }
        ));
        assert_eq!(
            log.resume(Position::new(Lsn(199), u32::MAX)),
            Resume::From(2)
        );
        // Never backwards.
        log.raise_floor(Position::new(Lsn(60), 0));
        assert!(matches!(
            log.resume(Position::new(Lsn(150), 0)),
            Resume::Gone { .. }
        ));
    }

    #[test]
    fn resume_needs_a_floor_and_respects_it() {
        let log = ChangeLog::new(1 << 20);
        assert_eq!(log.resume(Position::default()), Resume::NotReady);
        log.set_floor(Position::new(Lsn(100), 0));
        assert_eq!(
            log.resume(Position::new(Lsn(99), 5)),
            Resume::Gone { oldest: None }
        );
        assert_eq!(log.resume(Position::new(Lsn(100), 0)), Resume::From(0));
        log.append((1..3).map(|i| change(i, 10)));
        assert_eq!(log.resume(Position::new(Lsn(101), 0)), Resume::From(1));
        let mut out = Vec::new();
        log.read_seqs([1, 2, 7].into_iter(), &mut out)
            .expect("read");
        assert_eq!(out.len(), 1, "seq 2 is not appended yet");
    }

    #[test]
    fn the_log_tells_whether_it_holds_a_change_at_a_position() {
        let log = ChangeLog::new(1 << 20);
        assert_eq!(log.holds(Position::new(Lsn(101), 0)), Held::Ahead);
        log.set_floor(Position::new(Lsn(100), 0));
        log.append([1, 3].into_iter().map(|i| change(i, 10)));
        assert_eq!(log.holds(Position::new(Lsn(99), 0)), Held::Before);
        assert_eq!(log.holds(Position::new(Lsn(101), 0)), Held::Exactly);
        assert_eq!(log.holds(Position::new(Lsn(103), 0)), Held::Exactly);
        assert_eq!(log.holds(Position::new(Lsn(102), 0)), Held::Missing);
        assert_eq!(log.holds(Position::new(Lsn(101), 1)), Held::Missing);
        assert_eq!(log.holds(Position::new(Lsn(103), 1)), Held::Ahead);
    }
}
