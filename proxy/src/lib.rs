//! walcast-proxy: PostgreSQL change streams over websockets.
//!
//! Two paths carry a change from the WAL to a websocket; one front door
//! takes the clients. `docs/architecture.md` walks through both.
//!
//! ```text
//! live:    WAL -> walcast plugin -> walsender (the proxy's one slot)
//!   replication/   the replication protocol (conn.rs, stream.rs, error.rs) and
//!                  reader.rs: the slot read once, reconnects, confirms positions
//!   change.rs      plugin bytes -> Change { action, schema, table, lsn, pos, text }
//!                  (walcast-core, like query/, auth's tokens and rules, and
//!                  what clients send: core/src/lib.rs)
//!   live/hub.rs    each change stored once in the log (log.rs), its seq on
//!                  the match list of every query group it matches
//!   live/group.rs  the clients of one query and their match list
//!   live/cursor.rs what a client has read: its next seq and its group
//!   live/session.rs one websocket: bursts from its cursor, pings, stalls
//!   liveness.rs    is a client still there: it reads (TCP_INFO), or answers
//!   delivery.rs    what a client receives: query, the user's rules, its filter
//!   backfill/      snapshot=1: a table read in chunks between watermarks,
//!                  each chunk's rows judged in stream order (window.rs)
//!   nats/          scale-out: relay.rs publishes the slot to JetStream once,
//!                  edge.rs reads it into the hub instead of a slot
//!
//! durable: WAL -> walcast plugin -> walsender (one slot per durable stream)
//!   durable/streams.rs   create (slot + exported snapshot), list, drop
//!   durable/snapshot.rs  pages of rows inside the exported snapshot
//!   durable/consumer.rs  one client per slot: frames through delivery.rs, ACKs
//!   durable/backfill.rs  re-snapshots through backfill/ into the stream
//!   durable/guard.rs     lag limit, heartbeats; durable/jet.rs: on an edge
//!
//! front door:
//!   http/          axum: listener.rs (accept, caps), serve.rs, tls.rs, router.rs,
//!                  origin.rs, live.rs and durable.rs (the websocket routes),
//!                  upgrade.rs, ops.rs (/healthz, /metrics)
//!   auth/          who may read what: tokens, JWT claims, row rules, refresh
//!   filter/        WASM filters: modules.rs (uploads, compile cache),
//!                  instance.rs (one sandbox per client); its input record is
//!                  walcast-core's record.rs
//!   query/         the query syntax (insert:users:age.gt.30): parse, match (walcast-core)
//! ```
//!
//! Beside the flow: `config.rs` (CLI and environment, in groups) and `app.rs`
//! (the commands built from them), `health.rs` and
//! `metrics.rs` (what `/healthz` and `/metrics` report), `blocking.rs` (long
//! work moved off the async workers), `throttle.rs` (log lines a client can
//! repeat, written once per interval), `database.rs` (the database URL, TLS
//! as `sslmode` says), `sql.rs` (a pool of ordinary connections, and the one for
//! writes when decoding on a standby),
//! `catalog.rs` (table lookups over it), `doctor/` (`walcast-proxy doctor`;
//! `failover.rs` its failover checks), `probe.rs` (`walcast-proxy
//! health`: a container healthcheck), `descriptors.rs` (the file
//! descriptor limit and the connections it allows), `fuzzing.rs` (the hub's and the filter host's checks for the fuzz targets
//! and seeded tests). Shared by the layers above them: `refusal.rs` (why a
//! request is refused; `http/` turns it into a status), `frames.rs` (every frame
//! the proxy writes itself), `ws.rs` (a client's
//! websocket and its close), `sink.rs` (where a source hands its changes),
//! `log.rs` (the change log), `locks.rs` (a lock whose holder panicked is
//! taken, and said so). docs/architecture.md#layers has the rules;
//! `scripts/check-layers.py` checks them.

pub mod app;
pub mod auth;
pub mod backfill;
pub mod blocking;
pub mod catalog;
pub use walcast_core::change;
pub mod config;
pub mod database;
pub mod delivery;
pub mod descriptors;
pub mod doctor;
pub mod durable;
pub mod filter;
pub mod frames;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod health;
pub mod http;
pub mod live;
pub mod liveness;
pub mod locks;
pub mod log;
pub mod metrics;
pub mod nats;
pub mod probe;
pub use walcast_core::query;
pub mod refusal;
pub mod replication;
pub mod sink;
pub mod sql;
pub mod throttle;
pub mod ws;
