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
//! Written whole to a temporary name, synced, renamed, directory synced:
//! a crash leaves the old set or the new one. The newest
//! `GROUP_SNAPSHOTS_RETAINED` are kept. A damaged newest snapshot refuses
//! the start (the log it covered may be gone), naming the file.

use std::io;
use std::path::{Path, PathBuf};

use shards::env::Storage;

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
    let mut image = Vec::with_capacity(12 + meta_json.len() + snapshot.0.len());
    image.extend_from_slice(&GROUP_SNAPSHOT_FILE_MAGIC);
    image.extend_from_slice(&(meta_json.len() as u32).to_le_bytes());
    image.extend_from_slice(&meta_json);
    image.extend_from_slice(&snapshot.0);
    let crc = crc32c::crc32c(&image);
    image.extend_from_slice(&crc.to_le_bytes());
    let temp = dir.join(format!("{}.tmp", file_name(index)));
    {
        let file = storage.open_write(&temp, true)?;
        file.write_at(&image, 0)?;
        file.sync()?;
    }
    storage.rename(&temp, &path)?;
    storage.sync_dir(dir)?;
    let files = list(storage, dir)?;
    let surplus = files.len().saturating_sub(GROUP_SNAPSHOTS_RETAINED);
    for (_, old) in files.into_iter().take(surplus) {
        storage.remove_file(&old)?;
    }
    if surplus > 0 {
        storage.sync_dir(dir)?;
    }
    Ok(())
}

/// The newest snapshot in `dir`, if any.
pub fn load_newest(
    storage: &dyn Storage,
    dir: &Path,
) -> Result<Option<(GroupSnapshotMeta, GroupSnapshotBytes)>, String> {
    let files = list(storage, dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let Some((_, path)) = files.last() else {
        return Ok(None);
    };
    let bad = |why: &str| format!("group snapshot {}: {why}", path.display());
    let bytes = storage.read(path).map_err(|e| bad(&e.to_string()))?;
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
    Ok(Some((
        meta,
        GroupSnapshotBytes::new(body[8 + meta_len..].to_vec()),
    )))
}
