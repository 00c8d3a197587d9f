//! `sslmode=require`: the replication and catalog connections use TLS. This
//! binary has its own cluster, with ssl on and only hostssl entries.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};
use support::{json, Proxy};
use walcast_cluster::{Cluster, Config};

fn self_signed_cert() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("walcast-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("cert dir");
    let status = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-x509",
            "-days",
            "2",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(dir.join("server.key"))
        .arg("-out")
        .arg(dir.join("server.crt"))
        .stderr(std::process::Stdio::null())
        .status()
        .expect("running openssl");
    assert!(status.success(), "openssl could not make a certificate");
    let key = dir.join("server.key");
    let chmod = Command::new("chmod")
        .arg("600")
        .arg(&key)
        .status()
        .expect("chmod");
    assert!(chmod.success(), "chmod of the key failed");
    // PostgreSQL runs as the OS user walcast when the tests run as root.
    if Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
    {
        let chown = Command::new("chown")
            .arg(walcast_cluster::OS_USER)
            .arg(&key)
            .arg(dir.join("server.crt"))
            .status()
            .expect("chown");
        assert!(chown.success(), "chown of the certificate failed");
    }
    dir
}

#[test]
fn sslmode_require_streams_over_tls_and_plain_text_is_refused() {
    let certs = self_signed_cert();
    let mut config = Config::default();
    config.settings.push(("ssl".into(), "on".into()));
    config.settings.push((
        "ssl_cert_file".into(),
        format!("'{}'", certs.join("server.crt").display()),
    ));
    config.settings.push((
        "ssl_key_file".into(),
        format!("'{}'", certs.join("server.key").display()),
    ));
    let cluster = Cluster::start_with(config).expect("cluster with ssl");
    cluster.create_database("tlsdb").expect("database");
    cluster
        .psql("tlsdb", "CREATE TABLE users (id int PRIMARY KEY)")
        .expect("table");
    cluster
        .set_hba(
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl replication all 127.0.0.1/32 trust\n",
        )
        .expect("hostssl only");

    let port = cluster.port();
    let proxy = Proxy::spawn(
        &format!("postgres://postgres@127.0.0.1:{port}/tlsdb?sslmode=require"),
        "tls_proxy",
        &[],
    );
    proxy.wait_healthy();
    let mut c = proxy.ws("insert:users");
    cluster
        .psql("tlsdb", "INSERT INTO users VALUES (1)")
        .expect("insert");
    let frames = c.texts(1, Duration::from_secs(10));
    assert_eq!(frames.len(), 1);
    assert_eq!(json(&frames[0])["columns"]["id"], 1);
    let ssl = cluster
        .psql("tlsdb", "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_replication r USING (pid) WHERE r.application_name = 'walcast-proxy'")
        .expect("pg_stat_ssl");
    assert_eq!(ssl, "t", "the walsender connection is encrypted");

    let plain = Proxy::spawn(
        &format!("postgres://postgres@127.0.0.1:{port}/tlsdb?sslmode=disable"),
        "plain_proxy",
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((503, body)) = plain.get("/healthz") {
            if json(&body)["status"] == "failed" {
                assert!(body.contains("pg_hba.conf"), "{body}");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "a refused plain connection must be reported"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(certs);
}
