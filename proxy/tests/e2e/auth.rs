//! Authentication of the replication connection (scram-sha-256, md5,
//! password), a wrong password reported as a definite error, and graceful
//! shutdown. This binary has its own cluster, because it changes pg_hba.conf.

use crate::support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};
use support::{json, Proxy};
use walcast_cluster::{Cluster, Config};

fn cluster_with_users() -> Cluster {
    let cluster = Cluster::start_with(Config::default()).expect("cluster");
    cluster.create_database("authdb").expect("database");
    cluster
        .psql(
            "authdb",
            "CREATE TABLE users (id int PRIMARY KEY, name text)",
        )
        .expect("table");
    for (user, method, pw) in [
        ("scram_user", "scram-sha-256", "scr4m"),
        ("md5_user", "md5", "m'd5"),
        ("pw_user", "scram-sha-256", "plain"),
    ] {
        cluster
            .psql(
                "postgres",
                &format!(
                    "SET password_encryption = '{}'; CREATE ROLE {user} LOGIN REPLICATION PASSWORD '{}'",
                    if method == "md5" { "md5" } else { "scram-sha-256" },
                    pw.replace('\'', "''")
                ),
            )
            .expect("role");
    }
    let mut hba = String::from(
        "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost replication postgres 127.0.0.1/32 trust\n",
    );
    for (user, method) in [
        ("scram_user", "scram-sha-256"),
        ("md5_user", "md5"),
        ("pw_user", "password"),
    ] {
        hba.push_str(&format!("host all {user} 127.0.0.1/32 {method}\nhost replication {user} 127.0.0.1/32 {method}\n"));
    }
    cluster.set_hba(&hba).expect("pg_hba.conf");
    cluster
}

#[test]
fn scram_md5_and_password_authentication_then_a_wrong_password() {
    let cluster = cluster_with_users();
    let port = cluster.port();
    for (i, (user, pw)) in [
        ("scram_user", "scr4m"),
        ("md5_user", "m%27d5"),
        ("pw_user", "plain"),
    ]
    .iter()
    .enumerate()
    {
        let url = format!("postgres://{user}:{pw}@127.0.0.1:{port}/authdb");
        let proxy = Proxy::spawn(&url, &format!("auth_{user}"), &[]);
        proxy.wait_healthy();
        let mut c = proxy.ws("insert:users");
        cluster
            .psql(
                "authdb",
                &format!("INSERT INTO users VALUES ({i}, '{user}')"),
            )
            .expect("insert");
        let frames = c.texts(1, Duration::from_secs(10));
        assert_eq!(frames.len(), 1, "{user}");
        assert_eq!(json(&frames[0])["columns"]["name"], *user);
    }

    let url = format!("postgres://scram_user:wrong@127.0.0.1:{port}/authdb");
    let proxy = Proxy::spawn(&url, "auth_wrong", &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        if let Ok((503, body)) = proxy.get("/healthz") {
            if json(&body)["status"] == "failed" {
                break body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "a wrong password must be reported on /healthz"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let h = json(&body);
    let err = h["last_error"].as_str().unwrap_or("");
    assert!(
        err.contains("password authentication failed") && err.contains("pg_hba.conf"),
        "{body}"
    );
}

#[test]
fn sigterm_closes_clients_with_1001_and_exits() {
    let cluster = cluster_with_users();
    let mut proxy = Proxy::start(&cluster, "authdb", "shutdown_proxy", &[]);
    let mut c = proxy.ws("*:users");
    // An idle keep-alive HTTP connection after one answered request.
    let mut idle = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 4096];
    let n = loop {
        match idle.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other.expect("an answer"),
        }
    };
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    proxy.wait_clients(1);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &proxy.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let close = c
        .close_frame(Duration::from_secs(10))
        .expect("a close frame");
    assert_eq!(close.0, 1001, "{close:?}");
    assert!(close.1.contains("shutting down"), "{close:?}");
    // The server closes the idle connection (end of stream, not a reset).
    let mut rest = Vec::new();
    idle.read_to_end(&mut rest)
        .expect("the idle connection is closed by the server");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(code) = proxy.child.try_wait().expect("wait") {
            assert!(code.success(), "exit status {code:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "walcast-proxy did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
