//! `walcast-bench`: load for walcast-proxy.
//!
//! Opens K websocket clients with a query, inserts N rows into `bench_events`
//! in transactions of `--txn-rows` rows (each row carries `clock_timestamp()`
//! taken at insert and its transaction's number), optionally paced to
//! `--rate` rows/s, and reports the events delivered per second, two
//! latencies (p50/p99) to the moment a client read the frame: from the row's
//! insert, and from the moment its transaction's COMMIT returned to the
//! inserting client; and the proxy's peak RSS, CPU time and page faults.

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures_util::StreamExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug)]
#[command(name = "walcast-bench", about = "Load tool for walcast-proxy")]
struct Args {
    /// Base URL of the proxy; several, comma separated (the edges of the
    /// scale-out mode), take the clients in turn.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    proxy: String,
    /// Database to insert into (the proxy must stream it).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Number of websocket clients.
    #[arg(short = 'k', long, default_value_t = 1)]
    clients: usize,
    /// Rows to insert.
    #[arg(short = 'n', long, default_value_t = 100_000)]
    rows: u64,
    /// Rows per transaction.
    #[arg(long, default_value_t = 1000)]
    txn_rows: u64,
    /// Insert rate in rows/s (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Query of every client; `{i}` is replaced by the client's number, `{m}`
    /// by that number modulo 100 (rows carry `k` = id modulo 100).
    #[arg(long, default_value = "insert:bench_events")]
    query: String,
    /// Id of an uploaded WASM filter (`sha256:...`) every client subscribes with.
    #[arg(long)]
    filter: Option<String>,
    /// The filter's config; `{i}` and `{m}` are replaced as in --query.
    #[arg(long, default_value = "")]
    filter_config: String,
    /// Events each client is expected to receive (default: all rows).
    #[arg(long)]
    expect_per_client: Option<u64>,
    /// PID of walcast-proxy, to report its peak RSS, CPU time and page faults.
    #[arg(long)]
    proxy_pid: Option<u32>,
    /// Measure latency on every n-th frame of every n-th client (1: all).
    #[arg(long, default_value_t = 1)]
    sample: u64,
    /// Give up waiting for deliveries this many seconds after the last insert.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The `sent_us` value (microseconds since the Unix epoch) and the
/// transaction number (`payload` is `t<txn>:<row>`) of a frame. Read by
/// searching the text, not parsing it, so that the load tool takes as little
/// of the machine as it can (the same for every proxy it measures).
///
/// Frames in walcast's format carry `"sent_us":<n>` and `"payload":"t<txn>:`;
/// frames of proxies that forward wal2json's format 1 (such as Speculare
/// PGCDC, measured beside walcast) carry the row as `"columnvalues":[id, k,
/// "t<txn>:<row>", sent_us]`.
fn sent_and_txn(frame: &str) -> Option<(i64, Option<usize>)> {
    fn digits(text: &str) -> &str {
        let end = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        &text[..end]
    }
    fn after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
        Some(&text[text.find(key)? + key.len()..])
    }
    if let Some(sent) = after(frame, "\"sent_us\":") {
        let sent = digits(sent).parse().ok()?;
        let txn = after(frame, "\"payload\":\"t").and_then(|t| digits(t).parse().ok());
        return Some((sent, txn));
    }
    let values = after(frame, "\"columnvalues\":[")?;
    let values = &values[..values.find(']')?];
    let mut fields = values.split(',').map(str::trim);
    let txn = fields
        .nth(2)
        .and_then(|p| p.strip_prefix("\"t"))
        .and_then(|t| digits(t).parse().ok());
    let sent = digits(fields.next()?).parse().ok()?;
    Some((sent, txn))
}

/// A size in kB from `/proc/<pid>/status`: `VmHWM` (peak RSS) or `VmRSS`.
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU time (user and system, in ms) and minor page faults of a process
/// so far, from `/proc/<pid>/stat`.
fn cpu_ms_and_faults(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name, which is in parentheses and may hold spaces:
    // fields from the 3rd (state) on.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let (minflt, utime, stime) = (field(10)?, field(14)?, field(15)?);
    // SAFETY: sysconf reads a configuration value and touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Some(((utime + stime) as f64 * 1000.0 / hz, minflt))
}

fn percentile(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let (db, conn) = tokio_postgres::connect(&args.database_url, tokio_postgres::NoTls)
        .await
        .context("connecting to the database")?;
    tokio::spawn(conn);
    db.batch_execute(
        "CREATE TABLE IF NOT EXISTS bench_events (id bigserial PRIMARY KEY, k int, payload text, \
         sent_us bigint NOT NULL)",
    )
    .await?;
    let expect = args.expect_per_client.unwrap_or(args.rows);

    let received = Arc::new(AtomicU64::new(0));
    // Per sampled frame: receive time, insert time, transaction number.
    let latencies = Arc::new(Mutex::new(Vec::<(i64, i64, Option<usize>)>::new()));
    let last_frame = Arc::new(Mutex::new(Instant::now()));
    let mut tasks = Vec::new();
    let proxies: Vec<&str> = args
        .proxy
        .split(',')
        .map(|p| p.trim_end_matches('/'))
        .collect();
    for i in 0..args.clients {
        let q = args
            .query
            .replace("{i}", &i.to_string())
            .replace("{m}", &(i % 100).to_string());
        let enc = |t: &str| form_urlencoded::byte_serialize(t.as_bytes()).collect::<String>();
        let mut url = format!("{}/ws?query={}", proxies[i % proxies.len()], enc(&q));
        if let Some(id) = &args.filter {
            let config = args
                .filter_config
                .replace("{i}", &i.to_string())
                .replace("{m}", &(i % 100).to_string());
            url.push_str(&format!("&filter={}&config={}", enc(id), enc(&config)));
        }
        let (ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .with_context(|| format!("connecting {url}"))?;
        let (received, latencies, last_frame) =
            (received.clone(), latencies.clone(), last_frame.clone());
        let sample_client = args.sample <= 1 || (i as u64) % args.sample == 0;
        let sample = args.sample.max(1);
        tasks.push(tokio::spawn(async move {
            let (_, mut rx) = ws.split();
            let mut n = 0u64;
            let mut local = Vec::new();
            while n < expect {
                match rx.next().await {
                    Some(Ok(Message::Text(t))) => {
                        n += 1;
                        received.fetch_add(1, Ordering::Relaxed);
                        if sample_client && n % sample == 0 {
                            let now = now_micros();
                            if let Some((sent, txn)) = sent_and_txn(t.as_str()) {
                                local.push((now, sent, txn));
                            }
                        }
                    }
                    Some(Ok(Message::Close(f))) => {
                        eprintln!("client {i} closed by the proxy: {f:?}");
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        eprintln!("client {i}: {e}");
                        break;
                    }
                    None => break,
                }
            }
            if let Ok(mut l) = last_frame.lock() {
                *l = Instant::now();
            }
            if let Ok(mut all) = latencies.lock() {
                all.extend(local);
            }
            n
        }));
    }
    // Let the subscriptions settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    if args.rows == 0 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = args
            .proxy_pid
            .and_then(|pid| status_kb(pid, "VmRSS"))
            .unwrap_or(0);
        println!("clients                 {} (idle)", args.clients);
        println!("proxy RSS               {rss} kB");
        return Ok(());
    }

    let cpu_before = args.proxy_pid.and_then(cpu_ms_and_faults);
    let start = Instant::now();
    let mut inserted = 0u64;
    // When each transaction's COMMIT returned (microseconds since the epoch).
    let mut committed_at: Vec<i64> = Vec::new();
    while inserted < args.rows {
        let batch = args.txn_rows.min(args.rows - inserted);
        let txn = committed_at.len() as i64;
        db.execute(
            "INSERT INTO bench_events (k, payload, sent_us) \
             SELECT g % 100, 't' || $2::bigint || ':' || g, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint \
             FROM generate_series(1, $1::bigint) AS g",
            &[&(batch as i64), &txn],
        )
        .await?;
        committed_at.push(now_micros());
        inserted += batch;
        if args.rate > 0 {
            let due = start + Duration::from_secs_f64(inserted as f64 / args.rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
    }
    let inserts_done = start.elapsed();
    let all = futures_util::future::join_all(tasks);
    let per_client = match tokio::time::timeout(Duration::from_secs(args.timeout), all).await {
        Ok(r) => r.into_iter().map(|r| r.unwrap_or(0)).collect::<Vec<_>>(),
        Err(_) => bail!(
            "timed out: {} of {} events delivered",
            received.load(Ordering::Relaxed),
            expect * args.clients as u64
        ),
    };
    let cpu_after = args.proxy_pid.and_then(cpu_ms_and_faults);
    let end = last_frame
        .lock()
        .map(|l| *l)
        .unwrap_or_else(|_| Instant::now());
    let total: u64 = per_client.iter().sum();
    let elapsed = end.duration_since(start).as_secs_f64();
    let samples = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    let mut lat: Vec<i64> = samples.iter().map(|(recv, sent, _)| recv - sent).collect();
    lat.sort_unstable();
    // A frame may arrive before the COMMIT's answer does: that is 0 here.
    let mut from_commit: Vec<i64> = samples
        .iter()
        .filter_map(|(recv, _, txn)| {
            let c = committed_at.get((*txn)?)?;
            Some((recv - c).max(0))
        })
        .collect();
    from_commit.sort_unstable();
    println!("clients                 {}", args.clients);
    println!(
        "rows inserted           {} in {:.2} s",
        args.rows,
        inserts_done.as_secs_f64()
    );
    println!(
        "events delivered        {total} (expected {})",
        expect * args.clients as u64
    );
    println!("delivered/s             {:.0}", total as f64 / elapsed);
    println!(
        "last delivery after     {:.3} s past the last insert",
        (end.duration_since(start) - inserts_done.min(end.duration_since(start))).as_secs_f64()
    );
    println!(
        "latency p50 / p99       {:.1} ms / {:.1} ms ({} samples, from the insert)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.len()
    );
    println!(
        "from COMMIT p50 / p99   {:.1} ms / {:.1} ms ({} samples)",
        percentile(&from_commit, 0.5),
        percentile(&from_commit, 0.99),
        from_commit.len()
    );
    if let Some(pid) = args.proxy_pid {
        println!(
            "proxy peak RSS          {} kB",
            status_kb(pid, "VmHWM").unwrap_or(0)
        );
    }
    if let (Some((ms0, f0)), Some((ms1, f1))) = (cpu_before, cpu_after) {
        let ms = ms1 - ms0;
        println!(
            "proxy CPU               {ms:.0} ms ({:.2} µs per event delivered), {} page faults",
            ms * 1000.0 / total.max(1) as f64,
            f1.saturating_sub(f0)
        );
    }
    if total < expect * args.clients as u64 {
        bail!("not every event was delivered");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::sent_and_txn;

    #[test]
    fn reads_walcast_frames() {
        let frame = r#"{"action":"I","schema":"public","table":"bench_events","columns":{"id":7,"k":7,"payload":"t12:7","sent_us":1764000000123456}}"#;
        assert_eq!(sent_and_txn(frame), Some((1764000000123456, Some(12))));
    }

    #[test]
    fn reads_wal2json_format_1_frames() {
        let frame = r#"{"kind":"insert","schema":"public","table":"bench_events","columnnames":["id","k","payload","sent_us"],"columntypes":["bigint","integer","text","bigint"],"columnvalues":[7,7,"t12:7",1764000000123456]}"#;
        assert_eq!(sent_and_txn(frame), Some((1764000000123456, Some(12))));
    }

    #[test]
    fn other_frames_have_no_sample() {
        assert_eq!(sent_and_txn(r#"{"action":"B","xid":5}"#), None);
    }
}
