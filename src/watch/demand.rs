//! Whether anyone watches, and what the merges do when nobody does.
//!
//! Every shard publishes after every commit (`shards::shard::publishing`),
//! and each publication woke core 0's merge, which then woke every other
//! core's replica with the events it released: two cross-core wakes per
//! write even with no subscriber anywhere. At one request at a time that
//! was a fifth of a durable apply's CPU (346 → 269 µs per op with the
//! linger below, bench-results/2026-12-06/unwatched-linger).
//!
//! So a merge whose events nobody reads takes its publications in bulk: after
//! each round it waits `MERGE_UNWATCHED_LINGER_MS` (or until kicked) before
//! it listens again, and publications sent meanwhile queue without waking its
//! core. Nothing else changes: every publication is still merged, in order;
//! the ring is kept empty without watchers anyway; a new live subscription
//! starts from the shards' frontier, not from what the merge released
//! (`Merger::live_start`). The first watcher on a core (a WATCH, a
//! WebSocket stream, a webhook) marks the core watched and kicks that
//! core's merge and core 0's (which feeds it), so from then on every
//! publication is taken at once, as before.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a merge nobody reads lets publications queue before it takes
/// them (milliseconds). Bounds the queue to this much of the write rate
/// (about 2,500 publications at 250k writes/s) and the wait of a watcher's
/// first events to a kick, not to this.
pub const MERGE_UNWATCHED_LINGER_MS: u64 = 10;

/// Per acceptor core: whether a connection or webhook there holds a watch,
/// and the kick that ends its merge's linger.
pub struct WatchDemand {
    linger: Duration,
    watched: Vec<AtomicBool>,
    kicks: Vec<(flume::Sender<()>, flume::Receiver<()>)>,
}

impl WatchDemand {
    pub fn new(cores: usize) -> Arc<WatchDemand> {
        Self::lingering(cores, Duration::from_millis(MERGE_UNWATCHED_LINGER_MS))
    }

    /// With another linger (tests).
    pub fn lingering(cores: usize, linger: Duration) -> Arc<WatchDemand> {
        Arc::new(WatchDemand {
            linger,
            watched: (0..cores).map(|_| AtomicBool::new(false)).collect(),
            kicks: (0..cores).map(|_| flume::bounded(1)).collect(),
        })
    }

    /// `core`'s merge has watchers (`true`) or has none left. A new watcher
    /// kicks that core's merge and core 0's, which feeds it.
    pub fn set_watched(&self, core: usize, watched: bool) {
        let Some(flag) = self.watched.get(core) else {
            return;
        };
        // SeqCst pairs with `is_watched`: a merge that read "unwatched" and
        // lingers sees the kick sent after this store.
        if flag.swap(watched, Ordering::SeqCst) != watched && watched {
            self.kick(core);
            if core != 0 {
                self.kick(0);
            }
        }
    }

    fn kick(&self, core: usize) {
        if let Some((tx, _)) = self.kicks.get(core) {
            let _ = tx.try_send(());
        }
    }

    /// Whether `core`'s merge must take publications at once: core 0's when
    /// any core is watched (it feeds them all), another's when it is.
    pub fn is_watched(&self, core: usize) -> bool {
        if core == 0 {
            self.watched.iter().any(|w| w.load(Ordering::SeqCst))
        } else {
            self.watched
                .get(core)
                .is_some_and(|w| w.load(Ordering::SeqCst))
        }
    }

    /// Wait out a linger (`MERGE_UNWATCHED_LINGER_MS`), or less when `core`
    /// is kicked.
    pub async fn linger(&self, core: usize) {
        let Some((_, kicked)) = self.kicks.get(core) else {
            return;
        };
        let timer = async {
            glommio::timer::sleep(self.linger).await;
        };
        let kick = async {
            let _ = kicked.recv_async().await;
        };
        futures_lite::future::or(timer, kick).await;
    }
}

/// A merge's place in the demand: which core it serves.
#[derive(Clone)]
pub struct Seat {
    pub demand: Arc<WatchDemand>,
    pub core: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_zero_is_watched_when_any_core_is_and_the_others_for_themselves() {
        let d = WatchDemand::new(3);
        assert!(!d.is_watched(0) && !d.is_watched(1) && !d.is_watched(2));
        d.set_watched(2, true);
        assert!(d.is_watched(0), "core 0 feeds core 2's merge");
        assert!(!d.is_watched(1));
        assert!(d.is_watched(2));
        d.set_watched(2, false);
        assert!(!d.is_watched(0) && !d.is_watched(2));
    }

    #[test]
    fn a_first_watcher_kicks_its_core_and_core_zero_once() {
        let d = WatchDemand::new(2);
        d.set_watched(1, true);
        assert!(d.kicks[1].1.try_recv().is_ok());
        assert!(d.kicks[0].1.try_recv().is_ok());
        // Still watched: no new kick.
        d.set_watched(1, true);
        assert!(d.kicks[1].1.try_recv().is_err());
        assert!(d.kicks[0].1.try_recv().is_err());
        // Leaving kicks nobody.
        d.set_watched(1, false);
        assert!(d.kicks[0].1.try_recv().is_err());
    }

    #[test]
    fn a_kick_ends_a_linger_at_once() {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .spawn(|| async {
                let long = Duration::from_secs(30);
                let d = WatchDemand::lingering(1, long);
                let started = std::time::Instant::now();
                d.set_watched(0, true);
                d.linger(0).await;
                assert!(started.elapsed() < long, "the kick did not end the linger");
                // Unkicked, a linger lasts its length.
                let short = Duration::from_millis(20);
                let d = WatchDemand::lingering(1, short);
                let started = std::time::Instant::now();
                d.linger(0).await;
                assert!(started.elapsed() >= short);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
