//! Backfills: the rows a subscription matches now, then every change to
//! them, without holding a snapshot (DBLog's watermarks).
//!
//! A live subscription with `snapshot=1` gets its table's matching rows as
//! read events (`"action":"R"`), chunk by chunk, interleaved with its live
//! changes at the right places:
//!
//! ```text
//! driver.rs   low watermark -> chunk.rs reads the chunk (own short snapshot)
//!             -> keys and snapshot to the hub -> high watermark
//! window.rs   the hub, in stream order: between the watermarks, which keys
//!             did transactions the chunk's snapshot missed change?
//!             at the high watermark: the chunk's other rows are current
//! live/session.rs sends those rows where the high watermark is in the stream,
//!             then a {"type":"snapshot"} progress frame ("done" at the end)
//! ```
//!
//! A client that applies every frame in order ends with the table's rows
//! as they are: a row read in a chunk is either current at the high
//! watermark or changed by a change the stream carries before it (then the
//! row is not sent). No transaction stays open between chunks, so `xmin` is
//! never held, and a large table costs no more than its chunks.
//! `marks.rs` holds the watermark format and snapshot visibility.

pub mod chunk;
pub mod driver;
pub use walcast_core::marks;
pub mod window;

use crate::log::Entry;
use std::collections::VecDeque;
use std::sync::Mutex;
use walcast_format::Position;

/// How backfills run (`--snapshot-*` flags).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Rows per chunk.
    pub chunk_rows: usize,
    /// Backfills reading at once; more wait for a turn.
    pub max_running: usize,
    /// Rows per second read from one table by all backfills (0: no limit).
    pub rows_per_second: u64,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            chunk_rows: 1000,
            max_running: 4,
            rows_per_second: 0,
        }
    }
}

/// Where a chunk goes in the client's stream: after every log entry before
/// `seq` (they are the ones positioned before `pos`, its high watermark),
/// before every entry from it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub chunk: u32,
    pub seq: u64,
    pub pos: Position,
}

/// A backfill's places, in chunk order. The hub adds each when it reaches
/// the high watermark, before any change after it can be read, so a
/// session never sends past a chunk whose rows it has not got yet.
#[derive(Debug, Default)]
pub struct Places(Mutex<VecDeque<Place>>);

impl Places {
    pub fn push(&self, place: Place) {
        {
            let mut q = crate::locks::lock(&self.0);
            q.push_back(place);
        }
    }

    /// The next chunk's place.
    pub fn next(&self) -> Option<Place> {
        crate::locks::lock(&self.0).front().copied()
    }

    /// The next chunk was sent.
    pub fn sent(&self) {
        {
            let mut q = crate::locks::lock(&self.0);
            q.pop_front();
        }
    }
}

/// A chunk's rows, ready to send at its [`Place`].
#[derive(Clone)]
pub struct Ready {
    pub chunk: u32,
    /// Read events.
    pub rows: Vec<Entry>,
    /// The progress frame sent after the rows.
    pub frame: String,
}

/// What a backfill tells its session.
pub enum Event {
    Ready(Ready),
    /// The backfill stopped: the client is closed with the reason.
    Failed(String),
}
