//! Start-up makes durable what it reads, before anything depends on it.
//!
//! A shard stops at the first failed sync (fail-stop, never a retry: see
//! docs/ARCHITECTURE.md, "Failed syncs"). But the pages that sync failed to
//! write are still in the page cache: Linux marks them clean after the
//! error, keeps serving them to reads, and never writes them back. The next
//! start-up would read those records, build on them, acknowledge writes
//! after them — and a power loss would then leave a hole in the middle of
//! the log, under acknowledged records.
//!
//! So after recovery has read and repaired the log, it writes the part of
//! the log that a failed sync may have touched again and syncs it: writing
//! a page dirties it again, and a successful sync then puts it on disk. A
//! failed sync only ever touches the segments the last group wrote — the
//! active segment and, when that group rolled over, the one before — and
//! nothing a graceful stop sealed.

use std::io;
use std::path::Path;

use super::manifest::Seal;
use super::segment::{segment_path, written_end};
use crate::env::Storage;

/// Bytes re-written per call.
const RESYNC_CHUNK_BYTES: usize = 1 << 20;
/// Segments at the end of the log that may hold pages a failed sync lost.
const RESYNC_SEGMENTS: usize = 2;

/// Re-write and sync the unsealed written part of the last segments of
/// `ids` (ascending). Returns the bytes re-written.
pub fn resync_tail(
    storage: &dyn Storage,
    dir: &Path,
    ids: &[u64],
    seal: Option<Seal>,
) -> io::Result<u64> {
    let mut rewritten = 0u64;
    for &id in ids.iter().rev().take(RESYNC_SEGMENTS) {
        let path = segment_path(dir, id);
        let data = storage.read(&path)?;
        let end = written_end(&data);
        let start = match seal {
            Some(s) if s.segment > id => continue,
            Some(s) if s.segment == id => (s.end_bytes as usize).min(end),
            _ => 0,
        };
        if start >= end {
            continue;
        }
        let file = storage.open_write(&path, false)?;
        let mut pos = start;
        while pos < end {
            let to = (pos + RESYNC_CHUNK_BYTES).min(end);
            file.write_at(&data[pos..to], pos as u64)?;
            pos = to;
        }
        file.sync()?;
        rewritten += (end - start) as u64;
    }
    Ok(rewritten)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::os::OsStorage;

    #[test]
    fn the_unsealed_tail_of_the_last_two_segments_is_written_again() {
        let dir = tempfile::tempdir().unwrap();
        for id in 1..=3u64 {
            let mut data = vec![id as u8; 3000];
            data.resize(8192, 0);
            std::fs::write(segment_path(dir.path(), id), &data).unwrap();
        }
        let ids = [1, 2, 3];
        // Unsealed: segments 2 and 3, their written parts.
        assert_eq!(
            resync_tail(&OsStorage, dir.path(), &ids, None).unwrap(),
            6000
        );
        // Sealed inside segment 3: only what follows the seal there.
        let seal = Seal {
            segment: 3,
            end_bytes: 2000,
        };
        assert_eq!(
            resync_tail(&OsStorage, dir.path(), &ids, Some(seal)).unwrap(),
            1000
        );
        // The bytes are unchanged.
        let data = std::fs::read(segment_path(dir.path(), 3)).unwrap();
        assert!(data[..3000].iter().all(|&b| b == 3) && data[3000..].iter().all(|&b| b == 0));
    }
}
