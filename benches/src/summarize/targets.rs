//! corestate against rstmdb: the ratios per cell (results.json
//! `comparisons`) and the goals of the issues (`targets`), each with its
//! limit and whether this matrix met it.

use serde::Serialize;

use super::cells::{baseline_of, find, metric, ratio, Cell};
use super::{BASELINE, SUBJECT};

/// Shape at which the targets are stated.
pub const TARGET_SHAPE: (u64, u64) = (16, 16);
/// Shape of the batch target ("atomic 10-op batches at 16 connections").
pub const BATCH_TARGET_SHAPE: (u64, u64) = (16, 1);
/// Batch events/s corestate must reach, as a multiple of rstmdb's.
pub const BATCH_EVENTS_RATIO_MIN: f64 = 5.0;
/// Highest acceptable watch event latency p99 (µs).
pub const WATCH_P99_US_MAX: f64 = 5000.0;
/// Issue 13 goals: durable writes at 16x16 at most this fraction of
/// rstmdb's CPU per operation;
pub const DURABLE_WRITE_CPU_RATIO_MAX: f64 = 0.5;
/// apply 1x1 every_write p50 at most this fraction of rstmdb's;
pub const APPLY_1X1_P50_RATIO_MAX: f64 = 0.8;
/// and at most this far above one fdatasync of the data disk;
pub const APPLY_1X1_P50_OVER_FDATASYNC_US_MAX: f64 = 60.0;
/// get 16x16 and apply 16x16 never at least this multiple of rstmdb's.
pub const THROUGHPUT_RATIO_MIN: f64 = 1.5;

#[derive(Debug, Serialize)]
pub(super) struct Comparison {
    fsync: String,
    workload: String,
    connections: u64,
    pipeline: u64,
    throughput_ratio: Option<f64>,
    server_cpu_per_op_ratio: Option<f64>,
    p99_ratio: Option<f64>,
}

#[derive(Debug, Serialize)]
pub(super) struct Target {
    /// The workload whose runs measure it.
    pub(super) workload: String,
    pub(super) name: String,
    pub(super) goal: String,
    /// "x" (a ratio), "%" (a fraction, shown as a percentage) or "µs".
    pub(super) unit: &'static str,
    pub(super) measured: Option<f64>,
    required: f64,
    /// True when a higher measured value is better.
    higher_is_better: bool,
    met: Option<bool>,
    pub(super) note: String,
}

pub(super) fn comparisons(cells: &[Cell]) -> Vec<Comparison> {
    cells
        .iter()
        .filter(|c| c.key.server == SUBJECT)
        .map(|c| {
            let base = baseline_of(cells, c);
            let m = |name| ratio(metric(Some(c), name), metric(base, name));
            Comparison {
                fsync: c.key.fsync.clone(),
                workload: c.key.workload.clone(),
                connections: c.key.connections,
                pipeline: c.key.pipeline,
                throughput_ratio: m("ops_per_sec"),
                server_cpu_per_op_ratio: m("server_cpu_us_per_op"),
                p99_ratio: m("p99_us"),
            }
        })
        .collect()
}

pub(super) fn targets(cells: &[Cell], fdatasync_us: Option<f64>) -> Vec<Target> {
    let shape = TARGET_SHAPE;
    let ops = |fsync: &str, workload: &str, server: &str| {
        metric(find(cells, fsync, workload, shape, server), "ops_per_sec")
    };
    let mut out = Vec::new();
    let mut push = |unit: &'static str,
                    name: String,
                    goal: &str,
                    measured: Option<f64>,
                    required: f64,
                    higher: bool| {
        let met = measured.map(|m| if higher { m >= required } else { m <= required });
        let note = match (measured, met) {
            (None, _) => "not measured".to_string(),
            (Some(_), Some(true)) => "met".to_string(),
            (Some(m), _) if higher => format!("missed: {:.2}x of the goal", m / required),
            (Some(m), _) => format!("missed: {:.2}x over the limit", m / required),
        };
        let workload = name.split_whitespace().next().unwrap_or("").to_string();
        out.push(Target {
            workload,
            name,
            goal: goal.to_string(),
            unit,
            measured,
            required,
            higher_is_better: higher,
            met,
            note,
        });
    };
    // Issue 13, goal 1: CPU per operation at most rstmdb's in every cell
    // both servers ran, and at most half of it for durable writes at 16x16.
    let mut shapes: Vec<(String, String, (u64, u64))> = cells
        .iter()
        .filter(|c| c.key.server == SUBJECT && c.key.workload != "watch")
        .map(|c| (c.key.fsync.clone(), c.key.workload.clone(), c.key.shape()))
        .collect();
    shapes.dedup();
    for (fsync, workload, (c, p)) in &shapes {
        let cpu_at = |server: &str| {
            metric(
                find(cells, fsync, workload, (*c, *p), server),
                "server_cpu_us_per_op",
            )
        };
        let durable_write =
            fsync == "every_write" && (*c, *p) == shape && workload != "get" && workload != "batch";
        let (goal, limit) = if durable_write {
            (
                "corestate / rstmdb CPU per op <= 0.5",
                DURABLE_WRITE_CPU_RATIO_MAX,
            )
        } else {
            ("corestate / rstmdb CPU per op <= 1", 1.0)
        };
        push(
            "x",
            format!("{workload} {c}x{p} {fsync} server CPU per op"),
            goal,
            ratio(cpu_at(SUBJECT), cpu_at(BASELINE)),
            limit,
            false,
        );
    }
    // Goal 2: durable apply at 1x1 close to the disk.
    let apply_p50 = |server: &str| {
        metric(
            find(cells, "every_write", "apply", (1, 1), server),
            "p50_us",
        )
    };
    push(
        "x",
        "apply 1x1 every_write p50 latency vs rstmdb".into(),
        "corestate / rstmdb p50 <= 0.8",
        ratio(apply_p50(SUBJECT), apply_p50(BASELINE)),
        APPLY_1X1_P50_RATIO_MAX,
        false,
    );
    push(
        "µs",
        "apply 1x1 every_write p50 latency above one fdatasync".into(),
        "p50 - fdatasync (measured on the data disk in the same run) <= 60 µs",
        apply_p50(SUBJECT)
            .zip(fdatasync_us)
            .map(|(p50, sync)| p50 - sync),
        APPLY_1X1_P50_OVER_FDATASYNC_US_MAX,
        false,
    );
    // Goal 3: throughput where the disk is not the limit.
    for (workload, fsync) in [("get", "every_write"), ("get", "never"), ("apply", "never")] {
        push(
            "x",
            format!("{workload} 16x16 {fsync} throughput vs rstmdb"),
            "corestate / rstmdb throughput >= 1.5",
            ratio(
                ops(fsync, workload, SUBJECT),
                ops(fsync, workload, BASELINE),
            ),
            THROUGHPUT_RATIO_MIN,
            true,
        );
    }
    let (bc, bp) = BATCH_TARGET_SHAPE;
    let batch_events = |server: &str| {
        metric(
            find(cells, "every_write", "batch", BATCH_TARGET_SHAPE, server),
            "batch_events_per_sec",
        )
    };
    push(
        "x",
        format!("batch {bc}x{bp} every_write events/s vs rstmdb"),
        "atomic cross-shard batch events/s >= 5x rstmdb durable batch events/s",
        ratio(batch_events(SUBJECT), batch_events(BASELINE)),
        BATCH_EVENTS_RATIO_MIN,
        true,
    );
    let watch = find(cells, "every_write", "watch", shape, SUBJECT);
    push(
        "%",
        "watch 16x16 every_write delivered (worst subscriber, worst run)".into(),
        "100 % of events delivered to every subscriber",
        watch.and_then(|c| {
            c.values["watch_delivered_min"]
                .iter()
                .chain(&c.values["watch_delivered_total_min"])
                .flatten()
                .copied()
                .reduce(f64::min)
        }),
        1.0,
        true,
    );
    push(
        "µs",
        "watch 16x16 every_write event latency p99".into(),
        "p99 <= 5 ms",
        metric(watch, "watch_p99_us"),
        WATCH_P99_US_MAX,
        false,
    );
    out
}
