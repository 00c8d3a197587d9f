//! `sslmode=require`: the replication and catalog connections use TLS. This
//! binary has its own cluster, with ssl on and only hostssl entries.

use crate::support;

use std::process::Command;
use std::time::{Duration, Instant};
use support::{give_to_cluster, json, openssl, Proxy};
use walcast_cluster::{Cluster, Config};

fn self_signed_cert() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("walcast-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("cert dir");
    openssl(
        &dir,
        &[
            "req",
            "-new",
            "-x509",
            "-days",
            "2",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.crt",
        ],
    );
    give_to_cluster(&dir.join("server.key"), &dir.join("server.crt"));
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

/// A test CA, a server certificate it signed for `localhost` only, and a
/// second CA that signed nothing: the directory holding them.
fn test_ca(label: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("walcast-ca-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("cert dir");
    for (name, cn) in [("ca", "walcast test CA"), ("other", "another CA")] {
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-new",
                "-nodes",
                "-newkey",
                "rsa:2048",
                "-days",
                "2",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
            ],
        );
    }
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost\n").expect("ext");
    server_cert(&dir);
    dir
}

/// A new key and certificate for `localhost` in `dir`, signed by its CA.
fn server_cert(dir: &std::path::Path) {
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "rsa:2048",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.crt",
        ],
    );
    give_to_cluster(&dir.join("server.key"), &dir.join("server.crt"));
}

/// Waits until the proxy's /healthz reports an error containing `needle`.
fn reports(proxy: &Proxy, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((_, body)) = proxy.get("/healthz") {
            if json(&body)["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(needle))
            {
                return body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no error with {needle:?} in /healthz: {:?}",
            proxy.get("/healthz")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn verify_full_checks_the_ca_and_the_host_name() {
    let certs = test_ca("verify");
    let mut config = Config::default();
    config.settings.push(("ssl".into(), "on".into()));
    for (k, f) in [
        ("ssl_cert_file", "server.crt"),
        ("ssl_key_file", "server.key"),
    ] {
        config
            .settings
            .push((k.into(), format!("'{}'", certs.join(f).display())));
    }
    let cluster = Cluster::start_with(config).expect("cluster with ssl");
    cluster.create_database("verifydb").expect("database");
    cluster
        .psql("verifydb", "CREATE TABLE users (id int PRIMARY KEY)")
        .expect("table");
    cluster
        .set_hba(
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl replication all 127.0.0.1/32 trust\n\
             hostssl all all ::1/128 trust\nhostssl replication all ::1/128 trust\n",
        )
        .expect("hostssl only");
    let port = cluster.port();
    let ca = certs.join("ca.crt");
    let url = |host: &str, mode: &str, root: &std::path::Path| {
        format!(
            "postgres://postgres@{host}:{port}/verifydb?sslmode={mode}&sslrootcert={}",
            root.display()
        )
    };

    // The right CA and host name: streams (replication and catalog).
    let good = Proxy::spawn(&url("localhost", "verify-full", &ca), "verify_good", &[]);
    good.wait_healthy();
    let mut c = good.ws("insert:users");
    cluster
        .psql("verifydb", "INSERT INTO users VALUES (1)")
        .expect("insert");
    assert_eq!(c.texts(1, Duration::from_secs(10)).len(), 1);

    // The certificate names localhost, not 127.0.0.1: verify-full refuses,
    // verify-ca (no host name check) accepts.
    let wrong_host = Proxy::spawn(&url("127.0.0.1", "verify-full", &ca), "verify_host", &[]);
    let body = reports(&wrong_host, "certificate verify failed");
    assert!(body.contains("verify-full"), "{body}");
    let ca_only = Proxy::spawn(&url("127.0.0.1", "verify-ca", &ca), "verify_ca", &[]);
    ca_only.wait_healthy();

    // A CA that did not sign the server's certificate.
    let unknown = Proxy::spawn(
        &url("localhost", "verify-full", &certs.join("other.crt")),
        "verify_unknown",
        &[],
    );
    reports(&unknown, "certificate verify failed");
    // verify-full without a CA file: refused at start with what to add.
    let out = support::proxy_command(None)
        .args([
            "--database-url",
            &format!("postgres://postgres@localhost:{port}/verifydb?sslmode=verify-full"),
        ])
        .env("HOME", &certs)
        .output()
        .expect("running the proxy");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sslrootcert"), "{err}");
    drop((good, wrong_host, ca_only, unknown));
    let _ = std::fs::remove_dir_all(certs);
}

/// An HTTPS connection to the proxy on `port` that trusts only `ca`.
fn tls_connect(port: u16, ca: &std::path::Path) -> native_tls::TlsStream<std::net::TcpStream> {
    let ca = native_tls::Certificate::from_pem(&std::fs::read(ca).expect("CA file")).expect("CA");
    let connector = native_tls::TlsConnector::builder()
        .add_root_certificate(ca)
        .disable_built_in_roots(true)
        .build()
        .expect("TLS client");
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    connector
        .connect("localhost", tcp)
        .expect("TLS handshake with the proxy")
}

/// The DER of the certificate the proxy serves now.
fn served_cert(port: u16, ca: &std::path::Path) -> Vec<u8> {
    let s = tls_connect(port, ca);
    s.peer_certificate()
        .expect("peer certificate")
        .expect("a certificate")
        .to_der()
        .expect("DER")
}

fn file_cert(path: &std::path::Path) -> Vec<u8> {
    native_tls::Certificate::from_pem(&std::fs::read(path).expect("cert"))
        .expect("PEM")
        .to_der()
        .expect("DER")
}

#[test]
fn https_and_wss_are_served_and_the_certificate_reloads_on_sighup() {
    use std::io::{Read, Write};
    let certs = test_ca("serve");
    let mut db = walcast_tests::TestDb::new("https");
    db.exec("CREATE TABLE users (id int PRIMARY KEY)");
    let (cert, key) = (certs.join("server.crt"), certs.join("server.key"));
    let proxy = Proxy::spawn(
        &walcast_tests::cluster().url(&db.name),
        "https_proxy",
        &[
            "--tls-cert",
            &cert.to_string_lossy(),
            "--tls-key",
            &key.to_string_lossy(),
        ],
    );
    let ca = certs.join("ca.crt");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut s = tls_connect(proxy.port, &ca);
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .expect("request");
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never healthy over HTTPS: {answer}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Plain HTTP on the TLS port gets no answer.
    assert!(proxy.get("/healthz").map(|(c, _)| c != 200).unwrap_or(true));
    // The container healthcheck speaks TLS when the server does.
    let health = support::proxy_command(None)
        .args(["health", "--listen", &format!("127.0.0.1:{}", proxy.port)])
        .args(["--tls-cert", &cert.to_string_lossy()])
        .args(["--tls-key", &key.to_string_lossy()])
        .env_remove("DATABASE_URL")
        .output()
        .expect("walcast-proxy health");
    let said = String::from_utf8_lossy(&health.stdout);
    assert_eq!(health.status.code(), Some(0), "{said}");
    assert!(said.starts_with("HTTP/1.1 200"), "{said}");

    let stream = tls_connect(proxy.port, &ca);
    let (mut ws, _) = tungstenite::client(
        format!("wss://localhost:{}/ws?query=insert:users", proxy.port),
        stream,
    )
    .expect("wss upgrade");
    db.exec("INSERT INTO users VALUES (1)");
    let frame = ws.read().expect("a frame over WSS");
    assert_eq!(json(frame.to_text().expect("text"))["columns"]["id"], 1);

    // A renewed certificate (same CA, new key): served after SIGHUP.
    assert_eq!(served_cert(proxy.port, &ca), file_cert(&cert));
    let old = file_cert(&cert);
    server_cert(&certs);
    let hup = || {
        let ok = Command::new("kill")
            .args(["-HUP", &proxy.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    };
    hup();
    let renewed = file_cert(&cert);
    assert_ne!(renewed, old);
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_cert(proxy.port, &ca) != renewed {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate is not served"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A reload that fails keeps the certificate that works.
    std::fs::write(&cert, "not a certificate").expect("write");
    hup();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(served_cert(proxy.port, &ca), renewed);
    // The open websocket was never affected.
    db.exec("INSERT INTO users VALUES (2)");
    let frame = ws.read().expect("a frame over WSS");
    assert_eq!(json(frame.to_text().expect("text"))["columns"]["id"], 2);
    let _ = std::fs::remove_dir_all(certs);
}
