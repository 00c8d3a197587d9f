//! End to end: a real walcast-proxy against a private cluster, real
//! websocket clients, SQL, and exactly the expected frames for each query.

use crate::support;

use std::time::Duration;
use support::{json, Got, Proxy};
use walcast_tests::{cluster, TestDb};

const WAIT: Duration = Duration::from_secs(10);

fn setup(name: &str) -> (TestDb, Proxy) {
    let mut db = TestDb::new(name);
    db.exec(
        "CREATE TABLE users (id int PRIMARY KEY, name text, age int, email text); \
         CREATE TABLE other (id int PRIMARY KEY)",
    );
    let proxy = Proxy::start(cluster(), &db.name, &format!("{}_proxy", db.name), &[]);
    (db, proxy)
}

fn ids(frames: &[String]) -> Vec<i64> {
    frames
        .iter()
        .map(|f| {
            let v = json(f);
            v["columns"]["id"]
                .as_i64()
                .or_else(|| v["identity"]["id"].as_i64())
                .unwrap_or(-1)
        })
        .collect()
}

#[test]
fn insert_filter_with_numeric_comparison_gets_exactly_the_matching_rows() {
    let (mut db, proxy) = setup("live_insert");
    let mut c = proxy.ws("insert:users:age.gt.30");
    db.exec("INSERT INTO users VALUES (1, 'ann', 20), (2, 'bob', 31), (3, 'cid', 40); UPDATE users SET age = 50 WHERE id = 1");
    let frames = c.texts(2, WAIT);
    assert_eq!(ids(&frames), vec![2, 3]);
    let v = json(&frames[0]);
    assert_eq!(v["action"], "I");
    assert_eq!(v["schema"], "public");
    assert_eq!(v["table"], "users");
    assert_eq!(
        v["columns"],
        serde_json::json!({"id": 2, "name": "bob", "age": 31, "email": null})
    );
    assert!(v["lsn"].is_string() && v["xid"].is_number() && v["ts"].is_string());
    c.expect_silence(Duration::from_millis(500));
}

#[test]
fn frames_are_the_plugin_bytes_unchanged() {
    let (mut db, proxy) = setup("live_bytes");
    let mut c = proxy.ws("*:users");
    db.exec("INSERT INTO users VALUES (7, E'quote \" back \\\\ é', 1)");
    let frames = c.texts(1, WAIT);
    assert_eq!(frames.len(), 1);
    // The same change as the plugin writes it through SQL (a second slot).
    assert!(
        frames[0].starts_with(r#"{"action":"I","lsn":""#),
        "{}",
        frames[0]
    );
    assert!(
        frames[0]
            .ends_with(r#""columns":{"id":7,"name":"quote \" back \\ é","age":1,"email":null}}"#),
        "{}",
        frames[0]
    );
}

#[test]
fn updates_deletes_on_identity_and_truncates() {
    let (mut db, proxy) = setup("live_actions");
    let mut upd = proxy.ws("update:users:name.eq.\"a:b,c\"");
    let mut del = proxy.ws("delete:users:id.eq.2");
    let mut tru = proxy.ws("truncate:users");
    let mut all = proxy.ws("*:public.users");
    db.exec("INSERT INTO users VALUES (1, 'x', 1), (2, 'y', 2)");
    db.exec(
        "UPDATE users SET name = 'a:b,c' WHERE id = 1; UPDATE users SET name = 'no' WHERE id = 2",
    );
    db.exec("DELETE FROM users WHERE id = 1; DELETE FROM users WHERE id = 2");
    db.exec("INSERT INTO users VALUES (3, 'z', 3); TRUNCATE users, other");

    let u = upd.texts(1, WAIT);
    assert_eq!(ids(&u), vec![1]);
    assert_eq!(json(&u[0])["action"], "U");
    let d = del.texts(1, WAIT);
    assert_eq!(json(&d[0])["identity"], serde_json::json!({"id": 2}));
    let t = tru.texts(1, WAIT);
    assert_eq!(
        json(&t[0])["tables"],
        serde_json::json!(["public.users", "public.other"])
    );
    let everything = all.texts(8, WAIT);
    let actions: Vec<String> = everything
        .iter()
        .map(|f| json(f)["action"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(actions, ["I", "I", "U", "U", "D", "D", "I", "T"]);
    for c in [&mut upd, &mut del, &mut tru, &mut all] {
        c.expect_silence(Duration::from_millis(300));
    }
}

#[test]
fn many_clients_with_different_filters_each_get_their_own_rows() {
    let (mut db, proxy) = setup("live_many");
    let mut clients: Vec<_> = (0..20)
        .map(|i| (i, proxy.ws(&format!("insert:users:age.eq.{i}"))))
        .collect();
    let mut ins = proxy.ws("insert:users:age.in.(0,19)");
    let mut other = proxy.ws("insert:other");
    let values: Vec<String> = (0..100)
        .map(|i| format!("({i}, 'n{i}', {})", i % 20))
        .collect();
    db.exec(&format!("INSERT INTO users VALUES {}", values.join(", ")));
    for (i, c) in clients.iter_mut() {
        let frames = c.texts(5, WAIT);
        let want: Vec<i64> = (0..5).map(|k| *i + 20 * k).collect();
        assert_eq!(ids(&frames), want, "client for age {i}");
    }
    assert_eq!(ins.texts(10, WAIT).len(), 10);
    other.expect_silence(Duration::from_millis(300));
}

#[test]
fn subscription_may_come_as_the_first_frame() {
    let (mut db, proxy) = setup("live_first_frame");
    let mut c = proxy.ws_url(&format!("ws://127.0.0.1:{}/ws", proxy.port));
    c.ws.send(tungstenite::Message::Text(
        r#"{"subscribe":{"query":"insert:users:name.like.\"a%\""}}"#.into(),
    ))
    .expect("send subscription");
    // Wait until the proxy has the subscription.
    let deadline = std::time::Instant::now() + WAIT;
    while json(&proxy.get("/healthz").expect("healthz").1)["clients"] != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the subscription never registered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    db.exec("INSERT INTO users VALUES (1, 'ann', 1), (2, 'bob', 2), (3, 'abe', 3)");
    assert_eq!(ids(&c.texts(2, WAIT)), vec![1, 3]);

    let mut bad = proxy.ws_url(&format!("ws://127.0.0.1:{}/ws", proxy.port));
    bad.ws
        .send(tungstenite::Message::Text(
            r#"{"subscribe":{"query":"upsert:users"}}"#.into(),
        ))
        .expect("send");
    match bad.next() {
        Some(Got::Text(t)) => {
            let v = json(&t);
            assert!(v["error"].as_str().unwrap_or("").contains("upsert"), "{t}");
            assert_eq!(v["position"], 0);
        }
        other => panic!("expected an error frame, got {other:?}"),
    }
    let (code, reason) = bad.close_frame(WAIT).expect("close frame");
    assert_eq!(code, 1008, "{reason}");
}

#[test]
fn bad_requests_get_clear_http_errors() {
    let (_db, proxy) = setup("live_bad");
    let cases: &[(&str, u16, &str)] = &[
        ("insert", 400, "\"position\""),
        ("insert:", 400, "\"position\""),
        ("upsert:users", 400, "upsert"),
        ("insert:users:age.between.3", 400, "between"),
        ("insert:users:age.gt.abc", 400, "\"position\":"),
        ("insert:users:id.in.()", 400, "\"position\":"),
        ("insert:no_such_table", 404, "unknown table"),
    ];
    for (q, status, fragment) in cases {
        let (s, body) = proxy
            .get(&format!("/ws?query={}", support::encode(q)))
            .expect("request");
        assert_eq!(s, *status, "{q}: {body}");
        assert!(body.contains(fragment), "{q}: {body}");
        assert!(
            serde_json::from_str::<serde_json::Value>(&body).is_ok(),
            "{q}: body is JSON: {body}"
        );
    }
    let long = format!("insert:users:name.eq.{}", "x".repeat(5000));
    let (s, _) = proxy.get(&format!("/ws?query={long}")).expect("request");
    assert_eq!(s, 414);
    let (s, body) = proxy.get("/ws?query=insert:users").expect("request");
    assert_eq!(s, 400);
    assert!(body.contains("websocket"), "{body}");
    let (s, _) = proxy.get("/nope").expect("request");
    assert_eq!(s, 404);
}

#[test]
fn tokens_are_required_when_configured() {
    let mut db = TestDb::new("live_tokens");
    db.exec("CREATE TABLE users (id int PRIMARY KEY)");
    let proxy = Proxy::start(
        cluster(),
        &db.name,
        &format!("{}_proxy", db.name),
        &["--token", "s3cret,other"],
    );
    let (s, _) = proxy.get("/ws?query=insert:users").expect("request");
    assert_eq!(s, 401);
    let (s, body) = proxy
        .request("GET /ws?query=insert:users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nConnection: close\r\n\r\n")
        .expect("request");
    assert_eq!(s, 400, "authorized but not a websocket: {body}");
    let mut c = proxy.ws_url(&format!(
        "ws://127.0.0.1:{}/ws?query=insert:users&access_token=other",
        proxy.port
    ));
    db.exec("INSERT INTO users VALUES (1)");
    assert_eq!(c.texts(1, WAIT).len(), 1);
}

#[test]
fn health_and_metrics_report_the_stream() {
    let (mut db, proxy) = setup("live_health");
    let mut c = proxy.ws("insert:users");
    db.exec("INSERT INTO users VALUES (1, 'a', 1)");
    assert_eq!(c.texts(1, WAIT).len(), 1);
    let (s, body) = proxy.get("/healthz").expect("healthz");
    assert_eq!(s, 200);
    let h = json(&body);
    assert_eq!(h["status"], "ok");
    assert_eq!(h["slot"], format!("{}_proxy", db.name));
    assert_eq!(h["clients"], 1);
    let (s, metrics) = proxy.get("/metrics").expect("metrics");
    assert_eq!(s, 200);
    assert!(
        metrics.contains("walcast_changes_by_action_total{action=\"insert\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("walcast_frames_out_total 1"), "{metrics}");
    assert!(metrics.contains("walcast_clients 1"), "{metrics}");
    let (s, page) = proxy.get("/").expect("demo page");
    assert_eq!(s, 200);
    assert!(page.contains(r#"from "/client/index.js""#), "{page}");
    // The JavaScript client the page imports: a module any origin may load.
    let (s, head, module) = support::exchange(
        proxy.port,
        b"GET /client/index.js HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .expect("client module");
    assert_eq!(s, 200, "{head}");
    assert!(head.contains("content-type: text/javascript"), "{head}");
    assert!(head.contains("access-control-allow-origin: *"), "{head}");
    // The entry point re-exports what its modules define; each is served.
    assert!(module.contains("subscribe,") && module.contains(r#"from "./live.js""#));
    let (s, live) = proxy.get("/client/live.js").expect("the live module");
    assert_eq!(s, 200);
    assert!(live.contains("export function subscribe"));
    // Every module of the built client is served, so every import resolves.
    let dist = walcast_tests::repo_root().join("clients/js/dist");
    for f in std::fs::read_dir(&dist).expect("clients/js/dist") {
        let name = f.expect("entry").file_name().to_string_lossy().into_owned();
        let (s, body) = proxy.get(&format!("/client/{name}")).expect("a module");
        assert_eq!(s, 200, "/client/{name}: {body}");
    }
    let (s, body) = proxy.get("/client/nosuch.js").expect("unknown module");
    assert_eq!(s, 404, "{body}");
}

#[test]
fn table_allow_list_and_client_limit_are_enforced() {
    let mut db = TestDb::new("live_limits");
    db.exec("CREATE TABLE users (id int PRIMARY KEY); CREATE TABLE secret (id int PRIMARY KEY)");
    let proxy = Proxy::start(
        cluster(),
        &db.name,
        &format!("{}_proxy", db.name),
        &["--tables", "public.users", "--max-clients", "2"],
    );
    let (s, body) = proxy.get("/ws?query=insert:secret").expect("request");
    assert_eq!(s, 404, "a table outside the allow-list is unknown: {body}");
    let mut a = proxy.ws("insert:users");
    let _b = proxy.ws("insert:public.users");
    proxy.wait_clients(2);
    let refused = tungstenite::connect(format!(
        "ws://127.0.0.1:{}/ws?query=insert:users",
        proxy.port
    ));
    match refused {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("a third client must get 503, got {:?}", other.map(|_| ())),
    }
    db.exec("INSERT INTO secret VALUES (1); INSERT INTO users VALUES (2)");
    let frames = a.texts(1, WAIT);
    assert_eq!(ids(&frames), vec![2]);
    a.expect_silence(Duration::from_millis(300));
}

#[test]
fn a_restarted_proxy_resumes_from_its_slot() {
    let mut db = TestDb::new("live_resume");
    db.exec("CREATE TABLE users (id int PRIMARY KEY)");
    let slot = format!("{}_proxy", db.name);
    let mut first = Proxy::start(cluster(), &db.name, &slot, &[]);
    let mut c = first.ws("insert:users");
    db.exec("INSERT INTO users SELECT generate_series(0, 9)");
    assert_eq!(ids(&c.texts(10, WAIT)), (0..10).collect::<Vec<i64>>());
    // A clean stop confirms the last position to PostgreSQL.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &first.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let _ = first.child.wait();
    // Changes made while no proxy runs are kept by the slot.
    db.exec("INSERT INTO users SELECT generate_series(10, 14)");
    let second = Proxy::start(cluster(), &db.name, &slot, &[]);
    let mut c = second.ws("insert:users");
    db.exec("INSERT INTO users SELECT generate_series(15, 19)");
    assert_eq!(ids(&c.texts(5, WAIT)), (15..20).collect::<Vec<i64>>());
    c.expect_silence(Duration::from_millis(300));
    // The second proxy started where the first stopped: it decoded the rows
    // inserted while it was down and after, and none of the first ten again.
    let (_, metrics) = second.get("/metrics").expect("metrics");
    let line = "walcast_changes_by_action_total{action=\"insert\"} 10\n";
    assert!(metrics.contains(line), "{metrics}");
}

#[test]
fn settings_the_proxy_cannot_start_with_are_named_and_exit_2() {
    // Nothing here reaches a database: each setting is refused before.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let busy = taken.local_addr().expect("addr").to_string();
    let shared = std::env::temp_dir().join(format!("walcast-shared-cache-{}", std::process::id()));
    std::fs::create_dir_all(&shared).expect("cache dir");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let url = "postgres://walcast@127.0.0.1:1/nothing";
    let shared_dir = shared.display().to_string();
    for (args, says) in [
        (vec![], "no database: pass --database-url"),
        (
            vec!["--database-url", "mysql://x/y"],
            "invalid --database-url",
        ),
        (
            vec!["--database-url", url, "--slot", "Bad-Slot"],
            "invalid --slot",
        ),
        (
            vec!["--database-url", url, "--tables", "a.b.c"],
            "invalid --tables",
        ),
        (
            vec!["--database-url", url, "--listen", busy.as_str()],
            "cannot listen on",
        ),
        (
            vec![
                "--database-url",
                url,
                "--listen",
                "127.0.0.1:0",
                "--filter-cache-dir",
                shared_dir.as_str(),
            ],
            "WASM filters: the filter cache",
        ),
        (
            vec!["relay", "--database-url", url],
            "the relay publishes to NATS: pass --nats-url",
        ),
        (
            vec![
                "relay",
                "--database-url",
                url,
                "--nats-url",
                "nats://127.0.0.1:1",
                "--recreate-lost-slot",
            ],
            "--recreate-lost-slot is not for the relay",
        ),
    ] {
        let stderr = support::refused_start(
            support::proxy_command(None)
                .args(&args)
                .env_remove("DATABASE_URL")
                .env_remove("WALCAST_NATS_URL"),
        );
        assert!(
            stderr.contains(&format!("walcast-proxy: {says}")),
            "{args:?}: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&shared);
    drop(taken);
}
