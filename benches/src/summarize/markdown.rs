//! summary.md: machine facts, one table per fsync policy, the batch and
//! watch sections, the goals, measurement quality and the exact commands.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use serde_json::Value;

use super::cells::{all_values, baseline_of, median, metric, ratio, Cell};
use super::targets::Target;
use super::{BASELINE, SUBJECT};
use crate::report::{percent, thousands, NOISY_OTHER_CORES};

fn fmt_num(v: Option<f64>) -> String {
    match v {
        None => "n/a".into(),
        Some(v) if v >= 100.0 => thousands(v.round() as u64),
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
    v.map_or("n/a".into(), percent)
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
    let _ = writeln!(s, "## Atomic batches\n");
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
        let shape = cell.key.shape();
        let base = baseline_of(cells, cell);
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
    let _ = writeln!(s, "## Watch\n");
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

pub(super) fn markdown(dir: &Path, runs: &[Value], cells: &[Cell], targets: &[Target]) -> String {
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
    let other_all = all_values(cells, "other_cores_busy");
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
            let shape = cell.key.shape();
            let base = baseline_of(cells, cell);
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

    let harness = all_values(cells, "harness_cpu_us_per_op");
    let _ = writeln!(s, "## Measurement quality\n");
    let _ = writeln!(
        s,
        "- CPU used by other processes during the measured windows: median {} cores, max {} \
         cores (of {}).",
        fmt_num(median(&other_all)),
        fmt_num(other_all.iter().flatten().copied().reduce(f64::max)),
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
        .map(|c| c.key.label())
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
                "- **{}: {} of {} runs failed**: {}",
                c.key.label(),
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
