//! Scale-out end to end: a private cluster, a private `nats-server -js`, a
//! real relay and real edges (`walcast-proxy relay`, `serve --nats-url`),
//! real websocket clients. Faults are real too: SIGKILL of the relay and of
//! an edge, nats-server killed and started again on the same store.

use crate::support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::{json, Got, Launch, Proxy};
use walcast_cluster::nats::{NatsConfig, NatsServer};
use walcast_tests::{cluster, TestDb};

const WAIT: Duration = Duration::from_secs(20);

fn nats() -> NatsServer {
    NatsServer::start().expect("starting a private nats-server (./scripts/setup.sh installs it)")
}

fn relay(db: &TestDb, nats: &NatsServer) -> Proxy {
    let p = Proxy::launch(
        &cluster().url(&db.name),
        &format!("{}_relay", db.name),
        &["relay", "--nats-url", &nats.url()],
        Launch::default(),
    );
    p.wait_healthy();
    p
}

fn edge(db: &TestDb, nats: &NatsServer) -> Proxy {
    let p = Proxy::launch(
        &cluster().url(&db.name),
        &format!("{}_edge", db.name),
        &["--nats-url", &nats.url()],
        Launch::default(),
    );
    p.wait_healthy();
    p
}

fn setup(name: &str) -> TestDb {
    let mut db = TestDb::new(name);
    db.exec("CREATE TABLE items (id int PRIMARY KEY, v text)");
    db
}

fn id(frame: &str) -> i64 {
    let v = json(frame);
    v["columns"]["id"]
        .as_i64()
        .or_else(|| v["identity"]["id"].as_i64())
        .unwrap_or(-1)
}

/// Reads frames until `n` arrived, failing on a close.
fn frames(c: &mut support::Client, n: usize) -> Vec<String> {
    let got = c.texts(n, WAIT);
    assert_eq!(got.len(), n, "got {} of {n} frames", got.len());
    got
}

#[test]
fn two_edges_serve_the_same_frames_and_a_client_resumes_on_the_other_edge() {
    let mut db = setup("nats_edges");
    let nats = nats();
    let relay = relay(&db, &nats);
    let (e1, e2) = (edge(&db, &nats), edge(&db, &nats));
    let mut c1 = e1.ws("*:items");
    let mut c2 = e2.ws("*:items");
    let mut odd = e2.ws("insert:items:id.gt.25");
    for t in 0..10 {
        let values: Vec<String> = (1..=5)
            .map(|i| format!("({}, 'v{}')", t * 5 + i, t * 5 + i))
            .collect();
        db.exec(&format!("INSERT INTO items VALUES {}", values.join(",")));
    }
    db.exec("UPDATE items SET v = 'changed' WHERE id <= 3; DELETE FROM items WHERE id = 50");
    let a = frames(&mut c1, 54);
    let b = frames(&mut c2, 54);
    assert_eq!(a, b, "both edges send the same bytes in the same order");
    assert_eq!(
        a.iter().take(50).map(|f| id(f)).collect::<Vec<_>>(),
        (1..=50).collect::<Vec<_>>()
    );
    assert_eq!(json(&a[53])["action"], "D");
    let filtered = frames(&mut odd, 25);
    assert_eq!(
        filtered.iter().map(|f| id(f)).collect::<Vec<_>>(),
        (26..=50).collect::<Vec<_>>()
    );
    // A client of edge 1 that read 20 frames goes on at edge 2 from its
    // position: exactly what follows, nothing twice.
    let after = json(&a[19])["pos"].as_str().expect("pos").to_owned();
    let mut resumed = e2.ws_params(&format!("query=*:items&after={after}"));
    assert_eq!(frames(&mut resumed, 34), a[20..].to_vec());
    resumed.expect_silence(Duration::from_millis(300));
    // The relay counted what it published: 54 changes, and the B and C of
    // their 11 transactions (the UPDATE and DELETE share one).
    let deadline = Instant::now() + WAIT;
    while relay.metric("walcast_nats_published_total") < 76 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(relay.metric("walcast_nats_published_total"), 76);
    assert_eq!(relay.metric("walcast_nats_duplicates_total"), 0);
    assert_eq!(e1.metric("walcast_nats_foreign_total"), 0);
    // An edge's health names its stream, not a slot.
    let (code, body) = e1.get("/healthz").expect("healthz");
    assert_eq!(code, 200);
    let h = json(&body);
    assert_eq!(h["nats_stream"], "WALCAST");
    assert!(h["slot"].is_null());
}

#[test]
fn a_relay_killed_mid_stream_loses_nothing_and_duplicates_nothing() {
    let db = setup("nats_relay_kill");
    let nats = nats();
    let mut relay = relay(&db, &nats);
    let e = edge(&db, &nats);
    let mut c = e.ws("insert:items");
    let url = cluster().url(&db.name);
    const TXNS: i64 = 300;
    let writer = std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
        for t in 0..TXNS {
            client
                .batch_execute(&format!(
                    "INSERT INTO items SELECT g, repeat('x', 200) FROM generate_series({}, {}) g",
                    t * 10 + 1,
                    t * 10 + 10
                ))
                .expect("insert");
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    // Kill the relay while transactions stream (after some arrived).
    let first = frames(&mut c, 200);
    relay.child.kill().expect("SIGKILL the relay");
    let _ = relay.child.wait();
    std::thread::sleep(Duration::from_millis(300));
    let relay2 = self::relay(&db, &nats);
    writer.join().expect("writer");
    let rest = frames(&mut c, (TXNS * 10) as usize - 200);
    let ids: Vec<i64> = first.iter().chain(rest.iter()).map(|f| id(f)).collect();
    assert_eq!(
        ids,
        (1..=TXNS * 10).collect::<Vec<_>>(),
        "every row once, in order"
    );
    c.expect_silence(Duration::from_millis(500));
    // What the second relay published again was dropped by its message id.
    let again = relay2.metric("walcast_nats_duplicates_total");
    let published = relay2.metric("walcast_nats_published_total");
    assert!(published > 0, "the second relay published");
    eprintln!("second relay: {published} published, {again} of them already in the stream");
}

#[test]
fn an_edge_keeps_its_clients_through_a_nats_restart() {
    let mut db = setup("nats_restart");
    let mut nats = nats();
    let _relay = relay(&db, &nats);
    let e = edge(&db, &nats);
    let mut c = e.ws("insert:items");
    db.exec("INSERT INTO items VALUES (1, 'a')");
    assert_eq!(id(&frames(&mut c, 1)[0]), 1);
    nats.stop();
    // The edge notices and says so; its client stays connected.
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, body) = e.get("/healthz").expect("healthz");
        if code == 503 && json(&body)["status"] == "degraded" {
            break;
        }
        assert!(Instant::now() < deadline, "never degraded: {code} {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    db.exec("INSERT INTO items VALUES (2, 'b'), (3, 'c')");
    c.expect_silence(Duration::from_millis(500));
    nats.restart().expect("nats-server again");
    db.exec("INSERT INTO items VALUES (4, 'd')");
    let got = frames(&mut c, 3);
    assert_eq!(got.iter().map(|f| id(f)).collect::<Vec<_>>(), vec![2, 3, 4]);
    e.wait_healthy();
    assert!(e.metric("walcast_nats_reconnects_total") >= 1);
}

#[test]
fn an_edge_killed_and_restarted_serves_resumes_from_the_stream() {
    let mut db = setup("nats_edge_kill");
    let nats = nats();
    let _relay = relay(&db, &nats);
    let mut e = edge(&db, &nats);
    let mut c = e.ws("*:items");
    db.exec("INSERT INTO items SELECT g, 'v' FROM generate_series(1, 30) g");
    let got = frames(&mut c, 30);
    let after = json(&got[9])["pos"].as_str().expect("pos").to_owned();
    e.child.kill().expect("SIGKILL the edge");
    let _ = e.child.wait();
    db.exec("INSERT INTO items SELECT g, 'v' FROM generate_series(31, 40) g");
    // A new edge reads back what its log holds: the client resumes there.
    let e2 = edge(&db, &nats);
    let mut resumed = e2.ws_params(&format!("query=*:items&after={after}"));
    let rest = frames(&mut resumed, 30);
    assert_eq!(
        rest.iter().map(|f| id(f)).collect::<Vec<_>>(),
        (11..=40).collect::<Vec<_>>()
    );
    assert_eq!(&rest[..20], &got[10..]);
}

#[test]
fn unreachable_nats_at_start_is_a_clear_error() {
    let db = setup("nats_unreachable");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").port()
    };
    let url = format!("nats://127.0.0.1:{port}");
    for extra in [vec!["relay", "--nats-url", &url], vec!["--nats-url", &url]] {
        let stderr = support::refused_start(
            support::proxy_command(None)
                .args(["--database-url", &cluster().url(&db.name)])
                .args(["--listen", "127.0.0.1:0"])
                .args(&extra),
        );
        assert!(
            stderr.contains(&format!("cannot connect to NATS at {url}")),
            "{extra:?}: {stderr}"
        );
    }
    // And a relay without --nats-url says what it needs.
    let stderr = support::refused_start(
        support::proxy_command(None)
            .args(["relay", "--database-url", &cluster().url(&db.name)])
            .env_remove("WALCAST_NATS_URL"),
    );
    assert!(stderr.contains("--nats-url"), "{stderr}");
}

#[test]
fn a_stream_larger_than_the_servers_storage_is_a_clear_error() {
    let db = setup("nats_storage");
    let nats = NatsServer::start_with(NatsConfig {
        max_file_store: Some(64 << 20),
        ..NatsConfig::default()
    })
    .expect("a private nats-server with 64 MB of JetStream storage");
    let stderr = support::refused_start(
        support::proxy_command(None)
            .args(["relay", "--database-url", &cluster().url(&db.name)])
            .args(["--listen", "127.0.0.1:0", "--nats-url", &nats.url()])
            .args(["--nats-max-bytes", "1GB"]),
    );
    assert!(
        stderr.contains("cannot create the JetStream stream WALCAST")
            && stderr.contains("--nats-max-bytes (1073741824 bytes)")
            && stderr.contains("max_file_store"),
        "{stderr}"
    );
}

/// Publishes to a NATS server with the plain protocol: `headers` (if any)
/// as a NATS/1.0 header block.
fn publish_raw(port: u16, subject: &str, headers: &[(&str, &str)], payload: &[u8]) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to nats");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    let mut info = String::new();
    reader.read_line(&mut info).expect("INFO");
    s.write_all(b"CONNECT {\"verbose\":false,\"headers\":true}\r\n")
        .expect("CONNECT");
    if headers.is_empty() {
        s.write_all(format!("PUB {subject} {}\r\n", payload.len()).as_bytes())
            .expect("PUB");
    } else {
        let mut block = String::from("NATS/1.0\r\n");
        for (k, v) in headers {
            block.push_str(&format!("{k}: {v}\r\n"));
        }
        block.push_str("\r\n");
        s.write_all(
            format!(
                "HPUB {subject} {} {}\r\n{block}",
                block.len(),
                block.len() + payload.len()
            )
            .as_bytes(),
        )
        .expect("HPUB");
    }
    s.write_all(payload).expect("payload");
    s.write_all(b"\r\nPING\r\n").expect("PING");
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("PONG");
        if line.starts_with("PONG") {
            break;
        }
        assert!(!line.starts_with("-ERR"), "nats refused: {line}");
    }
    let mut rest = Vec::new();
    let _ = s.set_read_timeout(Some(Duration::from_millis(10)));
    let _ = s.read_to_end(&mut rest);
}

#[test]
fn foreign_messages_in_the_stream_are_skipped_and_counted() {
    let mut db = setup("nats_foreign");
    let nats = nats();
    let _relay = relay(&db, &nats);
    let e = edge(&db, &nats);
    let mut c = e.ws("*:items");
    let subject = format!("walcast.{}.public.items.insert", db.name);
    // No position; a position with junk; a real-looking change whose id
    // lies about its position; a position far ahead with a body that is no
    // change: none of them reaches a client or holds back what follows.
    publish_raw(nats.port(), &subject, &[], b"hello");
    publish_raw(
        nats.port(),
        &subject,
        &[("Nats-Msg-Id", "FFFFFFFF00000000:00000000")],
        b"{not json",
    );
    publish_raw(
        nats.port(),
        &subject,
        &[("Nats-Msg-Id", "FFFFFFFF00000000:00000001")],
        br#"{"action":"I","lsn":"0/1","pos":"0000000000000001:00000000","schema":"public","table":"items","columns":{"id":-5}}"#,
    );
    db.exec("INSERT INTO items VALUES (1, 'real')");
    let got = frames(&mut c, 1);
    assert_eq!(id(&got[0]), 1);
    c.expect_silence(Duration::from_millis(300));
    assert_eq!(e.metric("walcast_nats_foreign_total"), 3);
    match c.next_within(Duration::from_millis(100)) {
        None => {}
        Some(Got::Closed(code, why)) => panic!("the client was closed: {code} {why}"),
        Some(other) => panic!("unexpected {other:?}"),
    }
}

/// Reads the next transaction with changes (`B` .. `C`) from a durable
/// stream; empty ones (the server's own, as autovacuum's ANALYZE) are passed
/// over.
fn transaction(c: &mut support::Client) -> Option<(Vec<serde_json::Value>, String)> {
    transaction_noting_acks(c, &mut Vec::new())
}

/// [`transaction`], keeping the ACK replies that arrive among its frames.
fn transaction_noting_acks(
    c: &mut support::Client,
    acks: &mut Vec<String>,
) -> Option<(Vec<serde_json::Value>, String)> {
    let mut changes = Vec::new();
    let mut begun = false;
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match c.next() {
            Some(Got::Text(t)) => {
                let f = json(&t);
                match f["action"].as_str() {
                    Some("B") => {
                        assert!(!begun, "B inside a transaction: {f}");
                        begun = true;
                    }
                    Some("C") if changes.is_empty() => {
                        assert!(begun, "C without B: {f}");
                        begun = false;
                    }
                    Some("C") => {
                        assert!(begun, "C without B: {f}");
                        return Some((changes, f["end_lsn"].as_str().expect("end_lsn").to_owned()));
                    }
                    Some("I" | "U" | "D" | "T") => {
                        assert!(begun, "change outside a transaction: {f}");
                        changes.push(f);
                    }
                    _ => {
                        if let Some(ack) = f["ack"].as_str() {
                            acks.push(ack.to_owned());
                        }
                    }
                }
            }
            Some(Got::Closed(code, why)) => panic!("closed {code} {why}"),
            None => {}
        }
    }
    None
}

fn lsn_value(s: &str) -> u64 {
    let (hi, lo) = s.split_once('/').expect("an LSN");
    (u64::from_str_radix(hi, 16).expect("hi") << 32) | u64::from_str_radix(lo, 16).expect("lo")
}

#[test]
fn durable_streams_on_jetstream_cost_no_slot_and_resume_on_another_edge() {
    use support::model::Model;
    let mut db = setup("nats_durable");
    db.exec("INSERT INTO items SELECT g, 'before' FROM generate_series(1, 20) g");
    let nats = nats();
    let _relay = relay(&db, &nats);
    let e2 = edge(&db, &nats);
    let mut e1 = edge(&db, &nats);
    let (status, body) = e1
        .post("/v1/streams", r#"{"name":"orders"}"#)
        .expect("create");
    assert_eq!(status, 200, "{body}");
    let created = json(&body);
    let slot = created["slotName"].as_str().expect("slotName").to_owned();
    assert_eq!(slot, "walcast_orders1");
    // Committed after the snapshot: in the stream, not in the snapshot.
    db.exec("INSERT INTO items SELECT g, 'after' FROM generate_series(21, 30) g");
    db.exec("UPDATE items SET v = 'changed' WHERE id = 1");
    db.exec("DELETE FROM items WHERE id = 2");
    let mut model = Model::default();
    let page = support::durable::page(&e1, &slot, "items");
    assert_eq!(page.len(), 20, "the snapshot is the table at creation");
    for r in page {
        model.put("items", r);
    }
    // PostgreSQL holds one permanent slot (the relay's), whatever the number of streams.
    let mut sql =
        postgres::Client::connect(&cluster().url(&db.name), postgres::NoTls).expect("sql");
    let permanent: i64 = sql
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE NOT temporary AND database = current_database()",
            &[],
        )
        .expect("slots")
        .get(0);
    assert_eq!(permanent, 1);

    let url = |p: &Proxy| format!("ws://127.0.0.1:{}/v1/lr/stream?slotName={slot}", p.port);
    let mut c = e1.try_ws_url(&url(&e1)).expect("stream on edge 1");
    let mut applied = 0u64;
    // The 10 inserts, then the update; ACK the first only.
    let (first, end1) = transaction(&mut c).expect("first transaction");
    assert_eq!(first.len(), 10);
    for f in &first {
        model.apply(f);
    }
    applied = applied.max(lsn_value(&end1));
    c.send(&format!(r#"{{"lsn":"{end1}","reply":true}}"#));
    // The ACK's reply may come before the next transaction or among it.
    let mut acks = Vec::new();
    let (second, end2) = transaction_noting_acks(&mut c, &mut acks).expect("second transaction");
    for f in &second {
        model.apply(f);
    }
    applied = applied.max(lsn_value(&end2));
    // Wait for the ACK's reply: it is on the consumer then.
    let deadline = Instant::now() + WAIT;
    while !acks.contains(&end1) {
        match c.next() {
            Some(Got::Text(t)) if json(&t)["ack"] == end1.as_str() => break,
            Some(Got::Closed(code, why)) => panic!("closed {code} {why}"),
            _ => assert!(Instant::now() < deadline, "no ACK reply"),
        }
    }
    // Edge 1 dies; the stream goes on at edge 2 after the last ACK.
    e1.child.kill().expect("SIGKILL edge 1");
    let _ = e1.child.wait();
    db.exec("INSERT INTO items VALUES (31, 'later')");
    let mut c = e2.try_ws_url(&url(&e2)).expect("stream on edge 2");
    let mut again = 0;
    let table = Model::read_table(&mut sql, "items");
    while model.rows("items") != table {
        let (changes, end) = transaction(&mut c).expect("a transaction");
        assert!(
            lsn_value(&end) > lsn_value(&end1),
            "a transaction before the ACK came again"
        );
        if lsn_value(&end) <= applied {
            again += 1;
            continue;
        }
        for f in &changes {
            model.apply(f);
        }
        applied = lsn_value(&end);
        c.send(&format!(r#"{{"lsn":"{end}"}}"#));
    }
    assert_eq!(
        again, 1,
        "only the transaction after the last ACK comes again"
    );
    // A connection on a third edge takes the stream over: the one on edge 2 ends.
    let e3 = edge(&db, &nats);
    let _taker = e3.try_ws_url(&url(&e3)).expect("stream on edge 3");
    let (code, why) = c.close_frame(WAIT).expect("the older connection is closed");
    assert_eq!(code, 1011, "{why}");
    assert!(
        why.contains("reconnect to resume from your last ACK"),
        "{why}"
    );
    drop(_taker);
    // Listed on either edge, then deleted.
    let (status, body) = e2.get("/v1/streams").expect("list");
    assert_eq!(status, 200);
    let listed = json(&body);
    assert_eq!(listed["streams"][0]["slotName"], slot.as_str(), "{body}");
    let (status, body) = e2.delete(&format!("/v1/streams/{slot}")).expect("delete");
    assert_eq!(status, 200, "{body}");
    let (_, body) = e2.get("/v1/streams").expect("list");
    assert_eq!(
        json(&body)["streams"].as_array().map(Vec::len),
        Some(0),
        "{body}"
    );
}

#[test]
fn durable_streams_on_jetstream_keep_their_tables_and_the_lag_guard_sees_consumer_lag() {
    let mut db = setup("nats_durable_lag");
    db.exec("CREATE TABLE other (id int PRIMARY KEY)");
    let nats = nats();
    let _relay = relay(&db, &nats);
    let e = Proxy::launch(
        &cluster().url(&db.name),
        &format!("{}_edge", db.name),
        &[
            "--nats-url",
            &nats.url(),
            "--max-slot-lag",
            "1kB",
            "--lag-check-interval",
            "1",
        ],
        Launch::default(),
    );
    e.wait_healthy();
    let (status, body) = e
        .post(
            "/v1/streams",
            r#"{"name":"others","tables":"public.other"}"#,
        )
        .expect("create");
    assert_eq!(status, 200, "{body}");
    let slot = json(&body)["slotName"].as_str().expect("slot").to_owned();
    db.exec("INSERT INTO items SELECT g, repeat('x', 100) FROM generate_series(1, 50) g");
    db.exec("INSERT INTO other VALUES (1), (2)");
    // Nobody reads it yet: its lag is what the stream holds after its ACK.
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, body) = e.get("/v1/streams").expect("list");
        let s = &json(&body)["streams"][0];
        if s["overMaxLag"] == true {
            assert!(s["lagBytes"].as_i64().unwrap_or(0) > 1024, "{s}");
            assert_eq!(s["tables"], "public.other");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never over the lag limit: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The lag guard (every second here) reports it.
    let line = format!("walcast_stream_over_max_lag{{slot=\"{slot}\"}} 1");
    let deadline = Instant::now() + WAIT;
    while !e.get("/metrics").expect("metrics").1.contains(&line) {
        assert!(
            Instant::now() < deadline,
            "the lag guard never reported {slot}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Its consumer gets the transactions of its table only (the other's
    // transaction comes as an empty B/C pair, as from a slot with add-tables).
    let mut c = e
        .try_ws_url(&format!(
            "ws://127.0.0.1:{}/v1/lr/stream?slotName={slot}",
            e.port
        ))
        .expect("stream");
    let mut rows = Vec::new();
    while rows.len() < 2 {
        let (changes, _) = transaction(&mut c).expect("a transaction");
        for f in changes {
            assert_eq!(f["table"], "other", "{f}");
            rows.push(f["columns"]["id"].as_i64().expect("id"));
        }
    }
    assert_eq!(rows, vec![1, 2]);
}

#[test]
fn an_edge_that_missed_messages_the_stream_dropped_tells_its_clients() {
    let mut db = setup("nats_gap");
    let nats = nats();
    let relay = Proxy::launch(
        &cluster().url(&db.name),
        &format!("{}_relay", db.name),
        &[
            "relay",
            "--nats-url",
            &nats.url(),
            "--nats-max-bytes",
            "64kB",
        ],
        Launch::default(),
    );
    relay.wait_healthy();
    let e = edge(&db, &nats);
    let mut c = e.ws("*:items");
    db.exec("INSERT INTO items VALUES (1, 'first')");
    let first = frames(&mut c, 1);
    let after = json(&first[0])["pos"].as_str().expect("pos").to_owned();
    // The edge stops reading while far more than the stream keeps is written.
    let pid = e.child.id().to_string();
    // The shell's own kill: no procps needed.
    let signal = |s: &str| {
        let ok = std::process::Command::new("sh")
            .args(["-c", &format!("kill {s} {pid}")])
            .status()
            .expect("sh")
            .success();
        assert!(ok, "kill {s}");
    };
    signal("-STOP");
    for t in 0..40 {
        db.exec(&format!(
            "INSERT INTO items SELECT g, repeat('x', 300) FROM generate_series({}, {}) g",
            t * 50 + 2,
            t * 50 + 51
        ));
    }
    let deadline = Instant::now() + WAIT;
    while relay.metric("walcast_nats_published_total") < 40 * 52 + 3 {
        assert!(
            Instant::now() < deadline,
            "the relay did not publish everything"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    signal("-CONT");
    // What the edge had already pulled may come; then the client is told.
    let mut got = 0;
    let (code, why) = loop {
        match c.next_within(WAIT) {
            Some(Got::Text(_)) => got += 1,
            Some(Got::Closed(code, why)) => break (code, why),
            None => panic!("neither frames nor a close after {got} frames"),
        }
    };
    assert_eq!(code, 1013, "{why}");
    assert!(why.contains("could not read"), "{why}");
    assert!(
        got < 2000,
        "the client got {got} frames: nothing was dropped?"
    );
    assert!(e.metric("walcast_nats_lost_total") > 0);
    assert_eq!(
        e.metric("walcast_clients_closed_total{reason=\"stream_gap\"}"),
        1
    );
    // Resuming from before the hole: 410, not a silent skip.
    match e.try_ws_url(&format!(
        "ws://127.0.0.1:{}/ws?query=*:items&after={after}",
        e.port
    )) {
        Err((410, body)) => assert!(body.contains("oldest") || !body.is_empty(), "{body}"),
        Err(other) => panic!("expected 410, got {other:?}"),
        Ok(_) => panic!("expected 410, got a stream"),
    }
}

#[test]
fn snapshots_on_edges_take_their_watermarks_from_the_jetstream_stream() {
    use support::rows::{assert_same, item_operation, items, Rows, Writer};
    let seed = support::rng::seed();
    println!("scale-out snapshot seed {seed} (replay: WALCAST_SEED={seed})");
    let mut db = TestDb::new("nats_snapshot");
    items(&mut db, 2000);
    let nats = nats();
    let _relay = relay(&db, &nats);
    let edges: Vec<Proxy> = (0..2)
        .map(|i| {
            let p = Proxy::launch(
                &cluster().url(&db.name),
                &format!("{}_edge{i}", db.name),
                &["--nats-url", &nats.url(), "--snapshot-chunk-rows", "40"],
                Launch::default(),
            );
            p.wait_healthy();
            p
        })
        .collect();
    let mut w = Writer::start(&db.name, seed, item_operation);
    // One snapshot client per edge: each edge sees both edges' watermarks
    // and keeps to its own.
    let mut clients: Vec<(support::Client, Rows, bool)> = edges
        .iter()
        .map(|e| {
            (
                e.ws_params("query=*:items&snapshot=1"),
                Rows::new(&["id"]),
                false,
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut synced = vec![false; clients.len()];
    let mut sync_written = false;
    while synced.iter().any(|s| !s) {
        assert!(
            Instant::now() < deadline,
            "snapshots or the sync row did not arrive"
        );
        if !sync_written && clients.iter().all(|(_, _, done)| *done) {
            // The writer's last transaction commits before the sync row.
            w.stop();
            db.exec("INSERT INTO items VALUES (-1, 0, 'sync')");
            sync_written = true;
        }
        for (i, (c, rows, done)) in clients.iter_mut().enumerate() {
            match c.next() {
                Some(Got::Text(t)) => {
                    let v = json(&t);
                    if v["type"] == "snapshot" && v["state"] == "done" {
                        *done = true;
                    }
                    if v["columns"]["id"] == -1 {
                        synced[i] = true;
                    }
                    rows.apply(&v);
                }
                Some(Got::Closed(code, reason)) => panic!("edge {i} closed with {code} {reason}"),
                None => {}
            }
        }
    }
    let table = Rows::read(&mut db, "items", &["id"]);
    assert!(w.count() > 20);
    for (_, rows, _) in &clients {
        assert_same(rows, &table, seed);
    }
    for e in &edges {
        assert_eq!(e.metric("walcast_backfills_done_total"), 1);
    }
}

#[test]
fn a_relay_that_loses_its_slot_tells_the_edges_clients() {
    let mut db = setup("scale_lost");
    let nats = nats();
    let relay = relay(&db, &nats);
    let edge = edge(&db, &nats);
    let mut live = edge.ws("insert:items");
    db.exec("INSERT INTO items SELECT g, 'x' FROM generate_series(1, 5) g");
    assert_eq!(
        frames(&mut live, 5)
            .iter()
            .map(|f| id(f))
            .collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    // The relay's slot goes (as in a failover to a server without it).
    let slot = format!("{}_relay", db.name);
    let deadline = Instant::now() + WAIT;
    loop {
        db.exec(&format!(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE slot_name = '{slot}' AND active_pid IS NOT NULL"
        ));
        let dropped = db
            .client
            .batch_execute(&format!("SELECT pg_drop_replication_slot('{slot}')"));
        if dropped.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "could not drop the relay's slot");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The relay says so in the stream; the edge closes its clients with
    // the reason instead of leaving them waiting.
    let (code, reason) = live.close_frame(WAIT).expect("the edge's client is told");
    assert_eq!(code, 1013, "{reason}");
    assert!(reason.contains("the relay stopped"), "{reason}");
    // (The relay itself exits with the reason: a lost slot stops it.)
    drop(relay);
    match edge.try_ws_url(&format!(
        "ws://127.0.0.1:{}/ws?query=insert:items",
        edge.port
    )) {
        Ok(_) => panic!("the edge took a client for a stream that ended"),
        Err((status, body)) => assert_eq!(status, 503, "{body}"),
    }
}
