//! The hub: the `query` target's inputs (a query's text, a NUL byte, bytes
//! that build rows) published through the hub to one client. It hands the
//! client exactly the changes its query matches (through its `eq` index or
//! deferred to the cursor), and marks as unmatched exactly the updates and
//! deletes of its table that may take a row out of a view.
//!
//! Needs the proxy (`--features host`); the proxy's tests run the same
//! check on seeded inputs (`walcast_proxy::fuzzing`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| walcast_proxy::fuzzing::hub(data));
