//! The log's head: the oldest segment it still needs, for a log that
//! deletes its oldest segments itself (a Raft member's log, whose purged
//! entries no snapshot of this shard counts).
//!
//! A standalone shard knows which records compaction took from its
//! snapshot (`ScanPlan::covered` and the entry count). A log whose records
//! count no entries cannot tell a retired prefix from a deleted one that
//! way, so it names its first segment in a small file:
//!
//! ```json
//! {"format":1,"first_segment":5}
//! ```
//!
//! Written (`Storage::replace_file`: a crash leaves the old file or the new)
//! *before* any segment below it is deleted. Recovery, told the first
//! segment (`ScanPlan::first_segment`; 1 when the file is absent):
//!
//! * does not read segments below it — a crash interrupted their deletion;
//!   they are reported as leftovers, for the owner to delete again;
//! * refuses a log whose oldest segment present is above it: that segment
//!   was deleted without being retired (missing data, as a hole in the ids).

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::recovery::RecoveryError;
use super::segment::{segment_file_name, segment_path};
use crate::env::Storage;

/// The head file's name inside a WAL directory (not a segment name).
pub const HEAD_FILE: &str = "log.head";
/// The layout of the head file's JSON.
pub const HEAD_FORMAT: u32 = 1;
/// Largest head file read; a bigger file is not ours.
const HEAD_BYTES_MAX: u64 = 4 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Head {
    format: u32,
    first_segment: u64,
}

pub fn head_path(wal_dir: &Path) -> PathBuf {
    wal_dir.join(HEAD_FILE)
}

fn invalid(path: &Path, what: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {what}", path.display()),
    )
}

/// The first segment of the log in `wal_dir`: 1 when no segment was ever
/// retired (no head file).
pub fn read_first_segment(storage: &dyn Storage, wal_dir: &Path) -> io::Result<u64> {
    let path = head_path(wal_dir);
    let bytes = match storage.metadata(&path) {
        Ok(m) if m.len_bytes > HEAD_BYTES_MAX => {
            return Err(invalid(
                &path,
                format!("{} bytes: not a log head", m.len_bytes),
            ))
        }
        Ok(_) => storage.read(&path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(1),
        Err(e) => return Err(e),
    };
    let head: Head = serde_json::from_slice(&bytes).map_err(|e| invalid(&path, format!("{e}")))?;
    if head.format != HEAD_FORMAT {
        return Err(invalid(
            &path,
            format!("log head format {} is not {HEAD_FORMAT}", head.format),
        ));
    }
    if head.first_segment == 0 {
        return Err(invalid(&path, "first segment 0 (ids start at 1)".into()));
    }
    Ok(head.first_segment)
}

/// Name `first_segment` as the log's first segment, durably (blocking: a
/// small write, two syncs). Only then may segments below it be deleted.
pub fn write_first_segment(
    storage: &dyn Storage,
    wal_dir: &Path,
    first_segment: u64,
) -> io::Result<()> {
    let head = Head {
        format: HEAD_FORMAT,
        first_segment,
    };
    let body = serde_json::to_vec(&head).map_err(io::Error::other)?;
    storage.replace_file(&head_path(wal_dir), &body)
}

/// Split the segment ids present (ascending) at the head: the log's
/// segments, and the leftovers below `first` of an interrupted retirement.
/// An oldest segment above `first` is missing data.
pub(super) fn split_at_head(
    dir: &Path,
    first: u64,
    ids: Vec<u64>,
) -> Result<(Vec<u64>, Vec<u64>), RecoveryError> {
    let below = ids.partition_point(|&id| id < first);
    let (leftovers, kept) = ids.split_at(below);
    match kept.first() {
        Some(&oldest) if oldest > first => Err(RecoveryError::Missing {
            path: segment_path(dir, first),
            detail: format!(
                "the log's head ({HEAD_FILE}) says it starts at {}, the oldest segment file \
                 present is {}",
                segment_file_name(first),
                segment_file_name(oldest)
            ),
        }),
        _ => Ok((kept.to_vec(), leftovers.to_vec())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OS: crate::env::os::OsStorage = crate::env::os::OsStorage;

    #[test]
    fn absent_is_segment_one_and_it_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_first_segment(&OS, dir.path()).unwrap(), 1);
        write_first_segment(&OS, dir.path(), 7).unwrap();
        assert_eq!(read_first_segment(&OS, dir.path()).unwrap(), 7);
    }

    #[test]
    fn a_foreign_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(head_path(dir.path()), b"{\"format\":1}").unwrap();
        let err = read_first_segment(&OS, dir.path()).unwrap_err();
        assert!(err.to_string().contains(HEAD_FILE), "{err}");
        std::fs::write(head_path(dir.path()), vec![b' '; 8192]).unwrap();
        assert!(read_first_segment(&OS, dir.path()).is_err());
    }

    #[test]
    fn leftovers_below_the_head_are_split_off_and_a_missing_head_is_refused() {
        let dir = Path::new("/wal");
        let (kept, leftovers) = split_at_head(dir, 3, vec![1, 2, 3, 4]).unwrap();
        assert_eq!((kept, leftovers), (vec![3, 4], vec![1, 2]));
        let (kept, leftovers) = split_at_head(dir, 3, vec![]).unwrap();
        assert!(kept.is_empty() && leftovers.is_empty());
        let err = split_at_head(dir, 3, vec![4, 5]).unwrap_err();
        assert!(matches!(err, RecoveryError::Missing { .. }), "{err}");
        assert!(err.to_string().contains("0000000000000003.wal"), "{err}");
    }
}
