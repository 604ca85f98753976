//! A latency histogram with fixed bounds in µs, cheap enough for the hot
//! path (one comparison scan and two adds): the WAL's group commits and a
//! group member's turn commits, exported to Prometheus.

/// Upper bounds of the buckets, in µs.
pub const LATENCY_BUCKETS_US: [u64; 10] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000,
];

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// `[i]` counts the latencies ≤ `LATENCY_BUCKETS_US[i]` (and above the
    /// previous bound); slower ones are only in `count`.
    pub buckets: [u64; LATENCY_BUCKETS_US.len()],
    pub sum_us: u64,
    pub count: u64,
}

impl LatencyHistogram {
    pub fn record(&mut self, us: u64) {
        self.count += 1;
        self.sum_us += us;
        if let Some(i) = LATENCY_BUCKETS_US.iter().position(|&b| us <= b) {
            self.buckets[i] += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_latency_lands_in_the_first_bucket_that_holds_it() {
        let mut h = LatencyHistogram::default();
        for us in [0, 50, 51, 100_000, 100_001] {
            h.record(us);
        }
        assert_eq!(h.count, 5);
        assert_eq!(h.sum_us, 50 + 51 + 100_000 + 100_001);
        assert_eq!(h.buckets[0], 2, "0 and 50");
        assert_eq!(h.buckets[1], 1, "51");
        assert_eq!(h.buckets[9], 1, "100 ms");
        assert_eq!(
            h.buckets.iter().sum::<u64>(),
            4,
            "above the last bound: count only"
        );
    }
}
