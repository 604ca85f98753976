//! Small WAL segments, a sequential workload to fill them, and the newest
//! segments written, for the tests that damage the log.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::support::{data_end, flip_definition, wal_segments, write_config, Server};

/// A config with 1 MiB WAL segments: recovery scans whole segments, and a
/// debug build scanning the default 64 MiB ones after damage takes seconds.
pub fn small_segments_config() -> (TempDir, String) {
    let dir = TempDir::new().unwrap();
    let path = write_config(dir.path(), "storage:\n  wal_segment_size_mb: 1\n");
    (dir, path.to_string_lossy().into_owned())
}

/// Per shard directory, the highest segment that holds data, with the
/// length of its data.
pub fn last_written_segments(data_dir: &Path) -> Vec<(PathBuf, usize)> {
    let mut by_shard: HashMap<PathBuf, (PathBuf, usize)> = HashMap::new();
    for segment in wal_segments(data_dir) {
        let bytes = fs::read(&segment).unwrap();
        let end = data_end(&bytes);
        if end == 0 {
            continue;
        }
        let shard = segment.parent().unwrap().to_path_buf();
        // Sorted ascending, so a later segment replaces an earlier one.
        by_shard.insert(shard, (segment, end));
    }
    let mut out: Vec<_> = by_shard.into_values().collect();
    out.sort();
    out
}

/// Write a small workload with one connection, each request acknowledged
/// before the next; returns what GET_INSTANCE says about every instance.
pub fn write_sequential_workload(
    server: &Server,
    instances: usize,
    applies: u64,
) -> Vec<(String, Value)> {
    let mut client = server.raw();
    client.ok(
        "PUT_MACHINE",
        json!({"machine": "flip", "version": 1, "definition": flip_definition()}),
    );
    let mut ids = Vec::new();
    for i in 0..instances {
        let id = format!("seq-{i:02}");
        client.ok(
            "CREATE_INSTANCE",
            json!({"machine": "flip", "version": 1, "instance_id": id,
                   "initial_ctx": {"n": 0, "name": id}}),
        );
        for n in 1..=applies {
            client.ok(
                "APPLY_EVENT",
                json!({"instance_id": id, "event": "FLIP", "payload": {"n": n}}),
            );
        }
        ids.push(id);
    }
    ids.into_iter()
        .map(|id| {
            let got = client.ok("GET_INSTANCE", json!({"instance_id": id}));
            (id, got)
        })
        .collect()
}
