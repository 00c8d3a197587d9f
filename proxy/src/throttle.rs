//! Log lines that a client or an event can repeat at will (accept errors,
//! unparseable messages, consumers connecting) are written at most once per
//! [`INTERVAL_MS`] per call site, with the number of lines left out since
//! the last one: a flood of events cannot become a flood of log.

use std::sync::atomic::{AtomicU64, Ordering};

/// At most one line per call site in this many milliseconds.
pub const INTERVAL_MS: u64 = 10_000;

/// Lines left out by every gate (`walcast_log_lines_suppressed_total`).
pub static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// The gate of one call site.
pub struct LogGate {
    /// When the next line may be written (ms on the monotonic clock of [`now_ms`]).
    next_ms: AtomicU64,
    /// Lines left out since the last one written.
    held: AtomicU64,
}

impl LogGate {
    pub const fn new() -> LogGate {
        LogGate {
            next_ms: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(lines left out since the last one)` when a line may be written
    /// now; `None` (and the line counted) otherwise.
    pub fn pass(&self) -> Option<u64> {
        self.pass_at(now_ms())
    }

    fn pass_at(&self, now: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + INTERVAL_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        None
    }
}

impl Default for LogGate {
    fn default() -> Self {
        LogGate::new()
    }
}

/// Milliseconds since the first call, on a clock that never goes back;
/// starts at [`INTERVAL_MS`] so the first line always passes.
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    INTERVAL_MS + start.elapsed().as_millis() as u64
}

/// `limited!(warn, error = %e, "accept failed")`: a `tracing` event at the
/// given level, written at most once per [`INTERVAL_MS`] from this call
/// site, with a `repeated` field counting the lines left out before it.
#[macro_export]
macro_rules! limited {
    ($level:ident, $($arg:tt)+) => {{
        static GATE: $crate::throttle::LogGate = $crate::throttle::LogGate::new();
        if let Some(repeated) = GATE.pass() {
            tracing::$level!(repeated, $($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_left_out() {
        let gate = LogGate::new();
        let t0 = 50_000;
        assert_eq!(gate.pass_at(t0), Some(0));
        for i in 1..1000 {
            assert_eq!(gate.pass_at(t0 + i % INTERVAL_MS), None);
        }
        assert_eq!(gate.pass_at(t0 + INTERVAL_MS), Some(999));
        assert_eq!(gate.pass_at(t0 + INTERVAL_MS + 1), None);
        assert_eq!(gate.pass_at(t0 + 3 * INTERVAL_MS), Some(1));
    }
}
