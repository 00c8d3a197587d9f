//! Bad input gets an ERROR that names the problem, and nothing else breaks:
//! unknown options, invalid values, malformed table patterns, a panic inside
//! the plugin, a database the plugin cannot serve.

use walcast_tests::{cluster, recvlogical, TestDb};

fn error_of(db: &mut TestDb, slot: &str, options: &[(&str, &str)]) -> String {
    match db.try_changes(slot, options) {
        Ok(rows) => panic!("options {options:?} should be refused, got {rows:?}"),
        Err(e) => e
            .as_db_error()
            .map(|d| d.message().to_owned())
            .unwrap_or_else(|| e.to_string()),
    }
}

#[test]
fn unknown_options_and_invalid_values_are_errors_naming_them() {
    let mut db = TestDb::new("bad_options");
    let slot = db.slot("s");
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("pretty-print", "1")],
            "option \"pretty-print\" is unknown",
        ),
        (
            &[("include-xids", "perhaps")],
            "invalid value \"perhaps\" for option \"include-xids\"",
        ),
        (&[("actions", "insert,upsert")], "unknown action \"upsert\""),
        (&[("actions", "insert,,delete")], "empty item"),
        (
            &[("add-tables", "nodot")],
            "malformed table pattern \"nodot\"",
        ),
        (&[("filter-tables", "a.b.c")], "exactly one unescaped '.'"),
        (&[("add-tables", "public.t\\")], "unfinished '\\' escape"),
        (&[("add-tables", "public.")], "table part is empty"),
        (
            &[("stream-changes", "sometimes")],
            "option \"stream-changes\"",
        ),
        (
            &[("include-position", "on"), ("stream-changes", "on")],
            "cannot be combined with stream-changes",
        ),
    ];
    for (options, fragment) in cases {
        let msg = error_of(&mut db, &slot, options);
        assert!(msg.starts_with("walcast: "), "{msg}");
        assert!(
            msg.contains(fragment),
            "options {options:?}: {msg:?} should contain {fragment:?}"
        );
    }
    // The slot is intact and usable with good options afterwards.
    db.exec("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)");
    let rows = db.changes(&slot, &[("actions", "insert")]);
    assert_eq!(rows.len(), 1, "{rows:?}");
}

#[test]
fn streaming_protocol_reports_bad_options() {
    let mut db = TestDb::new("bad_options_stream");
    let slot = db.slot("s");
    let end = db.current_lsn();
    let err =
        recvlogical(&db.name, &slot, &[("no-such-option", "1")], &end).expect_err("must fail");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("option \"no-such-option\" is unknown to walcast"),
        "{msg}"
    );
}

#[test]
fn a_panic_in_the_plugin_is_an_error_and_the_backend_keeps_serving() {
    let mut db = TestDb::new("panic");
    let slot = db.slot("s");
    db.exec("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)");
    let pid: i32 = db
        .client
        .query_one("SELECT pg_backend_pid()", &[])
        .expect("pid")
        .get(0);
    let started: String = db
        .client
        .query_one("SELECT pg_postmaster_start_time()::text", &[])
        .expect("start time")
        .get(0);

    db.exec("SET walcast.debug_panic = on");
    let msg = error_of(&mut db, &slot, &[]);
    assert!(
        msg.contains("deliberate panic in the change callback"),
        "{msg}"
    );

    // Same backend, same postmaster, still answering.
    let row = db
        .client
        .query_one(
            "SELECT pg_backend_pid(), pg_postmaster_start_time()::text",
            &[],
        )
        .expect("alive");
    assert_eq!(row.get::<_, i32>(0), pid);
    assert_eq!(row.get::<_, String>(1), started);
    // Another session is unaffected.
    let other = cluster()
        .psql(&db.name, "SELECT count(*) FROM t")
        .expect("other session");
    assert_eq!(other, "1");

    // Nothing was consumed by the failed call: the change is still there.
    db.exec("RESET walcast.debug_panic");
    let rows = db.changes(&slot, &[("actions", "insert")]);
    assert_eq!(rows.len(), 1, "{rows:?}");
}

#[test]
fn a_non_utf8_database_is_refused_with_a_clear_error() {
    let c = cluster();
    c.psql("postgres", "CREATE DATABASE latin1_db ENCODING 'LATIN1' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'")
        .expect("create latin1 database");
    let err = c
        .psql(
            "latin1_db",
            "SELECT pg_create_logical_replication_slot('latin1_slot', 'walcast')",
        )
        .expect_err("walcast must refuse a LATIN1 database");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("database encoding is LATIN1") && msg.contains("needs a UTF8 database"),
        "{msg}"
    );
}
