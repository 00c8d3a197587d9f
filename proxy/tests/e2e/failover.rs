//! Database failover: the proxy's slots are failover slots on PostgreSQL 17
//! and newer (synchronized to standbys that ask for them), and a database
//! URL with several hosts is walked as libpq walks it, honouring
//! `target_session_attrs`.

use crate::support;

use std::time::{Duration, Instant};
use support::{json, Launch, Proxy};
use walcast_cluster::nats::NatsServer;
use walcast_cluster::{Cluster, Config};
use walcast_tests::{cluster, TestDb};

const WAIT: Duration = Duration::from_secs(10);

/// The server's major version.
fn major(db: &mut TestDb) -> u32 {
    let row = db
        .client
        .query_one(
            "SELECT current_setting('server_version_num')::int / 10000",
            &[],
        )
        .expect("server_version_num");
    row.get::<_, i32>(0) as u32
}

/// Each named slot's `failover` flag (17+).
fn failover_flags(db: &mut TestDb, slots: &[&str]) -> Vec<(String, bool)> {
    let names: Vec<String> = slots.iter().map(|s| s.to_string()).collect();
    db.client
        .query(
            "SELECT slot_name::text, failover FROM pg_replication_slots \
             WHERE slot_name = ANY($1) ORDER BY slot_name",
            &[&names],
        )
        .expect("pg_replication_slots")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[test]
fn slots_are_failover_slots_on_17_and_newer_unless_turned_off() {
    let mut db = TestDb::new("failover_slots");
    db.exec("CREATE TABLE items (id int PRIMARY KEY)");
    let major = major(&mut db);
    // A slot made before: not a failover slot; the proxy makes it one.
    let old = db.slot("old");
    let proxy = Proxy::start(cluster(), &db.name, &old, &[]);
    let (status, body) = proxy.get("/v1/init?name=fo").expect("init");
    assert_eq!(status, 200, "{body}");
    let stream = json(&body)["slotName"]
        .as_str()
        .expect("slotName")
        .to_owned();
    let off = format!("{}_off", db.name);
    let plain = Proxy::start(cluster(), &db.name, &off, &["--failover-slots", "false"]);
    // A relay makes its slot the same way.
    let nats = NatsServer::start().expect("a private nats-server (./scripts/setup.sh installs it)");
    let relay_slot = format!("{}_relay", db.name);
    let relay = Proxy::launch(
        &cluster().url(&db.name),
        &relay_slot,
        &["relay", "--nats-url", &nats.url()],
        Launch::default(),
    );
    relay.wait_healthy();
    // Each proxy streams from its slot.
    let (mut a, mut b) = (proxy.ws("insert:items"), plain.ws("insert:items"));
    db.exec("INSERT INTO items VALUES (1)");
    assert_eq!(a.texts(1, WAIT).len(), 1);
    assert_eq!(b.texts(1, WAIT).len(), 1);
    let slots = [old.as_str(), &stream, &off, &relay_slot];
    if major >= 17 {
        let mut want = vec![
            (old.clone(), true),
            (stream.clone(), true),
            (off.clone(), false),
            (relay_slot.clone(), true),
        ];
        want.sort();
        assert_eq!(
            failover_flags(&mut db, &slots),
            want,
            "PostgreSQL {major}: failover slots unless --failover-slots false"
        );
    } else {
        // Before 17 there are no failover slots: the server has no such
        // column, and the four slots are plain ones.
        let e = db
            .client
            .query("SELECT failover FROM pg_replication_slots", &[])
            .expect_err("no failover column before 17");
        let message = e.as_db_error().map(|d| d.message().to_owned());
        assert!(
            message.as_deref().is_some_and(|m| m.contains("failover")),
            "{message:?}"
        );
        let names: Vec<String> = slots.iter().map(|s| s.to_string()).collect();
        let count: i64 = db
            .client
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = ANY($1)",
                &[&names],
            )
            .expect("slots")
            .get(0);
        assert_eq!(count, 4, "PostgreSQL {major}: the four slots exist");
    }
}

/// A second cluster whose sessions are read-only (as a standby's are), with
/// a database named `db`.
fn read_only_cluster(db: &str) -> Cluster {
    let ro = Cluster::start_with(Config::default()).expect("a second cluster");
    ro.create_database(db).expect("database");
    ro.psql(
        "postgres",
        "ALTER SYSTEM SET default_transaction_read_only = on",
    )
    .expect("read-only sessions");
    ro.psql("postgres", "SELECT pg_reload_conf()")
        .expect("reload");
    ro
}

#[test]
fn a_multi_host_url_lands_on_the_server_that_takes_writes() {
    let mut db = TestDb::new("multi_host");
    db.exec("CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'a')");
    let ro = read_only_cluster(&db.name);
    // The read-only server first, then the shared cluster.
    let url = cluster().url(&db.name).replacen(
        "127.0.0.1:",
        &format!("127.0.0.1:{},127.0.0.1:", ro.port()),
        1,
    ) + "?target_session_attrs=read-write";
    let slot = format!("{}_proxy", db.name);
    let proxy = Proxy::spawn(&url, &slot, &[]);
    proxy.wait_healthy();
    // Live: the writable server's changes, its rows read by snapshot=1.
    let mut c = proxy.ws_params("query=*:items&snapshot=1");
    db.exec("INSERT INTO items VALUES (2, 'b')");
    let mut frames = Vec::new();
    let seen =
        |frames: &[String], key: &str, value: &str| frames.iter().any(|f| json(f)[key] == value);
    while !(seen(&frames, "action", "I") && seen(&frames, "state", "done")) {
        let next = c.texts(1, WAIT);
        assert!(!next.is_empty(), "no insert after {frames:?}");
        frames.extend(next);
    }
    let mut ids: Vec<i64> = frames
        .iter()
        .filter_map(|f| json(f)["columns"]["id"].as_i64())
        .collect();
    // Applied in order (R and I both put the row), the client holds both.
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids, [1, 2], "{frames:?}");
    // The slots are on the writable server only.
    let (status, body) = proxy.get("/v1/init?name=mh").expect("init");
    assert_eq!(status, 200, "{body}");
    let on = |conninfo: &str| -> i64 {
        let mut c = postgres::Client::connect(conninfo, postgres::NoTls).expect("connect");
        c.query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
            &[],
        )
        .expect("slots")
        .get(0)
    };
    assert_eq!(
        on(&cluster().conninfo(&db.name)),
        2,
        "the proxy's and the stream's slot"
    );
    assert_eq!(on(&ro.conninfo(&db.name)), 0);

    // Only the read-only server: the proxy keeps trying, and says why.
    let only = ro.url(&db.name) + "?target_session_attrs=read-write";
    let waiting = Proxy::spawn(&only, &format!("{}_ro", db.name), &[]);
    let deadline = Instant::now() + WAIT;
    let health = loop {
        let (_, body) = waiting.get("/healthz").expect("healthz");
        if body.contains("does not allow writes") || Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        health.contains("target_session_attrs=read-write")
            && health.contains("does not allow writes"),
        "{health}"
    );
    assert_ne!(waiting.get("/healthz").expect("healthz").0, 200);
}

/// A primary with the database `db` (a table `items`) and a streaming
/// standby set up for failover slots; on 17+ the primary's logical
/// walsenders wait for the standby (`synchronized_standby_slots`), so no
/// client gets a change the standby could lose.
fn primary_and_standby(db: &str) -> (Cluster, Cluster, u32) {
    let primary = Cluster::start_with(Config::default()).expect("primary");
    primary.create_database(db).expect("database");
    primary
        .psql(db, "CREATE TABLE items (id int PRIMARY KEY, v int)")
        .expect("table");
    let major: u32 = primary
        .psql(
            "postgres",
            "SELECT current_setting('server_version_num')::int / 10000",
        )
        .expect("version")
        .parse()
        .expect("a number");
    let standby = Cluster::standby_of(&primary, "standby1", Config::default()).expect("standby");
    if major >= 17 {
        primary
            .psql(
                "postgres",
                "ALTER SYSTEM SET synchronized_standby_slots = 'standby1'",
            )
            .expect("synchronized_standby_slots");
        primary
            .psql("postgres", "SELECT pg_reload_conf()")
            .expect("reload");
    }
    (primary, standby, major)
}

/// The URL of the database `db` on the primary, then the standby, for the
/// server that takes writes.
fn both(primary: &Cluster, standby: &Cluster, db: &str) -> String {
    format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{db}?target_session_attrs=read-write",
        primary.port(),
        standby.port()
    )
}

/// Inserts ids `from..to`, one transaction each, through `conninfo`.
fn insert(conninfo: &str, ids: std::ops::Range<i32>) {
    let mut c = postgres::Client::connect(conninfo, postgres::NoTls).expect("connect");
    for id in ids {
        c.execute("INSERT INTO items VALUES ($1, $1)", &[&id])
            .expect("insert");
    }
}

/// Waits until `check` holds, for at most `within`.
fn wait_until(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the standby has `slot`, synchronized and ready to use.
fn wait_synced(standby: &Cluster, slot: &str) {
    wait_until(
        Duration::from_secs(60),
        &format!("the slot {slot} synchronized to the standby"),
        || {
            standby
                .psql(
                    "postgres",
                    &format!(
                        "SELECT count(*) FROM pg_replication_slots \
                         WHERE slot_name = '{slot}' AND synced AND NOT temporary"
                    ),
                )
                .map(|n| n == "1")
                .unwrap_or(false)
        },
    );
}

/// The ids in the table `items` of `db` on `server`, in order.
fn table_ids(server: &Cluster, db: &str) -> Vec<i64> {
    server
        .psql(
            db,
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM items",
        )
        .expect("rows")
        .split(',')
        .map(|i| i.parse().expect("id"))
        .collect()
}

/// The ids of the row frames among `frames`, in order.
fn ids(frames: &[String]) -> Vec<i64> {
    frames
        .iter()
        .filter_map(|f| json(f)["columns"]["id"].as_i64())
        .collect()
}

#[test]
fn after_a_failover_live_clients_go_on_with_the_synced_slot_or_are_told() {
    let db = "failover_live";
    let (mut primary, standby, major) = primary_and_standby(db);
    let url = both(&primary, &standby, db);
    let proxy = Proxy::spawn(&url, "walcast_proxy", &[]);
    proxy.wait_healthy();
    // Every insert; a filtered query (v = id); and one that leaves before
    // the failover and resumes after it with `after=`.
    let mut client = proxy.ws("insert:items");
    let mut filtered = proxy.ws("insert:items:v.gt.50");
    let mut leaving = proxy.ws("insert:items");
    insert(&primary.conninfo(db), 1..101);
    let mut got = ids(&client.texts(100, WAIT));
    assert_eq!(got, (1..101).collect::<Vec<i64>>());
    let mut got_filtered = ids(&filtered.texts(50, WAIT));
    assert_eq!(got_filtered, (51..101).collect::<Vec<i64>>());
    let seen = leaving.texts(80, WAIT);
    assert_eq!(ids(&seen), (1..81).collect::<Vec<i64>>());
    let after = json(&seen[79])["pos"].as_str().expect("pos").to_owned();
    drop(leaving);
    if major >= 17 {
        wait_synced(&standby, "walcast_proxy");
    } else {
        wait_recorded(&standby, db, "walcast_proxy");
    }
    // The primary's machine dies; the standby is promoted.
    primary.kill().expect("SIGKILL the primary");
    standby.promote().expect("promote");
    let promoted = Instant::now();
    insert(&standby.conninfo(db), 101..201);
    let resume_on =
        |port: u16| format!("ws://127.0.0.1:{port}/ws?query=insert:items&after={after}");
    let resume = resume_on(proxy.port);
    if major >= 17 {
        // The proxy found its slot on the new primary: the clients, still
        // connected, get every change committed there, once, in order.
        let first = client.texts(1, Duration::from_secs(30));
        eprintln!(
            "first change on the new primary reached the client {:?} after the promotion",
            promoted.elapsed()
        );
        got.extend(ids(&first));
        got.extend(ids(&client.texts(99, WAIT)));
        let table = table_ids(&standby, db);
        assert_eq!(
            got, table,
            "the client holds exactly the new primary's rows, in order"
        );
        assert_eq!(got, (1..201).collect::<Vec<i64>>());
        got_filtered.extend(ids(&filtered.texts(100, WAIT)));
        assert_eq!(
            got_filtered,
            (51..201).collect::<Vec<i64>>(),
            "the filtered client"
        );
        // The client that left resumes after its last position.
        let mut back = proxy.ws_url(&resume);
        assert_eq!(
            ids(&back.texts(120, WAIT)),
            (81..201).collect::<Vec<i64>>(),
            "the resumed client: each change after its position, once"
        );
    } else {
        // PostgreSQL 15 and 16: the standby never had the slot. The proxy
        // says so, closes its clients with the reason, refuses to resume
        // (410: the changes will not come) and makes no slot on its own.
        for c in [&mut client, &mut filtered] {
            let (code, reason) = c
                .close_frame(Duration::from_secs(30))
                .expect("the client is closed");
            assert_eq!(code, 1013, "{reason}");
            assert!(
                reason.contains("walcast_proxy is gone from the server"),
                "{reason}"
            );
        }
        let (status, health) = proxy.get("/healthz").expect("healthz");
        assert_eq!(status, 503, "{health}");
        assert!(
            json(&health)["last_error"]
                .as_str()
                .unwrap_or("")
                .contains("failover"),
            "{health}"
        );
        match proxy.try_ws_url(&resume) {
            Ok(_) => panic!("a client resumed on a proxy that lost its slot"),
            Err((status, body)) => {
                assert_eq!(status, 410, "{body}");
                assert_eq!(json(&body)["code"], "POSITION_GONE", "{body}");
                assert!(body.contains("failover"), "{body}");
            }
        }
        assert!(
            proxy
                .get("/metrics")
                .expect("metrics")
                .1
                .contains("walcast_slots_lost_total 1"),
            "counted"
        );
        let logical_slots = || {
            standby
                .psql(
                    "postgres",
                    "SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'",
                )
                .expect("slots")
        };
        assert_eq!(logical_slots(), "0", "no slot made without being asked");
        drop(proxy);
        // Started again on the new primary, the proxy knows from
        // walcast.streams (which the standby replicated) that its slot was
        // lost, rather than taking it for a first start.
        let again = Proxy::spawn(&url, "walcast_proxy", &[]);
        wait_until(
            Duration::from_secs(30),
            "/healthz says the slot is lost",
            || {
                again
                    .get("/healthz")
                    .map(|(status, body)| {
                        status == 503 && body.contains("recorded in walcast.streams")
                    })
                    .unwrap_or(false)
            },
        );
        assert_eq!(logical_slots(), "0", "no slot made on a restart either");
        drop(again);
        // Asked to, it makes a new slot and goes on; a resume from before
        // is told the changes in between are missing.
        let recreated = Proxy::spawn(&url, "walcast_proxy", &["--recreate-lost-slot"]);
        recreated.wait_healthy();
        assert_eq!(logical_slots(), "1");
        match recreated.try_ws_url(&resume_on(recreated.port)) {
            Ok(_) => panic!("a client resumed across the lost changes"),
            Err((status, body)) => {
                assert_eq!(status, 410, "{body}");
                assert_eq!(json(&body)["code"], "POSITION_GONE", "{body}");
                assert!(body.contains("was lost and made again"), "{body}");
            }
        }
        let mut fresh = recreated.ws("insert:items");
        insert(&standby.conninfo(db), 201..211);
        assert_eq!(
            ids(&fresh.texts(10, WAIT)),
            (201..211).collect::<Vec<i64>>()
        );
        let metrics = recreated.get("/metrics").expect("metrics").1;
        assert!(
            metrics.contains("walcast_slots_recreated_total 1"),
            "{metrics}"
        );
    }
}

/// Waits until the standby has replayed the record of `slot` in
/// `walcast.streams` (ordinary data, replicated as any row).
fn wait_recorded(standby: &Cluster, db: &str, slot: &str) {
    wait_until(
        Duration::from_secs(30),
        &format!("the standby replayed the record of {slot}"),
        || {
            standby
                .psql(
                    db,
                    &format!("SELECT count(*) FROM walcast.streams WHERE slot_name = '{slot}'"),
                )
                .map(|n| n == "1")
                .unwrap_or(false)
        },
    );
}

#[test]
fn after_a_failover_a_durable_stream_resumes_after_its_last_ack_or_is_refused() {
    use support::durable::{frame, init, transaction};
    let db = "failover_durable";
    let (mut primary, standby, major) = primary_and_standby(db);
    let url = both(&primary, &standby, db);
    let proxy = Proxy::spawn(&url, "walcast_proxy", &[]);
    proxy.wait_healthy();
    let slot = init(&proxy, "/v1/init?name=orders")["slotName"]
        .as_str()
        .expect("slotName")
        .to_owned();
    let open = |acked: Option<&str>| {
        let extra = acked.map(|a| format!("&acked={a}")).unwrap_or_default();
        proxy.try_ws_url(&format!(
            "ws://127.0.0.1:{}/v1/lr/stream?slotName={slot}{extra}",
            proxy.port
        ))
    };
    let mut c = open(None).expect("the stream");
    insert(&primary.conninfo(db), 1..51);
    let id = |change: &serde_json::Value| change["columns"]["id"].as_i64().unwrap_or(-1);
    let mut last_ack = String::new();
    for want in 1..51 {
        let (_, changes, commit) = transaction(&mut c);
        assert_eq!(changes.iter().map(id).collect::<Vec<_>>(), [want]);
        last_ack = commit["end_lsn"].as_str().expect("end_lsn").to_owned();
        c.send(&format!(r#"{{"lsn":"{last_ack}"}}"#));
    }
    c.send(&format!(r#"{{"lsn":"{last_ack}","reply":true}}"#));
    loop {
        let f = frame(&mut c);
        if f["ack"] == last_ack.as_str() {
            break;
        }
    }
    if major >= 17 {
        wait_synced(&standby, &slot);
    } else {
        wait_recorded(&standby, db, &slot);
    }
    primary.kill().expect("SIGKILL the primary");
    // The consumer's replication connection is gone: the client is told.
    let (code, reason) = c.close_frame(Duration::from_secs(30)).expect("closed");
    assert_eq!(code, 1011, "{reason}");
    standby.promote().expect("promote");
    insert(&standby.conninfo(db), 51..101);
    if major >= 17 {
        // The client resumes after its last ACK: the synchronized slot may
        // lag it, `acked=` says where the client is.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut c = loop {
            match open(Some(&last_ack)) {
                Ok(c) => break c,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "the stream did not come back: {e:?}"
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        };
        for want in 51..101 {
            let (_, changes, _) = transaction(&mut c);
            assert_eq!(
                changes.iter().map(id).collect::<Vec<_>>(),
                [want],
                "every transaction after the last ACK, once, in order"
            );
        }
    } else {
        // No failover slots: the stream's slot is not on the new primary.
        // The stream is told it is lost (410 STREAM_LOST,
        // docs/streams.md#lost-streams) rather than served from anywhere
        // else or called unknown.
        let deadline = Instant::now() + Duration::from_secs(30);
        let (status, body) = loop {
            match open(Some(&last_ack)) {
                Ok(_) => panic!("a stream was served on the new primary"),
                Err((503, _)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(refused) => break refused,
            }
        };
        assert_eq!(status, 410, "{body}");
        assert_eq!(json(&body)["code"], "STREAM_LOST", "{body}");
        assert!(body.contains("failover"), "{body}");
        let listed = json(&proxy.get("/v1/streams").expect("list").1);
        let me = listed["streams"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["slotName"] == slot.as_str()).cloned())
            .unwrap_or_else(|| panic!("{slot} not listed: {listed}"));
        assert_eq!(me["lost"], "no_slot", "{me}");
        // A re-snapshot is refused the same way.
        let (status, body) = proxy
            .post(
                &format!("/v1/streams/{slot}/snapshot"),
                r#"{"tables":["public.items"]}"#,
            )
            .expect("re-snapshot");
        assert_eq!(status, 410, "{body}");
        assert_eq!(json(&body)["code"], "STREAM_LOST", "{body}");
        // Its name is not given to a new stream, and no slot is made for it.
        let again = init(&proxy, "/v1/init?name=orders")["slotName"]
            .as_str()
            .expect("slotName")
            .to_owned();
        assert_ne!(again, slot);
        // DELETE forgets it.
        let (status, body) = proxy
            .delete(&format!("/v1/streams/{slot}"))
            .expect("delete");
        assert_eq!(status, 200, "{body}");
        match open(None) {
            Ok(_) => panic!("a deleted stream was served"),
            Err((status, body)) => assert_eq!(status, 404, "{body}"),
        }
    }
}

#[test]
fn doctor_checks_failover_readiness_on_every_server_of_the_url() {
    let db = "failover_doctor";
    let (primary, standby, major) = primary_and_standby(db);
    primary
        .psql(
            db,
            "INSERT INTO walcast.streams (slot_name) VALUES ('walcast_gone1')",
        )
        .expect("a record without its slot");
    if major >= 17 {
        primary
            .psql(
                db,
                "SELECT pg_create_logical_replication_slot('walcast_plain1', 'walcast', false, false, false)",
            )
            .expect("a slot that is not a failover slot");
    }
    let url = both(&primary, &standby, db);
    let out = support::proxy_command(None)
        .args(["doctor", "--database-url", &url])
        .env_remove("DATABASE_URL")
        .output()
        .expect("walcast-proxy doctor");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains(
            "warn  slot walcast_gone1: recorded in walcast.streams but not on this server"
        ),
        "{text}"
    );
    if major >= 17 {
        for line in [
            "warn  failover slots: not failover slots: walcast_plain1",
            "ok    synchronized_standby_slots: standby1",
            &format!(
                "ok    standby 127.0.0.1:{}: synchronizes slots",
                standby.port()
            ),
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    } else {
        assert!(
            text.contains(&format!(
                "warn  failover: PostgreSQL {major} has no failover slots"
            )),
            "{text}"
        );
    }
    // Warnings, nothing that stops streaming.
    assert_eq!(out.status.code(), Some(0), "{text}");
}

/// A primary and its standby where changes can be lost in a failover: on
/// 17+ the setting that prevents it is off (the primary's walsenders no
/// longer wait for the standby).
fn losing_primary_and_standby(db: &str) -> (Cluster, Cluster, u32) {
    let (primary, standby, major) = primary_and_standby(db);
    if major >= 17 {
        for sql in [
            "ALTER SYSTEM RESET synchronized_standby_slots",
            "SELECT pg_reload_conf()",
        ] {
            primary.psql("postgres", sql).expect(sql);
        }
    }
    (primary, standby, major)
}

/// Once the standby has `rows` rows in `items`, it stops receiving WAL:
/// what the primary commits next is on the primary's history alone.
fn cut_off(primary: &Cluster, standby: &Cluster, db: &str, rows: usize) {
    wait_until(
        Duration::from_secs(30),
        &format!("the standby has {rows} rows"),
        || {
            standby
                .psql(db, "SELECT count(*) FROM items")
                .map(|n| n == rows.to_string())
                .unwrap_or(false)
        },
    );
    for sql in [
        "ALTER SYSTEM SET primary_conninfo = ''",
        "SELECT pg_reload_conf()",
    ] {
        standby.psql("postgres", sql).expect(sql);
    }
    wait_until(Duration::from_secs(30), "the standby disconnected", || {
        primary
            .psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'standby1'",
            )
            .map(|n| n == "0")
            .unwrap_or(false)
    });
}

/// Kills the primary and promotes the standby cut off at `rows` rows: what
/// the primary committed after those never happened on the new primary.
fn fail_over_losing(primary: &mut Cluster, standby: &Cluster, db: &str, rows: usize) {
    primary.kill().expect("SIGKILL the primary");
    standby.promote().expect("promote");
    assert_eq!(
        standby
            .psql(db, "SELECT count(*) FROM items")
            .expect("rows"),
        rows.to_string(),
        "the rows committed after the cut never happened on the new primary"
    );
}

#[test]
fn changes_delivered_but_lost_in_the_failover_are_told_never_left_standing() {
    let db = "failover_phantom";
    let (mut primary, standby, major) = losing_primary_and_standby(db);
    let url = both(&primary, &standby, db);
    let mut proxy = Proxy::spawn(&url, "walcast_proxy", &[]);
    proxy.wait_healthy();
    let mut client = proxy.ws("insert:items");
    insert(&primary.conninfo(db), 1..11);
    let seen = client.texts(10, WAIT);
    assert_eq!(ids(&seen), (1..11).collect::<Vec<i64>>());
    let after = json(&seen[4])["pos"].as_str().expect("pos").to_owned();
    if major >= 17 {
        wait_synced(&standby, "walcast_proxy");
    }
    // The client gets rows the standby never will.
    cut_off(&primary, &standby, db, 10);
    insert(&primary.conninfo(db), 11..21);
    let late = client.texts(10, WAIT);
    assert_eq!(ids(&late), (11..21).collect::<Vec<i64>>());
    let phantom = json(&late[4])["pos"].as_str().expect("pos").to_owned();
    fail_over_losing(&mut primary, &standby, db, 10);
    // The proxy notices that it delivered changes the new history lacks:
    // the client is told, and nobody resumes as if they had happened.
    let (code, reason) = client
        .close_frame(Duration::from_secs(30))
        .expect("the client is closed");
    assert_eq!(code, 1013, "{reason}");
    assert!(reason.contains("history left the old timeline"), "{reason}");
    let (status, health) = proxy.get("/healthz").expect("healthz");
    assert_eq!(status, 503, "{health}");
    assert!(health.contains("never happened on this server"), "{health}");
    let resume = |proxy: &Proxy, after: &str| {
        proxy.try_ws_url(&format!(
            "ws://127.0.0.1:{}/ws?query=insert:items&after={after}",
            proxy.port
        ))
    };
    match resume(&proxy, &after) {
        Ok(_) => panic!("a client resumed across changes that never happened"),
        Err((status, body)) => {
            assert_eq!(status, 410, "{body}");
            assert!(body.contains("never happened"), "{body}");
        }
    }
    // Started again, the proxy goes on from its slot (17+) and knows no
    // more what it delivered; the new primary's rows take the positions of
    // those that never happened. A resume from one of those is still
    // refused: this server's history holds no change there.
    drop(proxy);
    insert(&standby.conninfo(db), 11..31);
    proxy = Proxy::spawn(&url, "walcast_proxy", &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, body) = loop {
        match resume(&proxy, &phantom) {
            Ok(_) => panic!("a restarted proxy resumed from a change that never happened"),
            Err((503 | 0, _)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200))
            }
            Err(refused) => break refused,
        }
    };
    assert_eq!(status, 410, "{body}");
    if major < 17 {
        // The slot was not on the standby: lost, as docs/operations.md says.
        assert!(body.contains("walcast.streams"), "{body}");
        return;
    }
    assert!(body.contains(&format!("no change at {phantom}")), "{body}");
    // A position of this history is served.
    let mut fresh = proxy.ws("insert:items");
    insert(&standby.conninfo(db), 31..34);
    let got = fresh.texts(3, WAIT);
    assert_eq!(ids(&got), [31, 32, 33]);
    let from = json(&got[0])["pos"].as_str().expect("pos").to_owned();
    drop(fresh);
    let mut again = resume(&proxy, &from).expect("a resume from this history");
    assert_eq!(ids(&again.texts(2, WAIT)), [32, 33]);
}

#[test]
fn changes_a_relay_published_but_lost_in_the_failover_end_its_stream() {
    let db = "failover_relay_phantom";
    let (mut primary, standby, _) = losing_primary_and_standby(db);
    let url = both(&primary, &standby, db);
    let (nats, relay, edge) = relay_and_edge(&url);
    let relay_args = ["relay", "--nats-url", &nats.url()];
    let mut client = edge.ws("insert:items");
    insert(&primary.conninfo(db), 1..11);
    assert_eq!(ids(&client.texts(10, WAIT)), (1..11).collect::<Vec<i64>>());
    // The edge's client gets rows the standby never will.
    cut_off(&primary, &standby, db, 10);
    insert(&primary.conninfo(db), 11..21);
    assert_eq!(ids(&client.texts(10, WAIT)), (11..21).collect::<Vec<i64>>());
    // The relay is gone through the failover: what it published is known
    // again from the stream's last message when it starts.
    drop(relay);
    fail_over_losing(&mut primary, &standby, db, 10);
    insert(&standby.conninfo(db), 11..31);
    let relay = Proxy::launch(&url, "walcast_relay", &relay_args, Launch::default());
    let (code, reason) = client
        .close_frame(Duration::from_secs(30))
        .expect("the edge's client is told");
    assert_eq!(code, 1013, "{reason}");
    assert!(reason.contains("the relay stopped"), "{reason}");
    assert!(reason.contains("history left the old timeline"), "{reason}");
    // The new primary's rows 11 to 30 never reached the stream as if they
    // followed what the edge has.
    match edge.try_ws_url(&format!(
        "ws://127.0.0.1:{}/ws?query=insert:items",
        edge.port
    )) {
        Ok(_) => panic!("the edge took a client for a stream that ended"),
        Err((status, body)) => assert_eq!(status, 503, "{body}"),
    }
    drop(relay);
    // The stream ends there: a relay started on it again refuses.
    let mut again = support::proxy_command(None);
    again.args(["--database-url", &url, "--listen", "127.0.0.1:0"]);
    again.args(["--slot", "walcast_relay"]).args(relay_args);
    let stderr = support::refused_start(&mut again);
    assert!(stderr.contains("ends with a relay's notice"), "{stderr}");
    assert!(stderr.contains("--nats-stream"), "{stderr}");
}

#[test]
fn transactions_a_durable_stream_sent_but_lost_in_the_failover_are_refused_on_resume() {
    use support::durable::{frame, init, transaction};
    let db = "failover_durable_phantom";
    let (mut primary, standby, major) = losing_primary_and_standby(db);
    let url = both(&primary, &standby, db);
    let mut proxy = Proxy::spawn(&url, "walcast_proxy", &[]);
    proxy.wait_healthy();
    let slot = init(&proxy, "/v1/init?name=orders")["slotName"]
        .as_str()
        .expect("slotName")
        .to_owned();
    let open = |proxy: &Proxy, acked: &str| {
        proxy.try_ws_url(&format!(
            "ws://127.0.0.1:{}/v1/lr/stream?slotName={slot}&acked={acked}",
            proxy.port
        ))
    };
    let mut c = support::durable::stream(&proxy, &slot);
    let id = |change: &serde_json::Value| change["columns"]["id"].as_i64().unwrap_or(-1);
    // Reads and ACKs the transactions of ids `ids`; the last ACK.
    let read_and_ack = |c: &mut support::Client, ids: std::ops::Range<i64>| {
        let mut last = String::new();
        for want in ids {
            let (_, changes, commit) = transaction(c);
            assert_eq!(changes.iter().map(id).collect::<Vec<_>>(), [want]);
            last = commit["end_lsn"].as_str().expect("end_lsn").to_owned();
            c.send(&format!(r#"{{"lsn":"{last}"}}"#));
        }
        // The last ACK is confirmed once its reply comes.
        c.send(&format!(r#"{{"lsn":"{last}","reply":true}}"#));
        while frame(c)["ack"] != last.as_str() {}
        last
    };
    insert(&primary.conninfo(db), 1..11);
    read_and_ack(&mut c, 1..11);
    if major >= 17 {
        wait_synced(&standby, &slot);
    } else {
        wait_recorded(&standby, db, &slot);
    }
    // The client gets and ACKs transactions the standby never will.
    cut_off(&primary, &standby, db, 10);
    insert(&primary.conninfo(db), 11..21);
    let phantom = read_and_ack(&mut c, 11..21);
    fail_over_losing(&mut primary, &standby, db, 10);
    let (code, reason) = c.close_frame(Duration::from_secs(30)).expect("closed");
    assert_eq!(code, 1011, "{reason}");
    insert(&standby.conninfo(db), 11..31);
    let refused = |proxy: &Proxy| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match open(proxy, &phantom) {
                Ok(_) => panic!("the stream went on past transactions that never happened"),
                Err((503, _)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(refused) => break refused,
            }
        }
    };
    let (status, body) = refused(&proxy);
    assert_eq!(status, 410, "{body}");
    if major < 17 {
        // No failover slots: the stream's slot is not on the new primary.
        assert_eq!(json(&body)["code"], "STREAM_LOST", "{body}");
        return;
    }
    // This proxy sent them on the old timeline, past the switch point.
    assert_eq!(json(&body)["code"], "STREAM_DIVERGED", "{body}");
    assert!(body.contains("was sent transactions up to"), "{body}");
    // A proxy started again knows only the client's acked=, past the
    // switch point and not confirmed by the slot: refused as well.
    drop(proxy);
    proxy = Proxy::spawn(&url, "walcast_proxy", &[]);
    proxy.wait_healthy();
    let (status, body) = refused(&proxy);
    assert_eq!(status, 410, "{body}");
    assert_eq!(json(&body)["code"], "STREAM_DIVERGED", "{body}");
    assert!(body.contains(&format!("acked={phantom} is past")), "{body}");
}

#[test]
fn a_snapshot_read_through_a_failover_ends_with_the_new_primary_rows() {
    let db = "failover_snapshot";
    let (mut primary, standby, major) = primary_and_standby(db);
    primary
        .psql(
            db,
            "INSERT INTO items SELECT g, g FROM generate_series(1, 5000) g",
        )
        .expect("rows");
    let url = both(&primary, &standby, db);
    // Chunks of 100 rows at 1,000 rows a second: the failover comes while
    // the snapshot is read.
    let proxy = Proxy::spawn(
        &url,
        "walcast_proxy",
        &[
            "--snapshot-chunk-rows",
            "100",
            "--snapshot-rows-per-second",
            "1000",
        ],
    );
    proxy.wait_healthy();
    if major >= 17 {
        wait_synced(&standby, "walcast_proxy");
    } else {
        wait_recorded(&standby, db, "walcast_proxy");
    }
    let mut c = proxy.ws_params("query=*:items&snapshot=1");
    let mut seen = Snapshotting::default();
    assert_eq!(seen.read(&mut c, |s| s.chunks >= 2), None);
    assert!(!seen.done, "the snapshot is still being read");
    primary.kill().expect("SIGKILL the primary");
    standby.promote().expect("promote");
    // The new primary takes writes while the snapshot goes on.
    let mut sql =
        postgres::Client::connect(&standby.conninfo(db), postgres::NoTls).expect("connect");
    sql.batch_execute(
        "UPDATE items SET v = -v WHERE id % 7 = 0; \
         INSERT INTO items SELECT g, g FROM generate_series(5001, 5200) g; \
         DELETE FROM items WHERE id % 11 = 0; \
         INSERT INTO items VALUES (100000, 0)",
    )
    .expect("writes");
    let closed = seen.read(&mut c, |s| s.done && s.marker);
    if major < 17 {
        // No failover slots: the client is told, not left with half a snapshot.
        let (code, why) = closed.expect("the client is closed");
        assert_eq!(code, 1013, "{why}");
        return;
    }
    assert_eq!(closed, None, "the client stays connected");
    assert_eq!(
        seen.model.rows("items"),
        support::model::Model::read_table(&mut sql, "items"),
        "the snapshot and the changes give the new primary's rows"
    );
}

/// What a `snapshot=1` client of `items` has seen.
#[derive(Default)]
struct Snapshotting {
    model: support::model::Model,
    /// Snapshot progress frames.
    chunks: u32,
    done: bool,
    /// The insert of id 100000.
    marker: bool,
}

impl Snapshotting {
    /// Applies frames until `until` holds (`None`) or the client is closed
    /// (its code and reason), for at most a minute.
    fn read(
        &mut self,
        c: &mut support::Client,
        until: impl Fn(&Snapshotting) -> bool,
    ) -> Option<(u16, String)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !until(self) {
            assert!(
                Instant::now() < deadline,
                "{} chunks, done {}, marker {}",
                self.chunks,
                self.done,
                self.marker
            );
            match c.next() {
                Some(support::Got::Text(t)) => {
                    let f = json(&t);
                    assert!(f["error"].is_null(), "{f}");
                    if f["type"] == "snapshot" {
                        assert_ne!(f["state"], "failed", "{f}");
                        self.chunks += 1;
                        self.done |= f["state"] == "done";
                    }
                    self.marker |= f["action"] == "I" && f["columns"]["id"] == 100_000;
                    self.model.apply(&f);
                }
                Some(support::Got::Closed(code, why)) => return Some((code, why)),
                None => {}
            }
        }
        None
    }
}

/// The slots named `walcast_%` on `server`, by name.
fn walcast_slots(server: &Cluster) -> String {
    server
        .psql(
            "postgres",
            "SELECT coalesce(string_agg(slot_name, ',' ORDER BY slot_name), '') \
             FROM pg_replication_slots WHERE slot_name LIKE 'walcast%'",
        )
        .expect("pg_replication_slots")
}

#[test]
fn a_standby_decodes_while_the_primary_takes_the_writes() {
    let db = "standby_decoding";
    let (primary, standby, major) = primary_and_standby(db);
    insert(&primary.conninfo(db), 1..4);
    let proxy = Proxy::spawn(
        &standby.url(db),
        "walcast_standby",
        &["--primary-url", &primary.url(db)],
    );
    if major < 16 {
        // PostgreSQL 15 cannot decode on a standby: the proxy says so.
        let deadline = Instant::now() + WAIT;
        let health = loop {
            let (_, body) = proxy.get("/healthz").expect("healthz");
            if body.contains("cannot decode") || Instant::now() > deadline {
                break body;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            health.contains("cannot decode on a standby") && health.contains("failed"),
            "{health}"
        );
        assert_eq!(walcast_slots(&standby), "");
        // Nothing recorded for a slot that was never made.
        assert_eq!(
            primary
                .psql(db, "SELECT count(*) FROM walcast.streams")
                .expect("walcast.streams"),
            "0"
        );
        return;
    }
    proxy.wait_healthy();
    // The slot is on the standby; its record was written on the primary.
    assert_eq!(walcast_slots(&standby), "walcast_standby");
    assert_eq!(walcast_slots(&primary), "");
    assert_eq!(
        primary
            .psql(db, "SELECT string_agg(slot_name, ',') FROM walcast.streams")
            .expect("walcast.streams"),
        "walcast_standby"
    );

    // Live: the primary's writes, decoded on the standby.
    let mut live = proxy.ws("insert:items");
    insert(&primary.conninfo(db), 4..9);
    let frames = live.texts(5, WAIT);
    assert_eq!(ids(&frames), [4, 5, 6, 7, 8], "{frames:?}");

    // snapshot=1: the rows read on the primary between watermarks written
    // there, while it takes writes; the client ends with the table's rows.
    let mut snap = proxy.ws_params("query=*:items&snapshot=1");
    let writer = {
        let conninfo = primary.conninfo(db);
        std::thread::spawn(move || insert(&conninfo, 9..41))
    };
    let mut rows = std::collections::BTreeSet::new();
    let mut done = false;
    while !(done && rows.len() == 40) {
        let next = snap.texts(1, WAIT);
        assert!(
            !next.is_empty(),
            "stalled with {} rows, done: {done}",
            rows.len()
        );
        let f = json(&next[0]);
        if f["state"] == "done" {
            done = true;
        }
        if let Some(id) = f["columns"]["id"].as_i64() {
            rows.insert(id);
        }
    }
    writer.join().expect("writer");
    assert_eq!(rows, (1..41).collect(), "the table's rows");

    // A durable stream: its slot and exported snapshot on the standby, its
    // record (with its table list) on the primary, its changes the primary's.
    primary
        .psql(db, "CREATE TABLE others (id int PRIMARY KEY)")
        .expect("table");
    let created = support::durable::init(&proxy, "/v1/init?name=on_standby&tables=public.items");
    let slot = created["slotName"].as_str().expect("slotName").to_owned();
    assert_eq!(
        walcast_slots(&standby),
        format!("{slot},walcast_standby"),
        "the stream's slot is on the standby"
    );
    assert_eq!(walcast_slots(&primary), "");
    let page: Vec<i64> = support::durable::page(&proxy, &slot, "items")
        .iter()
        .filter_map(|r| r["id"].as_i64())
        .collect();
    assert_eq!(page, (1..41).collect::<Vec<_>>(), "the snapshot's rows");
    let mut stream = support::durable::stream(&proxy, &slot);
    // Outside the stream's tables: never sent.
    primary
        .psql(db, "INSERT INTO others VALUES (1000)")
        .expect("insert");
    insert(&primary.conninfo(db), 41..43);
    let mut streamed = Vec::new();
    let mut last_end = String::new();
    while streamed.len() < 2 {
        let (_, changes, c) = support::durable::transaction(&mut stream);
        streamed.extend(changes.iter().filter_map(|f| f["columns"]["id"].as_i64()));
        last_end = c["end_lsn"].as_str().expect("end_lsn").to_owned();
    }
    assert_eq!(streamed, [41, 42]);
    stream.send(&format!(r#"{{"lsn":"{last_end}","reply":true}}"#));
    assert_eq!(
        support::durable::reply(&mut stream)["ack"],
        last_end.as_str()
    );

    // Records are shared by the cluster: a proxy decoding on the primary
    // lists the standby's stream as lost (its slot is not on the primary).
    let beside = Proxy::spawn(&primary.url(db), "walcast_primary_side", &[]);
    beside.wait_healthy();
    let listed = json(&beside.get("/v1/streams").expect("list").1);
    let theirs = listed["streams"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["slotName"] == slot.as_str()).cloned())
        .unwrap_or_else(|| panic!("{slot} not listed: {listed}"));
    assert_eq!(theirs["lost"], "no_slot", "{theirs}");

    // The standby's URL alone, without --primary-url: a write fails with
    // PostgreSQL's reason. (Its own slot waits for the idle primary to log
    // its running transactions.)
    let alone = Proxy::spawn(&standby.url(db), "walcast_alone", &[]);
    let (status, body) = alone.get("/v1/init?name=alone").expect("init");
    assert_ne!(status, 200, "{body}");
    assert!(body.contains("read-only transaction"), "{body}");
}

/// A private nats-server, a relay (slot `walcast_relay`) and an edge for
/// the database URL `url`, both streaming.
fn relay_and_edge(url: &str) -> (NatsServer, Proxy, Proxy) {
    let nats = NatsServer::start().expect("a private nats-server (./scripts/setup.sh installs it)");
    let relay = Proxy::launch(
        url,
        "walcast_relay",
        &["relay", "--nats-url", &nats.url()],
        Launch::default(),
    );
    relay.wait_healthy();
    let edge = Proxy::launch(
        url,
        "walcast_edge",
        &["--nats-url", &nats.url()],
        Launch::default(),
    );
    edge.wait_healthy();
    (nats, relay, edge)
}

#[test]
fn after_a_failover_the_relay_goes_on_or_its_edges_clients_are_told() {
    let db = "failover_relay";
    let (mut primary, standby, major) = primary_and_standby(db);
    let url = both(&primary, &standby, db);
    let (_nats, _relay, edge) = relay_and_edge(&url);
    let mut client = edge.ws("insert:items");
    insert(&primary.conninfo(db), 1..51);
    let mut got = ids(&client.texts(50, WAIT));
    assert_eq!(got, (1..51).collect::<Vec<i64>>());
    if major >= 17 {
        wait_synced(&standby, "walcast_relay");
    } else {
        wait_recorded(&standby, db, "walcast_relay");
    }
    primary.kill().expect("SIGKILL the primary");
    standby.promote().expect("promote");
    insert(&standby.conninfo(db), 51..101);
    if major >= 17 {
        // The relay found its slot on the new primary: the edge's client,
        // still connected, gets every change committed there, once, in order.
        got.extend(ids(&client.texts(50, Duration::from_secs(30))));
        let table = table_ids(&standby, db);
        assert_eq!(
            got, table,
            "the edge's client holds exactly the new primary's rows"
        );
        assert_eq!(got, (1..101).collect::<Vec<i64>>());
        client.expect_silence(Duration::from_millis(500));
    } else {
        // PostgreSQL 15 and 16: the relay's slot is not on the promoted
        // server. The relay publishes that it is lost; the edge closes its
        // client with the reason and refuses new ones.
        let (code, reason) = client
            .close_frame(Duration::from_secs(30))
            .expect("the edge's client is told");
        assert_eq!(code, 1013, "{reason}");
        assert!(reason.contains("the relay stopped"), "{reason}");
        match edge.try_ws_url(&format!(
            "ws://127.0.0.1:{}/ws?query=insert:items",
            edge.port
        )) {
            Ok(_) => panic!("the edge took a client for a stream that ended"),
            Err((status, body)) => assert_eq!(status, 503, "{body}"),
        }
    }
}

#[test]
fn a_proxy_slot_postgres_invalidated_is_lost_and_made_again_only_when_asked() {
    // A slot more than 1 MB behind is invalidated at the next checkpoint.
    let cluster = Cluster::start_with(Config::small_slot_limit()).expect("cluster");
    let db = cluster
        .create_database("invalidated_slot")
        .expect("database");
    cluster
        .psql(
            &db,
            "CREATE TABLE filler (payload text); CREATE TABLE items (id int PRIMARY KEY, v int)",
        )
        .expect("tables");
    let slot = "walcast_behind";
    let url = cluster.url(&db);
    let proxy = Proxy::start(&cluster, &db, slot, &[]);
    let mut client = proxy.ws("insert:items");
    insert(&cluster.conninfo(&db), 1..3);
    let seen = client.texts(2, WAIT);
    assert_eq!(ids(&seen), [1, 2]);
    let after = json(&seen[1])["pos"].as_str().expect("pos").to_owned();
    drop(client);
    drop(proxy);
    cluster
        .outrun_slots(&db)
        .expect("WAL past the slots' limit");
    let status = || {
        cluster
            .psql(
                "postgres",
                &format!("SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{slot}'"),
            )
            .expect("slot status")
    };
    assert_eq!(status(), "lost", "the slot was not invalidated");

    // Started again, the proxy reports the slot lost, and keeps it.
    let again = Proxy::spawn(&url, slot, &[]);
    wait_until(WAIT, "/healthz says the slot was invalidated", || {
        again
            .get("/healthz")
            .map(|(code, body)| code == 503 && body.contains("was invalidated by PostgreSQL"))
            .unwrap_or(false)
    });
    assert!(again
        .get("/metrics")
        .expect("metrics")
        .1
        .contains("walcast_slots_lost_total 1"));
    assert_eq!(status(), "lost", "the slot is left as it is");
    drop(again);

    // Asked to, it drops the invalidated slot, makes a new one and goes
    // on; a resume from before is told the changes in between are missing.
    let recreated = Proxy::spawn(&url, slot, &["--recreate-lost-slot"]);
    recreated.wait_healthy();
    assert_ne!(status(), "lost", "a new slot");
    let resume = format!(
        "ws://127.0.0.1:{}/ws?query=insert:items&after={after}",
        recreated.port
    );
    match recreated.try_ws_url(&resume) {
        Ok(_) => panic!("a client resumed across the lost changes"),
        Err((code, body)) => {
            assert_eq!(code, 410, "{body}");
            assert_eq!(json(&body)["code"], "POSITION_GONE", "{body}");
            assert!(body.contains("was lost and made again"), "{body}");
        }
    }
    let mut fresh = recreated.ws("insert:items");
    insert(&cluster.conninfo(&db), 3..5);
    assert_eq!(ids(&fresh.texts(2, WAIT)), [3, 4]);
    assert!(recreated
        .get("/metrics")
        .expect("metrics")
        .1
        .contains("walcast_slots_recreated_total 1"));
}
