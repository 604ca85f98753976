//! The WAL writer: stages records in memory and makes a whole group of them
//! durable with one write and one sync (group commit).
//!
//! The shard appends every record produced while it works through a batch of
//! mailbox messages (`append`, no I/O), then calls `commit` once: the staged
//! bytes go to the segment in one write, and under `every_write` one
//! `fdatasync` follows — the whole group is on disk before any of its
//! requests is answered. Other policies write the same way and sync when
//! their policy says so. (A direct-I/O + O_DSYNC mode exists behind
//! `WAL_DIRECT_IO`; see there for why it is off.)
//!
//! A failed write leaves memory ahead of the log; the caller must stop the
//! shard (fail-stop) so that recovery rebuilds a state that matches the disk.
//! A full disk is not such a failure: writes into the active segment need no
//! space, and a record that needs the next segment when it cannot be made is
//! refused before it is staged (`rollover.rs`).

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::manifest::{self, Manifest, Seal};
use super::offset::OffsetClock;
use super::policy::FsyncPolicy;
use super::record::{
    append_record, set_group_start, RecordKind, RecordStamp, RECORD_HEADER_BYTES,
    RECORD_PAYLOAD_MAX_BYTES,
};
use super::recovery::SegmentTally;
use super::rollover::{Rollover, RolloverFailure};
use super::segment::{align_down, list_segments, segment_path};
use super::sequence::entries_in;
use crate::env::{Env, SegmentFile};
use crate::error::EngineError;

mod segment_io;
mod stats;
mod turns;

pub use stats::WalStats;

/// Whether segments are written with direct I/O + O_DSYNC (each write
/// durable on return) rather than through the page cache + `fdatasync`.
/// Off: glommio reaps direct-I/O writes on its IOPOLL ring whenever the
/// kernel accepts polled I/O for the device — on our virtio disks it does,
/// without poll queues — so the shard busy-polled for every durable write
/// (3.3 ms of CPU per request at 1×1). Buffered writes and fdatasync
/// complete on the ordinary ring. Same promise: nothing is answered
/// before `fdatasync` returns.
pub const WAL_DIRECT_IO: bool = false;

/// How a commit does its write and its sync.
///
/// Through io_uring (`Async`) a buffered write and an `fdatasync` are
/// handed to the kernel's io-wq worker threads and their completion wakes
/// the parked executor: each sync costs two thread switches beyond the
/// disk's own time. A blocking system call on the shard's thread
/// (`Blocking`) costs neither, but nothing else runs on that core until it
/// returns — the shard's next requests, the connections its core serves,
/// the watch merge. So the shard blocks only after a light turn with
/// nothing waiting (`shard::runner::BLOCKING_COMMIT_TURN_MESSAGES_MAX`;
/// measured in `bench-results/2026-12-06/blocking-sync-ab/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitIo {
    Async,
    Blocking,
}

/// `call` when `io` is `Blocking`; `None` (await the async path) when it
/// is not, or when the file has no blocking path.
fn io_blocking(
    io: CommitIo,
    call: impl FnOnce() -> Option<io::Result<()>>,
) -> Option<io::Result<()>> {
    match io {
        CommitIo::Blocking => call(),
        CommitIo::Async => None,
    }
}

/// What `before_turn` found out about rolling over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloverNews {
    Unchanged,
    /// The next segment cannot be made: writes that need it are refused.
    Failed(RolloverFailure),
    /// It could be made again after failing.
    Recovered,
}

/// Where and how a log continues after recovery.
#[derive(Debug, Clone, Copy)]
pub struct WalOpen {
    pub policy: FsyncPolicy,
    pub segment_size_bytes: u64,
    /// The segment to append to, and the end of its records.
    pub segment_id: u64,
    pub end: u64,
    /// Entries the log holds (the next record's `entries_before`).
    pub entries: u64,
    /// The part of the log a graceful shutdown sealed, kept in the manifest.
    pub sealed: Option<Seal>,
}

/// Where a record is in the log: its segment and the byte it starts at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPlace {
    pub segment: u64,
    pub position: u64,
}

pub struct WalWriter {
    env: Env,
    dir: PathBuf,
    policy: FsyncPolicy,
    segment_size_bytes: u64,
    segment_id: u64,
    /// The active segment; `None` for a writer that only stages turns for
    /// a replicated group (`open_turns`), whose log is the group's.
    file: Option<Box<dyn SegmentFile>>,
    /// A turns-only writer: `commit` moves the staged records here.
    turn_out: Option<Vec<u8>>,
    /// Logical end of the written log in the active segment.
    end: u64,
    /// Copy of the bytes `[align_down(end), end)`, rewritten with the next group.
    tail: Vec<u8>,
    /// Staged records: chunk 0 continues the active segment at `end`; chunk
    /// `i > 0` starts the `i`-th following segment at 0.
    chunks: Vec<Vec<u8>>,
    /// Records in each staged chunk.
    chunk_records: Vec<u64>,
    /// Per segment written since open: records added, where its data ends.
    written_per_segment: Vec<SegmentTally>,
    last_chunk_base: u64,
    staged_records: u64,
    staged_bytes: usize,
    clock: OffsetClock,
    unsynced_records: u64,
    /// Monotonic time of the oldest unsynced record (`every_ms`).
    unsynced_since: Option<Duration>,
    /// The next segment, prepared ahead (`rollover.rs`).
    rollover: Rollover,
    stats: WalStats,
    /// Lowest offset handed out since the last commit (staged or reserved
    /// for a batch's inner records), not yet in the file.
    unwritten_floor: Option<u64>,
    /// Log entries this shard has written, staged ones included (see
    /// `sequence.rs`): the next record's `entries_before`.
    entries: u64,
    /// The same, as of the last commit.
    entries_committed: u64,
    /// The manifest as last written (`manifest.rs`).
    manifest: Manifest,
    /// The last offset handed out: the next is always higher.
    last_offset: u64,
    /// A commit started and has not finished: a dropped commit future
    /// leaves the staging area half written, and nothing may stage on it.
    committing: bool,
    /// A group member's limit on the bytes of records one turn stages (its
    /// group logs a turn as one entry): `room_bytes`, `has_room` (`turns.rs`).
    turn_bytes_max: Option<usize>,
}

impl WalWriter {
    /// Open the log for appending where recovery found its end, continuing
    /// the entry count. The segment is created, zero-filled, when it does not
    /// exist; then the manifest is written to name the log as it now stands.
    pub async fn open(
        env: Env,
        dir: &Path,
        at: WalOpen,
        clock: OffsetClock,
    ) -> io::Result<WalWriter> {
        let WalOpen {
            policy,
            segment_size_bytes,
            segment_id,
            end,
            entries,
            sealed,
        } = at;
        let dsync = WAL_DIRECT_IO && policy.acks_after_sync();
        let storage = &*env.storage;
        let path = segment_path(dir, segment_id);
        let file = if storage.exists(&path) {
            storage.open_segment(&path, dsync).await?
        } else {
            storage
                .create_segment(&path, segment_size_bytes, dsync)
                .await?
        };
        let last_present = list_segments(storage, dir)?
            .last()
            .copied()
            .unwrap_or(segment_id);
        let manifest = Manifest::new(last_present.max(segment_id), sealed);
        manifest::write(storage, dir, &manifest)?;
        let tail_start = align_down(end);
        let mut tail = vec![0u8; (end - tail_start) as usize];
        if !tail.is_empty() {
            let f = storage.open_read(&path)?;
            if f.read_at(&mut tail, tail_start)? != tail.len() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} ends inside its last block", path.display()),
                ));
            }
        }
        let rollover = Rollover::new(env.clone(), dir, segment_size_bytes, dsync);
        Ok(WalWriter {
            env,
            dir: dir.to_path_buf(),
            policy,
            segment_size_bytes,
            segment_id,
            file: Some(file),
            turn_out: None,
            end,
            tail,
            chunks: vec![Vec::new()],
            chunk_records: vec![0],
            written_per_segment: Vec::new(),
            last_chunk_base: end,
            staged_records: 0,
            staged_bytes: 0,
            clock,
            unsynced_records: 0,
            unsynced_since: None,
            rollover,
            stats: WalStats::default(),
            unwritten_floor: None,
            entries,
            entries_committed: entries,
            manifest,
            last_offset: 0,
            committing: false,
            turn_bytes_max: None,
        })
    }

    /// Stage one record; returns its offset. No I/O happens until `commit`.
    pub fn append(
        &mut self,
        kind: RecordKind,
        time_ms: u64,
        write_payload: impl FnOnce(&mut Vec<u8>),
    ) -> Result<u64, EngineError> {
        self.append_placed(kind, time_ms, write_payload)
            .map(|(offset, _)| offset)
    }

    /// Stage one record like `append`, and say where it will be in the log
    /// once the next `commit` has written it: a reader that keeps an index
    /// of records (the Raft log store) reads it back from there.
    pub fn append_placed(
        &mut self,
        kind: RecordKind,
        time_ms: u64,
        write_payload: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(u64, RecordPlace), EngineError> {
        debug_assert!(
            !self.committing,
            "a record staged while a commit is under way"
        );
        if self.staged_records == 0 {
            self.clock.begin_group();
        }
        let offset = self.next_offset();
        let base = self.last_chunk_base;
        // The segment a record that does not fit would open.
        let next = self.segment_id + self.chunks.len() as u64;
        let Some(chunk) = self.chunks.last_mut() else {
            return Err(EngineError::internal("WAL staging area missing"));
        };
        let record_start = chunk.len();
        let stamp = RecordStamp {
            kind,
            offset,
            time_ms,
            entries_before: self.entries,
        };
        let len = append_record(chunk, &stamp, base as u32, write_payload)
            .map_err(|n| EngineError::record_too_large(kind, n))?;
        let fill = base + chunk.len() as u64;
        if fill > self.segment_size_bytes && base + record_start as u64 > 0 {
            // Does not fit: the record opens the next segment — if there can
            // be one. Refused before anything changed otherwise.
            if let Some(f) = self.rollover.failure(next) {
                chunk.truncate(record_start);
                return Err(EngineError::wal_io(format!(
                    "no room for the log to grow: creating segment {} failed ({}); this \
                     shard takes writes again once space is freed",
                    f.segment, f.error
                )));
            }
            let mut record = chunk.split_off(record_start);
            set_group_start(&mut record, 0);
            self.chunks.push(record);
            self.chunk_records.push(0);
            self.last_chunk_base = 0;
        }
        // Chunk `i` goes to segment `segment_id + i`; the record is the last
        // one of the last chunk, which starts at `last_chunk_base`.
        let last_chunk = self.chunks.len() - 1;
        let place = RecordPlace {
            segment: self.segment_id + last_chunk as u64,
            position: self.last_chunk_base + (self.chunks[last_chunk].len() - len) as u64,
        };
        self.entries += entries_in(kind, self.clock.shard());
        if let Some(n) = self.chunk_records.last_mut() {
            *n += 1;
        }
        self.staged_records += 1;
        self.staged_bytes += len;
        Ok((offset, place))
    }

    /// The header stamp of a record that goes inside a batch record: an
    /// offset from the same clock, so it orders with everything else on this
    /// shard, and its place in the entry count. A batch that fails after
    /// reserving gives its entries back with `rewind_entries`.
    pub fn reserve(&mut self, kind: RecordKind, time_ms: u64) -> RecordStamp {
        debug_assert!(
            !self.committing,
            "an offset reserved while a commit is under way"
        );
        self.clock.begin_group();
        let offset = self.next_offset();
        let entries_before = self.entries;
        self.entries += entries_in(kind, self.clock.shard());
        RecordStamp {
            kind,
            offset,
            time_ms,
            entries_before,
        }
    }

    /// The next offset of this shard: strictly above every earlier one.
    fn next_offset(&mut self) -> u64 {
        let offset = self.clock.next_offset();
        debug_assert!(
            offset > self.last_offset,
            "shard {}: offset {offset} after {}",
            self.clock.shard(),
            self.last_offset
        );
        self.last_offset = offset;
        self.unwritten_floor.get_or_insert(offset);
        offset
    }

    /// Log entries written or staged so far (the next record's `entries_before`).
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Log entries as of the last commit: every entry counted here is in the file.
    pub fn entries_committed(&self) -> u64 {
        self.entries_committed
    }

    /// Forget entries reserved since `entries` was read (a batch that failed
    /// while staging). Only staged, uncommitted entries can be given back.
    pub fn rewind_entries(&mut self, entries: u64) {
        debug_assert!(entries >= self.entries_committed && entries <= self.entries);
        self.entries = entries;
    }

    /// Lowest offset given out but not yet written, if any: readers of the
    /// file must not claim completeness beyond it.
    pub fn unwritten_floor(&self) -> Option<u64> {
        self.unwritten_floor
    }

    /// Records staged since the last commit.
    pub fn staged_records(&self) -> u64 {
        self.staged_records
    }

    pub fn staged_bytes(&self) -> usize {
        self.staged_bytes
    }

    /// Write every staged record; durable on return under `every_write`.
    pub async fn commit(&mut self) -> io::Result<()> {
        self.commit_with(CommitIo::Async).await
    }

    /// `commit`, doing its write and its sync as `io` says.
    pub async fn commit_with(&mut self, io: CommitIo) -> io::Result<()> {
        if self.staged_records == 0 {
            self.unwritten_floor = None;
            // A batch may have reserved and given back entries: nothing is due.
            debug_assert_eq!(self.entries, self.entries_committed);
            return Ok(());
        }
        debug_assert_eq!(
            self.chunk_records.iter().sum::<u64>(),
            self.staged_records,
            "staged records miscounted"
        );
        if let Some(out) = self.turn_out.as_mut() {
            // A turns-only writer never rolls over (its segment size is
            // unbounded): the group is chunk 0, handed out whole.
            debug_assert_eq!(self.chunks.len(), 1);
            out.append(&mut self.chunks[0]);
            self.chunk_records = vec![0];
            self.finish_group();
            return Ok(());
        }
        self.committing = true;
        let started = self.env.clock.monotonic();
        let mut chunks = std::mem::take(&mut self.chunks);
        let counts = std::mem::replace(&mut self.chunk_records, vec![0]);
        for (i, chunk) in chunks.iter_mut().enumerate() {
            if i > 0 {
                self.rotate().await?;
            }
            if !chunk.is_empty() {
                self.write_chunk(chunk, io).await?;
            }
            let n = counts.get(i).copied().unwrap_or(0);
            // Written, not yet synced: the next rotation (in this very
            // commit, for a group that continues in the next segment) syncs
            // them before it leaves the segment for good.
            self.unsynced_records += n;
            match self.written_per_segment.last_mut() {
                Some(t) if t.id == self.segment_id => {
                    t.records += n;
                    t.data_bytes = self.end;
                }
                _ => self.written_per_segment.push(SegmentTally {
                    id: self.segment_id,
                    records: n,
                    data_bytes: self.end,
                }),
            }
        }
        chunks.truncate(1);
        chunks[0].clear();
        self.chunks = chunks;
        self.last_chunk_base = self.end;
        self.finish_group();
        self.committing = false;
        match self.policy {
            FsyncPolicy::EveryWrite => {
                if !self.file_direct() {
                    self.sync_with(io).await?;
                }
                self.unsynced_records = 0;
            }
            FsyncPolicy::EveryN(n) => {
                if self.unsynced_records >= n {
                    self.sync_with(io).await?;
                }
            }
            FsyncPolicy::EveryMs(_) => {
                let now = self.env.clock.monotonic();
                self.unsynced_since.get_or_insert(now);
            }
            FsyncPolicy::Never => {}
        }
        self.stats
            .commit_latency
            .record(self.env.clock.elapsed(started).as_micros() as u64);
        if self.end >= self.segment_size_bytes / 2 {
            // Half full: make the next segment ready in the background.
            self.rollover.prepare(self.segment_id + 1, self.manifest);
        }
        Ok(())
    }

    /// The staged group is out of the staging area (written, or handed out
    /// as a turn): count it and start the next.
    fn finish_group(&mut self) {
        self.unwritten_floor = None;
        self.clock.end_group();
        self.entries_committed = self.entries;
        self.stats.records_appended += self.staged_records;
        self.stats.bytes_appended += self.staged_bytes as u64;
        self.stats.group_commits += 1;
        self.staged_records = 0;
        self.staged_bytes = 0;
    }

    /// Before a loop turn that may stage `group_bytes_max` bytes (plus one
    /// record): make sure a rollover in it cannot fail after records were
    /// staged — start preparing the next segment when half full (or retry a
    /// failed preparation when due), and when the turn could reach the end
    /// of the active segment, wait for a preparation under way. Returns what
    /// changed, for the log.
    pub async fn before_turn(&mut self, group_bytes_max: usize) -> RolloverNews {
        let was_failing = self.rollover.failing();
        if self.end >= self.segment_size_bytes / 2 {
            self.rollover.prepare(self.segment_id + 1, self.manifest);
        }
        let reach = (group_bytes_max + RECORD_PAYLOAD_MAX_BYTES + RECORD_HEADER_BYTES) as u64;
        let near_end = self.end + reach > self.segment_size_bytes;
        match self.rollover.settle(near_end).await {
            Some(failure) if !was_failing => RolloverNews::Failed(failure),
            Some(_) => RolloverNews::Unchanged,
            None if was_failing && !self.rollover.failing() => RolloverNews::Recovered,
            None => RolloverNews::Unchanged,
        }
    }

    /// Whether the last attempt to prepare the next segment failed.
    pub fn rollover_failing(&self) -> bool {
        self.rollover.failing()
    }

    /// Under `every_ms`: sync when the oldest unsynced record is older than
    /// the policy's interval. The shard calls this from its timer.
    pub async fn sync_if_due(&mut self) -> io::Result<()> {
        if let (FsyncPolicy::EveryMs(ms), Some(since)) = (self.policy, self.unsynced_since) {
            if self.env.clock.elapsed(since) >= Duration::from_millis(ms) {
                self.sync().await?;
            }
        }
        Ok(())
    }

    /// How long until `sync_if_due` has work, if ever.
    pub fn sync_due_in(&self) -> Option<Duration> {
        match (self.policy, self.unsynced_since) {
            (FsyncPolicy::EveryMs(ms), Some(since)) => {
                Some(Duration::from_millis(ms).saturating_sub(self.env.clock.elapsed(since)))
            }
            _ => None,
        }
    }

    /// Make everything written so far durable (any policy; used at shutdown).
    pub async fn sync(&mut self) -> io::Result<()> {
        self.sync_with(CommitIo::Async).await
    }

    async fn sync_with(&mut self, io: CommitIo) -> io::Result<()> {
        let file = self.active_file()?;
        match io_blocking(io, || file.fdatasync_blocking()) {
            Some(done) => done?,
            None => file.fdatasync().await?,
        }
        self.stats.syncs += 1;
        self.unsynced_records = 0;
        self.unsynced_since = None;
        Ok(())
    }

    /// Per segment written since the log was opened: records added and
    /// where its data ends.
    pub fn written_per_segment(&self) -> &[SegmentTally] {
        &self.written_per_segment
    }

    /// Where the written log ends in the active segment.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Record in the manifest that everything written so far is synced (a
    /// graceful shutdown, after its final sync).
    pub fn seal(&mut self) -> io::Result<()> {
        if self.file.is_none() {
            // A turns-only writer's log is the group's: nothing to seal here.
            return Ok(());
        }
        self.manifest.sealed = Some(Seal {
            segment: self.segment_id,
            end_bytes: self.end,
        });
        manifest::write(&*self.env.storage, &self.dir, &self.manifest)
    }

    pub fn stats(&self) -> WalStats {
        self.stats
    }

    pub fn clock(&self) -> &OffsetClock {
        &self.clock
    }

    pub fn clock_mut(&mut self) -> &mut OffsetClock {
        &mut self.clock
    }

    pub fn segment_id(&self) -> u64 {
        self.segment_id
    }

    pub fn policy(&self) -> FsyncPolicy {
        self.policy
    }
}
