//! The shards' storage interface (`Storage`, `ReadFile`, `WriteFile`,
//! `SegmentFile`) over the simulated disk of `disk.rs`.

use std::io;
use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::env::storage::IoFuture;
use crate::env::{FileMeta, ReadFile, SegmentFile, Storage, WriteFile};

/// `Arc<SimDisk>` is what the shards get as their `Storage`.
pub struct SimStorage(pub Arc<SimDisk>);

impl Storage for SimStorage {
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.0.lock();
        if !s.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(s.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.0.lock();
        for d in dir.ancestors() {
            s.dirs.insert(d.to_path_buf());
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.0.lock().sync_dir(dir);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.0.lock();
        let inode = s.inode_of(from)?;
        s.names.remove(from);
        s.names.insert(to.to_path_buf(), inode);
        s.name_ops
            .push(NameOp::Rename(from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.0.lock();
        s.inode_of(path)?;
        s.names.remove(path);
        s.name_ops.push(NameOp::Unlink(path.to_path_buf()));
        Ok(())
    }

    fn metadata(&self, path: &Path) -> io::Result<FileMeta> {
        let s = self.0.lock();
        if s.dirs.contains(path) {
            return Ok(FileMeta {
                len_bytes: 0,
                modified_ms: 0,
            });
        }
        let f = &s.inodes[s.inode_of(path)?];
        Ok(FileMeta {
            len_bytes: f.data.len() as u64,
            modified_ms: f.modified_ms,
        })
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let s = self.0.lock();
        Ok(s.inodes[s.inode_of(path)?].data.clone())
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>> {
        let inode = self.0.lock().inode_of(path)?;
        Ok(Box::new(SimFile {
            disk: self.0.clone(),
            inode,
        }))
    }

    fn open_write(&self, path: &Path, create: bool) -> io::Result<Box<dyn WriteFile>> {
        let mut s = self.0.lock();
        let inode = match (s.names.get(path).copied(), create) {
            (Some(i), true) => {
                s.inodes[i].data.clear();
                s.inodes[i].pending.push(Pending::SetLen(0));
                i
            }
            (Some(i), false) => i,
            (None, true) => s.link_new(path, Vec::new(), false),
            (None, false) => return Err(not_found(path)),
        };
        Ok(Box::new(SimFile {
            disk: self.0.clone(),
            inode,
        }))
    }

    fn create_segment(
        &self,
        path: &Path,
        size_bytes: u64,
        durable_writes: bool,
    ) -> IoFuture<'static, Box<dyn SegmentFile>> {
        let (disk, path) = (self.0.clone(), path.to_path_buf());
        Box::pin(async move {
            disk.sleep(disk.latency()).await;
            let inode = {
                let mut s = disk.lock();
                let existing = s.names.get(&path).map(|&i| s.inodes[i].data.len() as u64);
                let grows = size_bytes.saturating_sub(existing.unwrap_or(0));
                if s.faults.capacity_bytes > 0 && s.used_bytes() + grows > s.faults.capacity_bytes {
                    s.stats.injected_enospc += 1;
                    return Err(io::Error::new(
                        io::ErrorKind::StorageFull,
                        format!(
                            "short write while zero-filling {} (simulated: no space)",
                            path.display()
                        ),
                    ));
                }
                let eio_rate = s.faults.write_eio_per_million;
                if s.fault(eio_rate) {
                    s.stats.injected_write_eio += 1;
                    return Err(eio("zero-filling a segment"));
                }
                let zeros = vec![0u8; size_bytes as usize];
                let inode = match s.names.get(&path).copied() {
                    Some(i) => {
                        let f = &mut s.inodes[i];
                        f.data = zeros.clone();
                        f.durable = zeros;
                        f.pending.clear();
                        i
                    }
                    None => s.link_new(&path, zeros, true),
                };
                let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                s.sync_dir(&dir);
                inode
            };
            Ok(Box::new(SimSegment {
                disk,
                inode,
                direct: durable_writes,
            }) as Box<dyn SegmentFile>)
        })
    }

    fn open_segment(
        &self,
        path: &Path,
        durable_writes: bool,
    ) -> IoFuture<'static, Box<dyn SegmentFile>> {
        let (disk, path) = (self.0.clone(), path.to_path_buf());
        Box::pin(async move {
            let inode = disk.lock().inode_of(&path)?;
            Ok(Box::new(SimSegment {
                disk,
                inode,
                direct: durable_writes,
            }) as Box<dyn SegmentFile>)
        })
    }

    fn pace(&self, _pause: Duration) {}
}

struct SimFile {
    disk: Arc<SimDisk>,
    inode: usize,
}

impl ReadFile for SimFile {
    fn len_bytes(&self) -> io::Result<u64> {
        Ok(self.disk.lock().inodes[self.inode].data.len() as u64)
    }

    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let s = self.disk.lock();
        let data = &s.inodes[self.inode].data;
        let pos = (pos as usize).min(data.len());
        let n = buf.len().min(data.len() - pos);
        buf[..n].copy_from_slice(&data[pos..pos + n]);
        Ok(n)
    }
}

impl WriteFile for SimFile {
    fn write_at(&self, data: &[u8], pos: u64) -> io::Result<()> {
        let now = self.disk.clock.now_ms();
        self.disk.lock().write(self.inode, pos, data, now)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.disk.lock();
        let f = &mut s.inodes[self.inode];
        f.data.resize(len as usize, 0);
        f.pending.push(Pending::SetLen(len));
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.disk.lock().sync(self.inode)
    }

    fn write_back(&self, _pos: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

struct SimSegment {
    disk: Arc<SimDisk>,
    inode: usize,
    direct: bool,
}

impl SegmentFile for SimSegment {
    fn write_at<'a>(&'a self, data: &'a [u8], pos: u64) -> IoFuture<'a, ()> {
        Box::pin(async move {
            // Applied (but not durable) at once: a crash during the latency
            // finds the write in flight, to be kept, dropped or torn.
            let now = self.disk.clock.now_ms();
            let written = self.disk.lock().write(self.inode, pos, data, now);
            self.disk.sleep(self.disk.latency()).await;
            written?;
            if self.direct {
                self.disk.lock().sync(self.inode)?;
            }
            Ok(())
        })
    }

    fn fdatasync(&self) -> IoFuture<'_, ()> {
        Box::pin(async move {
            self.disk.sleep(self.disk.latency()).await;
            self.disk.lock().sync(self.inode)
        })
    }

    fn close(self: Box<Self>) -> IoFuture<'static, ()> {
        Box::pin(async { Ok(()) })
    }

    fn direct(&self) -> bool {
        self.direct
    }
}
