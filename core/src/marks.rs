//! Watermarks and snapshot visibility.
//!
//! A watermark is a transactional logical message with the prefix
//! [`PREFIX`], written by the proxy with `pg_logical_emit_message` before
//! (low) and after (high) it reads a chunk. Its content names the backfill,
//! the chunk, the attempt and the edge: `0123456789abcdef:3:0:L`.
//!
//! [`Visibility`] is the chunk's MVCC snapshot as `pg_current_snapshot()`
//! reports it: which transactions' changes the chunk's rows already show.

use std::collections::HashSet;

/// The prefix of the proxy's watermark messages.
pub const PREFIX: &str = "walcast.backfill";

/// Which side of a chunk a watermark is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    /// Written before the chunk is read.
    Low,
    /// Written after the chunk was read.
    High,
}

/// One watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// The backfill it belongs to (unique per proxy process and run).
    pub id: u64,
    pub chunk: u32,
    /// Attempts of one chunk: a chunk whose window cannot be trusted is read again.
    pub attempt: u32,
    pub edge: Edge,
}

impl Mark {
    /// The message content.
    pub fn content(&self) -> String {
        let e = match self.edge {
            Edge::Low => 'L',
            Edge::High => 'H',
        };
        format!("{:016x}:{}:{}:{e}", self.id, self.chunk, self.attempt)
    }

    /// Reads a content written by [`Mark::content`]; `None` for anything else.
    pub fn parse(content: &str) -> Option<Mark> {
        let mut parts = content.split(':');
        let id = u64::from_str_radix(parts.next()?, 16).ok()?;
        let chunk = parts.next()?.parse().ok()?;
        let attempt = parts.next()?.parse().ok()?;
        let edge = match parts.next()? {
            "L" => Edge::Low,
            "H" => Edge::High,
            _ => return None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Mark {
            id,
            chunk,
            attempt,
            edge,
        })
    }
}

/// Whether `a` comes before `b` in PostgreSQL's circular 32-bit xid space.
pub fn precedes(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// An MVCC snapshot: which transactions it sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visibility {
    /// Every transaction before it had finished.
    pub xmin: u32,
    /// No transaction from it on had finished.
    pub xmax: u32,
    /// Transactions between the two that were still running.
    pub xip: HashSet<u32>,
}

impl Visibility {
    /// Reads `pg_current_snapshot()::text`: `xmin:xmax:xip,xip,...` with
    /// 64-bit transaction ids (epoch and xid; the stream carries the xid).
    pub fn parse(text: &str) -> Option<Visibility> {
        let mut parts = text.split(':');
        let xid = |s: &str| s.parse::<u64>().ok().map(|x| x as u32);
        let xmin = xid(parts.next()?)?;
        let xmax = xid(parts.next()?)?;
        let list = parts.next()?;
        if parts.next().is_some() {
            return None;
        }
        let mut xip = HashSet::new();
        for x in list.split(',').filter(|s| !s.is_empty()) {
            xip.insert(xid(x)?);
        }
        Some(Visibility { xmin, xmax, xip })
    }

    /// Whether the snapshot sees what transaction `xid` did (true for an
    /// aborted one too: it did nothing).
    pub fn sees(&self, xid: u32) -> bool {
        if precedes(xid, self.xmin) {
            return true;
        }
        if !precedes(xid, self.xmax) {
            return false;
        }
        !self.xip.contains(&xid)
    }
}

/// Whether a change is one of the proxy's watermarks.
pub fn is_mark(change: &crate::change::Change) -> bool {
    change.action == crate::change::Action::Message && change.prefix() == Some(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_read_back_what_they_write_and_nothing_else() {
        let m = Mark {
            id: 0xdead_beef_0000_0001,
            chunk: 7,
            attempt: 2,
            edge: Edge::High,
        };
        assert_eq!(m.content(), "deadbeef00000001:7:2:H");
        assert_eq!(Mark::parse(&m.content()), Some(m));
        for bad in ["", "x:1:0:L", "1:1:0:X", "1:1:0:L:", "1:1:L", "1:-1:0:L"] {
            assert_eq!(Mark::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn visibility_follows_xmin_xmax_and_the_running_list() {
        let v = Visibility::parse("4294967396:4294967400:4294967397,4294967399").expect("parse");
        // 2^32 + 100: the xid is 100 in the next epoch.
        assert_eq!((v.xmin, v.xmax), (100, 104));
        assert!(v.sees(99));
        assert!(v.sees(100));
        assert!(!v.sees(101));
        assert!(v.sees(102));
        assert!(!v.sees(103));
        assert!(!v.sees(104));
        assert!(!v.sees(5000));
        assert_eq!(Visibility::parse("1:2:").map(|v| v.xip.len()), Some(0));
        assert_eq!(Visibility::parse("1:2"), None);
        assert_eq!(Visibility::parse("a:2:"), None);
    }

    #[test]
    fn xids_compare_across_wraparound() {
        assert!(precedes(u32::MAX - 5, 3));
        assert!(!precedes(3, u32::MAX - 5));
        let v = Visibility {
            xmin: u32::MAX - 2,
            xmax: 2,
            xip: HashSet::from([u32::MAX]),
        };
        assert!(v.sees(u32::MAX - 1));
        assert!(!v.sees(u32::MAX));
        assert!(v.sees(1));
        assert!(!v.sees(2));
    }
}
