//! `corestate-bench summarize DIR`: turns the per-run JSON files that
//! run-matrix.sh leaves in DIR/runs/ into DIR/results.json (medians per
//! cell, corestate/rstmdb ratios, the issue's targets) and DIR/summary.md
//! (the same as tables, with machine facts and the exact commands).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::charts::{self, Series};
use crate::report::NOISY_OTHER_CORES;

/// The server the ratios are about (numerator).
pub const SUBJECT: &str = "corestate";
/// The server it is compared with (denominator).
pub const BASELINE: &str = "rstmdb";
/// Shape at which the issue's targets are stated.
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
/// The file run-matrix.sh writes with the data disk's fdatasync latency.
pub const FDATASYNC_FILE: &str = "fdatasync.json";

/// Median fdatasync latency the matrix measured on its data disk, if any.
fn fdatasync_median_us(dir: &Path) -> Option<f64> {
    let text = fs::read_to_string(dir.join(FDATASYNC_FILE)).ok()?;
    serde_json::from_str::<Value>(&text).ok()?["median_us"].as_f64()
}

/// Metrics taken from each run, by name; `None` when a run lacks one.
const METRICS: &[(&str, &[&str])] = &[
    ("ops_per_sec", &["results", "ops_per_sec"]),
    ("p50_us", &["results", "latency", "p50_us"]),
    ("p90_us", &["results", "latency", "p90_us"]),
    ("p99_us", &["results", "latency", "p99_us"]),
    ("p999_us", &["results", "latency", "p999_us"]),
    ("max_us", &["results", "latency", "max_us"]),
    (
        "server_cpu_us_per_op",
        &["results", "server_cpu", "per_op_us"],
    ),
    (
        "server_cores_busy",
        &["results", "server_cpu", "cores_busy"],
    ),
    (
        "harness_cpu_us_per_op",
        &["results", "harness_cpu", "per_op_us"],
    ),
    ("wal_syncs_per_sec", &["results", "wal", "fsyncs_per_sec"]),
    ("ops_per_sync", &["results", "wal", "ops_per_fsync"]),
    (
        "other_cores_busy",
        &["results", "machine_load", "other_cores_busy"],
    ),
    ("max_stall_ms", &["results", "max_stall_ms"]),
    ("errors_total", &["results", "errors_total"]),
    (
        "batch_events_per_sec",
        &["results", "batch", "events_per_sec"],
    ),
    (
        "batch_server_cpu_us_per_event",
        &["results", "batch", "server_cpu_us_per_event"],
    ),
    (
        "watch_delivered_min",
        &["results", "watch", "delivered_fraction_min"],
    ),
    (
        "watch_delivered_total_min",
        &["results", "watch", "delivered_fraction_total_min"],
    ),
    (
        "watch_events_per_sec_min",
        &["results", "watch", "events_per_sec_min"],
    ),
    (
        "watch_events_per_sec_mean",
        &["results", "watch", "events_per_sec_mean"],
    ),
    ("watch_p50_us", &["results", "watch", "latency", "p50_us"]),
    ("watch_p99_us", &["results", "watch", "latency", "p99_us"]),
    ("watch_max_us", &["results", "watch", "latency", "max_us"]),
    (
        "watch_order_violations",
        &["results", "watch", "order_violations"],
    ),
];

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
struct CellKey {
    fsync: String,
    workload: String,
    /// connections × pipeline, for ordering.
    in_flight: u64,
    connections: u64,
    pipeline: u64,
    server: String,
}

#[derive(Debug, Serialize)]
struct Cell {
    #[serde(flatten)]
    key: CellKey,
    runs: usize,
    failed_runs: usize,
    median: BTreeMap<&'static str, Option<f64>>,
    values: BTreeMap<&'static str, Vec<Option<f64>>>,
    /// Watch runs in which some subscriber missed events.
    lossy_runs: usize,
    commands: Vec<String>,
    problems: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Comparison {
    fsync: String,
    workload: String,
    connections: u64,
    pipeline: u64,
    throughput_ratio: Option<f64>,
    server_cpu_per_op_ratio: Option<f64>,
    p99_ratio: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Target {
    /// The workload whose runs measure it.
    workload: String,
    name: String,
    goal: String,
    /// "x" (a ratio), "%" (a fraction, shown as a percentage) or "µs".
    unit: &'static str,
    measured: Option<f64>,
    required: f64,
    /// True when a higher measured value is better.
    higher_is_better: bool,
    met: Option<bool>,
    note: String,
}

fn pick<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn median(values: &[Option<f64>]) -> Option<f64> {
    let mut present: Vec<f64> = values.iter().flatten().copied().collect();
    if present.is_empty() {
        return None;
    }
    present.sort_by(f64::total_cmp);
    let mid = present.len() / 2;
    Some(if present.len() % 2 == 1 {
        present[mid]
    } else {
        (present[mid - 1] + present[mid]) / 2.0
    })
}

fn load_runs(dir: &Path) -> Result<Vec<Value>, String> {
    let runs_dir = dir.join("runs");
    let mut paths: Vec<PathBuf> = fs::read_dir(&runs_dir)
        .map_err(|e| format!("{}: {e}", runs_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let mut runs = Vec::with_capacity(paths.len());
    for path in paths {
        let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        runs.push(v);
    }
    if runs.is_empty() {
        return Err(format!("no run files in {}", runs_dir.display()));
    }
    Ok(runs)
}

fn cells(runs: &[Value]) -> Vec<Cell> {
    let mut grouped: BTreeMap<CellKey, Vec<&Value>> = BTreeMap::new();
    for run in runs {
        let text = |path: &[&str]| {
            pick(run, path)
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string()
        };
        let num = |path: &[&str]| pick(run, path).and_then(Value::as_u64).unwrap_or(0);
        let (connections, pipeline) = (
            num(&["config", "connections"]),
            num(&["config", "pipeline"]),
        );
        let key = CellKey {
            fsync: text(&["tags", "fsync"]),
            workload: text(&["config", "workload"]),
            in_flight: connections * pipeline,
            connections,
            pipeline,
            server: text(&["tags", "server"]),
        };
        grouped.entry(key).or_default().push(run);
    }
    grouped
        .into_iter()
        .map(|(key, runs)| {
            let values: BTreeMap<&'static str, Vec<Option<f64>>> = METRICS
                .iter()
                .map(|(name, path)| {
                    (
                        *name,
                        runs.iter()
                            .map(|r| pick(r, path).and_then(Value::as_f64))
                            .collect(),
                    )
                })
                .collect();
            let median = values.iter().map(|(k, v)| (*k, median(v))).collect();
            let failed_runs = runs.iter().filter(|r| r["ok"] != Value::Bool(true)).count();
            let lossy_runs = runs
                .iter()
                .filter(|r| r["results"]["watch"]["loss"] == Value::Bool(true))
                .count();
            let mut problems = Vec::new();
            for r in &runs {
                if let Some(list) = r["problems"].as_array() {
                    problems.extend(list.iter().filter_map(Value::as_str).map(String::from));
                }
                if let Some(errors) = r["results"]["errors"].as_object() {
                    problems.extend(errors.iter().map(|(code, n)| format!("{code}: {n}")));
                }
            }
            Cell {
                key,
                runs: runs.len(),
                failed_runs,
                median,
                values,
                lossy_runs,
                commands: runs
                    .iter()
                    .filter_map(|r| r["command"].as_str().map(String::from))
                    .collect(),
                problems,
            }
        })
        .collect()
}

fn find<'a>(
    cells: &'a [Cell],
    fsync: &str,
    workload: &str,
    shape: (u64, u64),
    server: &str,
) -> Option<&'a Cell> {
    cells.iter().find(|c| {
        c.key.fsync == fsync
            && c.key.workload == workload
            && (c.key.connections, c.key.pipeline) == shape
            && c.key.server == server
    })
}

fn metric(cell: Option<&Cell>, name: &str) -> Option<f64> {
    cell.and_then(|c| c.median.get(name).copied().flatten())
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn comparisons(cells: &[Cell]) -> Vec<Comparison> {
    cells
        .iter()
        .filter(|c| c.key.server == SUBJECT)
        .map(|c| {
            let shape = (c.key.connections, c.key.pipeline);
            let base = find(cells, &c.key.fsync, &c.key.workload, shape, BASELINE);
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

fn targets(cells: &[Cell], fdatasync_us: Option<f64>) -> Vec<Target> {
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
        .map(|c| {
            (
                c.key.fsync.clone(),
                c.key.workload.clone(),
                (c.key.connections, c.key.pipeline),
            )
        })
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

fn fmt_num(v: Option<f64>) -> String {
    match v {
        None => "n/a".into(),
        Some(v) if v >= 100.0 => {
            let n = v.round() as u64;
            let digits = n.to_string();
            let mut out = String::new();
            for (i, c) in digits.chars().enumerate() {
                if i > 0 && (digits.len() - i).is_multiple_of(3) {
                    out.push(',');
                }
                out.push(c);
            }
            out
        }
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

fn fmt_ratio(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.2}x"))
}

/// A count (medians of counts may be halves).
fn fmt_count(v: Option<f64>) -> String {
    match v {
        Some(v) if v < 100.0 && v.fract() != 0.0 => format!("{v:.1}"),
        Some(v) if v < 100.0 => format!("{v:.0}"),
        other => fmt_num(other),
    }
}

fn fmt_percent(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{:.2} %", 100.0 * v))
}

fn fmt_measured(t: &Target) -> String {
    match t.unit {
        "%" => fmt_percent(t.measured),
        "µs" => t
            .measured
            .map_or("n/a".into(), |v| format!("{} µs", fmt_num(Some(v)))),
        _ => fmt_ratio(t.measured),
    }
}

/// Median of a metric over both a subject cell and its baseline, formatted
/// `subject / baseline`.
fn pair(
    me: Option<&Cell>,
    base: Option<&Cell>,
    name: &str,
    f: fn(Option<f64>) -> String,
) -> String {
    format!("{} / {}", f(metric(me, name)), f(metric(base, name)))
}

fn batch_section(s: &mut String, cells: &[Cell]) {
    let rows: Vec<&Cell> = cells
        .iter()
        .filter(|c| c.key.workload == "batch" && c.key.server == SUBJECT)
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "## Atomic batches
"
    );
    let _ = writeln!(
        s,
        "Each request is one BATCH, mode `atomic`, of APPLY_EVENTs on distinct instances owned \
         by the connection and spread evenly over all of the server's shards (corestate places \
         an instance on shard crc32c(id) % shards; rstmdb has no shards and its \
         \"atomic\" BATCH is not atomic). Every batch must succeed, with every op's result \
         verified. Events/s = batches/s × ops per batch; latency is per batch.\n"
    );
    let _ = writeln!(
        s,
        "| fsync | conns x pipeline | corestate events/s | rstmdb events/s | ratio | \
         batches/s (cs / rstmdb) | batch p50 µs (cs / rstmdb) | batch p99 µs (cs / rstmdb) | \
         server CPU µs/event (cs / rstmdb) | syncs/s (cs / rstmdb) |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for cell in rows {
        let shape = (cell.key.connections, cell.key.pipeline);
        let base = find(cells, &cell.key.fsync, "batch", shape, BASELINE);
        let me = Some(cell);
        let _ = writeln!(
            s,
            "| {} | {}x{} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell.key.fsync,
            shape.0,
            shape.1,
            fmt_num(metric(me, "batch_events_per_sec")),
            fmt_num(metric(base, "batch_events_per_sec")),
            fmt_ratio(ratio(
                metric(me, "batch_events_per_sec"),
                metric(base, "batch_events_per_sec")
            )),
            pair(me, base, "ops_per_sec", fmt_num),
            pair(me, base, "p50_us", fmt_num),
            pair(me, base, "p99_us", fmt_num),
            pair(me, base, "batch_server_cpu_us_per_event", fmt_num),
            pair(me, base, "wal_syncs_per_sec", fmt_num),
        );
    }
    let _ = writeln!(s);
}

fn watch_section(s: &mut String, cells: &[Cell]) {
    let rows: Vec<&Cell> = cells.iter().filter(|c| c.key.workload == "watch").collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "## Watch
"
    );
    let _ = writeln!(
        s,
        "WATCH_ALL subscribers (`include_ctx` false) on their own connections while the \
         writers run the apply workload. Each apply's payload carries `\"t\"`, its send time \
         (Unix ns); event latency = the time the subscriber read the event − t (one machine, \
         one clock). *Delivered* = events a subscriber received for the applies sent in the \
         measured window ÷ those applies acknowledged (subscribers keep reading after the \
         writers stop, until complete, 2 s of silence or the drain timeout); shown for the \
         worst subscriber. *Events/s* is per subscriber (the worst one). Order violations: \
         events that arrived after an event with a higher `wal_offset`.\n"
    );
    let _ = writeln!(
        s,
        "| server | fsync | conns x pipeline | applies/s | delivered (worst, median run) | \
         runs with loss | events/s per subscriber (worst) | event p50 µs | event p99 µs | \
         event max µs | order violations | apply p99 µs |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for cell in rows {
        let me = Some(cell);
        let _ = writeln!(
            s,
            "| {} | {} | {}x{} | {} | {} | {} of {} | {} | {} | {} | {} | {} | {} |",
            cell.key.server,
            cell.key.fsync,
            cell.key.connections,
            cell.key.pipeline,
            fmt_num(metric(me, "ops_per_sec")),
            fmt_percent(metric(me, "watch_delivered_min")),
            cell.lossy_runs,
            cell.runs,
            fmt_num(metric(me, "watch_events_per_sec_min")),
            fmt_num(metric(me, "watch_p50_us")),
            fmt_num(metric(me, "watch_p99_us")),
            fmt_num(metric(me, "watch_max_us")),
            fmt_count(metric(me, "watch_order_violations")),
            fmt_num(metric(me, "p99_us")),
        );
    }
    let _ = writeln!(s);
}

fn markdown(dir: &Path, runs: &[Value], cells: &[Cell], targets: &[Target]) -> String {
    let mut s = String::new();
    let first = &runs[0];
    let m = &first["machine"];
    let _ = writeln!(s, "# corestate vs rstmdb 0.3.0 — benchmark matrix\n");
    let _ = writeln!(
        s,
        "Machine: {} vCPU ({}), {:.1} GiB RAM, kernel {}. Server and harness share the machine; \
         the harness is one thread. Each cell is the median of {} repetitions; the two servers \
         alternate run by run. Every response was verified (ids, status, result).\n",
        m["nproc"],
        m["cpu_model"].as_str().unwrap_or("?"),
        m["mem_total_kib"].as_f64().unwrap_or(0.0) / 1024.0 / 1024.0,
        m["kernel"].as_str().unwrap_or("?"),
        cells.iter().map(|c| c.runs).max().unwrap_or(0),
    );
    let other_all: Vec<Option<f64>> = cells
        .iter()
        .flat_map(|c| c.values["other_cores_busy"].iter().copied())
        .collect();
    if let Some(other) = median(&other_all).filter(|&o| o > NOISY_OTHER_CORES) {
        let _ = writeln!(
            s,
            "> **Noisy machine:** other processes used a median of {other:.2} cores (of {}) \
             during the measured windows, so absolute numbers are low and latency tails are \
             inflated for both servers. Ratios are more trustworthy than absolute values, \
             but not fully: the servers do not suffer equally from a lack of CPU. See \
             \"Measurement quality\".\n",
            m["nproc"]
        );
    }
    let c = &first["config"];
    let _ = writeln!(
        s,
        "Each run: {} s measured after {} s warm-up, {} pre-created instances (apply/get), \
         payload {} bytes. `ops/s` is verified responses per second; latency is per request \
         (send to verified response), in µs; CPU is the server process's user+system time \
         (/proc) per operation; syncs/s from WAL_STATS `io_stats.fsyncs` (n/a when the server \
         does not offer it).\n",
        c["duration_secs"], c["warmup_secs"], c["instances"], c["payload_bytes"]
    );
    let fsyncs: Vec<&String> = {
        let mut v: Vec<&String> = cells.iter().map(|c| &c.key.fsync).collect();
        v.dedup();
        v
    };
    for fsync in fsyncs {
        let _ = writeln!(s, "## fsync `{fsync}`\n");
        let _ = writeln!(
            s,
            "| workload | conns x pipeline | corestate ops/s | rstmdb ops/s | ratio | \
             corestate p50 / p99 µs | rstmdb p50 / p99 µs | corestate CPU µs/op | \
             rstmdb CPU µs/op | CPU ratio | corestate syncs/s | rstmdb syncs/s |"
        );
        let _ = writeln!(
            s,
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for cell in cells
            .iter()
            .filter(|c| &c.key.fsync == fsync && c.key.server == SUBJECT)
        {
            let shape = (cell.key.connections, cell.key.pipeline);
            let base = find(cells, fsync, &cell.key.workload, shape, BASELINE);
            let me = Some(cell);
            let lat = |c: Option<&Cell>| {
                format!(
                    "{} / {}",
                    fmt_num(metric(c, "p50_us")),
                    fmt_num(metric(c, "p99_us"))
                )
            };
            let failed = |c: Option<&Cell>| {
                c.filter(|c| c.failed_runs > 0)
                    .map(|c| format!(" ⚠{}/{} failed", c.failed_runs, c.runs))
                    .unwrap_or_default()
            };
            let _ = writeln!(
                s,
                "| {} | {}x{} | {}{} | {}{} | {} | {} | {} | {} | {} | {} | {} | {} |",
                cell.key.workload,
                shape.0,
                shape.1,
                fmt_num(metric(me, "ops_per_sec")),
                failed(me),
                fmt_num(metric(base, "ops_per_sec")),
                failed(base),
                fmt_ratio(ratio(
                    metric(me, "ops_per_sec"),
                    metric(base, "ops_per_sec")
                )),
                lat(me),
                lat(base),
                fmt_num(metric(me, "server_cpu_us_per_op")),
                fmt_num(metric(base, "server_cpu_us_per_op")),
                fmt_ratio(ratio(
                    metric(me, "server_cpu_us_per_op"),
                    metric(base, "server_cpu_us_per_op")
                )),
                fmt_num(metric(me, "wal_syncs_per_sec")),
                fmt_num(metric(base, "wal_syncs_per_sec")),
            );
        }
        let _ = writeln!(s);
    }
    if cells.iter().any(|c| c.key.workload == "batch") {
        let _ = writeln!(
            s,
            "(In the tables above a `batch` operation is one BATCH; see \"Atomic batches\" for \
             events/s. A `watch` row is the writers' apply load.)\n"
        );
    }
    batch_section(&mut s, cells);
    watch_section(&mut s, cells);
    let _ = writeln!(s, "## Goals (issue 13: CPU per request and latency)\n");
    let _ = writeln!(s, "| target | goal | measured | result |");
    let _ = writeln!(s, "|---|---|---:|---|");
    // Only targets whose workload this matrix ran.
    for t in targets
        .iter()
        .filter(|t| cells.iter().any(|c| c.key.workload == t.workload))
    {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            t.name,
            t.goal,
            fmt_measured(t),
            t.note
        );
    }
    let _ = writeln!(s);

    let other: Vec<Option<f64>> = cells
        .iter()
        .flat_map(|c| c.values["other_cores_busy"].iter().copied())
        .collect();
    let harness: Vec<Option<f64>> = cells
        .iter()
        .flat_map(|c| c.values["harness_cpu_us_per_op"].iter().copied())
        .collect();
    let _ = writeln!(s, "## Measurement quality\n");
    let _ = writeln!(
        s,
        "- CPU used by other processes during the measured windows: median {} cores, max {} \
         cores (of {}).",
        fmt_num(median(&other)),
        fmt_num(other.iter().flatten().copied().reduce(f64::max)),
        m["nproc"]
    );
    let _ = writeln!(
        s,
        "- Harness CPU per operation: median {} µs.",
        fmt_num(median(&harness))
    );
    let stalls: Vec<String> = cells
        .iter()
        .filter(|c| metric(Some(c), "max_stall_ms").is_some_and(|v| v >= 1000.0))
        .map(|c| {
            format!(
                "{} {} {} {}x{}",
                c.key.server, c.key.fsync, c.key.workload, c.key.connections, c.key.pipeline
            )
        })
        .collect();
    if !stalls.is_empty() {
        let _ = writeln!(
            s,
            "- Cells with a stall of 1 s or more (median run): {}",
            stalls.join("; ")
        );
    }
    let failing: Vec<&Cell> = cells.iter().filter(|c| c.failed_runs > 0).collect();
    if failing.is_empty() {
        let _ = writeln!(s, "- No run had an error.");
    } else {
        for c in failing {
            let _ = writeln!(
                s,
                "- **{} {} {} {}x{}: {} of {} runs failed**: {}",
                c.key.server,
                c.key.fsync,
                c.key.workload,
                c.key.connections,
                c.key.pipeline,
                c.failed_runs,
                c.runs,
                c.problems.join("; ")
            );
        }
    }
    let _ = writeln!(s, "\n## Commands\n");
    if let Ok(matrix) = fs::read_to_string(dir.join("matrix.txt")) {
        let _ = writeln!(s, "```\n{}```\n", matrix);
    }
    let _ = writeln!(
        s,
        "One harness command per server (all are in results.json):\n"
    );
    let _ = writeln!(s, "```");
    for server in [SUBJECT, BASELINE] {
        if let Some(cmd) = cells
            .iter()
            .find(|c| c.key.server == server)
            .and_then(|c| c.commands.first())
        {
            let _ = writeln!(s, "{cmd}");
        }
    }
    let _ = writeln!(s, "```");
    s
}

/// Per workload: throughput and p99 latency against concurrency, a line
/// per (server, fsync policy). Returns the files written.
fn draw_charts(dir: &Path, cells: &[Cell]) -> Result<Vec<PathBuf>, String> {
    let chart_dir = dir.join("charts");
    fs::create_dir_all(&chart_dir).map_err(|e| format!("{}: {e}", chart_dir.display()))?;
    let mut workloads: Vec<&String> = cells.iter().map(|c| &c.key.workload).collect();
    workloads.sort();
    workloads.dedup();
    let mut policies: Vec<&String> = cells.iter().map(|c| &c.key.fsync).collect();
    policies.sort();
    policies.dedup();
    let mut written = Vec::new();
    for workload in workloads {
        let mut shapes: Vec<(u64, u64, u64)> = cells
            .iter()
            .filter(|c| &c.key.workload == workload)
            .map(|c| (c.key.in_flight, c.key.connections, c.key.pipeline))
            .collect();
        shapes.sort();
        shapes.dedup();
        let labels: Vec<String> = shapes.iter().map(|s| format!("{}x{}", s.1, s.2)).collect();
        for (metric_name, file, title, y_desc) in [
            ("ops_per_sec", "throughput", "throughput", "ops/s (log)"),
            ("p99_us", "p99", "p99 latency", "p99 latency, µs (log)"),
        ] {
            let mut series = Vec::new();
            for (server_index, server) in [SUBJECT, BASELINE].iter().enumerate() {
                for policy in &policies {
                    let points: Vec<(usize, f64)> = shapes
                        .iter()
                        .enumerate()
                        .filter_map(|(i, s)| {
                            metric(
                                find(cells, policy, workload, (s.1, s.2), server),
                                metric_name,
                            )
                            .map(|v| (i, v))
                        })
                        .collect();
                    if !points.is_empty() {
                        series.push(Series {
                            label: format!("{server} {policy}"),
                            points,
                            style: server_index * 2 + usize::from(policy.as_str() != "every_write"),
                        });
                    }
                }
            }
            if series.is_empty() {
                continue;
            }
            let path = chart_dir.join(format!("{workload}-{file}.svg"));
            written.push(charts::line_chart(
                &path,
                &format!("{workload}: {title}"),
                y_desc,
                &labels,
                &series,
            )?);
        }
    }
    Ok(written)
}

/// Writes results.json and summary.md (and the charts) into `dir`;
/// returns their paths.
pub fn summarize(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let runs = load_runs(dir)?;
    let cells = cells(&runs);
    let chart_paths = draw_charts(dir, &cells)?;
    let comparisons = comparisons(&cells);
    let targets = targets(&cells, fdatasync_median_us(dir));
    let results = serde_json::json!({
        "generated_by": format!("corestate-bench {} summarize", env!("CARGO_PKG_VERSION")),
        "machine": runs[0]["machine"],
        "runs": runs.len(),
        "cells": cells,
        "comparisons": comparisons,
        "targets": targets,
    });
    let json_path = dir.join("results.json");
    let text = serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?;
    fs::write(&json_path, text + "\n").map_err(|e| format!("{}: {e}", json_path.display()))?;
    let md_path = dir.join("summary.md");
    let mut md = markdown(dir, &runs, &cells, &targets);
    if !chart_paths.is_empty() {
        md.push_str("\n## Charts\n\n");
        for path in &chart_paths {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            md.push_str(&format!(
                "![{}](charts/{name})\n",
                name.trim_end_matches(".svg")
            ));
        }
    }
    fs::write(&md_path, md).map_err(|e| format!("{}: {e}", md_path.display()))?;
    let mut written = vec![json_path, md_path];
    written.extend(chart_paths);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[Some(3.0), None, Some(1.0), Some(2.0)]), Some(2.0));
        assert_eq!(median(&[Some(4.0), Some(1.0)]), Some(2.5));
        assert_eq!(median(&[None]), None);
    }
}
