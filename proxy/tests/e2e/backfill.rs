//! Snapshots inside the stream (`snapshot=1`): a real proxy and cluster,
//! tables written by concurrent transactions while their rows are read in
//! small chunks between watermarks; a client applying every frame in order
//! must end with exactly the table's rows. The writers' operations come from
//! a printed seed (`WALCAST_SEED=<seed>` replays them).

use crate::support;

use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::rng::seed;
use support::rows::{assert_same, item_operation, items, Rows, Writer};
use support::{encode, json, Client, Got, Proxy};
use walcast_tests::{cluster, TestDb};

const WAIT: Duration = Duration::from_secs(60);

/// A `snapshot=1` subscription to `query`.
fn snapshot(proxy: &Proxy, query: &str) -> Client {
    proxy.ws_params(&format!("query={}&snapshot=1", encode(query)))
}

/// What a snapshot client saw.
#[derive(Default)]
struct Seen {
    reads: usize,
    changes: usize,
    progress: Vec<Value>,
    done: Option<Value>,
}

/// Reads a live client's frames into `rows` until `stop` says so (or the
/// wait runs out).
fn read_until(
    c: &mut Client,
    rows: &mut Rows,
    seen: &mut Seen,
    what: &str,
    stop: impl FnMut(&Value, &Seen) -> bool,
) {
    read_frames(c, rows, seen, what, false, stop)
}

/// The same for a durable stream, ACKing every commit.
fn read_durable(
    c: &mut Client,
    rows: &mut Rows,
    seen: &mut Seen,
    what: &str,
    stop: impl FnMut(&Value, &Seen) -> bool,
) {
    read_frames(c, rows, seen, what, true, stop)
}

fn read_frames(
    c: &mut Client,
    rows: &mut Rows,
    seen: &mut Seen,
    what: &str,
    durable: bool,
    mut stop: impl FnMut(&Value, &Seen) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no {what} within {WAIT:?}");
        match c.next() {
            Some(Got::Text(t)) => {
                let v = json(&t);
                if durable {
                    assert!(v.get("error").is_none(), "{v}");
                }
                if v["type"] == "snapshot" {
                    if durable {
                        assert_ne!(v["state"], "failed", "{v}");
                    } else {
                        assert_eq!(seen.done, None, "a frame after done: {v}");
                    }
                    if v["state"] == "done" {
                        seen.done = Some(v.clone());
                    }
                    seen.progress.push(v.clone());
                } else if v["action"] == "R" {
                    if !durable {
                        assert_eq!(seen.done, None, "a read event after done: {v}");
                    }
                    seen.reads += 1;
                } else if durable && v["action"] == "C" {
                    let end = v["end_lsn"].as_str().expect("end_lsn");
                    c.send(&format!(r#"{{"lsn":"{end}"}}"#));
                } else {
                    seen.changes += 1;
                }
                rows.apply(&v);
                if stop(&v, seen) {
                    return;
                }
            }
            Some(Got::Closed(code, reason)) => panic!("closed with {code} {reason}"),
            None => {}
        }
    }
}

/// Writes a row and reads frames until it arrives: every change before it
/// was delivered.
fn sync(db: &mut TestDb, c: &mut Client, rows: &mut Rows, seen: &mut Seen, id: i64) {
    db.exec(&format!("INSERT INTO items VALUES ({id}, 0, 'sync')"));
    read_until(c, rows, seen, "the sync row", |v, _| {
        v["action"] == "I" && v["columns"]["id"] == id
    });
    rows.rows.remove(&format!("[{id}]"));
    db.exec(&format!("DELETE FROM items WHERE id = {id}"));
    read_until(c, rows, seen, "the sync delete", |v, _| {
        v["action"] == "D" && v["identity"]["id"] == id
    });
}

#[test]
fn a_chunked_snapshot_under_concurrent_writes_ends_with_the_tables_rows() {
    let seed = seed();
    println!("backfill seed {seed} (replay: WALCAST_SEED={seed})");
    let mut db = TestDb::new("backfill_model");
    items(&mut db, 3000);
    let proxy = Proxy::start(
        cluster(),
        &db.name,
        &format!("{}_proxy", db.name),
        &["--snapshot-chunk-rows", "37"],
    );
    let mut w = Writer::start(&db.name, seed, item_operation);
    // Some writes before the client comes, then it subscribes mid-stream.
    while w.count() < 50 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut c = snapshot(&proxy, "*:items");
    let mut rows = Rows::new(&["id"]);
    let mut seen = Seen::default();
    let before = w.count();
    read_until(&mut c, &mut rows, &mut seen, "snapshot done", |_, s| {
        s.done.is_some()
    });
    let during = w.count() - before;
    // Writes go on after the snapshot, then stop.
    w.write_more(100);
    w.stop();
    sync(&mut db, &mut c, &mut rows, &mut seen, -1);
    let table = Rows::read(&mut db, "items", &["id"]);
    let done = seen.done.clone().expect("done");
    println!(
        "{} chunks, {} read events, {} changes, {during} transactions during the snapshot",
        done["chunk"], seen.reads, seen.changes
    );
    assert!(
        during >= 20,
        "only {during} transactions ran during the snapshot"
    );
    assert!(done["chunk"].as_u64().unwrap_or(0) >= 50, "{done}");
    assert_eq!(done["rows"].as_u64(), Some(seen.reads as u64), "{done}");
    assert_eq!(
        seen.progress.len() as u64,
        done["chunk"].as_u64().unwrap_or(0)
    );
    assert_same(&rows, &table, seed);
    assert_eq!(proxy.metric("walcast_backfills_done_total"), 1);
    assert_eq!(proxy.metric("walcast_backfills_running"), 0);
    assert_eq!(
        proxy.metric("walcast_backfill_rows_total"),
        seen.reads as u64
    );
}

#[test]
fn composite_keys_with_key_updates_and_an_empty_table() {
    let seed = seed();
    println!("backfill seed {seed} (replay: WALCAST_SEED={seed})");
    let mut db = TestDb::new("backfill_pairs");
    db.exec(
        "CREATE TABLE pairs (a int, b text, v int, PRIMARY KEY (a, b)); \
         INSERT INTO pairs SELECT g % 50, 'k' || (g / 50), g FROM generate_series(1, 1500) g; \
         CREATE TABLE empty (id int PRIMARY KEY)",
    );
    let proxy = Proxy::start(
        cluster(),
        &db.name,
        &format!("{}_proxy", db.name),
        &["--snapshot-chunk-rows", "10"],
    );
    let mut w = Writer::start(&db.name, seed, |rng| {
        let a = rng.below(60);
        let b = format!("'k{}'", rng.below(35));
        match rng.below(5) {
            0 => format!("INSERT INTO pairs VALUES ({a}, {b}, 0) ON CONFLICT DO NOTHING;"),
            1 => format!("UPDATE pairs SET v = v + 1 WHERE a = {a} AND b = {b};"),
            2 => format!(
                "UPDATE pairs SET a = a + 1000 WHERE a = {a} AND b = {b} AND NOT EXISTS (SELECT 1 FROM pairs WHERE a = {a} + 1000 AND b = {b});"
            ),
            3 => format!("UPDATE pairs SET b = b || 'x' WHERE a = {a} AND b = {b} AND length(b) < 8 AND NOT EXISTS (SELECT 1 FROM pairs WHERE a = {a} AND b = {b} || 'x');"),
            _ => format!("DELETE FROM pairs WHERE a = {a} AND b = {b};"),
        }
    });
    let mut c = snapshot(&proxy, "*:pairs");
    let mut rows = Rows::new(&["a", "b"]);
    let mut seen = Seen::default();
    read_until(&mut c, &mut rows, &mut seen, "snapshot done", |_, s| {
        s.done.is_some()
    });
    w.stop();
    db.exec("INSERT INTO pairs VALUES (-1, 'sync', 0)");
    read_until(&mut c, &mut rows, &mut seen, "the sync row", |v, _| {
        v["columns"]["a"] == -1
    });
    let table = Rows::read(&mut db, "pairs", &["a", "b"]);
    assert_same(&rows, &table, seed);
    assert!(seen
        .done
        .as_ref()
        .is_some_and(|d| d["chunk"].as_u64() >= Some(100)));

    // An empty table: done with no rows, then live changes.
    let mut e = snapshot(&proxy, "*:empty");
    let first = e.texts(1, WAIT);
    let v = json(&first[0]);
    assert_eq!(
        (
            v["type"].as_str(),
            v["state"].as_str(),
            v["rows"].as_u64(),
            v["chunk"].as_u64()
        ),
        (Some("snapshot"), Some("done"), Some(0), Some(1)),
        "{v}"
    );
    db.exec("INSERT INTO empty VALUES (1)");
    let v = json(&e.texts(1, WAIT)[0]);
    assert_eq!(
        (v["action"].as_str(), &v["columns"]["id"]),
        (Some("I"), &Value::from(1))
    );
}

#[test]
fn filtered_snapshots_send_only_matching_rows_and_lose_nothing_across_a_burst() {
    let mut db = TestDb::new("backfill_filter");
    items(&mut db, 5000);
    // Slow enough that the burst lands while chunks are being read.
    let proxy = Proxy::start(
        cluster(),
        &db.name,
        &format!("{}_proxy", db.name),
        &[
            "--snapshot-chunk-rows",
            "100",
            "--snapshot-rows-per-second",
            "2000",
        ],
    );
    let mut c = snapshot(&proxy, "*:items:v.gte.90");
    let mut rows = Rows::new(&["id"]);
    let mut seen = Seen::default();
    read_until(&mut c, &mut rows, &mut seen, "a first chunk", |_, s| {
        !s.progress.is_empty()
    });
    // A burst of inserts in both halves of the filter, during the snapshot.
    db.exec("INSERT INTO items SELECT g, g % 100, 'burst' FROM generate_series(10001, 12000) g");
    read_until(&mut c, &mut rows, &mut seen, "snapshot done", |_, s| {
        s.done.is_some()
    });
    assert!(
        seen.progress.len() >= 2,
        "the burst came after the snapshot: {:?}",
        seen.progress
    );
    db.exec("INSERT INTO items VALUES (-1, 99, 'sync')");
    read_until(&mut c, &mut rows, &mut seen, "the sync row", |v, _| {
        v["columns"]["id"] == -1
    });
    rows.rows.remove("[-1]");
    db.exec("DELETE FROM items WHERE id = -1");
    let mut table = Rows::read(&mut db, "items", &["id"]);
    table
        .rows
        .retain(|_, v| v["v"].as_i64().is_some_and(|n| n >= 90));
    assert_same(&rows, &table, 0);
    // 5000 rows, 10% match: the filter was applied in the read.
    let done = seen.done.expect("done");
    assert_eq!(done["rows"].as_u64(), Some(seen.reads as u64));
    assert!(seen.reads < 1500, "{} read events", seen.reads);
}

#[test]
fn no_snapshot_is_held_between_chunks() {
    let mut db = TestDb::new("backfill_xmin");
    items(&mut db, 20000);
    let proxy = Proxy::start(
        cluster(),
        &db.name,
        &format!("{}_proxy", db.name),
        &[
            "--snapshot-chunk-rows",
            "500",
            "--snapshot-rows-per-second",
            "10000",
        ],
    );
    let mut watcher = postgres::Client::connect(&cluster().conninfo(&db.name), postgres::NoTls)
        .expect("watcher connects");
    let started = Instant::now();
    let mut c = snapshot(&proxy, "*:items");
    let mut rows = Rows::new(&["id"]);
    let mut seen = Seen::default();
    // Polls the proxy's sessions while the snapshot runs (in this thread,
    // between frames).
    let mut polls = 0u32;
    let mut polls_without = 0u32;
    let mut held: BTreeMap<String, (Instant, Instant)> = BTreeMap::new();
    let mut last_poll = Instant::now();
    read_until(&mut c, &mut rows, &mut seen, "snapshot done", |_, s| {
        if last_poll.elapsed() >= Duration::from_millis(5) {
            last_poll = Instant::now();
            let xmins: Vec<Option<String>> = watcher
                .query(
                    "SELECT backend_xmin::text FROM pg_stat_activity \
                     WHERE datname = current_database() AND backend_type = 'client backend' \
                     AND pid <> pg_backend_pid()",
                    &[],
                )
                .expect("pg_stat_activity")
                .iter()
                .map(|r| r.get(0))
                .collect();
            polls += 1;
            if xmins.iter().all(Option::is_none) {
                polls_without += 1;
            }
            for x in xmins.into_iter().flatten() {
                let now = Instant::now();
                held.entry(x).or_insert((now, now)).1 = now;
            }
        }
        s.done.is_some()
    });
    let longest = held
        .values()
        .map(|(first, last)| last.duration_since(*first))
        .max()
        .unwrap_or_default();
    println!(
        "{polls} polls, {polls_without} without any xmin, {} xmins seen, longest held {longest:?}",
        held.len()
    );
    assert_eq!(seen.reads, 20000);
    assert!(polls >= 50, "only {polls} polls");
    // Between chunks the proxy holds nothing (each watermark takes a new
    // transaction id, so each chunk's snapshot has an xmin of its own).
    assert!(polls_without > 0, "every poll saw an xmin");
    assert!(
        // A snapshot held across chunks would stay for the whole read
        // (at least 2 s at the rate limit).
        longest < Duration::from_millis(1000),
        "an xmin was held for {longest:?}"
    );
    // 20,000 rows at 10,000 rows/s.
    assert!(
        started.elapsed() >= Duration::from_millis(1800),
        "{:?}",
        started.elapsed()
    );

    // A client that leaves stops its snapshot.
    let mut gone = snapshot(&proxy, "*:items");
    let mut seen = Seen::default();
    read_until(
        &mut gone,
        &mut Rows::new(&["id"]),
        &mut seen,
        "a chunk",
        |_, s| !s.progress.is_empty(),
    );
    assert_eq!(proxy.metric("walcast_backfills_running"), 1);
    drop(gone);
    let left = Instant::now();
    let deadline = Instant::now() + WAIT;
    while proxy.metric("walcast_backfills_running") != 0 {
        assert!(
            Instant::now() < deadline,
            "the snapshot went on without its client"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("stopped {:?} after the client left", left.elapsed());
    assert_eq!(proxy.metric("walcast_backfills_done_total"), 1);
}

#[test]
fn snapshot_requests_are_checked_and_a_wasm_filter_sees_read_events() {
    let mut db = TestDb::new("backfill_checks");
    db.exec(
        "CREATE TABLE users (id int PRIMARY KEY, name text, email text); \
         INSERT INTO users VALUES (1, 'ann', 'ann@example.com'), (2, 'bob', NULL); \
         CREATE TABLE nokey (id int, v text); \
         CREATE TABLE parted (id int, r text, PRIMARY KEY (id, r)) PARTITION BY LIST (r); \
         CREATE TABLE parted_eu PARTITION OF parted FOR VALUES IN ('eu')",
    );
    let proxy = Proxy::start(cluster(), &db.name, &format!("{}_proxy", db.name), &[]);
    for (params, status, needle) in [
        ("query=*:users&snapshot=2", 400, "snapshot must be 1 or 0"),
        ("snapshot=1", 400, "needs query="),
        ("query=*:nokey&snapshot=1", 400, "has no primary key"),
        ("query=*:parted&snapshot=1", 400, "is partitioned"),
        ("query=*:users:id.eq.x&snapshot=1", 101, ""),
    ] {
        match proxy.try_ws_url(&format!("ws://127.0.0.1:{}/ws?{params}", proxy.port)) {
            Ok(mut c) => {
                assert_eq!(status, 101, "{params}");
                // The value does not fit the column: the read fails and says so.
                let (code, reason) = c.close_frame(WAIT).expect("close");
                assert_eq!(code, 1011, "{reason}");
                assert!(reason.contains("does not fit its column"), "{reason}");
            }
            Err((got, body)) => {
                assert_eq!(got, status, "{params}: {body}");
                assert!(body.contains(needle), "{params}: {body}");
            }
        }
    }
    // The first frame may ask for it too, and must name a query.
    let mut c = proxy.ws_params("");
    c.send(r#"{"subscribe":{"filter":{"id":"sha256:00"},"snapshot":true}}"#);
    let (code, reason) = c.close_frame(WAIT).expect("close");
    assert_eq!(code, 1008);
    assert!(reason.contains("needs a \"query\""), "{reason}");
    let mut c = proxy.ws_params("");
    c.send(r#"{"subscribe":{"query":"*:users","snapshot":true}}"#);
    let frames = c.texts(3, WAIT);
    let actions: Vec<Value> = frames.iter().map(|f| json(f)["action"].clone()).collect();
    assert_eq!(
        actions[..2],
        [Value::from("R"), Value::from("R")],
        "{frames:?}"
    );
    assert_eq!(json(&frames[2])["state"], "done");

    // Read events go through the client's WASM filter like changes.
    let wasm = support::example_filter("redact");
    let (status, body) = proxy.post_bytes("/v1/filters", "application/wasm", &wasm);
    assert_eq!(status, 200, "{body}");
    let id = json(&body)["id"].as_str().expect("id").to_owned();
    let mut c = proxy.ws_params(&format!("query=*:users&snapshot=1&filter={}", encode(&id)));
    let frames = c.texts(3, WAIT);
    let first = json(&frames[0]);
    assert_eq!(first["action"], "R");
    assert_eq!(first["columns"]["email"], "***", "{first}");
    assert_eq!(json(&frames[1])["columns"]["email"], Value::Null);
    db.exec("UPDATE users SET email = 'b@example.com' WHERE id = 2");
    let v = json(&c.texts(1, WAIT)[0]);
    assert_eq!(
        (v["action"].as_str(), &v["columns"]["email"]),
        (Some("U"), &Value::from("***"))
    );
}

#[test]
fn a_durable_stream_reads_current_rows_while_acks_go_on_and_resumes_after_a_disconnect() {
    let seed = seed();
    println!("backfill seed {seed} (replay: WALCAST_SEED={seed})");
    let mut db = TestDb::new("backfill_durable");
    items(&mut db, 3000);
    let proxy = Proxy::start(
        cluster(),
        &db.name,
        &format!("{}_proxy", db.name),
        &["--snapshot-chunk-rows", "37"],
    );
    // No exported snapshot: the rows are read inside the stream.
    let (status, body) = proxy
        .post("/v1/streams", r#"{"export_snapshot":false}"#)
        .expect("create");
    assert_eq!(status, 200, "{body}");
    let created = json(&body);
    assert_eq!(
        (&created["snapshot"], &created["snapshotExpiresAt"]),
        (&Value::Null, &Value::Null)
    );
    let slot = created["slotName"].as_str().expect("slot").to_owned();
    let (status, body) = proxy
        .post(
            "/v1/snapshot/data",
            &format!(r#"{{"slotName":"{slot}","table":"items"}}"#),
        )
        .expect("page");
    assert_eq!(status, 410, "{body}");
    assert!(body.contains("without an exported snapshot"), "{body}");
    let path = format!("/v1/streams/{slot}/snapshot");
    // The rows go on the stream: without a consumer there is nowhere to send them.
    let (status, body) = proxy.post(&path, r#"{"tables":["items"]}"#).expect("post");
    assert_eq!(status, 409, "{body}");
    for (bad, needle) in [
        (r#"{"tables":["nope"]}"#, "unknown table"),
        (r#"{"tables":[]}"#, "tables is empty"),
        (r#"{"table":"items"}"#, "unknown field"),
        (
            r#"{"tables":["items"],"after":{"items":[1,2]}}"#,
            "is not the table's key",
        ),
    ] {
        let (status, body) = proxy.post(&path, bad).expect("post");
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains(needle), "{bad}: {body}");
    }

    let mut w = Writer::start(&db.name, seed, item_operation);
    let url = |extra: &str| {
        format!(
            "ws://127.0.0.1:{}/v1/lr/stream?slotName={slot}{extra}",
            proxy.port
        )
    };
    let mut c = proxy.try_ws_url(&url("&snapshot=items")).expect("stream");
    let mut rows = Rows::new(&["id"]);
    let mut seen = Seen::default();
    // A third of the table, then the client goes away in the middle.
    read_durable(&mut c, &mut rows, &mut seen, "chunk 25", |_, s| {
        s.progress.len() >= 25
    });
    let next = seen.progress.last().expect("progress")["next"].clone();
    assert!(next.is_array(), "{next}");
    read_durable(&mut c, &mut rows, &mut seen, "a few more rows", |v, _| {
        v["action"] == "R"
    });
    drop(c);
    proxy.wait_gauge("walcast_stream_consumers", 0);

    // Back: the stream resumes after the last ACK; the snapshot goes on
    // from the last chunk the client had, asked for on the open stream.
    let mut c = proxy.try_ws_url(&url("")).expect("stream again");
    let body = format!(r#"{{"tables":["items"],"after":{{"items":{next}}}}}"#);
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, answer) = proxy.post(&path, &body).expect("post");
        if status == 202 {
            assert_eq!(json(&answer)["tables"], serde_json::json!(["public.items"]));
            break;
        }
        // The old consumer may still be leaving.
        assert_eq!(status, 409, "{answer}");
        assert!(Instant::now() < deadline, "{answer}");
        std::thread::sleep(Duration::from_millis(50));
    }
    seen.done = None;
    read_durable(&mut c, &mut rows, &mut seen, "snapshot done", |_, s| {
        s.done.is_some()
    });
    w.write_more(100);
    w.stop();
    db.exec("INSERT INTO items VALUES (-1, 0, 'sync')");
    read_durable(&mut c, &mut rows, &mut seen, "the sync row", |v, _| {
        v["columns"]["id"] == -1
    });
    rows.rows.remove("[-1]");
    db.exec("DELETE FROM items WHERE id = -1");
    let table = Rows::read(&mut db, "items", &["id"]);
    println!(
        "{} progress frames, {} read events, {} changes",
        seen.progress.len(),
        seen.reads,
        seen.changes
    );
    assert_same(&rows, &table, seed);
    // The second read started where the first stopped: not the whole table again.
    let second = seen.done.as_ref().expect("done")["rows"]
        .as_u64()
        .unwrap_or(0);
    assert!(second < 2500, "the resumed snapshot read {second} rows");
}

#[test]
fn a_million_rows_under_writes() {
    let seed = seed();
    println!("backfill seed {seed} (replay: WALCAST_SEED={seed})");
    let mut db = TestDb::new("backfill_million");
    db.exec(
        "CREATE TABLE big (id bigint PRIMARY KEY, v int); \
         INSERT INTO big SELECT g, 0 FROM generate_series(1, 1000000) g; ANALYZE big",
    );
    let proxy = Proxy::start(
        cluster(),
        &db.name,
        &format!("{}_proxy", db.name),
        &["--snapshot-chunk-rows", "5000"],
    );
    let mut w = Writer::start(&db.name, seed, |rng| {
        let id = 1 + rng.below(1_100_000);
        match rng.below(4) {
            0 => format!(
                "INSERT INTO big VALUES ({id}, 1) ON CONFLICT (id) DO UPDATE SET v = big.v + 1;"
            ),
            1 | 2 => format!("UPDATE big SET v = v + 1 WHERE id = {id};"),
            _ => format!("DELETE FROM big WHERE id = {id};"),
        }
    });
    let started = Instant::now();
    let mut c = snapshot(&proxy, "*:big");
    // id -> v, applied from frames (a compact model for a million rows).
    let mut rows: std::collections::HashMap<i64, i64> = std::collections::HashMap::new();
    let mut apply = |v: &Value| {
        let id = |o: &Value| o["id"].as_i64().expect("id");
        match v["action"].as_str() {
            Some("R" | "I" | "U") => {
                if v["identity"].is_object() {
                    rows.remove(&id(&v["identity"]));
                }
                rows.insert(id(&v["columns"]), v["columns"]["v"].as_i64().expect("v"));
            }
            Some("D") => {
                rows.remove(&id(&v["identity"]));
            }
            _ => {}
        }
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut done = None;
    let mut synced = false;
    while !synced {
        assert!(Instant::now() < deadline, "no end within 300 s");
        match c.next() {
            Some(Got::Text(t)) => {
                let v = json(&t);
                if v["type"] == "snapshot" && v["state"] == "done" {
                    done = Some((v.clone(), started.elapsed(), w.count()));
                    // The writer's last transaction commits before the sync row.
                    w.stop();
                    db.exec("INSERT INTO big VALUES (-1, -1)");
                }
                synced = v["columns"]["id"] == -1;
                apply(&v);
            }
            Some(Got::Closed(code, reason)) => panic!("closed with {code} {reason}"),
            None => {}
        }
    }
    let (frame, took, during) = done.expect("done");
    println!("{frame} after {took:?}, {during} transactions during the snapshot");
    assert!(
        during > 100,
        "only {during} transactions during the snapshot"
    );
    let table: std::collections::HashMap<i64, i64> = db
        .client
        .query("SELECT id, v FROM big", &[])
        .expect("read")
        .iter()
        .map(|r| (r.get(0), i64::from(r.get::<_, i32>(1))))
        .collect();
    assert_eq!(rows.len(), table.len(), "seed {seed}");
    let wrong: Vec<_> = table
        .iter()
        .filter(|(k, v)| rows.get(k) != Some(v))
        .take(5)
        .collect();
    assert!(wrong.is_empty(), "seed {seed}: {wrong:?}");
}

#[test]
fn snapshots_past_the_running_limit_wait_for_a_turn() {
    let mut db = TestDb::new("backfill_turns");
    items(&mut db, 1000);
    let proxy = Proxy::start(
        cluster(),
        &db.name,
        &format!("{}_proxy", db.name),
        &[
            "--snapshot-max-running",
            "1",
            "--snapshot-chunk-rows",
            "100",
            "--snapshot-rows-per-second",
            "2000",
        ],
    );
    let mut clients = [snapshot(&proxy, "*:items"), snapshot(&proxy, "*:items")];
    // One reads, the other waits for its turn, then reads.
    let mut saw_waiting = false;
    let mut done = [false, false];
    let deadline = Instant::now() + WAIT;
    while !done.iter().all(|d| *d) {
        assert!(Instant::now() < deadline, "snapshots did not end");
        let (running, waiting) = (
            proxy.metric("walcast_backfills_running"),
            proxy.metric("walcast_backfills_waiting"),
        );
        assert!(running <= 1, "{running} snapshots read at once");
        saw_waiting |= running == 1 && waiting == 1;
        for (i, c) in clients.iter_mut().enumerate() {
            match c.next() {
                Some(Got::Text(t)) => done[i] |= json(&t)["state"] == "done",
                Some(Got::Closed(code, reason)) => panic!("closed with {code} {reason}"),
                None => {}
            }
        }
    }
    assert!(saw_waiting, "the second snapshot never waited for its turn");
    assert_eq!(proxy.metric("walcast_backfills_done_total"), 2);
}
