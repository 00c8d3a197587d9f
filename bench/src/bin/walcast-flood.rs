//! `walcast-flood`: half-open connections against an HTTP server.
//!
//! Opens `--connections` TCP connections that each send part of a request
//! head and nothing more, holds them for `--seconds`, and every 250 ms asks
//! `GET /healthz` on a fresh connection (1 s timeout). With `--pid` and
//! `--log` it also samples the server's CPU time and its log's size. Prints
//! one summary line: how many connections the server held and for how long,
//! how many probes it answered (and when it first answered again), its CPU
//! use and how much it logged.

use anyhow::Result;
use clap::Parser;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "walcast-flood",
    about = "Half-open connections against walcast-proxy"
)]
struct Args {
    /// The server's address.
    #[arg(long)]
    addr: SocketAddr,
    /// Half-open connections to open.
    #[arg(long, default_value_t = 512)]
    connections: usize,
    /// How long to watch.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// The server's PID, to sample its CPU time.
    #[arg(long)]
    pid: Option<u32>,
    /// The server's log file, to measure what it wrote.
    #[arg(long)]
    log: Option<std::path::PathBuf>,
}

/// CPU seconds (user + system) a process has used (USER_HZ is 100 on Linux).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// (bytes, lines) of a file.
fn log_size(path: &std::path::Path) -> (u64, usize) {
    match std::fs::read(path) {
        Ok(b) => (b.len() as u64, b.iter().filter(|c| **c == b'\n').count()),
        Err(_) => (0, 0),
    }
}

/// Whether the server closed `s`, without waiting.
fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// `GET /healthz` on a fresh connection: Some(latency) when answered with a
/// status line within a second.
fn probe(addr: SocketAddr) -> Option<Duration> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    head.starts_with(b"HTTP/1.1 ").then(|| start.elapsed())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let log0 = args.log.as_deref().map(log_size).unwrap_or((0, 0));
    let cpu0 = args.pid.and_then(cpu_seconds);
    let start = Instant::now();
    // Eight threads connect at once; a connect the server's backlog drops
    // (its SYN unanswered) fails after 100 ms instead of retrying for seconds.
    let per_thread = args.connections.div_ceil(8);
    let addr = args.addr;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let n = per_thread.min(args.connections.saturating_sub(t * per_thread));
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (Vec::with_capacity(n), 0usize);
                for _ in 0..n {
                    match TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
                        Ok(mut s) => {
                            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
                            let _ = s.set_nonblocking(true);
                            ok.push(s);
                        }
                        Err(_) => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(args.connections);
    let mut connect_failed = 0;
    for t in threads {
        let (ok, failed) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a connecting thread panicked"))?;
        conns.extend(ok);
        connect_failed += failed;
    }
    let opened_in = start.elapsed();
    let (mut probes, mut answered) = (0, 0);
    let mut first_answer: Option<Duration> = None;
    let mut latencies = Vec::new();
    let mut held_max = 0;
    let mut all_closed_at: Option<Duration> = None;
    while start.elapsed() < Duration::from_secs(args.seconds) {
        conns.retain_mut(|s| !closed(s));
        held_max = held_max.max(conns.len());
        if conns.is_empty() && all_closed_at.is_none() {
            all_closed_at = Some(start.elapsed());
        }
        probes += 1;
        if let Some(l) = probe(args.addr) {
            answered += 1;
            latencies.push(l);
            first_answer.get_or_insert(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = match (cpu0, args.pid.and_then(cpu_seconds)) {
        (Some(a), Some(b)) => format!("{:.1}%", (b - a) / elapsed * 100.0),
        _ => "n/a".into(),
    };
    let (log_bytes, log_lines) = match args.log.as_deref().map(log_size) {
        Some((b, l)) => (b.saturating_sub(log0.0), l.saturating_sub(log0.1)),
        None => (0, 0),
    };
    latencies.sort();
    let p50 = latencies
        .get(latencies.len() / 2)
        .map(|d| format!("{:.1} ms", d.as_secs_f64() * 1000.0))
        .unwrap_or_else(|| "-".into());
    println!(
        "opened {} in {:.2} s ({connect_failed} failed) | held open at most {held_max}, at the end {} | all closed after {} | \
         /healthz answered {answered} of {probes} (first after {}, p50 {p50}) | CPU {cpu} | log +{log_lines} lines, +{log_bytes} bytes over {elapsed:.1} s",
        args.connections,
        opened_in.as_secs_f64(),
        conns.len(),
        all_closed_at
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .unwrap_or_else(|| "never".into()),
        first_answer
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .unwrap_or_else(|| "never".into()),
    );
    Ok(())
}
