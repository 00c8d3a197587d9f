//! The TypeScript client (`clients/js`) against a real proxy and cluster:
//! builds it with its own `tsc`, then runs its `node --test` suite with the
//! proxy's address, psql for the writes and the proxy's JWT secret.

mod support;

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
    let out = support::js::node()
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
