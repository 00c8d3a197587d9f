//! Starting a real walcast-proxy process against a private cluster, plain
//! HTTP requests, and websocket clients for the end-to-end tests.

#![allow(dead_code)]

pub mod durable;
pub mod js;
pub mod model;
pub mod rng;
pub mod rows;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};
use walcast_cluster::Cluster;

/// A command running `walcast-proxy`, under a descriptor limit (soft and
/// hard) when `nofile` is given: a shell lowers it and becomes the proxy.
pub fn proxy_command(nofile: Option<u64>) -> Command {
    let bin = env!("CARGO_BIN_EXE_walcast-proxy");
    match nofile {
        None => Command::new(bin),
        Some(n) => {
            let mut c = Command::new("/bin/sh");
            c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), bin]);
            c
        }
    }
}

/// Runs `walcast-proxy` as `command` says, which must refuse to start:
/// exit status 2. Its standard error.
pub fn refused_start(command: &mut Command) -> String {
    let out = command.output().expect("run walcast-proxy");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{command:?}: {stderr}");
    stderr
}

/// An example WASM filter's module as `scripts/build-filters.sh` builds it
/// (`walcast_filter_<name>.wasm`).
pub fn example_filter_path(name: &str) -> std::path::PathBuf {
    walcast_tests::repo_root()
        .join("filters/target/wasm32-unknown-unknown/release")
        .join(format!("walcast_filter_{name}.wasm"))
}

/// The bytes of [`example_filter_path`]; fails saying how to build them.
pub fn example_filter(name: &str) -> Vec<u8> {
    let path = example_filter_path(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the example filters with ./scripts/build-filters.sh",
            path.display()
        )
    })
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An HS256 JWT of `claims` signed with `secret`.
pub fn hs256(secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("signing")
}

/// The value of the series `name` (with its labels) in a `/metrics` body.
pub fn metric_value(body: &str, name: &str) -> Option<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// How to start a proxy, beyond its arguments.
#[derive(Default)]
pub struct Launch {
    /// Run it with this descriptor limit (soft and hard).
    pub nofile: Option<u64>,
    /// Where its log goes (default: the test's stderr).
    pub stderr: Option<std::fs::File>,
    /// Its RUST_LOG (default: WALCAST_TEST_LOG, or warn).
    pub log: Option<&'static str>,
    /// Where it listens (default: a free port on 127.0.0.1).
    pub listen: Option<String>,
}

/// A running proxy; killed on drop.
pub struct Proxy {
    pub child: Child,
    pub port: u16,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    /// Starts `walcast-proxy` for database `db` with extra arguments and waits
    /// until `/healthz` says it is streaming.
    pub fn start(cluster: &Cluster, db: &str, slot: &str, extra: &[&str]) -> Proxy {
        let proxy = Proxy::spawn(&cluster.url(db), slot, extra);
        proxy.wait_healthy();
        proxy
    }

    /// Starts `walcast-proxy` for a database URL without waiting for health.
    pub fn spawn(url: &str, slot: &str, extra: &[&str]) -> Proxy {
        Proxy::launch(url, slot, extra, Launch::default())
    }

    /// Starts `walcast-proxy` as `how` says, without waiting for health.
    pub fn launch(url: &str, slot: &str, extra: &[&str], how: Launch) -> Proxy {
        let mut cmd = proxy_command(how.nofile);
        cmd.args([
            "--database-url",
            url,
            "--listen",
            how.listen.as_deref().unwrap_or("127.0.0.1:0"),
            "--slot",
            slot,
        ])
        .args(["--status-interval", "1"])
        .args(extra)
        .env(
            "RUST_LOG",
            how.log
                .map(str::to_owned)
                .or_else(|| std::env::var("WALCAST_TEST_LOG").ok())
                .unwrap_or_else(|| "warn".into()),
        )
        .stdout(Stdio::piped());
        if let Some(f) = how.stderr {
            cmd.stderr(f);
        }
        let mut child = cmd.spawn().expect("starting walcast-proxy");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reading the listen line");
        let port: u16 = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Proxy { child, port }
    }

    /// Waits until `/healthz` answers 200.
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = self.get("/healthz") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "proxy never became healthy: {:?}",
                self.get("/healthz")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the `/metrics` series `name` is at least `want`, for at
    /// most `within`; returns how long that took.
    pub fn wait_metric(&self, name: &str, want: u64, within: Duration) -> Duration {
        self.wait_metric_until(name, |v| v >= want, &format!("reach {want}"), within)
    }

    /// Waits until the gauge `name` is exactly `want`, for at most 30 s.
    pub fn wait_gauge(&self, name: &str, want: u64) {
        let within = Duration::from_secs(30);
        self.wait_metric_until(name, |v| v == want, &format!("come to {want}"), within);
    }

    fn wait_metric_until(
        &self,
        name: &str,
        done: impl Fn(u64) -> bool,
        what: &str,
        within: Duration,
    ) -> Duration {
        let start = Instant::now();
        loop {
            if done(self.metric(name)) {
                return start.elapsed();
            }
            if start.elapsed() >= within {
                let (_, body) = self.get("/metrics").expect("metrics");
                let why: Vec<&str> = body
                    .lines()
                    .filter(|l| l.starts_with("walcast_c") || l.starts_with("walcast_refused"))
                    .collect();
                panic!("{name} did not {what} within {within:?}: {why:#?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `n` live clients are subscribed (`walcast_clients`): a
    /// change committed after this reaches all of them.
    pub fn wait_clients(&self, n: u64) {
        self.wait_metric("walcast_clients", n, Duration::from_secs(30));
    }

    /// The value of a `/metrics` series, by its name with labels.
    pub fn metric(&self, name: &str) -> u64 {
        let (_, body) = self.get("/metrics").expect("metrics");
        metric_value(&body, name).unwrap_or_else(|| panic!("no metric {name} in {body}"))
    }

    /// A plain HTTP GET: (status, body).
    pub fn get(&self, path_and_query: &str) -> std::io::Result<(u16, String)> {
        self.request(&format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        ))
    }

    /// Sends a raw HTTP request: (status, body).
    pub fn request(&self, raw: &str) -> std::io::Result<(u16, String)> {
        exchange(self.port, raw.as_bytes()).map(|(status, _, body)| (status, body))
    }

    /// A POST with a JSON body: (status, body).
    pub fn post(&self, path: &str, body: &str) -> std::io::Result<(u16, String)> {
        let (status, _, body) = self.post_full(path, body);
        Ok((status, body))
    }

    /// A POST of raw bytes: (status, body).
    pub fn post_bytes(&self, path: &str, content_type: &str, body: &[u8]) -> (u16, String) {
        post_bytes(self.port, path, content_type, body)
    }

    /// A POST returning (status, headers in lower case, body).
    pub fn post_full(&self, path: &str, body: &str) -> (u16, String, String) {
        let raw = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        exchange(self.port, raw.as_bytes()).expect("POST")
    }

    /// A DELETE: (status, body).
    pub fn delete(&self, path: &str) -> std::io::Result<(u16, String)> {
        self.request(&format!(
            "DELETE {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        ))
    }

    /// Tries a websocket connection: the client, or the HTTP status and body
    /// of the refusal.
    pub fn try_ws_url(&self, url: &str) -> Result<Client, (u16, String)> {
        match tungstenite::connect(url) {
            Ok((ws, _)) => {
                if let MaybeTlsStream::Plain(s) = ws.get_ref() {
                    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                }
                Ok(Client { ws })
            }
            Err(tungstenite::Error::Http(r)) => {
                let body = r
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Err((r.status().as_u16(), body))
            }
            Err(e) => Err((0, e.to_string())),
        }
    }

    /// A websocket client for `/ws?query=...` (the query is URL-encoded here).
    pub fn ws(&self, query: &str) -> Client {
        let url = format!("ws://127.0.0.1:{}/ws?query={}", self.port, encode(query));
        self.ws_url(&url)
    }

    /// A websocket client for `/ws?<params>` (already URL-encoded).
    pub fn ws_params(&self, params: &str) -> Client {
        self.try_ws_url(&format!("ws://127.0.0.1:{}/ws?{params}", self.port))
            .unwrap_or_else(|e| panic!("/ws?{params}: {e:?}"))
    }

    /// A websocket client for `path_and_query` whose socket has a receive
    /// buffer of `rcvbuf` bytes (set before connecting, so the window the
    /// client advertises stays that small).
    pub fn ws_with_rcvbuf(&self, path_and_query: &str, rcvbuf: usize) -> Client {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("a socket");
        socket.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], self.port).into();
        socket.connect(&addr.into()).expect("connecting");
        let stream: TcpStream = socket.into();
        // The handshake may wait for a durable stream's slot: no short
        // timeout until the socket is open.
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        let url = format!("ws://127.0.0.1:{}{path_and_query}", self.port);
        let (ws, _) = tungstenite::client(url.as_str(), MaybeTlsStream::Plain(stream))
            .unwrap_or_else(|e| panic!("websocket {url}: {e}"));
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .expect("read timeout");
        }
        Client { ws }
    }

    /// A websocket client for a full URL.
    pub fn ws_url(&self, url: &str) -> Client {
        let (ws, _) = tungstenite::connect(url).unwrap_or_else(|e| panic!("websocket {url}: {e}"));
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        }
        Client { ws }
    }
}

/// A POST of raw bytes to the proxy on `port`: (status, body).
pub fn post_bytes(port: u16, path: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    let (status, _, body) = exchange(port, &raw).expect("POST");
    (status, body)
}

/// Sends a raw request to the proxy on `port` and reads the whole answer:
/// (status, headers in lower case, body). The server may answer (413)
/// before reading everything, so a failed write is not an error.
pub fn exchange(port: u16, raw: &[u8]) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let _ = s.write_all(raw);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, head.to_ascii_lowercase(), body.to_owned()))
}

/// Percent-encodes a query parameter value.
pub fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A websocket test client.
pub struct Client {
    pub ws: WebSocket<MaybeTlsStream<TcpStream>>,
}

/// What a client received.
#[derive(Debug, PartialEq)]
pub enum Got {
    Text(String),
    Closed(u16, String),
}

impl Client {
    /// Reads frames until `n` text frames arrived or `timeout` passed.
    pub fn texts(&mut self, n: usize, timeout: Duration) -> Vec<String> {
        let mut out = Vec::new();
        let deadline = Instant::now() + timeout;
        while out.len() < n && Instant::now() < deadline {
            match self.next() {
                Some(Got::Text(t)) => out.push(t),
                Some(Got::Closed(c, r)) => panic!("closed early with {c} {r}"),
                None => {}
            }
        }
        out
    }

    /// Asserts that nothing arrives for `quiet`.
    pub fn expect_silence(&mut self, quiet: Duration) {
        let deadline = Instant::now() + quiet;
        while Instant::now() < deadline {
            if let Some(g) = self.next() {
                panic!("expected nothing, got {g:?}");
            }
        }
    }

    /// The next frame, or `None` after the read timeout.
    pub fn next(&mut self) -> Option<Got> {
        match self.ws.read() {
            Ok(Message::Text(t)) => Some(Got::Text(t.to_string())),
            Ok(Message::Close(Some(f))) => Some(Got::Closed(f.code.into(), f.reason.to_string())),
            Ok(Message::Close(None)) => Some(Got::Closed(1005, String::new())),
            Ok(_) => None,
            // A read under a socket timeout is not restarted after a signal
            // (SIGCHLD of another test's child process): EINTR, try again.
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                None
            }
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                Some(Got::Closed(1006, "connection closed".into()))
            }
            Err(e) => Some(Got::Closed(1006, e.to_string())),
        }
    }

    /// The next frame within `timeout`.
    pub fn next_within(&mut self, timeout: Duration) -> Option<Got> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(g) = self.next() {
                return Some(g);
            }
        }
        None
    }

    /// Reads text frames at a steady `per_second` until `n` arrived or
    /// `within` passed, handing each to `each`; panics on a close.
    pub fn read_at(
        &mut self,
        per_second: f64,
        n: usize,
        within: Duration,
        mut each: impl FnMut(&str),
    ) {
        let start = Instant::now();
        let mut got = 0usize;
        while got < n {
            assert!(
                start.elapsed() < within,
                "{got} of {n} frames within {within:?}"
            );
            match self.next() {
                Some(Got::Text(t)) => {
                    each(&t);
                    got += 1;
                    let due = start + Duration::from_secs_f64(got as f64 / per_second);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                Some(Got::Closed(code, reason)) => {
                    panic!("closed after {got} of {n} frames: {code} {reason}")
                }
                None => {}
            }
        }
    }

    /// Bytes this client's kernel has received on its socket
    /// (`tcpi_bytes_received`): it stops growing once the client stops
    /// reading and its receive buffer is full.
    pub fn bytes_received(&self) -> u64 {
        use std::os::fd::AsRawFd;
        let MaybeTlsStream::Plain(s) = self.ws.get_ref() else {
            panic!("a plain TCP client");
        };
        let mut info = [0u64; 17];
        let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
        // SAFETY: `info` is 136 writable bytes that outlive the call and
        // `len` says so; the kernel writes at most `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                info.as_mut_ptr().cast(),
                &mut len,
            )
        };
        assert!(rc == 0 && len >= 136, "TCP_INFO with tcpi_bytes_received");
        // `tcpi_bytes_received` is at byte 128.
        info[16]
    }

    /// Waits, reading nothing, until `closed` holds; the time from the last
    /// byte this client's kernel took to then (its last sign of life).
    pub fn silent_until(&self, mut closed: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        let (mut seen, mut last) = (self.bytes_received(), Instant::now());
        while !closed() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the silent client was not closed"
            );
            std::thread::sleep(Duration::from_millis(20));
            let now = self.bytes_received();
            if now != seen {
                (seen, last) = (now, Instant::now());
            }
        }
        last.elapsed()
    }

    /// Sends a text frame.
    pub fn send(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.to_owned().into()))
            .expect("sending a frame");
    }

    /// Reads until a close frame arrives (or `timeout`), returning it.
    pub fn close_frame(&mut self, timeout: Duration) -> Option<(u16, String)> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(Got::Closed(c, r)) = self.next() {
                return Some((c, r));
            }
        }
        None
    }
}

/// Parses a frame as JSON.
pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("frame is not JSON ({e}): {s}"))
}

/// Runs `openssl` with `args` in `dir`; its standard output. Panics with
/// openssl's error when it fails.
pub fn openssl(dir: &std::path::Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Makes a server key and certificate usable by the test cluster: the key
/// private (PostgreSQL refuses a key others can read), and both owned by
/// the OS user PostgreSQL runs as when the tests run as root.
pub fn give_to_cluster(key: &std::path::Path, cert: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600))
        .expect("chmod of the key");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false);
    if root {
        let chown = Command::new("chown")
            .arg(walcast_cluster::OS_USER)
            .arg(key)
            .arg(cert)
            .status()
            .expect("chown");
        assert!(chown.success(), "chown of the certificate failed");
    }
}
