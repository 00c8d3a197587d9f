//! Whether a websocket client is still there, judged by progress.
//!
//! A client is alive while it reads, whatever its ping round trip. A ping
//! sits behind every frame already in the socket buffers, so a slow reader
//! with a backlog answers late; it is not closed for that while the backlog
//! drains. The kernel tells how far the peer got (`TCP_INFO`): the bytes it
//! acknowledged (`tcpi_bytes_acked`) grow as its kernel takes our frames,
//! and the window it advertises (`tcpi_snd_wnd`) opens as its application
//! reads what its kernel holds. What is closed:
//!
//! - a client that takes nothing for `--stall-timeout` while a write waits
//!   for it (`Dead::Stalled`);
//! - a client with a ping out that shows no sign of life (a frame, more
//!   than a control frame's bytes acknowledged, a window opened by a segment) for
//!   two ping intervals (`Dead::Silent`): an idle peer that vanished without
//!   a FIN, or a frozen one.
//!
//! One case is beyond what TCP shows: a peer's kernel stops announcing its
//! window once half its buffer is free, so the last half drains unseen. A
//! client whose receive buffer holds more than about two ping intervals of
//! its reading can be closed as silent (docs/proxy.md).
//!
//! Where the kernel gives no counts (not Linux), only frames are signs of
//! life: a ping unanswered for two intervals, a write waiting for the whole
//! stall timeout.

use std::future::Future;
use std::time::Duration;
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// How often a waiting write checks the peer's progress.
const STEP: Duration = Duration::from_secs(1);

/// Bytes a peer may acknowledge between two pings without that counting as
/// reading: a ping and a reply frame, with TLS record overhead.
const CONTROL_BYTES: u64 = 64;

/// How the server watches its clients' liveness (the CLI's settings).
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// A ping goes out this often on a quiet connection; a client that has
    /// neither answered nor taken bytes by the next one is closed.
    pub ping_interval: Duration,
    /// A client that takes nothing for this long while a write waits for it
    /// is closed.
    pub stall_timeout: Duration,
    /// A client that subscribes in its first frame must send it this soon.
    pub handshake_timeout: Duration,
}

impl Liveness {
    /// The longest a vanished client (no FIN, no answer) holds its place
    /// after its last sign of life: four ping intervals when idle (two
    /// without a sign, judged at ticks, which see a sign up to an interval
    /// late; under load a frozen peer has been seen closed one interval
    /// after that), the stall timeout and one check when a write waits for
    /// it, whichever is longer (the close frame's 2 s come after).
    pub fn vanished_bound(&self) -> Duration {
        (4 * self.ping_interval).max(self.stall_timeout + STEP)
    }
}

/// A client's TCP socket, as the kernel counts it.
#[derive(Debug, Clone, Copy)]
pub struct Socket {
    #[cfg(target_os = "linux")]
    fd: std::os::fd::RawFd,
}

impl Socket {
    /// The socket of `stream`. It is only read (`getsockopt`) while the
    /// connection that owns the stream is served.
    pub fn of(stream: &tokio::net::TcpStream) -> Socket {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            Socket {
                fd: stream.as_raw_fd(),
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = stream;
            Socket {}
        }
    }

    /// What the kernel says of the peer now: the bytes it acknowledged
    /// and the window it advertises.
    #[cfg(target_os = "linux")]
    pub fn read(&self) -> Taken {
        /// The kernel's `struct tcp_info` up to `tcpi_snd_wnd`:
        /// `tcpi_snd_mss` at byte 16, `tcpi_bytes_acked` at byte 120
        /// (Linux 4.1+), `tcpi_snd_wnd` at byte 228 (Linux 5.4+).
        #[repr(C)]
        struct TcpInfo {
            head: [u8; 16],
            snd_mss: u32,
            before_acked: [u8; 100],
            bytes_acked: u64,
            middle: [u8; 100],
            snd_wnd: u32,
        }
        let mut info = TcpInfo {
            head: [0; 16],
            snd_mss: 0,
            before_acked: [0; 100],
            bytes_acked: 0,
            middle: [0; 100],
            snd_wnd: 0,
        };
        let mut len = std::mem::size_of::<TcpInfo>() as libc::socklen_t;
        // SAFETY: `info` is a plain C struct of `len` bytes that outlives the
        // call, and the kernel writes at most `len` bytes into it; a
        // descriptor that is no longer a TCP socket makes the call fail (or
        // report another socket's counts), never write out of bounds.
        let rc = unsafe {
            libc::getsockopt(
                self.fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                std::ptr::addr_of_mut!(info).cast(),
                &mut len,
            )
        };
        let len = if rc == 0 { len as usize } else { 0 };
        Taken {
            acked: (len >= 128).then_some(info.bytes_acked),
            window: (len >= 232).then_some(info.snd_wnd),
            mss: info.snd_mss,
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub fn read(&self) -> Taken {
        Taken::default()
    }
}

/// What the kernel says of a peer at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Taken {
    /// Bytes the peer acknowledged since the connection opened.
    pub acked: Option<u64>,
    /// The receive window the peer advertises: it grows as its
    /// application reads what its kernel holds.
    pub window: Option<u32>,
    /// The segment size: a window that grew by less has not let a segment
    /// through, and a peer's kernel may grow it a little without its
    /// application reading (reclaiming buffer space).
    pub mss: u32,
}

impl Taken {
    /// Whether the peer read something between `self` and `later`: more
    /// than a control frame acknowledged, or its window opened by a
    /// segment or more.
    fn read_until(&self, later: &Taken) -> bool {
        let acked =
            matches!((self.acked, later.acked), (Some(a), Some(b)) if b > a + CONTROL_BYTES);
        let mss = u64::from(later.mss.max(1));
        let window = matches!((self.window, later.window),
            (Some(a), Some(b)) if u64::from(b) >= u64::from(a) + mss);
        acked || window
    }
}

/// Why a client is judged gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dead {
    /// The connection failed (reset, closed, a write error).
    Gone,
    /// A write waited `stall_timeout` and the client took nothing meanwhile.
    Stalled,
    /// No answer to a ping and nothing taken for a whole ping interval.
    Silent,
}

/// What to do at a ping tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Send a ping.
    Ping,
    /// A ping is out and the client is still reading towards it: wait.
    Wait,
}

/// One client's liveness: its pings and how far its writes got.
pub struct Watch {
    liveness: Liveness,
    socket: Option<Socket>,
    ping: Interval,
    /// A ping is out, not answered yet.
    awaiting: bool,
    /// The kernel's counts at the last tick.
    mark: Taken,
    /// The last sign of life: a frame, or reading seen at a tick.
    alive: Instant,
}

impl Watch {
    pub fn new(liveness: Liveness, socket: Option<Socket>) -> Watch {
        let every = liveness.ping_interval;
        let mut ping = tokio::time::interval_at(Instant::now() + every, every);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mark = socket.as_ref().map(Socket::read).unwrap_or_default();
        Watch {
            liveness,
            socket,
            ping,
            awaiting: false,
            mark,
            alive: Instant::now(),
        }
    }

    fn taken(&self) -> Taken {
        self.socket.as_ref().map(Socket::read).unwrap_or_default()
    }

    /// The client sent a frame (a pong above all): it is there.
    pub fn heard(&mut self) {
        self.awaiting = false;
        self.alive = Instant::now();
    }

    /// Waits for the next ping tick. Cancel safe.
    pub async fn tick(&mut self) {
        self.ping.tick().await;
    }

    /// Judges a ping tick: send a ping, wait for the one that is out, or
    /// close a client silent for two ping intervals.
    pub fn on_tick(&mut self) -> Result<Due, Dead> {
        let now = self.taken();
        if self.mark.read_until(&now) {
            self.alive = Instant::now();
        }
        self.mark = now;
        if !self.awaiting {
            self.awaiting = true;
            return Ok(Due::Ping);
        }
        if self.alive.elapsed() >= 2 * self.liveness.ping_interval {
            Err(Dead::Silent)
        } else {
            // Still reading the frames queued before the ping.
            Ok(Due::Wait)
        }
    }

    /// The close reason of a silent client.
    pub fn silent_reason(&self) -> String {
        format!(
            "no answer to a ping and nothing read for {} s",
            (2 * self.liveness.ping_interval).as_secs_f64().round()
        )
    }

    /// The close reason of a stalled client.
    pub fn stalled_reason(&self) -> String {
        format!(
            "stalled: read nothing for {} s while changes waited",
            self.liveness.stall_timeout.as_secs_f64().round()
        )
    }

    /// Starts judging a write that must wait.
    fn waiting(&self) -> Waiting {
        Waiting {
            seen: self.taken(),
            progress: Instant::now(),
        }
    }

    /// Checks a waiting write after a step: `Err(Stalled)` once the client
    /// took nothing for the stall timeout.
    fn check(&self, w: &mut Waiting) -> Result<(), Dead> {
        let now = self.taken();
        if now.acked.is_some() && now.acked != w.seen.acked || w.seen.read_until(&now) {
            w.progress = Instant::now();
        }
        w.seen = now;
        if w.progress.elapsed() >= self.liveness.stall_timeout {
            Err(Dead::Stalled)
        } else {
            Ok(())
        }
    }

    /// Runs a websocket write; it may wait as long as the client keeps
    /// taking bytes, and no longer than the stall timeout without that.
    pub async fn write<F, E>(&self, write: F) -> Result<(), Dead>
    where
        F: Future<Output = Result<(), E>>,
    {
        self.write_keeping(write, &mut ()).await
    }

    /// [`Watch::write`], calling `keep` once per check while the write
    /// waits (a durable stream keeps its replication connection alive).
    pub async fn write_keeping<F, E, K>(&self, write: F, keep: &mut K) -> Result<(), Dead>
    where
        F: Future<Output = Result<(), E>>,
        K: KeepAlive,
    {
        let mut write = std::pin::pin!(write);
        // Most writes only fill the send buffer and are done at the first
        // poll: they need no timer (one per frame would read the clock per
        // frame). A write that must wait is polled again below.
        if let Some(done) = futures_util::FutureExt::now_or_never(write.as_mut()) {
            return done.map_err(|_| Dead::Gone);
        }
        let mut w = self.waiting();
        loop {
            match tokio::time::timeout(STEP, write.as_mut()).await {
                Ok(done) => return done.map_err(|_| Dead::Gone),
                Err(_) => {
                    self.check(&mut w)?;
                    keep.keep_alive().await;
                }
            }
        }
    }
}

/// A write in progress: when the client last took bytes.
struct Waiting {
    seen: Taken,
    progress: Instant,
}

/// Something that must hear from the proxy while a client's write waits.
pub trait KeepAlive {
    fn keep_alive(&mut self) -> impl Future<Output = ()> + Send;
}

impl KeepAlive for () {
    async fn keep_alive(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn acked_bytes_grow_as_the_peer_reads() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let socket = Socket::of(&server);
        let start = socket.read();
        let acked = start.acked.expect("Linux reports tcpi_bytes_acked");
        assert!(
            start.window.is_some_and(|w| w > 0),
            "Linux 5.4+ reports tcpi_snd_wnd"
        );
        let data = vec![7u8; 64 * 1024];
        server.write_all(&data).await.unwrap();
        let mut got = vec![0u8; data.len()];
        client.read_exact(&mut got).await.unwrap();
        // The last ACK may trail the read by a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while socket.read().acked.unwrap_or(0) < acked + data.len() as u64 {
            assert!(Instant::now() < deadline, "ACKs never counted");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn liveness(ping: u64, stall: u64) -> Liveness {
        Liveness {
            ping_interval: Duration::from_secs(ping),
            stall_timeout: Duration::from_secs(stall),
            handshake_timeout: Duration::from_secs(1),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn without_counts_a_ping_unanswered_for_two_intervals_is_fatal() {
        let mut w = Watch::new(liveness(15, 30), None);
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(w.on_tick(), Ok(Due::Ping));
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(w.on_tick(), Err(Dead::Silent));
        let mut w = Watch::new(liveness(15, 30), None);
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(w.on_tick(), Ok(Due::Ping));
        // A pong, then the next ping out: one interval without an answer
        // is waited for, two are not.
        w.heard();
        assert_eq!(w.on_tick(), Ok(Due::Ping));
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(w.on_tick(), Ok(Due::Wait));
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(w.on_tick(), Err(Dead::Silent));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_peer_that_reads_its_backlog_is_waited_for_and_a_frozen_one_is_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        // Ticks judged by hand: a 100 ms "interval".
        let every = Duration::from_millis(100);
        let mut w = Watch::new(
            Liveness {
                ping_interval: every,
                stall_timeout: Duration::from_secs(1),
                handshake_timeout: Duration::from_secs(1),
            },
            Some(Socket::of(&server)),
        );
        // A backlog the peer has not read, then the "ping".
        let backlog = vec![1u8; 4 << 20];
        let writer = tokio::spawn(async move {
            let _ = server.write_all(&backlog).await;
            server
        });
        tokio::time::sleep(every).await;
        assert_eq!(w.on_tick(), Ok(Due::Ping));
        // The peer reads part of its backlog at each tick: no answer, but
        // progress, for longer than two intervals.
        let mut buf = vec![0u8; 256 << 10];
        for _ in 0..4 {
            client.read_exact(&mut buf).await.unwrap();
            tokio::time::sleep(every).await;
            assert_eq!(w.on_tick(), Ok(Due::Wait));
        }
        // Then it reads nothing: silent once two intervals pass without a
        // sign (what was in flight may still land at the first tick).
        let stopped = Instant::now();
        loop {
            tokio::time::sleep(every).await;
            match w.on_tick() {
                Ok(Due::Wait) => assert!(stopped.elapsed() < 5 * every, "never judged silent"),
                Err(Dead::Silent) => break,
                other => panic!("{other:?}"),
            }
        }
        assert!(stopped.elapsed() >= 2 * every);
        writer.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_never_completes_stalls_after_the_timeout() {
        let w = Watch::new(liveness(15, 3), None);
        let started = Instant::now();
        let r = w
            .write(std::future::pending::<Result<(), std::io::Error>>())
            .await;
        assert_eq!(r, Err(Dead::Stalled));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(3) && took <= Duration::from_secs(3) + STEP,
            "{took:?}"
        );
    }

    #[test]
    fn the_vanished_bound_is_the_longer_rule() {
        assert_eq!(liveness(15, 30).vanished_bound(), Duration::from_secs(60));
        assert_eq!(liveness(5, 30).vanished_bound(), Duration::from_secs(31));
    }
}
