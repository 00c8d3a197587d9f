//! Command line and environment configuration (`--kebab-name` or
//! `WALCAST_SNAKE_NAME`; an optional `.env` file is read first).

use clap::{Parser, Subcommand};
use std::net::SocketAddr;

/// walcast-proxy: real-time PostgreSQL change streams over websockets.
#[derive(Debug, Clone, Parser)]
#[command(name = "walcast-proxy", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands; without one, the proxy serves.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve websocket streams (the default).
    Serve,
}

/// Settings of the server.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// PostgreSQL URL or key=value connection string of the database to stream
    /// (the role needs the REPLICATION attribute).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Address to listen on.
    #[arg(long, env = "WALCAST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Name of the proxy's permanent replication slot; a restart resumes from it.
    #[arg(long, env = "WALCAST_SLOT", default_value = "walcast_proxy")]
    pub slot: String,

    /// Only these tables are streamed and may be subscribed to: comma separated
    /// `schema.table` patterns (`*` wildcards). Default: all tables.
    #[arg(long, env = "WALCAST_TABLES")]
    pub tables: Option<String>,

    /// Changes queued per client at most; a client that falls further behind
    /// is disconnected (close code 1013) with a reason.
    #[arg(long, env = "WALCAST_QUEUE_BOUND", default_value_t = 4096)]
    pub queue_bound: usize,

    /// Websocket clients served at once; more get HTTP 503.
    #[arg(long, env = "WALCAST_MAX_CLIENTS", default_value_t = 10_000)]
    pub max_clients: usize,

    /// Bearer token(s) required on /ws and /v1/* (comma separated). Clients send
    /// `Authorization: Bearer <token>` or `?access_token=<token>`. Default: no token.
    #[arg(
        long,
        env = "WALCAST_TOKEN",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub token: Vec<String>,

    /// Seconds between standby status updates to PostgreSQL.
    #[arg(long, env = "WALCAST_STATUS_INTERVAL", default_value_t = 10)]
    pub status_interval: u64,
}
