//! The WAL writer's counters (WAL_STATS, metrics), with the group-commit
//! latency histogram.

use crate::latency::LatencyHistogram;

/// Counters reported by WAL_STATS and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    pub records_appended: u64,
    pub bytes_appended: u64,
    pub writes: u64,
    pub syncs: u64,
    pub group_commits: u64,
    pub segments_created: u64,
    /// Group commits by latency (write + sync of one group).
    pub commit_latency: LatencyHistogram,
}
