//! The storage interface: every file and directory operation of a shard.
//!
//! Two kinds of files:
//! * **Log segments** are written by the shard loop itself, so their writes
//!   and syncs are asynchronous (`SegmentFile`); production does them
//!   through io_uring.
//! * Everything else — reading segments back (WAL_READ, recovery), the log
//!   manifest, snapshot files, retiring files — is blocking (`ReadFile`,
//!   `WriteFile` and the directory operations), done at start-up, between
//!   group commits in small steps, or on the maintenance thread; hence
//!   `Send + Sync`.
//!
//! Durability follows POSIX: data written to a file is durable after a sync
//! of that file; creating, renaming or removing a name is durable after a
//! sync of its directory. The simulator's disk (`crate::sim`) keeps exactly
//! that promise and no more.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

/// An I/O operation under way.
pub type IoFuture<'a, T> = Pin<Box<dyn Future<Output = io::Result<T>> + 'a>>;

/// What `metadata` tells about a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMeta {
    pub len_bytes: u64,
    /// Last modification, Unix milliseconds.
    pub modified_ms: u64,
}

pub trait Storage: Send + Sync {
    /// Names of the entries of `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Make the creations, renames and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn metadata(&self, path: &Path) -> io::Result<FileMeta>;
    /// A whole file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>>;
    /// Open for writing; `create` makes it (truncating an existing one).
    fn open_write(&self, path: &Path, create: bool) -> io::Result<Box<dyn WriteFile>>;
    /// A log segment of `size_bytes`, created (or re-created) full of zeros
    /// and synced, its name synced in its directory, open for appends.
    /// `durable_writes`: each write is durable when it completes (direct
    /// I/O + O_DSYNC); otherwise writes go through the page cache and
    /// `SegmentFile::fdatasync` makes them durable.
    fn create_segment(
        &self,
        path: &Path,
        size_bytes: u64,
        durable_writes: bool,
    ) -> IoFuture<'static, Box<dyn SegmentFile>>;
    /// An existing log segment, open for appends.
    fn open_segment(
        &self,
        path: &Path,
        durable_writes: bool,
    ) -> IoFuture<'static, Box<dyn SegmentFile>>;
    /// Wait between two steps of a long job (freeing a large file, writing a
    /// large snapshot) so the disk serves the log's syncs in between.
    fn pace(&self, pause: Duration);

    /// Replace the file at `path` with `data` so that a crash leaves either
    /// the old file or the new one: write a temporary, sync it, rename it
    /// over, sync the directory.
    fn replace_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".tmp");
        let tmp = dir.join(tmp_name);
        {
            let f = self.open_write(&tmp, true)?;
            f.write_at(data, 0)?;
            f.sync()?;
        }
        self.rename(&tmp, path)?;
        self.sync_dir(dir)
    }

    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> bool {
        self.metadata(path).is_ok()
    }
}

/// A file open for positional reads.
pub trait ReadFile {
    fn len_bytes(&self) -> io::Result<u64>;
    /// Read into `buf` from `pos`; returns the bytes read (0 at the end).
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;
}

/// A file open for positional writes.
pub trait WriteFile {
    /// Write all of `data` at `pos` (not yet durable).
    fn write_at(&self, data: &[u8], pos: u64) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Make everything written so far durable (data and size).
    fn sync(&self) -> io::Result<()>;
    /// Start writing `[pos, pos + len)` back to the disk and wait for it — a
    /// pacing aid with no durability promise (`sync` gives that).
    fn write_back(&self, pos: u64, len: u64) -> io::Result<()>;
}

/// A log segment open for appends.
pub trait SegmentFile {
    /// Write all of `data` at `pos` (whole blocks when `direct`).
    fn write_at<'a>(&'a self, data: &'a [u8], pos: u64) -> IoFuture<'a, ()>;
    /// Make every completed write durable.
    fn fdatasync(&self) -> IoFuture<'_, ()>;
    fn close(self: Box<Self>) -> IoFuture<'static, ()>;
    /// Whether writes are direct I/O: whole aligned blocks, durable on completion.
    fn direct(&self) -> bool;
    /// `write_at` as a plain system call that blocks the calling thread,
    /// for a caller with nothing else to do meanwhile (`CommitIo`); `None`
    /// where the file has no such path (the caller then awaits `write_at`).
    fn write_at_blocking(&self, _data: &[u8], _pos: u64) -> Option<io::Result<()>> {
        None
    }
    /// `fdatasync` blocking the calling thread, as `write_at_blocking`.
    fn fdatasync_blocking(&self) -> Option<io::Result<()>> {
        None
    }
}
