//! Counters and gauges, rendered as Prometheus text on `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// One more on a gauge until dropped: also when a task panics or is
/// aborted, so the gauge never keeps a count of what is gone.
pub struct Gauge<'a>(&'a AtomicI64);

impl Gauge<'_> {
    pub fn up(g: &AtomicI64) -> Gauge<'_> {
        g.fetch_add(1, Ordering::Relaxed);
        Gauge(g)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// All of the proxy's metrics.
#[derive(Default, Debug)]
pub struct Metrics {
    pub changes_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub inserts: AtomicU64,
    pub updates: AtomicU64,
    pub deletes: AtomicU64,
    pub truncates: AtomicU64,
    pub clients: AtomicI64,
    /// Clients closed because the log dropped changes they had not read.
    pub closed_fell_behind: AtomicU64,
    /// Clients closed because they took no write for the stall timeout.
    pub closed_stalled: AtomicU64,
    /// Clients closed because they did not answer a ping.
    pub closed_ping_timeout: AtomicU64,
    pub closed_token_expired: AtomicU64,
    /// Clients closed because the source lost changes they would have had.
    pub closed_stream_gap: AtomicU64,
    /// Clients closed because their view would pass `--view-max-rows`.
    pub closed_view_full: AtomicU64,
    /// Rows held by live clients' views (`live/view.rs`).
    pub view_rows: std::sync::Arc<AtomicI64>,
    pub unparseable_messages: AtomicU64,
    pub replication_reconnects: AtomicU64,
    /// The proxy's slot found lost (gone from the server, or recorded in
    /// `walcast.streams` and not there).
    pub slots_lost: AtomicU64,
    /// New slots made in place of lost ones (`--recreate-lost-slot`).
    pub slots_recreated: AtomicU64,
    pub lag_bytes: AtomicU64,
    pub confirmed_lsn: AtomicU64,
    /// Durable stream consumers connected (`/v1/lr/stream`).
    pub stream_consumers: AtomicI64,
    /// ACKs accepted from durable stream consumers.
    pub acks: AtomicU64,
    /// Heartbeat messages emitted.
    pub heartbeats: AtomicU64,
    /// When the last transaction arrived (Unix ms); heartbeats do not count.
    pub last_activity_ms: AtomicU64,
    /// Durable stream slots dropped because they passed the lag limit.
    pub streams_dropped_for_lag: AtomicU64,
    /// Changes given to WASM filters.
    pub filter_events: AtomicU64,
    /// Changes a WASM filter failed on.
    pub filter_errors: AtomicU64,
    /// Filters detached after repeated failures.
    pub filters_detached: AtomicU64,
    /// Pauses of a subscription whose filter used its budget for the second
    /// (`--filter-budget-ms`, `--filter-fuel-per-second`).
    pub filter_budget_waits: AtomicU64,
    /// Filter modules compiled (uploads served from a cache not counted).
    pub filter_compiles: AtomicU64,
    /// Per durable stream slot: bytes of WAL it holds back, and whether that
    /// is over the configured limit (refreshed by the lag guard).
    pub stream_lag: Mutex<BTreeMap<String, (u64, bool)>>,
    /// Connections before HTTP: caps, accept errors, timeouts.
    pub connections: ConnectionMetrics,
    /// The scale-out mode: what a relay published, what an edge read.
    pub nats: NatsMetrics,
    /// Initial rows read between watermarks (`backfill/`).
    pub backfill: BackfillMetrics,
}

/// What backfills (`snapshot=1` subscriptions) did.
#[derive(Default, Debug)]
pub struct BackfillMetrics {
    /// Backfills reading now (holding one of `--snapshot-max-running` turns).
    pub running: AtomicI64,
    /// Backfills waiting for a turn.
    pub waiting: AtomicI64,
    /// Backfills that sent their last chunk.
    pub done: AtomicU64,
    /// Backfills that stopped on an error (their client was closed).
    pub failed: AtomicU64,
    /// Chunks sent to clients.
    pub chunks: AtomicU64,
    /// Rows sent as read events.
    pub rows: AtomicU64,
    /// Chunks read again because their window could not be trusted.
    pub retries: AtomicU64,
}

/// What goes through NATS JetStream (`nats/`): zero outside the scale-out mode.
#[derive(Default, Debug)]
pub struct NatsMetrics {
    /// Messages a relay published and JetStream acknowledged.
    pub published: AtomicU64,
    /// Of those, messages JetStream had already (published again after a
    /// relay restart, dropped by their message id).
    pub duplicates: AtomicU64,
    /// Messages an edge read from the stream.
    pub received: AtomicU64,
    /// Messages an edge skipped: not published by a relay, or not readable.
    pub foreign: AtomicU64,
    /// Times a relay or edge lost NATS (or its stream) and started again.
    pub reconnects: AtomicU64,
    /// Messages an edge found gone from the stream when it came back (the
    /// stream's retention dropped them meanwhile).
    pub lost: AtomicU64,
    /// The stream sequence of the last message published or read.
    pub sequence: AtomicU64,
}

/// What happens to connections before and around HTTP (`http/listener.rs`, `http/serve.rs`).
#[derive(Default, Debug)]
pub struct ConnectionMetrics {
    /// Open connections (HTTP, and websockets they became).
    pub open: AtomicUsize,
    /// `--max-connections`.
    pub max: AtomicU64,
    /// Websocket handshakes in flight.
    pub handshakes: AtomicUsize,
    /// Connections closed at once: `--max-connections` were open.
    pub refused_total: AtomicU64,
    /// Connections closed at once: their address held `--max-connections-per-address`.
    pub refused_address: AtomicU64,
    /// Upgrades answered 503: `--max-handshakes` were in flight.
    pub refused_handshakes: AtomicU64,
    /// Upgrades answered 503: `--max-clients` were connected.
    pub refused_clients: AtomicU64,
    /// Upgrades answered 429: their address started `--max-upgrades-per-address` this second.
    pub refused_upgrade_rate: AtomicU64,
    /// Accepts that failed for lack of descriptors or memory.
    pub accept_errors_resources: AtomicU64,
    /// Accepts that failed otherwise (one connection's problem).
    pub accept_errors_other: AtomicU64,
    /// Connections closed for not sending a request head in `--header-timeout`
    /// (slow headers, or idle between keep-alive requests).
    pub timed_out_header: AtomicU64,
    /// Requests answered 408 for not sending their body in `--body-timeout`.
    pub timed_out_body: AtomicU64,
    /// Websockets closed for not completing the upgrade or sending their
    /// subscription in `--handshake-timeout`.
    pub timed_out_handshake: AtomicU64,
    /// The soft descriptor limit in force.
    pub descriptor_limit: AtomicU64,
}

/// Why the server closed a live client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The log dropped changes the client had not read.
    FellBehind,
    /// The client took no write for the stall timeout.
    Stalled,
    /// The client did not answer a ping.
    PingTimeout,
    /// The client's token expired and was not refreshed.
    TokenExpired,
    /// The source lost changes the client would have had (an edge whose
    /// JetStream stream dropped them before it read them).
    StreamGap,
    /// The client's view would hold more than `--view-max-rows` rows.
    ViewFull,
}

/// The change log and its readers, as `/metrics` shows them.
pub struct LogReport {
    pub stats: crate::log::LogStats,
    /// Changes waiting for each client.
    pub waiting: Vec<u64>,
    pub groups: usize,
    /// Matches the hub deferred to clients' cursors, in all.
    pub match_deferred: u64,
    /// Times a client waited because it used its matching time.
    pub match_throttled: u64,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Metrics {
    /// Notes that a transaction arrived now.
    pub fn activity(&self) {
        self.last_activity_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Counts a client closed by the server.
    pub fn count_close(&self, why: CloseReason) {
        let c = match why {
            CloseReason::FellBehind => &self.closed_fell_behind,
            CloseReason::Stalled => &self.closed_stalled,
            CloseReason::PingTimeout => &self.closed_ping_timeout,
            CloseReason::TokenExpired => &self.closed_token_expired,
            CloseReason::StreamGap => &self.closed_stream_gap,
            CloseReason::ViewFull => &self.closed_view_full,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one incoming change by action label.
    pub fn count_action(&self, label: &str) {
        let c = match label {
            "insert" => &self.inserts,
            "update" => &self.updates,
            "delete" => &self.deletes,
            "truncate" => &self.truncates,
            _ => return,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition, with the change log's gauges.
    pub fn render(&self, log: &LogReport) -> String {
        let mut families = log_families(log);
        families.extend(connection_families(&self.connections));
        families.extend(nats_families(&self.nats));
        families.extend(backfill_families(&self.backfill));
        families.extend(self.stream_families());
        families.extend(self.filter_families());
        families.extend(self.durable_families());
        let mut s = String::new();
        for f in &families {
            f.write(&mut s);
        }
        s
    }

    /// What arrives from PostgreSQL and what leaves for the clients.
    fn stream_families(&self) -> Vec<Family> {
        let closed = [
            ("fell_behind", &self.closed_fell_behind),
            ("stalled", &self.closed_stalled),
            ("ping_timeout", &self.closed_ping_timeout),
            ("token_expired", &self.closed_token_expired),
            ("stream_gap", &self.closed_stream_gap),
            ("view_full", &self.closed_view_full),
        ];
        let actions = [
            ("insert", &self.inserts),
            ("update", &self.updates),
            ("delete", &self.deletes),
            ("truncate", &self.truncates),
        ];
        vec![
            by(
                COUNTER,
                "walcast_clients_closed_total",
                "Live clients the server closed, by reason.",
                "reason",
                &closed,
            ),
            counter(
                "walcast_changes_in_total",
                "Plugin messages received from PostgreSQL.",
                load(&self.changes_in),
            ),
            counter(
                "walcast_frames_out_total",
                "Websocket frames sent to clients.",
                load(&self.frames_out),
            ),
            gauge(
                "walcast_clients",
                "Connected websocket clients.",
                level(&self.clients),
            ),
            gauge(
                "walcast_view_rows",
                "Rows held by live clients' views (queries with row filters), one key hash each.",
                level(&self.view_rows),
            ),
            counter(
                "walcast_unparseable_messages_total",
                "Plugin messages the proxy could not parse (logged, not forwarded).",
                load(&self.unparseable_messages),
            ),
            counter(
                "walcast_replication_reconnects_total",
                "Reconnections of the replication stream after transient errors.",
                load(&self.replication_reconnects),
            ),
            counter(
                "walcast_slots_lost_total",
                "Times the proxy's replication slot was found lost (a failover to a server without it, or dropped): changes since its last confirmed position are missing.",
                load(&self.slots_lost),
            ),
            counter(
                "walcast_slots_recreated_total",
                "New replication slots made in place of lost ones (--recreate-lost-slot).",
                load(&self.slots_recreated),
            ),
            gauge(
                "walcast_replication_lag_bytes",
                "Server WAL end minus the confirmed position.",
                load(&self.lag_bytes),
            ),
            gauge(
                "walcast_confirmed_lsn",
                "The slot position confirmed to PostgreSQL, as a number.",
                load(&self.confirmed_lsn),
            ),
            by(
                COUNTER,
                "walcast_changes_by_action_total",
                "Row changes received, by action.",
                "action",
                &actions,
            ),
        ]
    }

    fn filter_families(&self) -> Vec<Family> {
        vec![
            counter("walcast_filter_events_total", "Changes given to WASM filters.", load(&self.filter_events)),
            counter("walcast_filter_errors_total", "Changes a WASM filter failed on (trap, fuel, bad return or output).", load(&self.filter_errors)),
            counter("walcast_filters_detached_total", "Filters detached after failing too often in a row.", load(&self.filters_detached)),
            counter("walcast_filter_budget_waits_total", "Pauses of a subscription whose filter used its time or fuel budget for the second.", load(&self.filter_budget_waits)),
            counter("walcast_filter_compiles_total", "Filter modules compiled (cached uploads are not compiled again).", load(&self.filter_compiles)),
        ]
    }

    fn durable_families(&self) -> Vec<Family> {
        let mut families = vec![
            gauge(
                "walcast_stream_consumers",
                "Connected durable stream consumers.",
                level(&self.stream_consumers),
            ),
            counter(
                "walcast_stream_acks_total",
                "ACKs accepted from durable stream consumers.",
                load(&self.acks),
            ),
            counter(
                "walcast_heartbeats_total",
                "Heartbeat messages emitted into the WAL while the database was idle.",
                load(&self.heartbeats),
            ),
            counter(
                "walcast_streams_dropped_for_lag_total",
                "Durable stream slots dropped because they held back more WAL than allowed.",
                load(&self.streams_dropped_for_lag),
            ),
        ];
        let lags = crate::locks::lock(&self.stream_lag).clone();
        families.push(Family {
            name: "walcast_stream_lag_bytes",
            kind: GAUGE,
            help: "WAL held back by each durable stream slot.",
            values: Values::By(
                "slot",
                lags.iter().map(|(s, (lag, _))| (s.clone(), *lag)).collect(),
            ),
        });
        families.push(Family {
            name: "walcast_stream_over_max_lag",
            kind: GAUGE,
            help: "Whether a durable stream slot is past --max-slot-lag.",
            values: Values::By(
                "slot",
                lags.iter()
                    .map(|(s, (_, over))| (s.clone(), u64::from(*over)))
                    .collect(),
            ),
        });
        families
    }
}

/// Prometheus's metric types.
const COUNTER: &str = "counter";
const GAUGE: &str = "gauge";

/// One metric family: its HELP and TYPE lines, then its values.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    values: Values,
}

enum Values {
    One(u64),
    /// One value per value of a label.
    By(&'static str, Vec<(String, u64)>),
}

impl Family {
    fn write(&self, s: &mut String) {
        let (name, kind, help) = (self.name, self.kind, self.help);
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
        match &self.values {
            Values::One(v) => {
                let _ = writeln!(s, "{name} {v}");
            }
            Values::By(label, values) => {
                for (l, v) in values {
                    let _ = writeln!(s, "{name}{{{label}=\"{l}\"}} {v}");
                }
            }
        }
    }
}

fn counter(name: &'static str, help: &'static str, value: u64) -> Family {
    Family {
        name,
        kind: COUNTER,
        help,
        values: Values::One(value),
    }
}

fn gauge(name: &'static str, help: &'static str, value: u64) -> Family {
    Family {
        name,
        kind: GAUGE,
        help,
        values: Values::One(value),
    }
}

/// A family with a label, from counters.
fn by(
    kind: &'static str,
    name: &'static str,
    help: &'static str,
    label: &'static str,
    values: &[(&str, &AtomicU64)],
) -> Family {
    let values = values
        .iter()
        .map(|(l, v)| ((*l).to_owned(), load(v)))
        .collect();
    Family {
        name,
        kind,
        help,
        values: Values::By(label, values),
    }
}

fn load(v: &AtomicU64) -> u64 {
    v.load(Ordering::Relaxed)
}

/// A level that goes up and down, never shown below zero.
fn level(v: &AtomicI64) -> u64 {
    v.load(Ordering::Relaxed).max(0) as u64
}

fn nats_families(n: &NatsMetrics) -> Vec<Family> {
    vec![
        counter("walcast_nats_published_total", "Messages the relay published to JetStream and JetStream acknowledged.", load(&n.published)),
        counter("walcast_nats_duplicates_total", "Of those, messages JetStream already had (published again after a relay restart) and dropped by their id.", load(&n.duplicates)),
        counter("walcast_nats_received_total", "Messages the edge read from the JetStream stream.", load(&n.received)),
        counter("walcast_nats_foreign_total", "Messages the edge skipped: not written by a walcast relay, or unreadable.", load(&n.foreign)),
        counter("walcast_nats_reconnects_total", "Times the relay or edge lost NATS or its stream and started again.", load(&n.reconnects)),
        counter("walcast_nats_lost_total", "Messages the edge found dropped by the stream's retention while it was away.", load(&n.lost)),
        gauge("walcast_nats_sequence", "Stream sequence of the last message the relay published or the edge read.", load(&n.sequence)),
    ]
}

fn backfill_families(b: &BackfillMetrics) -> Vec<Family> {
    vec![
        gauge(
            "walcast_backfills_running",
            "Snapshots inside the stream reading now (at most --snapshot-max-running).",
            level(&b.running),
        ),
        gauge(
            "walcast_backfills_waiting",
            "Snapshots inside the stream waiting for a turn to read.",
            level(&b.waiting),
        ),
        counter(
            "walcast_backfills_done_total",
            "Backfills that sent their last chunk.",
            load(&b.done),
        ),
        counter(
            "walcast_backfills_failed_total",
            "Backfills stopped by an error (their client was closed with the reason).",
            load(&b.failed),
        ),
        counter(
            "walcast_backfill_chunks_total",
            "Chunks of initial rows sent to clients.",
            load(&b.chunks),
        ),
        counter(
            "walcast_backfill_rows_total",
            "Initial rows sent to clients as read events.",
            load(&b.rows),
        ),
        counter(
            "walcast_backfill_retries_total",
            "Chunks read again because their watermark window could not be trusted.",
            load(&b.retries),
        ),
    ]
}

fn connection_families(c: &ConnectionMetrics) -> Vec<Family> {
    let refused = [
        ("max_connections", &c.refused_total),
        ("per_address", &c.refused_address),
        ("handshakes", &c.refused_handshakes),
        ("max_clients", &c.refused_clients),
        ("upgrade_rate", &c.refused_upgrade_rate),
    ];
    let accept_errors = [
        ("resources", &c.accept_errors_resources),
        ("other", &c.accept_errors_other),
    ];
    let timed_out = [
        ("header", &c.timed_out_header),
        ("body", &c.timed_out_body),
        ("handshake", &c.timed_out_handshake),
    ];
    let count = |v: &AtomicUsize| v.load(Ordering::Relaxed) as u64;
    vec![
        gauge("walcast_connections_open", "Open client connections (HTTP, and the websockets they became).", count(&c.open)),
        gauge("walcast_connections_max", "The cap on open connections (--max-connections).", load(&c.max)),
        gauge("walcast_websocket_handshakes", "Websocket handshakes in flight (upgrades being checked, subscriptions not yet sent).", count(&c.handshakes)),
        gauge("walcast_descriptor_limit", "The process's soft limit on open files, after raising it to the hard limit.", load(&c.descriptor_limit)),
        counter("walcast_log_lines_suppressed_total", "Repeated log lines left out (each call site logs at most once per 10 s, with a count).", load(&crate::throttle::SUPPRESSED)),
        by(COUNTER, "walcast_connections_refused_total", "Connections closed at once and upgrades answered 503 or 429, by the cap that was full.", "reason", &refused),
        by(COUNTER, "walcast_accept_errors_total", "Failed accepts: out of descriptors or memory (the loop pauses), or one connection's error.", "kind", &accept_errors),
        by(COUNTER, "walcast_connections_timed_out_total", "Connections cut off for being too slow, by phase.", "phase", &timed_out),
    ]
}

/// Lag buckets of `walcast_clients_by_lag`: (label, lowest lag in it).
const LAG_BUCKETS: [(&str, u64); 4] = [
    ("0", 0),
    ("1-999", 1),
    ("1000-99999", 1000),
    ("100000+", 100_000),
];

fn log_families(log: &LogReport) -> Vec<Family> {
    let st = &log.stats;
    let by_lag = LAG_BUCKETS
        .iter()
        .enumerate()
        .map(|(i, (label, low))| {
            let high = LAG_BUCKETS.get(i + 1).map(|b| b.1).unwrap_or(u64::MAX);
            let n = log
                .waiting
                .iter()
                .filter(|w| **w >= *low && **w < high)
                .count();
            ((*label).to_owned(), n as u64)
        })
        .collect();
    vec![
        gauge("walcast_buffer_bytes", "Bytes the change log holds (JSON plus per-change and match-list overhead).", st.bytes as u64),
        gauge("walcast_buffer_max_bytes", "The change log's bound (--buffer-size).", st.max_bytes as u64),
        gauge("walcast_buffer_changes", "Changes the change log holds.", st.changes as u64),
        counter("walcast_buffer_evicted_total", "Changes dropped from the change log to stay within its bound.", st.evicted),
        gauge("walcast_buffer_oldest_commit_lsn", "Commit LSN (as a number) of the oldest change the log holds; 0 when empty.", st.oldest.map(|p| p.commit.0).unwrap_or(0)),
        gauge("walcast_match_groups", "Distinct queries of connected clients (clients with the same query share a match list).", log.groups as u64),
        counter("walcast_match_deferred_total", "Matches too costly for the shared reader, evaluated by the clients' own tasks instead.", log.match_deferred),
        counter("walcast_match_throttled_total", "Times a live client waited because it used its matching time (--match-budget-ms).", log.match_throttled),
        gauge("walcast_slowest_client_changes_waiting", "Changes waiting for the slowest live client.", log.waiting.iter().copied().max().unwrap_or(0)),
        Family {
            name: "walcast_clients_by_lag",
            kind: GAUGE,
            help: "Live clients by changes waiting for them.",
            values: Values::By("changes_waiting", by_lag),
        },
    ]
}
