//! Accepting TCP connections, before any HTTP: the accept loop, which
//! pauses when descriptors run out instead of spinning; the caps on open
//! connections (in total and per client address), over which a connection
//! is closed at once; the cap on websocket handshakes in flight, and on
//! how many upgrades one address may start per second.
//!
//! An admitted connection holds a [`Place`] until it closes; a websocket
//! takes a place of its own when its connection is upgraded (the HTTP
//! connection's is released as it hands the socket over).

use crate::metrics::Metrics;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// The caps.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections in total.
    pub max_connections: usize,
    /// Open connections from one client address; 0: no cap.
    pub max_per_address: usize,
    /// Websocket handshakes in flight: upgrade requests being checked, and
    /// upgraded clients that have not sent their subscription yet.
    pub max_handshakes: usize,
    /// Websocket upgrades one client address may start per second (a burst
    /// of as many is allowed); 0: no cap.
    pub upgrades_per_address: u32,
}

/// Addresses whose upgrade allowance is tracked before idle ones are forgotten.
const MAX_UPGRADE_BUCKETS: usize = 10_000;

/// First pause after an accept failed for lack of descriptors or memory.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// Longest pause: how late a freed descriptor may be noticed.
const LONGEST_PAUSE: Duration = Duration::from_millis(100);

/// The open connections and the caps on them.
pub struct Connections {
    pub limits: Limits,
    per_address: Mutex<HashMap<IpAddr, usize>>,
    /// Upgrade allowance per address: tokens left, and when they were counted.
    upgrades: Mutex<HashMap<IpAddr, (f64, Instant)>>,
    handshakes: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

/// One admitted connection; released when dropped.
pub struct Place {
    conns: Arc<Connections>,
    addr: IpAddr,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-connections` are open.
    Total,
    /// `--max-connections-per-address` are open from this address.
    Address,
}

/// A websocket handshake in flight; ends when dropped.
pub struct Handshake {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.metrics
            .connections
            .handshakes
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connections {
    pub fn new(limits: Limits, metrics: Arc<Metrics>) -> Arc<Connections> {
        let c = &metrics.connections;
        c.max
            .store(limits.max_connections as u64, Ordering::Relaxed);
        Arc::new(Connections {
            limits,
            per_address: Mutex::new(HashMap::new()),
            upgrades: Mutex::new(HashMap::new()),
            handshakes: Arc::new(Semaphore::new(limits.max_handshakes.max(1))),
            metrics,
        })
    }

    /// Admits a connection from `addr`, or says why not (and counts it).
    pub fn admit(self: &Arc<Self>, addr: IpAddr) -> Result<Place, Refusal> {
        let c = &self.metrics.connections;
        let open = c.open.fetch_add(1, Ordering::Relaxed);
        if open >= self.limits.max_connections {
            c.open.fetch_sub(1, Ordering::Relaxed);
            c.refused_total.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Total);
        }
        if self.limits.max_per_address > 0 {
            let admitted = {
                let mut map = crate::locks::lock(&self.per_address);
                let n = map.entry(addr).or_insert(0);
                let fits = *n < self.limits.max_per_address;
                if fits {
                    *n += 1;
                }
                fits
            };
            if !admitted {
                c.open.fetch_sub(1, Ordering::Relaxed);
                c.refused_address.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::Address);
            }
        }
        Ok(Place {
            conns: self.clone(),
            addr,
        })
    }

    /// A place for a connection already admitted that changes hands (an
    /// upgraded websocket): counted, never refused.
    pub fn hold(self: &Arc<Self>, addr: IpAddr) -> Place {
        self.metrics
            .connections
            .open
            .fetch_add(1, Ordering::Relaxed);
        if self.limits.max_per_address > 0 {
            {
                let mut map = crate::locks::lock(&self.per_address);
                *map.entry(addr).or_insert(0) += 1;
            }
        }
        Place {
            conns: self.clone(),
            addr,
        }
    }

    /// Starts a websocket handshake, unless `max_handshakes` are in flight.
    /// Whether `addr` may start another websocket upgrade now (a token
    /// bucket of `upgrades_per_address` per second); counts a refusal.
    pub fn upgrade_allowed(&self, addr: IpAddr) -> bool {
        let rate = f64::from(self.limits.upgrades_per_address);
        if rate == 0.0 {
            return true;
        }
        let now = Instant::now();
        let allowed = {
            let mut map = crate::locks::lock(&self.upgrades);
            if map.len() >= MAX_UPGRADE_BUCKETS {
                // Buckets idle for a second are full again: forget them.
                map.retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(1));
            }
            let (tokens, at) = map.entry(addr).or_insert((rate, now));
            *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(rate);
            *at = now;
            if *tokens >= 1.0 {
                *tokens -= 1.0;
                true
            } else {
                false
            }
        };
        if !allowed {
            self.metrics
                .connections
                .refused_upgrade_rate
                .fetch_add(1, Ordering::Relaxed);
        }
        allowed
    }

    pub fn begin_handshake(&self) -> Option<Handshake> {
        let permit = self.handshakes.clone().try_acquire_owned().ok();
        let c = &self.metrics.connections;
        match permit {
            Some(p) => {
                c.handshakes.fetch_add(1, Ordering::Relaxed);
                Some(Handshake {
                    _permit: p,
                    metrics: self.metrics.clone(),
                })
            }
            None => {
                c.refused_handshakes.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let conns = &self.conns;
        conns
            .metrics
            .connections
            .open
            .fetch_sub(1, Ordering::Relaxed);
        if conns.limits.max_per_address > 0 {
            {
                let mut map = crate::locks::lock(&conns.per_address);
                if let Some(n) = map.get_mut(&self.addr) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        map.remove(&self.addr);
                    }
                }
            }
        }
    }
}

/// Connections the kernel completes and queues before the proxy accepts
/// them (capped by `net.core.somaxconn`). Tokio's default, 128, dropped the
/// SYNs of a burst of reconnecting clients (a one-second retry each).
const BACKLOG: u32 = 4096;

/// Listens on `addr` with a backlog for bursts of connections.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Whether an accept error means the process is out of descriptors or
/// memory (pause), rather than one failed connection (go on).
fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Accepts connections until `shutdown` becomes true, handing each admitted
/// one to `serve` with its place. Refused connections are closed at once.
pub async fn run<F>(
    listener: TcpListener,
    conns: Arc<Connections>,
    shutdown: CancellationToken,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr, Place),
{
    let metrics = conns.metrics.clone();
    let mut pause = FIRST_PAUSE;
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    pause = FIRST_PAUSE;
                    a
                }
                Err(e) if out_of_resources(&e) => {
                    metrics.connections.accept_errors_resources.fetch_add(1, Ordering::Relaxed);
                    crate::limited!(warn, error = %e, "cannot accept connections: out of file descriptors or memory; pausing (raise the descriptor limit or lower --max-connections)");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    pause = (pause * 2).min(LONGEST_PAUSE);
                    continue;
                }
                Err(e) => {
                    metrics.connections.accept_errors_other.fetch_add(1, Ordering::Relaxed);
                    crate::limited!(warn, error = %e, "accept failed");
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        match conns.admit(addr.ip()) {
            Ok(place) => serve(stream, addr, place),
            Err(Refusal::Total) => {
                crate::limited!(
                    warn,
                    max = conns.limits.max_connections,
                    "refusing connections: --max-connections are open"
                );
            }
            Err(Refusal::Address) => {
                crate::limited!(warn, address = %addr.ip(), max = conns.limits.max_per_address, "refusing connections from an address that holds --max-connections-per-address");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn conns(max: usize, per: usize) -> Arc<Connections> {
        Connections::new(
            Limits {
                max_connections: max,
                max_per_address: per,
                max_handshakes: 2,
                upgrades_per_address: 3,
            },
            Arc::new(Metrics::default()),
        )
    }

    #[test]
    fn upgrades_per_address_are_a_token_bucket() {
        let c = conns(10, 0);
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        // A burst of 3, then refused; other addresses have their own.
        assert!((0..3).all(|_| c.upgrade_allowed(a)));
        assert!(!c.upgrade_allowed(a));
        assert!(c.upgrade_allowed(b));
        // A third of a second refills one.
        std::thread::sleep(Duration::from_millis(400));
        assert!(c.upgrade_allowed(a));
        let refused = c
            .metrics
            .connections
            .refused_upgrade_rate
            .load(Ordering::Relaxed);
        assert!(refused >= 1, "{refused}");
    }

    #[test]
    fn caps_in_total_and_per_address() {
        let c = conns(3, 2);
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        let a1 = c.admit(a).expect("a1");
        let a2 = c.admit(a).expect("a2");
        assert_eq!(c.admit(a).err(), Some(Refusal::Address));
        let b1 = c.admit(b).expect("b1");
        assert_eq!(c.admit(b).err(), Some(Refusal::Total));
        drop(a1);
        let a3 = c.admit(a).expect("a freed one");
        // A websocket taking over a connection is counted, not refused.
        let ws = c.hold(a);
        assert_eq!(c.admit(a).err(), Some(Refusal::Total));
        drop(ws);
        let m = &c.metrics.connections;
        assert_eq!(m.open.load(Ordering::Relaxed), 3);
        assert_eq!(m.refused_total.load(Ordering::Relaxed), 2);
        assert_eq!(m.refused_address.load(Ordering::Relaxed), 1);
        drop((a2, a3, b1));
        assert_eq!(m.open.load(Ordering::Relaxed), 0);
        assert!(crate::locks::lock(&c.per_address).is_empty());
    }

    #[test]
    fn handshakes_in_flight() {
        let c = conns(10, 0);
        let h1 = c.begin_handshake().expect("h1");
        let _h2 = c.begin_handshake().expect("h2");
        assert!(c.begin_handshake().is_none());
        drop(h1);
        assert!(c.begin_handshake().is_some());
        let m = &c.metrics.connections;
        assert_eq!(m.refused_handshakes.load(Ordering::Relaxed), 1);
    }
}
