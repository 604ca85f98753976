//! WAL segment files: naming, listing, and creating pre-zeroed segments.
//!
//! A shard's log is a directory of segment files named by a 16-hex-digit id
//! (`0000000000000001.wal`), records back to back from byte 0. Segments are
//! created at full size and filled with zeros before first use: writes into
//! already-allocated blocks need no metadata update, which is what makes
//! synced writes cheap (growing the file per write was 2–30× slower: see
//! docs/ARCHITECTURE.md, "Measured facts the design rests on"),
//! and zeros mark the end of the written log.

use std::io;
use std::path::{Path, PathBuf};

use crate::env::Storage;

/// Block size that every direct-I/O write is aligned to.
pub const WAL_BLOCK_BYTES: u64 = 4096;
/// Size of one zero-filling write while preparing a segment.
pub const SEGMENT_ZERO_FILL_CHUNK_BYTES: usize = 1024 * 1024;

pub fn segment_file_name(id: u64) -> String {
    format!("{id:016x}.wal")
}

pub fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(segment_file_name(id))
}

/// Segment ids present in `dir`, ascending. Other files are ignored.
pub fn list_segments(storage: &dyn Storage, dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for name in storage.list(dir)? {
        let Some(hex) = name.strip_suffix(".wal") else {
            continue;
        };
        if hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            if let Ok(id) = u64::from_str_radix(hex, 16) {
                ids.push(id);
            }
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

pub fn align_down(v: u64) -> u64 {
    v & !(WAL_BLOCK_BYTES - 1)
}

pub fn align_up(v: u64) -> u64 {
    align_down(v + WAL_BLOCK_BYTES - 1)
}

/// Where the written part of a segment ends: segments are pre-zeroed, so
/// past the last non-zero byte nothing was ever written.
///
/// The zeros after it (most of a young segment) are skipped a block at a
/// time: OR-ing a block's bytes compiles to vector instructions, where
/// looking for the last non-zero byte one byte at a time was 4 % of a
/// restart's CPU, twice over (recovery, then the resync of the tail).
pub fn written_end(data: &[u8]) -> usize {
    const BLOCK_BYTES: usize = 256;
    let mut end = data.len();
    while end >= BLOCK_BYTES && data[end - BLOCK_BYTES..end].iter().fold(0u8, |a, &b| a | b) == 0 {
        end -= BLOCK_BYTES;
    }
    data[..end]
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_like_ids() {
        assert_eq!(segment_file_name(1), "0000000000000001.wal");
        assert_eq!(segment_file_name(0xab), "00000000000000ab.wal");
    }

    #[test]
    fn listing_ignores_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "0000000000000002.wal",
            "0000000000000001.wal",
            "notes.txt",
            "01.wal",
            "000000000000000g.wal",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let os = crate::env::os::OsStorage;
        assert_eq!(list_segments(&os, dir.path()).unwrap(), vec![1, 2]);
    }

    #[test]
    fn the_written_end_is_after_the_last_non_zero_byte() {
        let naive = |d: &[u8]| d.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        for len in [0usize, 1, 255, 256, 257, 1000, 4096] {
            let mut data = vec![0u8; len];
            assert_eq!(written_end(&data), 0);
            for at in [0, len / 3, len.saturating_sub(257), len.saturating_sub(1)] {
                if at < len {
                    data[at] = 0x80;
                    assert_eq!(written_end(&data), naive(&data), "len {len}, byte at {at}");
                }
            }
        }
    }

    #[test]
    fn alignment() {
        assert_eq!(align_down(4097), 4096);
        assert_eq!(align_up(4097), 8192);
        assert_eq!(align_up(4096), 4096);
        assert_eq!(align_up(0), 0);
    }
}
