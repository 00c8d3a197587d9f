//! A group: the clients with the same query, and the match list the hub
//! (hub.rs) writes for them and their cursors (cursor.rs) read.

use crate::change::Change;
use crate::query::{self, Query};
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::Notify;

/// How a change is on a group's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listed {
    /// The query matched it.
    Matched,
    /// Too costly for the hub: the cursor evaluates it.
    Deferred,
    /// The query did not match it, but it may remove a row a client of the
    /// group holds (an update or delete of its table, `view.rs`).
    Unmatched,
}

/// A group's match list: the seqs of the log entries its query matched.
pub(crate) struct Matches {
    /// Each match as `seq << 2 | how` (in seq order, see [`listed`]).
    pub seqs: VecDeque<u64>,
    /// The list holds every match from this seq on (the log's head when the
    /// group was made); before it, cursors evaluate the query themselves.
    pub complete_from: u64,
    /// One past the newest seq trimmed from the list because the log
    /// dropped it: a cursor before it missed a match.
    pub lost_upto: u64,
}

impl Matches {
    pub(crate) fn push(&mut self, seq: u64, how: Listed) {
        let how = match how {
            Listed::Matched => 0,
            Listed::Deferred => 1,
            Listed::Unmatched => 2,
        };
        self.seqs.push_back(seq << 2 | how);
    }

    /// The index of the first listed match at or after `seq`.
    pub(crate) fn index_of(&self, seq: u64) -> usize {
        self.seqs.partition_point(|s| s >> 2 < seq)
    }
}

/// A listed change: its seq, and how it is on the list.
pub(crate) fn listed(code: u64) -> (u64, Listed) {
    let how = match code & 3 {
        0 => Listed::Matched,
        1 => Listed::Deferred,
        _ => Listed::Unmatched,
    };
    (code >> 2, how)
}

/// Clients with the same query (or, with `query: None`, every row change).
pub struct Group {
    pub query: Option<Query>,
    pub(crate) matches: Mutex<Matches>,
    /// Woken once per batch that added to this group.
    pub notify: Notify,
}

/// Whether a group's clients keep views: the hub lists its table's updates
/// and deletes for it even when its query does not match them.
pub(crate) fn leaves(q: &Query) -> bool {
    q.may_leave(query::RowAction::Update) || q.may_leave(query::RowAction::Delete)
}

/// Whether `c`, which `q` does not match, is listed for `q`'s clients all
/// the same: an update or delete of its table that may remove a row they
/// hold (`view.rs`).
pub(crate) fn may_leave(q: &Query, c: &Change) -> bool {
    c.row_action().is_some_and(|a| q.may_leave(a)) && q.matches_table(&c.schema, &c.table)
}
