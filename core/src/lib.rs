//! walcast-core: what walcast decides without I/O.
//!
//! ```text
//! change.rs    plugin bytes -> Change { action, schema, table, lsn, pos, text }
//! query/       the query syntax (insert:users:age.gt.30): parse, match
//! record.rs    a WASM filter's input record: binary header + JSON
//! marks.rs     backfill watermarks and snapshot visibility
//! auth/        credentials: static tokens, JWTs (jwt.rs), their walcast
//!              claim's tables, actions and row rules (rules.rs)
//! requests.rs  what clients send: first frames, ACKs, request bodies
//! sql.rs       identifiers quoted for SQL text
//! ```
//!
//! The proxy (`walcast-proxy`) does the I/O around these: the replication
//! stream, websockets, HTTP, the catalog, the WASM engine. The fuzz targets
//! (`fuzz/`) build on this crate alone.

pub mod auth;
pub mod change;
pub mod marks;
pub mod query;
pub mod record;
pub mod requests;
pub mod sql;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;
