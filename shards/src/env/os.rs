//! The real machine's storage: blocking operations through `std::fs`, log
//! segments through glommio (io_uring) on the shard's executor.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use glommio::io::{BufferedFile, DmaFile, OpenOptions};

use super::storage::{FileMeta, IoFuture, ReadFile, SegmentFile, Storage, WriteFile};
use crate::wal::segment::{align_up, SEGMENT_ZERO_FILL_CHUNK_BYTES};

pub struct OsStorage;

impl Storage for OsStorage {
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                out.push(name.to_owned());
            }
        }
        Ok(out)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn metadata(&self, path: &Path) -> io::Result<FileMeta> {
        let m = std::fs::metadata(path)?;
        let modified_ms = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64);
        Ok(FileMeta {
            len_bytes: m.len(),
            modified_ms,
        })
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>> {
        Ok(Box::new(OsFile(std::fs::File::open(path)?)))
    }

    fn open_write(&self, path: &Path, create: bool) -> io::Result<Box<dyn WriteFile>> {
        let file = if create {
            std::fs::File::create(path)?
        } else {
            std::fs::OpenOptions::new().write(true).open(path)?
        };
        Ok(Box::new(OsFile(file)))
    }

    fn create_segment(
        &self,
        path: &Path,
        size_bytes: u64,
        durable_writes: bool,
    ) -> IoFuture<'static, Box<dyn SegmentFile>> {
        let path = path.to_path_buf();
        Box::pin(async move {
            let file = create_zeroed(&path, size_bytes, durable_writes).await?;
            if let Some(dir) = path.parent() {
                OsStorage.sync_dir(dir)?;
            }
            if durable_writes {
                return Ok(Box::new(OsSegment::Direct(file)) as Box<dyn SegmentFile>);
            }
            file.close().await.map_err(io::Error::from)?;
            open_buffered(&path).await
        })
    }

    fn open_segment(
        &self,
        path: &Path,
        durable_writes: bool,
    ) -> IoFuture<'static, Box<dyn SegmentFile>> {
        let path = path.to_path_buf();
        Box::pin(async move {
            if durable_writes {
                let f = open_dma(&path, true).await?;
                Ok(Box::new(OsSegment::Direct(f)) as Box<dyn SegmentFile>)
            } else {
                open_buffered(&path).await
            }
        })
    }

    fn pace(&self, pause: Duration) {
        std::thread::sleep(pause);
    }
}

struct OsFile(std::fs::File);

impl ReadFile for OsFile {
    fn len_bytes(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        loop {
            match self.0.read_at(buf, pos) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
}

impl WriteFile for OsFile {
    fn write_at(&self, data: &[u8], pos: u64) -> io::Result<()> {
        self.0.write_all_at(data, pos)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync(&self) -> io::Result<()> {
        self.0.sync_all()
    }

    fn write_back(&self, pos: u64, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain system call on an open descriptor.
        let rc = unsafe {
            libc::sync_file_range(
                self.0.as_raw_fd(),
                pos as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Open `path` for direct-I/O appends, with O_DSYNC when `dsync`.
async fn open_dma(path: &Path, dsync: bool) -> io::Result<DmaFile> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create(true);
    if dsync {
        opts.custom_flags(libc::O_DSYNC);
    }
    opts.dma_open(path).await.map_err(io::Error::from)
}

async fn open_buffered(path: &Path) -> io::Result<Box<dyn SegmentFile>> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create(true);
    let f = opts.buffered_open(path).await.map_err(io::Error::from)?;
    Ok(Box::new(OsSegment::Buffered(f)))
}

/// Create (or re-create) `path` at `size_bytes` full of zeros, synced.
async fn create_zeroed(path: &Path, size_bytes: u64, dsync: bool) -> io::Result<DmaFile> {
    let file = open_dma(path, dsync).await?;
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
    Ok(file)
}

/// A segment open for appends: through the page cache (the writer syncs as
/// its policy says), or direct I/O with O_DSYNC (a completed write is
/// durable).
enum OsSegment {
    Direct(DmaFile),
    Buffered(BufferedFile),
}

impl SegmentFile for OsSegment {
    fn write_at<'a>(&'a self, bytes: &'a [u8], pos: u64) -> IoFuture<'a, ()> {
        Box::pin(async move {
            let written = match self {
                OsSegment::Direct(f) => {
                    let mut buf = f.alloc_dma_buffer(bytes.len());
                    buf.as_bytes_mut().copy_from_slice(bytes);
                    f.write_at(buf, pos).await.map_err(io::Error::from)?
                }
                OsSegment::Buffered(f) => f
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
        })
    }

    fn fdatasync(&self) -> IoFuture<'_, ()> {
        Box::pin(async move {
            match self {
                OsSegment::Direct(f) => f.fdatasync().await,
                OsSegment::Buffered(f) => f.fdatasync().await,
            }
            .map_err(io::Error::from)
        })
    }

    fn close(self: Box<Self>) -> IoFuture<'static, ()> {
        Box::pin(async move {
            match *self {
                OsSegment::Direct(f) => f.close().await,
                OsSegment::Buffered(f) => f.close().await,
            }
            .map_err(io::Error::from)
        })
    }

    fn direct(&self) -> bool {
        matches!(self, OsSegment::Direct(_))
    }

    // Only buffered segments: a direct-I/O write needs its aligned DMA
    // buffer and its completion on glommio's rings.
    fn write_at_blocking(&self, bytes: &[u8], pos: u64) -> Option<io::Result<()>> {
        let OsSegment::Buffered(f) = self else {
            return None;
        };
        Some(borrowed_file(f).write_all_at(bytes, pos))
    }

    fn fdatasync_blocking(&self) -> Option<io::Result<()>> {
        let OsSegment::Buffered(f) = self else {
            return None;
        };
        Some(borrowed_file(f).sync_data())
    }
}

/// The segment's descriptor as a `std::fs::File` for blocking calls,
/// never closed by it (glommio's file owns the descriptor).
fn borrowed_file(f: &BufferedFile) -> std::mem::ManuallyDrop<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: the descriptor is open while `f` lives, which outlives the
    // call it is borrowed for; `ManuallyDrop` keeps it from being closed.
    std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(f.as_raw_fd()) })
}
