//! Sandboxed WASM filters: a client uploads a module, then subscribes with
//! it; the module sees each change and drops it, keeps it or replaces it.
//!
//! ```text
//! POST /v1/filters -> modules.rs   size cap, sha256, compile once (blocking
//!                                  thread, semaphore), check imports/exports,
//!                                  cache (memory LRU + optional disk)
//! subscribe        -> instance.rs  one Store per subscription: memory limit,
//!                                  fuel per event, fuel budget per second,
//!                                  trap -> error frame + fresh instance,
//!                                  repeated errors -> detached
//! each change      -> record.rs    the input record: binary header + JSON
//! ```
//!
//! The ABI (version 1) is documented in `filters/README.md`.

pub mod instance;
pub mod modules;
pub use walcast_core::record;

pub use instance::{Decision, FilterInstance, BATCH_EVENTS};
pub use modules::{FilterLimits, FilterModule, Filters, HostError, UploadCode, UploadError};

/// The ABI's names (`walcast-abi`): the import module, the marker exports.
pub use walcast_abi::filter::{ABI_MARKER, HEADER_ONLY_MARKER, IMPORT_MODULE};

/// Why a filter failed on an event (or at init), as clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    OutOfFuel,
    StackOverflow,
    MemoryLimit,
    Trap,
    BadAlloc,
    BadReturn,
    BadOutput,
    OutputTooLarge,
    NotUtf8,
    GuestError,
    InitFailed,
    Instantiate,
}

impl ErrorCode {
    /// The code in `filter_error` frames.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::OutOfFuel => "OUT_OF_FUEL",
            ErrorCode::StackOverflow => "STACK_OVERFLOW",
            ErrorCode::MemoryLimit => "MEMORY_LIMIT",
            ErrorCode::Trap => "TRAP",
            ErrorCode::BadAlloc => "BAD_ALLOC",
            ErrorCode::BadReturn => "BAD_RETURN",
            ErrorCode::BadOutput => "BAD_OUTPUT",
            ErrorCode::OutputTooLarge => "OUTPUT_TOO_LARGE",
            ErrorCode::NotUtf8 => "NOT_UTF8",
            ErrorCode::GuestError => "GUEST_ERROR",
            ErrorCode::InitFailed => "INIT_FAILED",
            ErrorCode::Instantiate => "INSTANTIATE_FAILED",
        }
    }
}

/// A filter failure with a human-readable message.
#[derive(Debug, Clone)]
pub struct FilterError {
    pub code: ErrorCode,
    pub message: String,
}

impl FilterError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> FilterError {
        FilterError {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FilterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}
