//! `walcast-proxy`: serves websocket change streams (see `--help`).

use clap::Parser;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use walcast_format::TablePattern;
use walcast_proxy::auth::{jwt, Auth};
use walcast_proxy::catalog::Catalog;
use walcast_proxy::config::{Cli, Command};
use walcast_proxy::descriptors;
use walcast_proxy::durable::{self, Streams, StreamsConfig};
use walcast_proxy::filter::{FilterLimits, Filters};
use walcast_proxy::health::Health;
use walcast_proxy::http::listener::{Connections, Limits};
use walcast_proxy::http::{self, AppState, Timeouts};
use walcast_proxy::live::hub::Hub;
use walcast_proxy::liveness::Liveness;
use walcast_proxy::metrics::Metrics;
use walcast_proxy::nats::{self, relay::RelayConfig};
use walcast_proxy::replication::reader::{self, ReaderConfig};
use walcast_proxy::replication::validate_slot_name;
use walcast_proxy::sql::SqlPool;

/// One malloc arena keeps the change log's memory bounded: with glibc's
/// per-thread arenas, changes allocated by the reader and freed by other
/// threads left the process 50% above the log's size (docs/benchmarks.md).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn one_malloc_arena() {
    // SAFETY: mallopt only changes the allocator's settings; it runs before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn one_malloc_arena() {}

fn main() {
    one_malloc_arena();
    let _ = dotenvy::dotenv();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let runtime =
        || tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the runtime: {e}"));
    let result = match cli.command {
        None | Some(Command::Serve) => runtime().and_then(|rt| rt.block_on(serve(cli.serve))),
        Some(Command::Relay) => runtime().and_then(|rt| rt.block_on(relay(cli.serve))),
        Some(Command::Doctor) => runtime().and_then(|rt| rt.block_on(doctor(cli.serve))),
    };
    if let Err(e) = result {
        eprintln!("walcast-proxy: {e}");
        std::process::exit(2);
    }
}

fn database_config(
    args: &walcast_proxy::config::ServeArgs,
) -> Result<walcast_proxy::database::Database, String> {
    let url = args
        .database_url
        .clone()
        .ok_or("no database: pass --database-url or set DATABASE_URL (postgres://user@host/db)")?;
    walcast_proxy::database::Database::parse(&url)
        .map_err(|e| format!("invalid --database-url: {e}"))
}

/// Where the JetStream stream is and how a relay creates it.
fn nats_settings(args: &walcast_proxy::config::ServeArgs, url: &str) -> nats::NatsSettings {
    nats::NatsSettings {
        url: url.to_owned(),
        stream: args.nats_stream.clone(),
        max_bytes: args.nats_max_bytes,
        max_age: Duration::from_secs(args.nats_max_age),
        duplicate_window: Duration::from_secs(args.nats_duplicate_window),
    }
}

fn reader_config(
    args: &walcast_proxy::config::ServeArgs,
    database: &walcast_proxy::database::Database,
) -> Result<ReaderConfig, String> {
    validate_slot_name(&args.slot).map_err(|e| format!("invalid --slot: {e}"))?;
    if let Some(t) = &args.tables {
        TablePattern::parse_list(t).map_err(|e| format!("invalid --tables: {e}"))?;
    }
    Ok(ReaderConfig {
        database: database.clone(),
        slot: args.slot.clone(),
        tables: args.tables.clone(),
        status_interval: Duration::from_secs(args.status_interval),
    })
}

/// `walcast-proxy relay`: the slot to JetStream, `/healthz` and `/metrics`.
async fn relay(args: walcast_proxy::config::ServeArgs) -> Result<(), String> {
    let database = database_config(&args)?;
    let url = args.nats_url.clone().ok_or(
        "the relay publishes to NATS: pass --nats-url or set WALCAST_NATS_URL (nats://host:4222)",
    )?;
    let cfg = RelayConfig {
        reader: reader_config(&args, &database)?,
        nats: nats_settings(&args, &url),
    };
    let js = nats::connect(&url, "walcast-relay").await?;
    let db = nats::relay::prepare(&cfg, &js).await?;
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::new(&args.slot));
    let listener = walcast_proxy::http::listener::bind(args.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(slot = %args.slot, stream = %cfg.nats.stream, "relay listening on http://{local}/");
    println!("walcast-proxy relay listening on http://{local}/");
    let shutdown = CancellationToken::new();
    let ops = http::ops::relay_routes(health.clone(), metrics.clone());
    let stop_ops = shutdown.clone();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, ops)
            .with_graceful_shutdown(stop_ops.cancelled_owned())
            .await;
    });
    let mut task = tokio::spawn(nats::relay::run(
        cfg,
        js,
        db,
        metrics,
        health,
        shutdown.clone(),
    ));
    let result = tokio::select! {
        _ = wait_for_signal() => {
            tracing::info!("shutting down: confirming what JetStream acknowledged");
            shutdown.cancel();
            task.await
        }
        r = &mut task => r,
    };
    shutdown.cancel();
    let _ = server.await;
    result.map_err(|e| format!("the relay task failed: {e}"))?
}

async fn doctor(args: walcast_proxy::config::ServeArgs) -> Result<(), String> {
    let database = database_config(&args)?;
    let mut checks = walcast_proxy::doctor::run(&database).await;
    checks.push(walcast_proxy::doctor::descriptors_check(
        args.max_connections,
        args.max_clients,
    ));
    let (report, ok) = walcast_proxy::doctor::render(&checks);
    print!("{report}");
    if ok {
        Ok(())
    } else {
        std::process::exit(1)
    }
}

/// The descriptor limit (raised to the hard limit) and the connection caps.
struct FrontDoor {
    limit: descriptors::Limit,
    limits: Limits,
    /// Why the limit cannot serve --max-clients, if so.
    warning: Option<String>,
}

fn front_door(args: &walcast_proxy::config::ServeArgs) -> FrontDoor {
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
    let max_connections = match args.max_connections {
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
    let warning = descriptors::too_low(&limit, max_connections, args.max_clients);
    if let Some(w) = &warning {
        tracing::warn!("{w}");
    }
    FrontDoor {
        limit,
        limits: Limits {
            max_connections,
            max_per_address: args.max_connections_per_address,
            max_handshakes: args.max_handshakes,
            upgrades_per_address: args.max_upgrades_per_address,
        },
        warning,
    }
}

/// The credentials: static tokens and the keys of user JWTs.
fn auth(args: &walcast_proxy::config::ServeArgs) -> Result<Auth, String> {
    let nonempty =
        |v: &[String]| -> Vec<String> { v.iter().filter(|t| !t.is_empty()).cloned().collect() };
    let verifier = jwt::Verifier::new(&jwt::KeySources {
        secret: args.jwt_secret.clone().filter(|s| !s.is_empty()),
        public_key: args.jwt_public_key.clone(),
        jwks: args.jwks_file.clone(),
        audience: nonempty(&args.jwt_audience),
        leeway: args.jwt_leeway,
    })?;
    Ok(Auth::new(
        nonempty(&args.token),
        nonempty(&args.filter_upload_token),
        verifier,
    ))
}

async fn serve(args: walcast_proxy::config::ServeArgs) -> Result<(), String> {
    let database = database_config(&args)?;
    validate_slot_name(&args.slot).map_err(|e| format!("invalid --slot: {e}"))?;
    let tables = match &args.tables {
        Some(t) => Some(TablePattern::parse_list(t).map_err(|e| format!("invalid --tables: {e}"))?),
        None => None,
    };
    let auth = Arc::new(auth(&args)?);
    let metrics = Arc::new(Metrics::default());
    let front = front_door(&args);
    metrics
        .connections
        .descriptor_limit
        .store(front.limit.soft, Ordering::Relaxed);
    // An edge reads the relay's JetStream stream instead of a slot; NATS
    // out of reach at start is an error.
    let nats = match &args.nats_url {
        Some(url) => Some(nats::connect(url, "walcast-edge").await?),
        None => None,
    };
    let health = Arc::new(match nats {
        Some(_) => Health::edge(&args.nats_stream),
        None => Health::new(&args.slot),
    });
    if args.queue_bound.is_some() {
        tracing::warn!("--queue-bound (WALCAST_QUEUE_BOUND) is deprecated and ignored: clients read from the shared change log, bounded by --buffer-size");
    }
    let hub = Hub::new(
        usize::try_from(args.buffer_size)
            .unwrap_or(usize::MAX)
            .max(1 << 20),
    );
    hub.set_match_budget(std::time::Duration::from_millis(args.match_budget_ms));
    // Every task of the server: cancelled together at shutdown, then
    // waited for.
    let shutdown = CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();

    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let tls = Arc::new(walcast_proxy::http::tls::Tls::load(
                cert.clone(),
                key.clone(),
            )?);
            let stop = shutdown.clone();
            let reload = walcast_proxy::http::tls::reload_on_sighup(tls.clone());
            tasks.spawn(async move {
                tokio::select! {
                    () = reload => {}
                    () = stop.cancelled() => {}
                }
            });
            Some(tls)
        }
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let listener = walcast_proxy::http::listener::bind(args.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        "walcast-proxy listening on {scheme}://{local}/ (slot {})",
        args.slot
    );
    println!("walcast-proxy listening on {scheme}://{local}/");

    match nats.clone() {
        Some(js) => tasks.spawn(nats::edge::run(
            args.nats_stream.clone(),
            js,
            hub.publisher(),
            metrics.clone(),
            health.clone(),
            shutdown.clone(),
        )),
        None => tasks.spawn(reader::run(
            reader_config(&args, &database)?,
            hub.publisher(),
            metrics.clone(),
            health.clone(),
            shutdown.clone(),
        )),
    };
    let pool = SqlPool::new(database.clone(), 8);
    let streams = Streams::new(
        StreamsConfig {
            snapshot_ttl: Duration::from_secs(args.snapshot_ttl),
            page_cap: args.snapshot_page_cap,
            page_max_bytes: args.snapshot_max_bytes.max(1024),
            max_lag: args.max_slot_lag,
            drop_lagging: args.drop_lagging_streams,
            lag_check_interval: Duration::from_secs(args.lag_check_interval),
            heartbeat: (args.heartbeat_interval > 0)
                .then(|| Duration::from_secs(args.heartbeat_interval)),
            status_interval: Duration::from_secs(args.status_interval),
            live_slot: args.slot.clone(),
            tables: args.tables.clone().zip(tables.clone()),
        },
        database.clone(),
        pool.clone(),
        metrics.clone(),
    );
    // On an edge, durable streams are consumers of the JetStream stream.
    let streams = Arc::new(match nats {
        Some(js) => {
            streams.on_jetstream(durable::jet::JetStreams::new(js, args.nats_stream.clone()))
        }
        None => streams,
    });
    tasks.spawn(durable::guard::run_lag_guard(
        streams.clone(),
        shutdown.clone(),
    ));
    if let Some(interval) = streams.cfg.heartbeat {
        tasks.spawn(durable::guard::run_heartbeat(
            streams.clone(),
            metrics.clone(),
            interval,
            shutdown.clone(),
        ));
    }
    let filters = Arc::new(
        Filters::new(
            FilterLimits {
                max_module_bytes: args.filter_max_module_size as usize,
                max_memory_bytes: args.filter_memory as usize,
                fuel_per_event: args.filter_fuel_per_event,
                fuel_per_byte: args.filter_fuel_per_byte,
                time_per_second: std::time::Duration::from_millis(args.filter_budget_ms),
                fuel_per_second: args.filter_fuel_per_second,
                max_errors: args.filter_max_errors,
                max_instances: args.filter_max_instances,
                ..FilterLimits::default()
            },
            args.filter_cache_dir.clone(),
            metrics.clone(),
        )
        .map_err(|e| format!("WASM filters: {e}"))?,
    );
    let state = Arc::new(AppState {
        hub,
        metrics: metrics.clone(),
        health,
        catalog: Catalog::new(pool),
        streams,
        filters,
        origins: walcast_proxy::http::origin::Origins::new(&args.allowed_origins, auth.required()),
        auth,
        clients: Arc::new(tokio::sync::Semaphore::new(
            args.max_clients.min(tokio::sync::Semaphore::MAX_PERMITS),
        )),
        tasks: tasks.clone(),
        liveness: Liveness {
            ping_interval: Duration::from_secs(args.ping_interval),
            stall_timeout: Duration::from_secs(args.stall_timeout),
            handshake_timeout: Duration::from_secs(args.handshake_timeout),
        },
        tables: tables.map(Arc::new),
        shutdown: shutdown.clone(),
        connections: Connections::new(front.limits, metrics.clone()),
        timeouts: Timeouts {
            header: Duration::from_secs(args.header_timeout),
            body: Duration::from_secs(args.body_timeout),
            handshake: Duration::from_secs(args.handshake_timeout),
        },
        descriptor_warning: front.warning,
        view_max_rows: usize::try_from(args.view_max_rows).unwrap_or(usize::MAX),
        backfills: Arc::new(walcast_proxy::backfill::driver::Shared::new(
            walcast_proxy::backfill::Settings {
                chunk_rows: args.snapshot_chunk_rows as usize,
                max_running: args.snapshot_max_running as usize,
                rows_per_second: args.snapshot_rows_per_second,
            },
        )),
    });
    let server = tokio::spawn(http::serve(listener, state, shutdown.clone(), tls.clone()));

    wait_for_signal().await;
    tracing::info!("shutting down: closing clients (1001) and the replication stream");
    shutdown.cancel();
    let _ = server.await;
    // Every connection answers its request in progress, every websocket
    // closes with 1001, the reader confirms its last position; a client that
    // takes no close frame is cut off.
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(10), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = tasks.len(),
            "tasks still running 10 s after shutdown began; stopping without them"
        );
    }
    Ok(())
}

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
