//! A shard's snapshot files: `<shard dir>/snapshots/<covered offset as 16
//! hex digits>.snap`, so names sort like the offsets they cover.
//!
//! # Writing
//!
//! A snapshot is written to `<name>.snap.tmp`, synced, renamed to its final
//! name, and the directory synced: after `write_snapshot` returns, the file
//! is durable under its final name, and a crash at any earlier instant
//! leaves at most a `.tmp` file, which every listing ignores and `load_newest`
//! deletes. Then the oldest snapshots beyond `SNAPSHOTS_RETAINED` are removed.
//!
//! # Loading
//!
//! `load_newest` tries the snapshots newest first. A file whose header, body
//! checksum or structure is wrong (or whose name disagrees with the offset
//! inside) is skipped with a warning naming it, and the next older one is
//! tried: recovery then replays a longer stretch of the log. If snapshots
//! exist but none is usable, loading fails — starting from the log alone
//! could silently lose whatever compaction already deleted from it.
//!
//! # What this means for compaction
//!
//! Falling back only works while the log still holds every record after the
//! *older* snapshot. So WAL segments may be deleted only when their records
//! are all ≤ the covered offset of the oldest retained snapshot
//! (`list_snapshots(..).last()` after `write_snapshot`).
//!
//! All I/O here is blocking (`Storage`); a shard calls it off its request
//! path.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use super::codec::{decode, decode_header, SnapshotError};
use super::data::SnapshotData;
use crate::env::{Storage, WriteFile};
use crate::wal::retire::{remove_retired, retire_files};

/// Snapshots kept per shard: the newest, and one to fall back to.
pub const SNAPSHOTS_RETAINED: usize = 2;
/// Bytes per write system call when writing a snapshot file.
pub const SNAPSHOT_WRITE_CHUNK_BYTES: usize = 256 * 1024;
/// Directory under the shard's directory.
pub const SNAPSHOTS_DIR_NAME: &str = "snapshots";

const SNAPSHOT_SUFFIX: &str = ".snap";
const TEMP_SUFFIX: &str = ".snap.tmp";

/// One snapshot file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    pub covered_offset: u64,
    pub path: PathBuf,
    pub size_bytes: u64,
}

/// A snapshot that decoded cleanly.
#[derive(Debug)]
pub struct LoadedSnapshot {
    pub file: SnapshotFile,
    pub data: SnapshotData,
}

/// What `write_snapshot` did.
#[derive(Debug, Clone)]
pub struct WrittenSnapshot {
    pub file: SnapshotFile,
    /// Older snapshots removed by retention.
    pub removed: Vec<SnapshotFile>,
}

#[derive(Debug)]
pub enum SnapshotLoadError {
    Io {
        path: PathBuf,
        error: io::Error,
    },
    /// Snapshots exist, but every one of them is damaged.
    NoneUsable {
        warnings: Vec<String>,
    },
}

impl fmt::Display for SnapshotLoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotLoadError::Io { path, error } => write!(f, "{}: {error}", path.display()),
            SnapshotLoadError::NoneUsable { warnings } => write!(
                f,
                "no usable snapshot: {}. Refusing to start from the log alone, which may \
                 already have been compacted",
                warnings.join("; ")
            ),
        }
    }
}

impl std::error::Error for SnapshotLoadError {}

pub fn snapshots_dir(shard_dir: &Path) -> PathBuf {
    shard_dir.join(SNAPSHOTS_DIR_NAME)
}

pub fn snapshot_file_name(covered_offset: u64) -> String {
    format!("{covered_offset:016x}{SNAPSHOT_SUFFIX}")
}

pub fn snapshot_path(shard_dir: &Path, covered_offset: u64) -> PathBuf {
    snapshots_dir(shard_dir).join(snapshot_file_name(covered_offset))
}

fn parse_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(SNAPSHOT_SUFFIX)?;
    if hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        u64::from_str_radix(hex, 16).ok()
    } else {
        None
    }
}

/// Snapshot files of a shard, newest (highest covered offset) first. A
/// missing directory means none. Temp files and foreign files are ignored.
pub fn list_snapshots(storage: &dyn Storage, shard_dir: &Path) -> io::Result<Vec<SnapshotFile>> {
    let dir = snapshots_dir(shard_dir);
    let names = match storage.list(&dir) {
        Ok(names) => names,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names {
        let Some(covered_offset) = parse_name(&name) else {
            continue;
        };
        let path = dir.join(&name);
        let size_bytes = match storage.metadata(&path) {
            Ok(m) => m.len_bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        out.push(SnapshotFile {
            covered_offset,
            path,
            size_bytes,
        });
    }
    out.sort_unstable_by_key(|f| std::cmp::Reverse(f.covered_offset));
    Ok(out)
}

/// Delete leftover `.snap.tmp` files (from a crash mid-write). Returns how
/// many were removed.
pub fn remove_temp_files(storage: &dyn Storage, shard_dir: &Path) -> io::Result<usize> {
    let dir = snapshots_dir(shard_dir);
    let names = match storage.list(&dir) {
        Ok(names) => names,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for name in names.iter().filter(|n| n.ends_with(TEMP_SUFFIX)) {
        match storage.remove_file(&dir.join(name)) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if removed > 0 {
        storage.sync_dir(&dir)?;
    }
    Ok(removed)
}

/// Durably write a snapshot file image (from `codec::encode` or
/// `SnapshotEncoder::finish`) under the name of the offset in its header,
/// then apply retention.
pub fn write_snapshot(
    storage: &dyn Storage,
    shard_dir: &Path,
    image: &[u8],
) -> io::Result<WrittenSnapshot> {
    let header = decode_header(image).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a snapshot image: {e}"),
        )
    })?;
    let dir = snapshots_dir(shard_dir);
    if !storage.exists(&dir) {
        storage.create_dir_all(&dir)?;
        storage.sync_dir(shard_dir)?;
    }
    let name = snapshot_file_name(header.covered_offset);
    let path = dir.join(&name);
    let temp = dir.join(format!("{name}.tmp"));
    {
        let file = storage.open_write(&temp, true)?;
        write_in_chunks(&*file, image, 0)?;
        file.sync()?;
    }
    storage.rename(&temp, &path)?;
    storage.sync_dir(&dir)?;
    let removed = prune_snapshots(storage, shard_dir, SNAPSHOTS_RETAINED)?;
    Ok(WrittenSnapshot {
        file: SnapshotFile {
            covered_offset: header.covered_offset,
            path,
            size_bytes: image.len() as u64,
        },
        removed,
    })
}

/// Write `image` one `SNAPSHOT_WRITE_CHUNK_BYTES` chunk at a time, each
/// written back to the disk before the next one is written.
///
/// * One large write would keep its thread inside the kernel for the whole
///   copy (100+ ms for tens of MiB), and this kernel does not preempt kernel
///   code: whatever waits for that CPU — a shard loop — waits with it.
///   Between chunks the thread returns to user space and can be preempted.
/// * With at most one chunk dirty or in flight, the WAL's own syncs never
///   queue behind tens of MiB of snapshot data in the disk queue or in the
///   file system's journal commit (measured: 17-22 ms stalls of durable
///   requests when the whole file was left to write-back and one fsync).
///   The final fsync then has only metadata left to do.
///
/// `at`: the file offset `image` starts at. Also used by a shard group's
/// snapshot files (the Raft crate).
pub fn write_in_chunks(file: &dyn WriteFile, image: &[u8], at: u64) -> io::Result<()> {
    let mut written = at;
    for chunk in image.chunks(SNAPSHOT_WRITE_CHUNK_BYTES) {
        file.write_at(chunk, written)?;
        if let Err(e) = file.write_back(written, chunk.len() as u64) {
            // Only pacing: the sync that follows makes the file durable.
            tracing::debug!("writing back a snapshot chunk: {e}");
        }
        written += chunk.len() as u64;
    }
    Ok(())
}

/// Remove all but the newest `retained` snapshots; returns what was removed.
/// They are retired gently (`wal::retire`): a snapshot is as large as a
/// segment, and freeing it in one go would stall the WAL's next syncs.
pub fn prune_snapshots(
    storage: &dyn Storage,
    shard_dir: &Path,
    retained: usize,
) -> io::Result<Vec<SnapshotFile>> {
    let old: Vec<SnapshotFile> = list_snapshots(storage, shard_dir)?
        .into_iter()
        .skip(retained)
        .collect();
    let paths: Vec<PathBuf> = old.iter().map(|f| f.path.clone()).collect();
    let retired = retire_files(storage, &snapshots_dir(shard_dir), &paths)?;
    Ok(old
        .into_iter()
        .filter(|f| retired.contains(&f.path))
        .collect())
}

/// The newest snapshot that decodes cleanly, with a warning for every newer
/// one that did not. `Ok(None)`: the shard has no snapshot at all.
pub fn load_newest(
    storage: &dyn Storage,
    shard_dir: &Path,
) -> Result<Option<(LoadedSnapshot, Vec<String>)>, SnapshotLoadError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |error| SnapshotLoadError::Io { path, error }
    };
    let dir = snapshots_dir(shard_dir);
    remove_temp_files(storage, shard_dir).map_err(io_err(&dir))?;
    remove_retired(storage, &dir).map_err(io_err(&dir))?;
    let files = list_snapshots(storage, shard_dir).map_err(io_err(&dir))?;
    if files.is_empty() {
        return Ok(None);
    }
    let mut warnings = Vec::new();
    for file in files {
        let bytes = storage.read(&file.path).map_err(io_err(&file.path))?;
        match decode(&bytes) {
            Ok(data) if data.covered_offset == file.covered_offset => {
                return Ok(Some((LoadedSnapshot { file, data }, warnings)));
            }
            Ok(data) => warnings.push(format!(
                "snapshot {} is damaged: it says it covers offset {}, its name says {}",
                file.path.display(),
                data.covered_offset,
                file.covered_offset
            )),
            Err(e) => warnings.push(damaged(&file.path, &e)),
        }
    }
    Err(SnapshotLoadError::NoneUsable { warnings })
}

fn damaged(path: &Path, e: &SnapshotError) -> String {
    format!("snapshot {} is damaged ({e}); skipped", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::Instance;
    use crate::machine::definition::parse_definition;
    use crate::snapshot::codec::encode;
    use serde_json::json;
    use std::sync::Arc;

    const OS: crate::env::os::OsStorage = crate::env::os::OsStorage;

    fn data(covered_offset: u64, instances: u64) -> SnapshotData {
        let def = Arc::new(
            parse_definition(
                "m",
                1,
                &json!({"states":["a","b"],"initial":"a","transitions":[{"from":"a","event":"GO","to":"b"}]}),
            )
            .unwrap(),
        );
        SnapshotData {
            shard: 1,
            covered_offset,
            last_tick: covered_offset >> 6,
            entries: covered_offset >> 6,
            machines: vec![def.clone()],
            instances: (0..instances)
                .map(|i| {
                    (
                        format!("i{i}"),
                        Instance {
                            machine: def.clone(),
                            state: "b".into(),
                            ctx: json!({"i": i}).into(),
                            last_event_id: None,
                            last_wal_offset: covered_offset,
                            created_at_ms: 1,
                            updated_at_ms: 2,
                            deleted_at_offset: None,
                            creation: None,
                            applied_keys: None,
                        },
                    )
                })
                .collect(),
        }
    }

    fn loaded(dir: &Path) -> (u64, usize, Vec<String>) {
        let (snap, warnings) = load_newest(&OS, dir).unwrap().expect("a snapshot");
        (
            snap.data.covered_offset,
            snap.data.instances.len(),
            warnings,
        )
    }

    #[test]
    fn pruned_snapshots_leave_nothing_behind_and_retired_leftovers_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        for covered in [0x100, 0x200, 0x300] {
            write_snapshot(&OS, dir.path(), &encode(&data(covered, 2))).unwrap();
        }
        let names = |d: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(snapshots_dir(d))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(dir.path()).len(), SNAPSHOTS_RETAINED);
        // A crash in the middle of retiring leaves a `.retired` file.
        let oldest = &list_snapshots(&OS, dir.path()).unwrap()[1].path;
        let leftover = oldest.with_extension("snap.retired");
        std::fs::copy(oldest, &leftover).unwrap();
        assert_eq!(
            list_snapshots(&OS, dir.path()).unwrap().len(),
            SNAPSHOTS_RETAINED
        );
        let (loaded, _) = load_newest(&OS, dir.path()).unwrap().unwrap();
        assert_eq!(loaded.data.covered_offset, 0x300);
        assert!(!leftover.exists(), "{:?}", names(dir.path()));
    }

    #[test]
    fn round_trip_through_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_newest(&OS, dir.path()).unwrap().is_none());
        let written = write_snapshot(&OS, dir.path(), &encode(&data(0x1040, 5))).unwrap();
        assert_eq!(
            written.file.path,
            dir.path().join("snapshots/0000000000001040.snap")
        );
        assert!(written.removed.is_empty());
        let (snap, warnings) = load_newest(&OS, dir.path()).unwrap().unwrap();
        assert!(warnings.is_empty());
        assert_eq!(snap.file, written.file);
        let state = snap.data.into_state(true);
        assert_eq!(state.shard_id, 1);
        assert_eq!(state.active_instances, 5);
        assert_eq!(state.machines.len(), 1);
        assert_eq!(state.instances["i3"].ctx, json!({"i": 3}));
    }

    #[test]
    fn retention_keeps_the_newest_two() {
        let dir = tempfile::tempdir().unwrap();
        for (n, off) in [0x100u64, 0x200, 0x300, 0x400].into_iter().enumerate() {
            let w = write_snapshot(&OS, dir.path(), &encode(&data(off, 1))).unwrap();
            assert_eq!(w.removed.len(), usize::from(n >= SNAPSHOTS_RETAINED));
        }
        let offsets: Vec<u64> = list_snapshots(&OS, dir.path())
            .unwrap()
            .iter()
            .map(|f| f.covered_offset)
            .collect();
        assert_eq!(offsets, vec![0x400, 0x300]);
    }

    #[test]
    fn a_damaged_newest_snapshot_falls_back_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        write_snapshot(&OS, dir.path(), &encode(&data(0x100, 3))).unwrap();
        let newest = write_snapshot(&OS, dir.path(), &encode(&data(0x200, 4))).unwrap();
        let mut bytes = std::fs::read(&newest.file.path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x20;
        std::fs::write(&newest.file.path, &bytes).unwrap();
        let (covered, n, warnings) = loaded(dir.path());
        assert_eq!((covered, n), (0x100, 3));
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("0000000000000200.snap") && warnings[0].contains("checksum"),
            "{warnings:?}"
        );
    }

    #[test]
    fn a_renamed_snapshot_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let w = write_snapshot(&OS, dir.path(), &encode(&data(0x100, 1))).unwrap();
        std::fs::copy(&w.file.path, snapshot_path(dir.path(), 0x900)).unwrap();
        let (covered, _, warnings) = loaded(dir.path());
        assert_eq!(covered, 0x100);
        assert!(warnings[0].contains("its name says 2304"), "{warnings:?}");
    }

    #[test]
    fn when_every_snapshot_is_damaged_loading_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let w = write_snapshot(&OS, dir.path(), &encode(&data(0x100, 1))).unwrap();
        std::fs::write(&w.file.path, b"garbage").unwrap();
        let err = load_newest(&OS, dir.path()).unwrap_err();
        assert!(err.to_string().contains("0000000000000100.snap"), "{err}");
    }

    #[test]
    fn a_leftover_temp_file_is_ignored_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        write_snapshot(&OS, dir.path(), &encode(&data(0x100, 2))).unwrap();
        // A crash mid-write of a newer snapshot leaves a partial temp file.
        let image = encode(&data(0x200, 2));
        let temp = snapshots_dir(dir.path()).join("0000000000000200.snap.tmp");
        std::fs::write(&temp, &image[..image.len() / 2]).unwrap();
        assert_eq!(list_snapshots(&OS, dir.path()).unwrap().len(), 1);
        let (covered, _, warnings) = loaded(dir.path());
        assert_eq!(covered, 0x100);
        assert!(warnings.is_empty());
        assert!(!temp.exists());
    }

    #[test]
    fn truncation_at_every_byte_never_panics_and_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        write_snapshot(&OS, dir.path(), &encode(&data(0x100, 2))).unwrap();
        let newest = write_snapshot(&OS, dir.path(), &encode(&data(0x200, 3))).unwrap();
        let full = std::fs::read(&newest.file.path).unwrap();
        for len in 0..full.len() {
            std::fs::write(&newest.file.path, &full[..len]).unwrap();
            let (covered, n, warnings) = loaded(dir.path());
            assert_eq!((covered, n), (0x100, 2), "cut at {len}");
            assert_eq!(warnings.len(), 1, "cut at {len}");
        }
        // With no older snapshot to fall back to, it is a clean error.
        std::fs::remove_file(snapshot_path(dir.path(), 0x100)).unwrap();
        for len in 0..full.len() {
            std::fs::write(&newest.file.path, &full[..len]).unwrap();
            assert!(matches!(
                load_newest(&OS, dir.path()),
                Err(SnapshotLoadError::NoneUsable { .. })
            ));
        }
    }

    #[test]
    fn writing_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_snapshot(&OS, dir.path(), b"not a snapshot").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(list_snapshots(&OS, dir.path()).unwrap().is_empty());
    }
}
