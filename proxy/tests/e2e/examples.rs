//! The client examples run against a real proxy: scripts/run-examples.sh
//! drives the curl one-liners of examples/README.md and the Python durable
//! stream client (examples/python), which must end with an exact copy of a
//! table changed while it streams, across a dropped connection.

use crate::support;

use std::process::Command;
use support::Proxy;
use walcast_tests::{cluster, repo_root, TestDb};

#[test]
fn the_python_and_curl_examples_work_against_a_real_proxy() {
    let db = TestDb::new("examples");
    let proxy = Proxy::start(cluster(), &db.name, &format!("{}_proxy", db.name), &[]);
    let out = Command::new(repo_root().join("scripts/run-examples.sh"))
        .env("WALCAST_URL", format!("http://127.0.0.1:{}", proxy.port))
        .env("DATABASE_URL", cluster().url(&db.name))
        .output()
        .expect("running scripts/run-examples.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "run-examples.sh failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let result = stdout
        .lines()
        .chain(stderr.lines())
        .find_map(|l| l.split_once("durable_stream.py: ok ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no RESULT line:\n{stdout}\n{stderr}"));
    let v: serde_json::Value = serde_json::from_str(result).expect("RESULT is JSON");
    assert!(v["resumes"].as_u64().unwrap_or(0) >= 1, "{v}");
    assert!(v["rows"].as_u64().unwrap_or(0) > 0, "{v}");
}
