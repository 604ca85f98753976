//! Where the shards' executors run, and how long an idle one spins before
//! it parks (`corestate.first_core`, `pin_cores`, `spin_before_park_us`).

use std::fmt;
use std::time::Duration;

use shards::wal::FsyncPolicy;

/// Highest CPU number `corestate.first_core` may name.
pub const FIRST_CORE_MAX: u64 = 4095;

/// How long an idle executor polls before it parks when every write waits
/// for its fdatasync (`every_write`), unless configured: not at all.
///
/// A write's answer then waits for the disk (80–140 µs for one fdatasync on
/// our VMs), longer than any spin worth paying for: the shard's core is
/// blocked in the sync, and the core of the client's connection, when it
/// is another, spins out its wait and parks anyway; after the answer, the
/// shard's core spins again for a next request that may well go to the
/// other core. Measured (`bench-results/2026-12-06/spin-before-park/`, 2
/// shards, spinning 50 µs → not at all, medians of 4): apply 1×1
/// `every_write` 258 → 168 µs of CPU per op, p50 274 → 258 µs; create 1×1
/// 262 → 168 µs; every 16×16 and 64×16 cell +1–8 % ops/s, 6–12 % less CPU
/// per op; the watch cell's event p99 6.0 → 5.1 ms. What it costs: get 1×1
/// under `every_write`, 9.8k → 8.0k ops/s (p50 94 → 128 µs; 13.7k → 8.1k
/// in the A/B of the landed change beside it).
pub const SPIN_BEFORE_PARK_US_DURABLE_DEFAULT: u64 = 0;

/// The same when writes do not wait for the disk (`never`, `every_n`,
/// `every_ms`), unless configured.
///
/// Parking costs glommio a process-wide memory barrier (`membarrier`: an
/// inter-processor interrupt to every CPU running the process, 11 µs on
/// our VMs) and a wake-up costs the sleeping core's exit from idle; when a
/// request takes tens of microseconds, a short spin catches the client's
/// next one first. Measured as above: get 1×1 `never` 7.4k → 16.1k ops/s
/// (p50 132 → 53 µs, CPU per op 109 → 92 µs) and apply 1×1 `never` 6.4k
/// → 9.9k (p50 150 → 82 µs, CPU per op 129 → 136 µs) with 50 µs against
/// none. (`every_n` and `every_ms` sync off the request path, as `never`
/// does between syncs; not measured on their own.)
pub const SPIN_BEFORE_PARK_US_RELAXED_DEFAULT: u64 = 50;

/// Longest spin `corestate.spin_before_park_us` may ask for (10 ms: past
/// that an idle server burns a core for nothing it could measure).
pub const SPIN_BEFORE_PARK_US_MAX: u64 = 10_000;

/// Where the shards' executors run. Pinned (the default), shard `i` runs
/// on CPU `(first_core + i) mod CPUs`: one core per shard, and the shard
/// that owns an instance always runs on the same core. Several nodes (or
/// servers) on one machine should start at different cores — each would
/// otherwise put its shard 0 on CPU 0, and they would share it while other
/// cores idle — or leave placement to the kernel (`pin: false`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorePlacement {
    /// CPU of shard 0 (`corestate.first_core`).
    pub first_core: usize,
    /// Whether executors are pinned at all (`corestate.pin_cores`).
    pub pin: bool,
    /// How long an idle executor spins before it parks
    /// (`corestate.spin_before_park_us`); `None`: by the fsync policy
    /// ([`CorePlacement::spin_before_park`]).
    pub spin_before_park_us: Option<u64>,
}

impl Default for CorePlacement {
    fn default() -> Self {
        CorePlacement {
            first_core: 0,
            pin: true,
            spin_before_park_us: None,
        }
    }
}

impl fmt::Display for CorePlacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pin {
            write!(f, "pinned from CPU {}", self.first_core)
        } else {
            f.write_str("unpinned")
        }
    }
}

impl CorePlacement {
    /// The CPU shard `shard` runs on, on a machine with `cpus` CPUs, or
    /// `None` when the kernel places it.
    pub fn cpu_of(&self, shard: usize, cpus: usize) -> Option<usize> {
        self.pin.then(|| (self.first_core + shard) % cpus.max(1))
    }

    /// How long an idle executor spins before it parks under `fsync`: the
    /// configured time, or the policy's default.
    pub fn spin_before_park(&self, fsync: FsyncPolicy) -> Duration {
        let us = self.spin_before_park_us.unwrap_or(match fsync {
            FsyncPolicy::EveryWrite => SPIN_BEFORE_PARK_US_DURABLE_DEFAULT,
            FsyncPolicy::EveryN(_) | FsyncPolicy::EveryMs(_) | FsyncPolicy::Never => {
                SPIN_BEFORE_PARK_US_RELAXED_DEFAULT
            }
        });
        Duration::from_micros(us)
    }
}
