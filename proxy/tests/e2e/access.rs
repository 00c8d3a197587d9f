//! Per-user access end to end: JWTs signed with keys the test makes (HS256
//! secret, RS256 PEM, a JWKS), refused tokens of every kind, a token for
//! one table asking for another, row filters applied to live, WASM-filtered
//! and durable streams and to snapshot pages while another user on the
//! same table gets their own rows, token refresh on an open socket and the
//! close at `exp`.

use crate::support;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::{encode as url, json, openssl, unix_now as now, Client, Got, Proxy};
use walcast_tests::{cluster, repo_root, TestDb};

const WAIT: Duration = Duration::from_secs(10);
const SECRET: &str = "test-secret-of-at-least-thirty-two-bytes";
const ADMIN: &str = "admin-token";

fn hs256(claims: serde_json::Value) -> String {
    support::hs256(SECRET, claims)
}

/// A token for `walcast` claims, valid for `secs`.
fn user(walcast: serde_json::Value, secs: u64) -> String {
    hs256(serde_json::json!({"sub": "u", "exp": now() + secs, "walcast": walcast}))
}

/// Where the keys of a test binary's run go.
fn key_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("walcast-jwt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("key dir");
    dir
}

/// An RSA key pair made with openssl: (private PEM, public key file).
fn rsa_keys() -> (Vec<u8>, PathBuf) {
    let dir = key_dir();
    openssl(
        &dir,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "private.pem",
        ],
    );
    openssl(
        &dir,
        &[
            "pkey",
            "-in",
            "private.pem",
            "-pubout",
            "-out",
            "public.pem",
        ],
    );
    (
        std::fs::read(dir.join("private.pem")).expect("private key"),
        dir.join("public.pem"),
    )
}

/// A P-256 key pair made with openssl: (private PKCS#8 PEM, the public
/// point's x and y, base64url, for a JWK).
fn ec_key() -> (Vec<u8>, String, String) {
    let dir = key_dir();
    openssl(
        &dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "ec.pem",
        ],
    );
    let der = openssl(
        &dir,
        &["pkey", "-in", "ec.pem", "-pubout", "-outform", "DER"],
    );
    // The SubjectPublicKeyInfo ends with the point: 0x04, x, y (32 bytes each).
    let point = &der[der.len() - 65..];
    assert_eq!(point[0], 4, "an uncompressed point");
    (
        std::fs::read(dir.join("ec.pem")).expect("private key"),
        base64url(&point[1..33]),
        base64url(&point[33..]),
    )
}

fn setup(name: &str, extra: &[&str]) -> (TestDb, Proxy) {
    let mut db = TestDb::new(name);
    db.exec(
        "CREATE TABLE orders (id int PRIMARY KEY, tenant_id int, item text); \
         CREATE TABLE secrets (id int PRIMARY KEY, tenant_id int)",
    );
    let mut args = vec![
        "--jwt-secret",
        SECRET,
        "--token",
        ADMIN,
        "--jwt-leeway",
        "0",
    ];
    args.extend_from_slice(extra);
    let proxy = Proxy::start(cluster(), &db.name, &format!("{}_proxy", db.name), &args);
    (db, proxy)
}

fn ws(proxy: &Proxy, token: &str, params: &str) -> Result<Client, (u16, String)> {
    proxy.try_ws_url(&format!(
        "ws://127.0.0.1:{}/ws?access_token={}&{params}",
        proxy.port,
        url(token)
    ))
}

fn ws_ok(proxy: &Proxy, token: &str, params: &str) -> Client {
    ws(proxy, token, params).unwrap_or_else(|e| panic!("/ws?{params}: {e:?}"))
}

/// A durable stream's consumer with `token`.
fn durable(proxy: &Proxy, slot: &str, token: &str) -> Client {
    proxy
        .try_ws_url(&format!(
            "ws://127.0.0.1:{}/v1/lr/stream?slotName={slot}&access_token={}",
            proxy.port,
            url(token)
        ))
        .unwrap_or_else(|e| panic!("stream: {e:?}"))
}

fn status(proxy: &Proxy, token: &str, params: &str) -> (u16, String) {
    match ws(proxy, token, params) {
        Ok(_) => (101, String::new()),
        Err(e) => e,
    }
}

/// (id, tenant_id) of each change's row: `columns`, or `identity` for a delete.
fn tenant_ids(frames: &[String]) -> Vec<(i64, i64)> {
    frames
        .iter()
        .map(|f| {
            let v = json(f);
            let row = if v["action"] == "D" {
                &v["identity"]
            } else {
                &v["columns"]
            };
            (
                row["id"].as_i64().unwrap_or(-1),
                row["tenant_id"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

#[test]
fn tokens_are_verified_and_every_bad_one_is_refused() {
    let (private, public) = rsa_keys();
    let (ec_private, x, y) = ec_key();
    let jwks = std::env::temp_dir().join(format!("walcast-jwks-{}.json", std::process::id()));
    let oct = "a-jwks-secret-of-at-least-thirty-two-bytes";
    std::fs::write(
        &jwks,
        serde_json::json!({"keys": [
            {"kty": "oct", "kid": "k1", "alg": "HS256", "k": base64url(oct.as_bytes())},
            {"kty": "EC", "kid": "ec1", "crv": "P-256", "x": x, "y": y},
        ]})
        .to_string(),
    )
    .expect("jwks");
    let (_db, proxy) = setup(
        "access_tokens",
        &[
            "--jwt-public-key",
            &public.to_string_lossy(),
            "--jwks-file",
            &jwks.to_string_lossy(),
            "--jwt-audience",
            "walcast",
        ],
    );
    let claims = |extra: serde_json::Value| {
        let mut c =
            serde_json::json!({"sub": "ann", "exp": now() + 60, "aud": "walcast", "walcast": {}});
        if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
        c
    };
    let q = "query=insert:orders";
    // HS256, RS256 and a JWKS key by kid; the static token still works.
    assert_eq!(
        status(&proxy, &hs256(claims(serde_json::json!({}))), q).0,
        101
    );
    let rs = encode(
        &Header::new(Algorithm::RS256),
        &claims(serde_json::json!({})),
        &EncodingKey::from_rsa_pem(&private).expect("RSA key"),
    )
    .expect("RS256");
    assert_eq!(status(&proxy, &rs, q).0, 101);
    let mut kid = Header::new(Algorithm::HS256);
    kid.kid = Some("k1".into());
    let by_kid = encode(
        &kid,
        &claims(serde_json::json!({})),
        &EncodingKey::from_secret(oct.as_bytes()),
    )
    .expect("kid");
    assert_eq!(status(&proxy, &by_kid, q).0, 101);
    let mut ec = Header::new(Algorithm::ES256);
    ec.kid = Some("ec1".into());
    let es256 = encode(
        &ec,
        &claims(serde_json::json!({})),
        &EncodingKey::from_ec_pem(&ec_private).expect("EC key"),
    )
    .expect("ES256");
    assert_eq!(status(&proxy, &es256, q).0, 101);
    // The same token naming another key id is not verified by the EC key.
    let mut wrong_kid = ec.clone();
    wrong_kid.kid = Some("k1".into());
    let mismatched = encode(
        &wrong_kid,
        &claims(serde_json::json!({})),
        &EncodingKey::from_ec_pem(&ec_private).expect("EC key"),
    )
    .expect("ES256");
    assert_eq!(status(&proxy, &mismatched, q).0, 401);
    assert_eq!(status(&proxy, ADMIN, q).0, 101);

    let refused = |token: &str, why: &str| {
        let (code, body) = status(&proxy, token, q);
        assert_eq!(code, 401, "{why}: {body}");
        assert!(
            json(&body)["error"]
                .as_str()
                .is_some_and(|e| e.contains(why)),
            "{why}: {body}"
        );
    };
    refused(
        &hs256(claims(serde_json::json!({"exp": now() - 5}))),
        "expired",
    );
    refused(
        &hs256(claims(serde_json::json!({"nbf": now() + 60}))),
        "not valid yet",
    );
    refused(
        &hs256(claims(serde_json::json!({"aud": "other"}))),
        "another audience",
    );
    refused(
        &encode(
            &Header::new(Algorithm::HS256),
            &claims(serde_json::json!({})),
            &EncodingKey::from_secret(b"another-secret-of-thirty-two-bytes!!"),
        )
        .expect("sign"),
        "signature",
    );
    // alg none: the header says so and there is no signature.
    let body = rs.split('.').nth(1).expect("payload");
    refused(
        &format!("{}.{body}.", base64url(br#"{"alg":"none","typ":"JWT"}"#)),
        "none",
    );
    // RS256 header, signed with the public key as an HMAC secret.
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims(serde_json::json!({})),
        &EncodingKey::from_secret(&std::fs::read(&public).expect("public key")),
    )
    .expect("sign");
    refused(&confused, "signature");
    let mut no_claim = claims(serde_json::json!({}));
    if let Some(o) = no_claim.as_object_mut() {
        o.remove("walcast");
    }
    refused(&hs256(no_claim), "no \"walcast\" claim");
    refused(
        &hs256(claims(
            serde_json::json!({"walcast": {"row_filters": "x.eq.1"}}),
        )),
        "unknown field",
    );
    refused("not-a-token", "not valid");
    let (code, _) = status(&proxy, "", q);
    assert_eq!(code, 401);
}

#[test]
fn a_token_for_one_table_cannot_read_another() {
    let (mut db, proxy) = setup("access_tables", &[]);
    let t = user(
        serde_json::json!({"tables": "public.orders", "actions": ["insert"]}),
        60,
    );
    let (code, body) = status(&proxy, &t, "query=insert:public.secrets");
    assert_eq!(code, 403, "{body}");
    assert_eq!(status(&proxy, &t, "query=delete:public.orders").0, 403);
    // In the first frame: an error frame, then 1008.
    let mut c = ws_ok(&proxy, &t, "");
    c.send(r#"{"subscribe":{"query":"insert:secrets"}}"#);
    match c.next_within(WAIT) {
        Some(Got::Text(f)) => assert_eq!(json(&f)["code"], "FORBIDDEN", "{f}"),
        other => panic!("expected an error frame, got {other:?}"),
    }
    assert_eq!(c.close_frame(WAIT).map(|c| c.0), Some(1008));
    // Without a schema, the table is the one the search path finds; `*`
    // is cut to the allowed actions.
    let mut orders = ws_ok(&proxy, &t, "query=*:orders");
    // A WASM filter over every table sees only the allowed ones.
    let filter = upload_inserts_only(&proxy);
    let mut filtered = ws_ok(&proxy, &t, &format!("filter={filter}"));
    db.exec(
        "INSERT INTO secrets VALUES (1, 1); INSERT INTO orders VALUES (1, 1, 'a'); \
         UPDATE orders SET item = 'b'; DELETE FROM orders",
    );
    for c in [&mut orders, &mut filtered] {
        let frames = c.texts(1, WAIT);
        assert_eq!(tenant_ids(&frames), [(1, 1)]);
        assert_eq!(json(&frames[0])["table"], "orders");
        c.expect_silence(Duration::from_millis(500));
    }
    // Snapshots and durable streams: the same tables.
    let admin_init = proxy
        .get(&format!("/v1/init?access_token={ADMIN}"))
        .expect("init");
    assert_eq!(admin_init.0, 200, "{}", admin_init.1);
    let slot = json(&admin_init.1)["slotName"]
        .as_str()
        .expect("slot")
        .to_owned();
    let page = |table: &str| {
        proxy.post_full(
            &format!("/v1/snapshot/data?access_token={}", url(&t)),
            &format!(r#"{{"slotName":"{slot}","table":"{table}"}}"#),
        )
    };
    assert_eq!(page("secrets").0, 403);
    assert_eq!(page("orders").0, 200);
    let (code, body) = proxy
        .get(&format!(
            "/v1/init?access_token={}&tables=public.secrets",
            url(&t)
        ))
        .expect("init");
    assert_eq!(code, 403, "{body}");
    // A stream created by the user gets the user's tables.
    let (code, body) = proxy
        .get(&format!("/v1/init?access_token={}", url(&t)))
        .expect("init");
    assert_eq!(code, 200, "{body}");
    let (_, list) = proxy
        .get(&format!("/v1/streams?access_token={ADMIN}"))
        .expect("list");
    let own = json(&body)["slotName"].clone();
    let listed = json(&list)["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["slotName"] == own).cloned())
        .expect("the user's stream is listed");
    assert_eq!(listed["tables"], "public.orders", "{listed}");
}

fn upload_inserts_only(proxy: &Proxy) -> String {
    let bytes =
        std::fs::read(repo_root().join("filters/examples/wat/inserts_only.wat")).expect("wat");
    let (code, body) = proxy.post_bytes(
        &format!("/v1/filters?access_token={ADMIN}"),
        "application/wasm",
        &bytes,
    );
    assert_eq!(code, 200, "{body}");
    json(&body)["id"].as_str().expect("id").to_owned()
}

#[test]
fn row_filters_give_each_user_only_their_rows_everywhere() {
    let (mut db, proxy) = setup("access_rows", &[]);
    // Deletes carry the replica identity: FULL puts tenant_id in it, so
    // the row filter can pass a user's deletes.
    db.exec(
        "ALTER TABLE orders REPLICA IDENTITY FULL; \
         INSERT INTO orders SELECT g, g % 2 + 1, 'old' FROM generate_series(1, 10) g",
    );
    let token = |tenant: i64| {
        user(
            serde_json::json!({"tables": ["public.orders"], "row_filter": format!("tenant_id.eq.{tenant}")}),
            120,
        )
    };
    let (one, two) = (token(1), token(2));
    // A user's token may not upload filters unless its claim says so.
    let (code, _) = proxy.post_bytes(
        &format!("/v1/filters?access_token={}", url(&one)),
        "application/wasm",
        b"\0asm",
    );
    assert_eq!(code, 403);
    let filter = upload_inserts_only(&proxy);

    let created = proxy
        .get(&format!("/v1/init?access_token={}", url(&one)))
        .expect("init");
    assert_eq!(created.0, 200, "{}", created.1);
    let slot = json(&created.1)["slotName"]
        .as_str()
        .expect("slot")
        .to_owned();
    // Snapshot pages: only the user's rows, paged by key.
    for (t, tenant) in [(&one, 1), (&two, 2)] {
        let (code, _, body) = proxy.post_full(
            &format!("/v1/snapshot/data?access_token={}", url(t)),
            &format!(r#"{{"slotName":"{slot}","table":"orders","limit":3}}"#),
        );
        assert_eq!(code, 200, "{body}");
        let rows: Vec<serde_json::Value> = serde_json::from_str(&body).expect("rows");
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().all(|r| r["tenant_id"] == tenant), "{body}");
    }

    let mut live = [
        ws_ok(&proxy, &one, "query=*:orders"),
        ws_ok(&proxy, &two, "query=*:orders"),
    ];
    let mut filtered = [
        ws_ok(&proxy, &one, &format!("filter={filter}")),
        ws_ok(&proxy, &two, &format!("filter={filter}")),
    ];
    let mut durable = durable(&proxy, &slot, &one);
    db.exec(
        "INSERT INTO orders VALUES (11, 1, 'new'), (12, 2, 'new'); \
         UPDATE orders SET item = 'changed' WHERE id IN (1, 2); \
         DELETE FROM orders WHERE id IN (3, 4)",
    );
    for (i, c) in live.iter_mut().enumerate() {
        let tenant = i as i64 + 1;
        let frames = c.texts(3, WAIT);
        let got = tenant_ids(&frames);
        let want = if tenant == 1 {
            [(11, 1), (2, 1), (4, 1)]
        } else {
            [(12, 2), (1, 2), (3, 2)]
        };
        assert_eq!(got, want, "tenant {tenant}");
        c.expect_silence(Duration::from_millis(300));
    }
    for (i, c) in filtered.iter_mut().enumerate() {
        let tenant = i as i64 + 1;
        let frames = c.texts(1, WAIT);
        assert_eq!(tenant_ids(&frames), [(10 + tenant, tenant)]);
        c.expect_silence(Duration::from_millis(300));
    }
    let mut rows = Vec::new();
    let deadline = Instant::now() + WAIT;
    while rows.len() < 3 && Instant::now() < deadline {
        if let Some(Got::Text(t)) = durable.next() {
            if ["I", "U", "D"].contains(&json(&t)["action"].as_str().unwrap_or_default()) {
                rows.extend(tenant_ids(&[t]));
            }
        }
    }
    assert_eq!(rows, [(11, 1), (2, 1), (4, 1)]);
}

#[test]
fn a_token_is_refreshed_on_the_socket_or_the_socket_closes_at_exp() {
    let (mut db, proxy) = setup("access_expiry", &[]);
    let claim = serde_json::json!({"tables": "public.orders"});
    let mut refreshed = ws_ok(&proxy, &user(claim.clone(), 3), "query=insert:orders");
    let mut lapsing = ws_ok(&proxy, &user(claim.clone(), 3), "query=insert:orders");
    let mut changed = ws_ok(&proxy, &user(claim.clone(), 60), "query=insert:orders");
    refreshed.send(&serde_json::json!({"access_token": user(claim.clone(), 120)}).to_string());
    match refreshed.next_within(WAIT) {
        Some(Got::Text(f)) => {
            let v = json(&f);
            assert_eq!(v["type"], "token", "{f}");
            assert!(
                v["expires_at"].as_u64().is_some_and(|e| e > now() + 60),
                "{f}"
            );
        }
        other => panic!("expected the refresh answer, got {other:?}"),
    }
    // Other claims: refused, and the socket closes.
    changed
        .send(&serde_json::json!({"access_token": user(serde_json::json!({}), 120)}).to_string());
    let (code, reason) = changed.close_frame(WAIT).expect("close");
    assert_eq!(code, 1008);
    assert!(reason.contains("refresh refused"), "{reason}");

    let (code, reason) = lapsing.close_frame(WAIT).expect("close at exp");
    assert_eq!((code, reason.as_str()), (1008, "token expired"));
    db.exec("INSERT INTO orders VALUES (1, 1, 'a')");
    assert_eq!(refreshed.texts(1, WAIT).len(), 1);
    assert_eq!(
        proxy.metric("walcast_clients_closed_total{reason=\"token_expired\"}"),
        1
    );
}

fn base64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A websocket upgrade from a browser page on `origin`: the status.
fn upgrade_from(proxy: &Proxy, origin: &str, token: &str) -> u16 {
    use tungstenite::client::IntoClientRequest;
    let url = format!(
        "ws://127.0.0.1:{}/ws?query=insert:orders&access_token={}",
        proxy.port,
        url(token)
    );
    let mut req = url.into_client_request().expect("request");
    req.headers_mut()
        .insert("origin", origin.parse().expect("origin header"));
    match tungstenite::connect(req) {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("upgrade: {e}"),
    }
}

#[test]
fn browsers_from_other_origins_are_refused_and_preflights_answered() {
    let (_db, proxy) = setup(
        "access_origins",
        &["--allowed-origins", "https://app.example.com"],
    );
    let preflight = |origin: &str| {
        support::exchange(
            proxy.port,
            format!(
                "OPTIONS /v1/snapshot/data HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nOrigin: {origin}\r\n\
                 Access-Control-Request-Method: POST\r\n\
                 Access-Control-Request-Headers: authorization, content-type\r\nConnection: close\r\n\r\n",
                proxy.port
            )
            .as_bytes(),
        )
        .expect("preflight")
    };
    let (code, headers, _) = preflight("https://app.example.com");
    assert_eq!(code, 204);
    assert!(
        headers.contains("access-control-allow-origin: https://app.example.com"),
        "{headers}"
    );
    // (exchange gives the head in lower case)
    assert!(
        headers.contains("access-control-allow-methods: get, post, delete, options"),
        "{headers}"
    );
    assert!(
        headers.contains("access-control-allow-headers: authorization, content-type"),
        "{headers}"
    );
    let (code, headers, body) = preflight("https://evil.example.com");
    assert_eq!(code, 403, "{body}");
    assert!(
        !headers.contains("access-control-allow-origin"),
        "{headers}"
    );

    // An allowed origin's request gets the CORS headers; others nothing but 403.
    let get = |origin: &str| {
        support::exchange(
            proxy.port,
            format!(
                "GET /v1/streams HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nOrigin: {origin}\r\n\
                 Authorization: Bearer {ADMIN}\r\nConnection: close\r\n\r\n",
                proxy.port
            )
            .as_bytes(),
        )
        .expect("get")
    };
    let (code, headers, _) = get("https://app.example.com");
    assert_eq!(code, 200);
    assert!(
        headers.contains("access-control-allow-origin: https://app.example.com"),
        "{headers}"
    );
    assert!(headers.contains("x-walcast-after"), "{headers}");
    assert_eq!(get("https://evil.example.com").0, 403);
    // The proxy's own origin (the demo page) is always allowed.
    assert_eq!(get(&format!("http://127.0.0.1:{}", proxy.port)).0, 200);

    // Websocket upgrades: Origin checked before anything else.
    assert_eq!(upgrade_from(&proxy, "https://app.example.com", ADMIN), 101);
    assert_eq!(upgrade_from(&proxy, "https://evil.example.com", ADMIN), 403);
    assert_eq!(
        upgrade_from(&proxy, &format!("http://127.0.0.1:{}", proxy.port), ADMIN),
        101
    );
}

#[test]
fn without_allowed_origins_only_the_same_origin_may_use_a_proxy_with_tokens() {
    let (_db, proxy) = setup("access_same_origin", &[]);
    assert_eq!(
        upgrade_from(&proxy, "https://elsewhere.example.com", ADMIN),
        403
    );
    assert_eq!(
        upgrade_from(&proxy, &format!("http://127.0.0.1:{}", proxy.port), ADMIN),
        101
    );
}

#[test]
fn snapshots_inside_the_stream_read_only_a_users_rows() {
    let (mut db, proxy) = setup("access_snapshots", &[]);
    db.exec("INSERT INTO orders SELECT g, g % 2 + 1, 'old' FROM generate_series(1, 40) g");
    // Read by the proxy before anyone subscribes: a subscription begins
    // where the proxy's stream is, so rows it had not read yet would also
    // come as inserts after the snapshot's.
    proxy.wait_metric(
        r#"walcast_changes_by_action_total{action="insert"}"#,
        40,
        WAIT,
    );
    let token = |tenant: i64| {
        user(
            serde_json::json!({"tables": ["public.orders"], "row_filter": format!("tenant_id.eq.{tenant}")}),
            120,
        )
    };
    let (one, two) = (token(1), token(2));
    // Live: each user's snapshot has only their rows, as SQL and as matched.
    for (t, tenant) in [(&one, 1), (&two, 2)] {
        let mut c = ws_ok(&proxy, t, "query=*:orders&snapshot=1");
        let frames = c.texts(21, WAIT);
        assert_eq!(frames.len(), 21, "20 rows and done: {frames:?}");
        assert_eq!(json(&frames[20])["state"], "done", "{frames:?}");
        let rows = tenant_ids(&frames[..20]);
        assert!(rows.iter().all(|(_, t)| *t == tenant), "{rows:?}");
        assert_eq!(json(&frames[20])["rows"], 20);
    }
    // A table the token does not allow is refused before any read.
    assert_eq!(status(&proxy, &one, "query=*:secrets&snapshot=1").0, 403);

    // Durable: a re-snapshot asked with the user's token reads their rows.
    let created = proxy
        .get(&format!(
            "/v1/init?export_snapshot=false&access_token={}",
            url(&one)
        ))
        .expect("init");
    assert_eq!(created.0, 200, "{}", created.1);
    let slot = json(&created.1)["slotName"]
        .as_str()
        .expect("slot")
        .to_owned();
    let mut durable = durable(&proxy, &slot, &one);
    let ask = |token: &str, table: &str| {
        proxy
            .post(
                &format!("/v1/streams/{slot}/snapshot?access_token={}", url(token)),
                &format!(r#"{{"tables":["{table}"]}}"#),
            )
            .expect("post")
    };
    // The stream a user made holds only their tables.
    let (code, body) = ask(&two, "secrets");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("allow-list"), "{body}");
    let (code, body) = ask(&one, "orders");
    assert_eq!(code, 202, "{body}");
    let (mut rows, mut others) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "no done frame: rows {rows:?}, other frames {others:?}"
        );
        match durable.next() {
            Some(Got::Text(t)) => {
                let v = json(&t);
                if v["action"] == "R" {
                    rows.extend(tenant_ids(&[t]));
                } else if v["type"] == "snapshot" && v["state"] == "done" {
                    break;
                } else {
                    others.push(t);
                }
            }
            Some(Got::Closed(code, reason)) => {
                panic!("the stream closed with {code} {reason}; frames {others:?}")
            }
            _ => {}
        }
    }
    assert_eq!(rows.len(), 20);
    assert!(rows.iter().all(|(_, t)| *t == 1), "{rows:?}");
}

#[test]
fn a_tenant_s_live_view_hears_of_its_rows_leaving_and_nothing_of_others() {
    // No REPLICA IDENTITY FULL: deletes carry the key only.
    let (mut db, proxy) = setup("access_views", &[]);
    db.exec("INSERT INTO orders SELECT g, g % 2 + 1, 'old' FROM generate_series(1, 6) g");
    // Read by the proxy before the snapshot starts (see above).
    proxy.wait_metric(
        r#"walcast_changes_by_action_total{action="insert"}"#,
        6,
        WAIT,
    );
    let token = |tenant: i64| {
        user(
            serde_json::json!({"tables": ["public.orders"], "row_filter": format!("tenant_id.eq.{tenant}")}),
            120,
        )
    };
    let mut one = ws_ok(&proxy, &token(1), "query=*:orders&snapshot=1");
    let mut frames = Vec::new();
    while !frames
        .iter()
        .any(|f: &serde_json::Value| f["state"] == "done")
    {
        match one.next_within(WAIT) {
            Some(Got::Text(t)) => frames.push(json(&t)),
            other => panic!("the snapshot: {other:?}"),
        }
    }
    let held: Vec<i64> = frames
        .iter()
        .filter(|f| f["action"] == "R")
        .filter_map(|f| f["columns"]["id"].as_i64())
        .collect();
    assert_eq!(held.len(), 3, "tenant 1's rows: {frames:?}");
    // Tenant 2's row deleted, tenant 1's row moved to tenant 2, tenant 1's
    // row deleted, then a marker of tenant 1.
    db.exec("DELETE FROM orders WHERE id = 1"); // tenant 2
    db.exec("UPDATE orders SET tenant_id = 2 WHERE id = 2"); // leaves tenant 1
    db.exec("DELETE FROM orders WHERE id = 4"); // tenant 1
    db.exec("DELETE FROM orders WHERE id = 3"); // tenant 2
    db.exec("INSERT INTO orders VALUES (100, 1, 'marker')");
    let got: Vec<serde_json::Value> = one.texts(3, WAIT).iter().map(|t| json(t)).collect();
    let seen: Vec<(String, String)> = got
        .iter()
        .map(|f| {
            let o = if f["columns"].is_object() {
                &f["columns"]
            } else {
                &f["identity"]
            };
            (
                f["action"].as_str().unwrap_or("").to_owned(),
                o["id"].to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("L".to_owned(), "2".to_owned()),
            ("D".to_owned(), "4".to_owned()),
            ("I".to_owned(), "100".to_owned())
        ],
        "{got:?}"
    );
    // The leave carries the key only, never the row's new tenant.
    assert_eq!(got[0]["identity"], serde_json::json!({"id": 2}));
    assert!(got[0].get("columns").is_none(), "{}", got[0]);
}
