//! At-least-once, checked the way a model checker would: a seeded generator
//! of random transactions (inserts, updates that change keys, deletes,
//! truncates, rollbacks, large and empty transactions) is applied to
//! PostgreSQL and to an in-memory model, while a consumer applies a durable
//! stream (snapshot, then changes) to a second model. Meanwhile the test
//! drops the consumer's connection at random points (also inside
//! transactions), kills the proxy with SIGKILL and restarts PostgreSQL.
//! At the end PostgreSQL and both models agree, and no transaction at or
//! before the consumer's last confirmed ACK was ever delivered again.
//!
//! The scale-out mode gets the same treatment: a relay, two edges and a
//! private nats-server, a live client applying `*:sim` and resuming with
//! `after=` on the other edge, and a durable stream (a JetStream consumer)
//! read and ACKed on alternating edges, while the relay and the edges are
//! killed (SIGKILL), nats-server is stopped and started again (SIGTERM: a
//! single-replica JetStream server that is killed can lose what it
//! acknowledged since its last sync, see docs/scale-out.md) and PostgreSQL
//! restarts. Every change reaches the
//! live client exactly once (positions strictly increase across every
//! reconnect), the durable stream never gets a transaction at or before a
//! confirmed ACK again, and both models end equal to the table.
//!
//! Failover is a fault too: a primary and a streaming standby, a proxy
//! given both, a live client applying `*:sim` (resuming with `after=`) and
//! a durable stream's consumer (resuming with `acked=`). At random steps the
//! primary is killed (SIGKILL) and the standby promoted, and a new standby
//! of the new primary takes the old one's port. On 17+ (failover slots,
//! `synchronized_standby_slots`) both clients end equal to the surviving
//! history's table, every live change once and in order, no transaction at
//! or before a confirmed ACK again. On 15 and 16 the first failover must be
//! told: the live client closed and its resume refused with 410, the
//! durable stream answering 410 `STREAM_LOST`, `/healthz` failed.
//!
//! The seed is printed; `WALCAST_SEED=<seed>` replays the same operations.
//! This binary has its own cluster, because it restarts it.

use crate::support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::model::Model;
use support::rng::{seed, Rng};
use support::{json, Client, Got, Proxy};
use walcast_cluster::{Cluster, Config};

fn lsn(s: &str) -> u64 {
    let (hi, lo) = s
        .split_once('/')
        .unwrap_or_else(|| panic!("not an LSN: {s}"));
    (u64::from_str_radix(hi, 16).expect("hi") << 32) | u64::from_str_radix(lo, 16).expect("lo")
}

fn fmt_lsn(l: u64) -> String {
    format!("{:X}/{:X}", l >> 32, l & 0xFFFF_FFFF)
}

type Rows = BTreeMap<i64, serde_json::Value>;

fn row(id: i64, v: &str, n: i64) -> serde_json::Value {
    serde_json::json!({"id": id, "v": v, "n": n})
}

/// The workload side: PostgreSQL and model A.
struct Workload {
    sql: postgres::Client,
    conninfo: String,
    model: Rows,
    next_id: i64,
    transactions: u64,
}

impl Workload {
    /// Connects to `conninfo` and creates the table `sim`, empty.
    fn on(conninfo: &str) -> Workload {
        let mut sql = postgres::Client::connect(conninfo, postgres::NoTls).expect("connect");
        sql.batch_execute("CREATE TABLE sim (id int PRIMARY KEY, v text, n int)")
            .expect("table");
        Workload {
            sql,
            conninfo: conninfo.to_owned(),
            model: Rows::new(),
            next_id: 1,
            transactions: 0,
        }
    }

    fn reconnect(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match postgres::Client::connect(&self.conninfo, postgres::NoTls) {
                Ok(c) => {
                    self.sql = c;
                    return;
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "cannot reconnect: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn pick(&self, rng: &mut Rng, model: &Rows) -> Option<i64> {
        if model.is_empty() {
            return None;
        }
        model
            .keys()
            .nth(rng.below(model.len() as u64) as usize)
            .copied()
    }

    /// One random transaction; returns a description for failure messages.
    fn transaction(&mut self, rng: &mut Rng) -> String {
        self.transaction_with(rng, true)
    }

    /// One random transaction, without TRUNCATE when `truncate` is false.
    fn transaction_with(&mut self, rng: &mut Rng, truncate: bool) -> String {
        let mut staged = self.model.clone();
        let mut sql = vec!["BEGIN".to_owned()];
        let kind = rng.below(100);
        let mut describe = String::new();
        let ops = match kind {
            0..=3 => {
                describe.push_str("empty");
                0
            }
            4..=7 => {
                // Large: thousands of rows in one statement.
                let count = 500 + rng.below(2500) as i64;
                let (a, b) = (self.next_id, self.next_id + count - 1);
                self.next_id += count;
                sql.push(format!(
                    "INSERT INTO sim SELECT g, 'bulk', g % 97 FROM generate_series({a}, {b}) g"
                ));
                for id in a..=b {
                    staged.insert(id, row(id, "bulk", id % 97));
                }
                describe.push_str(&format!("large insert of {count}"));
                0
            }
            8..=9 if truncate => {
                sql.push("TRUNCATE sim".into());
                staged.clear();
                describe.push_str("truncate + ");
                1 + rng.below(3)
            }
            _ => 1 + rng.below(6),
        };
        for _ in 0..ops {
            match rng.below(10) {
                0..=3 => {
                    let id = self.next_id;
                    self.next_id += 1;
                    let n = rng.below(1000) as i64;
                    let v = format!("v{}", rng.below(1_000_000));
                    sql.push(format!("INSERT INTO sim VALUES ({id}, '{v}', {n})"));
                    staged.insert(id, row(id, &v, n));
                    describe.push_str("I ");
                }
                4..=5 => {
                    if let Some(id) = self.pick(rng, &staged) {
                        let n = rng.below(1000) as i64;
                        sql.push(format!("UPDATE sim SET n = {n} WHERE id = {id}"));
                        if let Some(r) = staged.get_mut(&id) {
                            r["n"] = n.into();
                        }
                        describe.push_str("U ");
                    }
                }
                6 => {
                    // The key changes: the stream carries the old key as identity.
                    if let Some(id) = self.pick(rng, &staged) {
                        let new = self.next_id;
                        self.next_id += 1;
                        sql.push(format!("UPDATE sim SET id = {new} WHERE id = {id}"));
                        if let Some(mut r) = staged.remove(&id) {
                            r["id"] = new.into();
                            staged.insert(new, r);
                        }
                        describe.push_str("K ");
                    }
                }
                _ => {
                    if let Some(id) = self.pick(rng, &staged) {
                        sql.push(format!("DELETE FROM sim WHERE id = {id}"));
                        staged.remove(&id);
                        describe.push_str("D ");
                    }
                }
            }
        }
        let rollback = kind >= 10 && rng.chance(10);
        sql.push(if rollback { "ROLLBACK" } else { "COMMIT" }.into());
        let text = sql.join("; ");
        if let Err(e) = self.sql.batch_execute(&text) {
            panic!("workload SQL failed: {text}: {e}");
        }
        if !rollback {
            self.model = staged;
            self.transactions += 1;
        } else {
            describe.push_str("(rolled back)");
        }
        describe
    }
}

/// The consumer side: a durable stream applied to model B.
struct Consumer {
    slot: String,
    client: Option<Client>,
    model: Model,
    /// End of the last transaction applied to the model.
    applied: u64,
    /// The last ACK the proxy confirmed (`{"ack":...}` reply).
    acked: u64,
    /// The lowest end a transaction may have on this connection.
    floor: u64,
    /// End of the last transaction received on this connection.
    last_on_connection: u64,
    pending: Option<(serde_json::Value, Vec<serde_json::Value>)>,
    duplicates: u64,
    reconnects: u64,
    /// PostgreSQL restarted since the last confirmed ACK: PostgreSQL 15 may
    /// resume the slot from an earlier confirmed position after a restart.
    restarted_since_ack: bool,
    /// The open connection was made after the last PostgreSQL restart (an
    /// ACK confirmed on an older connection may not have been kept).
    connected_after_restart: bool,
    /// What happened, for failure messages.
    events: Vec<String>,
    /// Reconnect with `acked=<the last confirmed ACK>`, as the walcast
    /// clients do: then nothing at or before it may come again.
    send_acked: bool,
}

impl Consumer {
    fn new(slot: &str, send_acked: bool) -> Consumer {
        Consumer {
            slot: slot.to_owned(),
            client: None,
            model: Model::default(),
            applied: 0,
            acked: 0,
            floor: 0,
            last_on_connection: 0,
            pending: None,
            duplicates: 0,
            reconnects: 0,
            restarted_since_ack: false,
            connected_after_restart: false,
            events: Vec::new(),
            send_acked,
        }
    }

    /// ACKs the last transaction applied, if it was not.
    fn ack_applied(&mut self) {
        if self.applied <= self.acked {
            return;
        }
        let ack = format!(r#"{{"lsn":"{}","reply":true}}"#, fmt_lsn(self.applied));
        if let Some(c) = self.client.as_mut() {
            if c.ws.send(tungstenite::Message::Text(ack.into())).is_err() {
                self.client = None;
            }
        }
    }

    fn recent(&self) -> String {
        self.events[self.events.len().saturating_sub(12)..].join("\n  ")
    }

    fn connect(&mut self, proxy: &Proxy, sql: &mut postgres::Client) {
        if self.client.is_some() {
            return;
        }
        let mut url = format!(
            "ws://127.0.0.1:{}/v1/lr/stream?slotName={}",
            proxy.port, self.slot
        );
        if self.send_acked && self.acked > 0 {
            url.push_str(&format!("&acked={}", fmt_lsn(self.acked)));
        }
        match proxy.try_ws_url(&url) {
            Ok(c) => {
                self.client = Some(c);
                self.connected_after_restart = true;
                self.reconnects += 1;
                self.last_on_connection = 0;
                self.pending = None;
                self.floor = if self.send_acked || !self.restarted_since_ack {
                    self.acked
                } else {
                    // What PostgreSQL kept: never after the ACK (checked below).
                    let kept: String = sql
                        .query_one(
                            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                            &[&self.slot],
                        )
                        .map(|r| r.get(0))
                        .unwrap_or_else(|_| "0/0".into());
                    lsn(&kept).min(self.acked)
                };
                self.events.push(format!(
                    "connected: acked {}, floor {}, applied {}",
                    fmt_lsn(self.acked),
                    fmt_lsn(self.floor),
                    fmt_lsn(self.applied)
                ));
            }
            // Busy (the previous connection is still going away), the
            // proxy or PostgreSQL restarting: try again on the next pump.
            Err((409 | 503 | 0, _)) => {}
            Err(other) => panic!("opening the stream: {other:?}"),
        }
    }

    /// Reads what arrives within `budget`, applying whole transactions.
    fn pump(&mut self, rng: &mut Rng, budget: Duration) {
        let deadline = Instant::now() + budget;
        while Instant::now() < deadline {
            let Some(c) = self.client.as_mut() else {
                return;
            };
            let got = c.next();
            match got {
                None => {}
                Some(Got::Closed(_, _)) => {
                    self.client = None;
                    return;
                }
                Some(Got::Text(t)) => self.frame(json(&t), rng),
            }
        }
    }

    fn frame(&mut self, f: serde_json::Value, rng: &mut Rng) {
        if let Some(a) = f["ack"].as_str() {
            self.acked = self.acked.max(lsn(a));
            if self.connected_after_restart {
                self.restarted_since_ack = false;
            }
            return;
        }
        assert!(
            f["error"].is_null() && f["warning"].is_null(),
            "unexpected frame {f}"
        );
        match f["action"].as_str() {
            Some("B") => {
                assert!(self.pending.is_none(), "B inside a transaction: {f}");
                self.pending = Some((f, Vec::new()));
            }
            Some("C") => {
                let (b, changes) = self
                    .pending
                    .take()
                    .unwrap_or_else(|| panic!("C without B: {f}"));
                assert_eq!(b["xid"], f["xid"]);
                let end = lsn(f["end_lsn"].as_str().expect("end_lsn"));
                assert!(
                    end > self.last_on_connection,
                    "transactions out of order: {} after {}",
                    fmt_lsn(end),
                    fmt_lsn(self.last_on_connection)
                );
                self.last_on_connection = end;
                assert!(
                    end > self.floor,
                    "transaction ending at {} delivered again although {} was acknowledged; recent:\n  {}",
                    fmt_lsn(end),
                    fmt_lsn(self.floor),
                    self.recent()
                );
                if end <= self.applied {
                    // At least once: a transaction after the last ACK may come again.
                    self.duplicates += 1;
                    return;
                }
                for ch in &changes {
                    self.model.apply(ch);
                }
                self.applied = end;
                if rng.chance(60) {
                    let ack = format!(r#"{{"lsn":"{}","reply":true}}"#, fmt_lsn(end));
                    if let Some(c) = self.client.as_mut() {
                        if c.ws.send(tungstenite::Message::Text(ack.into())).is_err() {
                            self.client = None;
                        }
                    }
                }
            }
            Some("I" | "U" | "D" | "T") => match self.pending.as_mut() {
                Some((_, changes)) => changes.push(f),
                None => panic!("change outside a transaction: {f}"),
            },
            _ => {}
        }
    }
}

/// A new durable stream and its consumer, whose model holds the stream's
/// snapshot (read in pages of 250 rows) after `writes` more transactions:
/// those belong to the stream. (Not TRUNCATE: it is not MVCC-safe, and a
/// snapshot read after it is refused with 409, see durable.rs.)
fn new_stream(
    proxy: &Proxy,
    work: &mut Workload,
    rng: &mut Rng,
    writes: usize,
    send_acked: bool,
) -> Consumer {
    let (status, body) = proxy.get("/v1/init").expect("init");
    assert_eq!(status, 200, "{body}");
    let slot = json(&body)["slotName"].as_str().expect("slot").to_owned();
    let before_snapshot = work.model.clone();
    for _ in 0..writes {
        work.transaction_with(rng, false);
    }
    let mut consumer = Consumer::new(&slot, send_acked);
    let mut after: Option<String> = None;
    loop {
        let body = match &after {
            Some(a) => format!(r#"{{"slotName":"{slot}","table":"sim","limit":250,"after":{a}}}"#),
            None => format!(r#"{{"slotName":"{slot}","table":"sim","limit":250}}"#),
        };
        let (status, _, text) = proxy.post_full("/v1/snapshot/data", &body);
        assert_eq!(status, 200, "{text}");
        let page: Vec<serde_json::Value> = serde_json::from_str(&text).expect("page");
        let Some(last) = page.last() else { break };
        after = Some(format!("[{}]", last["id"]));
        for r in page {
            consumer.model.put("sim", r);
        }
    }
    assert_eq!(
        consumer.model.rows("sim"),
        before_snapshot,
        "the snapshot is the table as of the slot's creation"
    );
    consumer
}

/// A run's seed (printed; `WALCAST_SEED` replays it), its generator and
/// its length (`WALCAST_SIM_STEPS`, else `steps`).
fn start_run(what: &str, steps: u64) -> (u64, Rng, u64) {
    let seed = seed();
    println!("{what}seed {seed} (replay: WALCAST_SEED={seed})");
    eprintln!("{what}seed {seed} (replay: WALCAST_SEED={seed})");
    let steps = std::env::var("WALCAST_SIM_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(steps);
    (seed, Rng(seed), steps)
}

#[test]
fn random_transactions_survive_kills_and_restarts_without_loss() {
    let (seed, mut rng, steps) = start_run("simulation ", 300);

    let mut cluster = Cluster::start_with(Config::default()).expect("cluster");
    cluster.create_database("sim").expect("database");
    let mut work = Workload::on(&cluster.conninfo("sim"));
    for _ in 0..5 {
        work.transaction(&mut rng);
    }

    let start_proxy = |cluster: &Cluster| {
        Proxy::start(cluster, "sim", "sim_proxy", &["--heartbeat-interval", "1"])
    };
    let mut proxy = start_proxy(&cluster);
    let mut consumer = new_stream(&proxy, &mut work, &mut rng, 5, false);

    let mut log = Vec::new();
    let (mut kills, mut proxy_kills, mut pg_restarts) = (0, 0, 0);
    for step in 0..steps {
        match rng.below(100) {
            0..=69 => {
                let d = work.transaction(&mut rng);
                log.push(format!("{step}: {d}"));
            }
            70..=79 if consumer.client.take().is_some() => {
                kills += 1;
                log.push(format!("{step}: consumer connection dropped"));
                consumer.events.push(format!("{step}: connection dropped"));
            }
            80..=82 => {
                let _ = proxy.child.kill();
                let _ = proxy.child.wait();
                proxy = start_proxy(&cluster);
                consumer.client = None;
                proxy_kills += 1;
                log.push(format!("{step}: proxy killed (SIGKILL) and restarted"));
                consumer.events.push(format!("{step}: proxy killed"));
            }
            83..=84 => {
                cluster.restart("fast").expect("restart PostgreSQL");
                work.reconnect();
                consumer.restarted_since_ack = true;
                consumer.connected_after_restart = false;
                consumer
                    .events
                    .push(format!("{step}: PostgreSQL restarted"));
                pg_restarts += 1;
                log.push(format!("{step}: PostgreSQL restarted"));
            }
            _ => {}
        }
        consumer.connect(&proxy, &mut work.sql);
        let budget = Duration::from_millis(rng.below(120) + 10);
        consumer.pump(&mut rng, budget);
    }

    // Drain: the consumer catches up with everything committed.
    let deadline = Instant::now() + Duration::from_secs(120);
    while consumer.model.rows("sim") != work.model {
        assert!(
            Instant::now() < deadline,
            "seed {seed}: the consumer never caught up ({} rows vs {}); last steps: {:?}",
            consumer.model.rows("sim").len(),
            work.model.len(),
            &log[log.len().saturating_sub(10)..]
        );
        consumer.connect(&proxy, &mut work.sql);
        consumer.pump(&mut rng, Duration::from_millis(200));
    }
    let table = Model::read_table(&mut work.sql, "sim");
    assert_eq!(
        table, work.model,
        "seed {seed}: PostgreSQL and the workload model differ"
    );
    assert_eq!(
        consumer.model.rows("sim"),
        table,
        "seed {seed}: the stream's model differs"
    );
    println!(
        "seed {seed}: {} transactions, {} rows; {kills} connection drops, {proxy_kills} proxy kills, \
         {pg_restarts} PostgreSQL restarts, {} connections, {} duplicate transactions",
        work.transactions,
        table.len(),
        consumer.reconnects,
        consumer.duplicates
    );
    assert!(
        consumer.reconnects > 1,
        "seed {seed}: the run never reconnected"
    );
}

/// How long the edges may refuse a client in a row: restarting an edge or
/// nats-server takes seconds; longer means an edge is gone or stuck.
const REFUSED_FOR: Duration = Duration::from_secs(30);

/// Notes a refused connection; fails the run when every attempt was
/// refused for [`REFUSED_FOR`].
fn still_refused(since: &mut Option<Instant>, event: &str, events: &[String]) {
    let first = *since.get_or_insert_with(Instant::now);
    assert!(
        first.elapsed() < REFUSED_FOR,
        "refused for {REFUSED_FOR:?}, last: {event}; recent:\n  {}",
        events[events.len().saturating_sub(12)..].join("\n  ")
    );
}

/// A live client of the scale-out mode: `*:sim` on one of the edges,
/// applied to model B, resuming with `after=` (on the other edge) whenever
/// its connection or its edge goes away.
struct LiveClient {
    client: Option<Client>,
    model: Model,
    /// The position of the last change applied.
    last: Option<String>,
    /// The edge to connect to next.
    edge: usize,
    changes: u64,
    reconnects: u64,
    events: Vec<String>,
    /// Since when every connection attempt was refused.
    refused_since: Option<Instant>,
}

impl LiveClient {
    fn recent(&self) -> String {
        self.events[self.events.len().saturating_sub(12)..].join("\n  ")
    }

    fn new() -> LiveClient {
        LiveClient {
            client: None,
            model: Model::default(),
            last: None,
            edge: 0,
            changes: 0,
            reconnects: 0,
            events: Vec::new(),
            refused_since: None,
        }
    }

    fn connect(&mut self, edges: &[Proxy]) {
        if self.client.is_some() {
            return;
        }
        self.edge = (self.edge + 1) % edges.len();
        let edge = &edges[self.edge];
        let mut url = format!("ws://127.0.0.1:{}/ws?query=*:sim", edge.port);
        if let Some(after) = &self.last {
            url.push_str(&format!("&after={after}"));
        }
        match edge.try_ws_url(&url) {
            Ok(c) => {
                self.client = Some(c);
                self.refused_since = None;
                self.reconnects += 1;
                self.events.push(format!(
                    "connected to edge {} after {:?}",
                    self.edge, self.last
                ));
            }
            // An edge restarting: try again on the next pump.
            Err((code @ (503 | 0), why)) => {
                let event = format!("edge {} refused: {code} {why}", self.edge);
                still_refused(&mut self.refused_since, &event, &self.events);
                if self.events.last() != Some(&event) {
                    self.events.push(event);
                }
            }
            Err(other) => panic!(
                "resuming after {:?} on edge {}: {other:?}; recent:\n  {}",
                self.last,
                self.edge,
                self.events[self.events.len().saturating_sub(12)..].join("\n  ")
            ),
        }
    }

    fn pump(&mut self, budget: Duration) {
        let deadline = Instant::now() + budget;
        while Instant::now() < deadline {
            let Some(c) = self.client.as_mut() else {
                return;
            };
            match c.next() {
                Some(Got::Text(t)) => {
                    let f = json(&t);
                    assert!(f["error"].is_null(), "unexpected frame {f}");
                    let pos = f["pos"].as_str().expect("pos").to_owned();
                    if let Some(last) = &self.last {
                        assert!(
                            pos > *last,
                            "{pos} after {last}: a change came twice or out of order; recent:\n  {}",
                            self.events[self.events.len().saturating_sub(12)..].join("\n  ")
                        );
                    }
                    self.model.apply(&f);
                    self.last = Some(pos);
                    self.changes += 1;
                }
                Some(Got::Closed(code, why)) => {
                    self.events.push(format!("closed {code} {why}"));
                    self.client = None;
                }
                None => {}
            }
        }
    }
}

/// Checks that the table `sim`, the workload's model and the models of the
/// live client and of the durable stream's client are equal; the table.
fn agree(seed: u64, work: &mut Workload, live: &Model, durable: &Model) -> Rows {
    let table = Model::read_table(&mut work.sql, "sim");
    assert_eq!(
        table, work.model,
        "seed {seed}: PostgreSQL and the workload model differ"
    );
    assert_eq!(
        live.rows("sim"),
        table,
        "seed {seed}: the live client's model differs"
    );
    assert_eq!(
        durable.rows("sim"),
        table,
        "seed {seed}: the durable stream's model differs"
    );
    table
}

/// Runs `step` (a pump of the live client and of a durable stream's
/// client) until both models equal `want`, for at most two minutes; `step`
/// answers each client's model and recent events, the live client first.
fn catch_up(seed: u64, want: &Rows, log: &[String], mut step: impl FnMut() -> [(Rows, String); 2]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let [(live, live_recent), (durable, durable_recent)] = step();
        if live == *want && durable == *want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: the clients never caught up (live {} rows, durable {} rows, table {}); \
             last steps: {:?}; live:\n  {live_recent}\ndurable:\n  {durable_recent}",
            live.len(),
            durable.len(),
            want.len(),
            &log[log.len().saturating_sub(10)..],
        );
    }
}

/// A durable stream's consumer on the edges: whole transactions applied to
/// its model, ACKs at random (confirmed ones with a reply), resuming on the
/// other edge after every loss.
struct DurableEdgeClient {
    slot: String,
    client: Option<Client>,
    model: Model,
    edge: usize,
    pending: Option<Vec<serde_json::Value>>,
    /// End of the last transaction applied.
    applied: u64,
    /// The last ACK JetStream confirmed (a reply came).
    acked: u64,
    duplicates: u64,
    events: Vec<String>,
    /// Since when every connection attempt was refused.
    refused_since: Option<Instant>,
}

impl DurableEdgeClient {
    fn recent(&self) -> String {
        self.events[self.events.len().saturating_sub(12)..].join("\n  ")
    }

    fn connect(&mut self, edges: &[Proxy]) {
        if self.client.is_some() {
            return;
        }
        self.edge = (self.edge + 1) % edges.len();
        let edge = &edges[self.edge];
        let url = format!(
            "ws://127.0.0.1:{}/v1/lr/stream?slotName={}",
            edge.port, self.slot
        );
        match edge.try_ws_url(&url) {
            Ok(c) => {
                self.client = Some(c);
                self.refused_since = None;
                self.pending = None;
                self.events.push(format!(
                    "durable connected to edge {}: acked {}, applied {}",
                    self.edge,
                    fmt_lsn(self.acked),
                    fmt_lsn(self.applied)
                ));
            }
            // NATS or the edge coming back: try again on the next pump.
            Err((code @ (409 | 503 | 0), why)) => {
                let event = format!("durable refused by edge {}: {code} {why}", self.edge);
                still_refused(&mut self.refused_since, &event, &self.events);
            }
            Err(other) => panic!(
                "opening the durable stream: {other:?}; recent:\n  {}",
                self.recent()
            ),
        }
    }

    fn pump(&mut self, rng: &mut Rng, budget: Duration) {
        let deadline = Instant::now() + budget;
        while Instant::now() < deadline {
            let Some(c) = self.client.as_mut() else {
                return;
            };
            let f = match c.next() {
                Some(Got::Text(t)) => json(&t),
                Some(Got::Closed(code, why)) => {
                    self.events.push(format!("durable closed {code} {why}"));
                    self.client = None;
                    return;
                }
                None => continue,
            };
            if let Some(a) = f["ack"].as_str() {
                self.acked = self.acked.max(lsn(a));
                continue;
            }
            assert!(
                f["error"].is_null() && f["warning"].is_null(),
                "unexpected frame {f}"
            );
            match f["action"].as_str() {
                Some("B") => {
                    assert!(self.pending.is_none(), "B inside a transaction: {f}");
                    self.pending = Some(Vec::new());
                }
                Some("I" | "U" | "D" | "T") => match self.pending.as_mut() {
                    Some(changes) => changes.push(f),
                    None => panic!("change outside a transaction: {f}"),
                },
                Some("C") => {
                    let changes = self
                        .pending
                        .take()
                        .unwrap_or_else(|| panic!("C without B: {f}"));
                    let end = lsn(f["end_lsn"].as_str().expect("end_lsn"));
                    assert!(
                        end > self.acked,
                        "transaction ending at {} delivered again although {} was acknowledged; recent:\n  {}",
                        fmt_lsn(end),
                        fmt_lsn(self.acked),
                        self.recent()
                    );
                    if end <= self.applied {
                        self.duplicates += 1;
                        continue;
                    }
                    for ch in &changes {
                        self.model.apply(ch);
                    }
                    self.applied = end;
                    if rng.chance(60) {
                        let ack = format!(r#"{{"lsn":"{}","reply":true}}"#, fmt_lsn(end));
                        if let Some(c) = self.client.as_mut() {
                            if c.ws.send(tungstenite::Message::Text(ack.into())).is_err() {
                                self.client = None;
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

#[test]
fn random_transactions_reach_live_clients_exactly_once_through_relay_edge_and_nats_faults() {
    use support::Launch;
    use walcast_cluster::nats::NatsServer;
    let (seed, mut rng, steps) = start_run("scale-out simulation ", 200);

    let mut cluster = Cluster::start_with(Config::default()).expect("cluster");
    cluster.create_database("simx").expect("database");
    let url = cluster.url("simx");
    let mut work = Workload::on(&cluster.conninfo("simx"));
    let mut nats = NatsServer::start().expect("nats-server (./scripts/setup.sh installs it)");
    let start = |extra: &[&str], slot: &str| {
        let p = Proxy::launch(&url, slot, extra, Launch::default());
        p.wait_healthy();
        p
    };
    let nats_url = nats.url();
    let relay_args = ["relay", "--nats-url", nats_url.as_str()];
    let edge_args = ["--nats-url", nats_url.as_str()];
    let mut relay = start(&relay_args, "simx_relay");
    let mut edges = vec![start(&edge_args, "simx_e"), start(&edge_args, "simx_e")];
    let mut live = LiveClient::new();
    live.connect(&edges);
    assert!(live.client.is_some(), "the first connection");
    // A durable stream on the edges: a snapshot of what is there, then the stream.
    for _ in 0..3 {
        work.transaction_with(&mut rng, false);
    }
    let (status, body) = edges[0]
        .post("/v1/streams", r#"{"name":"sim"}"#)
        .expect("create");
    assert_eq!(status, 200, "{body}");
    let slot = json(&body)["slotName"].as_str().expect("slot").to_owned();
    let before_snapshot = work.model.clone();
    for _ in 0..3 {
        work.transaction_with(&mut rng, false);
    }
    let mut durable = DurableEdgeClient {
        slot: slot.clone(),
        client: None,
        model: Model::default(),
        edge: 1,
        pending: None,
        applied: 0,
        acked: 0,
        duplicates: 0,
        events: Vec::new(),
        refused_since: None,
    };
    let (status, _, text) = edges[0].post_full(
        "/v1/snapshot/data",
        &format!(r#"{{"slotName":"{slot}","table":"sim","limit":10000}}"#),
    );
    assert_eq!(status, 200, "{text}");
    let page: Vec<serde_json::Value> = serde_json::from_str(&text).expect("page");
    assert!(page.len() < 10000, "one page holds the snapshot");
    for r in page {
        durable.model.put("sim", r);
    }
    assert_eq!(
        durable.model.rows("sim"),
        before_snapshot,
        "the snapshot is the table at creation"
    );

    let mut log = Vec::new();
    let (mut drops, mut relay_kills, mut edge_kills, mut nats_restarts, mut pg_restarts) =
        (0, 0, 0, 0, 0);
    for step in 0..steps {
        match rng.below(100) {
            0..=71 => {
                let d = work.transaction(&mut rng);
                log.push(format!("{step}: {d}"));
            }
            72..=79 if live.client.take().is_some() => {
                drops += 1;
                live.events.push(format!("{step}: connection dropped"));
            }
            80..=83 => {
                let _ = relay.child.kill();
                let _ = relay.child.wait();
                // Committed while no relay runs: published when it is back.
                work.transaction(&mut rng);
                relay = start(&relay_args, "simx_relay");
                relay_kills += 1;
                live.events.push(format!("{step}: relay killed"));
                log.push(format!("{step}: relay killed (SIGKILL) and restarted"));
            }
            84..=87 => {
                let i = rng.below(2) as usize;
                let _ = edges[i].child.kill();
                let _ = edges[i].child.wait();
                edges[i] = start(&edge_args, "simx_e");
                if live.edge == i {
                    live.client = None;
                }
                if durable.edge == i {
                    durable.client = None;
                    durable.events.push(format!("{step}: its edge killed"));
                }
                edge_kills += 1;
                live.events.push(format!("{step}: edge {i} killed"));
                log.push(format!("{step}: edge {i} killed (SIGKILL) and restarted"));
            }
            88..=89 => {
                nats.stop();
                for _ in 0..1 + rng.below(3) {
                    work.transaction(&mut rng);
                }
                live.pump(Duration::from_millis(rng.below(300)));
                nats.restart().expect("nats-server again");
                nats_restarts += 1;
                live.events.push(format!("{step}: nats-server restarted"));
                log.push(format!(
                    "{step}: nats-server stopped (SIGTERM) and restarted"
                ));
            }
            90..=91 => {
                cluster.restart("fast").expect("restart PostgreSQL");
                work.reconnect();
                pg_restarts += 1;
                live.events.push(format!("{step}: PostgreSQL restarted"));
                log.push(format!("{step}: PostgreSQL restarted"));
            }
            _ => {}
        }
        live.connect(&edges);
        live.pump(Duration::from_millis(rng.below(120) + 10));
        durable.connect(&edges);
        let budget = Duration::from_millis(rng.below(60) + 10);
        durable.pump(&mut rng, budget);
    }

    catch_up(seed, &work.model, &log, || {
        live.connect(&edges);
        live.pump(Duration::from_millis(100));
        durable.connect(&edges);
        durable.pump(&mut rng, Duration::from_millis(100));
        [
            (live.model.rows("sim"), live.recent()),
            (durable.model.rows("sim"), durable.recent()),
        ]
    });
    let table = agree(seed, &mut work, &live.model, &durable.model);
    println!(
        "seed {seed}: {} transactions, {} rows, {} changes delivered once each; {drops} connection \
         drops, {relay_kills} relay kills, {edge_kills} edge kills, {nats_restarts} nats-server \
         restarts, {pg_restarts} PostgreSQL restarts, {} connections; the durable stream got {} \
         transactions again after a reconnect (none at or before a confirmed ACK)",
        work.transactions,
        table.len(),
        live.changes,
        live.reconnects,
        durable.duplicates
    );
    assert!(
        live.reconnects > 1,
        "seed {seed}: the run never reconnected"
    );
}

/// The server's major version.
fn major_of(server: &Cluster) -> u32 {
    server
        .psql(
            "postgres",
            "SELECT current_setting('server_version_num')::int / 10000",
        )
        .expect("version")
        .parse()
        .expect("a number")
}

/// Waits until `check` holds, for at most a minute.
fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "not within a minute: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A standby of `primary` (on `port` when given), through the physical
/// slot `standby<n>`, set up to take over without a gap: on 17+ the
/// primary's logical walsenders wait for it (`synchronized_standby_slots`),
/// and it has replayed everything written before that took effect.
fn standby_for(primary: &Cluster, n: u32, port: Option<u16>, major: u32) -> Cluster {
    let name = format!("standby{n}");
    let config = Config {
        port,
        ..Config::default()
    };
    let standby = Cluster::standby_of(primary, &name, config).expect("a standby");
    if major >= 17 {
        let set = format!("ALTER SYSTEM SET synchronized_standby_slots = '{name}'");
        for sql in [set.as_str(), "SELECT pg_reload_conf()"] {
            primary.psql("postgres", sql).expect(sql);
        }
    }
    let written = primary
        .psql("postgres", "SELECT pg_current_wal_lsn()")
        .expect("pg_current_wal_lsn");
    wait_for("the new standby replayed the primary's WAL", || {
        standby
            .psql(
                "postgres",
                &format!("SELECT pg_last_wal_replay_lsn() >= '{written}'"),
            )
            .map(|t| t == "t")
            .unwrap_or(false)
    });
    standby
}

/// Whether the standby has every slot of `slots` synchronized and usable:
/// only then can it take over without a gap.
fn synced(standby: &Cluster, slots: &[&str]) -> bool {
    let names = slots
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(",");
    standby
        .psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_replication_slots \
                 WHERE slot_name IN ({names}) AND synced AND NOT temporary"
            ),
        )
        .map(|n| n == slots.len().to_string())
        .unwrap_or(false)
}

/// Without failover slots (15, 16), after a failover: the proxy reports
/// its slot lost (or changes that never happened on the promoted server),
/// the live client is closed with the reason and its resume answered 410,
/// and the durable stream answers 410.
fn told_of_the_failover(proxy: &Proxy, live: &mut LiveClient, consumer: &Consumer) {
    let deadline = Instant::now() + Duration::from_secs(30);
    if let Some(c) = live.client.as_mut() {
        let (code, why) = loop {
            match c.next() {
                Some(Got::Closed(code, why)) => break (code, why),
                Some(Got::Text(_)) => {}
                None => assert!(Instant::now() < deadline, "the live client was never told"),
            }
        };
        assert_eq!(code, 1013, "{why}");
    }
    let (status, health) = proxy.get("/healthz").expect("healthz");
    assert_eq!(status, 503, "{health}");
    let after = live.last.as_deref().expect("the live client got changes");
    match proxy.try_ws_url(&format!(
        "ws://127.0.0.1:{}/ws?query=*:sim&after={after}",
        proxy.port
    )) {
        Ok(_) => panic!("a live client resumed across the failover"),
        Err((status, body)) => assert_eq!(status, 410, "{body}"),
    }
    let durable = format!(
        "ws://127.0.0.1:{}/v1/lr/stream?slotName={}&acked={}",
        proxy.port,
        consumer.slot,
        fmt_lsn(consumer.acked)
    );
    let (status, body) = loop {
        match proxy.try_ws_url(&durable) {
            Ok(_) => panic!("the durable stream went on across the failover"),
            Err((409 | 503 | 0, _)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200))
            }
            Err(refused) => break refused,
        }
    };
    assert_eq!(status, 410, "{body}");
    assert_eq!(json(&body)["code"], "STREAM_LOST", "{body}");
}

#[test]
fn random_transactions_through_failovers_reach_every_client_exactly_once_or_are_told() {
    let (seed, mut rng, steps) = start_run("failover simulation ", 200);

    let mut primary = Cluster::start_with(Config::default()).expect("primary");
    primary.create_database("sim").expect("database");
    let major = major_of(&primary);
    let mut work = Workload::on(&primary.conninfo("sim"));
    let mut standby = standby_for(&primary, 1, None, major);
    // The proxy is given both servers for the one that takes writes: after
    // each failover a new standby takes the old primary's port.
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/sim?target_session_attrs=read-write",
        primary.port(),
        standby.port()
    );
    let proxy = Proxy::spawn(&url, "sim_proxy", &["--heartbeat-interval", "1"]);
    proxy.wait_healthy();
    let proxies = std::slice::from_ref(&proxy);
    let mut live = LiveClient::new();
    live.connect(proxies);
    assert!(live.client.is_some(), "the first connection");
    for _ in 0..3 {
        work.transaction_with(&mut rng, false);
    }
    let mut consumer = new_stream(&proxy, &mut work, &mut rng, 3, true);
    let slot = consumer.slot.clone();

    let mut log = Vec::new();
    let (mut drops, mut failovers, mut lossy) = (0, 0, 0);
    let (mut syncing, mut rebuilding) = (Duration::ZERO, Duration::ZERO);
    for step in 0..steps {
        let roll = rng.below(100);
        // At least one failover, half way through.
        let fail_over = (90..=91).contains(&roll) || (step == steps / 2 && failovers == 0);
        match roll {
            _ if fail_over => {
                if major >= 17 {
                    // A slot is synchronized once its position on the
                    // primary passes the standby's start: the clients go on
                    // reading and ACKing, and the primary logs its running
                    // transactions, which let a slot's restart point advance.
                    let began = Instant::now();
                    let deadline = began + Duration::from_secs(60);
                    while !synced(&standby, &["sim_proxy", &slot]) {
                        assert!(
                            Instant::now() < deadline,
                            "seed {seed}: the slots were not synchronized to the standby within a minute"
                        );
                        primary
                            .psql("postgres", "SELECT pg_log_standby_snapshot()")
                            .expect("pg_log_standby_snapshot");
                        consumer.ack_applied();
                        live.connect(proxies);
                        live.pump(Duration::from_millis(50));
                        consumer.connect(&proxy, &mut work.sql);
                        consumer.pump(&mut rng, Duration::from_millis(50));
                    }
                    syncing += began.elapsed();
                }
                let port = primary.port();
                primary.kill().expect("SIGKILL the primary");
                standby.promote().expect("promote");
                failovers += 1;
                log.push(format!("{step}: failover"));
                live.events.push(format!("{step}: failover"));
                consumer.events.push(format!("{step}: failover"));
                // Transactions the standby had not received when the
                // primary died are lost with it: the surviving history is
                // the promoted server's.
                work.conninfo = standby.conninfo("sim");
                work.reconnect();
                let table = Model::read_table(&mut work.sql, "sim");
                if table != work.model {
                    lossy += 1;
                    work.model = table;
                }
                if major < 17 {
                    // No failover slots: the loud path, then the run ends.
                    told_of_the_failover(&proxy, &mut live, &consumer);
                    println!(
                        "seed {seed}: PostgreSQL {major} has no failover slots: after {} \
                         transactions and {drops} connection drops, the failover at step {step} \
                         was told to the live and the durable client",
                        work.transactions
                    );
                    return;
                }
                // The old primary's port comes back as a standby of the new one.
                drop(std::mem::replace(&mut primary, standby));
                let began = Instant::now();
                standby = standby_for(&primary, failovers + 1, Some(port), major);
                rebuilding += began.elapsed();
            }
            0..=71 => {
                let d = work.transaction(&mut rng);
                log.push(format!("{step}: {d}"));
            }
            72..=79 if live.client.take().is_some() => {
                drops += 1;
                live.events.push(format!("{step}: connection dropped"));
            }
            80..=84 if consumer.client.take().is_some() => {
                drops += 1;
                consumer.events.push(format!("{step}: connection dropped"));
            }
            _ => {}
        }
        live.connect(proxies);
        live.pump(Duration::from_millis(rng.below(120) + 10));
        consumer.connect(&proxy, &mut work.sql);
        let budget = Duration::from_millis(rng.below(60) + 10);
        consumer.pump(&mut rng, budget);
    }

    let want = work.model.clone();
    catch_up(seed, &want, &log, || {
        live.connect(proxies);
        live.pump(Duration::from_millis(100));
        consumer.connect(&proxy, &mut work.sql);
        consumer.pump(&mut rng, Duration::from_millis(100));
        [
            (live.model.rows("sim"), live.recent()),
            (consumer.model.rows("sim"), consumer.recent()),
        ]
    });
    let table = agree(seed, &mut work, &live.model, &consumer.model);
    println!(
        "seed {seed}: {} transactions, {} rows; {failovers} failovers ({lossy} of them lost \
         transactions the standby had not received), {drops} connection drops; the live client got {} changes \
         once each over {} connections; the durable stream got {} transactions again after a \
         reconnect (none at or before a confirmed ACK); {syncing:?} waiting for slots to be \
         synchronized, {rebuilding:?} making standbys",
        work.transactions,
        table.len(),
        live.changes,
        live.reconnects,
        consumer.duplicates
    );
    assert!(failovers > 0, "seed {seed}: the run never failed over");
}
