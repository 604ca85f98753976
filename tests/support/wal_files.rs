//! The server's WAL segment files on disk: finding them, and where their
//! written data ends.

use std::fs;
use std::path::{Path, PathBuf};

/// Every WAL segment file: `DIR/shard-*/wal/*.wal`, sorted.
pub fn wal_segments(data_dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(shards) = fs::read_dir(data_dir) else {
        return out;
    };
    for shard in shards.flatten() {
        let name = shard.file_name().to_string_lossy().into_owned();
        if !name.starts_with("shard-") {
            continue;
        }
        let Ok(files) = fs::read_dir(shard.path().join("wal")) else {
            continue;
        };
        for file in files.flatten() {
            if file.path().extension().is_some_and(|e| e == "wal") {
                out.push(file.path());
            }
        }
    }
    out.sort();
    out
}

/// Length of the written data of a pre-zeroed segment: one past its last
/// non-zero byte (0 for an unused segment).
pub fn data_end(bytes: &[u8]) -> usize {
    const BLOCK: usize = 4096;
    let mut end = bytes.len();
    // Skip all-zero blocks from the back quickly, then find the exact byte.
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        if bytes[start..end].iter().any(|&b| b != 0) {
            break;
        }
        end = start;
    }
    while end > 0 && bytes[end - 1] == 0 {
        end -= 1;
    }
    end
}
