//! Durable streams end to end: /v1/init, snapshot pages inside the slot's
//! snapshot, /v1/lr/stream with ACKs and resume, one consumer per slot,
//! listing and deleting, heartbeats, the lag guard and every bad input.

use crate::support;

use std::time::{Duration, Instant};
use support::durable::{any_transaction, frame, init, reply, stream, transaction};
use support::model::Model;
use support::{encode, json, Proxy};
use walcast_tests::{cluster, TestDb};

const WAIT: Duration = Duration::from_secs(15);

fn confirmed_flush(db: &mut TestDb, slot: &str) -> String {
    db.client
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .expect("slot row")
        .get(0)
}

/// Waits until the slot's confirmed position reaches `at` and returns it.
/// The proxy's ACK reply means PostgreSQL has been sent the position; the
/// walsender records it in the slot as it reads it, a moment later.
fn confirmed_reaching(db: &mut TestDb, slot: &str, at: &str) -> walcast_format::Lsn {
    let at: walcast_format::Lsn = at.parse().expect("an LSN");
    let deadline = Instant::now() + WAIT;
    loop {
        let now: walcast_format::Lsn = confirmed_flush(db, slot).parse().expect("an LSN");
        if now >= at {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the slot {slot} stayed confirmed at {now}, behind {at}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn setup(name: &str, extra: &[&str]) -> (TestDb, Proxy) {
    let mut db = TestDb::new(name);
    db.exec(
        "CREATE TABLE items (id int PRIMARY KEY, name text, n numeric, at timestamptz); \
         CREATE TABLE nokey (a int, b text)",
    );
    let proxy = Proxy::start(cluster(), &db.name, &format!("{}_proxy", db.name), extra);
    (db, proxy)
}

fn read_pages(proxy: &Proxy, slot: &str, limit: usize, keyset: bool) -> Vec<serde_json::Value> {
    let mut rows = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let body = if keyset {
            match &after {
                Some(a) => format!(
                    r#"{{"slotName":"{slot}","table":"items","limit":{limit},"after":{a}}}"#
                ),
                None => format!(r#"{{"slotName":"{slot}","table":"items","limit":{limit}}}"#),
            }
        } else {
            format!(
                r#"{{"slotName":"{slot}","table":"public.items","offset":{},"limit":{limit},"order_by":{{"column":"name","order":"desc"}}}}"#,
                rows.len()
            )
        };
        let (status, headers, text) = proxy.post_full("/v1/snapshot/data", &body);
        assert_eq!(status, 200, "{text}");
        let page: Vec<serde_json::Value> =
            serde_json::from_str(&text).expect("page is a JSON array");
        assert!(page.len() <= limit);
        assert!(
            headers.contains(&format!("x-walcast-rows: {}", page.len())),
            "{headers}"
        );
        if page.is_empty() {
            return rows;
        }
        if keyset {
            let last_id = page[page.len() - 1]["id"].clone();
            assert!(
                headers.contains(&format!("x-walcast-after: [{last_id}]")),
                "{headers}"
            );
            after = Some(format!("[{last_id}]"));
        }
        rows.extend(page);
    }
}

#[test]
fn snapshot_pages_then_the_stream_reproduce_the_table() {
    let (mut db, proxy) = setup("durable_snapshot", &[]);
    db.exec(
        "INSERT INTO items SELECT g, 'item ' || g, g * 1.5, '2026-01-01'::timestamptz + g * interval '1 minute' \
         FROM generate_series(1, 2500) g",
    );
    let created = init(&proxy, "/v1/init");
    let slot = created["slotName"].as_str().expect("slotName").to_owned();
    assert!(slot.starts_with("walcast_"), "{slot}");
    assert!(created["snapshot"].is_string());
    let lsn = created["lsn"].as_str().expect("lsn");
    assert!(lsn.contains('/'));

    // Writes after the slot: they belong to the stream, not the snapshot.
    db.exec("UPDATE items SET name = 'changed' WHERE id % 7 = 0");
    db.exec("DELETE FROM items WHERE id % 11 = 0");
    db.exec("INSERT INTO items SELECT g, 'new ' || g, 0, now() FROM generate_series(2501, 2600) g");
    db.exec("UPDATE items SET id = id + 10000 WHERE id BETWEEN 100 AND 110");

    // The snapshot shows the table as it was when the slot was created,
    // whichever way it is paged.
    let keyset = read_pages(&proxy, &slot, 1000, true);
    let offset = read_pages(&proxy, &slot, 700, false);
    assert_eq!(keyset.len(), 2500);
    assert_eq!(offset.len(), 2500);
    let mut by_offset: Vec<_> = offset.clone();
    by_offset.sort_by_key(|r| r["id"].as_i64());
    assert_eq!(keyset, by_offset, "both pagings read the same rows");
    assert_eq!(keyset[0]["name"], "item 1");
    assert_eq!(keyset[0]["at"], "2026-01-01T00:01:00+00:00");
    assert_eq!(keyset[0]["n"], serde_json::json!(1.5));
    // Offset pages follow order_by (name descending, then the key).
    let names: Vec<&str> = offset
        .iter()
        .map(|r| r["name"].as_str().unwrap_or(""))
        .collect();
    let mut sorted = names.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(names, sorted);

    let mut model = Model::default();
    for r in keyset {
        model.put("items", r);
    }
    db.exec("INSERT INTO items VALUES (-1, 'marker', 0, now())");
    let mut c = stream(&proxy, &slot);
    loop {
        let (_, changes, _) = transaction(&mut c);
        let mut done = false;
        for ch in &changes {
            model.apply(ch);
            done |= ch["columns"]["id"] == -1;
        }
        if done {
            break;
        }
    }
    assert_eq!(
        model.rows("items"),
        Model::read_table(&mut db.client, "items")
    );

    // Opening the stream ended the snapshot.
    let (status, body) = proxy
        .post(
            "/v1/snapshot/data",
            &format!(r#"{{"slotName":"{slot}","table":"items"}}"#),
        )
        .expect("post");
    assert_eq!(status, 410, "{body}");
    assert!(body.contains("the stream was opened"), "{body}");
}

#[test]
fn acks_resume_after_the_last_ack_and_one_consumer_at_a_time() {
    let (mut db, proxy) = setup("durable_ack", &[]);
    let (status, body) = proxy
        .post(
            "/v1/streams",
            r#"{"name":"orders","tables":["public.items"]}"#,
        )
        .expect("create");
    assert_eq!(status, 200, "{body}");
    let slot = json(&body)["slotName"].as_str().expect("slot").to_owned();
    assert!(slot.starts_with("walcast_orders"), "{slot}");

    let mut c = stream(&proxy, &slot);
    // A second consumer of the same stream is refused.
    match proxy.try_ws_url(&format!(
        "ws://127.0.0.1:{}/v1/lr/stream?slotName={slot}",
        proxy.port
    )) {
        Err((409, body)) => assert!(body.contains("one consumer"), "{body}"),
        Err(other) => panic!("expected 409, got {other:?}"),
        Ok(_) => panic!("a second consumer was accepted"),
    }

    for i in 1..=3 {
        db.exec(&format!("INSERT INTO items VALUES ({i}, 'x', {i}, now()); INSERT INTO nokey VALUES ({i}, 'not in the allow-list')"));
    }
    // The stream was recorded in walcast.streams before its slot existed:
    // its first transaction is the first insert.
    let t1 = transaction(&mut c);
    let t2 = transaction(&mut c);
    let t3 = transaction(&mut c);
    // Creating another stream (recorded in walcast.streams) sends this one
    // nothing.
    init(&proxy, "/v1/init?name=another");
    c.expect_silence(Duration::from_millis(500));
    for (t, id) in [(&t1, 1), (&t2, 2), (&t3, 3)] {
        assert_eq!(t.1.len(), 1, "only the allowed table: {:?}", t.1);
        assert_eq!(t.1[0]["columns"]["id"], id);
        assert!(t.1[0]["lsn"].is_string());
    }
    let end1 = t1.2["end_lsn"].as_str().expect("end_lsn").to_owned();
    let end3 = t3.2["end_lsn"].as_str().expect("end_lsn").to_owned();

    c.send(&format!(r#"{{"lsn":"{end1}","reply":true}}"#));
    assert_eq!(reply(&mut c), serde_json::json!({ "ack": end1 }));
    assert_eq!(
        confirmed_reaching(&mut db, &slot, &end1).to_string(),
        end1,
        "the ACK reached PostgreSQL, and nothing past it"
    );

    // Bad ACKs: an error or warning frame each, and nothing changes.
    c.send(r#"{"lsn":"FF/0"}"#);
    assert!(reply(&mut c)["error"]
        .as_str()
        .unwrap_or("")
        .contains("ahead"));
    c.send(r#"{"lsn":"0/1"}"#);
    assert!(reply(&mut c)["warning"]
        .as_str()
        .unwrap_or("")
        .contains("behind"));
    c.send(r#"{"lsn":"yesterday"}"#);
    assert!(reply(&mut c)["error"]
        .as_str()
        .unwrap_or("")
        .contains("not an LSN"));
    c.send("not json");
    assert!(reply(&mut c)["error"].is_string());
    assert_eq!(confirmed_flush(&mut db, &slot), end1);

    // Listed with its position.
    let (status, body) = proxy.get("/v1/streams").expect("list");
    assert_eq!(status, 200);
    let list = json(&body);
    let me = list["streams"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["slotName"] == slot.as_str()))
        .unwrap_or_else(|| panic!("{slot} not listed: {body}"))
        .clone();
    assert_eq!(me["active"], true);
    assert_eq!(me["consumerHere"], true);
    assert_eq!(me["confirmedLsn"], end1.as_str());
    assert_eq!(me["tables"], "public.items");
    assert!(me["lagBytes"].as_i64().unwrap_or(-1) > 0);

    // Reconnect: the stream resumes right after the last ACK.
    drop(c);
    let mut c = stream(&proxy, &slot);
    let again = transaction(&mut c);
    assert_eq!(
        again.0["xid"], t2.0["xid"],
        "resumes with the first unacknowledged transaction"
    );
    assert_eq!(again.1, t2.1);
    let again3 = transaction(&mut c);
    assert_eq!(again3.1, t3.1);
    c.send(&format!(r#"{{"lsn":"{end3}","reply":true}}"#));
    assert_eq!(reply(&mut c), serde_json::json!({ "ack": end3 }));

    // Deleting closes the consumer with a reason and drops the slot.
    let (status, body) = proxy
        .delete(&format!("/v1/streams/{slot}"))
        .expect("delete");
    assert_eq!(status, 200, "{body}");
    let (code, reason) = c.close_frame(WAIT).expect("close frame");
    assert_eq!(code, 1000);
    assert!(reason.contains("deleted"), "{reason}");
    let gone: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .expect("count")
        .get(0);
    assert_eq!(gone, 0);
    match proxy.try_ws_url(&format!(
        "ws://127.0.0.1:{}/v1/lr/stream?slotName={slot}",
        proxy.port
    )) {
        Err((404, _)) => {}
        other => panic!("expected 404, got {:?}", other.err()),
    }
    let (status, _) = proxy
        .delete(&format!("/v1/streams/{slot}"))
        .expect("delete");
    assert_eq!(status, 404);
}

#[test]
fn a_query_filters_the_stream_and_filtered_changes_count_as_delivered() {
    let (mut db, proxy) = setup("durable_query", &[]);
    let slot = init(&proxy, "/v1/init?name=big")["slotName"]
        .as_str()
        .expect("slot")
        .to_owned();
    let url = format!(
        "ws://127.0.0.1:{}/v1/lr/stream?slotName={slot}&query={}",
        proxy.port,
        encode("insert:items:n.gt.10")
    );
    let mut c = proxy.try_ws_url(&url).expect("stream with a query");
    db.exec("INSERT INTO items VALUES (1, 'small', 5, now())");
    db.exec("INSERT INTO items VALUES (2, 'big', 50, now())");
    let (_, none, c1) = any_transaction(&mut c);
    assert!(none.is_empty(), "filtered out: {none:?}");
    let (_, some, c2) = transaction(&mut c);
    assert_eq!(some.len(), 1);
    assert_eq!(some[0]["columns"]["id"], 2);
    assert!(c1["end_lsn"].as_str() < c2["end_lsn"].as_str() || c1["end_lsn"] != c2["end_lsn"]);
    // The filtered transaction's position may be acknowledged too.
    c.send(&format!(
        r#"{{"lsn":"{}","reply":true}}"#,
        c2["end_lsn"].as_str().unwrap_or("")
    ));
    assert_eq!(reply(&mut c)["ack"], c2["end_lsn"]);
    // Bad query: 400 with a position, before any upgrade.
    let bad = format!(
        "ws://127.0.0.1:{}/v1/lr/stream?slotName={slot}&query={}",
        proxy.port,
        encode("insert:items:n.zz.1")
    );
    match proxy.try_ws_url(&bad) {
        Err((400, body)) => assert!(json(&body)["position"].is_number(), "{body}"),
        other => panic!("expected 400, got {:?}", other.err()),
    }
}

#[test]
fn bad_requests_get_clear_errors() {
    let (mut db, proxy) = setup("durable_bad", &["--snapshot-page-cap", "100"]);
    db.exec("INSERT INTO items VALUES (1, 'a', 1, now()); INSERT INTO nokey VALUES (1, 'x')");
    let slot = init(&proxy, "/v1/init")["slotName"]
        .as_str()
        .expect("slot")
        .to_owned();
    let post = |body: &str| proxy.post("/v1/snapshot/data", body).expect("post");
    let cases: Vec<(String, u16, &str)> = vec![
        ("{not json".into(), 400, "invalid request body"),
        (
            format!(r#"{{"slotName":"{slot}","table":"items","limit":-1}}"#),
            400,
            "limit",
        ),
        (
            format!(r#"{{"slotName":"{slot}","table":"items","limit":101}}"#),
            400,
            "cap",
        ),
        (
            format!(r#"{{"slotName":"{slot}","table":"items","offset":-3}}"#),
            400,
            "offset",
        ),
        (
            format!(r#"{{"slotName":"{slot}","table":"items; DROP TABLE items"}}"#),
            400,
            "unknown table",
        ),
        (
            format!(
                r#"{{"slotName":"{slot}","table":"items","order_by":{{"column":"id; DROP TABLE items"}}}}"#
            ),
            400,
            "no column",
        ),
        (
            format!(
                r#"{{"slotName":"{slot}","table":"items","order_by":{{"column":"id","order":"asc; DROP TABLE items"}}}}"#
            ),
            400,
            "order",
        ),
        (
            format!(r#"{{"slotName":"{slot}","table":"items","after":["1) OR (1=1"]}}"#),
            400,
            "after",
        ),
        (
            format!(r#"{{"slotName":"{slot}","table":"nokey","after":[1]}}"#),
            400,
            "primary key",
        ),
        (
            format!(r#"{{"slotName":"{slot}","table":"items","after":[1],"offset":5}}"#),
            400,
            "after",
        ),
        (
            r#"{"slotName":"walcast_nosuch1","table":"items"}"#.into(),
            404,
            "no durable stream",
        ),
        (
            r#"{"slotName":"pg_catalog","table":"items"}"#.into(),
            404,
            "no durable stream",
        ),
    ];
    for (body, status, needle) in &cases {
        let (got, text) = post(body);
        assert_eq!(got, *status, "{body} -> {text}");
        assert!(
            text.contains(needle),
            "{body} -> {text} (expected {needle:?})"
        );
    }
    // Still intact and readable.
    let (status, text) = post(&format!(r#"{{"slotName":"{slot}","table":"nokey"}}"#));
    assert_eq!(status, 200, "{text}");
    assert_eq!(json(&text), serde_json::json!([{"a": 1, "b": "x"}]));
    let count: i64 = db
        .client
        .query_one("SELECT count(*) FROM items", &[])
        .expect("count")
        .get(0);
    assert_eq!(count, 1);

    // Other endpoints.
    let (status, body) = proxy
        .post("/v1/streams", r#"{"name":"Bad Name"}"#)
        .expect("post");
    assert_eq!(
        (status, body.contains("invalid stream name")),
        (400, true),
        "{body}"
    );
    let (status, _) = proxy.post("/v1/streams", r#"{"nmae":"x"}"#).expect("post");
    assert_eq!(status, 400);
    let (status, body) = proxy
        .post("/v1/streams", r#"{"tables":"public."}"#)
        .expect("post");
    assert_eq!(status, 400, "{body}");
    let big = format!(r#"{{"slotName":"{}","table":"items"}}"#, "x".repeat(70_000));
    let (status, _) = proxy.post("/v1/snapshot/data", &big).expect("post");
    assert_eq!(status, 413);
    let (status, _) = proxy.get("/v1/snapshot/data").expect("get");
    assert_eq!(status, 405);
    let (status, _) = proxy.get("/v1/nothing").expect("get");
    assert_eq!(status, 404);
    match proxy.try_ws_url(&format!("ws://127.0.0.1:{}/v1/lr/stream", proxy.port)) {
        Err((400, body)) => assert!(body.contains("slotName"), "{body}"),
        other => panic!("expected 400, got {:?}", other.err()),
    }
    // Never another slot: the proxy's own live slot is not a stream.
    let live = format!("{}_proxy", db.name);
    let (status, _) = proxy
        .delete(&format!("/v1/streams/{live}"))
        .expect("delete");
    assert_eq!(status, 404);
}

#[test]
fn a_table_truncated_after_the_snapshot_is_refused_not_read_empty() {
    let (mut db, proxy) = setup("durable_truncated", &[]);
    db.exec("INSERT INTO items VALUES (1, 'a', 1, now())");
    let slot = init(&proxy, "/v1/init")["slotName"]
        .as_str()
        .expect("slot")
        .to_owned();
    let page = format!(r#"{{"slotName":"{slot}","table":"items"}}"#);
    let (status, body) = proxy.post("/v1/snapshot/data", &page).expect("post");
    assert_eq!(
        (status, json(&body)[0]["id"].as_i64()),
        (200, Some(1)),
        "{body}"
    );
    db.exec("TRUNCATE items");
    let (status, body) = proxy.post("/v1/snapshot/data", &page).expect("post");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("truncated or rewritten"), "{body}");
}

#[test]
fn the_snapshot_expires_after_its_ttl() {
    let (_db, proxy) = setup("durable_ttl", &["--snapshot-ttl", "1"]);
    let slot = init(&proxy, "/v1/init")["slotName"]
        .as_str()
        .expect("slot")
        .to_owned();
    // Pages are served until the time to live has passed, then never.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        let (status, body) = proxy
            .post(
                "/v1/snapshot/data",
                &format!(r#"{{"slotName":"{slot}","table":"items"}}"#),
            )
            .expect("post");
        if status != 200 || Instant::now() > deadline {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, 410, "{body}");
    assert!(body.contains("time to live"), "{body}");
    let (_, list) = proxy.get("/v1/streams").expect("list");
    assert!(
        list.contains("ended: the snapshot's time to live passed"),
        "{list}"
    );
}

#[test]
fn tokens_guard_the_v1_endpoints() {
    let (_db, proxy) = setup("durable_auth", &["--token", "s3cret"]);
    let (status, _) = proxy.get("/v1/streams").expect("get");
    assert_eq!(status, 401);
    let (status, _) = proxy.get("/v1/init").expect("get");
    assert_eq!(status, 401);
    let (status, body) = proxy.get("/v1/streams?access_token=s3cret").expect("get");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn heartbeats_advance_an_idle_stream_and_the_lag_guard_drops_abandoned_ones() {
    let (mut db, proxy) = setup(
        "durable_guard",
        &[
            "--heartbeat-interval",
            "1",
            "--lag-check-interval",
            "1",
            "--max-slot-lag",
            "4kB",
            "--drop-lagging-streams",
        ],
    );
    // A stream whose snapshot is still held is never dropped: its client
    // is reading the snapshot.
    let watched = init(&proxy, "/v1/init?name=watched")["slotName"]
        .as_str()
        .expect("slot")
        .to_owned();
    let abandoned = init(&proxy, "/v1/init?name=abandoned")["slotName"]
        .as_str()
        .expect("slot")
        .to_owned();
    // Opened and left: no consumer, no snapshot; the guard may drop it.
    drop(stream(&proxy, &abandoned));
    let mut c = stream(&proxy, &watched);
    let start = confirmed_flush(&mut db, &watched);
    // WAL that is not this database's changes: only heartbeats can move the slot.
    let other = TestDb::new("durable_guard_other");
    let mut other = other;
    other.exec("CREATE TABLE filler (x text)");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        other.exec("INSERT INTO filler SELECT repeat('w', 1000) FROM generate_series(1, 20)");
        std::thread::sleep(Duration::from_millis(300));
        let now = confirmed_flush(&mut db, &watched);
        let dropped: i64 = db
            .client
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
                &[&abandoned],
            )
            .expect("count")
            .get(0);
        if now != start && dropped == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 30 s: watched slot at {now} (started {start}), abandoned slot present: {}",
            dropped == 1
        );
    }
    // Heartbeats are not forwarded unless asked.
    c.expect_silence(Duration::from_millis(300));
    let (_, metrics) = proxy.get("/metrics").expect("metrics");
    assert!(
        metrics.contains("walcast_streams_dropped_for_lag_total 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("walcast_heartbeats_total 0"), "{metrics}");
    assert!(
        metrics.contains(&format!("walcast_stream_lag_bytes{{slot=\"{watched}\"}}")),
        "{metrics}"
    );

    // Asked for, heartbeats arrive as M frames.
    drop(c);
    let mut c = proxy
        .try_ws_url(&format!(
            "ws://127.0.0.1:{}/v1/lr/stream?slotName={watched}&heartbeats=true",
            proxy.port
        ))
        .expect("stream");
    let f = reply(&mut c);
    assert_eq!(f["action"], "M");
    assert_eq!(f["prefix"], "walcast.heartbeat");
}

#[test]
fn a_stream_past_the_lag_limit_with_a_consumer_is_reported_not_dropped() {
    let (mut db, proxy) = setup(
        "durable_lagging",
        &[
            "--lag-check-interval",
            "1",
            "--max-slot-lag",
            "1kB",
            "--heartbeat-interval",
            "0",
        ],
    );
    let slot = init(&proxy, "/v1/init")["slotName"]
        .as_str()
        .expect("slot")
        .to_owned();
    let _c = stream(&proxy, &slot);
    db.exec("INSERT INTO items SELECT g, repeat('z', 500), g, now() FROM generate_series(1, 50) g");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, health) = proxy.get("/healthz").expect("health");
        let h = json(&health);
        if h["streams_over_max_lag"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s == slot.as_str()))
        {
            break;
        }
        assert!(Instant::now() < deadline, "never reported: {health}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, metrics) = proxy.get("/metrics").expect("metrics");
    assert!(
        metrics.contains(&format!("walcast_stream_over_max_lag{{slot=\"{slot}\"}} 1")),
        "{metrics}"
    );
    let present: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .expect("count")
        .get(0);
    assert_eq!(present, 1, "not dropped without --drop-lagging-streams");
}

fn new_stream(proxy: &Proxy, name: &str) -> String {
    init(proxy, &format!("/v1/init?name={name}"))["slotName"]
        .as_str()
        .expect("slotName")
        .to_owned()
}

#[test]
fn a_slow_consumer_gets_every_change_and_a_frozen_one_is_closed() {
    // Three-second pings, a five-second stall timeout, and a test cluster
    // whose walsenders give up after 10 s without a word from the proxy:
    // the slow consumer's writes may wait longer than that, so the proxy
    // keeps its replication connection alive while they wait.
    let (mut db, proxy) = setup(
        "durable_slow",
        &["--ping-interval", "3", "--stall-timeout", "5"],
    );
    db.exec("ALTER TABLE items ADD COLUMN pad text");
    let (slow_slot, frozen_slot) = (new_stream(&proxy, "slow"), new_stream(&proxy, "frozen"));
    let mut slow = proxy.ws_with_rcvbuf(&format!("/v1/lr/stream?slotName={slow_slot}"), 256 * 1024);
    // A small receive buffer: once it stops reading, its kernel stops
    // taking bytes at once.
    let mut frozen =
        proxy.ws_with_rcvbuf(&format!("/v1/lr/stream?slotName={frozen_slot}"), 64 * 1024);
    let rows = 10_000usize;
    // About 6 MB in one transaction.
    db.exec(&format!(
        "INSERT INTO items (id, name, pad) SELECT g, 'r', repeat('x', 480) FROM generate_series(1, {rows}) g"
    ));
    let reading = std::thread::spawn(move || {
        let (mut ids, mut end) = (0usize, String::new());
        slow.read_at(500.0, rows + 2, Duration::from_secs(120), |t| {
            let f = json(t);
            match f["action"].as_str() {
                Some("I") => {
                    ids += 1;
                    assert_eq!(f["columns"]["id"], ids as i64, "in order, none missing");
                }
                Some("C") => end = f["end_lsn"].as_str().unwrap_or_default().to_owned(),
                _ => {}
            }
        });
        slow.send(&format!(r#"{{"lsn":"{end}","reply":true}}"#));
        // The proxy's heartbeats (a transaction with only its message, which
        // this stream did not ask for) may come first as B and C frames.
        let reply = loop {
            let f = frame(&mut slow);
            match f["action"].as_str() {
                Some("B" | "C") => continue,
                _ => break f,
            }
        };
        assert_eq!(reply["ack"], end.as_str(), "the reply to the ACK: {reply}");
        (ids, end)
    });
    assert_eq!(frozen.texts(100, WAIT).len(), 100);
    let closes = |p: &Proxy| {
        p.metric("walcast_clients_closed_total{reason=\"stalled\"}")
            + p.metric("walcast_clients_closed_total{reason=\"ping_timeout\"}")
    };
    // The documented bound, four ping intervals (12 s), counts from the
    // last byte the consumer's kernel took.
    let took = frozen.silent_until(|| closes(&proxy) >= 1);
    assert!(
        took <= Duration::from_millis(13_500),
        "closed after {took:?}"
    );
    let (ids, end) = reading.join().expect("slow consumer");
    assert_eq!(ids, rows);
    // At the ACK, or past it over WAL with nothing for this stream (an
    // idle stream's slot advances).
    confirmed_reaching(&mut db, &slow_slot, &end);
    assert_eq!(closes(&proxy), 1, "only the frozen consumer was closed");
    // The frozen consumer's place is free again: it resumes from the start.
    drop(frozen);
    let mut again = stream(&proxy, &frozen_slot);
    assert_eq!(frame(&mut again)["action"], "B");
}

#[test]
fn acked_resumes_after_an_ack_that_never_reached_the_proxy() {
    let (mut db, proxy) = setup("durable_acked", &[]);
    let slot = new_stream(&proxy, "acked");
    let mut c = stream(&proxy, &slot);
    for i in 1..=3 {
        db.exec(&format!("INSERT INTO items VALUES ({i}, 'n', {i}, now())"));
    }
    let ends: Vec<String> = (0..3)
        .map(|_| {
            transaction(&mut c).2["end_lsn"]
                .as_str()
                .expect("end_lsn")
                .to_owned()
        })
        .collect();
    // The ACK of the second transaction is lost with the connection.
    drop(c);
    let before: walcast_format::Lsn = confirmed_flush(&mut db, &slot).parse().expect("an LSN");
    let first: walcast_format::Lsn = ends[0].parse().expect("an LSN");
    assert!(before < first, "nothing was ACKed: {before}");
    let url = |acked: &str| {
        format!(
            "ws://127.0.0.1:{}/v1/lr/stream?slotName={slot}&acked={acked}",
            proxy.port
        )
    };
    // The next connection says where the client was: the slot is
    // confirmed there at once and the stream resumes after it.
    let mut c = loop {
        match proxy.try_ws_url(&url(&ends[1])) {
            Ok(c) => break c,
            Err((409, _)) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("reconnecting with acked: {e:?}"),
        }
    };
    let (_, rows, _) = transaction(&mut c);
    assert_eq!(
        rows[0]["columns"]["id"], 3,
        "transactions up to the ACK are skipped"
    );
    confirmed_reaching(&mut db, &slot, &ends[1]);
    drop(c);
    // An older acked changes nothing; a malformed one or one past the end
    // of WAL is refused before the upgrade.
    for (acked, want) in [("zz", 400), ("FFFF/0", 400)] {
        match proxy.try_ws_url(&url(acked)) {
            Err((status, body)) => assert_eq!(status, want, "{body}"),
            Ok(_) => panic!("acked={acked} was accepted"),
        }
    }
    let mut c = loop {
        match proxy.try_ws_url(&url(&ends[0])) {
            Ok(c) => break c,
            Err((409, _)) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("reconnecting with an older acked: {e:?}"),
        }
    };
    let (_, rows, _) = transaction(&mut c);
    assert_eq!(
        rows[0]["columns"]["id"], 3,
        "the slot's position wins over an older acked"
    );
}

#[test]
fn a_filtered_query_on_a_table_without_full_identity_is_warned_about() {
    let (mut db, proxy) = setup("durable_filtered", &[]);
    let slot = new_stream(&proxy, "filtered");
    let open = |query: &str| {
        proxy
            .try_ws_url(&format!(
                "ws://127.0.0.1:{}/v1/lr/stream?slotName={slot}&query={}",
                proxy.port,
                encode(query)
            ))
            .unwrap_or_else(|e| panic!("{query}: {e:?}"))
    };
    let mut c = open("*:items:n.gt.10");
    let w = frame(&mut c);
    let text = w["warning"]
        .as_str()
        .unwrap_or_else(|| panic!("a warning first: {w}"));
    assert!(text.contains("REPLICA IDENTITY FULL"), "{text}");
    drop(c);
    // With FULL identity, or for inserts only, nothing to warn about: the
    // first frame is the stream's.
    db.exec("ALTER TABLE items REPLICA IDENTITY FULL");
    for query in ["*:items:n.gt.10", "insert:nokey:a.eq.1"] {
        let mut c = loop {
            match proxy.try_ws_url(&format!(
                "ws://127.0.0.1:{}/v1/lr/stream?slotName={slot}&query={}",
                proxy.port,
                encode(query)
            )) {
                Ok(c) => break c,
                Err((409, _)) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => panic!("{query}: {e:?}"),
            }
        };
        db.exec("INSERT INTO items VALUES (100, 'w', 50, now())");
        let f = frame(&mut c);
        assert_eq!(f["action"], "B", "{query}: {f}");
        db.exec("DELETE FROM items WHERE id = 100");
        drop(c);
    }
}

#[test]
fn creating_a_stream_of_a_table_without_full_identity_warns() {
    let (mut db, proxy) = setup("durable_create_warns", &[]);
    let created = init(&proxy, "/v1/init?name=warned&tables=public.items");
    let warnings = created["warnings"].as_array().cloned().unwrap_or_default();
    assert_eq!(warnings.len(), 1, "{created}");
    assert!(
        warnings[0]
            .as_str()
            .is_some_and(|w| w.contains("public.items has no REPLICA IDENTITY FULL")),
        "{created}"
    );
    db.exec("ALTER TABLE items REPLICA IDENTITY FULL");
    let created = init(&proxy, "/v1/init?name=unwarned&tables=public.items");
    assert!(created.get("warnings").is_none(), "{created}");
}

#[test]
fn a_stream_whose_slot_postgres_invalidated_is_lost() {
    use walcast_cluster::{Cluster, Config};
    // A slot more than 1 MB behind is invalidated at the next checkpoint.
    let cluster = Cluster::start_with(Config::small_slot_limit()).expect("cluster");
    let db = cluster.create_database("invalidated").expect("database");
    cluster
        .psql(&db, "CREATE TABLE filler (payload text)")
        .expect("table");
    let proxy = Proxy::start(&cluster, &db, "invalidated_proxy", &[]);
    let slot = init(&proxy, "/v1/init?name=behind&export_snapshot=false")["slotName"]
        .as_str()
        .expect("slotName")
        .to_owned();
    cluster
        .outrun_slots(&db)
        .expect("WAL past the slots' limit");
    let status = cluster
        .psql(
            &db,
            &format!("SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{slot}'"),
        )
        .expect("slot status");
    assert_eq!(status.trim(), "lost", "the slot was not invalidated");
    match proxy.try_ws_url(&format!(
        "ws://127.0.0.1:{}/v1/lr/stream?slotName={slot}",
        proxy.port
    )) {
        Ok(_) => panic!("an invalidated stream was served"),
        Err((status, body)) => {
            assert_eq!(status, 410, "{body}");
            assert_eq!(json(&body)["code"], "STREAM_LOST", "{body}");
            assert!(body.contains("invalidated"), "{body}");
        }
    }
    let listed = json(&proxy.get("/v1/streams").expect("list").1);
    let me = listed["streams"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["slotName"] == slot.as_str()).cloned())
        .unwrap_or_else(|| panic!("{slot} not listed: {listed}"));
    assert_eq!(me["lost"], "invalidated", "{me}");
    // DELETE drops the invalidated slot and its record.
    let (status, body) = proxy
        .delete(&format!("/v1/streams/{slot}"))
        .expect("delete");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        cluster
            .psql(
                &db,
                &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"),
            )
            .expect("slots"),
        "0"
    );
}
