//! walcast-proxy: PostgreSQL change streams over websockets.
//!
//! Layout, in the order data flows:
//!
//! ```text
//! WAL -> walcast plugin (JSON bytes) -> walsender
//!     -> replication/   replication-protocol client (startup, auth, CopyBoth, status updates)
//!     -> reader.rs      the source: one reader on the proxy's slot, reconnects,
//!                       confirms positions, hands the hub batches of changes
//!     -> change.rs      plugin bytes -> Change { action, schema, table, lsn, pos, raw }
//!     -> hub.rs         where changes enter: each stored once in the log, its seq
//!                       added to the match list of every query group it matches
//!     -> log.rs         the change log: changes in stream order, byte-bounded
//!     -> query/         the query syntax (insert:users:age.gt.30): parse and match
//!     -> cursor.rs      what a client has read: its next seq and its group
//!     -> session.rs     one websocket client's loop (frames are the plugin's bytes),
//!                       pings, stall and fell-behind closes
//!     <- backfill/      `snapshot=1`: the table read in chunks between watermarks
//!                       (driver.rs, chunk.rs); the hub judges each chunk's window
//!                       (window.rs); the session sends its rows at the high mark
//!     -> http/          HTTP on axum: routes and their layers, the websocket upgrade,
//!                       /healthz, /metrics
//!     -> origin.rs      which web origins may call it (CORS, websocket Origin)
//!     -> auth/          who may read what: static tokens, JWTs and their walcast
//!                       claim (tables, actions, row filters), token refresh
//!     <- https.rs       HTTPS/WSS when --tls-cert is set (reloaded on SIGHUP)
//!     <- listener.rs    where connections enter: accept loop, connection and
//!                       handshake caps (`descriptors.rs`: the descriptor limit)
//!
//! Scale-out (`nats/`): `walcast-proxy relay` reads the slot once
//!     -> nats/relay.rs  every change published to a JetStream stream, the slot
//!                       confirmed once JetStream acknowledged it
//!     -> nats/edge.rs   `serve --nats-url`: the stream instead of a slot, into the
//!                       hub; from there on as above
//!
//! WAL -> walcast plugin -> walsender (one per durable stream slot)
//!     -> streams/       durable streams: slot + snapshot, snapshot pages,
//!                       one consumer per slot with ACKs, lag guard, heartbeats
//! ```
//!
//! Beside the flow: `config.rs` (CLI and environment), `health.rs` and
//! `metrics.rs` (what `/healthz` and `/metrics` report), `blocking.rs` (long
//! work moved off the async workers), `throttle.rs`
//! (log lines a client can repeat, written once per interval), `database.rs` (the database URL, TLS as `sslmode` says), `sql.rs` (a pool of
//! ordinary connections), `catalog.rs` (table lookups over it), `doctor.rs`
//! (`walcast-proxy doctor`), `filter/` (sandboxed WASM filters, applied in
//! `session.rs` and `streams/consumer.rs`).

pub mod auth;
pub mod backfill;
pub mod blocking;
pub mod catalog;
pub mod change;
pub mod config;
pub mod cursor;
pub mod database;
pub mod descriptors;
pub mod doctor;
pub mod filter;
pub mod health;
pub mod http;
pub mod https;
pub mod hub;
pub mod listener;
pub mod log;
pub mod metrics;
pub mod nats;
pub mod origin;
pub mod query;
pub mod reader;
pub mod replication;
pub mod session;
pub mod sql;
pub mod streams;
pub mod throttle;
