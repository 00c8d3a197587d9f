//! A slot dropped by an administrator and PostgreSQL restarted under the
//! proxy (slow and stalled clients: delivery.rs). This binary has its own cluster,
//! because it restarts it.

use crate::support;

use std::time::{Duration, Instant};
use support::{json, Proxy};
use walcast_cluster::{Cluster, Config};

fn db(cluster: &Cluster, name: &str) -> postgres::Client {
    cluster.create_database(name).expect("create database");
    let mut c =
        postgres::Client::connect(&cluster.conninfo(name), postgres::NoTls).expect("connect");
    c.batch_execute("CREATE TABLE users (id int PRIMARY KEY, payload text)")
        .expect("table");
    c
}

#[test]
fn postgres_restart_is_survived_without_a_gap_and_a_dropped_slot_is_reported() {
    let mut cluster = Cluster::start_with(Config::default()).expect("cluster");
    let _ = db(&cluster, "restart");
    let proxy = Proxy::start(&cluster, "restart", "restart_proxy", &[]);
    let mut client = proxy.ws("insert:users");
    let conninfo = cluster.conninfo("restart");
    let insert = |from: i32, to: i32| {
        let mut c = postgres::Client::connect(&conninfo, postgres::NoTls).expect("connect");
        for i in from..to {
            c.execute("INSERT INTO users VALUES ($1, 'p')", &[&i])
                .expect("insert");
        }
    };
    insert(0, 50);
    let mut got = client.texts(50, Duration::from_secs(10));
    cluster.restart("fast").expect("restart PostgreSQL");
    insert(50, 100);
    proxy.wait_healthy();
    got.extend(client.texts(50, Duration::from_secs(30)));
    let ids: Vec<i64> = got
        .iter()
        .map(|f| json(f)["columns"]["id"].as_i64().unwrap_or(-1))
        .collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique,
        (0..100).collect::<Vec<i64>>(),
        "no change lost across the restart"
    );
    let (_, metrics) = proxy.get("/metrics").expect("metrics");
    assert!(
        !metrics.contains("walcast_replication_reconnects_total 0"),
        "{metrics}"
    );

    // An administrator drops the slot: terminate its walsender and drop it
    // before the proxy takes it again.
    let mut admin =
        postgres::Client::connect(&cluster.conninfo("restart"), postgres::NoTls).expect("admin");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let _ = admin.batch_execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE slot_name = 'restart_proxy' AND active_pid IS NOT NULL",
        );
        if admin
            .batch_execute("SELECT pg_drop_replication_slot('restart_proxy')")
            .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "could not drop the slot");
        std::thread::sleep(Duration::from_millis(5));
    }
    let close = client
        .close_frame(Duration::from_secs(20))
        .expect("the client is told");
    // 1013 with the reason: the changes since the slot's confirmed
    // position are lost, not only the stream stopped.
    assert_eq!(close.0, 1013, "{close:?}");
    assert!(close.1.contains("restart_proxy is gone"), "{close:?}");
    let (status, body) = proxy.get("/healthz").expect("healthz");
    assert_eq!(status, 503, "{body}");
    let h = json(&body);
    assert_eq!(h["status"], "failed");
    assert!(
        h["last_error"].as_str().unwrap_or("").contains("dropped"),
        "{body}"
    );
}

/// The database URL leads to another cluster after a reconnect (a server
/// rebuilt on the same address): the proxy stops with the reason instead of
/// streaming a history that is not its slot's.
#[test]
fn another_cluster_behind_the_same_address_stops_the_proxy_with_the_reason() {
    // The database `postgres`, which the second cluster has from its start:
    // the proxy cannot come back before it exists.
    let mut first = Cluster::start_with(Config::default()).expect("cluster");
    let port = first.port();
    first
        .psql(
            "postgres",
            "CREATE TABLE users (id int PRIMARY KEY, payload text)",
        )
        .expect("table");
    let proxy = Proxy::start(&first, "postgres", "moved_proxy", &[]);
    let mut client = proxy.ws("insert:users");
    first.stop().expect("stop the first cluster");
    drop(first);
    let _second = Cluster::start_with(Config {
        port: Some(port),
        ..Config::default()
    })
    .expect("another cluster on the same port");
    let close = client
        .close_frame(Duration::from_secs(30))
        .expect("the client is told");
    assert_eq!(close.0, 1011, "{close:?}");
    let (status, body) = proxy.get("/healthz").expect("healthz");
    assert_eq!(status, 503, "{body}");
    let h = json(&body);
    assert_eq!(h["status"], "failed", "{body}");
    assert!(
        h["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("another PostgreSQL cluster"),
        "{body}"
    );
}
