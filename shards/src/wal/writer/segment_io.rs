//! The writer's segment I/O: writing a group's bytes at the end of the
//! active segment (whole blocks under direct I/O) and rolling over to the
//! next segment.

use std::io;

use super::{io_blocking, CommitIo, WalWriter};
use crate::env::SegmentFile;
use crate::wal::policy::FsyncPolicy;
use crate::wal::segment::{align_down, align_up};

impl WalWriter {
    pub(super) fn file_direct(&self) -> bool {
        self.file.as_ref().is_some_and(|f| f.direct())
    }

    pub(super) fn active_file(&mut self) -> io::Result<&mut Box<dyn SegmentFile>> {
        self.file.as_mut().ok_or_else(|| {
            io::Error::other("this writer stages turns for a replicated group and has no file")
        })
    }

    pub(super) async fn write_chunk(&mut self, chunk: &[u8], io: CommitIo) -> io::Result<()> {
        if self.file_direct() {
            // Direct I/O writes whole blocks: the partly filled last block
            // already on disk is written again, followed by the new bytes.
            let start = align_down(self.end);
            let lead = self.tail.len();
            debug_assert_eq!(start + lead as u64, self.end);
            let total = lead + chunk.len();
            let len = align_up(total as u64) as usize;
            let mut bytes = Vec::with_capacity(len);
            bytes.extend_from_slice(&self.tail);
            bytes.extend_from_slice(chunk);
            bytes.resize(len, 0);
            let new_tail_start = align_down(total as u64) as usize;
            self.tail.clear();
            self.tail.extend_from_slice(&bytes[new_tail_start..total]);
            self.active_file()?.write_at(&bytes, start).await?;
            // O_DSYNC: the write itself was the sync.
            self.stats.syncs += 1;
        } else {
            let end = self.end;
            let file = self.active_file()?;
            match io_blocking(io, || file.write_at_blocking(chunk, end)) {
                Some(done) => done?,
                None => file.write_at(chunk, end).await?,
            }
        }
        self.end += chunk.len() as u64;
        self.stats.writes += 1;
        Ok(())
    }

    pub(super) async fn rotate(&mut self) -> io::Result<()> {
        if self.unsynced_records > 0 && !matches!(self.policy, FsyncPolicy::Never) {
            // Records left behind in the old segment must not miss their sync.
            self.sync().await?;
        }
        let id = self.segment_id + 1;
        let (file, manifest) = self.rollover.take(id, self.manifest).await?;
        self.manifest = manifest;
        if let Some(old) = self.file.replace(file) {
            let _ = old.close().await;
        }
        self.segment_id = id;
        self.end = 0;
        self.tail.clear();
        self.stats.segments_created += 1;
        Ok(())
    }
}
