//! The Rust client (`clients/rust`, crate `walcast-client`) against a real
//! proxy and cluster: a filtered query, a connection dropped in the middle
//! of a burst (every change once, in order), a saved position, a position no
//! longer held, a snapshot, typed refusals; and a durable stream read at
//! least once through dropped connections and a failing handler, ending
//! equal to the table; `reconnect()` at seeded random points inside
//! transactions with ACKs in flight, each transaction applied once.

use crate::support;

use std::time::Duration;
use support::Proxy;
use walcast_client::{
    Action, Create, Durable, DurableOptions, Error, Event, Frame, HandlerError, Options, Selection,
    StreamOptions, Subscription,
};
use walcast_tests::{cluster, TestDb};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The next change (skipping other frames), failing after 20 s.
async fn next_change(sub: &mut Subscription) -> walcast_client::Change {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), sub.next()).await {
            Ok(Ok(Some(Frame::Change(c)))) => return *c,
            Ok(Ok(Some(_))) => {}
            other => panic!("no change within 20 s: {other:?}"),
        }
    }
}

/// Lets a new subscription's first frame be taken before writes commit.
async fn subscribed(sub: &mut Subscription) {
    // The first read connects and subscribes; nothing is written yet.
    let _ = tokio::time::timeout(Duration::from_millis(500), sub.next()).await;
}

fn id(c: &walcast_client::Change) -> i64 {
    c.columns
        .as_ref()
        .and_then(|m| m.get("id"))
        .and_then(|v| v.as_i64())
        .unwrap_or(-1)
}

#[test]
fn the_rust_client_subscribes_resumes_and_reports_typed_errors() {
    let mut db = TestDb::new("rust_client");
    db.client
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, kind text);
             CREATE TABLE snap (id int PRIMARY KEY);
             INSERT INTO snap SELECT generate_series(1, 25);",
        )
        .expect("tables");
    let proxy = Proxy::start(cluster(), &db.name, "rust_client_proxy", &[]);
    let url = format!("ws://127.0.0.1:{}", proxy.port);
    let conninfo = cluster().conninfo(&db.name);
    let write = move |sql: String| {
        let conninfo = conninfo.clone();
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&conninfo, postgres::NoTls).expect("connect");
            c.batch_execute(&sql).expect("write");
        })
    };
    let rt = runtime();
    rt.block_on(async {
        // A filtered query, then a burst with the connection dropped twice.
        let mut sub =
            Subscription::new(&url, "insert:items:kind.eq.keep", Options::default()).expect("sub");
        subscribed(&mut sub).await;
        let writer = write(
            "DO $$ BEGIN FOR i IN 1..30 LOOP \
               INSERT INTO items SELECT g, CASE WHEN g % 3 = 0 THEN 'drop' ELSE 'keep' END \
               FROM generate_series(i * 100 - 99, i * 100) g; COMMIT; END LOOP; END $$"
                .into(),
        );
        let want: Vec<i64> = (1..=3000).filter(|g| g % 3 != 0).collect();
        let mut got = Vec::new();
        while got.len() < want.len() {
            let c = next_change(&mut sub).await;
            assert_eq!(c.action, Action::Insert);
            got.push(id(&c));
            if got.len() == 500 || got.len() == 1500 {
                sub.reconnect();
            }
        }
        assert_eq!(got, want, "every matching insert once, in order");
        let saved = sub.position().expect("a position").to_owned();
        sub.close().await;
        let _ = writer.join();

        // A saved position resumes in a new subscription.
        write("INSERT INTO items VALUES (5001, 'keep'), (5002, 'drop'), (5003, 'keep')".into())
            .join()
            .expect("write");
        let mut again = Subscription::new(
            &url,
            "insert:items:kind.eq.keep",
            Options {
                after: Some(saved),
                ..Options::default()
            },
        )
        .expect("sub");
        assert_eq!(id(&next_change(&mut again).await), 5001);
        assert_eq!(id(&next_change(&mut again).await), 5003);
        again.close().await;

        // A position the proxy does not hold.
        let mut gone = Subscription::new(
            &url,
            "insert:items",
            Options {
                after: Some("0000000000000001:00000000".into()),
                ..Options::default()
            },
        )
        .expect("sub");
        match tokio::time::timeout(Duration::from_secs(20), gone.next()).await {
            Ok(Err(Error::PositionGone { oldest, .. })) => {
                assert!(oldest.as_ref().is_none_or(|o| o.len() == 25), "{oldest:?}")
            }
            other => panic!("{other:?}"),
        }

        // A snapshot: read events, the done frame, then changes.
        let mut snap = Subscription::new(
            &url,
            "*:snap",
            Options {
                snapshot: true,
                ..Options::default()
            },
        )
        .expect("sub");
        let mut reads = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(20), snap.next()).await {
                Ok(Ok(Some(Frame::Change(c)))) if c.action == Action::Read => reads.push(id(&c)),
                Ok(Ok(Some(Frame::Snapshot(p)))) if p["state"] == "done" => break,
                Ok(Ok(Some(_))) => {}
                other => panic!("{other:?}"),
            }
        }
        reads.sort_unstable();
        assert_eq!(reads, (1..=25).collect::<Vec<i64>>());
        write("INSERT INTO snap VALUES (26)".into())
            .join()
            .expect("write");
        let c = next_change(&mut snap).await;
        assert_eq!((c.action, id(&c)), (Action::Insert, 26));
        snap.close().await;

        // Refusals are typed and end the subscription.
        for (query, want_code) in [
            ("insert:no_such_table", Some("UNKNOWN_TABLE")),
            ("insert:items:id.zz.3", None),
        ] {
            let mut bad = Subscription::new(&url, query, Options::default()).expect("sub");
            match tokio::time::timeout(Duration::from_secs(20), bad.next()).await {
                Ok(Err(Error::Refused { code, position, .. })) => {
                    assert_eq!(code.as_deref(), want_code, "{query}");
                    assert_eq!(position.is_some(), want_code.is_none(), "{query}");
                }
                other => panic!("{query}: {other:?}"),
            }
            assert!(matches!(bad.next().await, Ok(None)), "ended");
        }
    });
}

#[test]
fn a_refused_token_is_a_typed_refusal_with_its_status() {
    let mut db = TestDb::new("rust_client_auth");
    db.client
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY)")
        .expect("table");
    let proxy = Proxy::start(
        cluster(),
        &db.name,
        "rust_client_auth_proxy",
        &["--token", "right-token-0123456789"],
    );
    let url = format!("ws://127.0.0.1:{}", proxy.port);
    runtime().block_on(async {
        let wrong = Options {
            token: Some("wrong".into()),
            ..Options::default()
        };
        let mut sub = Subscription::new(&url, "insert:items", wrong).expect("sub");
        match tokio::time::timeout(Duration::from_secs(20), sub.next()).await {
            Ok(Err(Error::Refused { status, .. })) => assert_eq!(status, Some(401)),
            other => panic!("{other:?}"),
        }
        let right = Options {
            token: Some("right-token-0123456789".into()),
            ..Options::default()
        };
        let mut sub = Subscription::new(&url, "insert:items", right).expect("sub");
        subscribed(&mut sub).await;
        // The synchronous client runs a runtime of its own: off this one.
        std::thread::scope(|s| {
            s.spawn(|| {
                db.client
                    .batch_execute("INSERT INTO items VALUES (7)")
                    .expect("insert")
            });
        });
        assert_eq!(id(&next_change(&mut sub).await), 7);
    });
}

const SECRET: &str = "walcast-rust-client-test-secret-0123456789";

/// An HS256 JWT for [`SECRET`] with these walcast claims, valid `secs`.
fn jwt(secs: u64, walcast: serde_json::Value) -> String {
    support::hs256(
        SECRET,
        serde_json::json!({"sub": "rust-client", "exp": support::unix_now() + secs, "walcast": walcast}),
    )
}

#[test]
fn the_rust_client_filters_with_wasm_and_keeps_its_socket_with_fresh_tokens() {
    let mut db = TestDb::new("rust_client_wasm");
    db.exec("CREATE TABLE orders (id int PRIMARY KEY, total int)");
    let proxy = Proxy::start(
        cluster(),
        &db.name,
        "rust_client_wasm_proxy",
        &["--jwt-secret", SECRET, "--jwt-leeway", "0"],
    );
    let wasm = support::example_filter("threshold");
    let mut upload = format!(
        "POST /v1/filters HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/wasm\r\nContent-Length: {}\r\n\r\n",
        jwt(300, serde_json::json!({"filters": true})),
        wasm.len()
    )
    .into_bytes();
    upload.extend_from_slice(&wasm);
    let (status, _, body) = support::exchange(proxy.port, &upload).expect("upload");
    assert_eq!(status, 200, "{body}");
    let filter = support::json(&body)["id"]
        .as_str()
        .expect("the filter's id")
        .to_owned();
    let url = format!("ws://127.0.0.1:{}", proxy.port);
    let rt = runtime();
    rt.block_on(async {
        // The proxy's leeway is 0: a 3 s token closes the socket at 3 s
        // unless a fresh one comes first.
        let mut sub = Subscription::new(
            &url,
            Selection::Filter {
                id: filter,
                config: serde_json::json!({"table": "orders", "column": "total", "min": 100}),
                query: Some("insert:orders".into()),
            },
            Options {
                token: Some(jwt(3, serde_json::json!({}))),
                ..Options::default()
            },
        )
        .expect("sub");
        subscribed(&mut sub).await;
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            sub.set_token(jwt(3, serde_json::json!({})))
                .await
                .expect("a fresh token");
        }
        let conninfo = cluster().conninfo(&db.name);
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&conninfo, postgres::NoTls).expect("connect");
            c.batch_execute(
                "INSERT INTO orders VALUES (1, 50), (2, 150), (3, 99), (4, 300); \
                 UPDATE orders SET total = 500 WHERE id = 1",
            )
            .expect("writes");
        })
        .join()
        .expect("the writer");
        let got = [next_change(&mut sub).await, next_change(&mut sub).await];
        assert_eq!(
            got.iter().map(id).collect::<Vec<_>>(),
            vec![2, 4],
            "the inserts the filter keeps, the query's update left out"
        );
        assert_eq!(sub.reconnects(), 0, "the socket lived past its first token");
    });
}

/// Applies a transaction's changes to the rows.
fn apply(rows: &mut support::rows::Rows, tx: &walcast_client::Transaction) {
    for c in &tx.changes {
        rows.apply(&c.raw);
    }
}

/// The test's end mark: a transactional logical message.
fn is_end_mark(tx: &walcast_client::Transaction) -> bool {
    tx.changes
        .iter()
        .any(|c| c.action == Action::Message && c.raw["prefix"] == "test.end")
}

#[test]
fn the_rust_client_reads_a_durable_stream_at_least_once() {
    use support::rows::{assert_same, item_operation, items, Rows, Writer};
    let seed = support::rng::seed();
    let mut db = TestDb::new("rust_durable");
    items(&mut db, 1500);
    let proxy = Proxy::start(cluster(), &db.name, "rust_durable_proxy", &[]);
    let url = format!("http://127.0.0.1:{}", proxy.port);
    let rt = runtime();
    let api = Durable::new(&url, DurableOptions::default()).expect("api");
    let created = rt
        .block_on(api.create(&Create {
            name: Some("rustclient".into()),
            tables: vec!["public.items".into()],
            ..Create::default()
        }))
        .expect("create");
    let slot = created.slot_name.clone();
    assert!(created.snapshot.is_some(), "{created:?}");
    let mut writer = Writer::start(&db.name, seed, item_operation);

    let mut rows = Rows::new(&["id"]);
    let mut stream = rt.block_on(async {
        // The snapshot, page by page, while the writer runs.
        let mut after = None;
        let mut pages = 0;
        loop {
            let page = api
                .snapshot_page(&slot, "public.items", 400, after.as_ref())
                .await
                .expect("snapshot page");
            if page.rows.is_empty() {
                break;
            }
            pages += 1;
            for r in page.rows {
                let v = serde_json::Value::Object(r);
                let k = rows.key_of(&v, &v);
                rows.rows.insert(k, v);
            }
            after = page.next;
        }
        assert_eq!(pages, 4, "1500 rows in pages of 400 (seed {seed})");

        // The stream, transaction by transaction, ACKed after each is
        // applied, with the connection dropped twice: each transaction
        // once, in commit order.
        let mut stream = api.stream(&slot, StreamOptions::default());
        let mut last_end: Option<String> = None;
        let mut applied = 0;
        while applied < 60 {
            let event = tokio::time::timeout(Duration::from_secs(30), stream.next_event())
                .await
                .expect("a transaction within 30 s")
                .expect("the stream goes on")
                .expect("not closed");
            let Event::Transaction(tx) = event else {
                continue;
            };
            if let Some(prev) = &last_end {
                assert_eq!(
                    walcast_client::compare_lsn(&tx.end_lsn, prev),
                    Some(std::cmp::Ordering::Greater),
                    "a transaction came twice or out of order (seed {seed})"
                );
            }
            apply(&mut rows, &tx);
            last_end = Some(tx.end_lsn.clone());
            stream.ack(&tx.end_lsn).await.expect("ack");
            applied += 1;
            if applied == 20 || applied == 40 {
                stream.reconnect();
            }
        }

        // A handler that fails: its transaction is not ACKed and comes
        // again on the next connection.
        let mut failed_at: Option<String> = None;
        let mut calls = 0;
        let out = stream
            .process(|event| {
                calls += 1;
                let outcome = match event {
                    Event::Transaction(tx) if calls >= 5 => {
                        failed_at = Some(tx.end_lsn.clone());
                        Err("the application failed")
                    }
                    Event::Transaction(tx) => {
                        apply(&mut rows, &tx);
                        Ok(())
                    }
                    _ => Ok(()),
                };
                async move { outcome }
            })
            .await;
        assert!(
            matches!(out, Err(HandlerError::Handler("the application failed"))),
            "{out:?}"
        );
        stream.close().await.expect("closed");
        let failed_at = failed_at.expect("the handler failed on a transaction");
        let mut stream = api.stream(&slot, StreamOptions::default());
        let again = loop {
            match tokio::time::timeout(Duration::from_secs(30), stream.next_event()).await {
                Ok(Ok(Some(Event::Transaction(tx)))) => break tx,
                Ok(Ok(Some(_))) => {}
                other => panic!("no transaction after reopening: {other:?}"),
            }
        };
        assert_eq!(
            again.end_lsn, failed_at,
            "the unACKed transaction comes first"
        );
        apply(&mut rows, &again);
        stream.ack(&again.end_lsn).await.expect("ack");
        stream
    });

    // The writer stops; an end mark commits after its last transaction.
    writer.stop();
    assert!(writer.count() > 0, "the writer wrote");
    db.exec("SELECT pg_logical_emit_message(true, 'test.end', '')");
    let ended = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(60),
            stream.process(|event| {
                let outcome = match event {
                    Event::Transaction(tx) if is_end_mark(&tx) => Err("end"),
                    Event::Transaction(tx) => {
                        apply(&mut rows, &tx);
                        Ok(())
                    }
                    _ => Ok(()),
                };
                async move { outcome }
            }),
        )
        .await
        .expect("the end mark within 60 s")
    });
    assert!(
        matches!(ended, Err(HandlerError::Handler("end"))),
        "{ended:?}"
    );
    assert_same(&rows, &Rows::read(&mut db, "items", &["id"]), seed);

    // Listed; deleted while a consumer is connected: it ends with 1000.
    rt.block_on(async {
        let listed = api.list().await.expect("list");
        assert!(
            listed.iter().any(|s| s["slotName"] == slot.as_str()),
            "{listed:?}"
        );
        let consumer = async {
            loop {
                match stream.next().await {
                    Ok(Some(_)) => {}
                    other => break other,
                }
            }
        };
        let delete = async {
            // Once the consumer is connected: the proxy lists it as its own.
            loop {
                let listed = api.list().await.expect("list");
                if listed
                    .iter()
                    .any(|s| s["slotName"] == slot.as_str() && s["consumerHere"] == true)
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            api.delete(&slot).await
        };
        let (closed, deleted) = tokio::time::timeout(Duration::from_secs(30), async {
            tokio::join!(consumer, delete)
        })
        .await
        .expect("the delete and the close within 30 s");
        deleted.expect("delete");
        assert!(
            matches!(closed, Err(Error::Closed { code: 1000, .. })),
            "{closed:?}"
        );
        let gone = api.delete(&slot).await;
        assert!(
            matches!(
                gone,
                Err(Error::Refused {
                    status: Some(404),
                    ..
                })
            ),
            "{gone:?}"
        );
    });
}

#[test]
fn reconnects_inside_transactions_with_acks_in_flight_apply_each_transaction_once() {
    use walcast_client::DurableFrame;
    let first = support::rng::seed();
    eprintln!(
        "seeds {first} to {} (WALCAST_SEED={first} replays them)",
        first + 5
    );
    let mut db = TestDb::new("rust_reconnects");
    db.exec("CREATE TABLE ledger (txn int, n int, PRIMARY KEY (txn, n))");
    let proxy = Proxy::start(cluster(), &db.name, "rust_reconnects_proxy", &[]);
    let url = format!("http://127.0.0.1:{}", proxy.port);
    let rt = runtime();
    let api = Durable::new(&url, DurableOptions::default()).expect("api");
    for run in 0..6u64 {
        let seed = first.wrapping_add(run);
        let mut rng = support::rng::Rng(seed);
        let slot = rt
            .block_on(api.create(&Create {
                name: Some(format!("reconnects_{}", (b'a' + run as u8) as char)),
                tables: vec!["public.ledger".into()],
                without_snapshot: true,
            }))
            .expect("create")
            .slot_name;
        // Transactions of 1 to 6 rows, committed before the stream opens.
        let txns = 30u64;
        let mut sizes = Vec::new();
        let mut script = String::new();
        for t in 1..=txns {
            let n = 1 + rng.below(6);
            sizes.push(n as usize);
            script.push_str(&format!(
                "BEGIN; INSERT INTO ledger SELECT {}, g FROM generate_series(1, {n}) g; COMMIT;",
                run * 1000 + t
            ));
        }
        db.client.batch_execute(&script).expect("the transactions");
        let mut stream = api.stream(&slot, StreamOptions::default());
        // The application of the README: a transaction collected from its
        // Begin, applied at its Commit unless its end_lsn was applied.
        let mut applied = std::collections::BTreeMap::<i64, usize>::new();
        let mut applied_up_to: Option<String> = None;
        let mut txn: Option<Vec<i64>> = None;
        let mut deferred: Option<String> = None;
        let mut reconnects = 0;
        rt.block_on(async {
            while applied.len() < txns as usize {
                let frame = tokio::time::timeout(Duration::from_secs(30), stream.next())
                    .await
                    .unwrap_or_else(|_| panic!("a frame within 30 s (seed {seed})"))
                    .expect("the stream goes on")
                    .expect("not closed");
                if deferred.is_some() && rng.chance(50) {
                    let lsn = deferred.take().unwrap_or_default();
                    stream.ack(&lsn).await.expect("ack");
                }
                match frame {
                    DurableFrame::Begin(_) | DurableFrame::Resumed => txn = Some(Vec::new()),
                    DurableFrame::Change(c) => {
                        let id = c
                            .columns
                            .as_ref()
                            .and_then(|m| m.get("txn"))
                            .and_then(|v| v.as_i64());
                        if let (Some(t), Some(id)) = (txn.as_mut(), id) {
                            t.push(id);
                        }
                    }
                    DurableFrame::Commit { end_lsn, .. } => {
                        let rows = txn
                            .take()
                            .unwrap_or_else(|| panic!("a Commit without its Begin (seed {seed})"));
                        let newer = applied_up_to.as_deref().is_none_or(|a| {
                            walcast_client::compare_lsn(&end_lsn, a)
                                == Some(std::cmp::Ordering::Greater)
                        });
                        if newer && !rows.is_empty() {
                            let id = rows[0];
                            assert!(
                                rows.iter().all(|r| *r == id),
                                "one transaction's rows (seed {seed})"
                            );
                            let size = sizes[(id - run as i64 * 1000 - 1) as usize];
                            assert_eq!(rows.len(), size, "transaction {id} whole (seed {seed})");
                            *applied.entry(id).or_default() += 1;
                            applied_up_to = Some(end_lsn.clone());
                        }
                        if rng.chance(30) {
                            if let Some(lsn) = deferred.replace(end_lsn) {
                                stream.ack(&lsn).await.expect("ack");
                            }
                        } else {
                            stream.ack(&end_lsn).await.expect("ack");
                        }
                    }
                    _ => {}
                }
                if rng.chance(12) {
                    reconnects += 1;
                    stream.reconnect();
                }
            }
            if let Some(lsn) = deferred.take() {
                stream.ack(&lsn).await.expect("ack");
            }
            stream
                .close()
                .await
                .expect("closed with the last ACK delivered");
        });
        assert!(reconnects > 0, "seed {seed}: reconnected");
        assert!(
            applied.values().all(|n| *n == 1),
            "seed {seed}: each transaction once: {applied:?}"
        );
        // At the last ACK, or past it over WAL with nothing for this stream
        // (an idle stream's slot advances, docs/streams.md), once the
        // walsender has read the proxy's last status update (it does before
        // it lets the slot go).
        let last = stream.acked().expect("ACKed").to_owned();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let confirmed: String = db
                .client
                .query_one(
                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .expect("slot")
                .get(0);
            if walcast_client::compare_lsn(&confirmed, &last) != Some(std::cmp::Ordering::Less) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "seed {seed}: the slot ({confirmed}) stays behind the last ACK ({last}) after close()"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // So the next connection starts after every applied transaction:
        // its first rows are a transaction committed after close().
        let marker = run as i64 * 1000 + 999;
        db.exec(&format!("INSERT INTO ledger VALUES ({marker}, 1)"));
        let mut again = api.stream(&slot, StreamOptions::default());
        let first = rt.block_on(async {
            loop {
                match tokio::time::timeout(Duration::from_secs(30), again.next_event()).await {
                    Ok(Ok(Some(Event::Transaction(tx)))) if !tx.changes.is_empty() => break tx,
                    Ok(Ok(Some(_))) => {}
                    other => panic!("seed {seed}: no transaction after reopening: {other:?}"),
                }
            }
        });
        let id = first.changes[0]
            .columns
            .as_ref()
            .and_then(|c| c.get("txn"))
            .and_then(|v| v.as_i64());
        assert_eq!(
            id,
            Some(marker),
            "seed {seed}: an applied transaction came again"
        );
        rt.block_on(again.close()).expect("closed");
        // The consumer just closed may still hold the slot for a moment (409).
        rt.block_on(async {
            for tries in 0.. {
                match api.delete(&slot).await {
                    Ok(()) => break,
                    Err(Error::Refused {
                        status: Some(409), ..
                    }) if tries < 100 => tokio::time::sleep(Duration::from_millis(50)).await,
                    Err(e) => panic!("seed {seed}: deleting the stream: {e:?}"),
                }
            }
        });
    }
}

#[test]
fn the_rust_view_keeps_a_filtered_query_s_rows_through_moves_deletes_and_a_reconnect() {
    use walcast_client::{View, ViewEvent};
    let mut db = TestDb::new("rust_view");
    db.exec("CREATE TABLE people (id int PRIMARY KEY, age int)");
    db.exec("INSERT INTO people SELECT g, g FROM generate_series(1, 50) g");
    let proxy = Proxy::start(cluster(), &db.name, "rust_view_proxy", &[]);
    let url = format!("ws://127.0.0.1:{}", proxy.port);
    let rt = runtime();
    let mut view =
        View::new(&url, "*:people:age.lt.20", &["id"], Options::default()).expect("view");
    let table = |db: &mut TestDb| -> Vec<(i32, i32)> {
        db.client
            .query("SELECT id, age FROM people WHERE age < 20 ORDER BY id", &[])
            .expect("rows")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    let held = |view: &View| -> Vec<(i32, i32)> {
        let mut v: Vec<(i32, i32)> = view
            .rows()
            .values()
            .map(|r| {
                (
                    r["id"].as_i64().unwrap_or(-1) as i32,
                    r["age"].as_i64().unwrap_or(-1) as i32,
                )
            })
            .collect();
        v.sort_unstable();
        v
    };
    // Reads events until the view equals the table.
    let settle = |view: &mut View, want: Vec<(i32, i32)>, what: &str| {
        rt.block_on(async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while held(view) != want || !view.is_ready() {
                match tokio::time::timeout_at(deadline, view.next()).await {
                    Ok(Ok(Some(_))) => {}
                    other => panic!("{what}: {other:?}; held {:?}, want {want:?}", held(view)),
                }
            }
        })
    };
    settle(&mut view, table(&mut db), "the current rows");
    assert_eq!(view.rows().len(), 19);
    db.exec("UPDATE people SET age = 90 WHERE id = 3"); // leaves
    db.exec("DELETE FROM people WHERE id = 4"); // deleted
    db.exec("UPDATE people SET age = 5 WHERE id = 40"); // enters
    db.exec("UPDATE people SET id = 400 WHERE id = 5"); // its key changes
    settle(
        &mut view,
        table(&mut db),
        "moves, a delete and a key change",
    );
    // The connection drops; while it is down rows leave and go: the view
    // reads its rows again and removes them.
    view.subscription().reconnect();
    db.exec("DELETE FROM people WHERE id = 6; UPDATE people SET age = 80 WHERE id = 7");
    let mut removed = Vec::new();
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline, view.next()).await {
                Ok(Ok(Some(ViewEvent::Remove { key, why, .. }))) => removed.push((key, why)),
                Ok(Ok(Some(ViewEvent::Ready))) => break,
                Ok(Ok(Some(_))) => {}
                other => panic!("the resync: {other:?}"),
            }
        }
    });
    assert!(removed.iter().any(|(k, _)| k == "[6]"), "{removed:?}");
    assert!(removed.iter().any(|(k, _)| k == "[7]"), "{removed:?}");
    assert_eq!(held(&view), table(&mut db));
    rt.block_on(view.close());
}
