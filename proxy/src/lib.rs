//! walcast-proxy: PostgreSQL change streams over websockets.
//!
//! Layout, in the order data flows:
//!
//! ```text
//! WAL -> walcast plugin (JSON bytes) -> walsender
//!     -> replication/   replication-protocol client (startup, auth, CopyBoth, status updates)
//!     -> reader.rs      one reader per slot: reconnects, confirms positions, feeds the hub
//!     -> change.rs      plugin bytes -> Change { action, schema, table, lsn, xid, raw }
//!     -> hub.rs         many subscribers, indexed by table, bounded queues
//!     -> query/         the query syntax (insert:users:age.gt.30): parse and match
//!     -> session.rs     one websocket client's loop (frames are the plugin's bytes)
//!     -> server.rs      HTTP routes, websocket upgrade, /healthz, /metrics, graceful shutdown
//!
//! WAL -> walcast plugin -> walsender (one per durable stream slot)
//!     -> streams/       durable streams: slot + snapshot, snapshot pages,
//!                       one consumer per slot with ACKs, lag guard, heartbeats
//! ```
//!
//! Beside the flow: `config.rs` (CLI and environment), `health.rs` and
//! `metrics.rs` (what `/healthz` and `/metrics` report), `sql.rs` (a pool of
//! ordinary connections), `catalog.rs` (table lookups over it), `doctor.rs`
//! (`walcast-proxy doctor`), `filter/` (sandboxed WASM filters, applied in
//! `session.rs` and `streams/consumer.rs`).

pub mod catalog;
pub mod change;
pub mod config;
pub mod doctor;
pub mod filter;
pub mod health;
pub mod hub;
pub mod metrics;
pub mod query;
pub mod reader;
pub mod replication;
pub mod server;
pub mod session;
pub mod sql;
pub mod streams;
