//! The file descriptor limit: raised to the hard limit at start, and the
//! number of client connections it leaves room for.
//!
//! Every connection is a descriptor; so are PostgreSQL connections (the
//! pool, the replication stream, one per durable stream consumer), cached
//! filter files and the log. [`headroom`] keeps that many for them.

use std::io;

/// The process's descriptor limit after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// The soft limit in force.
    pub soft: u64,
    /// The hard limit (the most the soft limit may be raised to).
    pub hard: u64,
    /// The soft limit before it was raised, when it was.
    pub raised_from: Option<u64>,
}

/// Descriptors kept for everything but client connections.
pub fn headroom(limit: u64) -> u64 {
    (limit / 8).clamp(64, 1024)
}

/// Client connections a descriptor limit leaves room for.
pub fn connections_for(limit: u64) -> usize {
    usize::try_from(limit.saturating_sub(headroom(limit))).unwrap_or(usize::MAX)
}

/// The lowest descriptor limit that serves `connections` at once.
pub fn limit_for(connections: usize) -> u64 {
    let c = connections as u64;
    // headroom(l) = clamp(l / 8): solve l - headroom(l) >= c.
    (c..)
        .step_by(64)
        .find(|l| l.saturating_sub(headroom(*l)) >= c)
        .unwrap_or(u64::MAX)
}

/// The largest soft limit asked for when the hard limit is unlimited.
const UNLIMITED_SOFT: u64 = 1 << 20;

/// Raises the soft descriptor limit to the hard limit.
#[cfg(unix)]
pub fn raise() -> io::Result<Limit> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given, which
    // lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (soft, hard) = (rl.rlim_cur, rl.rlim_max);
    let target = if rl.rlim_max == libc::RLIM_INFINITY {
        UNLIMITED_SOFT.max(soft)
    } else {
        hard
    };
    if target <= soft {
        return Ok(Limit {
            soft,
            hard,
            raised_from: None,
        });
    }
    let raised = libc::rlimit {
        rlim_cur: target as libc::rlim_t,
        rlim_max: rl.rlim_max,
    };
    // SAFETY: setrlimit reads the struct it is given, which lives for the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Limit {
        soft: target,
        hard,
        raised_from: Some(soft),
    })
}

#[cfg(not(unix))]
pub fn raise() -> io::Result<Limit> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "descriptor limits are only read on Unix",
    ))
}

/// Why `max_clients` cannot all be served, if so: the descriptor limit
/// leaves room for fewer connections, or `--max-connections` is lower.
pub fn too_low(limit: &Limit, max_connections: usize, max_clients: usize) -> Option<String> {
    let room = connections_for(limit.soft);
    if room < max_clients {
        return Some(format!(
            "the descriptor limit ({} open files) leaves room for {room} connections, \
             fewer than --max-clients ({max_clients}): raise it to at least {} (ulimit -n, \
             LimitNOFILE= in a systemd unit, --ulimit nofile= for docker) or lower --max-clients",
            limit.soft,
            limit_for(max_clients)
        ));
    }
    (max_connections < max_clients).then(|| {
        format!("--max-connections ({max_connections}) is lower than --max-clients ({max_clients})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_for_connections() {
        assert_eq!(connections_for(256), 192);
        assert_eq!(connections_for(1024), 896);
        assert_eq!(connections_for(20_000), 20_000 - 1024);
        assert_eq!(connections_for(10), 0);
        for c in [1, 100, 192, 5000, 10_000, 1 << 20] {
            let l = limit_for(c);
            assert!(connections_for(l) >= c, "{c} -> {l}");
            assert!(
                connections_for(l - 64) < c || l == c as u64,
                "{c} -> {l} is not the lowest step"
            );
        }
    }

    #[test]
    fn raising_keeps_the_hard_limit() {
        let l = raise().expect("getrlimit");
        assert!(l.soft <= l.hard || l.hard as libc::rlim_t == libc::RLIM_INFINITY);
        assert_eq!(raise().expect("again").raised_from, None);
    }

    #[test]
    fn says_when_too_low() {
        let l = Limit {
            soft: 1024,
            hard: 1024,
            raised_from: None,
        };
        let why = too_low(&l, connections_for(1024), 10_000).expect("too low");
        assert!(why.contains("896") && why.contains("10000"), "{why}");
        assert_eq!(too_low(&l, connections_for(1024), 500), None);
        // A cap above the room does not hide a limit that is too low.
        assert!(too_low(&l, 100_000, 10_000).is_some());
        assert!(too_low(&l, 100, 500).is_some_and(|w| w.contains("--max-connections (100)")));
    }
}
