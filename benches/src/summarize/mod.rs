//! `corestate-bench summarize DIR`: turns the per-run JSON files that
//! run-matrix.sh leaves in DIR/runs/ into DIR/results.json (medians per
//! cell, corestate/rstmdb ratios, the targets) and DIR/summary.md
//! (the same as tables, with machine facts and the exact commands).
//!
//! This file reads the directory and writes the outputs; `cells` groups
//! the runs and takes medians, `targets` compares the servers and checks
//! the goals, `markdown` renders summary.md, `charts` draws charts/*.svg.

mod cells;
mod charts;
mod markdown;
mod targets;

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

pub use targets::{
    APPLY_1X1_P50_OVER_FDATASYNC_US_MAX, APPLY_1X1_P50_RATIO_MAX, BATCH_EVENTS_RATIO_MIN,
    BATCH_TARGET_SHAPE, DURABLE_WRITE_CPU_RATIO_MAX, TARGET_SHAPE, THROUGHPUT_RATIO_MIN,
    WATCH_P99_US_MAX,
};

/// The server the ratios are about (numerator).
pub const SUBJECT: &str = "corestate";
/// The server it is compared with (denominator).
pub const BASELINE: &str = "rstmdb";
/// The file run-matrix.sh writes with the data disk's fdatasync latency.
pub const FDATASYNC_FILE: &str = "fdatasync.json";

/// Median fdatasync latency the matrix measured on its data disk, if any.
fn fdatasync_median_us(dir: &Path) -> Option<f64> {
    let text = fs::read_to_string(dir.join(FDATASYNC_FILE)).ok()?;
    serde_json::from_str::<Value>(&text).ok()?["median_us"].as_f64()
}

/// Every run report in DIR/runs/, in file name order.
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

/// Writes results.json and summary.md (and the charts) into `dir`;
/// returns their paths.
pub fn summarize(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let runs = load_runs(dir)?;
    let cells = cells::group(&runs);
    let chart_paths = charts::draw_charts(dir, &cells)?;
    let comparisons = targets::comparisons(&cells);
    let targets = targets::targets(&cells, fdatasync_median_us(dir));
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
    let mut md = markdown::markdown(dir, &runs, &cells, &targets);
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
