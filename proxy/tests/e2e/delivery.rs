//! Live delivery through the change log: a client that reads gets
//! everything however big the burst, a client that stops reading or
//! answering pings is closed with a reason, one that falls out of the
//! buffer is told so, and a client that reconnects with `after` resumes
//! without a gap or a duplicate (also through a query and a WASM filter).
//! Real cluster, real proxy process, real websocket clients.

use crate::support;

use std::time::{Duration, Instant};
use support::{encode, json, Client, Got, Proxy};
use walcast_tests::{cluster, repo_root, TestDb};

const WAIT: Duration = Duration::from_secs(20);

fn setup(name: &str, extra: &[&str]) -> (TestDb, Proxy) {
    let mut db = TestDb::new(name);
    db.exec("CREATE TABLE items (id int PRIMARY KEY, kind text, payload text)");
    let proxy = Proxy::start(cluster(), &db.name, &format!("{}_proxy", db.name), extra);
    (db, proxy)
}

fn id_and_pos(frame: &str) -> (i64, String) {
    let v = json(frame);
    let id = v["columns"]["id"].as_i64().expect("columns.id");
    let pos = v["pos"].as_str().expect("pos").to_owned();
    (id, pos)
}

/// A value from `/proc/<pid>/status` in kB.
fn proc_kb(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

#[test]
fn a_throttled_reader_gets_a_whole_bulk_transaction_and_a_stalled_client_is_closed() {
    let (mut db, proxy) = setup("bulk", &["--stall-timeout", "5"]);
    let pid = proxy.child.id();
    // Opened first, never read: its socket fills, then it stalls.
    let stalled = proxy.ws_params(&format!("query={}", encode("insert:items")));
    let mut reader = proxy.ws_params(&format!("query={}", encode("insert:items")));
    let rows = 200_000usize;
    let reading = std::thread::spawn(move || {
        // About 20,000 frames per second, in order.
        let start = Instant::now();
        let mut last_id = 0i64;
        let mut got = 0usize;
        let deadline = start + Duration::from_secs(120);
        while got < rows && Instant::now() < deadline {
            match reader.next() {
                Some(Got::Text(t)) => {
                    let (id, _) = id_and_pos(&t);
                    assert_eq!(id, last_id + 1, "frames arrive in order, none missing");
                    last_id = id;
                    got += 1;
                    if got % 1000 == 0 {
                        let due = start + Duration::from_secs_f64(got as f64 / 20_000.0);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                }
                Some(Got::Closed(code, reason)) => panic!("reader closed: {code} {reason}"),
                None => {}
            }
        }
        (got, start.elapsed())
    });
    // 200,000 rows of about 500 bytes in one transaction.
    db.exec(&format!(
        "INSERT INTO items SELECT g, 'bulk', repeat('x', 480) FROM generate_series(1, {rows}) g"
    ));
    let (got, took) = reading.join().expect("reader thread");
    assert_eq!(got, rows, "the reading client got every row (in {took:?})");
    // The stalled client was closed for not reading (1013 stalled).
    proxy.wait_metric(
        "walcast_clients_closed_total{reason=\"stalled\"}",
        1,
        Duration::from_secs(30),
    );
    assert_eq!(
        proxy.metric("walcast_clients_closed_total{reason=\"fell_behind\"}"),
        0
    );
    drop(stalled);
    // Peak memory stayed under the buffer (256 MB) + 64 MB.
    let peak_mb = proc_kb(pid, "VmHWM:") / 1024;
    eprintln!("proxy peak RSS {peak_mb} MB for {rows} rows in one transaction");
    assert!(peak_mb < 256 + 64, "peak RSS {peak_mb} MB");
}

/// Closes counted for clients judged gone (not reading, not answering).
fn liveness_closes(proxy: &Proxy) -> u64 {
    proxy.metric("walcast_clients_closed_total{reason=\"stalled\"}")
        + proxy.metric("walcast_clients_closed_total{reason=\"ping_timeout\"}")
}

#[test]
fn slow_readers_get_every_row_whatever_their_ping_round_trip_and_a_frozen_one_is_closed() {
    // Three-second pings and a five-second stall timeout: the pings of this
    // test wait behind 4 to 20 s of frames in the socket buffers, so a
    // round-trip rule would close both readers. (Shorter settings would
    // close the small-buffer reader fairly: its kernel opens its window
    // only when half its buffer is free, about every 2 s at 200 frames/s.)
    let (mut db, proxy) = setup(
        "slow_readers",
        &["--ping-interval", "3", "--stall-timeout", "5"],
    );
    let q = format!("query={}", encode("insert:items"));
    let steady = proxy.ws_params(&q);
    let small = proxy.ws_with_rcvbuf(&format!("/ws?{q}"), 256 * 1024);
    // A small receive buffer: once the client stops reading, its kernel
    // stops taking bytes at once (a large one takes bytes for a while,
    // which counts as reading).
    let mut frozen = proxy.ws_with_rcvbuf(&format!("/ws?{q}"), 64 * 1024);
    let rows = 4_000usize;
    let reader = |mut c: Client, per_second: f64| {
        std::thread::spawn(move || {
            let mut last = 0i64;
            c.read_at(per_second, rows, Duration::from_secs(90), |t| {
                let (id, _) = id_and_pos(t);
                assert_eq!(id, last + 1, "frames arrive in order, none missing");
                last = id;
            });
            last
        })
    };
    let (steady, small) = (reader(steady, 1000.0), reader(small, 200.0));
    // About 2 MB in one transaction: 4 s of reading for the faster
    // client, 20 s for the slower, most of it in the socket buffers.
    db.exec(&format!(
        "INSERT INTO items SELECT g, 'bulk', repeat('x', 480) FROM generate_series(1, {rows}) g"
    ));
    // The frozen client reads a little, then takes nothing more: it is
    // closed within the documented bound: the longer of four ping
    // intervals and the stall timeout and a second (12 s).
    assert_eq!(frozen.texts(100, WAIT).len(), 100);
    // The bound counts from the client's last sign of life: the last byte
    // its kernel took (then its buffer is full).
    let took = frozen.silent_until(|| liveness_closes(&proxy) >= 1);
    eprintln!("the frozen client was closed {took:?} after it took its last byte");
    assert!(
        took <= Duration::from_millis(13_500),
        "closed after {took:?}"
    );
    assert_eq!(steady.join().expect("1,000 frames/s reader"), rows as i64);
    assert_eq!(small.join().expect("200 frames/s reader"), rows as i64);
    let (_, metrics) = proxy.get("/metrics").expect("metrics");
    let closed: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("walcast_clients_closed_total"))
        .collect();
    assert_eq!(
        liveness_closes(&proxy),
        1,
        "only the frozen client was closed: {closed:?}"
    );
    drop(frozen);
}

#[test]
fn a_reader_slower_than_the_buffer_holds_is_closed_with_the_reason() {
    let (mut db, proxy) = setup("slow_reader", &["--buffer-size", "1MB"]);
    let mut slow = proxy.ws_params(&format!("query={}", encode("insert:items")));
    // 20 MB of changes: more than the buffer (1 MB) and the sockets hold.
    let rows = 20_000;
    db.exec(&format!(
        "INSERT INTO items SELECT g, 'a', repeat('y', 1000) FROM generate_series(1, {rows}) g"
    ));
    // The client reads nothing until the proxy has it all, then reads what
    // its socket holds and finds the close.
    proxy.wait_metric(
        "walcast_changes_by_action_total{action=\"insert\"}",
        rows as u64,
        WAIT,
    );
    let mut frames = 0;
    let deadline = Instant::now() + WAIT;
    let (code, reason) = loop {
        match slow.next() {
            Some(Got::Text(_)) => frames += 1,
            Some(Got::Closed(c, r)) => break (c, r),
            None => assert!(Instant::now() < deadline, "the slow client was not closed"),
        }
    };
    assert_eq!(code, 1013, "{reason}");
    assert!(
        reason.starts_with("fell behind: ") && reason.contains("the buffer holds"),
        "{reason}"
    );
    assert!(frames < rows, "{frames}");
    assert_eq!(
        proxy.metric("walcast_clients_closed_total{reason=\"fell_behind\"}"),
        1
    );
    assert!(proxy.metric("walcast_buffer_evicted_total") > 0);
}

/// Reads `n` frames, then drops the connection; returns their ids and the
/// last position.
fn read_then_drop(mut c: Client, n: usize) -> (Vec<i64>, String) {
    let got = c.texts(n, WAIT);
    assert_eq!(got.len(), n);
    let parsed: Vec<(i64, String)> = got.iter().map(|t| id_and_pos(t)).collect();
    let last = parsed.last().map(|p| p.1.clone()).expect("a frame");
    (parsed.into_iter().map(|p| p.0).collect(), last)
}

#[test]
fn a_client_resumes_with_after_without_a_gap_or_a_duplicate() {
    let (mut db, proxy) = setup("resume", &[]);
    let wat = std::fs::read(repo_root().join("filters/examples/wat/inserts_only.wat"))
        .expect("the WAT example");
    let (status, body) = proxy.post_bytes("/v1/filters", "application/wasm", &wat);
    assert_eq!(status, 200, "{body}");
    let filter = json(&body)["id"].as_str().expect("id").to_owned();
    let subscriptions = [
        format!("query={}", encode("insert:items")),
        format!("query={}", encode("insert:items:kind.eq.even")),
        format!("filter={filter}"),
    ];
    let clients: Vec<Client> = subscriptions.iter().map(|s| proxy.ws_params(s)).collect();
    // 1000 rows in one transaction; every other one is "even".
    db.exec(
        "INSERT INTO items SELECT g, CASE WHEN g % 2 = 0 THEN 'even' ELSE 'odd' END, 'p' \
         FROM generate_series(1, 1000) g",
    );
    let expected: [Vec<i64>; 3] = [
        (1..=1000).collect(),
        (1..=1000).filter(|i| i % 2 == 0).collect(),
        (1..=1000).collect(),
    ];
    // Each is dropped mid-burst.
    let mut resume_at = Vec::new();
    for (client, all) in clients.into_iter().zip(&expected) {
        let (first, after) = read_then_drop(client, 150);
        assert_eq!(first, all[..150]);
        resume_at.push(after);
    }
    // More changes while they are away: an update (not an insert) and an odd row.
    db.exec(
        "UPDATE items SET payload = 'q' WHERE id = 1; INSERT INTO items VALUES (1001, 'odd', 'x')",
    );
    let mut again = Vec::new();
    for ((sub, after), all) in subscriptions.iter().zip(&resume_at).zip(&expected) {
        let mut c = proxy.ws_params(&format!("{sub}&after={after}"));
        let mut want = all[150..].to_vec();
        if !sub.contains("even") {
            want.push(1001);
        }
        let rest = c.texts(want.len(), WAIT);
        let ids: Vec<i64> = rest.iter().map(|t| id_and_pos(t).0).collect();
        assert_eq!(ids, want, "{sub}: exactly the rest");
        c.expect_silence(Duration::from_millis(300));
        again.push(c);
    }
    // Then the live stream.
    db.exec("INSERT INTO items VALUES (1002, 'even', 'live')");
    for (c, sub) in again.iter_mut().zip(&subscriptions) {
        let live = c.texts(1, WAIT);
        assert_eq!(id_and_pos(&live[0]).0, 1002, "{sub}");
    }
    // The first frame may carry `after` too.
    let mut first_frame = proxy.ws_params("");
    let mut probe = proxy.ws_params(&format!("query={}", encode("insert:items")));
    db.exec("INSERT INTO items VALUES (200001, 'odd', 'a'), (200002, 'odd', 'b')");
    let two = probe.texts(2, WAIT);
    let (_, pos) = id_and_pos(&two[0]);
    first_frame.send(&format!(
        r#"{{"subscribe":{{"query":"insert:items","after":"{pos}"}}}}"#
    ));
    let got = first_frame.texts(1, WAIT);
    assert_eq!(id_and_pos(&got[0]).0, 200002);
    first_frame.expect_silence(Duration::from_millis(300));
}

#[test]
fn a_position_older_than_the_buffer_gets_410_with_the_oldest_held() {
    let (mut db, proxy) = setup("gone", &["--buffer-size", "1MB"]);
    let mut probe = proxy.ws_params(&format!("query={}", encode("insert:items")));
    db.exec("INSERT INTO items VALUES (1, 'a', 'first')");
    let (_, first) = id_and_pos(&probe.texts(1, WAIT)[0]);
    drop(probe);
    db.exec("INSERT INTO items SELECT g, 'a', repeat('z', 900) FROM generate_series(2, 4001) g");
    // All of it in (and the first ones dropped from the 1 MB buffer).
    proxy.wait_metric(
        "walcast_changes_by_action_total{action=\"insert\"}",
        4001,
        WAIT,
    );
    assert!(proxy.metric("walcast_buffer_evicted_total") > 0);
    let url = format!(
        "ws://127.0.0.1:{}/ws?query={}&after={first}",
        proxy.port,
        encode("insert:items")
    );
    let (status, body) = match proxy.try_ws_url(&url) {
        Ok(_) => panic!("a position the buffer dropped was accepted"),
        Err(e) => e,
    };
    assert_eq!(status, 410, "{body}");
    let v = json(&body);
    assert_eq!(v["code"], "POSITION_GONE");
    let oldest = v["oldest"].as_str().expect("oldest");
    assert!(oldest > first.as_str(), "{oldest} vs {first}");
    assert!(
        v["error"].as_str().expect("error").contains("re-sync"),
        "{v}"
    );
    // The same through the first frame: an error frame, then 1008.
    let mut c = proxy.ws_params("");
    c.send(&format!(
        r#"{{"subscribe":{{"query":"insert:items","after":"{first}"}}}}"#
    ));
    match c.next_within(WAIT) {
        Some(Got::Text(t)) => {
            let v = json(&t);
            assert_eq!(v["code"], "POSITION_GONE", "{t}");
            assert_eq!(v["oldest"].as_str(), Some(oldest));
        }
        other => panic!("expected an error frame, got {other:?}"),
    }
    assert_eq!(c.close_frame(WAIT).map(|c| c.0), Some(1008));
    // A position that does not parse is a 400.
    let bad = format!(
        "ws://127.0.0.1:{}/ws?query={}&after=0/16B3748",
        proxy.port,
        encode("insert:items")
    );
    let (status, body) = proxy.try_ws_url(&bad).err().expect("refused");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid position"), "{body}");
}

#[test]
fn a_client_that_stops_answering_pings_is_closed_within_two_intervals() {
    let (mut db, proxy) = setup("pings", &["--ping-interval", "1"]);
    // This one reads (and so answers pings: tungstenite replies while reading).
    let mut alive = proxy.ws_params(&format!("query={}", encode("insert:items")));
    // This one never reads, so it never answers.
    let silent = proxy.ws_params(&format!("query={}", encode("insert:items")));
    let start = Instant::now();
    let took = {
        let deadline = start + Duration::from_secs(10);
        loop {
            assert!(alive.next().is_none(), "nothing to receive yet");
            if proxy.metric("walcast_clients_closed_total{reason=\"ping_timeout\"}") >= 1 {
                break start.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "the silent client was not closed"
            );
        }
    };
    assert!(took <= Duration::from_millis(2500), "closed after {took:?}");
    // The client that answers is still served.
    db.exec("INSERT INTO items VALUES (1, 'a', 'still here')");
    assert_eq!(alive.texts(1, WAIT).len(), 1);
    assert_eq!(
        proxy.metric("walcast_clients_closed_total{reason=\"ping_timeout\"}"),
        1
    );
    // The silent one finds pings, then the close with its reason.
    let mut silent = silent;
    let (code, reason) = silent.close_frame(WAIT).expect("a close frame");
    assert_eq!(code, 1001, "{reason}");
    assert!(reason.contains("no answer to a ping"), "{reason}");
}

#[test]
fn ten_thousand_idle_clients_stay_small() {
    // These clients never read, so they never answer a ping: with the
    // default interval, the first ones would be closed (no pong within two
    // intervals) before the last ones connect on a busy machine.
    let (mut db, proxy) = setup(
        "idle",
        &["--max-clients", "10000", "--ping-interval", "600"],
    );
    let pid = proxy.child.id();
    let before_kb = proc_kb(pid, "VmRSS:");
    let n = 10_000;
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        // A thousand different queries: groups are shared by identical ones.
        // Each keeps a live view (a filter, updates and deletes wanted),
        // empty while nothing was sent.
        let q = encode(&format!("*:items:id.eq.{}", i % 1000));
        clients.push(proxy.ws_params(&format!("query={q}")));
    }
    proxy.wait_metric("walcast_clients", n as u64, WAIT);
    let rss_mb = proc_kb(pid, "VmRSS:") / 1024;
    eprintln!(
        "proxy RSS with {n} idle clients: {rss_mb} MB (before: {} MB)",
        before_kb / 1024
    );
    assert!(rss_mb < 150, "RSS {rss_mb} MB with {n} idle clients");
    assert_eq!(proxy.metric("walcast_match_groups"), 1000);
    // They are live: the ones whose query matches get the change.
    db.exec("INSERT INTO items VALUES (7, 'a', 'x')");
    for i in [7usize, 1007, 9007] {
        let got = clients[i].texts(1, WAIT);
        assert_eq!(id_and_pos(&got[0]).0, 7);
    }
    clients[8].expect_silence(Duration::from_millis(200));
    // The proxy closes first, so the 10,000 closed connections do not hold
    // this machine's ephemeral ports in TIME_WAIT for the tests after it.
    drop(proxy);
    drop(clients);
}

/// The views test's admin token and JWT secret.
const VIEW_ADMIN: &str = "views-admin";
const VIEW_SECRET: &str = "views-secret-of-at-least-thirty-two-bytes";

/// A filtered view: its subscription, the SQL that selects the same rows,
/// and the marker row after which it has seen every change.
struct ViewClient {
    query: &'static str,
    sql: &'static str,
    snapshot: bool,
    client: Client,
    rows: support::rows::Rows,
    last_marker: i64,
}

impl ViewClient {
    fn open(proxy: &Proxy, query: &'static str, sql: &'static str, snapshot: bool) -> ViewClient {
        ViewClient::open_as(proxy, VIEW_ADMIN, query, sql, snapshot)
    }

    /// The same with a token (a user's JWT, or the admin token).
    fn open_as(
        proxy: &Proxy,
        token: &str,
        query: &'static str,
        sql: &'static str,
        snapshot: bool,
    ) -> ViewClient {
        let params = format!(
            "query={}{}&access_token={}",
            encode(query),
            if snapshot { "&snapshot=1" } else { "" },
            encode(token)
        );
        ViewClient {
            query,
            sql,
            snapshot,
            client: proxy.ws_params(&params),
            rows: support::rows::Rows::new(&["id"]),
            last_marker: 0,
        }
    }

    /// Applies frames until `stop` holds for one; `done` frames end a re-sync.
    fn read_until(&mut self, seed: u64, mut stop: impl FnMut(&serde_json::Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(
                Instant::now() < deadline,
                "seed {seed}: {} waited too long",
                self.query
            );
            match self.client.next() {
                Some(Got::Text(t)) => {
                    let v = json(&t);
                    self.rows.apply(&v);
                    if stop(&v) {
                        return;
                    }
                }
                Some(Got::Closed(code, reason)) => {
                    panic!("seed {seed}: {} closed with {code} {reason}", self.query)
                }
                None => {}
            }
        }
    }
}

#[test]
fn filtered_views_hear_of_rows_that_are_deleted_or_leave_and_end_equal_to_their_query() {
    use support::rows::{assert_same, item_operation, items, Rows, Writer};
    let seed = support::rng::seed();
    eprintln!("seed {seed} (WALCAST_SEED={seed} replays it)");
    let mut db = TestDb::new("views");
    items(&mut db, 1500);
    // Some rows without a pad, for `is.null`.
    db.exec("UPDATE items SET pad = NULL WHERE id % 9 = 0");
    let proxy = Proxy::start(
        cluster(),
        &db.name,
        "views_proxy",
        &["--jwt-secret", VIEW_SECRET, "--token", VIEW_ADMIN],
    );
    // A user whose rules filter rows: its query is narrowed by them.
    let user = support::hs256(
        VIEW_SECRET,
        serde_json::json!({"sub": "u", "exp": support::unix_now() + 600,
            "walcast": {"tables": ["public.items"], "row_filter": "v.lt.40"}}),
    );
    let mut views = vec![
        ViewClient::open_as(
            &proxy,
            &user,
            "*:items:pad.like.\"p%\"",
            "v < 40 AND pad LIKE 'p%'",
            true,
        ),
        ViewClient::open(&proxy, "*:items:v.lt.30", "v < 30", true),
        ViewClient::open(
            &proxy,
            "*:items:v.gte.50:v.lt.60",
            "v >= 50 AND v < 60",
            true,
        ),
        ViewClient::open(&proxy, "*:items:v.in.(1,2,3,4,5)", "v IN (1,2,3,4,5)", true),
        ViewClient::open(&proxy, "*:items:pad.like.\"ppp%\"", "pad LIKE 'ppp%'", true),
        ViewClient::open(&proxy, "*:items:v.eq.7", "v = 7", true),
        ViewClient::open(
            &proxy,
            "*:items:pad.is.null:v.gt.20",
            "pad IS NULL AND v > 20",
            true,
        ),
        // Without a snapshot it holds only what it was sent since.
        ViewClient::open(&proxy, "*:items:v.lt.30", "v < 30", false),
    ];
    // Updates of `v` move rows in and out of every filter; keys change;
    // rows are deleted; a truncate empties the table halfway.
    let mut writer = Writer::start(&db.name, seed, item_operation);
    // A view that drops its connection re-syncs with a snapshot (the
    // documented way: rows not read again by its `done` are gone).
    let mut resync = ViewClient::open(&proxy, "*:items:v.lt.50", "v < 50", true);
    writer.write_more(100);
    for v in views.iter_mut() {
        let _ = v.client.next_within(Duration::from_millis(50));
    }
    resync.read_until(seed, |f| f["type"] == "snapshot" && f["state"] == "done");
    drop(std::mem::replace(
        &mut resync.client,
        proxy.ws_params(&format!(
            "query={}&snapshot=1&access_token={VIEW_ADMIN}",
            encode(resync.query)
        )),
    ));
    let before: std::collections::BTreeSet<String> = resync.rows.rows.keys().cloned().collect();
    let mut reread = std::collections::BTreeSet::new();
    let mut touched = std::collections::BTreeSet::new();
    resync.read_until(seed, |f| {
        let key = |o: &serde_json::Value| format!("[{}]", o["id"]);
        match f["action"].as_str() {
            Some("R") => {
                reread.insert(key(&f["columns"]));
            }
            Some("I" | "U") => {
                touched.insert(key(&f["columns"]));
            }
            _ => {}
        }
        f["type"] == "snapshot" && f["state"] == "done"
    });
    for k in before {
        if !reread.contains(&k) && !touched.contains(&k) {
            resync.rows.rows.remove(&k);
        }
    }
    views.push(resync);
    db.exec("TRUNCATE items; INSERT INTO items SELECT g, g % 100, CASE WHEN g % 9 = 0 THEN NULL ELSE repeat('p', (g % 5)::int) END FROM generate_series(1, 800) g");
    writer.write_more(300);
    writer.stop();
    assert!(writer.count() > 50, "seed {seed}: the writer wrote");
    // One last transaction: a marker row for every view, in id order.
    let markers = [
        (900_001, 7, "'pppp'"),
        (900_002, 55, "'x'"),
        (900_003, 3, "'x'"),
        (900_004, 90, "NULL"),
    ];
    let values: Vec<String> = markers
        .iter()
        .map(|(id, v, pad)| format!("({id}, {v}, {pad})"))
        .collect();
    db.exec(&format!("INSERT INTO items VALUES {}", values.join(", ")));
    for view in views.iter_mut() {
        let matching: Vec<i64> = db
            .client
            .query(
                &format!(
                    "SELECT id FROM items WHERE id > 900000 AND ({}) ORDER BY id",
                    view.sql
                ),
                &[],
            )
            .expect("markers")
            .iter()
            .map(|r| r.get(0))
            .collect();
        view.last_marker = *matching.last().expect("a marker for every view");
        let last = view.last_marker;
        view.read_until(seed, |f| f["action"] == "I" && f["columns"]["id"] == last);
        let table = Rows::read(
            &mut db,
            &format!("(SELECT * FROM items WHERE {})", view.sql),
            &["id"],
        );
        if view.snapshot {
            eprintln!("{}: {} rows", view.query, view.rows.rows.len());
            assert_same(&view.rows, &table, seed);
        } else {
            // Only rows that match now, as they are now.
            for (k, row) in &view.rows.rows {
                assert_eq!(
                    table.rows.get(k),
                    Some(row),
                    "seed {seed}: {} holds {k} which its query does not select now",
                    view.query
                );
            }
        }
    }
    assert!(proxy.metric("walcast_view_rows") > 0, "views are counted");
}
