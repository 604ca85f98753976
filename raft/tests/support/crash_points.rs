//! A `Storage` that dies after a budget of operations: every operation
//! that changes the disk (a write, a sync, a size change, a name change)
//! spends one; once the budget is spent, every such operation fails
//! without touching the disk. The disk then holds exactly what the first
//! `budget` operations left — crash it there and a test has stopped the
//! machine between any two operations it chose.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shards::env::storage::IoFuture;
use shards::env::{FileMeta, ReadFile, SegmentFile, Storage, WriteFile};

/// The budget; `u64::MAX` is unlimited.
#[derive(Clone)]
pub struct Budget(Arc<AtomicU64>);

impl Budget {
    pub fn unlimited() -> Self {
        Budget(Arc::new(AtomicU64::new(u64::MAX)))
    }

    pub fn set(&self, operations: u64) {
        self.0.store(operations, Ordering::SeqCst);
    }

    pub fn spent(&self) -> bool {
        self.0.load(Ordering::SeqCst) == 0
    }

    fn spend(&self) -> std::io::Result<()> {
        let taken = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| match left {
                0 => None,
                u64::MAX => Some(u64::MAX),
                n => Some(n - 1),
            });
        taken
            .map(|_| ())
            .map_err(|_| std::io::Error::other("crash point: the machine is down"))
    }
}

pub struct CrashPoints {
    pub inner: Arc<dyn Storage>,
    pub budget: Budget,
}

struct File {
    inner: Box<dyn WriteFile>,
    budget: Budget,
}

struct Segment {
    inner: Box<dyn SegmentFile>,
    budget: Budget,
}

impl Storage for CrashPoints {
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        self.budget.spend()?;
        self.inner.create_dir_all(dir)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        self.budget.spend()?;
        self.inner.sync_dir(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.budget.spend()?;
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        self.budget.spend()?;
        self.inner.remove_file(path)
    }
    fn metadata(&self, path: &Path) -> std::io::Result<FileMeta> {
        self.inner.metadata(path)
    }
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        self.inner.read(path)
    }
    fn open_read(&self, path: &Path) -> std::io::Result<Box<dyn ReadFile>> {
        self.inner.open_read(path)
    }
    fn open_write(&self, path: &Path, create: bool) -> std::io::Result<Box<dyn WriteFile>> {
        if create {
            self.budget.spend()?;
        }
        Ok(Box::new(File {
            inner: self.inner.open_write(path, create)?,
            budget: self.budget.clone(),
        }))
    }
    fn create_segment(
        &self,
        path: &Path,
        size_bytes: u64,
        durable_writes: bool,
    ) -> IoFuture<'static, Box<dyn SegmentFile>> {
        let (budget, inner) = (self.budget.clone(), self.inner.clone());
        let path = path.to_path_buf();
        Box::pin(async move {
            budget.spend()?;
            let inner = inner
                .create_segment(&path, size_bytes, durable_writes)
                .await?;
            Ok(Box::new(Segment { inner, budget }) as Box<dyn SegmentFile>)
        })
    }
    fn open_segment(
        &self,
        path: &Path,
        durable_writes: bool,
    ) -> IoFuture<'static, Box<dyn SegmentFile>> {
        let (budget, inner) = (self.budget.clone(), self.inner.clone());
        let path = path.to_path_buf();
        Box::pin(async move {
            let inner = inner.open_segment(&path, durable_writes).await?;
            Ok(Box::new(Segment { inner, budget }) as Box<dyn SegmentFile>)
        })
    }
    fn pace(&self, pause: Duration) {
        self.inner.pace(pause)
    }
}

impl WriteFile for File {
    fn write_at(&self, data: &[u8], pos: u64) -> std::io::Result<()> {
        self.budget.spend()?;
        self.inner.write_at(data, pos)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.budget.spend()?;
        self.inner.set_len(len)
    }
    fn sync(&self) -> std::io::Result<()> {
        self.budget.spend()?;
        self.inner.sync()
    }
    fn write_back(&self, pos: u64, len: u64) -> std::io::Result<()> {
        self.inner.write_back(pos, len)
    }
}

impl SegmentFile for Segment {
    fn write_at<'a>(&'a self, data: &'a [u8], pos: u64) -> IoFuture<'a, ()> {
        Box::pin(async move {
            self.budget.spend()?;
            self.inner.write_at(data, pos).await
        })
    }
    fn fdatasync(&self) -> IoFuture<'_, ()> {
        Box::pin(async move {
            self.budget.spend()?;
            self.inner.fdatasync().await
        })
    }
    fn close(self: Box<Self>) -> IoFuture<'static, ()> {
        self.inner.close()
    }
    fn direct(&self) -> bool {
        self.inner.direct()
    }
}
