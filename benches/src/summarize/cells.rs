//! The runs of a matrix grouped into cells — one per fsync policy ×
//! workload × connections × pipeline × server — with every metric's values
//! run by run and their median; looking cells and medians up.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::BASELINE;

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
pub(super) struct CellKey {
    pub(super) fsync: String,
    pub(super) workload: String,
    /// connections × pipeline, for ordering.
    pub(super) in_flight: u64,
    pub(super) connections: u64,
    pub(super) pipeline: u64,
    pub(super) server: String,
}

#[derive(Debug, Serialize)]
pub(super) struct Cell {
    #[serde(flatten)]
    pub(super) key: CellKey,
    pub(super) runs: usize,
    pub(super) failed_runs: usize,
    pub(super) median: BTreeMap<&'static str, Option<f64>>,
    pub(super) values: BTreeMap<&'static str, Vec<Option<f64>>>,
    /// Watch runs in which some subscriber missed events.
    pub(super) lossy_runs: usize,
    pub(super) commands: Vec<String>,
    pub(super) problems: Vec<String>,
}

fn pick<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

pub(super) fn median(values: &[Option<f64>]) -> Option<f64> {
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

/// Groups the runs into cells, ordered by [`CellKey`].
pub(super) fn group(runs: &[Value]) -> Vec<Cell> {
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

impl CellKey {
    /// (connections, pipeline).
    pub(super) fn shape(&self) -> (u64, u64) {
        (self.connections, self.pipeline)
    }

    /// `<server> <fsync> <workload> <connections>x<pipeline>`.
    pub(super) fn label(&self) -> String {
        format!(
            "{} {} {} {}x{}",
            self.server, self.fsync, self.workload, self.connections, self.pipeline
        )
    }
}

pub(super) fn find<'a>(
    cells: &'a [Cell],
    fsync: &str,
    workload: &str,
    shape: (u64, u64),
    server: &str,
) -> Option<&'a Cell> {
    cells.iter().find(|c| {
        c.key.fsync == fsync
            && c.key.workload == workload
            && c.key.shape() == shape
            && c.key.server == server
    })
}

/// The baseline server's cell with the same fsync, workload and shape.
pub(super) fn baseline_of<'a>(cells: &'a [Cell], cell: &Cell) -> Option<&'a Cell> {
    let key = &cell.key;
    find(cells, &key.fsync, &key.workload, key.shape(), BASELINE)
}

/// A metric's value in every run of every cell.
pub(super) fn all_values(cells: &[Cell], name: &str) -> Vec<Option<f64>> {
    cells
        .iter()
        .flat_map(|c| c.values[name].iter().copied())
        .collect()
}

pub(super) fn metric(cell: Option<&Cell>, name: &str) -> Option<f64> {
    cell.and_then(|c| c.median.get(name).copied().flatten())
}

pub(super) fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
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
