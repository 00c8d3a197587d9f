//! The query syntax: parse arbitrary text, then match the query against
//! rows built from its own columns and operands.
//!
//! Invariants: nothing panics; a parse error's position is a character
//! boundary inside the input (or its end); parsing is deterministic;
//! matching through a change (its cached row) agrees with matching the
//! row; matching within a work budget gives the same answer or none.
//! (The hub's delivery of the same inputs is the `hub` target's.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use walcast_core::fuzzing::{cases, split};
use walcast_core::query;

fuzz_target!(|data: &[u8]| {
    let (text, rows) = split(data);
    match query::parse(&text) {
        Err(e) => {
            assert!(
                e.position <= text.len() && text.is_char_boundary(e.position),
                "error position {} outside {:?}: {e}",
                e.position,
                text
            );
            assert!(!e.message.is_empty());
        }
        Ok(q) => {
            // Parsing is deterministic (groups are shared by parsed form).
            if let Ok(again) = query::parse(&text) {
                assert_eq!(format!("{q:?}"), format!("{again:?}"));
            }
            cases(&q, &rows, &[0, 64, 1 << 10, 64 << 10]);
        }
    }
});
