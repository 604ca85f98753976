//! The watchdog: a plain thread that aborts the process, naming the shard,
//! when a shard's executor has stopped making progress — the glommio hang
//! seen once (both executors parked forever) must not leave a server that
//! accepts connections and never answers.
//!
//! Each shard counts its loop turns (`heartbeat`). A turn is bounded in time
//! whatever the requests (`SHARD_TURN_TIME_MAX_US`), and an idle shard still
//! turns every `SHARD_TICK_INTERVAL_MS`, so a shard that is merely busy keeps
//! counting; only an executor that stopped running does not.
//!
//! A paused process is not a stalled shard: SIGSTOP, a debugger, a frozen
//! cgroup or a paused VM stop every thread, the watchdog's too. The watchdog
//! notices that its own check came much later than planned and starts its
//! clocks over instead of judging the shards by a gap nobody could run in.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::shutdown::ShutdownRequest;

/// A shard whose turn count has not moved for this long has stalled.
pub const WATCHDOG_STALL_LIMIT_MS: u64 = 5_000;
/// How often the watchdog looks.
pub const WATCHDOG_CHECK_INTERVAL_MS: u64 = 500;
/// A look that comes this much later than planned means the process (or the
/// machine) was paused: nobody ran, so nobody stalled.
pub const WATCHDOG_PAUSE_GAP_MS: u64 = 2_000;

/// What the watchdog remembers between looks.
pub struct Watch {
    counts: Vec<u64>,
    progressed_at: Vec<Instant>,
    looked_at: Instant,
}

/// What one look concluded.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    /// The process was not running for this long: clocks start over.
    Paused(Duration),
    /// This shard has not turned for this long.
    Stalled(usize, Duration),
}

impl Watch {
    pub fn new(shards: usize, now: Instant) -> Self {
        Watch {
            counts: vec![0; shards],
            progressed_at: vec![now; shards],
            looked_at: now,
        }
    }

    /// Look at the shards' turn counts as read `now`.
    pub fn look(&mut self, now: Instant, counts: &[u64]) -> Verdict {
        let since_last = now.saturating_duration_since(self.looked_at);
        self.looked_at = now;
        let planned = Duration::from_millis(WATCHDOG_CHECK_INTERVAL_MS);
        if since_last > planned + Duration::from_millis(WATCHDOG_PAUSE_GAP_MS) {
            self.counts.copy_from_slice(counts);
            self.progressed_at.fill(now);
            return Verdict::Paused(since_last);
        }
        let limit = Duration::from_millis(WATCHDOG_STALL_LIMIT_MS);
        for (shard, &count) in counts.iter().enumerate() {
            if count != self.counts[shard] {
                self.counts[shard] = count;
                self.progressed_at[shard] = now;
            } else {
                let quiet = now.saturating_duration_since(self.progressed_at[shard]);
                if quiet > limit {
                    return Verdict::Stalled(shard, quiet);
                }
            }
        }
        Verdict::Fine
    }
}

/// Start the watchdog thread over the shards' turn counters. It stands down
/// once shutdown begins (stopped shards no longer turn).
pub fn start(heartbeats: Vec<Arc<AtomicU64>>, shutdown: ShutdownRequest) {
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            let mut watch = Watch::new(heartbeats.len(), Instant::now());
            loop {
                std::thread::sleep(Duration::from_millis(WATCHDOG_CHECK_INTERVAL_MS));
                if shutdown.is_begun() {
                    return;
                }
                let counts: Vec<u64> = heartbeats
                    .iter()
                    .map(|h| h.load(Ordering::Relaxed))
                    .collect();
                match watch.look(Instant::now(), &counts) {
                    Verdict::Fine => {}
                    Verdict::Paused(gap) => tracing::warn!(
                        "the process did not run for {} ms (paused or starved); the watchdog starts its clocks over",
                        gap.as_millis()
                    ),
                    Verdict::Stalled(shard, quiet) => {
                        let msg = format!(
                            "fatal: shard {shard} has not made progress for {} ms (watchdog limit {WATCHDOG_STALL_LIMIT_MS} ms); aborting",
                            quiet.as_millis()
                        );
                        tracing::error!("{msg}");
                        eprintln!("corestate: {msg}");
                        std::process::abort();
                    }
                }
            }
        })
        .expect("spawning the watchdog thread");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_busy_shard_that_keeps_turning_is_fine() {
        let t0 = Instant::now();
        let mut w = Watch::new(2, t0);
        for i in 1..=40u64 {
            let now = t0 + ms(500 * i);
            assert_eq!(w.look(now, &[i, i * 3]), Verdict::Fine);
        }
    }

    #[test]
    fn a_shard_that_stops_turning_is_stalled() {
        let t0 = Instant::now();
        let mut w = Watch::new(2, t0);
        let mut verdict = Verdict::Fine;
        for i in 1..=12u64 {
            verdict = w.look(t0 + ms(500 * i), &[i, 7]);
            if verdict != Verdict::Fine {
                break;
            }
        }
        assert!(
            matches!(verdict, Verdict::Stalled(1, d) if d > ms(5_000)),
            "{verdict:?}"
        );
    }

    #[test]
    fn a_pause_is_not_a_stall() {
        let t0 = Instant::now();
        let mut w = Watch::new(1, t0);
        assert_eq!(w.look(t0 + ms(500), &[1]), Verdict::Fine);
        // SIGSTOP for 9 s: nobody ran, the counters did not move.
        assert!(matches!(
            w.look(t0 + ms(9_500), &[1]),
            Verdict::Paused(d) if d >= ms(9_000)
        ));
        // Resumed: the shard gets a full limit again, counted from the pause.
        for t in (10_000..=14_000).step_by(500) {
            assert_eq!(w.look(t0 + ms(t), &[1]), Verdict::Fine, "at {t} ms");
        }
    }
}
