//! WAL offsets: how every record gets a server-wide unique, mergeable position.
//!
//! # The scheme
//!
//! Each shard writes its own log, so a byte position cannot be the offset (two
//! shards would hand out the same numbers, and positions of different shards
//! say nothing about which record came first). Instead an offset is a
//! *hybrid logical clock* reading tagged with the shard that wrote it:
//!
//! ```text
//! offset = tick << SHARD_BITS | shard_id          (tick ≥ 1, shard_id < SHARDS_MAX)
//! ```
//!
//! * **Unique across the server**: the low bits name the shard, and one shard
//!   never hands out a tick twice.
//! * **Increasing in commit order on a shard**: a shard's next tick is
//!   `max(last_tick + 1, wall-clock tick, frontier)`, so it only ever grows —
//!   also across restarts, because recovery restores `last_tick` from the log.
//! * **Close to each other across shards**: `frontier` is the highest tick any
//!   shard has assigned (one shared atomic, touched once per group commit, not
//!   per record). A shard never assigns a tick below it, so a busy shard drags
//!   idle ones along and no shard's offsets lag far behind another's.
//!   The wall-clock floor (`TICK_MICROS` µs per tick since `OFFSET_EPOCH_UNIX_MS`)
//!   keeps offsets meaningful when the server restarts with an emptied log.
//!
//! # Merging shards by offset (watch streams, WAL_READ)
//!
//! A reader that wants one stream in increasing offset order keeps, per shard,
//! a *watermark*: a promise "this shard will never again produce an offset
//! below W". A shard's watermark is `(next_tick) << SHARD_BITS`, and it can
//! raise its floor to the frontier (or the wall clock) at any time, even when
//! idle, and publish that as its watermark. The merger then releases a record
//! with offset `o` once every shard's watermark is above `o`; records from one
//! shard arrive in offset order already, so a k-way merge of the shard streams
//! gated by the minimum watermark is exactly the global offset order.
//!
//! Offsets stay below 2^53 (exact in a JavaScript number) for 71 years after
//! the epoch: 47 tick bits × 16 µs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::env::Clock;

/// Low bits of an offset that name the shard.
pub const SHARD_BITS: u32 = 6;
/// Most shards a server can run (the shard id must fit in `SHARD_BITS`).
pub const SHARDS_MAX: usize = 1 << SHARD_BITS;
/// Largest offset there can be: offsets stay exact in a JavaScript number
/// (clients in JavaScript and JSON parsers that read numbers as doubles).
pub const OFFSET_MAX: u64 = (1 << 53) - 1;
/// Wall-clock resolution of one tick.
pub const TICK_MICROS: u64 = 16;
/// Years of ticks from the epoch that must fit below `OFFSET_MAX`.
const OFFSET_YEARS_MIN: u64 = 70;
const _: () = assert!(
    ((OFFSET_YEARS_MIN * 365 * 24 * 3600 * 1_000_000 / TICK_MICROS) << SHARD_BITS)
        + (SHARDS_MAX as u64 - 1)
        <= OFFSET_MAX,
    "70 years of offsets of every shard must stay exact in a double"
);
/// Ticks count from 2025-01-01T00:00:00Z.
pub const OFFSET_EPOCH_UNIX_MS: u64 = 1_735_689_600_000;

/// The shard that wrote the record at `offset`.
pub fn shard_of_offset(offset: u64) -> usize {
    (offset & (SHARDS_MAX as u64 - 1)) as usize
}

/// The tick part of `offset`.
pub fn tick_of_offset(offset: u64) -> u64 {
    offset >> SHARD_BITS
}

/// Compose an offset.
pub fn make_offset(tick: u64, shard: usize) -> u64 {
    debug_assert!(shard < SHARDS_MAX);
    (tick << SHARD_BITS) | shard as u64
}

/// The server-wide highest tick assigned so far, shared by all shards.
#[derive(Clone, Default)]
pub struct Frontier(Arc<AtomicU64>);

impl Frontier {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    pub fn raise(&self, tick: u64) {
        self.0.fetch_max(tick, Ordering::AcqRel);
    }

    /// An offset above every record committed so far on any shard, and at or
    /// below every record a shard begins from now on.
    pub fn next_offset_floor(&self) -> u64 {
        make_offset(self.get() + 1, 0)
    }
}

/// The tick of a Unix time in microseconds.
pub fn tick_at(unix_micros: u64) -> u64 {
    unix_micros.saturating_sub(OFFSET_EPOCH_UNIX_MS * 1000) / TICK_MICROS
}

/// The wall-clock tick now.
pub fn wall_clock_tick(clock: &dyn Clock) -> u64 {
    tick_at(clock.unix_micros())
}

/// One shard's offset source.
pub struct OffsetClock {
    shard: usize,
    last_tick: u64,
    frontier: Frontier,
    clock: Arc<dyn Clock>,
}

impl OffsetClock {
    /// `last_tick`: the highest tick found in this shard's log at recovery.
    pub fn new(shard: usize, last_tick: u64, frontier: Frontier, clock: Arc<dyn Clock>) -> Self {
        assert!(shard < SHARDS_MAX, "shard id {shard} exceeds SHARDS_MAX");
        frontier.raise(last_tick);
        OffsetClock {
            shard,
            last_tick,
            frontier,
            clock,
        }
    }

    /// Raise the floor before a group of records: reads the clock and the
    /// frontier once, so assigning each record is a plain increment.
    pub fn begin_group(&mut self) {
        // Strictly above every tick any shard has committed: a record begun
        // now sorts after everything acknowledged so far (what lets WATCH_ALL
        // start "after every acknowledged write", see `Frontier::next_offset_floor`).
        let floor = wall_clock_tick(&*self.clock).max(self.frontier.get() + 1);
        if floor > self.last_tick {
            // Leave `last_tick` one below the floor so the next record gets it.
            self.last_tick = floor - 1;
        }
    }

    /// The next offset on this shard.
    pub fn next_offset(&mut self) -> u64 {
        self.last_tick += 1;
        make_offset(self.last_tick, self.shard)
    }

    /// A record of this shard that another member of its replicated group
    /// stamped (an entry applied here): no later offset of this clock may
    /// be at or below it, whoever leads next.
    pub fn observe_tick(&mut self, tick: u64) {
        self.last_tick = self.last_tick.max(tick);
        self.frontier.raise(tick);
    }

    /// Publish this shard's progress after a group (one atomic per group).
    pub fn end_group(&self) {
        self.frontier.raise(self.last_tick);
    }

    /// Lowest offset this shard can still produce: every later record has an
    /// offset ≥ this value (the shard's watermark).
    pub fn watermark(&self) -> u64 {
        make_offset(self.last_tick + 1, 0)
    }

    /// The offset the next record would get if written now, for WATCH_ALL's
    /// "current write position" answer.
    pub fn peek_next(&self) -> u64 {
        make_offset(self.last_tick + 1, self.shard)
    }

    /// The shard this clock stamps offsets for.
    pub fn shard(&self) -> usize {
        self.shard
    }

    pub fn last_tick(&self) -> u64 {
        self.last_tick
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sys() -> Arc<dyn Clock> {
        Arc::new(crate::env::SystemClock)
    }

    #[test]
    fn offsets_are_unique_and_increasing_per_shard() {
        let frontier = Frontier::new();
        let mut a = OffsetClock::new(0, 0, frontier.clone(), sys());
        let mut b = OffsetClock::new(1, 0, frontier.clone(), sys());
        let mut seen = std::collections::HashSet::new();
        let (mut last_a, mut last_b) = (0, 0);
        for _ in 0..1000 {
            a.begin_group();
            let oa = a.next_offset();
            a.end_group();
            b.begin_group();
            let ob = b.next_offset();
            b.end_group();
            assert!(oa > last_a && ob > last_b);
            assert!(seen.insert(oa) && seen.insert(ob));
            assert_eq!(shard_of_offset(oa), 0);
            assert_eq!(shard_of_offset(ob), 1);
            last_a = oa;
            last_b = ob;
        }
    }

    #[test]
    fn an_idle_shard_is_dragged_past_a_busy_one() {
        let frontier = Frontier::new();
        let mut busy = OffsetClock::new(0, 0, frontier.clone(), sys());
        let mut idle = OffsetClock::new(1, 0, frontier.clone(), sys());
        busy.begin_group();
        let mut last = 0;
        for _ in 0..100_000 {
            last = busy.next_offset();
        }
        busy.end_group();
        idle.begin_group();
        assert!(idle.next_offset() > last);
    }

    #[test]
    fn recovery_continues_above_the_recovered_tick() {
        let far_future = wall_clock_tick(&crate::env::SystemClock) + 1_000_000;
        let mut c = OffsetClock::new(3, far_future, Frontier::new(), sys());
        c.begin_group();
        assert_eq!(tick_of_offset(c.next_offset()), far_future + 1);
    }

    #[test]
    fn offsets_fit_in_a_javascript_number_for_decades() {
        let seventy_years_ticks = 70 * 365 * 24 * 3600 * 1_000_000 / TICK_MICROS;
        assert!(make_offset(seventy_years_ticks, SHARDS_MAX - 1) < (1u64 << 53));
    }
}
