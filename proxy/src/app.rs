//! The commands of `walcast-proxy`: `serve` (the default), `relay` and
//! `doctor`, each built from the settings of [`crate::config`]. Every task a
//! command starts is cancelled together at shutdown and then waited for.

use crate::catalog::Catalog;
use crate::config::{ConfigError, ServeArgs};
use crate::descriptors;
use crate::durable::{self, Streams};
use crate::filter::Filters;
use crate::health::Health;
use crate::http::listener::{Connections, Limits};
use crate::http::tls::Tls;
use crate::http::{self, AppState};
use crate::live::hub::Hub;
use crate::metrics::Metrics;
use crate::nats::{self, relay::RelayConfig};
use crate::replication::reader;
use crate::sql::SqlPool;
use async_nats::jetstream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long tasks may take to finish after shutdown began.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why a command could not start, or why the relay stopped.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::http::tls::CertError),
    #[error(transparent)]
    Nats(#[from] nats::ConnectError),
    #[error(transparent)]
    NatsStream(#[from] nats::relay::StreamSetupError),
    #[error("WASM filters: {0}")]
    Filters(#[from] crate::filter::HostError),
    /// The relay stopped for good.
    #[error(transparent)]
    Relay(#[from] crate::replication::ReplicationError),
    #[error("the relay task failed: {0}")]
    RelayTask(#[from] tokio::task::JoinError),
}

/// The listening socket for `--listen`.
fn listen(
    addr: std::net::SocketAddr,
) -> Result<(tokio::net::TcpListener, std::net::SocketAddr), StartError> {
    let bound = |source| StartError::Listen { addr, source };
    let listener = http::listener::bind(addr).map_err(bound)?;
    let local = listener.local_addr().map_err(bound)?;
    Ok((listener, local))
}

/// `walcast-proxy serve`: websocket streams from the proxy's slot, or, with
/// `--nats-url`, from a relay's JetStream stream (an edge).
pub async fn serve(args: ServeArgs) -> Result<(), StartError> {
    let database = args.database.database()?;
    let tables = args.database.tables()?;
    let auth = Arc::new(args.auth.auth()?);
    let metrics = Arc::new(Metrics::default());
    let front = front_door(&args);
    metrics
        .connections
        .descriptor_limit
        .store(front.limit.soft, Ordering::Relaxed);
    // An edge reads the relay's JetStream stream instead of a slot; NATS
    // out of reach at start is an error.
    let nats = match &args.nats.nats_url {
        Some(url) => Some(nats::connect(url, "walcast-edge").await?),
        None => None,
    };
    let health = Arc::new(match nats {
        Some(_) => Health::edge(&args.nats.nats_stream),
        None => Health::new(&args.database.slot),
    });
    if args.live.queue_bound.is_some() {
        tracing::warn!("--queue-bound (WALCAST_QUEUE_BOUND) is deprecated and ignored: clients read from the shared change log, bounded by --buffer-size");
    }
    let hub = Hub::new(args.live.log_bytes());
    hub.set_match_budget(Duration::from_millis(args.live.match_budget_ms));
    let app = App::new();
    let (tasks, shutdown) = (&app.tasks, &app.shutdown);
    let tls = tls(&args, tasks, shutdown)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let (listener, local) = listen(args.listen.listen)?;
    tracing::info!(
        "walcast-proxy listening on {scheme}://{local}/ (slot {})",
        args.database.slot
    );
    println!("walcast-proxy listening on {scheme}://{local}/");

    let source = Source {
        hub: &hub,
        metrics: &metrics,
        health: &health,
        tasks,
        shutdown,
    };
    match nats.clone() {
        Some(js) => source.edge(&args, js),
        None => source.slot(&args, &database)?,
    };
    let pool = SqlPool::new(database.clone(), 8);
    let streams = durable_streams(&args, database, &pool, &metrics, nats, tables.clone());
    source.guard(&streams);
    let filters = Arc::new(Filters::new(
        args.filters.limits(),
        args.filters.filter_cache_dir.clone(),
        metrics.clone(),
    )?);
    let state = Arc::new(AppState {
        hub,
        metrics: metrics.clone(),
        health,
        catalog: Catalog::new(pool),
        streams,
        filters,
        origins: http::origin::Origins::new(&args.listen.allowed_origins, auth.required()),
        auth,
        clients: Arc::new(tokio::sync::Semaphore::new(
            args.live
                .max_clients
                .min(tokio::sync::Semaphore::MAX_PERMITS),
        )),
        tasks: tasks.clone(),
        liveness: args.liveness(),
        tables: tables.map(Arc::new),
        shutdown: shutdown.clone(),
        connections: Connections::new(front.limits, metrics),
        timeouts: args.connections.timeouts(),
        descriptor_warning: front.warning,
        view_max_rows: usize::try_from(args.live.view_max_rows).unwrap_or(usize::MAX),
        backfills: Arc::new(crate::backfill::driver::Shared::new(
            args.snapshots.settings(),
        )),
    });
    let server = tokio::spawn(http::serve(listener, state, shutdown.clone(), tls));
    wait_for_signal().await;
    tracing::info!("shutting down: closing clients (1001) and the replication stream");
    shutdown.cancel();
    let _ = server.await;
    app.finish().await;
    Ok(())
}

/// What the tasks of a command share: one tracker, one shutdown. Cancelled
/// together, then waited for.
struct App {
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl App {
    fn new() -> App {
        App {
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        }
    }

    /// Waits for every task: each connection answers its request in
    /// progress, every websocket closes with 1001, the reader confirms its
    /// last position; a client that takes no close frame is cut off.
    async fn finish(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.tasks.len(),
                "tasks still running {SHUTDOWN_GRACE:?} after shutdown began; stopping without them"
            );
        }
    }
}

/// The durable streams: slots of this database, or, on an edge, consumers
/// of the relay's JetStream stream.
fn durable_streams(
    args: &ServeArgs,
    database: crate::database::Database,
    pool: &SqlPool,
    metrics: &Arc<Metrics>,
    nats: Option<jetstream::Context>,
    tables: Option<Vec<walcast_format::TablePattern>>,
) -> Arc<Streams> {
    let streams = Streams::new(
        args.streams_config(tables),
        database,
        pool.clone(),
        metrics.clone(),
    );
    Arc::new(match nats {
        Some(js) => streams.on_jetstream(durable::jet::JetStreams::new(
            js,
            args.nats.nats_stream.clone(),
        )),
        None => streams,
    })
}

/// The tasks a server starts beside its front door, and what they share.
struct Source<'a> {
    hub: &'a Hub,
    metrics: &'a Arc<Metrics>,
    health: &'a Arc<Health>,
    tasks: &'a TaskTracker,
    shutdown: &'a CancellationToken,
}

impl Source<'_> {
    /// The proxy's own slot.
    fn slot(
        &self,
        args: &ServeArgs,
        database: &crate::database::Database,
    ) -> Result<(), ConfigError> {
        self.tasks.spawn(reader::run(
            args.database.reader_config(database)?,
            self.hub.publisher(),
            self.metrics.clone(),
            self.health.clone(),
            self.shutdown.clone(),
        ));
        Ok(())
    }

    /// A relay's JetStream stream (an edge).
    fn edge(&self, args: &ServeArgs, js: jetstream::Context) {
        self.tasks.spawn(nats::edge::run(
            args.nats.nats_stream.clone(),
            js,
            self.hub.publisher(),
            self.metrics.clone(),
            self.health.clone(),
            self.shutdown.clone(),
        ));
    }

    /// The lag guard of the durable streams, and their heartbeat if asked for.
    fn guard(&self, streams: &Arc<Streams>) {
        self.tasks.spawn(durable::guard::run_lag_guard(
            streams.clone(),
            self.shutdown.clone(),
        ));
        if let Some(interval) = streams.cfg.heartbeat {
            self.tasks.spawn(durable::guard::run_heartbeat(
                streams.clone(),
                self.metrics.clone(),
                interval,
                self.shutdown.clone(),
            ));
        }
    }
}

/// TLS from `--tls-cert` and `--tls-key`, reloaded on SIGHUP.
fn tls(
    args: &ServeArgs,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<Option<Arc<Tls>>, StartError> {
    let (Some(cert), Some(key)) = (&args.listen.tls_cert, &args.listen.tls_key) else {
        return Ok(None);
    };
    let tls = Arc::new(Tls::load(cert.clone(), key.clone())?);
    let stop = shutdown.clone();
    let reload = http::tls::reload_on_sighup(tls.clone());
    tasks.spawn(async move {
        tokio::select! {
            () = reload => {}
            () = stop.cancelled() => {}
        }
    });
    Ok(Some(tls))
}

/// The descriptor limit (raised to the hard limit) and the connection caps.
struct FrontDoor {
    limit: descriptors::Limit,
    limits: Limits,
    /// Why the limit cannot serve --max-clients, if so.
    warning: Option<String>,
}

fn front_door(args: &ServeArgs) -> FrontDoor {
    let limit = match descriptors::raise() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the descriptor limit; assuming 1024");
            descriptors::Limit {
                soft: 1024,
                hard: 1024,
                raised_from: None,
            }
        }
    };
    let room = descriptors::connections_for(limit.soft);
    match limit.raised_from {
        Some(from) => tracing::info!(
            soft = limit.soft,
            hard = limit.hard,
            "raised the descriptor limit from {from} to the hard limit"
        ),
        None => tracing::info!(soft = limit.soft, hard = limit.hard, "descriptor limit"),
    }
    let c = &args.connections;
    let max_connections = match c.max_connections {
        Some(m) => {
            if m > room {
                tracing::warn!(
                    "--max-connections {m} is more than the descriptor limit ({}) leaves room for ({room}): \
                     when descriptors run out, new connections wait",
                    limit.soft
                );
            }
            m.max(1)
        }
        None => room.max(1),
    };
    let warning = descriptors::too_low(&limit, max_connections, args.live.max_clients);
    if let Some(w) = &warning {
        tracing::warn!("{w}");
    }
    FrontDoor {
        limit,
        limits: Limits {
            max_connections,
            max_per_address: c.max_connections_per_address,
            max_handshakes: c.max_handshakes,
            upgrades_per_address: c.max_upgrades_per_address,
        },
        warning,
    }
}

/// `walcast-proxy relay`: the slot to JetStream, `/healthz` and `/metrics`.
pub async fn relay(args: ServeArgs) -> Result<(), StartError> {
    let database = args.database.database()?;
    let url = args.nats.nats_url.clone().ok_or(ConfigError::NoNatsUrl)?;
    if args.database.recreate_lost_slot {
        return Err(ConfigError::RelayRecreate.into());
    }
    let cfg = RelayConfig {
        reader: args.database.reader_config(&database)?,
        nats: args.nats.settings(&url),
    };
    let js = nats::connect(&url, "walcast-relay").await?;
    let prepared = nats::relay::prepare(&cfg, &js).await?;
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::new(&args.database.slot));
    let (listener, local) = listen(args.listen.listen)?;
    tracing::info!(slot = %args.database.slot, stream = %cfg.nats.stream, "relay listening on http://{local}/");
    println!("walcast-proxy relay listening on http://{local}/");
    let app = App::new();
    let ops = http::ops::relay_routes(health.clone(), metrics.clone());
    let stop_ops = app.shutdown.clone();
    app.tasks.spawn(async move {
        let _ = axum::serve(listener, ops)
            .with_graceful_shutdown(stop_ops.cancelled_owned())
            .await;
    });
    let mut task = app.tasks.spawn(nats::relay::run(
        cfg,
        js,
        prepared,
        metrics,
        health,
        app.shutdown.clone(),
    ));
    let result = tokio::select! {
        _ = wait_for_signal() => {
            tracing::info!("shutting down: confirming what JetStream acknowledged");
            app.shutdown.cancel();
            (&mut task).await
        }
        r = &mut task => r,
    };
    app.finish().await;
    Ok(result??)
}

/// `walcast-proxy doctor`: the report, and whether nothing must be fixed.
pub async fn doctor(args: ServeArgs) -> Result<(String, bool), StartError> {
    let database = args.database.database()?;
    let mut checks = crate::doctor::run(&database).await;
    checks.push(crate::doctor::descriptors_check(
        args.connections.max_connections,
        args.live.max_clients,
    ));
    Ok(crate::doctor::render(&checks))
}

/// Until SIGINT or SIGTERM.
async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
