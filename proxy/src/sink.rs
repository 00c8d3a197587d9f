//! Where a source of changes (the replication reader, a NATS edge) hands
//! what it reads. The live hub is one (`live::hub::Publisher`); the sources
//! know nothing else of the live path.

use crate::change::Change;
use walcast_format::{Lsn, Position};

/// What a source tells the changes' destination.
pub trait Sink: Send {
    /// Every change after `floor` is to come.
    fn starts_at(&self, floor: Position);
    /// The position of the last change handed over, if any.
    fn last_position(&self) -> Option<Position>;
    /// Changes in stream order.
    fn publish(&mut self, batch: Vec<Change>);
    /// The changes after `floor` up to here will never come; `reason` says
    /// why to the clients that needed them.
    fn lost(&self, floor: Position, reason: &str);
    /// The source stopped for good: every client is closed with `reason`.
    fn close_all(&self, reason: &str);
    /// The most bytes of changes the sink holds.
    fn max_bytes(&self) -> usize;
    /// The server was promoted: its history left an earlier timeline at
    /// `switch` (the earliest such point). A position from there on that
    /// the sink does not hold may be of a change the old primary delivered
    /// that never happened on this server.
    fn history_left_at(&self, switch: Lsn);
    /// The source stopped for good and changes are lost (nothing after
    /// what the sink holds will come, or some of it never happened): every
    /// client is closed with `reason`, and a resume from anywhere is
    /// answered with it.
    fn lost_for_good(&self, reason: &str) {
        self.lost(Position::new(Lsn(u64::MAX), 0), reason);
        self.close_all(reason);
    }
}
