//! `stream-changes`: a transaction larger than `logical_decoding_work_mem` is
//! sent while it is still in progress, in `SS`..`SE` blocks closed by `SC`
//! (commit) or `SA` (abort), and the walsender's memory stays bounded.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use walcast_tests::{cluster, json, recvlogical_command, TestDb};

/// Private (anonymous) resident memory of a process, in kB.
fn rss_anon_kb(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

struct Summary {
    lines: u64,
    inserts: u64,
    blocks: u64,
    first_line: String,
    last_line: String,
    streamed_inserts_without_ts: u64,
    peak_rss_anon_kb: u64,
    saw_abort: Option<String>,
}

/// Streams `slot` with `stream-changes` and a 64 kB work memory until
/// `endpos`, sampling the walsender's memory while it decodes.
fn stream(db: &TestDb, slot: &str, endpos: &str) -> Summary {
    stream_until(db, slot, Some(endpos), |_| false)
}

/// Like [`stream`], optionally without an end position, stopping early at
/// the first line for which `stop` is true.
fn stream_until(
    db: &TestDb,
    slot: &str,
    endpos: Option<&str>,
    stop: impl Fn(&str) -> bool,
) -> Summary {
    let c = cluster();
    let options = [("stream-changes", "on"), ("actions", "insert")];
    let mut child = recvlogical_command(&db.name, slot, &options, endpos)
        .env("PGOPTIONS", "-c logical_decoding_work_mem=64kB")
        .env("PGAPPNAME", slot)
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting pg_recvlogical");

    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done, conninfo, slot) = (
            peak.clone(),
            done.clone(),
            c.conninfo(&db.name),
            slot.to_owned(),
        );
        std::thread::spawn(move || {
            let mut client =
                postgres::Client::connect(&conninfo, postgres::NoTls).expect("sampler connection");
            let mut pid = None;
            while !done.load(Ordering::Relaxed) {
                if pid.is_none() {
                    pid = client
                        .query_opt(
                            "SELECT pid FROM pg_stat_replication WHERE application_name = $1",
                            &[&slot],
                        )
                        .ok()
                        .flatten()
                        .map(|r| r.get::<_, i32>(0));
                }
                if let Some(kb) = pid.and_then(rss_anon_kb) {
                    peak.fetch_max(kb, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let mut s = Summary {
        lines: 0,
        inserts: 0,
        blocks: 0,
        first_line: String::new(),
        last_line: String::new(),
        streamed_inserts_without_ts: 0,
        peak_rss_anon_kb: 0,
        saw_abort: None,
    };
    let mut in_block = false;
    let stdout = child.stdout.take().expect("stdout");
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("reading pg_recvlogical");
        if s.lines == 0 {
            s.first_line = line.clone();
        }
        s.lines += 1;
        if line.starts_with(r#"{"action":"I""#) {
            s.inserts += 1;
            if in_block && line.contains(r#""ts":null"#) {
                s.streamed_inserts_without_ts += 1;
            }
        } else if line.starts_with(r#"{"action":"SS""#) {
            s.blocks += 1;
            in_block = true;
        } else if line.starts_with(r#"{"action":"SE""#) {
            in_block = false;
        } else if line.starts_with(r#"{"action":"SA""#) {
            s.saw_abort = Some(line.clone());
        }
        let stop_here = stop(&line);
        s.last_line = line;
        if stop_here {
            let _ = child.kill();
            break;
        }
    }
    let status = child.wait().expect("pg_recvlogical exit");
    done.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler thread");
    assert!(
        status.success() || endpos.is_none(),
        "pg_recvlogical failed"
    );
    s.peak_rss_anon_kb = peak.load(Ordering::Relaxed);
    s
}

#[test]
fn a_million_row_transaction_streams_in_blocks_with_bounded_memory() {
    let mut db = TestDb::new("stream_million");
    db.exec("CREATE TABLE t (id int PRIMARY KEY, payload text, n numeric, at timestamptz)");
    let slot = db.slot("s");
    let xid: i64 = {
        let mut tx = db.client.transaction().expect("begin");
        let xid = tx
            .query_one("SELECT txid_current()", &[])
            .expect("xid")
            .get(0);
        tx.batch_execute(
            "INSERT INTO t SELECT g, md5(g::text), g / 7.0, '2026-01-01'::timestamptz + g * interval '1 second' \
             FROM generate_series(1, 1000000) AS g",
        )
        .expect("insert a million rows");
        tx.commit().expect("commit");
        xid
    };
    let end = db.current_lsn();
    let s = stream(&db, &slot, &end);

    assert_eq!(s.inserts, 1_000_000, "every row arrives");
    let first = json(&s.first_line);
    assert_eq!(
        first["action"], "SS",
        "the transaction is streamed before its commit: {}",
        s.first_line
    );
    assert_eq!(first["first"], true);
    assert_eq!(first["xid"].as_i64(), Some(xid));
    assert!(s.blocks > 10, "sent in many blocks, got {}", s.blocks);
    assert_eq!(
        s.streamed_inserts_without_ts, 1_000_000,
        "streamed changes have ts null"
    );
    let last = json(&s.last_line);
    assert_eq!(last["action"], "SC", "{}", s.last_line);
    assert_eq!(last["xid"].as_i64(), Some(xid));
    assert!(last["ts"].is_string() && last["end_lsn"].is_string());
    eprintln!(
        "walsender peak RssAnon while streaming 1M rows: {} kB",
        s.peak_rss_anon_kb
    );
    assert!(s.peak_rss_anon_kb > 0, "the walsender's memory was sampled");
    assert!(
        s.peak_rss_anon_kb < 32 * 1024,
        "walsender private memory must stay bounded, peak was {} kB",
        s.peak_rss_anon_kb
    );
}

#[test]
fn an_aborted_streamed_transaction_ends_with_stream_abort() {
    let mut db = TestDb::new("stream_abort");
    db.exec("CREATE TABLE t (id int PRIMARY KEY, payload text)");
    let slot = db.slot("s");
    let c = cluster();
    let mut writer =
        postgres::Client::connect(&c.conninfo(&db.name), postgres::NoTls).expect("writer");
    writer.batch_execute("BEGIN").expect("begin");
    let xid: i64 = writer
        .query_one("SELECT txid_current()", &[])
        .expect("xid")
        .get(0);
    writer
        .batch_execute("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 50000) AS g")
        .expect("insert");
    // Roll back once the consumer has seen the transaction streamed, then
    // commit one more row so the stream moves on.
    let (streamed_tx, streamed_rx) = std::sync::mpsc::channel::<()>();
    let rollback = std::thread::spawn(move || {
        streamed_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the open transaction was never streamed");
        writer.batch_execute("ROLLBACK").expect("rollback");
        writer
            .batch_execute("INSERT INTO t VALUES (0, 'after')")
            .expect("insert after");
    });
    let s = stream_until(&db, &slot, None, |line| {
        if line.starts_with(r#"{"action":"SE""#) {
            let _ = streamed_tx.send(());
        }
        line.contains(r#""columns":{"id":0,"#)
    });
    rollback.join().expect("writer thread");

    let first = json(&s.first_line);
    assert_eq!(
        first["action"], "SS",
        "streamed while in progress: {}",
        s.first_line
    );
    assert_eq!(first["xid"].as_i64(), Some(xid));
    assert!(
        s.inserts > 1,
        "rows of the open transaction arrived before it ended"
    );
    let last = json(&s.last_line);
    assert_eq!(last["action"], "I");
    assert_eq!(last["columns"]["id"], 0);
    assert!(
        s.saw_abort.is_some(),
        "an SA closes the aborted transaction"
    );
    let abort = json(s.saw_abort.as_deref().unwrap_or("{}"));
    assert_eq!(abort["xid"].as_i64(), Some(xid));
    assert_eq!(abort["top_xid"].as_i64(), Some(xid));
    assert!(abort["lsn"].is_string());
}
