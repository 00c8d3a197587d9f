//! `walcast-failover`: what a failover costs a live client. Each run makes a
//! private primary and a streaming standby that synchronizes failover slots
//! (PostgreSQL 17 or newer, `synchronized_standby_slots` on the primary),
//! starts walcast-proxy with both in its URL and one live client, and writes
//! one row every few milliseconds. Then the primary is killed with SIGKILL,
//! the standby promoted a moment later (as an HA manager would after
//! noticing), and the writer goes on against it. It reports, per run, the
//! time from the promotion's end to the first change committed on the new
//! primary reaching the client, and the client's pause (the longest silence
//! between two changes); and it checks that the client got exactly the new
//! primary's rows, in order, once each.

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures_util::StreamExt;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use walcast_cluster::{Cluster, Config};

#[derive(Parser, Debug)]
#[command(
    name = "walcast-failover",
    about = "a failover as a live client sees it"
)]
struct Args {
    /// Failovers to measure, each on new clusters.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// The proxy to run.
    #[arg(
        long,
        env = "WALCAST_PROXY_BIN",
        default_value = "target/release/walcast-proxy"
    )]
    proxy_bin: String,
    /// Milliseconds between two inserts of the writer.
    #[arg(long, default_value_t = 5)]
    write_every_ms: u64,
    /// Milliseconds of writing before the primary is killed.
    #[arg(long, default_value_t = 1500)]
    kill_after_ms: u64,
    /// Milliseconds between the kill and the promotion.
    #[arg(long, default_value_t = 500)]
    promote_after_ms: u64,
    /// Rows written on the new primary before a run ends.
    #[arg(long, default_value_t = 200)]
    rows_after: i32,
}

#[path = "../http.rs"]
mod http;

/// What one run measured.
struct Run {
    /// From `pg_ctl promote -w` returning to the first change committed on
    /// the new primary reaching the client.
    promotion_to_client: Duration,
    /// The longest silence between two changes the client got.
    pause: Duration,
    /// Rows the client got, all of the new primary's table.
    rows: usize,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The ids of `items` on `cluster`, in order.
fn table(cluster: &Cluster) -> Result<Vec<i32>> {
    let text = cluster.psql(
        "bench",
        "SELECT string_agg(id::text, ',' ORDER BY id) FROM items",
    )?;
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim().parse().context("an id"))
        .collect()
}

/// Inserts ids from `next` through `conninfo` every `every` until `stop`
/// says so or the server goes; returns the next id to write.
async fn write(conninfo: &str, next: &AtomicI32, every: Duration, stop: &AtomicI32) -> i32 {
    let Ok((db, conn)) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await else {
        return next.load(Ordering::SeqCst);
    };
    tokio::spawn(conn);
    loop {
        let id = next.load(Ordering::SeqCst);
        if stop.load(Ordering::SeqCst) != 0 && id >= stop.load(Ordering::SeqCst) {
            return id;
        }
        // An insert whose commit is in flight when the server dies may or
        // may not be on the standby: its id is not written again.
        next.store(id + 1, Ordering::SeqCst);
        if db
            .execute("INSERT INTO items VALUES ($1, $1)", &[&id])
            .await
            .is_err()
        {
            return id + 1;
        }
        tokio::time::sleep(every).await;
    }
}

async fn one_run(args: &Args) -> Result<Run> {
    let mut primary = Cluster::start_with(Config::default())?;
    primary.create_database("bench")?;
    primary.psql("bench", "CREATE TABLE items (id int PRIMARY KEY, v int)")?;
    let major: u32 = primary
        .psql(
            "postgres",
            "SELECT current_setting('server_version_num')::int / 10000",
        )?
        .trim()
        .parse()?;
    if major < 17 {
        bail!("failover slots need PostgreSQL 17 or newer (this is {major}; set WALCAST_PG_MAJOR)");
    }
    let standby = Cluster::standby_of(&primary, "standby1", Config::default())?;
    primary.psql(
        "postgres",
        "ALTER SYSTEM SET synchronized_standby_slots = 'standby1'",
    )?;
    primary.psql("postgres", "SELECT pg_reload_conf()")?;
    let port = free_port()?;
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/bench?target_session_attrs=read-write",
        primary.port(),
        standby.port()
    );
    let mut proxy = std::process::Command::new(&args.proxy_bin)
        .args([
            "--database-url",
            &url,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", args.proxy_bin))?;
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(
        http::request(&base, "GET", "/healthz", "").await,
        Ok((200, _))
    ) {
        if Instant::now() > deadline {
            let _ = proxy.kill();
            bail!("the proxy did not become healthy");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ws, _) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws?query=insert:items"))
            .await?;
    let got: Arc<Mutex<Vec<(i32, Instant)>>> = Arc::default();
    let reader = {
        let got = got.clone();
        tokio::spawn(async move {
            let (_, mut rx) = ws.split();
            while let Some(Ok(msg)) = rx.next().await {
                let Message::Text(t) = msg else { continue };
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                if let Some(id) = v["columns"]["id"].as_i64() {
                    got.lock()
                        .map(|mut g| g.push((id as i32, Instant::now())))
                        .ok();
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while standby.psql(
        "postgres",
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'walcast_proxy' AND synced AND NOT temporary",
    )? != "1"
    {
        if Instant::now() > deadline {
            bail!("the proxy's slot was not synchronized to the standby");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let every = Duration::from_millis(args.write_every_ms);
    let next = Arc::new(AtomicI32::new(1));
    let stop = Arc::new(AtomicI32::new(0));
    let on_primary = {
        let (conninfo, next, stop) = (primary.conninfo("bench"), next.clone(), stop.clone());
        tokio::spawn(async move { write(&conninfo, &next, every, &stop).await })
    };
    tokio::time::sleep(Duration::from_millis(args.kill_after_ms)).await;
    primary.kill()?;
    let first_new = on_primary.await?;
    tokio::time::sleep(Duration::from_millis(args.promote_after_ms)).await;
    standby.promote()?;
    let promoted = Instant::now();
    stop.store(first_new + args.rows_after, Ordering::SeqCst);
    let end = write(&standby.conninfo("bench"), &next, every, &stop).await;
    if end < first_new + args.rows_after {
        bail!("the writer could not write on the promoted standby");
    }
    let want = table(&standby)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = got.lock().map(|g| g.len()).unwrap_or(0);
        if n >= want.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reader.abort();
    let _ = proxy.kill();
    let _ = proxy.wait();
    let got = got.lock().map(|g| g.clone()).unwrap_or_default();
    let ids: Vec<i32> = got.iter().map(|(id, _)| *id).collect();
    if ids != want {
        bail!(
            "the client's rows differ from the new primary's: {} rows got, {} in the table (first difference at {:?})",
            ids.len(),
            want.len(),
            ids.iter().zip(&want).position(|(a, b)| a != b)
        );
    }
    let first = got
        .iter()
        .find(|(id, _)| *id >= first_new)
        .context("no change committed on the new primary reached the client")?;
    let pause = got
        .windows(2)
        .map(|w| w[1].1.duration_since(w[0].1))
        .max()
        .unwrap_or_default();
    Ok(Run {
        promotion_to_client: first.1.saturating_duration_since(promoted),
        pause,
        rows: ids.len(),
    })
}

fn millis(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut runs = Vec::new();
    for i in 1..=args.runs {
        let run = one_run(&args).await.with_context(|| format!("run {i}"))?;
        println!(
            "run {i}: promotion to the client {}, the client's pause {}, {} rows exactly once and in order",
            millis(run.promotion_to_client),
            millis(run.pause),
            run.rows
        );
        runs.push(run);
    }
    let mut to_client: Vec<Duration> = runs.iter().map(|r| r.promotion_to_client).collect();
    let mut pauses: Vec<Duration> = runs.iter().map(|r| r.pause).collect();
    to_client.sort();
    pauses.sort();
    let range = |v: &[Duration]| {
        format!(
            "{} to {} (median {})",
            millis(v[0]),
            millis(v[v.len() - 1]),
            millis(v[v.len() / 2])
        )
    };
    if !runs.is_empty() {
        println!(
            "{} runs: promotion to the client {}; the client's pause {}",
            runs.len(),
            range(&to_client),
            range(&pauses)
        );
    }
    Ok(())
}
