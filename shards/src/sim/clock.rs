//! Simulated time. The executor moves it when every task waits for a
//! timer; every monotonic reading also moves it by `READ_TICK_NS`, so code
//! that loops "until a time budget is spent" (snapshot slices) ends after a
//! number of readings that is the same on every replay.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::env::Clock;

/// Time each monotonic reading takes.
pub const READ_TICK_NS: u64 = 1_000;

pub struct SimClock {
    /// Unix time at monotonic zero, microseconds.
    unix_base_us: u64,
    mono_ns: AtomicU64,
}

impl SimClock {
    pub fn new(unix_base_us: u64) -> Self {
        SimClock {
            unix_base_us,
            mono_ns: AtomicU64::new(0),
        }
    }

    /// Now, without moving the clock.
    pub fn now_ns(&self) -> u64 {
        self.mono_ns.load(Ordering::SeqCst)
    }

    /// Move the clock forward to `ns` (never back).
    pub fn advance_to(&self, ns: u64) {
        self.mono_ns.fetch_max(ns, Ordering::SeqCst);
    }

    pub fn advance_by(&self, d: Duration) {
        self.mono_ns
            .fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for SimClock {
    fn unix_micros(&self) -> u64 {
        self.unix_base_us + self.now_ns() / 1_000
    }

    fn monotonic(&self) -> Duration {
        Duration::from_nanos(self.mono_ns.fetch_add(READ_TICK_NS, Ordering::SeqCst))
    }
}
