//! Connections before and around HTTP, against a real proxy process with
//! real sockets: slow senders are cut off (request head, keep-alive idle,
//! body, websocket handshake), descriptor exhaustion neither spins nor
//! floods the log and the proxy recovers once the header timeout frees
//! descriptors, and the caps (per client address, handshakes in flight)
//! refuse only what is over them.

use crate::support;

use socket2::{Domain, SockAddr, Socket, Type};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::{json, Got, Launch, Proxy};
use tungstenite::Message;
use walcast_tests::{cluster, TestDb};

/// How long a slow sender is watched for being cut off (the timeouts are 1 s).
const CUT_OFF_WITHIN: Duration = Duration::from_secs(5);

fn launch(name: &str, extra: &[&str], how: Launch) -> (TestDb, Proxy) {
    let mut db = TestDb::new(name);
    db.exec("CREATE TABLE items (id int PRIMARY KEY, kind text)");
    let proxy = Proxy::launch(
        &cluster().url(&db.name),
        &format!("{}_proxy", db.name),
        extra,
        how,
    );
    proxy.wait_healthy();
    (db, proxy)
}

/// A connection that sends part of a request head and nothing more.
fn half_open(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    // The server may have closed it already (over a cap): that is for the caller to see.
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
    s
}

/// Whether the server closed `s` (end of stream or reset), without waiting.
fn is_closed(s: &mut TcpStream) -> bool {
    let _ = s.set_nonblocking(true);
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

/// How long until the server closes `s`, if it does within `max`.
fn closed_within(s: &mut TcpStream, max: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < max {
        if is_closed(s) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Waits until the server closed every one of `conns`, or `max` passed;
/// returns how many are still open.
fn wait_all_closed(conns: &mut Vec<TcpStream>, max: Duration) -> usize {
    let start = Instant::now();
    loop {
        conns.retain_mut(|s| !is_closed(s));
        if conns.is_empty() || start.elapsed() > max {
            return conns.len();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// CPU seconds (user + system) the process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; Linux counts them
    // in USER_HZ, 100 per second.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    ticks as f64 / 100.0
}

/// A GET of `path` on the connection `s`: (status, whole answer); status 0
/// when the server closed it unanswered or did not answer `within`.
fn get_on(mut s: TcpStream, path: &str, within: Duration) -> (u16, String) {
    let _ = s.set_read_timeout(Some(within));
    let _ = s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let answer = String::from_utf8_lossy(&buf).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

/// `GET /healthz` from a fresh connection: status (0 when closed unanswered).
fn healthz(port: u16, within: Duration) -> u16 {
    match TcpStream::connect(("127.0.0.1", port)) {
        Ok(s) => get_on(s, "/healthz", within).0,
        Err(_) => 0,
    }
}

fn log_file(name: &str) -> (std::fs::File, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("walcast-{name}-{}.log", std::process::id()));
    let f = std::fs::File::create(&path).expect("log file");
    (f, path)
}

fn log_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("log")
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn slow_senders_are_cut_off() {
    let (_db, proxy) = launch(
        "conn_slow",
        &[
            "--header-timeout",
            "1",
            "--body-timeout",
            "1",
            "--handshake-timeout",
            "1",
        ],
        Launch::default(),
    );
    let port = proxy.port;
    let window = |what: &str, took: Option<Duration>| {
        let took = took.unwrap_or_else(|| panic!("{what}: still open after 5 s"));
        assert!(
            took >= Duration::from_millis(800) && took < Duration::from_secs(3),
            "{what}: closed after {took:?}, not about 1 s"
        );
    };

    // A request head that never ends.
    let mut s = half_open(port);
    window("partial head", closed_within(&mut s, CUT_OFF_WITHIN));

    // A websocket upgrade request that never ends.
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(b"GET /ws?query=insert:items HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        .expect("write");
    window("partial upgrade", closed_within(&mut s, CUT_OFF_WITHIN));

    // A keep-alive connection left idle after its answer.
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut head = [0u8; 12];
    s.read_exact(&mut head).expect("an answer");
    assert_eq!(&head, b"HTTP/1.1 200");
    window("idle keep-alive", closed_within(&mut s, CUT_OFF_WITHIN));

    // A body that stops halfway: 408 Request Timeout.
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(
        b"POST /v1/streams HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"name\":",
    )
    .expect("write");
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 1 s"), "{answer}");
    window("slow body", Some(start.elapsed()));

    // A websocket that never sends its subscription.
    let mut ws = proxy.ws_url(&format!("ws://127.0.0.1:{port}/ws"));
    let start = Instant::now();
    let mut got = None;
    while got.is_none() && start.elapsed() < CUT_OFF_WITHIN {
        got = ws.next();
    }
    match got {
        Some(Got::Closed(code, reason)) => {
            assert_eq!(code, 1008, "{reason}");
            assert!(reason.contains("no subscription within 1 s"), "{reason}");
        }
        other => panic!("expected a close, got {other:?}"),
    }
    window("no subscription", Some(start.elapsed()));

    assert!(proxy.metric("walcast_connections_timed_out_total{phase=\"header\"}") >= 3);
    assert_eq!(
        proxy.metric("walcast_connections_timed_out_total{phase=\"body\"}"),
        1
    );
    assert_eq!(
        proxy.metric("walcast_connections_timed_out_total{phase=\"handshake\"}"),
        1
    );
}

/// Twice as many half-open connections as descriptors: while they are
/// held the proxy uses little CPU and logs little; once the header timeout
/// has closed them, a fresh connection is served at once.
fn exhaust(name: &str, extra: &[&str]) -> (Proxy, Vec<String>, ExhaustFigures) {
    const LIMIT: u64 = 256;
    let (log, path) = log_file(name);
    let mut args = vec!["--header-timeout", "4"];
    args.extend_from_slice(extra);
    let (_db, proxy) = launch(
        name,
        &args,
        Launch {
            nofile: Some(LIMIT),
            stderr: Some(log),
            log: Some("info"),
            ..Launch::default()
        },
    );
    let pid = proxy.child.id();
    let (_, health) = proxy.get("/healthz").expect("healthz");
    let health = json(&health);
    assert_eq!(health["connections"]["descriptor_limit"], LIMIT, "{health}");
    assert!(
        health["connections"]["descriptor_warning"]
            .as_str()
            .is_some_and(|w| w.contains("--max-clients")),
        "{health}"
    );

    let flood_start = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut conns: Vec<TcpStream> = (0..2 * LIMIT)
        .map(|_| {
            let t = Instant::now();
            let c = half_open(proxy.port);
            slowest = slowest.max(t.elapsed());
            c
        })
        .collect();
    let flood = flood_start.elapsed();
    // A dropped SYN costs a one-second retry: the listen backlog must take the burst.
    assert!(
        slowest < Duration::from_millis(500),
        "a connect took {slowest:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let cpu_before = cpu_seconds(pid);
    let measured = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let cpu_while_held = (cpu_seconds(pid) - cpu_before) / measured.elapsed().as_secs_f64();
    let held = conns
        .iter_mut()
        .map(|s| !is_closed(s))
        .filter(|open| *open)
        .count();

    let left = wait_all_closed(&mut conns, Duration::from_secs(40));
    assert_eq!(
        left, 0,
        "{left} half-open connections are still held after 40 s"
    );
    let all_closed = flood_start.elapsed();
    let asked = Instant::now();
    let status = healthz(proxy.port, Duration::from_secs(1));
    let answered = asked.elapsed();
    assert_eq!(status, 200, "/healthz after the flood");
    assert!(
        answered < Duration::from_secs(1),
        "/healthz took {answered:?}"
    );
    let lines = log_lines(&path);
    let _ = std::fs::remove_file(&path);
    let figures = ExhaustFigures { held, all_closed };
    eprintln!(
        "{name}: {} connections opened in {flood:?}, {held} held, CPU {:.1}% of a core while held, all closed after {all_closed:?}, \
         /healthz answered in {answered:?}, {} log lines",
        2 * LIMIT,
        cpu_while_held * 100.0,
        lines.len()
    );
    assert!(
        cpu_while_held < 0.1,
        "the proxy used {:.0}% of a core while descriptors were held",
        cpu_while_held * 100.0
    );
    assert!(
        lines.len() < 100,
        "{} log lines:\n{}",
        lines.len(),
        lines.join("\n")
    );
    (proxy, lines, figures)
}

struct ExhaustFigures {
    /// Connections the proxy still held after the flood.
    held: usize,
    /// From the flood until the proxy had closed every connection.
    all_closed: Duration,
}

#[test]
fn descriptor_exhaustion_is_capped_below_the_limit() {
    // Default --max-connections: the limit (256) less 64 kept for the rest.
    let (proxy, _lines, f) = exhaust("conn_capped", &[]);
    assert_eq!(proxy.metric("walcast_connections_max"), 192);
    assert!(f.held <= 192, "{} held", f.held);
    let refused = proxy.metric("walcast_connections_refused_total{reason=\"max_connections\"}");
    assert!(refused >= 512 - 192, "{refused} refused");
    assert!(proxy.metric("walcast_connections_timed_out_total{phase=\"header\"}") >= f.held as u64);
    // Nothing ran out: the cap kept descriptors for everything else.
    assert_eq!(
        proxy.metric("walcast_accept_errors_total{kind=\"resources\"}"),
        0
    );
    assert!(f.all_closed < Duration::from_secs(8), "{:?}", f.all_closed);
}

#[test]
fn descriptor_exhaustion_pauses_accepting() {
    // A cap above what the limit allows: descriptors do run out.
    let (proxy, lines, f) = exhaust("conn_exhausted", &["--max-connections", "100000"]);
    assert!(proxy.metric("walcast_accept_errors_total{kind=\"resources\"}") >= 1);
    let warned: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("out of file descriptors"))
        .collect();
    assert!(
        !warned.is_empty() && warned.len() <= 3,
        "the pause should be logged once per 10 s: {warned:?}"
    );
    assert!(f.held > 100, "only {} held", f.held);
    assert!(f.all_closed < Duration::from_secs(25), "{:?}", f.all_closed);
}

/// A connection to the proxy from another loopback address.
fn connect_from(local: &str, port: u16) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    let local: SocketAddr = format!("{local}:0").parse().expect("address");
    socket.bind(&SockAddr::from(local)).expect("bind");
    let remote: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    socket.connect(&SockAddr::from(remote)).expect("connect");
    socket.into()
}

fn healthz_on(s: TcpStream) -> u16 {
    get_on(s, "/healthz", Duration::from_secs(5)).0
}

#[test]
fn one_address_over_its_cap_is_refused_while_another_is_served() {
    let (_db, proxy) = launch(
        "conn_per_address",
        &[
            "--max-connections-per-address",
            "4",
            "--header-timeout",
            "60",
        ],
        Launch::default(),
    );
    let port = proxy.port;
    // Open connections as the proxy counts them, asked from an address of
    // their own (this question's connection is one of them).
    let open = || {
        let (_, answer) = get_on(
            connect_from("127.0.0.3", port),
            "/metrics",
            Duration::from_secs(5),
        );
        support::metric_value(&answer, "walcast_connections_open").unwrap_or(0)
    };
    let settle = |want: u64, what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while open() != want {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: {} open",
                open()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // The start-up's health checks have closed (one of them still open from
    // 127.0.0.1 would take a place of the four).
    settle(1, "only this question's connection");
    let mut held: Vec<TcpStream> = (0..4).map(|_| connect_from("127.0.0.1", port)).collect();
    for s in &mut held {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .expect("write");
    }
    settle(5, "the four held connections");
    assert_eq!(
        healthz_on(connect_from("127.0.0.1", port)),
        0,
        "a fifth connection from 127.0.0.1"
    );
    assert_eq!(
        healthz_on(connect_from("127.0.0.2", port)),
        200,
        "another address"
    );
    assert!(
        held.iter_mut().all(|s| !is_closed(s)),
        "the four held ones stay open"
    );
    // One leaves: its address may connect again.
    held.pop();
    let start = Instant::now();
    while healthz_on(connect_from("127.0.0.1", port)) != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "127.0.0.1 was not served again"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused = per_address_refusals(port);
    assert!(refused >= 1, "{refused}");
}

/// Per-address refusals, read from a third address.
fn per_address_refusals(port: u16) -> u64 {
    let (_, body) = get_on(
        connect_from("127.0.0.3", port),
        "/metrics",
        Duration::from_secs(5),
    );
    let series = "walcast_connections_refused_total{reason=\"per_address\"}";
    support::metric_value(&body, series).unwrap_or_else(|| panic!("no {series} in {body}"))
}

#[test]
fn handshakes_in_flight_are_capped() {
    let (_db, proxy) = launch(
        "conn_handshakes",
        &["--max-handshakes", "1"],
        Launch::default(),
    );
    let url = format!("ws://127.0.0.1:{}/ws", proxy.port);
    // Upgraded, subscription not sent yet: the one handshake in flight.
    let mut first = proxy.ws_url(&url);
    match proxy.try_ws_url(&url) {
        Err((503, body)) => assert!(body.contains("handshakes"), "{body}"),
        Err(e) => panic!("expected 503, got {e:?}"),
        Ok(_) => panic!("a second handshake was let in"),
    }
    assert_eq!(proxy.metric("walcast_websocket_handshakes"), 1);
    first
        .ws
        .send(Message::Text(
            r#"{"subscribe":{"query":"insert:items"}}"#.into(),
        ))
        .expect("subscribe");
    let start = Instant::now();
    let second = loop {
        match proxy.try_ws_url(&format!("{url}?query=insert:items")) {
            Ok(c) => break c,
            Err((503, _)) if start.elapsed() < Duration::from_secs(3) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("the handshake was not freed: {e:?}"),
        }
    };
    assert!(proxy.metric("walcast_connections_refused_total{reason=\"handshakes\"}") >= 1);
    // The server releases the second handshake just after its 101 is out,
    // on its own task: the client may ask before that task ran.
    let deadline = Instant::now() + Duration::from_secs(2);
    while proxy.metric("walcast_websocket_handshakes") != 0 {
        assert!(Instant::now() < deadline, "a handshake stayed in flight");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop((first, second));
}

#[test]
fn an_address_that_upgrades_in_a_loop_is_slowed_not_the_others() {
    let (_db, proxy) = launch(
        "conn_upgrade_rate",
        &["--max-upgrades-per-address", "2"],
        Launch::default(),
    );
    let url = format!("ws://127.0.0.1:{}/ws?query=insert:items", proxy.port);
    // An upgrade from the local address `from`: the status and Retry-After.
    let try_upgrade =
        |from: &str| match tungstenite::client(url.as_str(), connect_from(from, proxy.port)) {
            Ok(_) => (101, String::new()),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
                let retry = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                (r.status().as_u16(), retry)
            }
            Err(e) => panic!("upgrade: {e}"),
        };
    // Ten in a row from 127.0.0.1: a burst of two, then 429 (a slow
    // machine may refill one or two in between).
    let answers: Vec<(u16, String)> = (0..10).map(|_| try_upgrade("127.0.0.1")).collect();
    let accepted = answers.iter().filter(|(c, _)| *c == 101).count();
    let refused: Vec<&(u16, String)> = answers.iter().filter(|(c, _)| *c == 429).collect();
    assert!((2..=5).contains(&accepted), "{answers:?}");
    assert_eq!(accepted + refused.len(), 10, "{answers:?}");
    assert!(refused.iter().all(|(_, retry)| retry == "1"), "{answers:?}");
    assert_eq!(
        proxy.metric("walcast_connections_refused_total{reason=\"upgrade_rate\"}"),
        refused.len() as u64
    );
    // Another address has its own allowance.
    assert_eq!(try_upgrade("127.0.0.2").0, 101);
    // A second later the first address may connect again.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(try_upgrade("127.0.0.1").0, 101);
}
