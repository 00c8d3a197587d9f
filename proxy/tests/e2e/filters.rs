//! WASM filters end to end: the example filters (built by
//! scripts/build-filters.sh) uploaded and used by real clients, every kind
//! of bad module refused at upload with its code, every kind of misbehaving
//! filter reported to its own client only, while other clients keep being
//! served.

use crate::support;

use std::time::{Duration, Instant};
use support::{encode, json, Client, Got, Proxy};
use walcast_tests::{cluster, repo_root, TestDb};

const WAIT: Duration = Duration::from_secs(15);

fn upload(proxy: &Proxy, bytes: &[u8]) -> String {
    let (status, body) = proxy.post_bytes("/v1/filters", "application/wasm", bytes);
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    let id = v["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("sha256:") && id.len() == 7 + 64, "{id}");
    id
}

fn refused(proxy: &Proxy, bytes: &[u8]) -> (u16, String, String) {
    let (status, body) = proxy.post_bytes("/v1/filters", "application/wasm", bytes);
    let v = json(&body);
    (
        status,
        v["code"].as_str().unwrap_or_default().to_owned(),
        v["error"].as_str().unwrap_or_default().to_owned(),
    )
}

/// A module in WebAssembly text with the ABI's exports around the given bodies.
fn wat(pages: u32, alloc: &str, filter: &str, extra: &str) -> Vec<u8> {
    let alloc = if alloc.is_empty() {
        "(if (i32.gt_u (i32.add (local.get $len) (i32.const 1024)) \
             (i32.mul (memory.size) (i32.const 65536))) \
           (then (drop (memory.grow (i32.add (i32.shr_u (local.get $len) (i32.const 16)) (i32.const 1)))))) \
         (i32.const 1024)"
    } else {
        alloc
    };
    format!(
        r#"(module
  (import "walcast_v1" "set_output" (func $set_output (param i32 i32) (result i32)))
  (memory (export "memory") {pages})
  (func (export "walcast_abi_v1"))
  (func (export "walcast_alloc") (param $len i32) (result i32) {alloc})
  (func (export "walcast_filter") (param $ptr i32) (param $len i32) (result i32) {filter})
  {extra})"#
    )
    .into_bytes()
}

fn setup(name: &str, extra: &[&str]) -> (TestDb, Proxy) {
    let mut db = TestDb::new(name);
    db.exec(
        "CREATE TABLE orders (id int PRIMARY KEY, total numeric, note text); \
         CREATE TABLE people (id int PRIMARY KEY, name text, email text, phone text)",
    );
    let proxy = Proxy::start(cluster(), &db.name, &format!("{}_proxy", db.name), extra);
    (db, proxy)
}

fn frames(c: &mut Client, n: usize) -> Vec<serde_json::Value> {
    let got = c.texts(n, WAIT);
    assert_eq!(got.len(), n, "expected {n} frames, got {got:?}");
    got.iter().map(|t| json(t)).collect()
}

#[test]
fn example_filters_keep_redact_and_sample() {
    let (mut db, proxy) = setup("filters_examples", &[]);
    let threshold = upload(&proxy, &support::example_filter("threshold"));
    let redact = upload(&proxy, &support::example_filter("redact"));
    let sample = upload(&proxy, &support::example_filter("sample"));
    let inserts_only = upload(
        &proxy,
        &std::fs::read(repo_root().join("filters/examples/wat/inserts_only.wat")).expect("wat"),
    );
    // Uploading the same bytes again gives the same id.
    assert_eq!(
        upload(&proxy, &support::example_filter("threshold")),
        threshold
    );

    let config = encode(r#"{"table":"orders","column":"total","min":100}"#);
    let mut big = proxy.ws_params(&format!("filter={threshold}&config={config}"));
    // Query and filter compose: the query first.
    let mut big_updates = proxy.ws_params(&format!(
        "query={}&filter={threshold}&config={config}",
        encode("update:orders")
    ));
    let mut pii = proxy
        .try_ws_url(&format!("ws://127.0.0.1:{}/ws", proxy.port))
        .expect("ws");
    pii.send(&format!(
        r#"{{"subscribe":{{"query":"*:people","filter":{{"id":"{redact}","config":{{"columns":["email","phone"],"mask":"<hidden>"}}}}}}}}"#
    ));
    let mut every_third =
        proxy.ws_params(&format!("filter={sample}&config={}", encode(r#"{"n":3}"#)));
    let mut inserts = proxy.ws_params(&format!("filter={inserts_only}"));
    proxy.wait_clients(5);

    db.exec("INSERT INTO orders VALUES (1, 50, 'small'), (2, 150, 'big'), (3, 100, 'edge')");
    db.exec("UPDATE orders SET total = 500 WHERE id = 1");
    db.exec("DELETE FROM orders WHERE id = 3");
    db.exec(
        "INSERT INTO people VALUES (1, 'ann', 'ann@example.com', '+1 555'), (2, 'bob', NULL, '+2')",
    );

    let got = frames(&mut big, 3);
    let summary: Vec<(String, i64)> = got
        .iter()
        .map(|f| {
            let row = if f["action"] == "D" {
                &f["identity"]
            } else {
                &f["columns"]
            };
            (
                f["action"].as_str().unwrap_or("").to_owned(),
                row["id"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    // 50 is under the threshold; the delete carries only the key (no total).
    assert_eq!(
        summary,
        vec![
            ("I".to_owned(), 2),
            ("I".to_owned(), 3),
            ("U".to_owned(), 1)
        ]
    );
    big.expect_silence(Duration::from_millis(300));

    let got = frames(&mut big_updates, 1);
    assert_eq!(got[0]["action"], "U");
    assert_eq!(got[0]["columns"]["total"], 500);
    big_updates.expect_silence(Duration::from_millis(200));

    let got = frames(&mut pii, 2);
    assert_eq!(
        got[0]["columns"],
        serde_json::json!({"id": 1, "name": "ann", "email": "<hidden>", "phone": "<hidden>"})
    );
    // Nulls stay null; the rest of the change is the plugin's.
    assert_eq!(
        got[1]["columns"],
        serde_json::json!({"id": 2, "name": "bob", "email": null, "phone": "<hidden>"})
    );
    assert_eq!(got[1]["table"], "people");
    assert!(got[1]["lsn"].is_string());

    // 7 changes: 5 of orders (kept: 1st and 4th), 2 of people (kept: 1st).
    let got = frames(&mut every_third, 3);
    let tables: Vec<&str> = got
        .iter()
        .map(|f| f["table"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(tables, vec!["orders", "orders", "people"]);
    assert_eq!(got[0]["columns"]["id"], 1);
    assert_eq!(got[1]["action"], "U");
    every_third.expect_silence(Duration::from_millis(200));

    let got = frames(&mut inserts, 5);
    assert!(got.iter().all(|f| f["action"] == "I"), "{got:?}");
    inserts.expect_silence(Duration::from_millis(200));
}

#[test]
fn bad_modules_are_refused_at_upload_with_a_code() {
    let (_db, proxy) = setup("filters_upload", &["--filter-max-module-size", "64kB"]);
    let ok_filter = "(i32.const 1)";
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("garbage", b"\x00asm garbage that is not wasm".to_vec(), 422, "INVALID_MODULE"),
        ("text", b"hello".to_vec(), 422, "INVALID_MODULE"),
        ("too large", vec![0u8; 70_000], 413, "MODULE_TOO_LARGE"),
        (
            "wasi import",
            br#"(module
                (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
                (memory (export "memory") 1)
                (func (export "walcast_abi_v1"))
                (func (export "walcast_alloc") (param i32) (result i32) (i32.const 0))
                (func (export "walcast_filter") (param i32 i32) (result i32) (i32.const 1)))"#
                .to_vec(),
            422,
            "IMPORT_NOT_ALLOWED",
        ),
        (
            "imported memory",
            br#"(module (import "walcast_v1" "memory" (memory 1)))"#.to_vec(),
            422,
            "IMPORT_NOT_ALLOWED",
        ),
        (
            "set_output with the wrong type",
            br#"(module (import "walcast_v1" "set_output" (func (param i64))))"#.to_vec(),
            422,
            "IMPORT_NOT_ALLOWED",
        ),
        (
            "no marker",
            br#"(module (memory (export "memory") 1)
                (func (export "walcast_alloc") (param i32) (result i32) (i32.const 0))
                (func (export "walcast_filter") (param i32 i32) (result i32) (i32.const 1)))"#
                .to_vec(),
            422,
            "ABI_UNSUPPORTED",
        ),
        (
            "another ABI",
            br#"(module (memory (export "memory") 1) (func (export "walcast_abi_v2")))"#.to_vec(),
            422,
            "ABI_UNSUPPORTED",
        ),
        (
            "no memory",
            br#"(module (func (export "walcast_abi_v1"))
                (func (export "walcast_alloc") (param i32) (result i32) (i32.const 0))
                (func (export "walcast_filter") (param i32 i32) (result i32) (i32.const 1)))"#
                .to_vec(),
            422,
            "MISSING_EXPORT",
        ),
        (
            "no filter",
            br#"(module (memory (export "memory") 1) (func (export "walcast_abi_v1"))
                (func (export "walcast_alloc") (param i32) (result i32) (i32.const 0)))"#
                .to_vec(),
            422,
            "MISSING_EXPORT",
        ),
        (
            "filter with the wrong type",
            br#"(module (memory (export "memory") 1) (func (export "walcast_abi_v1"))
                (func (export "walcast_alloc") (param i32) (result i32) (i32.const 0))
                (func (export "walcast_filter") (param i64) (result i32) (i32.const 1)))"#
                .to_vec(),
            422,
            "MISSING_EXPORT",
        ),
        (
            "batch entry with the wrong type",
            br#"(module (memory (export "memory") 1) (func (export "walcast_abi_v1"))
                (func (export "walcast_alloc") (param i32) (result i32) (i32.const 0))
                (func (export "walcast_filter") (param i32 i32) (result i32) (i32.const 1))
                (func (export "walcast_filter_batch") (param i32 i32) (result i32) (i32.const 0)))"#
                .to_vec(),
            422,
            "MISSING_EXPORT",
        ),
        (
            "header-only marker that is not a function",
            br#"(module (memory (export "memory") 1) (func (export "walcast_abi_v1"))
                (global (export "walcast_header_only") i32 (i32.const 1))
                (func (export "walcast_alloc") (param i32) (result i32) (i32.const 0))
                (func (export "walcast_filter") (param i32 i32) (result i32) (i32.const 1)))"#
                .to_vec(),
            422,
            "MISSING_EXPORT",
        ),
    ];
    for (what, bytes, status, code) in &cases {
        let (got, got_code, message) = refused(&proxy, bytes);
        assert_eq!(
            (got, got_code.as_str()),
            (*status, *code),
            "{what}: {message}"
        );
        assert!(!message.is_empty(), "{what}");
    }
    let (status, _) = proxy.post_bytes("/v1/filters", "application/wasm", b"");
    assert_eq!(status, 400);

    // A valid module; an unknown id and a refused config at subscription.
    let id = upload(&proxy, &wat(1, "", ok_filter, ""));
    match proxy.try_ws_url(&format!(
        "ws://127.0.0.1:{}/ws?filter=sha256:{}",
        proxy.port,
        "0".repeat(64)
    )) {
        Err((404, body)) => assert_eq!(json(&body)["code"], "FILTER_NOT_FOUND"),
        other => panic!("expected 404, got {:?}", other.err()),
    }
    let threshold = upload(&proxy, &support::example_filter("threshold"));
    match proxy.try_ws_url(&format!(
        "ws://127.0.0.1:{}/ws?filter={threshold}&config={}",
        proxy.port,
        encode("not json")
    )) {
        Err((400, body)) => assert_eq!(json(&body)["code"], "INIT_FAILED", "{body}"),
        other => panic!("expected 400, got {:?}", other.err()),
    }
    // Still serving.
    let _c = proxy.ws_params(&format!("filter={id}"));
    let (status, _) = proxy.get("/healthz").expect("health");
    assert_eq!(status, 200);
}

#[test]
fn misbehaving_filters_are_reported_to_their_client_and_others_are_served() {
    let (mut db, proxy) = setup("filters_bad", &["--filter-max-errors", "3"]);
    let grow = "(if (i32.gt_u (i32.add (local.get $len) (i32.const 1024)) \
                    (i32.mul (memory.size) (i32.const 65536))) \
                  (then (drop (memory.grow (i32.add (i32.shr_u (local.get $len) (i32.const 16)) (i32.const 1)))))) \
                (i32.const 1024)";
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("infinite loop", wat(1, "", "(loop $l (br $l)) (i32.const 1)", ""), "OUT_OF_FUEL"),
        (
            "unbounded recursion",
            wat(1, "", "(call $r (i32.const 0))", "(func $r (param i32) (result i32) (call $r (i32.add (local.get 0) (i32.const 1))))"),
            "STACK_OVERFLOW",
        ),
        (
            "memory growth past the cap",
            wat(1, "", "(drop (memory.grow (i32.const 1000))) (i32.const 1)", ""),
            "MEMORY_LIMIT",
        ),
        ("alloc out of bounds", wat(1, "(i32.const -16)", "(i32.const 1)", ""), "BAD_ALLOC"),
        ("alloc refuses", wat(1, "(i32.const 0)", "(i32.const 1)", ""), "BAD_ALLOC"),
        (
            "set_output out of bounds",
            wat(1, grow, "(drop (call $set_output (i32.const -100) (i32.const 50))) (i32.const 2)", ""),
            "BAD_OUTPUT",
        ),
        (
            "output not UTF-8",
            wat(1, grow, "(drop (call $set_output (i32.const 16) (i32.const 2))) (i32.const 2)", r#"(data (i32.const 16) "\ff\fe")"#),
            "NOT_UTF8",
        ),
        (
            "output over the cap",
            wat(40, grow, "(drop (call $set_output (i32.const 0) (i32.const 2000000))) (i32.const 2)", ""),
            "OUTPUT_TOO_LARGE",
        ),
        ("replace without output", wat(1, grow, "(i32.const 2)", ""), "BAD_OUTPUT"),
        ("undefined code", wat(1, grow, "(i32.const 7)", ""), "BAD_RETURN"),
        ("guest error", wat(1, grow, "(i32.const -5)", ""), "GUEST_ERROR"),
        ("trap", wat(1, grow, "unreachable", ""), "TRAP"),
    ];
    let mut clients = Vec::new();
    for (what, bytes, code) in &cases {
        let id = upload(&proxy, bytes);
        clients.push((
            *what,
            *code,
            proxy.ws_params(&format!("filter={id}&query={}", encode("insert:orders"))),
        ));
    }
    let good = upload(
        &proxy,
        &wat(
            1,
            grow,
            "(drop (call $set_output (i32.const 16) (i32.const 12))) (i32.const 2)",
            r#"(data (i32.const 16) "{\"ok\":\"yes\"}")"#,
        ),
    );
    let mut replaced = proxy.ws_params(&format!("filter={good}&query={}", encode("insert:orders")));
    let mut plain = proxy.ws("insert:orders");
    proxy.wait_clients(clients.len() as u64 + 2);

    let start = Instant::now();
    for i in 0..3 {
        db.exec(&format!("INSERT INTO orders VALUES ({i}, {i}, 'x')"));
    }
    // The plain client is not held up by the failing filters.
    let got = plain.texts(3, WAIT);
    assert_eq!(got.len(), 3);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let got = frames(&mut replaced, 3);
    assert!(
        got.iter().all(|f| *f == serde_json::json!({"ok": "yes"})),
        "{got:?}"
    );

    for (what, code, mut c) in clients {
        // Two error frames, then the third failure detaches the filter.
        let mut errors = Vec::new();
        let deadline = Instant::now() + WAIT;
        let close = loop {
            match c.next() {
                Some(Got::Text(t)) => errors.push(json(&t)),
                Some(Got::Closed(code, reason)) => break (code, reason),
                None => assert!(
                    Instant::now() < deadline,
                    "{what}: no close; errors {errors:?}"
                ),
            }
        };
        assert_eq!(errors.len(), 3, "{what}: {errors:?}");
        for e in &errors {
            assert_eq!(e["type"], "filter_error", "{what}: {e}");
            assert_eq!(e["code"], code, "{what}: {e}");
            assert!(
                e["lsn"].is_string() && e["message"].is_string(),
                "{what}: {e}"
            );
        }
        assert_eq!(close.0, 1008, "{what}: {close:?}");
        assert!(close.1.contains("detached"), "{what}: {close:?}");
    }
    let (_, metrics) = proxy.get("/metrics").expect("metrics");
    assert!(
        metrics.contains(&format!("walcast_filters_detached_total {}", cases.len())),
        "{metrics}"
    );
}

#[test]
fn fifty_clients_uploading_the_same_module_compile_it_once() {
    let (_db, proxy) = setup("filters_concurrent", &[]);
    let bytes = support::example_filter("redact");
    let port = proxy.port;
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|_| {
                let bytes = bytes.clone();
                s.spawn(move || {
                    let (status, body) =
                        support::post_bytes(port, "/v1/filters", "application/wasm", &bytes);
                    assert_eq!(status, 200, "{body}");
                    json(&body)["id"].as_str().expect("id").to_owned()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("upload thread"))
            .collect()
    });
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    let (_, metrics) = proxy.get("/metrics").expect("metrics");
    assert!(
        metrics.contains("walcast_filter_compiles_total 1\n"),
        "{metrics}"
    );
}

#[test]
fn uploads_can_be_restricted_to_tokens() {
    let (_db, proxy) = setup("filters_token", &["--filter-upload-token", "builder"]);
    let bytes = wat(1, "", "(i32.const 1)", "");
    let (status, _) = proxy.post_bytes("/v1/filters", "application/wasm", &bytes);
    assert_eq!(status, 401);
    let (status, body) = proxy.post_bytes(
        "/v1/filters?access_token=builder",
        "application/wasm",
        &bytes,
    );
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_durable_stream_can_use_a_filter() {
    let (mut db, proxy) = setup("filters_durable", &[]);
    let redact = upload(&proxy, &support::example_filter("redact"));
    let (status, body) = proxy.get("/v1/init").expect("init");
    assert_eq!(status, 200, "{body}");
    let slot = json(&body)["slotName"].as_str().expect("slot").to_owned();
    let mut c = proxy
        .try_ws_url(&format!(
            "ws://127.0.0.1:{}/v1/lr/stream?slotName={slot}&filter={redact}",
            proxy.port
        ))
        .expect("stream");
    db.exec("INSERT INTO people VALUES (1, 'ann', 'ann@example.com', NULL)");
    // The server's own transactions (autovacuum's ANALYZE) arrive as a B
    // and a C with nothing between: passed over.
    let got = loop {
        let got = frames(&mut c, 2);
        if got[1]["action"] != "C" {
            break [got, frames(&mut c, 1)].concat();
        }
    };
    assert_eq!(got[0]["action"], "B");
    assert_eq!(got[1]["columns"]["email"], "***");
    assert_eq!(got[2]["action"], "C");
}

#[test]
fn compiled_filters_survive_a_restart_in_the_cache_directory() {
    let db = TestDb::new("filters_cache");
    let dir = std::env::temp_dir().join(format!("walcast-filter-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cache = dir.to_string_lossy().into_owned();
    let slot = format!("{}_proxy", db.name);
    let compiles = |proxy: &Proxy| {
        let (_, metrics) = proxy.get("/metrics").expect("metrics");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("walcast_filter_compiles_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("compiles metric")
    };
    let first = Proxy::start(cluster(), &db.name, &slot, &["--filter-cache-dir", &cache]);
    let id = upload(&first, &support::example_filter("sample"));
    assert_eq!(compiles(&first), 1);
    drop(first);
    let second = Proxy::start(cluster(), &db.name, &slot, &["--filter-cache-dir", &cache]);
    assert_eq!(upload(&second, &support::example_filter("sample")), id);
    assert_eq!(compiles(&second), 0, "served from the cache directory");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&dir).expect("cache dir").permissions(),
    );
    assert_eq!(mode & 0o777, 0o700);
    let _ = std::fs::remove_dir_all(&dir);
}
