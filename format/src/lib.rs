//! The walcast change format, shared by the output plugin and its consumers.
//!
//! Everything here is pure Rust with no PostgreSQL dependency, so it is unit
//! tested with plain `cargo test`:
//!
//! - [`lsn`]: the `Lsn` newtype with PostgreSQL's `X/Y` text form;
//! - [`position`]: a change's place in the stream (commit LSN, index), the
//!   `pos` key of `include-position`;
//! - [`json`]: JSON string escaping identical to PostgreSQL's `escape_json`,
//!   and the writers for values whose `to_json` form can be produced without
//!   calling into PostgreSQL (integers, uuid, bytea);
//! - [`timestamp`]: the commit timestamp (`ts`) in ISO 8601 UTC;
//! - [`options`]: the plugin's options (`include-xids`, `add-tables`, ...);
//! - [`pattern`]: `schema.table` patterns with `*` wildcards and `\` escapes.

pub mod json;
pub mod lsn;
pub mod options;
pub mod pattern;
pub mod position;
pub mod timestamp;

pub use lsn::Lsn;
pub use options::{Actions, OptionError, Options};
pub use pattern::{PatternError, TablePattern};
pub use position::{ParsePositionError, Position};
