//! Prometheus metrics (docs/PROTOCOL.md §13.6): the counters the request path updates,
//! and the text exposition a scrape renders.
//!
//! The request path only touches plain counters owned by its acceptor
//! core's executor (`Metrics`, one per core): one add per request for the
//! operation, one for the latency bucket, one for an error code. Everything
//! that is a level rather than an event — open connections, subscriptions
//! and their lag, shard mailbox depths, WAL counters, process figures — is
//! read when `/metrics` is scraped (`scrape`), so it costs nothing between
//! scrapes. A scrape asks every acceptor core for a copy of its counters
//! and levels (`crate::server::cores`) and adds them up.
//!
//! Names: the metrics rstmdb 0.3 defines keep its `rstmdb_` names, so
//! existing dashboards work; corestate's own (per shard, refusals, watch
//! lag) are `corestate_*`. Differences from 0.3, all deliberate:
//! * `rstmdb_requests_total` counts WATCH_* too, and a BATCH counts once
//!   (its inner operations are not counted separately);
//! * `rstmdb_subscriptions_active` is exact: it falls when a subscription
//!   ends, including by disconnect;
//! * the WAL read counters count what WAL_READ, watch catch-up and recovery
//!   read; replication is reported per shard group (`corestate_group_*`,
//!   `group.rs`), not with 0.3's replica series.
//!
//! Labelled series appear after their first observation, as in 0.3.

pub mod group;
pub mod http;
pub mod leased;
pub mod process;

use std::cell::RefCell;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use shards::ErrorCode;

use crate::protocol::op::Op;
use leased::LeasedCounters;

/// Upper bounds of the request latency histogram, in seconds (PROTOCOL.md §13.6).
pub const REQUEST_DURATION_BUCKETS_SECONDS: [f64; 9] =
    [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
/// The same bounds in nanoseconds, for the hot path.
const REQUEST_DURATION_BUCKETS_NANOS: [u64; 9] = [
    1_000_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];
/// Slots for per-operation series; more than the 25 operations.
const OP_SLOTS: usize = 32;
/// Slots for per-error-code series; more than the 19 codes.
const ERROR_CODE_SLOTS: usize = 32;

#[derive(Clone, Copy, Default)]
struct OpSeries {
    name: Option<&'static str>,
    count: u64,
    /// Non-cumulative: `buckets[i]` counts requests in `(bound[i-1], bound[i]]`.
    buckets: [u64; 9],
    sum_nanos: u64,
}

#[derive(Clone, Copy, Default)]
struct CodeSeries {
    name: Option<&'static str>,
    count: u64,
}

/// The kind of a watch subscription, as labelled in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchKind {
    Instance,
    All,
}

impl WatchKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WatchKind::Instance => "instance",
            WatchKind::All => "all",
        }
    }
}

/// The event counters themselves: plain numbers, so that one acceptor
/// core's counters can be copied to the core that renders a scrape and
/// added to the others' (`absorb`).
#[derive(Clone)]
pub struct Counters {
    connections_total: u64,
    requests: [OpSeries; OP_SLOTS],
    errors: [CodeSeries; ERROR_CODE_SLOTS],
    events_forwarded: [u64; 2],
    /// Answers the producing thread wrote through a lease: whole, and in
    /// part (the connection wrote the rest) — `LeaseOutcome`.
    leased_answers: [u64; 2],
}

/// How an answer lent a connection's socket went out: whole (counted by
/// its writer, `leased::LeasedCounters`) or in part
/// (`Metrics::answer_leased_in_part`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// The producing thread wrote the whole frame.
    Whole = 0,
    /// The socket took part of it; the connection wrote the rest.
    Part = 1,
}

impl LeaseOutcome {
    fn as_str(self) -> &'static str {
        match self {
            LeaseOutcome::Whole => "whole",
            LeaseOutcome::Part => "part",
        }
    }
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            connections_total: 0,
            requests: [OpSeries::default(); OP_SLOTS],
            errors: [CodeSeries::default(); ERROR_CODE_SLOTS],
            events_forwarded: [0; 2],
            leased_answers: [0; 2],
        }
    }
}

impl Counters {
    /// Add another core's counters to these.
    pub fn absorb(&mut self, other: &Counters) {
        self.connections_total += other.connections_total;
        for (mine, theirs) in self.requests.iter_mut().zip(&other.requests) {
            mine.name = mine.name.or(theirs.name);
            mine.count += theirs.count;
            mine.sum_nanos = mine.sum_nanos.wrapping_add(theirs.sum_nanos);
            for (a, b) in mine.buckets.iter_mut().zip(&theirs.buckets) {
                *a += b;
            }
        }
        for (mine, theirs) in self.errors.iter_mut().zip(&other.errors) {
            mine.name = mine.name.or(theirs.name);
            mine.count += theirs.count;
        }
        for (a, b) in self
            .events_forwarded
            .iter_mut()
            .zip(&other.events_forwarded)
        {
            *a += b;
        }
        for (a, b) in self.leased_answers.iter_mut().zip(&other.leased_answers) {
            *a += b;
        }
    }

    pub fn connections_total(&self) -> u64 {
        self.connections_total
    }

    /// Requests answered for `op` so far.
    pub fn requests(&self, op: Op) -> u64 {
        self.requests.get(op as usize).map_or(0, |s| s.count)
    }

    /// Append the counters' exposition.
    pub fn render(&self, out: &mut Exposition) {
        out.header(
            "rstmdb_requests_total",
            "counter",
            "Requests answered, by operation.",
        );
        let seen_ops = || self.requests.iter().filter_map(|s| Some((s.name?, s)));
        for (op, series) in seen_ops() {
            out.sample(
                "rstmdb_requests_total",
                &[("operation", op)],
                series.count as f64,
            );
        }
        out.header(
            "rstmdb_errors_total",
            "counter",
            "Error responses, by RCP error code.",
        );
        for (code, series) in self.errors.iter().filter_map(|s| Some((s.name?, s))) {
            out.sample(
                "rstmdb_errors_total",
                &[("code", code)],
                series.count as f64,
            );
        }
        out.header(
            "rstmdb_request_duration_seconds",
            "histogram",
            "Time from reading a request to its answer being ready to write, by operation.",
        );
        for (op, series) in seen_ops() {
            let mut cumulative = 0u64;
            for (bound, bucket) in REQUEST_DURATION_BUCKETS_SECONDS.iter().zip(&series.buckets) {
                cumulative += bucket;
                out.sample(
                    "rstmdb_request_duration_seconds_bucket",
                    &[("operation", op), ("le", &format_float(*bound))],
                    cumulative as f64,
                );
            }
            out.sample(
                "rstmdb_request_duration_seconds_bucket",
                &[("operation", op), ("le", "+Inf")],
                series.count as f64,
            );
            out.sample(
                "rstmdb_request_duration_seconds_sum",
                &[("operation", op)],
                series.sum_nanos as f64 / 1e9,
            );
            out.sample(
                "rstmdb_request_duration_seconds_count",
                &[("operation", op)],
                series.count as f64,
            );
        }
        out.header(
            "rstmdb_events_forwarded_total",
            "counter",
            "Watch events written to subscribers, by subscription type.",
        );
        for kind in [WatchKind::Instance, WatchKind::All] {
            out.sample(
                "rstmdb_events_forwarded_total",
                &[("type", kind.as_str())],
                self.events_forwarded[kind as usize] as f64,
            );
        }
        out.header(
            "corestate_leased_answers_total",
            "counter",
            "Answers the owning shard wrote to the client's socket itself, lent by \
             a connection with one request in flight: whole, or in part (the \
             connection wrote the rest).",
        );
        for outcome in [LeaseOutcome::Whole, LeaseOutcome::Part] {
            out.sample(
                "corestate_leased_answers_total",
                &[("written", outcome.as_str())],
                self.leased_answers[outcome as usize] as f64,
            );
        }
    }
}

/// One acceptor core's event counters; see the module comment. Only its
/// own executor touches them, except the answers written through leases
/// (`leased`), which their writers add to from other threads.
#[derive(Default)]
pub struct Metrics {
    counters: RefCell<Counters>,
    leased: Arc<LeasedCounters>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// A connection was accepted (within the limit).
    pub fn connection_accepted(&self) {
        self.counters.borrow_mut().connections_total += 1;
    }

    /// An answer went out through a lease in part; the connection wrote
    /// the rest (and counts the request as it writes it).
    pub fn answer_leased_in_part(&self) {
        self.counters.borrow_mut().leased_answers[LeaseOutcome::Part as usize] += 1;
    }

    /// Where the writer of a whole answer through a lease counts it.
    pub fn leased(&self) -> Arc<LeasedCounters> {
        self.leased.clone()
    }

    /// A request was answered. `op` is `None` for a request whose envelope
    /// could not be read (it still counts as an error).
    pub fn request_answered(&self, op: Option<Op>, elapsed: Duration, error: Option<ErrorCode>) {
        let mut c = self.counters.borrow_mut();
        if let Some(op) = op {
            let index = op as usize;
            debug_assert!(index < OP_SLOTS);
            if let Some(series) = c.requests.get_mut(index) {
                series.name.get_or_insert(op.name());
                series.count += 1;
                let (nanos, bucket) = latency_sample(elapsed);
                series.sum_nanos = series.sum_nanos.wrapping_add(nanos);
                if let Some(bucket) = bucket {
                    series.buckets[bucket] += 1;
                }
            }
        }
        if let Some(code) = error {
            let index = code as usize;
            debug_assert!(index < ERROR_CODE_SLOTS);
            if let Some(series) = c.errors.get_mut(index) {
                series.name.get_or_insert(code.as_str());
                series.count += 1;
            }
        }
    }

    /// `n` events were written to subscribers of `kind`.
    pub fn events_forwarded(&self, kind: WatchKind, n: u64) {
        self.counters.borrow_mut().events_forwarded[kind as usize] += n;
    }

    /// A copy of the counters now, answers written through leases included.
    pub fn snapshot(&self) -> Counters {
        let mut copy = self.counters.borrow().clone();
        self.leased.add_to(&mut copy);
        copy
    }

    /// Requests answered for `op` so far.
    pub fn requests(&self, op: Op) -> u64 {
        self.snapshot().requests(op)
    }
}

/// A request latency as the histogram takes it: nanoseconds, and its
/// bucket (`None`: above the last bound).
fn latency_sample(elapsed: Duration) -> (u64, Option<usize>) {
    let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    let bucket = REQUEST_DURATION_BUCKETS_NANOS
        .iter()
        .position(|&b| nanos <= b);
    (nanos, bucket)
}

/// A value as Prometheus prints it: integers without a fraction.
fn format_float(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// A Prometheus text-format (0.0.4) document being written.
pub struct Exposition {
    text: String,
}

impl Default for Exposition {
    fn default() -> Self {
        Self::new()
    }
}

impl Exposition {
    pub fn new() -> Self {
        Exposition {
            text: String::with_capacity(16 * 1024),
        }
    }

    pub fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                self.text.push_str(key);
                self.text.push_str("=\"");
                for c in value.chars() {
                    match c {
                        '\\' => self.text.push_str("\\\\"),
                        '"' => self.text.push_str("\\\""),
                        '\n' => self.text.push_str("\\n"),
                        c => self.text.push(c),
                    }
                }
                self.text.push('"');
            }
            self.text.push('}');
        }
        self.text.push(' ');
        self.text.push_str(&format_float(value));
        self.text.push('\n');
    }

    /// A metric with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.header(name, kind, help);
        self.sample(name, &[], value);
    }

    pub fn finish(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_series_appear_on_first_use() {
        let m = Metrics::new();
        let mut out = Exposition::new();
        m.snapshot().render(&mut out);
        let text = out.finish();
        assert!(!text.contains("operation=\"PING\""), "{text}");

        m.request_answered(Some(Op::Ping), Duration::from_micros(500), None);
        m.request_answered(Some(Op::Ping), Duration::from_millis(20), None);
        m.request_answered(Some(Op::Ping), Duration::from_secs(3), None);
        m.request_answered(
            Some(Op::GetInstance),
            Duration::from_micros(1),
            Some(ErrorCode::InstanceNotFound),
        );
        let mut out = Exposition::new();
        m.snapshot().render(&mut out);
        let text = out.finish();
        for line in [
            "rstmdb_requests_total{operation=\"PING\"} 3",
            "rstmdb_requests_total{operation=\"GET_INSTANCE\"} 1",
            "rstmdb_errors_total{code=\"INSTANCE_NOT_FOUND\"} 1",
            "rstmdb_request_duration_seconds_bucket{operation=\"PING\",le=\"0.001\"} 1",
            "rstmdb_request_duration_seconds_bucket{operation=\"PING\",le=\"0.01\"} 1",
            "rstmdb_request_duration_seconds_bucket{operation=\"PING\",le=\"0.025\"} 2",
            "rstmdb_request_duration_seconds_bucket{operation=\"PING\",le=\"1\"} 2",
            "rstmdb_request_duration_seconds_bucket{operation=\"PING\",le=\"+Inf\"} 3",
            "rstmdb_request_duration_seconds_count{operation=\"PING\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        assert_eq!(m.requests(Op::Ping), 3);
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = Exposition::new();
        out.sample("x", &[("a", "q\"b\\n\n")], 1.5);
        assert_eq!(out.finish(), "x{a=\"q\\\"b\\\\n\\n\"} 1.5\n");
    }
}
