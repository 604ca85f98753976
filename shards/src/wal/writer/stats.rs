//! The WAL writer's counters (WAL_STATS, metrics), with the group-commit
//! latency histogram.

/// Upper bounds of the group-commit latency histogram (write + sync), in µs.
pub const COMMIT_LATENCY_BUCKETS_US: [u64; 10] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000,
];

/// Counters reported by WAL_STATS and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    pub records_appended: u64,
    pub bytes_appended: u64,
    pub writes: u64,
    pub syncs: u64,
    pub group_commits: u64,
    pub segments_created: u64,
    /// Group commits by latency: `[i]` counts those ≤ `COMMIT_LATENCY_BUCKETS_US[i]`
    /// (and above the previous bound); slower ones are only in the count.
    pub commit_latency_buckets: [u64; COMMIT_LATENCY_BUCKETS_US.len()],
    pub commit_latency_sum_us: u64,
}

impl WalStats {
    pub(super) fn record_commit_latency(&mut self, us: u64) {
        self.commit_latency_sum_us += us;
        if let Some(i) = COMMIT_LATENCY_BUCKETS_US.iter().position(|&b| us <= b) {
            self.commit_latency_buckets[i] += 1;
        }
    }
}
