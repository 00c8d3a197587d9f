//! The TypeScript client (`clients/js`) against a real proxy and cluster:
//! builds it with its own `tsc`, then runs its `node --test` suite with the
//! proxy's address, psql for the writes and the proxy's JWT secret.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use support::Proxy;
use walcast_tests::{cluster, repo_root, TestDb};

const SECRET: &str = "walcast-js-client-test-secret-0123456789";

fn js_dir() -> PathBuf {
    repo_root().join("clients/js")
}

/// `node`, with the flag that gives Node.js 20 its global WebSocket (22+
/// has it without one).
fn node() -> Command {
    let has_websocket = Command::new("node")
        .args([
            "-e",
            "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
        ])
        .status()
        .expect("node is not installed: run ./scripts/setup.sh")
        .success();
    let mut cmd = Command::new("node");
    if !has_websocket {
        cmd.arg("--experimental-websocket");
    }
    cmd
}

fn build(dir: &Path) {
    let tsc = dir.join("node_modules/.bin/tsc");
    assert!(
        tsc.is_file(),
        "{} is missing: run ./scripts/setup.sh (npm ci in clients/js)",
        tsc.display()
    );
    let out = Command::new(&tsc)
        .args(["-p", "."])
        .current_dir(dir)
        .output()
        .expect("running tsc");
    assert!(
        out.status.success(),
        "tsc failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_typescript_client_subscribes_resumes_and_reports_typed_errors() {
    let dir = js_dir();
    build(&dir);
    let db = TestDb::new("js_client");
    let proxy = Proxy::start(
        cluster(),
        &db.name,
        "js_client_proxy",
        &["--jwt-secret", SECRET, "--jwt-leeway", "0"],
    );
    let out = node()
        .args(["--test", "--test-reporter=spec", "test/"])
        .current_dir(&dir)
        .env("WALCAST_URL", format!("ws://127.0.0.1:{}", proxy.port))
        .env("WALCAST_PSQL", cluster().bin("psql"))
        .env("WALCAST_CONNINFO", cluster().conninfo(&db.name))
        .env("WALCAST_JWT_SECRET", SECRET)
        .output()
        .expect("running node --test");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "node --test failed:\n{report}");
    // Every test ran and passed: none was skipped or left out.
    assert!(report.contains("ℹ pass 8"), "{report}");
    assert!(report.contains("ℹ fail 0"), "{report}");
}
