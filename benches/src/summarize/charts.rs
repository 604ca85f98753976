//! charts/*.svg: per workload, throughput and p99 latency against
//! concurrency (the drawing itself is `crate::charts`).

use std::fs;
use std::path::{Path, PathBuf};

use super::cells::{find, metric, Cell};
use super::{BASELINE, SUBJECT};
use crate::charts::{self, Series};

/// Per workload: throughput and p99 latency against concurrency, a line
/// per (server, fsync policy). Returns the files written.
pub(super) fn draw_charts(dir: &Path, cells: &[Cell]) -> Result<Vec<PathBuf>, String> {
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
