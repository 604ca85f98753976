//! WAL segment files: naming, listing, and creating pre-zeroed segments.
//!
//! A shard's log is a directory of segment files named by a 16-hex-digit id
//! (`0000000000000001.wal`), records back to back from byte 0. Segments are
//! created at full size and filled with zeros before first use: writes into
//! already-allocated blocks need no metadata update, which is what makes
//! synced writes cheap (DESIGN: growing the file per write was 2–30× slower),
//! and zeros mark the end of the written log.

use std::io;
use std::path::{Path, PathBuf};

use glommio::io::{BufferedFile, DmaFile, OpenOptions};

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
pub fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
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

/// Make a directory entry change (create, rename, delete) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Open a segment for direct-I/O appends. With `dsync` every write is durable
/// when it completes (the `every_write` policy); otherwise the writer syncs
/// explicitly according to its policy.
pub async fn open_for_append(path: &Path, dsync: bool) -> io::Result<DmaFile> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create(true);
    if dsync {
        opts.custom_flags(libc::O_DSYNC);
    }
    opts.dma_open(path).await.map_err(io::Error::from)
}

/// A segment open for appends: through the page cache (the write returns
/// once the kernel has the bytes; the writer syncs as its policy says), or
/// direct I/O with O_DSYNC (the write returning means durable) when
/// `WAL_DIRECT_IO` is on.
pub enum SegmentFile {
    Direct(DmaFile),
    Buffered(BufferedFile),
}

impl SegmentFile {
    /// Write `bytes` (whole blocks for direct I/O, see the writer) at `pos`.
    pub async fn write_all_at(&self, bytes: &[u8], pos: u64) -> io::Result<()> {
        let written = match self {
            SegmentFile::Direct(f) => {
                let mut buf = f.alloc_dma_buffer(bytes.len());
                buf.as_bytes_mut().copy_from_slice(bytes);
                f.write_at(buf, pos).await.map_err(io::Error::from)?
            }
            SegmentFile::Buffered(f) => f
                .write_at(bytes.to_vec(), pos)
                .await
                .map_err(io::Error::from)?,
        };
        if written != bytes.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short WAL write: {written} of {} bytes", bytes.len()),
            ));
        }
        Ok(())
    }

    pub async fn fdatasync(&self) -> io::Result<()> {
        match self {
            SegmentFile::Direct(f) => f.fdatasync().await,
            SegmentFile::Buffered(f) => f.fdatasync().await,
        }
        .map_err(io::Error::from)
    }

    pub async fn close(self) -> io::Result<()> {
        match self {
            SegmentFile::Direct(f) => f.close().await,
            SegmentFile::Buffered(f) => f.close().await,
        }
        .map_err(io::Error::from)
    }

    /// Whether writes must cover whole aligned blocks.
    pub fn direct(&self) -> bool {
        matches!(self, SegmentFile::Direct(_))
    }
}

/// Open segment `path` for appends in the mode the policy wants.
pub async fn open_segment(path: &Path, durable_writes: bool) -> io::Result<SegmentFile> {
    if durable_writes {
        Ok(SegmentFile::Direct(open_for_append(path, true).await?))
    } else {
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create(true);
        Ok(SegmentFile::Buffered(
            opts.buffered_open(path).await.map_err(io::Error::from)?,
        ))
    }
}

/// Create (or re-create) segment `id` of `size_bytes`, zero-filled and synced,
/// with its directory entry synced: once this returns, records written into
/// it survive a crash as soon as their own write is durable.
pub async fn create_zeroed_segment(
    dir: &Path,
    id: u64,
    size_bytes: u64,
    dsync: bool,
) -> io::Result<DmaFile> {
    let path = segment_path(dir, id);
    let file = open_for_append(&path, dsync).await?;
    let size = align_up(size_bytes);
    let mut pos = 0u64;
    while pos < size {
        let len = (SEGMENT_ZERO_FILL_CHUNK_BYTES as u64).min(size - pos) as usize;
        let mut buf = file.alloc_dma_buffer(len);
        buf.as_bytes_mut().fill(0);
        let written = file.write_at(buf, pos).await.map_err(io::Error::from)?;
        if written != len {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write while zero-filling {}", path.display()),
            ));
        }
        pos += len as u64;
    }
    file.fdatasync().await.map_err(io::Error::from)?;
    sync_dir(dir)?;
    Ok(file)
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
        assert_eq!(list_segments(dir.path()).unwrap(), vec![1, 2]);
    }

    #[test]
    fn alignment() {
        assert_eq!(align_down(4097), 4096);
        assert_eq!(align_up(4097), 8192);
        assert_eq!(align_up(4096), 4096);
        assert_eq!(align_up(0), 0);
    }
}
