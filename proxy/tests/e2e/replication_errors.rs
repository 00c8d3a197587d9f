//! What the replication client says when PostgreSQL refuses it: each cause
//! met for real on private clusters (a missing, busy and invalidated slot,
//! a role without REPLICATION, wal_level below logical), classified by
//! SQLSTATE as retry or stop, with the advice that fits the cause.

use std::time::Duration;
use tokio_postgres::error::SqlState;
use walcast_cluster::{Cluster, Config};
use walcast_format::Lsn;
use walcast_proxy::database::Database;
use walcast_proxy::replication::{ErrorKind, ReplicationClient, ReplicationError};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn client(url: &str) -> Result<ReplicationClient, ReplicationError> {
    ReplicationClient::connect(&Database::parse(url).expect("url")).await
}

/// Starts streaming `slot` from its confirmed position.
async fn start(url: &str, slot: &str) -> Result<(), ReplicationError> {
    let c = client(url).await?;
    c.start(slot, Lsn::INVALID, &[], Duration::from_secs(10))
        .await
        .map(drop)
}

/// Asserts a definite error with this SQLSTATE whose message says `advice`.
fn assert_definite(e: &ReplicationError, state: &SqlState, advice: &str) {
    assert_refused(e, ErrorKind::Definite, state, advice)
}

/// Asserts an error of `kind` with this SQLSTATE whose message says `advice`.
fn assert_refused(e: &ReplicationError, kind: ErrorKind, state: &SqlState, advice: &str) {
    assert_eq!(e.kind, kind, "{e}");
    assert!(e.is(state), "{:?} instead of {state:?}: {e}", e.sqlstate);
    assert!(e.message.contains(advice), "no {advice:?} in: {e}");
}

#[test]
fn refusals_are_classified_by_sqlstate_with_the_advice_for_their_cause() {
    // A slot more than 1 MB behind is invalidated at the next checkpoint.
    let cluster = Cluster::start_with(Config::small_slot_limit()).expect("cluster");
    let url = cluster.url("postgres");
    for sql in [
        "SELECT pg_create_logical_replication_slot('walcast_busy1', 'walcast')",
        "SELECT pg_create_logical_replication_slot('walcast_lost1', 'walcast')",
        "CREATE ROLE plain LOGIN",
        "CREATE TABLE filler (payload text)",
    ] {
        cluster.psql("postgres", sql).expect(sql);
    }
    let rt = runtime();
    rt.block_on(async {
        // A slot that does not exist.
        let e = start(&url, "walcast_missing1")
            .await
            .expect_err("no such slot");
        // A slot that is not there is lost: its changes cannot be read.
        assert_refused(
            &e,
            ErrorKind::SlotLost,
            &SqlState::UNDEFINED_OBJECT,
            "lost in a failover",
        );

        // A slot another client reads.
        let first = client(&url).await.expect("connect");
        let _reading = first
            .start("walcast_busy1", Lsn::INVALID, &[], Duration::from_secs(10))
            .await
            .expect("the first reader");
        let e = start(&url, "walcast_busy1").await.expect_err("busy slot");
        assert_definite(&e, &SqlState::OBJECT_IN_USE, "one reader at a time");

        // A role without the REPLICATION attribute.
        let plain = url.replacen("postgres@", "plain@", 1);
        assert_ne!(plain, url, "the URL names the user: {url}");
        let e = client(&plain).await.err().expect("refused");
        assert_definite(
            &e,
            &SqlState::INSUFFICIENT_PRIVILEGE,
            "REPLICATION attribute",
        );
    });

    cluster
        .outrun_slots("postgres")
        .expect("WAL past the slots' limit");
    let status = cluster
        .psql(
            "postgres",
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'walcast_lost1'",
        )
        .expect("slot status");
    assert_eq!(status.trim(), "lost", "the slot was not invalidated");
    let e = rt
        .block_on(start(&url, "walcast_lost1"))
        .expect_err("invalidated slot");
    assert_definite(
        &e,
        &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
        "wal_status 'lost'",
    );
    assert!(!e.message.contains("wal_level"), "{e}");
}

#[test]
fn a_server_without_logical_wal_is_told_to_set_wal_level() {
    let cluster = Cluster::start_with(Config {
        settings: vec![("wal_level".into(), "replica".into())],
        create_extension: false,
        ..Config::default()
    })
    .expect("cluster with wal_level = replica");
    let level = cluster.psql("postgres", "SHOW wal_level").expect("show");
    assert_eq!(level.trim(), "replica");
    let e = runtime()
        .block_on(async {
            let mut c = client(&cluster.url("postgres")).await?;
            c.create_slot("walcast_nowal1", false, false, false)
                .await
                .map(drop)
        })
        .expect_err("no logical decoding");
    assert_definite(
        &e,
        &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
        "set wal_level = logical",
    );
}

/// The PostgreSQL builds walcast supports (Debian's 15, and 16-18 as
/// `scripts/setup.sh` installs them) name the libraries that may be output
/// plugins in `output_plugin_libraries`.
#[test]
fn a_plugin_the_server_does_not_list_is_told_how_to_list_it() {
    let cluster = Cluster::start_with(Config::default()).expect("cluster");
    let has_setting = cluster
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_settings WHERE name = 'output_plugin_libraries'",
        )
        .expect("pg_settings");
    assert_eq!(
        has_setting.trim(),
        "1",
        "this server has no output_plugin_libraries setting"
    );
    for sql in [
        "ALTER SYSTEM SET output_plugin_libraries = 'pgoutput'",
        "SELECT pg_reload_conf()",
    ] {
        cluster.psql("postgres", sql).expect(sql);
    }
    // The reload is asynchronous: wait until new sessions see the setting.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cluster
        .psql("postgres", "SHOW output_plugin_libraries")
        .expect("SHOW")
        .trim()
        != "pgoutput"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the setting never applied"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let e = runtime()
        .block_on(async {
            let mut c = client(&cluster.url("postgres")).await?;
            c.create_slot("walcast_unlisted1", true, false, false)
                .await
                .map(drop)
        })
        .expect_err("walcast is not listed");
    assert_definite(
        &e,
        &SqlState::INSUFFICIENT_PRIVILEGE,
        "add walcast to output_plugin_libraries",
    );
    assert!(!e.message.contains("REPLICATION attribute"), "{e}");
}
