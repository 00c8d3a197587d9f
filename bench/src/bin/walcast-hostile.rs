//! `walcast-hostile`: clients that try to slow a proxy down for everyone,
//! run beside `walcast-bench` (docs/benchmarks.md, "Hostile clients").
//!
//! Until it is stopped (or `--seconds` pass) it keeps:
//! - a writer inserting `--doc-bytes` text values into `hostile_docs`,
//!   `--doc-rate` rows per second;
//! - `--like` clients subscribed to `hostile_docs` with a `like` pattern as
//!   costly as a query may hold (one `_` piece of about 2,000 characters,
//!   never completing on the values written: every value is scanned to its
//!   end, 32 words of state per character);
//! - `--fuel` clients on `bench_events` with a WASM filter that loops until
//!   it runs out of fuel on every change (uploaded from `--burn-filter`);
//!   detached after ten failures, they subscribe again;
//! - `--idle` clients on `bench_events` that never read;
//! - `--churn` clients that connect, subscribe and disconnect in a loop.
//!
//! At the end it prints what each kind did.

use anyhow::{Context, Result};
use clap::Parser;
use futures_util::StreamExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug)]
#[command(name = "walcast-hostile", about = "Hostile clients for walcast-proxy")]
struct Args {
    /// Base URL of the proxy (ws://).
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    proxy: String,
    /// Database the proxy streams.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Clients with a costly `like` pattern on large text values.
    #[arg(long, default_value_t = 4)]
    like: usize,
    /// Clients whose WASM filter burns all its fuel on every change.
    #[arg(long, default_value_t = 2)]
    fuel: usize,
    /// Clients that never read.
    #[arg(long, default_value_t = 2)]
    idle: usize,
    /// Clients that connect and disconnect in a loop.
    #[arg(long, default_value_t = 2)]
    churn: usize,
    /// Local address the connect loops connect from (another loopback
    /// address, 127.0.0.2, makes them a client address of their own, as
    /// a browser is; the ordinary clients connect from 127.0.0.1).
    #[arg(long)]
    churn_from: Option<std::net::IpAddr>,
    /// Bytes of each text value written to `hostile_docs`.
    #[arg(long, default_value_t = 1 << 20)]
    doc_bytes: usize,
    /// Rows per second written to `hostile_docs`.
    #[arg(long, default_value_t = 2)]
    doc_rate: u64,
    /// The filter the fuel clients use (WebAssembly text or binary).
    #[arg(long, default_value = "bench/filters/burn.wat")]
    burn_filter: String,
    /// Stop after this many seconds (0: run until killed).
    #[arg(long, default_value_t = 0)]
    seconds: u64,
}

#[derive(Default)]
struct Counts {
    docs_written: AtomicU64,
    like_frames: AtomicU64,
    fuel_frames: AtomicU64,
    fuel_resubscribes: AtomicU64,
    idle_connects: AtomicU64,
    churn_connects: AtomicU64,
    errors: AtomicU64,
}

/// A websocket connection to `url` (`ws://<ip>:<port>/...`) from the
/// local address `from`.
async fn connect_from(
    url: &str,
    from: std::net::IpAddr,
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
    let host = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .context("proxy URL")?;
    let addr: std::net::SocketAddr = host.parse().context("the proxy URL needs an IP address")?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(std::net::SocketAddr::new(from, 0))?;
    let stream = socket.connect(addr).await?;
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    Ok(ws)
}

fn ws_url(base: &str, query: &str, extra: &str) -> String {
    let q: String = form_urlencoded::byte_serialize(query.as_bytes()).collect();
    format!("{}/ws?query={q}{extra}", base.trim_end_matches('/'))
}

/// A `like` pattern of one long `_` piece: on a value of repeated `a`s the
/// bit-parallel search keeps almost every state bit alive and never finds
/// the final `b`.
fn costly_pattern(i: usize) -> String {
    let mut p = String::from("%");
    for _ in 0..1000 {
        p.push_str("a_");
    }
    // Distinct patterns: distinct groups, each matched on its own.
    p.push_str(&format!("b{i}%"));
    p
}

async fn upload(http_base: &str, path: &str) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
    let url = format!("{http_base}/v1/filters");
    let (host, target) = url
        .trim_start_matches("http://")
        .split_once('/')
        .context("proxy URL")?;
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    let head = format!(
        "POST /{target} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/wasm\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        bytes.len()
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&bytes).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: serde_json::Value =
        serde_json::from_str(body).with_context(|| format!("upload answer: {answer}"))?;
    v["id"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("upload refused: {answer}"))
}

/// Reads frames until the connection ends, counting them.
async fn read_all(url: &str, frames: &AtomicU64) -> Result<()> {
    let (ws, _) = tokio_tungstenite::connect_async(url).await?;
    let (_, mut rx) = ws.split();
    while let Some(msg) = rx.next().await {
        match msg? {
            Message::Text(_) => {
                frames.fetch_add(1, Ordering::Relaxed);
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let counts = Arc::new(Counts::default());
    let (db, conn) = tokio_postgres::connect(&args.database_url, tokio_postgres::NoTls)
        .await
        .context("connecting to the database")?;
    tokio::spawn(conn);
    db.batch_execute(
        "CREATE TABLE IF NOT EXISTS hostile_docs (id bigserial PRIMARY KEY, body text)",
    )
    .await?;
    let http_base = args.proxy.replacen("ws://", "http://", 1);
    let http_base = http_base.trim_end_matches('/').to_owned();
    let mut tasks = Vec::new();

    // The writer of large values.
    {
        let counts = counts.clone();
        let (bytes, rate) = (args.doc_bytes as i64, args.doc_rate.max(1));
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            loop {
                tick.tick().await;
                let r = db
                    .execute(
                        "INSERT INTO hostile_docs (body) SELECT repeat('a', $1::int)",
                        &[&(bytes as i32)],
                    )
                    .await;
                match r {
                    Ok(_) => counts.docs_written.fetch_add(1, Ordering::Relaxed),
                    Err(_) => counts.errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for i in 0..args.like {
        let url = ws_url(
            &args.proxy,
            &format!("insert:hostile_docs:body.like.\"{}\"", costly_pattern(i)),
            "",
        );
        let counts = counts.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                if read_all(&url, &counts.like_frames).await.is_err() {
                    counts.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }));
    }
    if args.fuel > 0 {
        let id = upload(&http_base, &args.burn_filter).await?;
        let enc: String = form_urlencoded::byte_serialize(id.as_bytes()).collect();
        for _ in 0..args.fuel {
            let url = ws_url(
                &args.proxy,
                "insert:bench_events",
                &format!("&filter={enc}"),
            );
            let counts = counts.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    // Ends when the proxy detaches the filter (1008).
                    if read_all(&url, &counts.fuel_frames).await.is_err() {
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    counts.fuel_resubscribes.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }));
        }
    }
    for _ in 0..args.idle {
        let url = ws_url(&args.proxy, "insert:bench_events", "");
        let counts = counts.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                // Connected, never read; a new one every 20 s (the proxy
                // closes a stalled client after its stall timeout).
                match tokio_tungstenite::connect_async(&url).await {
                    Ok((ws, _)) => {
                        counts.idle_connects.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_secs(20)).await;
                        drop(ws);
                    }
                    Err(_) => {
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }));
    }
    for i in 0..args.churn {
        let url = ws_url(&args.proxy, &format!("insert:bench_events:k.eq.{i}"), "");
        let counts = counts.clone();
        let from = args.churn_from;
        tasks.push(tokio::spawn(async move {
            loop {
                // Connect, subscribe (the query is in the URL), close.
                let connected: Result<()> = match from {
                    Some(ip) => match connect_from(&url, ip).await {
                        Ok(mut ws) => {
                            let _ = ws.close(None).await;
                            Ok(())
                        }
                        Err(e) => Err(e),
                    },
                    None => match tokio_tungstenite::connect_async(&url).await {
                        Ok((mut ws, _)) => {
                            let _ = ws.close(None).await;
                            Ok(())
                        }
                        Err(e) => Err(e.into()),
                    },
                };
                match connected {
                    Ok(()) => {
                        counts.churn_connects.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }

    let started = Instant::now();
    let stop = async {
        if args.seconds > 0 {
            tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = stop => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            term.recv().await;
            Ok::<(), std::io::Error>(())
        } => {}
    }
    for t in tasks {
        t.abort();
    }
    let c = &counts;
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "hostile: {:.0} s: {} docs of {} bytes written; like clients got {} frames; fuel clients got {} frames and subscribed {} times; {} idle connects; {} churn connects; {} errors",
        started.elapsed().as_secs_f64(),
        n(&c.docs_written),
        args.doc_bytes,
        n(&c.like_frames),
        n(&c.fuel_frames),
        n(&c.fuel_resubscribes),
        n(&c.idle_connects),
        n(&c.churn_connects),
        n(&c.errors),
    );
    Ok(())
}
