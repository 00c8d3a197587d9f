//! walcast: a PostgreSQL logical decoding output plugin that writes one compact
//! JSON object per change, straight from the WAL decoding callbacks.
//!
//! Layout (the order data flows through):
//!
//! ```text
//! lib.rs        _PG_output_plugin_init registers the callbacks; SQL helpers
//! callbacks.rs  #[pg_guard] pg_decode_* callbacks -> Decoder
//! options.rs    the DefElem option list -> walcast_format::Options (ERROR on bad input)
//! decoder.rs    per-slot state: writes each change's JSON into one buffer, then to the walsender
//! relation.rs   per-relation metadata (names, columns, identity key), invalidated on relcache changes
//! tuple.rs      walks a heap tuple's columns, leaving out dropped and unchanged-TOAST ones
//! value.rs      one column value -> the bytes of to_json(value), fast paths for common types
//! ```
#![deny(unsafe_op_in_unsafe_fn)]

use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

mod callbacks;
mod decoder;
mod options;
mod relation;
mod tuple;
mod value;

pgrx::pg_module_magic!();

/// `walcast.debug_panic`: when on, the change callback panics on purpose so
/// that the conversion of a Rust panic into an SQL ERROR can be tested.
pub(crate) static DEBUG_PANIC: GucSetting<bool> = GucSetting::<bool>::new(false);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    GucRegistry::define_bool_guc(
        c"walcast.debug_panic",
        c"Make the walcast change callback panic on purpose (testing aid).",
        c"Used by walcast's tests to prove that a panic in the plugin becomes an ERROR and leaves the backend serving.",
        &DEBUG_PANIC,
        GucContext::Suset,
        GucFlags::default(),
    );
}

/// Entry point PostgreSQL looks up when a slot uses the `walcast` plugin.
///
/// # Safety
/// Called by PostgreSQL with a valid, writable callbacks struct.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn _PG_output_plugin_init(cb: *mut pg_sys::OutputPluginCallbacks) {
    // SAFETY: PostgreSQL passes a valid pointer to a zeroed callbacks struct.
    let cb = unsafe { &mut *cb };
    callbacks::register(cb);
}

pgrx::extension_sql_file!("../../sql/ddl_capture.sql", name = "ddl_capture");
pgrx::extension_sql_file!("../../sql/doctor.sql", name = "doctor");
pgrx::extension_sql_file!("../../sql/streams.sql", name = "streams");
