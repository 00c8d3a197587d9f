//! The TypeScript client (`clients/js`) against a real proxy and cluster:
//! builds it with its own `tsc`, then runs its `node --test` suite with the
//! proxy's address, psql for the writes and the proxy's JWT secret.

use crate::support;

use support::Proxy;
use walcast_tests::{cluster, TestDb};

const SECRET: &str = "walcast-js-client-test-secret-0123456789";

#[test]
fn the_typescript_client_subscribes_resumes_and_reports_typed_errors() {
    support::js::build();
    let dir = support::js::dir();
    let db = TestDb::new("js_client");
    let proxy = Proxy::start(
        cluster(),
        &db.name,
        "js_client_proxy",
        &["--jwt-secret", SECRET, "--jwt-leeway", "0"],
    );
    // WALCAST_JS_TESTS narrows the run to some files (test/durable.test.mjs).
    let files = std::env::var("WALCAST_JS_TESTS").unwrap_or_else(|_| "test/".into());
    let out = support::js::node()
        .args(["--test", "--test-reporter=spec"])
        .args(files.split_whitespace())
        .current_dir(&dir)
        .env("WALCAST_URL", format!("ws://127.0.0.1:{}", proxy.port))
        .env("WALCAST_PSQL", cluster().bin("psql"))
        .env("WALCAST_CONNINFO", cluster().conninfo(&db.name))
        .env("WALCAST_JWT_SECRET", SECRET)
        .env(
            "WALCAST_FILTER_WASM",
            support::example_filter_path("threshold"),
        )
        .output()
        .expect("running node --test");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "node --test failed:\n{report}");
    // Every test ran and passed: none was skipped or left out.
    if files == "test/" {
        assert!(report.contains("ℹ pass 10"), "{report}");
    }
    assert!(report.contains("ℹ fail 0"), "{report}");
}

/// A subscription whose proxy restarts after confirming the client's last
/// transaction to PostgreSQL: it reconnects by itself, and since the
/// restarted proxy's log starts after that transaction (docs/proxy.md), its
/// resume ends with `PositionGoneError` instead of a silent gap.
#[test]
fn the_typescript_client_ends_with_position_gone_after_a_proxy_restart() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    let dist = support::js::build();
    let mut db = TestDb::new("js_restart");
    db.exec("CREATE TABLE restart (id int PRIMARY KEY)");
    let slot = "js_restart_proxy";
    let first = Proxy::start(cluster(), &db.name, slot, &[]);
    let port = first.port;
    let script = format!(
        r#"
import {{ subscribe, isChange, PositionGoneError }} from "file://{dist}/index.js";
const sub = subscribe("ws://127.0.0.1:{port}", "insert:restart", {{ backoff: {{ initialMs: 100, maxMs: 400 }} }});
sub.on("open", (o) => console.log("open " + (o.after ?? "-")));
sub.on("reconnect", (r) => console.log("reconnect " + r.closeCode));
try {{
  for await (const f of sub) if (isChange(f)) console.log("change " + f.columns.id + " " + f.pos);
  console.log("done");
}} catch (e) {{
  console.log("end " + e.name + " " + e.code + " " + (e instanceof PositionGoneError ? (e.oldest ?? "null") : "-"));
}}
"#,
        dist = dist.display()
    );
    let mut node = support::js::node()
        .args(["--input-type=module", "-e", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("node");
    let (tx, lines) = mpsc::channel::<String>();
    let out = node.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let wait_for = |prefix: &str, seen: &mut Vec<String>| -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(l) => {
                    seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return l;
                    }
                }
                Err(_) => panic!("no line starting {prefix:?} within 30 s; lines: {seen:#?}"),
            }
        }
    };
    wait_for("open -", &mut seen);
    first.wait_clients(1);
    db.exec("INSERT INTO restart SELECT generate_series(1, 3)");
    let last = wait_for("change 3 ", &mut seen);
    let position = last.rsplit(' ').next().unwrap_or("").to_owned();
    // The proxy confirms a transaction's end once it is in its log: wait
    // until the slot is past the transaction's commit record.
    let commit = position
        .parse::<walcast_format::Position>()
        .expect("a position")
        .commit
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let past: bool = db
            .client
            .query_one(
                "SELECT coalesce(confirmed_flush_lsn > $1::text::pg_lsn, false) \
                 FROM pg_replication_slots WHERE slot_name = $2",
                &[&commit, &slot],
            )
            .expect("slot")
            .get(0);
        if past {
            break;
        }
        assert!(Instant::now() < deadline, "the slot never passed {commit}");
        std::thread::sleep(Duration::from_millis(100));
    }

    drop(first);
    wait_for("reconnect", &mut seen);
    // Committed while no proxy runs: the restarted proxy streams it, but a
    // client holding a position from before the restart cannot be told
    // whether it missed something, so it is told so.
    db.exec("INSERT INTO restart VALUES (4)");
    let second = Proxy::launch(
        &cluster().url(&db.name),
        slot,
        &[],
        support::Launch {
            listen: Some(format!("127.0.0.1:{port}")),
            ..support::Launch::default()
        },
    );
    second.wait_healthy();
    let end = wait_for("end ", &mut seen);
    let parts: Vec<&str> = end.split(' ').collect();
    assert_eq!(
        parts.get(1..3),
        Some(&["PositionGoneError", "POSITION_GONE"][..]),
        "{seen:#?}"
    );
    let oldest = parts.get(3).copied().unwrap_or("");
    assert!(
        oldest == "null" || oldest > position.as_str(),
        "the oldest position held ({oldest}) is after the client's ({position}): {seen:#?}"
    );
    assert_eq!(
        seen.iter().filter(|l| l.starts_with("change ")).count(),
        3,
        "nothing delivered across the gap: {seen:#?}"
    );
    assert!(
        seen.iter().any(|l| l == &format!("open {position}")),
        "it tried to resume after its position: {seen:#?}"
    );
    let status = node.wait().expect("node exits");
    assert!(status.success(), "{seen:#?}");
}
