//! Durable streams: a permanent slot per stream, a snapshot consistent with
//! it, snapshot reads, one consumer at a time that ACKs positions, resume
//! after a disconnect (at-least-once).
//!
//! ```text
//! POST /v1/streams, GET /v1/init -> streams.rs   create slot + hold its exported snapshot
//! POST /v1/snapshot/data         -> snapshot.rs  pages of rows inside that snapshot
//! GET  /v1/lr/stream (websocket) -> consumer.rs  frames from the slot, ACKs -> confirmed position
//! POST /v1/streams/{slot}/snapshot -> backfill.rs a table's current rows, read in
//!                                                chunks between watermarks, sent in the stream
//! GET /v1/streams, DELETE        -> streams.rs   list, drop
//! beside them                       guard.rs     lag limit per slot, heartbeats
//! on an edge (--nats-url)           jet.rs       streams as JetStream consumers, no slot
//! routes                            http/durable.rs  the /v1/ endpoints
//! ```
//!
//! A slot is a durable stream when it uses the walcast plugin in this
//! database and is named `walcast_<word><n>` (the proxy's own live slot
//! excepted): the proxy never touches other slots.

pub mod backfill;
pub mod consumer;
pub mod guard;
pub mod jet;
pub mod snapshot;
pub mod streams;

pub use streams::{Streams, StreamsConfig};

/// Whether `name` has the form of a durable stream slot: `walcast_`, a word
/// of lower case letters (underscores inside), then digits.
pub fn is_stream_slot_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("walcast_") else {
        return false;
    };
    let digits = rest.len() - rest.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let word = &rest[..rest.len() - digits];
    digits > 0 && valid_word(word)
}

/// A stream name as clients give it: lower case letters, single underscores
/// between them, at most 40 characters.
pub fn valid_word(word: &str) -> bool {
    !word.is_empty()
        && word.len() <= 40
        && word.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        && !word.starts_with('_')
        && !word.ends_with('_')
        && !word.contains("__")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_slot_names() {
        assert!(is_stream_slot_name("walcast_amber1"));
        assert!(is_stream_slot_name("walcast_orders_eu12"));
        assert!(!is_stream_slot_name("walcast_proxy"));
        assert!(!is_stream_slot_name("walcast_12"));
        assert!(!is_stream_slot_name("walcast__x1"));
        assert!(!is_stream_slot_name("other_amber1"));
        assert!(!is_stream_slot_name("walcast_Amber1"));
        assert!(valid_word("orders"));
        assert!(!valid_word("orders1"));
        assert!(!valid_word(""));
        assert!(!valid_word(&"a".repeat(41)));
    }
}
