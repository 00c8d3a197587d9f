//! `walcast-durable`: N durable streams under load. Creates N streams
//! (`POST /v1/streams`), connects one consumer to each (`/v1/lr/stream`,
//! on the proxies given, in turn), inserts rows into `bench_events` and
//! waits until every consumer has every row, ACKing each transaction's `C`
//! as it arrives. Prints the time and rate; deletes the streams at the end.
//! The script around it (scripts/bench-scaleout.sh) measures what each
//! process, PostgreSQL's walsenders included, spent meanwhile.

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug)]
#[command(name = "walcast-durable", about = "N durable streams under load")]
struct Args {
    /// Base URLs of the proxies (comma separated; streams take them in turn).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    proxy: String,
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Durable streams.
    #[arg(long, default_value_t = 20)]
    streams: usize,
    /// Rows to insert.
    #[arg(short = 'n', long, default_value_t = 100_000)]
    rows: u64,
    /// Rows per transaction.
    #[arg(long, default_value_t = 1000)]
    txn_rows: u64,
    /// Give up this many seconds after the last insert.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

#[path = "../http.rs"]
mod http;
use http::request;

/// Reads one stream until it has `rows` inserts, ACKing every `C`.
async fn consume(url: String, rows: u64, got: Arc<AtomicU64>) -> Result<()> {
    let (ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .with_context(|| format!("connecting {url}"))?;
    let (mut tx, mut rx) = ws.split();
    let mut inserts = 0u64;
    while inserts < rows {
        let Some(msg) = rx.next().await else {
            bail!("{url} ended after {inserts} rows");
        };
        let Message::Text(t) = msg? else { continue };
        let t = t.as_str();
        if t.starts_with(r#"{"action":"I""#) {
            inserts += 1;
            got.fetch_add(1, Ordering::Relaxed);
        } else if t.starts_with(r#"{"action":"C""#) {
            let v: serde_json::Value = serde_json::from_str(t)?;
            if let Some(end) = v["end_lsn"].as_str() {
                tx.send(Message::Text(format!(r#"{{"lsn":"{end}"}}"#).into()))
                    .await?;
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let proxies: Vec<&str> = args
        .proxy
        .split(',')
        .map(|p| p.trim_end_matches('/'))
        .collect();
    let (db, conn) = tokio_postgres::connect(&args.database_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let mut slots = Vec::new();
    for i in 0..args.streams {
        let base = proxies[i % proxies.len()];
        let (status, body) = request(base, "POST", "/v1/streams", r#"{"name":"bench"}"#).await?;
        if status != 200 {
            bail!("creating a stream: {status} {body}");
        }
        let v: serde_json::Value = serde_json::from_str(&body)?;
        let slot = v["slotName"].as_str().context("slotName")?.to_owned();
        slots.push((base, slot));
    }
    let got = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (base, slot) in &slots {
        let url = format!(
            "{}/v1/lr/stream?slotName={slot}",
            base.replace("http://", "ws://")
        );
        tasks.push(tokio::spawn(consume(url, args.rows, got.clone())));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    let mut inserted = 0u64;
    while inserted < args.rows {
        let batch = args.txn_rows.min(args.rows - inserted);
        db.execute(
            "INSERT INTO bench_events (k, payload, sent_us) \
             SELECT g % 100, 'd' || g, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint \
             FROM generate_series(1, $1::bigint) AS g",
            &[&(batch as i64)],
        )
        .await?;
        inserted += batch;
    }
    let inserts_done = start.elapsed();
    let all = futures_util::future::join_all(tasks);
    match tokio::time::timeout(Duration::from_secs(args.timeout), all).await {
        Ok(results) => {
            for r in results {
                r??;
            }
        }
        Err(_) => bail!(
            "timed out: {} of {} rows delivered",
            got.load(Ordering::Relaxed),
            args.rows * args.streams as u64
        ),
    }
    let elapsed = start.elapsed().as_secs_f64();
    let total = got.load(Ordering::Relaxed);
    println!("durable streams         {}", args.streams);
    println!(
        "rows inserted           {} in {:.2} s",
        args.rows,
        inserts_done.as_secs_f64()
    );
    println!("events delivered        {total}");
    println!("delivered/s             {:.0}", total as f64 / elapsed);
    for (base, slot) in &slots {
        let (status, body) = request(base, "DELETE", &format!("/v1/streams/{slot}"), "").await?;
        if status != 200 {
            eprintln!("deleting {slot}: {status} {body}");
        }
    }
    Ok(())
}
