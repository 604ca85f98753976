//! A shard group's snapshots on disk, beside the member's log: what lets
//! the log be purged. Without them a restarted member whose log was purged
//! would rebuild its state from nothing.
//!
//! ```text
//! file  <dir>/group-<last log index, 20 digits>.snap
//! 0   4  magic     "CSGF"
//! 4   4  meta_len  u32
//! 8   n  meta      openraft's snapshot meta (last log id, membership), JSON
//! ..  m  snapshot  the group snapshot (`snapshot.rs`)
//! ..  4  crc32c    CRC-32C of every byte before it
//! ```
//! Written to a temporary name, synced, renamed, directory synced: a crash
//! leaves the old set or the new one. Written the way a standalone shard's
//! snapshot is (`shards::snapshot::store::write_in_chunks`): a chunk at a
//! time, each written back before the next, so that the thread returns to
//! user space between chunks and the logs' syncs never queue behind the
//! whole image (the measurements behind that are the standalone writer's).
//! Measured here it did not shorten the longest create at a group
//! snapshot (bench-results/2026-12-05/peer-silence/notes.md); it is kept
//! for those reasons, and because it no longer copies the whole image once
//! more to add the header and checksum.
//! The newest `GROUP_SNAPSHOTS_RETAINED` are kept; older ones are retired
//! gently (`shards::wal::retire`). A damaged newest snapshot refuses the
//! start (the log it covered may be gone), naming the file.

use std::io;
use std::path::{Path, PathBuf};

use shards::env::Storage;
use shards::snapshot::store::write_in_chunks;
use shards::wal::retire::{remove_retired, retire_files};

use super::snapshot::GroupSnapshotBytes;
use super::ShardGroup;

type GroupSnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<ShardGroup>;

/// Snapshot files kept per member (the newest ones).
pub const GROUP_SNAPSHOTS_RETAINED: usize = 2;
/// The first bytes of a snapshot file.
pub const GROUP_SNAPSHOT_FILE_MAGIC: [u8; 4] = *b"CSGF";
/// Largest meta part a file may announce (membership of a handful of nodes
/// is a few hundred bytes).
pub const GROUP_SNAPSHOT_META_BYTES_MAX: usize = 1024 * 1024;

const PREFIX: &str = "group-";
const SUFFIX: &str = ".snap";

fn file_name(index: u64) -> String {
    format!("{PREFIX}{index:020}{SUFFIX}")
}

fn index_of(name: &str) -> Option<u64> {
    name.strip_prefix(PREFIX)?
        .strip_suffix(SUFFIX)?
        .parse()
        .ok()
}

/// The snapshot files in `dir`, oldest first.
fn list(storage: &dyn Storage, dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    if !storage.exists(dir) {
        return Ok(Vec::new());
    }
    let mut files: Vec<(u64, PathBuf)> = storage
        .list(dir)?
        .into_iter()
        .filter_map(|name| index_of(&name).map(|i| (i, dir.join(name))))
        .collect();
    files.sort_by_key(|(i, _)| *i);
    Ok(files)
}

/// Write a snapshot durably (unless one for the same index is there
/// already) and remove the oldest beyond the retained count.
pub fn write(
    storage: &dyn Storage,
    dir: &Path,
    meta: &GroupSnapshotMeta,
    snapshot: &GroupSnapshotBytes,
) -> io::Result<()> {
    let index = meta.last_log_id.map_or(0, |l| l.index);
    let path = dir.join(file_name(index));
    if storage.exists(&path) {
        return Ok(());
    }
    if !storage.exists(dir) {
        storage.create_dir_all(dir)?;
        if let Some(parent) = dir.parent() {
            storage.sync_dir(parent)?;
        }
    }
    let meta_json = serde_json::to_vec(meta).map_err(io::Error::other)?;
    let mut head = Vec::with_capacity(8 + meta_json.len());
    head.extend_from_slice(&GROUP_SNAPSHOT_FILE_MAGIC);
    head.extend_from_slice(&(meta_json.len() as u32).to_le_bytes());
    head.extend_from_slice(&meta_json);
    let body: &[u8] = &snapshot.0;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&head), body);
    let temp = dir.join(format!("{}.tmp", file_name(index)));
    {
        let file = storage.open_write(&temp, true)?;
        file.write_at(&head, 0)?;
        write_in_chunks(&*file, body, head.len() as u64)?;
        file.write_at(&crc.to_le_bytes(), (head.len() + body.len()) as u64)?;
        file.sync()?;
    }
    storage.rename(&temp, &path)?;
    storage.sync_dir(dir)?;
    let files = list(storage, dir)?;
    let surplus = files.len().saturating_sub(GROUP_SNAPSHOTS_RETAINED);
    let old: Vec<PathBuf> = files.into_iter().take(surplus).map(|(_, p)| p).collect();
    retire_files(storage, dir, &old)?;
    Ok(())
}

/// The newest snapshot in `dir`, if any. What a crash left of an older
/// one being retired is deleted first.
pub fn load_newest(
    storage: &dyn Storage,
    dir: &Path,
) -> Result<Option<(GroupSnapshotMeta, GroupSnapshotBytes)>, String> {
    remove_retired(storage, dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let files = list(storage, dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    match files.last() {
        Some((_, path)) => read(storage, path).map(Some),
        None => Ok(None),
    }
}

/// The snapshot in `dir` that ends at log index `index`.
pub fn load(
    storage: &dyn Storage,
    dir: &Path,
    index: u64,
) -> Result<(GroupSnapshotMeta, GroupSnapshotBytes), String> {
    read(storage, &dir.join(file_name(index)))
}

/// The snapshot file at `path`, checked whole.
fn read(
    storage: &dyn Storage,
    path: &Path,
) -> Result<(GroupSnapshotMeta, GroupSnapshotBytes), String> {
    let bad = |why: &str| format!("group snapshot {}: {why}", path.display());
    let mut bytes = storage.read(path).map_err(|e| bad(&e.to_string()))?;
    if bytes.len() < 12 || bytes[..4] != GROUP_SNAPSHOT_FILE_MAGIC {
        return Err(bad("not a group snapshot file (bad magic or too short)"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err(bad("checksum mismatch"));
    }
    let meta_len = u32::from_le_bytes([body[4], body[5], body[6], body[7]]) as usize;
    if meta_len > GROUP_SNAPSHOT_META_BYTES_MAX || 8 + meta_len > body.len() {
        return Err(bad(&format!("meta length {meta_len} out of bounds")));
    }
    let meta: GroupSnapshotMeta =
        serde_json::from_slice(&body[8..8 + meta_len]).map_err(|e| bad(&format!("meta: {e}")))?;
    // The snapshot's bytes moved within the buffer read, not copied into a
    // second one as large as the state.
    bytes.truncate(bytes.len() - 4);
    bytes.drain(..8 + meta_len);
    Ok((meta, GroupSnapshotBytes::new(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_store::codec::WalLeaderId;
    use openraft::LogId;
    use shards::env::os::OsStorage;
    use shards::snapshot::store::SNAPSHOT_WRITE_CHUNK_BYTES;

    fn meta(index: u64) -> GroupSnapshotMeta {
        GroupSnapshotMeta {
            last_log_id: Some(LogId::new(
                WalLeaderId {
                    term: 1,
                    node_id: 1,
                },
                index,
            )),
            last_membership: Default::default(),
        }
    }

    #[test]
    fn snapshots_written_in_chunks_read_back_and_only_the_newest_are_kept() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("snapshots");
        // Larger than one write chunk, and not a multiple of it.
        let body: Vec<u8> = (0..3 * SNAPSHOT_WRITE_CHUNK_BYTES + 123)
            .map(|i| (i % 251) as u8)
            .collect();
        for index in [10u64, 20, 30] {
            let mut bytes = body.clone();
            bytes[0] = index as u8;
            write(
                &OsStorage,
                &dir,
                &meta(index),
                &GroupSnapshotBytes::new(bytes),
            )
            .expect("written");
        }
        let kept: Vec<u64> = list(&OsStorage, &dir)
            .expect("listed")
            .into_iter()
            .map(|(index, _)| index)
            .collect();
        assert_eq!(kept, vec![20, 30], "the newest GROUP_SNAPSHOTS_RETAINED");
        assert_eq!(
            std::fs::read_dir(&dir).expect("dir").count(),
            2,
            "nothing else left behind (no temporary or retired file)"
        );
        let (read_meta, bytes) = load_newest(&OsStorage, &dir)
            .expect("loads")
            .expect("a snapshot");
        assert_eq!(read_meta.last_log_id.map(|l| l.index), Some(30));
        assert_eq!(bytes.0.len(), body.len());
        assert_eq!(bytes.0[0], 30);
        assert!(bytes.0[1..] == body[1..], "the body reads back as written");
        let (older_meta, older) = load(&OsStorage, &dir, 20).expect("the older one by index");
        assert_eq!(older_meta.last_log_id.map(|l| l.index), Some(20));
        assert_eq!((older.0.len(), older.0[0]), (body.len(), 20));
        assert!(load(&OsStorage, &dir, 10).is_err(), "retired");

        // One byte flipped in the middle of the newest file: refused.
        let newest = dir.join(file_name(30));
        let mut raw = std::fs::read(&newest).expect("read");
        let middle = raw.len() / 2;
        raw[middle] ^= 0x40;
        std::fs::write(&newest, raw).expect("write");
        let refused = load_newest(&OsStorage, &dir).expect_err("a damaged snapshot");
        assert!(refused.contains("checksum"), "{refused}");
    }
}
