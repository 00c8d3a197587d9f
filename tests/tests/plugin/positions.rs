//! `include-position`: every change of a transaction carries `pos`, its
//! transaction's commit LSN and its index in the transaction. Positions
//! increase across transactions, do not depend on filters, and a change
//! decoded twice gets the same position.

use walcast_format::{Lsn, Position};
use walcast_tests::{json, TestDb};

fn position_of(v: &serde_json::Value) -> Option<Position> {
    v.get("pos").map(|p| {
        p.as_str()
            .expect("pos is a string")
            .parse()
            .expect("pos parses")
    })
}

#[test]
fn every_change_carries_its_commit_lsn_and_index() {
    let mut db = TestDb::new("positions");
    let all = db.slot("all");
    let only_a = db.slot("only_a");
    db.exec("CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY)");
    db.exec("INSERT INTO a VALUES (1, 'x')");
    db.exec(
        "BEGIN;
         INSERT INTO b VALUES (1);
         INSERT INTO a SELECT g, 'y' FROM generate_series(2, 4) g;
         SELECT pg_logical_emit_message(true, 'app', 'in the transaction');
         UPDATE a SET v = 'z' WHERE id = 2;
         DELETE FROM a WHERE id = 3;
         COMMIT;",
    );
    db.exec("SELECT pg_logical_emit_message(false, 'app', 'outside')");
    db.exec("TRUNCATE b");
    let rows: Vec<serde_json::Value> = db
        .changes(
            &all,
            &[("include-position", "on"), ("include-transaction", "on")],
        )
        .iter()
        .map(|l| json(l))
        .collect();

    let mut commit: Option<Lsn> = None;
    let mut index = 0u32;
    let mut last: Option<Position> = None;
    let mut seen = 0;
    for (i, r) in rows.iter().enumerate() {
        let action = r["action"].as_str().expect("action");
        match action {
            "B" => {
                // The commit's LSN, from the C that ends this transaction.
                let c = rows[i..]
                    .iter()
                    .find(|r| r["action"] == "C")
                    .expect("a C after each B");
                commit = Some(c["lsn"].as_str().expect("lsn").parse().expect("lsn"));
                index = 0;
                assert!(r.get("pos").is_none(), "{r}");
            }
            "C" => assert!(r.get("pos").is_none(), "{r}"),
            "M" if r["transactional"] == false => {
                assert!(r.get("pos").is_none(), "{r}");
            }
            _ => {
                let p = position_of(r).unwrap_or_else(|| panic!("no pos in {r}"));
                assert_eq!(Some(p.commit), commit, "{r}");
                assert_eq!(p.index, index, "{r}");
                assert!(last.is_none_or(|l| l < p), "{last:?} then {p:?}");
                // The text form is fixed width, upper case.
                assert_eq!(r["pos"].as_str(), Some(p.to_string().as_str()));
                last = Some(p);
                index += 1;
                seen += 1;
            }
        }
    }
    // 2 DDL (the extension's event trigger) + 1 + (1 + 3 + message + 1 + 1) + truncate.
    assert_eq!(seen, 11, "{rows:?}");

    // Another slot that writes only table a: the same changes keep the
    // same positions (the filtered ones still count).
    let filtered: Vec<serde_json::Value> = db
        .changes(
            &only_a,
            &[("include-position", "on"), ("add-tables", "public.a")],
        )
        .iter()
        .map(|l| json(l))
        .filter(|r| r["table"] == "a")
        .collect();
    let unfiltered: Vec<&serde_json::Value> = rows.iter().filter(|r| r["table"] == "a").collect();
    assert_eq!(filtered.len(), unfiltered.len());
    for (f, u) in filtered.iter().zip(&unfiltered) {
        assert_eq!(f["pos"], u["pos"], "{f} vs {u}");
        assert_eq!(f["lsn"], u["lsn"]);
    }

    // Without the option there is no pos.
    db.exec("INSERT INTO a VALUES (10, 'w')");
    let plain = db.changes(&all, &[]);
    assert_eq!(plain.len(), 1);
    assert!(json(&plain[0]).get("pos").is_none(), "{plain:?}");
}

#[test]
fn batch_bytes_packs_the_same_objects_into_fewer_messages() {
    let mut db = TestDb::new("batches");
    let plain = db.slot("plain");
    let packed = db.slot("packed");
    db.exec("CREATE TABLE t (id int PRIMARY KEY, v text)");
    db.exec("INSERT INTO t SELECT g, repeat('v', 50) FROM generate_series(1, 100) g");
    db.exec(
        "BEGIN; UPDATE t SET v = 'w' WHERE id <= 10; \
         SELECT pg_logical_emit_message(true, 'app', E'line\\none'); COMMIT",
    );
    db.exec("INSERT INTO t VALUES (1000, '{\"json\":\n1}')");
    let options = [("include-transaction", "on"), ("include-position", "on")];
    let one_each = db.changes(&plain, &options);
    let mut with_batches = options.to_vec();
    with_batches.push(("batch-bytes", "1000"));
    let messages = db.changes(&packed, &with_batches);
    assert!(
        messages.len() * 4 < one_each.len(),
        "{} messages for {} objects",
        messages.len(),
        one_each.len()
    );
    let split: Vec<String> = messages
        .iter()
        .flat_map(|m| m.split('\u{1e}').map(str::to_owned).collect::<Vec<_>>())
        .collect();
    assert_eq!(split, one_each);
    // No message is much larger than asked (one object over the size at most).
    assert!(
        messages.iter().all(|m| m.len() < 1000 + 400),
        "{messages:?}"
    );
}
