//! `walcast.doctor()` reports what logical decoding with walcast needs and
//! says what to change, in plain words.

use walcast_tests::TestDb;

fn doctor(db: &mut TestDb) -> Vec<(String, bool, String, String)> {
    db.client
        .query(
            "SELECT item, ok, current_value, advice FROM walcast.doctor()",
            &[],
        )
        .expect("walcast.doctor()")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

fn find<'a>(
    rows: &'a [(String, bool, String, String)],
    item: &str,
) -> &'a (String, bool, String, String) {
    rows.iter()
        .find(|r| r.0 == item)
        .unwrap_or_else(|| panic!("doctor has no {item:?} row: {rows:?}"))
}

#[test]
fn doctor_reports_a_ready_cluster_and_what_to_improve() {
    let mut db = TestDb::new("doctor");
    let rows = doctor(&mut db);
    let wal = find(&rows, "wal_level");
    assert!(wal.1 && wal.2 == "logical", "{wal:?}");
    assert!(find(&rows, "max_replication_slots").1);
    assert!(find(&rows, "max_wal_senders").1);
    assert!(find(&rows, "replication privilege").1);
    assert!(find(&rows, "ddl capture").1);
    let has_gate: bool = db
        .client
        .query_one(
            "SELECT count(*) = 1 FROM pg_settings WHERE name = 'output_plugin_libraries'",
            &[],
        )
        .expect("pg_settings")
        .get(0);
    // Debian's PostgreSQL has this setting, stock PostgreSQL does not: doctor
    // reports it exactly when it exists.
    let gate = rows.iter().find(|r| r.0 == "output_plugin_libraries");
    match (has_gate, gate) {
        (true, Some(gate)) => assert!(gate.1 && gate.2.contains("walcast"), "{gate:?}"),
        (false, None) => {}
        (has, row) => panic!("setting present: {has}, doctor row: {row:?}"),
    }
    // A slot recorded by walcast-proxy and missing here is reported lost.
    db.exec("INSERT INTO walcast.streams (slot_name) VALUES ('walcast_gone1')");
    let rows = doctor(&mut db);
    let gone = find(&rows, "slot walcast_gone1");
    assert!(!gone.1 && gone.3.starts_with("lost"), "{gone:?}");
    // From PostgreSQL 17 on: the failover flag and synchronized_standby_slots.
    let major: i32 = db
        .client
        .query_one(
            "SELECT current_setting('server_version_num')::int / 10000",
            &[],
        )
        .expect("version")
        .get(0);
    let failover = rows.iter().find(|r| r.0 == "failover slots");
    let standby = rows.iter().find(|r| r.0 == "synchronized_standby_slots");
    if major >= 17 {
        let failover = failover.expect("a failover slots row");
        assert!(failover.2.ends_with("walcast slots"), "{failover:?}");
        assert!(standby.is_some(), "{rows:?}");
    } else {
        assert!(failover.is_none() && standby.is_none(), "{rows:?}");
    }
    // The private clusters keep WAL for slots without limit: doctor says so.
    let keep = find(&rows, "max_slot_wal_keep_size");
    assert!(
        !keep.1 && keep.3.contains("max_slot_wal_keep_size"),
        "{keep:?}"
    );
}

#[test]
fn doctor_explains_disabled_ddl_capture_and_missing_privileges() {
    let mut db = TestDb::new("doctor_problems");
    let role = format!("plain_{}", db.name);
    db.exec("ALTER EVENT TRIGGER walcast_ddl_capture DISABLE");
    db.exec(&format!(
        "CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA walcast TO {role}; SET ROLE {role}"
    ));
    let rows = doctor(&mut db);
    db.exec(&format!(
        "RESET ROLE; ALTER EVENT TRIGGER walcast_ddl_capture ENABLE; \
         REVOKE USAGE ON SCHEMA walcast FROM {role}; DROP ROLE {role}"
    ));
    let ddl = find(&rows, "ddl capture");
    assert!(
        !ddl.1
            && ddl
                .3
                .contains("ALTER EVENT TRIGGER walcast_ddl_capture ENABLE"),
        "{ddl:?}"
    );
    let privilege = find(&rows, "replication privilege");
    assert!(
        !privilege.1
            && privilege
                .3
                .contains(&format!("ALTER ROLE {role} REPLICATION")),
        "{privilege:?}"
    );
}
