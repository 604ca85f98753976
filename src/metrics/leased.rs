//! The counters of answers written through a lease (`server::connection`):
//! the thread that wrote one — usually a shard's, not the acceptor core
//! whose counters they belong to — adds it here at once, so a scrape counts
//! every answer the client has, even when the connection has not woken
//! since. Atomics, unlike the core's own plain counters: two threads add
//! to them. Each acceptor core has one set (`Metrics::leased`), added to
//! its counters when they are copied for a scrape.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use shards::ErrorCode;

use super::{latency_sample, Counters, LeaseOutcome, ERROR_CODE_SLOTS, OP_SLOTS};
use crate::protocol::op::Op;

#[derive(Default)]
struct OpSeries {
    name: OnceLock<&'static str>,
    count: AtomicU64,
    buckets: [AtomicU64; 9],
    sum_nanos: AtomicU64,
}

#[derive(Default)]
struct CodeSeries {
    name: OnceLock<&'static str>,
    count: AtomicU64,
}

pub struct LeasedCounters {
    requests: [OpSeries; OP_SLOTS],
    errors: [CodeSeries; ERROR_CODE_SLOTS],
    written_whole: AtomicU64,
}

impl Default for LeasedCounters {
    fn default() -> Self {
        LeasedCounters {
            requests: std::array::from_fn(|_| OpSeries::default()),
            errors: std::array::from_fn(|_| CodeSeries::default()),
            written_whole: AtomicU64::new(0),
        }
    }
}

impl LeasedCounters {
    /// The whole answer to `op` went out through a lease after `elapsed`.
    pub fn answered(&self, op: Op, elapsed: Duration, error: Option<ErrorCode>) {
        let relaxed = Ordering::Relaxed;
        if let Some(series) = self.requests.get(op as usize) {
            series.name.get_or_init(|| op.name());
            let (nanos, bucket) = latency_sample(elapsed);
            series.sum_nanos.fetch_add(nanos, relaxed);
            if let Some(bucket) = bucket {
                series.buckets[bucket].fetch_add(1, relaxed);
            }
            series.count.fetch_add(1, relaxed);
        }
        if let Some(series) = error.and_then(|code| {
            let s = self.errors.get(code as usize)?;
            s.name.get_or_init(|| code.as_str());
            Some(s)
        }) {
            series.count.fetch_add(1, relaxed);
        }
        self.written_whole.fetch_add(1, relaxed);
    }

    /// Add these to a copy of the core's own counters.
    pub(super) fn add_to(&self, c: &mut Counters) {
        let relaxed = Ordering::Relaxed;
        for (mine, theirs) in c.requests.iter_mut().zip(&self.requests) {
            let Some(&name) = theirs.name.get() else {
                continue;
            };
            mine.name.get_or_insert(name);
            mine.count += theirs.count.load(relaxed);
            mine.sum_nanos = mine.sum_nanos.wrapping_add(theirs.sum_nanos.load(relaxed));
            for (a, b) in mine.buckets.iter_mut().zip(&theirs.buckets) {
                *a += b.load(relaxed);
            }
        }
        for (mine, theirs) in c.errors.iter_mut().zip(&self.errors) {
            if let Some(&name) = theirs.name.get() {
                mine.name.get_or_insert(name);
                mine.count += theirs.count.load(relaxed);
            }
        }
        c.leased_answers[LeaseOutcome::Whole as usize] += self.written_whole.load(relaxed);
    }
}
