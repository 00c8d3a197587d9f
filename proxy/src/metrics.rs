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
        let mut s = String::new();
        render_log(&mut s, log);
        render_connections(&mut s, &self.connections);
        render_nats(&mut s, &self.nats);
        render_backfill(&mut s, &self.backfill);
        let _ = writeln!(
            s,
            "# HELP walcast_clients_closed_total Live clients the server closed, by reason.\n\
             # TYPE walcast_clients_closed_total counter\n\
             walcast_clients_closed_total{{reason=\"fell_behind\"}} {}\n\
             walcast_clients_closed_total{{reason=\"stalled\"}} {}\n\
             walcast_clients_closed_total{{reason=\"ping_timeout\"}} {}\n\
             walcast_clients_closed_total{{reason=\"token_expired\"}} {}\n\
             walcast_clients_closed_total{{reason=\"stream_gap\"}} {}\n\
             walcast_clients_closed_total{{reason=\"view_full\"}} {}",
            self.closed_fell_behind.load(Ordering::Relaxed),
            self.closed_stalled.load(Ordering::Relaxed),
            self.closed_ping_timeout.load(Ordering::Relaxed),
            self.closed_token_expired.load(Ordering::Relaxed),
            self.closed_stream_gap.load(Ordering::Relaxed),
            self.closed_view_full.load(Ordering::Relaxed),
        );
        let g = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let mut line = |name: &str, kind: &str, help: &str, value: String| {
            metric(&mut s, name, kind, help, value)
        };
        line(
            "walcast_changes_in_total",
            "counter",
            "Plugin messages received from PostgreSQL.",
            g(&self.changes_in).to_string(),
        );
        line(
            "walcast_frames_out_total",
            "counter",
            "Websocket frames sent to clients.",
            g(&self.frames_out).to_string(),
        );
        line(
            "walcast_clients",
            "gauge",
            "Connected websocket clients.",
            self.clients.load(Ordering::Relaxed).to_string(),
        );
        line(
            "walcast_view_rows",
            "gauge",
            "Rows held by live clients' views (queries with row filters), one key hash each.",
            self.view_rows.load(Ordering::Relaxed).to_string(),
        );
        line(
            "walcast_unparseable_messages_total",
            "counter",
            "Plugin messages the proxy could not parse (logged, not forwarded).",
            g(&self.unparseable_messages).to_string(),
        );
        line(
            "walcast_replication_reconnects_total",
            "counter",
            "Reconnections of the replication stream after transient errors.",
            g(&self.replication_reconnects).to_string(),
        );
        line(
            "walcast_replication_lag_bytes",
            "gauge",
            "Server WAL end minus the confirmed position.",
            g(&self.lag_bytes).to_string(),
        );
        line(
            "walcast_confirmed_lsn",
            "gauge",
            "The slot position confirmed to PostgreSQL, as a number.",
            g(&self.confirmed_lsn).to_string(),
        );
        line(
            "walcast_filter_events_total",
            "counter",
            "Changes given to WASM filters.",
            g(&self.filter_events).to_string(),
        );
        line(
            "walcast_filter_errors_total",
            "counter",
            "Changes a WASM filter failed on (trap, fuel, bad return or output).",
            g(&self.filter_errors).to_string(),
        );
        line(
            "walcast_filters_detached_total",
            "counter",
            "Filters detached after failing too often in a row.",
            g(&self.filters_detached).to_string(),
        );
        line(
            "walcast_filter_budget_waits_total",
            "counter",
            "Pauses of a subscription whose filter used its time or fuel budget for the second.",
            g(&self.filter_budget_waits).to_string(),
        );
        line(
            "walcast_filter_compiles_total",
            "counter",
            "Filter modules compiled (cached uploads are not compiled again).",
            g(&self.filter_compiles).to_string(),
        );
        line(
            "walcast_stream_consumers",
            "gauge",
            "Connected durable stream consumers.",
            self.stream_consumers.load(Ordering::Relaxed).to_string(),
        );
        line(
            "walcast_stream_acks_total",
            "counter",
            "ACKs accepted from durable stream consumers.",
            g(&self.acks).to_string(),
        );
        line(
            "walcast_heartbeats_total",
            "counter",
            "Heartbeat messages emitted into the WAL while the database was idle.",
            g(&self.heartbeats).to_string(),
        );
        line(
            "walcast_streams_dropped_for_lag_total",
            "counter",
            "Durable stream slots dropped because they held back more WAL than allowed.",
            g(&self.streams_dropped_for_lag).to_string(),
        );
        let _ = writeln!(
            s,
            "# HELP walcast_changes_by_action_total Row changes received, by action.\n\
             # TYPE walcast_changes_by_action_total counter\n\
             walcast_changes_by_action_total{{action=\"insert\"}} {}\n\
             walcast_changes_by_action_total{{action=\"update\"}} {}\n\
             walcast_changes_by_action_total{{action=\"delete\"}} {}\n\
             walcast_changes_by_action_total{{action=\"truncate\"}} {}",
            g(&self.inserts),
            g(&self.updates),
            g(&self.deletes),
            g(&self.truncates)
        );
        if let Ok(lags) = self.stream_lag.lock() {
            let _ = writeln!(
                s,
                "# HELP walcast_stream_lag_bytes WAL held back by each durable stream slot.\n\
                 # TYPE walcast_stream_lag_bytes gauge"
            );
            for (slot, (lag, _)) in lags.iter() {
                let _ = writeln!(s, "walcast_stream_lag_bytes{{slot=\"{slot}\"}} {lag}");
            }
            let _ = writeln!(
                s,
                "# HELP walcast_stream_over_max_lag Whether a durable stream slot is past --max-slot-lag.\n\
                 # TYPE walcast_stream_over_max_lag gauge"
            );
            for (slot, (_, over)) in lags.iter() {
                let _ = writeln!(
                    s,
                    "walcast_stream_over_max_lag{{slot=\"{slot}\"}} {}",
                    u8::from(*over)
                );
            }
        }
        s
    }
}

/// Writes one metric with its HELP and TYPE lines.
fn metric(s: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        s,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

fn render_nats(s: &mut String, n: &NatsMetrics) {
    let g = |v: &AtomicU64| v.load(Ordering::Relaxed);
    for (name, kind, help, value) in [
        ("walcast_nats_published_total", "counter", "Messages the relay published to JetStream and JetStream acknowledged.", g(&n.published)),
        ("walcast_nats_duplicates_total", "counter", "Of those, messages JetStream already had (published again after a relay restart) and dropped by their id.", g(&n.duplicates)),
        ("walcast_nats_received_total", "counter", "Messages the edge read from the JetStream stream.", g(&n.received)),
        ("walcast_nats_foreign_total", "counter", "Messages the edge skipped: not written by a walcast relay, or unreadable.", g(&n.foreign)),
        ("walcast_nats_reconnects_total", "counter", "Times the relay or edge lost NATS or its stream and started again.", g(&n.reconnects)),
        ("walcast_nats_lost_total", "counter", "Messages the edge found dropped by the stream's retention while it was away.", g(&n.lost)),
        ("walcast_nats_sequence", "gauge", "Stream sequence of the last message the relay published or the edge read.", g(&n.sequence)),
    ] {
        metric(s, name, kind, help, value);
    }
}

fn render_backfill(s: &mut String, b: &BackfillMetrics) {
    let g = |v: &AtomicU64| v.load(Ordering::Relaxed);
    let running = b.running.load(Ordering::Relaxed).max(0) as u64;
    let waiting = b.waiting.load(Ordering::Relaxed).max(0) as u64;
    for (name, kind, help, value) in [
        (
            "walcast_backfills_running",
            "gauge",
            "Snapshots inside the stream reading now (at most --snapshot-max-running).",
            running,
        ),
        (
            "walcast_backfills_waiting",
            "gauge",
            "Snapshots inside the stream waiting for a turn to read.",
            waiting,
        ),
        (
            "walcast_backfills_done_total",
            "counter",
            "Backfills that sent their last chunk.",
            g(&b.done),
        ),
        (
            "walcast_backfills_failed_total",
            "counter",
            "Backfills stopped by an error (their client was closed with the reason).",
            g(&b.failed),
        ),
        (
            "walcast_backfill_chunks_total",
            "counter",
            "Chunks of initial rows sent to clients.",
            g(&b.chunks),
        ),
        (
            "walcast_backfill_rows_total",
            "counter",
            "Initial rows sent to clients as read events.",
            g(&b.rows),
        ),
        (
            "walcast_backfill_retries_total",
            "counter",
            "Chunks read again because their watermark window could not be trusted.",
            g(&b.retries),
        ),
    ] {
        metric(s, name, kind, help, value);
    }
}

fn render_connections(s: &mut String, c: &ConnectionMetrics) {
    let g = |v: &AtomicU64| v.load(Ordering::Relaxed);
    metric(
        s,
        "walcast_connections_open",
        "gauge",
        "Open client connections (HTTP, and the websockets they became).",
        c.open.load(Ordering::Relaxed),
    );
    metric(
        s,
        "walcast_connections_max",
        "gauge",
        "The cap on open connections (--max-connections).",
        g(&c.max),
    );
    metric(
        s,
        "walcast_websocket_handshakes",
        "gauge",
        "Websocket handshakes in flight (upgrades being checked, subscriptions not yet sent).",
        c.handshakes.load(Ordering::Relaxed),
    );
    metric(
        s,
        "walcast_descriptor_limit",
        "gauge",
        "The process's soft limit on open files, after raising it to the hard limit.",
        g(&c.descriptor_limit),
    );
    metric(
        s,
        "walcast_log_lines_suppressed_total",
        "counter",
        "Repeated log lines left out (each call site logs at most once per 10 s, with a count).",
        crate::throttle::SUPPRESSED.load(Ordering::Relaxed),
    );
    let _ = writeln!(
        s,
        "# HELP walcast_connections_refused_total Connections closed at once and upgrades answered 503 or 429, by the cap that was full.\n\
         # TYPE walcast_connections_refused_total counter\n\
         walcast_connections_refused_total{{reason=\"max_connections\"}} {}\n\
         walcast_connections_refused_total{{reason=\"per_address\"}} {}\n\
         walcast_connections_refused_total{{reason=\"handshakes\"}} {}\n\
         walcast_connections_refused_total{{reason=\"max_clients\"}} {}\n\
         walcast_connections_refused_total{{reason=\"upgrade_rate\"}} {}",
        g(&c.refused_total),
        g(&c.refused_address),
        g(&c.refused_handshakes),
        g(&c.refused_clients),
        g(&c.refused_upgrade_rate),
    );
    let _ = writeln!(
        s,
        "# HELP walcast_accept_errors_total Failed accepts: out of descriptors or memory (the loop pauses), or one connection's error.\n\
         # TYPE walcast_accept_errors_total counter\n\
         walcast_accept_errors_total{{kind=\"resources\"}} {}\n\
         walcast_accept_errors_total{{kind=\"other\"}} {}",
        g(&c.accept_errors_resources),
        g(&c.accept_errors_other),
    );
    let _ = writeln!(
        s,
        "# HELP walcast_connections_timed_out_total Connections cut off for being too slow, by phase.\n\
         # TYPE walcast_connections_timed_out_total counter\n\
         walcast_connections_timed_out_total{{phase=\"header\"}} {}\n\
         walcast_connections_timed_out_total{{phase=\"body\"}} {}\n\
         walcast_connections_timed_out_total{{phase=\"handshake\"}} {}",
        g(&c.timed_out_header),
        g(&c.timed_out_body),
        g(&c.timed_out_handshake),
    );
}

/// Lag buckets of `walcast_clients_by_lag`: (label, lowest lag in it).
const LAG_BUCKETS: [(&str, u64); 4] = [
    ("0", 0),
    ("1-999", 1),
    ("1000-99999", 1000),
    ("100000+", 100_000),
];

fn render_log(s: &mut String, log: &LogReport) {
    let st = &log.stats;
    let mut gauge =
        |name: &str, kind: &str, help: &str, value: u64| metric(s, name, kind, help, value);
    gauge(
        "walcast_buffer_bytes",
        "gauge",
        "Bytes the change log holds (JSON plus per-change and match-list overhead).",
        st.bytes as u64,
    );
    gauge(
        "walcast_buffer_max_bytes",
        "gauge",
        "The change log's bound (--buffer-size).",
        st.max_bytes as u64,
    );
    gauge(
        "walcast_buffer_changes",
        "gauge",
        "Changes the change log holds.",
        st.changes as u64,
    );
    gauge(
        "walcast_buffer_evicted_total",
        "counter",
        "Changes dropped from the change log to stay within its bound.",
        st.evicted,
    );
    gauge(
        "walcast_buffer_oldest_commit_lsn",
        "gauge",
        "Commit LSN (as a number) of the oldest change the log holds; 0 when empty.",
        st.oldest.map(|p| p.commit.0).unwrap_or(0),
    );
    gauge(
        "walcast_match_groups",
        "gauge",
        "Distinct queries of connected clients (clients with the same query share a match list).",
        log.groups as u64,
    );
    gauge(
        "walcast_match_deferred_total",
        "counter",
        "Matches too costly for the shared reader, evaluated by the clients' own tasks instead.",
        log.match_deferred,
    );
    gauge(
        "walcast_match_throttled_total",
        "counter",
        "Times a live client waited because it used its matching time (--match-budget-ms).",
        log.match_throttled,
    );
    gauge(
        "walcast_slowest_client_changes_waiting",
        "gauge",
        "Changes waiting for the slowest live client.",
        log.waiting.iter().copied().max().unwrap_or(0),
    );
    let _ = writeln!(
        s,
        "# HELP walcast_clients_by_lag Live clients by changes waiting for them.\n\
         # TYPE walcast_clients_by_lag gauge"
    );
    for (i, (label, low)) in LAG_BUCKETS.iter().enumerate() {
        let high = LAG_BUCKETS.get(i + 1).map(|b| b.1).unwrap_or(u64::MAX);
        let n = log
            .waiting
            .iter()
            .filter(|w| **w >= *low && **w < high)
            .count();
        let _ = writeln!(
            s,
            "walcast_clients_by_lag{{changes_waiting=\"{label}\"}} {n}"
        );
    }
}
