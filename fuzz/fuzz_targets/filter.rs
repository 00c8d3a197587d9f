//! The WASM filter host: uploaded bytes through the size limit, validation,
//! the ABI check, instantiation and calls with fuel and memory limits.
//! Half the inputs are raw bytes; the other half are valid modules that
//! `wasm-smith` builds with exactly the ABI's imports and exports, so that
//! arbitrary code runs inside the filter's calls.
//!
//! Invariants: nothing panics; every call ends (fuel); a failing filter
//! gives an error verdict, never a crash; memory past the limit is refused
//! (libFuzzer's `-rss_limit_mb` catches growth).
//!
//! Needs the proxy (`--features host`); the proxy's tests run the same
//! check on seeded inputs (`walcast_proxy::fuzzing`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    walcast_proxy::fuzzing::filter(data);
});
