//! The proxy's end-to-end tests: walcast-proxy as a process against
//! private PostgreSQL clusters (and nats-server, Chromium, Node where a
//! subject needs them), with real clients. One test binary: the support
//! code is compiled once; each subject is a module
//! (`cargo test -p walcast-proxy --test e2e delivery::`).

mod support;

mod access;
mod auth;
mod backfill;
mod browser;
mod connections;
mod delivery;
mod docs;
mod doctor;
mod durable;
mod examples;
mod failover;
mod filters;
mod js_client;
mod live;
mod replication_errors;
mod resilience;
mod rust_client;
mod scaleout;
mod simulation;
mod tls;
