//! `walcast-proxy doctor` against real databases: a ready one, a role that
//! may not stream, and a server that is not there; and the descriptor limit
//! against `--max-clients`. `walcast-proxy health` (the container
//! healthcheck) against a proxy that streams, one that does not, and none.

use crate::support;

use walcast_tests::{cluster, TestDb};

fn doctor(url: &str) -> (i32, String) {
    doctor_with(url, None, &[])
}

/// Runs the doctor, under a descriptor limit when `nofile` is given.
fn doctor_with(url: &str, nofile: Option<u64>, extra: &[&str]) -> (i32, String) {
    let out = support::proxy_command(nofile)
        .args(["doctor", "--database-url", url])
        .args(extra)
        .env_remove("DATABASE_URL")
        .output()
        .expect("walcast-proxy doctor");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn a_ready_database_passes_every_check() {
    let db = TestDb::new("doctor_ready");
    let (code, text) = doctor(&cluster().url(&db.name));
    assert_eq!(code, 0, "{text}");
    for line in [
        "ok    wal_level: logical",
        "ok    replication privilege: yes",
        "ok    database encoding: UTF8",
        "ok    walcast plugin: a temporary walcast slot was created and dropped",
        "ok    extension: walcast is installed in this database",
        "walcast can stream this database.",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(!text.contains("FIX"), "{text}");
}

#[test]
fn a_role_without_replication_is_told_what_to_fix() {
    let mut db = TestDb::new("doctor_role");
    db.exec("DROP ROLE IF EXISTS doctor_plain; CREATE ROLE doctor_plain LOGIN");
    let url = cluster()
        .url(&db.name)
        .replacen("://postgres@", "://doctor_plain@", 1);
    assert!(url.contains("doctor_plain@"), "{url}");
    let (code, text) = doctor(&url);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("FIX   replication privilege: this role cannot stream: run ALTER ROLE"),
        "{text}"
    );
    assert!(
        text.contains("FIX   walcast plugin: cannot create a walcast slot"),
        "{text}"
    );
    assert!(text.contains("problem(s) to fix"), "{text}");
}

#[test]
fn an_unreachable_server_is_reported() {
    let (code, text) = doctor("postgres://nobody@127.0.0.1:1/none");
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("FIX   connection: cannot reach PostgreSQL"),
        "{text}"
    );
}

#[test]
fn the_descriptor_limit_is_checked_against_max_clients() {
    let db = TestDb::new("doctor_descriptors");
    let url = cluster().url(&db.name);
    let (code, text) = doctor_with(&url, Some(1024), &["--max-clients", "500"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("ok    descriptor limit: 1024 open files (hard limit 1024): room for 896 connections, --max-clients is 500"),
        "{text}"
    );
    let (code, text) = doctor_with(&url, Some(1024), &[]);
    assert_eq!(code, 0, "a low limit is a warning: {text}");
    assert!(
        text.contains("warn  descriptor limit: the descriptor limit (1024 open files) leaves room for 896 connections, fewer than --max-clients (10000): raise it to at least 11024"),
        "{text}"
    );
}

/// Runs `walcast-proxy health` against a server listening on `port`.
fn health(port: u16, extra: &[&str]) -> (i32, String) {
    let listen = format!("127.0.0.1:{port}");
    let out = support::proxy_command(None)
        .args(["health", "--listen", &listen])
        .args(extra)
        .env_remove("DATABASE_URL")
        .output()
        .expect("walcast-proxy health");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn health_says_what_healthz_says() {
    let mut db = TestDb::new("health");
    db.exec("CREATE TABLE t (id int PRIMARY KEY)");
    let proxy = support::Proxy::start(cluster(), &db.name, "health_proxy", &[]);
    let (code, out) = health(proxy.port, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains(r#""slot":"health_proxy""#), "{out}");

    // A proxy whose database is not there answers 503: unhealthy.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let gone = format!(
        "postgres://postgres@127.0.0.1:{}/nothing",
        closed.local_addr().expect("addr").port()
    );
    drop(closed);
    let down = support::Proxy::spawn(&gone, "health_down", &[]);
    let (code, out) = health(down.port, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");

    // No server at all: unhealthy, with the reason.
    let port = down.port;
    drop(down);
    let (code, out) = health(port, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with(&format!("no answer from 127.0.0.1:{port}")),
        "{out}"
    );
}
