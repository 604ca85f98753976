//! Retiring large files the database no longer needs — WAL segments that
//! compaction covered, snapshots beyond the retained ones — gently.
//!
//! Deleting a 64 MiB file in one `unlink` frees all its blocks in one
//! file-system transaction; the commit that carries it (and, on a disk
//! mounted with `discard`, the discards that follow it) delays whatever
//! sync comes next — the WAL's. Measured on this machine, under durable
//! writes: 13–19 ms stalls at the instant two segments were unlinked, none
//! when they were shrunk 4 MiB at a time.
//!
//! So retiring is two steps:
//! 1. rename every file to `<name>.retired` and sync the directory — from
//!    then on it is no longer a segment or a snapshot (listings ignore the
//!    name), exactly as if it were deleted;
//! 2. shrink each file by `RETIRE_STEP_BYTES` per step, pausing
//!    `RETIRE_STEP_PAUSE_MS` between steps, then unlink it.
//!
//! A crash in step 2 leaves a `.retired` file, possibly shortened; it is
//! never read, and `remove_retired` deletes it at the next start.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::segment::segment_path;
use crate::env::Storage;

/// Bytes freed per step while shrinking a retired segment.
pub const RETIRE_STEP_BYTES: u64 = 4 * 1024 * 1024;
/// Pause between two shrinking steps.
pub const RETIRE_STEP_PAUSE_MS: u64 = 5;

const RETIRED_SUFFIX: &str = ".retired";

fn retired_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(RETIRED_SUFFIX);
    path.with_file_name(name)
}

/// Take the segments `ids` out of the log in `dir` and free their space
/// (blocking; meant for a background thread). Segments already gone are
/// skipped.
pub fn retire_segments(storage: &dyn Storage, dir: &Path, ids: &[u64]) -> io::Result<()> {
    let paths: Vec<PathBuf> = ids.iter().map(|&id| segment_path(dir, id)).collect();
    retire_files(storage, dir, &paths).map(|_| ())
}

/// Retire `paths`, all files directly in `dir` (blocking). Returns the ones
/// that were there; files already gone are skipped.
pub fn retire_files(
    storage: &dyn Storage,
    dir: &Path,
    paths: &[PathBuf],
) -> io::Result<Vec<PathBuf>> {
    let mut retired = Vec::with_capacity(paths.len());
    for path in paths {
        let to = retired_path(path);
        match storage.rename(path, &to) {
            Ok(()) => retired.push((path.clone(), to)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if retired.is_empty() {
        return Ok(Vec::new());
    }
    storage.sync_dir(dir)?;
    let pause = Duration::from_millis(RETIRE_STEP_PAUSE_MS);
    for (_, to) in &retired {
        shrink_and_remove(storage, to, pause)?;
    }
    Ok(retired.into_iter().map(|(from, _)| from).collect())
}

fn shrink_and_remove(storage: &dyn Storage, path: &Path, pause: Duration) -> io::Result<()> {
    let mut len = storage.metadata(path)?.len_bytes;
    let file = storage.open_write(path, false)?;
    while len > 0 {
        len = len.saturating_sub(RETIRE_STEP_BYTES);
        file.set_len(len)?;
        if len > 0 {
            storage.pace(pause);
        }
    }
    drop(file);
    storage.remove_file(path)
}

/// Delete what a crash left of earlier retirements in `dir` (a missing
/// directory has none); returns how many files.
pub fn remove_retired(storage: &dyn Storage, dir: &Path) -> io::Result<usize> {
    let names = match storage.list(dir) {
        Ok(names) => names,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for name in names.iter().filter(|n| n.ends_with(RETIRED_SUFFIX)) {
        storage.remove_file(&dir.join(name))?;
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::segment::list_segments;

    const OS: crate::env::os::OsStorage = crate::env::os::OsStorage;

    fn segment(dir: &Path, id: u64, len: u64) {
        let f = std::fs::File::create(segment_path(dir, id)).unwrap();
        f.set_len(len).unwrap();
    }

    #[test]
    fn retired_segments_leave_the_log_and_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        for id in 1..=4 {
            segment(dir.path(), id, 9 * 1024 * 1024 + 17);
        }
        retire_segments(&OS, dir.path(), &[1, 2, 9]).unwrap();
        assert_eq!(list_segments(&OS, dir.path()).unwrap(), vec![3, 4]);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 2, "nothing else is left behind: {names:?}");
    }

    #[test]
    fn leftovers_of_a_crash_are_not_segments_and_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        segment(dir.path(), 1, 4096);
        segment(dir.path(), 2, 4096);
        // As a crash between the rename and the unlink leaves it.
        let one = segment_path(dir.path(), 1);
        std::fs::rename(&one, retired_path(&one)).unwrap();
        assert_eq!(list_segments(&OS, dir.path()).unwrap(), vec![2]);
        assert_eq!(remove_retired(&OS, dir.path()).unwrap(), 1);
        assert_eq!(remove_retired(&OS, dir.path()).unwrap(), 0);
        assert_eq!(list_segments(&OS, dir.path()).unwrap(), vec![2]);
    }
}
