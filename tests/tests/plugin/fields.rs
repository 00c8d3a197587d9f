//! The fields every change carries: `lsn` (the change's own position), `xid`
//! (the transaction id) and `ts` (the commit time, UTC); and the options that
//! leave them out.

use walcast_format::Lsn;
use walcast_tests::{json, TestDb};

#[test]
fn lsn_xid_and_ts_describe_the_transaction() {
    let mut db = TestDb::new("fields");
    db.exec("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let slot = db.slot("s");
    let start: Lsn = db.current_lsn().parse().expect("lsn");
    let mut tx = db.client.transaction().expect("begin");
    let xid: i64 = tx
        .query_one("SELECT txid_current()", &[])
        .expect("xid")
        .get(0);
    tx.batch_execute("INSERT INTO t VALUES (1, 'a'), (2, 'b'); UPDATE t SET v = 'c' WHERE id = 1; DELETE FROM t WHERE id = 2")
        .expect("changes");
    tx.commit().expect("commit");
    let commit_ts: String = db
        .client
        .query_one(
            "SELECT to_char(pg_xact_commit_timestamp($1::text::xid) AT TIME ZONE 'UTC', \
             'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')",
            &[&xid.to_string()],
        )
        .expect("commit timestamp")
        .get(0);

    let lines = db.changes(
        &slot,
        &[
            ("include-transaction", "on"),
            ("actions", "insert,update,delete"),
        ],
    );
    assert_eq!(lines.len(), 6, "{lines:?}");
    let v: Vec<serde_json::Value> = lines.iter().map(|l| json(l)).collect();
    let lsn = |x: &serde_json::Value, k: &str| -> Lsn {
        x[k].as_str()
            .expect("lsn string")
            .parse()
            .expect("valid lsn")
    };

    assert_eq!(v[0]["action"], "B");
    assert_eq!(v[5]["action"], "C");
    let mut last = lsn(&v[0], "lsn");
    assert!(last >= start);
    for change in &v[1..5] {
        assert_eq!(change["xid"].as_i64(), Some(xid), "{change}");
        assert_eq!(change["ts"].as_str(), Some(commit_ts.as_str()), "{change}");
        let l = lsn(change, "lsn");
        assert!(
            l > last || (l == last && change == &v[1]),
            "lsn must increase: {change}"
        );
        last = l;
    }
    assert_eq!(v[5]["xid"].as_i64(), Some(xid));
    assert_eq!(v[5]["ts"].as_str(), Some(commit_ts.as_str()));
    assert!(lsn(&v[5], "lsn") > last);
    assert!(lsn(&v[5], "end_lsn") > lsn(&v[5], "lsn"));
}

#[test]
fn include_options_leave_fields_out() {
    let mut db = TestDb::new("fields_off");
    db.exec("CREATE TABLE t (id int PRIMARY KEY)");
    let slot = db.slot("s");
    db.exec("INSERT INTO t VALUES (1)");
    let lines = db.changes(
        &slot,
        &[
            ("include-lsn", "off"),
            ("include-xids", "0"),
            ("include-timestamp", "false"),
            ("actions", "insert"),
        ],
    );
    assert_eq!(
        lines,
        vec![r#"{"action":"I","schema":"public","table":"t","columns":{"id":1}}"#.to_owned()]
    );
}

#[test]
fn the_extensions_own_table_is_never_written() {
    let mut db = TestDb::new("own_table");
    db.exec("CREATE TABLE t (id int PRIMARY KEY)");
    let slot = db.slot("s");
    db.exec(
        "BEGIN; INSERT INTO walcast.streams (slot_name, tables) VALUES ('walcast_x1', 'public.t'); \
         INSERT INTO t VALUES (1); COMMIT; \
         UPDATE walcast.streams SET tables = NULL; DELETE FROM walcast.streams; \
         INSERT INTO walcast.streams (slot_name) VALUES ('walcast_x2'); TRUNCATE walcast.streams",
    );
    let lines = db.changes(&slot, &[("include-transaction", "on")]);
    let v: Vec<serde_json::Value> = lines.iter().map(|l| json(l)).collect();
    let tables: Vec<&str> = v
        .iter()
        .filter_map(|c| c["table"].as_str().or(c["tables"][0].as_str()))
        .collect();
    assert_eq!(tables, ["t"], "only public.t: {lines:?}");
    // The transaction that changed only walcast.streams (the statements
    // after COMMIT run as one) writes nothing at all, not even B and C;
    // one whose changes were all filtered out is an empty pair.
    let actions: String = v.iter().filter_map(|c| c["action"].as_str()).collect();
    assert_eq!(actions, "BIC", "{lines:?}");
    db.exec(
        "BEGIN; INSERT INTO walcast.streams (slot_name) VALUES ('walcast_x3'); \
         INSERT INTO t VALUES (2); COMMIT",
    );
    let only_streams = db.changes(
        &slot,
        &[("include-transaction", "on"), ("filter-tables", "public.t")],
    );
    let actions: String = only_streams
        .iter()
        .filter_map(|l| json(l)["action"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(actions, "BC", "{only_streams:?}");
}
