//! Work that may hold a thread for milliseconds (a client's costly match, a
//! WASM filter that uses much of its fuel) runs with the async worker's
//! other tasks handed to another thread first, so that no other client
//! waits behind it. Its CPU time stays bounded by the client's own budgets
//! (`--match-budget-ms`, `--filter-budget-ms`).

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `f` with this worker's other tasks moved to another thread when on
/// a multi-thread runtime (`tokio::task::block_in_place`), in place otherwise.
pub fn off_workers<T>(f: impl FnOnce() -> T) -> T {
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}
