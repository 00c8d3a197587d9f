//! Command line and environment configuration (`--kebab-name` or
//! `WALCAST_SNAKE_NAME`; an optional `.env` file is read first).

use crate::auth::{jwt, Auth};
use crate::backfill;
use crate::database::Database;
use crate::durable::StreamsConfig;
use crate::filter::FilterLimits;
use crate::http::Timeouts;
use crate::liveness::Liveness;
use crate::nats::NatsSettings;
use crate::replication::reader::ReaderConfig;
use crate::replication::validate_slot_name;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::time::Duration;
use walcast_format::TablePattern;

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
    /// Scale-out: read the slot once and publish every change to a NATS
    /// JetStream stream (--nats-url), from which any number of
    /// `walcast-proxy serve --nats-url` edges serve clients. Serves only
    /// `/healthz` and `/metrics`.
    Relay,
    /// Check that the database can be streamed (wal_level, privileges, free
    /// slots and senders, the walcast plugin installed and allowed, the
    /// extension) and print what to fix. Exit status 1 when something must be fixed.
    Doctor,
    /// Ask the server listening on --listen for /healthz (a container
    /// healthcheck): exit status 0 when it answers 200, 1 otherwise, with
    /// the answer or the reason printed.
    Health,
}

/// Settings of the server, in groups (each its own heading in `--help`).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub live: LiveArgs,
    #[command(flatten)]
    pub snapshots: SnapshotArgs,
    #[command(flatten)]
    pub connections: ConnectionArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub durable: DurableArgs,
    #[command(flatten)]
    pub filters: FilterArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
}

/// The database and the proxy's slot.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "The database and the proxy's slot")]
pub struct DatabaseArgs {
    /// PostgreSQL URL or key=value connection string of the database to stream
    /// (the role needs the REPLICATION attribute).
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// PostgreSQL URL of the primary, when --database-url is a standby to
    /// decode on (PostgreSQL 16+): what must be written (the watermarks of
    /// snapshot=1, heartbeats, records of slots in walcast.streams) goes
    /// there, and snapshot=1 reads its rows there. Default: the server of
    /// --database-url that takes writes (docs/operations.md#decoding-on-a-standby).
    #[arg(
        long,
        global = true,
        env = "WALCAST_PRIMARY_URL",
        hide_env_values = true
    )]
    pub primary_url: Option<String>,

    /// Name of the proxy's permanent replication slot; a restart resumes from it.
    #[arg(
        long,
        global = true,
        env = "WALCAST_SLOT",
        default_value = "walcast_proxy"
    )]
    pub slot: String,

    /// Only these tables are streamed and may be subscribed to: comma separated
    /// `schema.table` patterns (`*` wildcards). Default: all tables.
    #[arg(long, global = true, env = "WALCAST_TABLES")]
    pub tables: Option<String>,

    /// Seconds between standby status updates to PostgreSQL.
    #[arg(
        long,
        global = true,
        env = "WALCAST_STATUS_INTERVAL",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub status_interval: u64,

    /// Create the replication slots (the proxy's, the relay's, each durable
    /// stream's) as failover slots on PostgreSQL 17 and newer, and make an
    /// existing one a failover slot, so that a standby that synchronizes
    /// slots has them after a promotion (docs/operations.md#failover).
    #[arg(
        long,
        global = true,
        env = "WALCAST_FAILOVER_SLOTS",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "true|false"
    )]
    pub failover_slots: bool,

    /// When the proxy's slot is lost (gone from the server while in use,
    /// recorded in walcast.streams and not on the server it starts on: a
    /// failover to a server without it; or invalidated by PostgreSQL, which
    /// is then dropped), make a new one at the server's
    /// current position and go on. The changes in between are missing:
    /// they are counted and logged, connected clients are closed and a
    /// resume from before answers 410 with the reason. Without it the proxy
    /// stops streaming and says why (docs/operations.md#failover). Not for
    /// the relay, whose edges' clients could not be told.
    #[arg(
        long,
        global = true,
        env = "WALCAST_RECREATE_LOST_SLOT",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "true|false"
    )]
    pub recreate_lost_slot: bool,
}

/// Listening.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Listening")]
pub struct ListenArgs {
    /// Address to listen on.
    #[arg(
        long,
        global = true,
        env = "WALCAST_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,

    /// PEM certificate chain to serve HTTPS and WSS with (with --tls-key);
    /// read again on SIGHUP. Default: plain HTTP.
    #[arg(long, global = true, env = "WALCAST_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, global = true, env = "WALCAST_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Web origins allowed to use /ws and /v1/* from a browser (comma
    /// separated, `https://app.example.com`; `*` for any). Others get 403,
    /// preflights included. Default: any origin without tokens, only the
    /// proxy's own with --token or a JWT key.
    #[arg(
        long,
        global = true,
        env = "WALCAST_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,
}

/// Live clients.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Live clients")]
pub struct LiveArgs {
    /// Bytes of changes the proxy keeps for its live clients (kB, MB, GB
    /// suffixes, in units of 1024: 1MB is 1,048,576 bytes; at least 1MB):
    /// each change is stored once, however many clients read it. A client
    /// whose unread changes are dropped to stay within it is closed (1013)
    /// and may resume from its last position while the log still holds
    /// what follows it.
    #[arg(long, global = true, env = "WALCAST_BUFFER_SIZE", default_value = "256MB", value_parser = buffer_size)]
    pub buffer_size: u64,

    /// Milliseconds per second of matching each live client may use on its
    /// own task: the matches too costly for the shared reader (a `like`
    /// on a large text value) and its scans when it resumes. A client past
    /// it waits for the next second; it slows only itself.
    #[arg(
        long,
        global = true,
        env = "WALCAST_MATCH_BUDGET_MS",
        default_value_t = 50,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub match_budget_ms: u64,

    /// Rows one live client's view may hold: a client whose query has row
    /// filters is told when a row it holds is deleted or leaves the query,
    /// so the proxy keeps a hash of each row it sent (10 to 21 bytes). A
    /// client that would hold more is closed (1008) with the reason.
    #[arg(
        long,
        global = true,
        env = "WALCAST_VIEW_MAX_ROWS",
        default_value_t = 1_000_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub view_max_rows: u64,

    /// Deprecated and ignored: clients read from the shared change log
    /// (--buffer-size) instead of per-client queues.
    #[arg(long, global = true, env = "WALCAST_QUEUE_BOUND", hide = true)]
    pub queue_bound: Option<usize>,

    /// Seconds between websocket pings on a quiet connection; a client that
    /// shows no sign of life (a frame, or reading what was sent) for two
    /// intervals is closed (1001). A client that is reading is never closed
    /// for a late answer.
    #[arg(
        long,
        global = true,
        env = "WALCAST_PING_INTERVAL",
        default_value_t = 15,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub ping_interval: u64,

    /// Seconds a client (live or durable) may take nothing while a write
    /// waits for it; past that it is closed (1013).
    #[arg(
        long,
        global = true,
        env = "WALCAST_STALL_TIMEOUT",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub stall_timeout: u64,

    /// Websocket clients served at once; more get HTTP 503.
    #[arg(
        long,
        global = true,
        env = "WALCAST_MAX_CLIENTS",
        default_value_t = 10_000
    )]
    pub max_clients: usize,
}

/// Live snapshots (snapshot=1).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Live snapshots (snapshot=1)")]
pub struct SnapshotArgs {
    /// Rows per chunk of a `snapshot=1` subscription's initial rows: each
    /// chunk is read in its own short transaction between two watermarks.
    #[arg(long, global = true, env = "WALCAST_SNAPSHOT_CHUNK_ROWS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub snapshot_chunk_rows: u64,

    /// `snapshot=1` subscriptions reading at once; more wait for a turn
    /// (they get live changes meanwhile).
    #[arg(long, global = true, env = "WALCAST_SNAPSHOT_MAX_RUNNING", default_value_t = 4,
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub snapshot_max_running: u64,

    /// Rows per second all `snapshot=1` subscriptions together may read
    /// from one table (0: no limit).
    #[arg(
        long,
        global = true,
        env = "WALCAST_SNAPSHOT_ROWS_PER_SECOND",
        default_value_t = 0
    )]
    pub snapshot_rows_per_second: u64,
}

/// Connections.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Connections")]
pub struct ConnectionArgs {
    /// Open client connections at once (HTTP and websocket); more are closed
    /// at once. Default: what the descriptor limit leaves room for (the limit
    /// minus an eighth, 64 to 1024, kept for PostgreSQL, filters and logs).
    #[arg(long, global = true, env = "WALCAST_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Open connections from one client address; more are closed at once.
    /// 0: no cap (the default, since clients behind a reverse proxy or a NAT
    /// share one address). Set it when browsers connect directly.
    #[arg(
        long,
        global = true,
        env = "WALCAST_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 0
    )]
    pub max_connections_per_address: usize,

    /// Websocket upgrades one client address may start per second (bursts
    /// of as many); more get HTTP 429 with Retry-After. 0: no cap (the
    /// default, for the same reason as --max-connections-per-address).
    #[arg(
        long,
        global = true,
        env = "WALCAST_MAX_UPGRADES_PER_ADDRESS",
        default_value_t = 0
    )]
    pub max_upgrades_per_address: u32,

    /// Websocket handshakes in flight: upgrade requests being checked and
    /// upgraded clients that have not sent their subscription yet. More get
    /// HTTP 503 with Retry-After.
    #[arg(
        long,
        global = true,
        env = "WALCAST_MAX_HANDSHAKES",
        default_value_t = 512,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    pub max_handshakes: usize,

    /// Seconds a client may take to send a request's head; also the longest
    /// a keep-alive connection may sit idle between requests.
    #[arg(
        long,
        global = true,
        env = "WALCAST_HEADER_TIMEOUT",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub header_timeout: u64,

    /// Seconds a client may take to send a request's body (HTTP 408 after).
    #[arg(
        long,
        global = true,
        env = "WALCAST_BODY_TIMEOUT",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub body_timeout: u64,

    /// Seconds from a websocket upgrade request until the websocket is open
    /// and, for clients that subscribe in their first frame, that frame arrived.
    #[arg(
        long,
        global = true,
        env = "WALCAST_HANDSHAKE_TIMEOUT",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub handshake_timeout: u64,
}

/// Access.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Access")]
pub struct AuthArgs {
    /// Bearer token(s) required on /ws and /v1/* (comma separated). Clients send
    /// `Authorization: Bearer <token>` or `?access_token=<token>`. Default: no token.
    #[arg(
        long,
        global = true,
        env = "WALCAST_TOKEN",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub token: Vec<String>,

    /// HS256 secret of user JWTs (at least 32 bytes). A JWT's `walcast`
    /// claim says what its user may read (docs/security.md).
    #[arg(
        long,
        global = true,
        env = "WALCAST_JWT_SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,

    /// PEM file with the RSA (RS256) or EC (ES256) public key of user JWTs.
    #[arg(long, global = true, env = "WALCAST_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<std::path::PathBuf>,

    /// JSON Web Key Set file with the keys of user JWTs (a token's `kid`
    /// picks its key).
    #[arg(long, global = true, env = "WALCAST_JWKS_FILE")]
    pub jwks_file: Option<std::path::PathBuf>,

    /// Accepted `aud` values of user JWTs (comma separated); a token
    /// without one of them is refused. Default: `aud` is not checked.
    #[arg(
        long,
        global = true,
        env = "WALCAST_JWT_AUDIENCE",
        value_delimiter = ','
    )]
    pub jwt_audience: Vec<String>,

    /// Seconds of clock difference allowed on a JWT's `exp` and `nbf`.
    #[arg(long, global = true, env = "WALCAST_JWT_LEEWAY", default_value_t = 30)]
    pub jwt_leeway: u64,

    /// Bearer token(s) allowed to upload WASM filters (comma separated).
    /// Default: whoever may use the other endpoints (--token).
    #[arg(
        long,
        global = true,
        env = "WALCAST_FILTER_UPLOAD_TOKEN",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub filter_upload_token: Vec<String>,
}

/// Durable streams.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Durable streams")]
pub struct DurableArgs {
    /// Seconds a durable stream's exported snapshot stays readable after
    /// `/v1/init` (it ends earlier when the stream is first opened).
    #[arg(
        long,
        global = true,
        env = "WALCAST_SNAPSHOT_TTL",
        default_value_t = 600,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub snapshot_ttl: u64,

    /// Most rows one `/v1/snapshot/data` request may ask for (`limit`).
    #[arg(
        long,
        global = true,
        env = "WALCAST_SNAPSHOT_PAGE_CAP",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub snapshot_page_cap: u64,

    /// Most bytes of rows one `/v1/snapshot/data` answer may hold; a page
    /// that would be larger is refused (HTTP 413) so memory stays bounded.
    #[arg(long, global = true, env = "WALCAST_SNAPSHOT_MAX_BYTES", default_value = "64MB", value_parser = parse_bytes)]
    pub snapshot_max_bytes: u64,

    /// Most WAL a durable stream slot may hold back (bytes; kB, MB, GB
    /// suffixes allowed). Past it the slot is reported on /healthz and
    /// /metrics, and dropped with --drop-lagging-streams. Default: no limit.
    #[arg(long, global = true, env = "WALCAST_MAX_SLOT_LAG", value_parser = parse_bytes)]
    pub max_slot_lag: Option<u64>,

    /// Drop a durable stream slot (with a logged reason) once it is past
    /// --max-slot-lag and has no consumer connected.
    #[arg(long, global = true, env = "WALCAST_DROP_LAGGING_STREAMS")]
    pub drop_lagging_streams: bool,

    /// Seconds between checks of the durable stream slots' lag.
    #[arg(
        long,
        global = true,
        env = "WALCAST_LAG_CHECK_INTERVAL",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub lag_check_interval: u64,

    /// Seconds of silence after which the proxy writes a heartbeat message
    /// (`pg_logical_emit_message(false, 'walcast.heartbeat', ...)`) so the
    /// slots of an idle database keep advancing; 0 turns heartbeats off.
    #[arg(
        long,
        global = true,
        env = "WALCAST_HEARTBEAT_INTERVAL",
        default_value_t = 30
    )]
    pub heartbeat_interval: u64,
}

/// WASM filters.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "WASM filters")]
pub struct FilterArgs {
    /// Largest filter module accepted (bytes; kB, MB suffixes allowed; 1kB to 64MB).
    #[arg(long, global = true, env = "WALCAST_FILTER_MAX_MODULE_SIZE",
          default_value_t = FilterLimits::default().max_module_bytes as u64, value_parser = parse_module_size)]
    pub filter_max_module_size: u64,

    /// Linear memory a filter instance may grow to (64kB to 4GB).
    #[arg(long, global = true, env = "WALCAST_FILTER_MEMORY",
          default_value_t = FilterLimits::default().max_memory_bytes as u64, value_parser = parse_filter_memory)]
    pub filter_memory: u64,

    /// Fuel (about one unit per WebAssembly instruction) a filter may use per
    /// event, plus --filter-fuel-per-byte for each byte of the event.
    #[arg(
        long,
        global = true,
        env = "WALCAST_FILTER_FUEL_PER_EVENT",
        default_value_t = FilterLimits::default().fuel_per_event,
        value_parser = clap::value_parser!(u64).range(1000..)
    )]
    pub filter_fuel_per_event: u64,

    /// Extra fuel per byte of the event.
    #[arg(
        long,
        global = true,
        env = "WALCAST_FILTER_FUEL_PER_BYTE",
        default_value_t = FilterLimits::default().fuel_per_byte
    )]
    pub filter_fuel_per_byte: u64,

    /// Milliseconds per second one subscription's filter may run; past it
    /// the subscription waits for the next second (and is closed with 1013
    /// if it falls out of the buffer). A filter slows only itself.
    #[arg(
        long,
        global = true,
        env = "WALCAST_FILTER_BUDGET_MS",
        default_value_t = FilterLimits::default().time_per_second.as_millis() as u64,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub filter_budget_ms: u64,

    /// Fuel one subscription's filter may use per second, a cap that does
    /// not depend on the machine's speed; past it the subscription waits as
    /// for --filter-budget-ms. 0: no cap (the default).
    #[arg(
        long,
        global = true,
        env = "WALCAST_FILTER_FUEL_PER_SECOND",
        default_value_t = FilterLimits::default().fuel_per_second
    )]
    pub filter_fuel_per_second: u64,

    /// Failures in a row after which a filter is detached (its client closed with 1008).
    #[arg(
        long,
        global = true,
        env = "WALCAST_FILTER_MAX_ERRORS",
        default_value_t = FilterLimits::default().max_errors,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub filter_max_errors: u32,

    /// Filter instances (subscriptions with a filter) at once.
    #[arg(
        long,
        global = true,
        env = "WALCAST_FILTER_MAX_INSTANCES",
        default_value_t = FilterLimits::default().max_instances,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub filter_max_instances: u32,

    /// Directory for compiled filters, so a restart does not compile them
    /// again (created private, mode 0700). Default: memory only.
    #[arg(long, global = true, env = "WALCAST_FILTER_CACHE_DIR")]
    pub filter_cache_dir: Option<std::path::PathBuf>,
}

/// Scale-out (NATS JetStream).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Scale-out (NATS JetStream)")]
pub struct NatsArgs {
    /// NATS server(s) of the scale-out mode (`nats://host:4222`, comma
    /// separated). With `relay`: where changes are published. With `serve`:
    /// the edge reads changes from the JetStream stream instead of its own
    /// slot (`docs/scale-out.md`).
    #[arg(long, global = true, env = "WALCAST_NATS_URL")]
    pub nats_url: Option<String>,

    /// Name of the JetStream stream the relay publishes to and edges read.
    #[arg(
        long,
        global = true,
        env = "WALCAST_NATS_STREAM",
        default_value = "WALCAST"
    )]
    pub nats_stream: String,

    /// Bytes the relay's JetStream stream keeps (kB, MB, GB suffixes; the
    /// oldest messages go first). Applies when the relay creates the stream.
    #[arg(long, global = true, env = "WALCAST_NATS_MAX_BYTES", default_value = "1GB", value_parser = parse_bytes)]
    pub nats_max_bytes: u64,

    /// Seconds the relay's JetStream stream keeps a message (0: no age
    /// limit). Applies when the relay creates the stream.
    #[arg(
        long,
        global = true,
        env = "WALCAST_NATS_MAX_AGE",
        default_value_t = 86400
    )]
    pub nats_max_age: u64,

    /// Seconds JetStream remembers message ids to drop a change the relay
    /// publishes again after a restart. Applies when the relay creates the stream.
    #[arg(
        long,
        global = true,
        env = "WALCAST_NATS_DUPLICATE_WINDOW",
        default_value_t = 120,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub nats_duplicate_window: u64,
}

impl ServeArgs {
    /// How the proxy judges a client alive.
    pub fn liveness(&self) -> Liveness {
        Liveness {
            ping_interval: Duration::from_secs(self.live.ping_interval),
            stall_timeout: Duration::from_secs(self.live.stall_timeout),
            handshake_timeout: Duration::from_secs(self.connections.handshake_timeout),
        }
    }

    /// The durable streams' settings.
    pub fn streams_config(&self, tables: Option<Vec<TablePattern>>) -> StreamsConfig {
        let d = &self.durable;
        StreamsConfig {
            snapshot_ttl: Duration::from_secs(d.snapshot_ttl),
            page_cap: d.snapshot_page_cap,
            page_max_bytes: d.snapshot_max_bytes.max(1024),
            max_lag: d.max_slot_lag,
            drop_lagging: d.drop_lagging_streams,
            lag_check_interval: Duration::from_secs(d.lag_check_interval),
            heartbeat: (d.heartbeat_interval > 0)
                .then(|| Duration::from_secs(d.heartbeat_interval)),
            status_interval: Duration::from_secs(self.database.status_interval),
            failover_slots: self.database.failover_slots,
            live_slot: self.database.slot.clone(),
            tables: self.database.tables.clone().zip(tables),
        }
    }
}

/// A setting the proxy cannot start with: which, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no database: pass --database-url or set DATABASE_URL (postgres://user@host/db)")]
    NoDatabase,
    #[error("invalid --database-url: {0}")]
    DatabaseUrl(#[from] crate::database::UrlError),
    #[error("invalid --primary-url: {0}")]
    PrimaryUrl(crate::database::UrlError),
    #[error("invalid --slot: {0}")]
    Slot(#[from] crate::replication::SlotNameError),
    #[error("invalid --tables: {0}")]
    Tables(#[from] walcast_format::PatternError),
    /// The JWT keys (`--jwt-secret`, `--jwt-public-key`, `--jwks-file`).
    #[error(transparent)]
    Keys(#[from] jwt::KeyError),
    #[error(
        "the relay publishes to NATS: pass --nats-url or set WALCAST_NATS_URL (nats://host:4222)"
    )]
    NoNatsUrl,
    #[error("--recreate-lost-slot is not for the relay: the clients of its edges could not be told which changes are missing (docs/operations.md#failover)")]
    RelayRecreate,
}

impl DatabaseArgs {
    /// The database to stream.
    pub fn database(&self) -> Result<Database, ConfigError> {
        let url = self
            .database_url
            .as_deref()
            .ok_or(ConfigError::NoDatabase)?;
        let database = Database::parse(url)?;
        Ok(match self.primary_url.as_deref() {
            Some(primary) => {
                database.with_primary(Database::parse(primary).map_err(ConfigError::PrimaryUrl)?)
            }
            None => database,
        })
    }

    /// `--tables` read, `None` for all tables; the slot name checked too.
    pub fn tables(&self) -> Result<Option<Vec<TablePattern>>, ConfigError> {
        validate_slot_name(&self.slot)?;
        Ok(self
            .tables
            .as_deref()
            .map(TablePattern::parse_list)
            .transpose()?)
    }

    /// What the reader of the proxy's slot needs.
    pub fn reader_config(&self, database: &Database) -> Result<ReaderConfig, ConfigError> {
        self.tables()?;
        Ok(ReaderConfig {
            database: database.clone(),
            slot: self.slot.clone(),
            tables: self.tables.clone(),
            status_interval: Duration::from_secs(self.status_interval),
            failover_slots: self.failover_slots,
            recreate_lost_slot: self.recreate_lost_slot,
        })
    }
}

impl LiveArgs {
    /// The change log's size in bytes (at least 1 MiB).
    pub fn log_bytes(&self) -> usize {
        usize::try_from(self.buffer_size)
            .unwrap_or(usize::MAX)
            .max(1 << 20)
    }
}

impl SnapshotArgs {
    /// How live subscriptions' snapshots are read.
    pub fn settings(&self) -> backfill::Settings {
        backfill::Settings {
            chunk_rows: usize::try_from(self.snapshot_chunk_rows).unwrap_or(usize::MAX),
            max_running: usize::try_from(self.snapshot_max_running).unwrap_or(usize::MAX),
            rows_per_second: self.snapshot_rows_per_second,
        }
    }
}

impl ConnectionArgs {
    /// How long a client may take over each step of a request.
    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            header: Duration::from_secs(self.header_timeout),
            body: Duration::from_secs(self.body_timeout),
            handshake: Duration::from_secs(self.handshake_timeout),
        }
    }
}

impl AuthArgs {
    /// The credentials: static tokens and the keys of user JWTs (empty
    /// values, as an unset variable gives, are none).
    pub fn auth(&self) -> Result<Auth, ConfigError> {
        let nonempty =
            |v: &[String]| -> Vec<String> { v.iter().filter(|t| !t.is_empty()).cloned().collect() };
        let verifier = jwt::Verifier::new(&jwt::KeySources {
            secret: self.jwt_secret.clone().filter(|s| !s.is_empty()),
            public_key: self.jwt_public_key.clone(),
            jwks: self.jwks_file.clone(),
            audience: nonempty(&self.jwt_audience),
            leeway: self.jwt_leeway,
        })?;
        Ok(Auth::new(
            nonempty(&self.token),
            nonempty(&self.filter_upload_token),
            verifier,
        ))
    }
}

impl FilterArgs {
    /// What one filter may use.
    pub fn limits(&self) -> FilterLimits {
        FilterLimits {
            max_module_bytes: usize::try_from(self.filter_max_module_size).unwrap_or(usize::MAX),
            max_memory_bytes: usize::try_from(self.filter_memory).unwrap_or(usize::MAX),
            fuel_per_event: self.filter_fuel_per_event,
            fuel_per_byte: self.filter_fuel_per_byte,
            time_per_second: Duration::from_millis(self.filter_budget_ms),
            fuel_per_second: self.filter_fuel_per_second,
            max_errors: self.filter_max_errors,
            max_instances: self.filter_max_instances,
            ..FilterLimits::default()
        }
    }
}

impl NatsArgs {
    /// Where the JetStream stream is and how a relay creates it.
    pub fn settings(&self, url: &str) -> NatsSettings {
        NatsSettings {
            url: url.to_owned(),
            stream: self.nats_stream.clone(),
            max_bytes: self.nats_max_bytes,
            max_age: Duration::from_secs(self.nats_max_age),
            duplicate_window: Duration::from_secs(self.nats_duplicate_window),
        }
    }
}

/// Parses a byte count: `1048576`, `512kB`, `64MB`, `2GB` (powers of 1024).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a byte count (e.g. 1048576, 512kB, 64MB, 2GB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1 << 10,
        "mb" | "m" => 1 << 20,
        "gb" | "g" => 1 << 30,
        "tb" | "t" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use kB, MB, GB or TB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// `--buffer-size`: at least 1 MiB (a smaller log would hold only a few
/// changes, and every client would fall behind at once).
fn buffer_size(s: &str) -> Result<u64, String> {
    bytes_within(s, 1 << 20, u64::MAX)
}

/// A byte count (as [`parse_bytes`] reads it) between `min` and `max`.
fn bytes_within(s: &str, min: u64, max: u64) -> Result<u64, String> {
    let n = parse_bytes(s)?;
    if n < min || n > max {
        return Err(format!("{s:?} is outside {min} to {max} bytes"));
    }
    Ok(n)
}

fn parse_module_size(s: &str) -> Result<u64, String> {
    bytes_within(s, 1 << 10, 64 << 20)
}

fn parse_filter_memory(s: &str) -> Result<u64, String> {
    bytes_within(s, 64 << 10, 4 << 30)
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("1048576"), Ok(1_048_576));
        assert_eq!(parse_bytes("512kB"), Ok(512 * 1024));
        assert_eq!(parse_bytes("64MB"), Ok(64 << 20));
        assert_eq!(parse_bytes("2 GB"), Ok(2 << 30));
        assert!(parse_bytes("MB").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
        assert!(parse_bytes("99999999999TB").is_err());
    }

    #[test]
    fn values_out_of_range_are_refused_not_clamped() {
        use super::Cli;
        use clap::Parser;
        let parse = |args: &[&str]| {
            Cli::try_parse_from(["walcast-proxy"].iter().chain(args)).map(|c| c.serve)
        };
        for bad in [
            &["--ping-interval", "0"][..],
            &["--handshake-timeout", "0"],
            &["--max-handshakes", "0"],
            &["--filter-max-errors", "0"],
            &["--filter-fuel-per-event", "999"],
            &["--filter-memory", "1kB"],
            &["--filter-max-module-size", "1GB"],
            &["--snapshot-chunk-rows", "0"],
            &["--buffer-size", "512kB"],
        ] {
            let e = match parse(bad) {
                Ok(_) => panic!("{bad:?} was accepted"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(bad[0]), "{bad:?}: {e}");
        }
        // The defaults are the filter limits' own.
        let d = parse(&[]).expect("defaults");
        let f = crate::filter::FilterLimits::default();
        assert_eq!(d.filters.filter_memory, f.max_memory_bytes as u64);
        assert_eq!(d.filters.filter_max_module_size, f.max_module_bytes as u64);
        assert_eq!(d.filters.filter_fuel_per_second, f.fuel_per_second);
        assert_eq!(
            std::time::Duration::from_millis(d.filters.filter_budget_ms),
            f.time_per_second
        );
        assert_eq!(d.filters.filter_max_instances, f.max_instances);
        assert_eq!(d.filters.filter_fuel_per_event, f.fuel_per_event);
        let ok = parse(&[
            "--filter-memory",
            "64MB",
            "--ping-interval",
            "1",
            "--buffer-size",
            "1MB",
        ])
        .expect("in range");
        assert_eq!(
            (ok.filters.filter_memory, ok.live.ping_interval),
            (64 << 20, 1)
        );
        assert_eq!(ok.live.buffer_size, 1 << 20, "1MB is 2^20 bytes");
    }
}
