//! The log's manifest: one small file per shard log that says how far the
//! log reaches, so that recovery can tell a log whose last segment file is
//! missing from a log that simply ends there, and a torn write from damage
//! to records a clean shutdown had sealed.
//!
//! ```json
//! {"format":1,"last_segment":7,"sealed":{"segment":6,"end_bytes":1048576}}
//! ```
//!
//! * `last_segment` — the highest segment that may hold records. Raised when
//!   the writer creates the next segment (before any record goes into it)
//!   and rewritten by every start-up after recovery. A segment below it that
//!   is absent at the next start is a missing file, not the end of the log.
//! * `sealed` — set by a graceful shutdown after its final sync: every byte
//!   of the log before `end_bytes` of `segment` (and every earlier segment)
//!   was synced. A record there that fails its checksum is damage, never a
//!   torn write. It stays true after later writes, so it is kept until the
//!   next graceful shutdown moves it.
//!
//! Written with `Storage::replace_file` (a new file, synced, renamed over
//! the old one, directory synced): a crash leaves the old manifest or the new.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::env::Storage;

/// The manifest's file name inside a shard's WAL directory (not a segment
/// name, so segment listings ignore it).
pub const MANIFEST_FILE: &str = "log.manifest";
/// The layout of the manifest's JSON.
pub const MANIFEST_FORMAT: u32 = 1;
/// Largest manifest read; a bigger file is not ours.
const MANIFEST_BYTES_MAX: u64 = 64 * 1024;

/// Everything before `end_bytes` of `segment`, and every earlier segment,
/// was synced by a graceful shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    pub segment: u64,
    pub end_bytes: u64,
}

impl Seal {
    /// Whether byte `position` of `segment` lies in the sealed part.
    pub fn covers(&self, segment: u64, position: u64) -> bool {
        segment < self.segment || (segment == self.segment && position < self.end_bytes)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub last_segment: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<Seal>,
}

impl Manifest {
    pub fn new(last_segment: u64, sealed: Option<Seal>) -> Self {
        Manifest {
            format: MANIFEST_FORMAT,
            last_segment,
            sealed,
        }
    }
}

pub fn manifest_path(wal_dir: &Path) -> PathBuf {
    wal_dir.join(MANIFEST_FILE)
}

/// The manifest of the log in `wal_dir`; `None` when there is none yet.
pub fn read(storage: &dyn Storage, wal_dir: &Path) -> io::Result<Option<Manifest>> {
    let path = manifest_path(wal_dir);
    let bytes = match storage.metadata(&path) {
        Ok(m) if m.len_bytes > MANIFEST_BYTES_MAX => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is {} bytes: not a manifest",
                    path.display(),
                    m.len_bytes
                ),
            ))
        }
        Ok(_) => storage.read(&path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: manifest format {} is not {MANIFEST_FORMAT}",
                path.display(),
                manifest.format
            ),
        ));
    }
    Ok(Some(manifest))
}

/// Replace the manifest durably (blocking: a few small writes and syncs).
pub fn write(storage: &dyn Storage, wal_dir: &Path, manifest: &Manifest) -> io::Result<()> {
    let body = serde_json::to_vec(manifest).map_err(io::Error::other)?;
    storage.replace_file(&manifest_path(wal_dir), &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OS: crate::env::os::OsStorage = crate::env::os::OsStorage;

    #[test]
    fn round_trips_and_absent_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(&OS, dir.path()).unwrap(), None);
        let m = Manifest::new(
            7,
            Some(Seal {
                segment: 6,
                end_bytes: 4096,
            }),
        );
        write(&OS, dir.path(), &m).unwrap();
        assert_eq!(read(&OS, dir.path()).unwrap(), Some(m));
        write(&OS, dir.path(), &Manifest::new(8, None)).unwrap();
        assert_eq!(read(&OS, dir.path()).unwrap(), Some(Manifest::new(8, None)));
    }

    #[test]
    fn a_foreign_file_is_an_error_not_a_manifest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(manifest_path(dir.path()), b"hello").unwrap();
        assert!(read(&OS, dir.path()).is_err());
    }

    #[test]
    fn the_seal_covers_what_came_before_it() {
        let s = Seal {
            segment: 3,
            end_bytes: 100,
        };
        assert!(s.covers(2, 1_000_000));
        assert!(s.covers(3, 99));
        assert!(!s.covers(3, 100));
        assert!(!s.covers(4, 0));
    }
}
