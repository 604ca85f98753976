//! The clock interface: wall-clock time for what is stored or shown
//! (timestamps, the wall-clock floor of offset ticks), monotonic time for
//! intervals (group-commit latency, snapshot slices, timeouts).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync {
    /// Unix time, in microseconds.
    fn unix_micros(&self) -> u64;
    /// Monotonic time since an arbitrary origin (never goes back).
    fn monotonic(&self) -> Duration;

    /// Unix time, in milliseconds.
    fn now_ms(&self) -> u64 {
        self.unix_micros() / 1000
    }

    /// Monotonic time elapsed since the reading `since`.
    fn elapsed(&self, since: Duration) -> Duration {
        self.monotonic().saturating_sub(since)
    }
}

/// The machine's clocks.
pub struct SystemClock;

fn origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

impl Clock for SystemClock {
    fn unix_micros(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0)
    }

    fn monotonic(&self) -> Duration {
        origin().elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_moves_forward() {
        let c = SystemClock;
        let (a, t) = (c.monotonic(), c.unix_micros());
        std::thread::sleep(Duration::from_millis(2));
        assert!(c.elapsed(a) >= Duration::from_millis(2));
        assert!(c.unix_micros() > t);
        assert_eq!(c.now_ms(), c.unix_micros() / 1000);
    }
}
