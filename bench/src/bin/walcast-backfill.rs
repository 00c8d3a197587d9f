//! `walcast-backfill`: the initial rows of a large table while it is being
//! written. Fills `bench_backfill` with N rows (once), starts a writer that
//! updates random rows at a fixed rate, then reads every row one way:
//!
//! - `--mode stream`: a live subscription with `snapshot=1` (chunks between
//!   watermarks, nothing held), until its `done` frame;
//! - `--mode pages`: a durable stream's exported snapshot, read with
//!   `/v1/snapshot/data` pages by key (`after`), as PGDeltaStream clients do.
//!
//! `--query` changes the `stream` mode's query: with a row filter that
//! every row passes (`*:bench_backfill:v.gte.0`) the client keeps a live
//! view of every row (docs/proxy.md#live-views); with `--proxy-pid` the
//! proxy's resident memory and `walcast_view_rows` are printed while the
//! client still holds its rows.
//!
//! Prints the time to the last row, rows per second, the writes done
//! meanwhile and the oldest `backend_xmin` seen in any session (its age in
//! transactions, and how long one snapshot was held): what the read costs
//! vacuum.

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures_util::StreamExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[path = "../http.rs"]
mod http;
use http::request;

#[derive(Parser, Debug)]
#[command(
    name = "walcast-backfill",
    about = "initial rows of a large table under writes"
)]
struct Args {
    /// Base URL of the proxy.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    proxy: String,
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// `stream` (snapshot=1) or `pages` (exported snapshot, /v1/snapshot/data).
    #[arg(long)]
    mode: String,
    /// Rows in the table.
    #[arg(short = 'n', long, default_value_t = 1_000_000)]
    rows: i64,
    /// Rows per page in `pages` mode.
    #[arg(long, default_value_t = 1000)]
    page_rows: u64,
    /// Single-row updates per second while the rows are read.
    #[arg(long, default_value_t = 1000)]
    writes_per_second: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// The `stream` mode's query.
    #[arg(long, default_value = "*:bench_backfill")]
    query: String,
    /// The proxy's process id: its resident memory is printed after the read.
    #[arg(long)]
    proxy_pid: Option<u32>,
}

/// A `/proc/<pid>/status` value in kB (`VmRSS:`, `VmHWM:`).
fn proc_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// A metric's value from the proxy's `/metrics`.
async fn metric(base: &str, name: &str) -> Result<u64> {
    let (_, body) = request(base, "GET", "/metrics", "").await?;
    Ok(body
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64)
}

/// Creates and fills the table unless it has the rows already.
async fn prepare(db: &tokio_postgres::Client, rows: i64) -> Result<()> {
    db.batch_execute(
        "CREATE TABLE IF NOT EXISTS bench_backfill (id bigint PRIMARY KEY, v int NOT NULL, payload text NOT NULL)",
    )
    .await?;
    let have: i64 = db
        .query_one("SELECT count(*) FROM bench_backfill", &[])
        .await?
        .get(0);
    if have != rows {
        db.batch_execute("TRUNCATE bench_backfill").await?;
        db.execute(
            "INSERT INTO bench_backfill SELECT g, 0, repeat('x', 100) FROM generate_series(1, $1::int8) g",
            &[&rows],
        )
        .await?;
        db.batch_execute("VACUUM ANALYZE bench_backfill").await?;
    }
    Ok(())
}

/// Updates random rows at `rate` per second until `stop`; counts them.
async fn writer(
    url: String,
    rows: i64,
    rate: u64,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> Result<()> {
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let update = db
        .prepare("UPDATE bench_backfill SET v = v + 1 WHERE id = $1")
        .await?;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let id = 1 + (x % rows as u64) as i64;
        db.execute(&update, &[&id]).await?;
        done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// The oldest snapshot any session holds: (its age in transactions, how long
/// the same xmin has been seen), polled every 50 ms until `stop`.
async fn xmin_watch(url: String, stop: Arc<AtomicBool>) -> Result<(i64, Duration)> {
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let (mut oldest_age, mut longest) = (0i64, Duration::ZERO);
    let mut current: Option<(String, Instant)> = None;
    while !stop.load(Ordering::Relaxed) {
        let row = db
            .query_one(
                "SELECT backend_xmin::text, age(backend_xmin)::int8 FROM pg_stat_activity \
                 WHERE backend_xmin IS NOT NULL AND pid <> pg_backend_pid() \
                 ORDER BY age(backend_xmin) DESC NULLS LAST LIMIT 1",
                &[],
            )
            .await
            .ok();
        let seen: Option<(String, i64)> = row.map(|r| (r.get(0), r.get(1)));
        match (seen, &current) {
            (Some((x, age)), Some((held, since))) if *held == x => {
                oldest_age = oldest_age.max(age);
                longest = longest.max(since.elapsed());
            }
            (Some((x, age)), _) => {
                oldest_age = oldest_age.max(age);
                current = Some((x, Instant::now()));
            }
            (None, _) => current = None,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((oldest_age, longest))
}

/// The socket of a finished `snapshot=1` read, kept open (its view held).
type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Reads every row with `snapshot=1`; the rows read, and the open socket.
async fn by_stream(base: &str, query: &str) -> Result<(u64, Socket)> {
    let url = format!(
        "{}/ws?query={}&snapshot=1",
        base.replace("http://", "ws://"),
        query.replace('*', "%2A").replace(':', "%3A")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .with_context(|| format!("connecting {url}"))?;
    let mut rows = 0u64;
    while let Some(msg) = ws.next().await {
        let Message::Text(t) = msg? else { continue };
        let t = t.as_str();
        if t.starts_with(r#"{"action":"R""#) {
            rows += 1;
        } else if t.starts_with(r#"{"type":"snapshot""#) {
            let v: serde_json::Value = serde_json::from_str(t)?;
            match v["state"].as_str() {
                Some("done") => return Ok((rows, ws)),
                Some("failed") => bail!("the snapshot failed: {t}"),
                _ => {}
            }
        }
    }
    bail!("the websocket ended after {rows} rows")
}

/// Reads every row through an exported snapshot, page by page; the rows read.
async fn by_pages(base: &str, page_rows: u64) -> Result<u64> {
    let (status, body) = request(base, "POST", "/v1/streams", r#"{"name":"benchpages"}"#).await?;
    if status != 200 {
        bail!("creating a stream: {status} {body}");
    }
    let slot = serde_json::from_str::<serde_json::Value>(&body)?["slotName"]
        .as_str()
        .context("slotName")?
        .to_owned();
    let mut rows = 0u64;
    let mut after = serde_json::Value::Null;
    let result = loop {
        let req = serde_json::json!({
            "slotName": slot, "table": "bench_backfill", "limit": page_rows, "after": after,
        });
        let (status, body) = request(base, "POST", "/v1/snapshot/data", &req.to_string()).await?;
        if status != 200 {
            break Err(anyhow::anyhow!("page after {after}: {status} {body}"));
        }
        let page: Vec<serde_json::Value> = serde_json::from_str(&body)?;
        rows += page.len() as u64;
        match page.last() {
            Some(last) if page.len() as u64 == page_rows => after = serde_json::json!([last["id"]]),
            _ => break Ok(rows),
        }
    };
    let _ = request(base, "DELETE", &format!("/v1/streams/{slot}"), "").await;
    result
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let base = args.proxy.trim_end_matches('/').to_owned();
    let (db, conn) = tokio_postgres::connect(&args.database_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    prepare(&db, args.rows).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let w = tokio::spawn(writer(
        args.database_url.clone(),
        args.rows,
        args.writes_per_second,
        stop.clone(),
        writes.clone(),
    ));
    let watch = tokio::spawn(xmin_watch(args.database_url.clone(), stop.clone()));
    // The writer runs a moment before the read starts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = args.proxy_pid.map(|p| proc_kb(p, "VmRSS:"));
    let (before, start) = (writes.load(Ordering::Relaxed), Instant::now());
    let read = async {
        match args.mode.as_str() {
            "stream" => by_stream(&base, &args.query)
                .await
                .map(|(rows, ws)| (rows, Some(ws))),
            "pages" => by_pages(&base, args.page_rows).await.map(|r| (r, None)),
            other => bail!("--mode must be stream or pages (got {other:?})"),
        }
    };
    let (rows, open) = tokio::time::timeout(Duration::from_secs(args.timeout), read)
        .await
        .context("timed out")??;
    let took = start.elapsed();
    if let (Some(pid), Some(before_kb)) = (args.proxy_pid, rss_before) {
        // While the client still holds its rows.
        let view_rows = metric(&base, "walcast_view_rows").await?;
        let after_kb = proc_kb(pid, "VmRSS:");
        println!(
            "query={} view_rows={view_rows} proxy_rss_kb_before={before_kb} proxy_rss_kb_after={after_kb} proxy_hwm_kb={}",
            args.query,
            proc_kb(pid, "VmHWM:")
        );
    }
    drop(open);
    let during = writes.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    w.await??;
    let (xmin_age, xmin_held) = watch.await??;
    println!(
        "mode={} rows={rows} seconds={:.2} rows_per_s={:.0} writes_during={during} writes_per_s={:.0} oldest_xmin_age={xmin_age} longest_xmin_held_s={:.2}",
        args.mode,
        took.as_secs_f64(),
        rows as f64 / took.as_secs_f64(),
        during as f64 / took.as_secs_f64(),
        xmin_held.as_secs_f64(),
    );
    if rows < (args.rows as u64) * 9 / 10 {
        bail!("read only {rows} of about {} rows", args.rows);
    }
    Ok(())
}
