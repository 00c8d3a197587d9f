//! TOASTed values of several MB: written in full when present in the WAL,
//! left out and named in `unchanged_toast` when an UPDATE did not touch them.

use serde_json::Value;
use walcast_tests::{json, TestDb};

const BIG: &str = "(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 160000) AS i)";

fn setup(db: &mut TestDb, identity_full: bool) -> String {
    db.exec(
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text, data bytea, meta jsonb); \
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;",
    );
    if identity_full {
        db.exec("ALTER TABLE docs REPLICA IDENTITY FULL");
    }
    let slot = db.slot("toast");
    db.exec(&format!(
        "INSERT INTO docs VALUES (1, 'first', {BIG}, decode({BIG}, 'hex'), jsonb_build_object('k', {BIG}))"
    ));
    slot
}

fn text_of(db: &mut TestDb, expr: &str) -> String {
    db.client
        .query_one(
            &format!("SELECT ({expr})::text FROM docs WHERE id = 1"),
            &[],
        )
        .expect("select")
        .get(0)
}

#[test]
fn multi_megabyte_values_are_written_in_full() {
    let mut db = TestDb::new("toast_full");
    let slot = setup(&mut db, false);
    let changes = db.changes(&slot, &[("actions", "insert")]);
    assert_eq!(changes.len(), 1);
    assert!(
        changes[0].len() > 15_000_000,
        "the insert carries about 16 MB of JSON"
    );
    let v = json(&changes[0]);
    let body = text_of(&mut db, "body");
    assert_eq!(body.len(), 5_120_000);
    assert_eq!(v["columns"]["body"].as_str(), Some(body.as_str()));
    let data = text_of(&mut db, "to_json(data)");
    assert_eq!(
        Value::String(v["columns"]["data"].as_str().unwrap_or("").to_owned()).to_string(),
        data
    );
    let meta = text_of(&mut db, "meta");
    assert_eq!(v["columns"]["meta"], json(&meta));
}

#[test]
fn update_leaves_out_unchanged_toast_columns_and_names_them() {
    let mut db = TestDb::new("toast_unchanged");
    let slot = setup(&mut db, false);
    db.changes(&slot, &[]);
    db.exec("UPDATE docs SET title = 'second'");
    db.exec("UPDATE docs SET body = body || 'x'");
    db.exec("DELETE FROM docs");
    let changes = db.changes(&slot, &[("actions", "update,delete")]);
    assert_eq!(changes.len(), 3, "{changes:?}");

    let u1 = json(&changes[0]);
    assert_eq!(u1["columns"]["title"], "second");
    let cols = u1["columns"].as_object().expect("columns object");
    for unchanged in ["body", "data", "meta"] {
        assert!(
            !cols.contains_key(unchanged),
            "{unchanged} must be left out, not null: {}",
            changes[0]
        );
    }
    assert_eq!(
        u1["unchanged_toast"],
        serde_json::json!(["body", "data", "meta"])
    );
    assert_eq!(u1["identity"], serde_json::json!({"id": 1}));

    let u2 = json(&changes[1]);
    let body = u2["columns"]["body"]
        .as_str()
        .expect("the changed body is written in full");
    assert_eq!(body.len(), 5_120_001);
    assert!(body.ends_with('x'));
    assert_eq!(u2["unchanged_toast"], serde_json::json!(["data", "meta"]));

    let d = json(&changes[2]);
    assert_eq!(d["identity"], serde_json::json!({"id": 1}));
    assert!(d.get("unchanged_toast").is_none());
}

#[test]
fn replica_identity_full_writes_the_old_row_in_full() {
    let mut db = TestDb::new("toast_identity_full");
    let slot = setup(&mut db, true);
    db.changes(&slot, &[]);
    db.exec("UPDATE docs SET title = 'second'");
    let changes = db.changes(&slot, &[("actions", "update")]);
    assert_eq!(changes.len(), 1);
    let u = json(&changes[0]);
    let body = text_of(&mut db, "body");
    assert_eq!(u["identity"]["title"], "first");
    assert_eq!(
        u["identity"]["body"].as_str(),
        Some(body.as_str()),
        "FULL identity carries the old TOASTed value"
    );
}

#[test]
fn large_values_stream_through_the_replication_protocol() {
    let mut db = TestDb::new("toast_stream");
    let slot = setup(&mut db, false);
    let end = db.current_lsn();
    let lines = db.recvlogical(&slot, &[("actions", "insert")], &end);
    assert_eq!(lines.len(), 1);
    let v = json(&lines[0]);
    assert_eq!(v["columns"]["body"].as_str().map(str::len), Some(5_120_000));
}
