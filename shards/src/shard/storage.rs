//! The shard's storage lifecycle, run between group commits: snapshot jobs
//! (one slice per loop turn; the file is written on the maintenance thread),
//! compaction after each snapshot, automatic triggering, SNAPSHOT_INSTANCE,
//! and the log statistics behind WAL_STATS. See `snapshotting.rs` for the
//! snapshot and deletion rules.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::result::ResultWriter;
use super::runner::{Shard, ShardConfig};
use super::snapshotting::{
    delete_segments, plan_compaction, write, CompactReport, SliceOutcome, SnapshotJob,
    SNAPSHOT_SLICE_US,
};
use crate::env::tasks::in_background;
use crate::env::Env;
use crate::error::{EngineError, EngineResult};
use crate::snapshot::LogPosition;
use crate::snapshot::{list_snapshots, WrittenSnapshot};
use crate::wal::files::RecoveredTallies;
use crate::wal::offset::make_offset;
use crate::wal::reader::{LogReader, ReadStats, SegmentInfo};
use crate::wal::recovery::ScanOutcome;

/// When the shard snapshots and compacts by itself (docs/PROTOCOL.md §11.11; the
/// thresholds apply to each shard's own log).
#[derive(Debug, Clone)]
pub struct AutoCompaction {
    pub events_threshold: u64,
    pub size_threshold_bytes: u64,
    pub min_interval: Duration,
}

/// How soon the loop must come back while the maintenance thread works.
const MAINTENANCE_POLL_MS: u64 = 2;
/// Pause between two snapshot slices. It must be a real wait, not a yield:
/// only a task that is not ready lets the executor poll for network I/O, so
/// the connections that share shard 0's executor keep being served.
const SNAPSHOT_SLICE_INTERVAL_US: u64 = 100;

/// Where the current storage job is. A job is a snapshot (encoded here in
/// slices, written by the maintenance thread) followed by a compaction
/// (planned here, segments deleted by the maintenance thread), or a
/// compaction alone.
enum Phase {
    Idle,
    Encoding(SnapshotJob),
    Writing(flume::Receiver<io::Result<WrittenSnapshot>>),
    Deleting {
        done: flume::Receiver<io::Result<()>>,
        planned: Vec<SegmentInfo>,
    },
}

pub struct StorageState {
    shard_dir: PathBuf,
    auto: Option<AutoCompaction>,
    phase: Phase,
    /// What the current job did so far.
    report: CompactReport,
    /// COMPACT requests the current job answers.
    answering: Vec<flume::Sender<CompactReport>>,
    /// A snapshot (+ compaction) is wanted and not yet started, for these.
    wanted: bool,
    queued: Vec<flume::Sender<CompactReport>>,
    /// Monotonic time of the last snapshot (or of the start).
    last_snapshot_at: Duration,
    records_at_last_snapshot: u64,
    /// Per segment, what recovery found in it.
    recovered: RecoveredTallies,
    /// Offsets below this were compacted away (0: nothing ever deleted).
    retained_from: u64,
    /// What start-up recovery read.
    recovery_reads: ReadStats,
}

impl StorageState {
    pub fn new(cfg: &ShardConfig, env: &Env, scan: &ScanOutcome) -> Self {
        StorageState {
            shard_dir: cfg.dir.clone(),
            auto: cfg.auto_compaction.clone(),
            phase: Phase::Idle,
            report: CompactReport::default(),
            answering: Vec::new(),
            wanted: false,
            queued: Vec::new(),
            last_snapshot_at: env.clock.monotonic(),
            records_at_last_snapshot: 0,
            recovered: RecoveredTallies::new(&scan.segment_records),
            retained_from: 0,
            recovery_reads: ReadStats {
                reads: 1,
                bytes_read: scan.bytes_scanned,
            },
        }
    }

    /// Offsets below this are no longer in the log (0: nothing deleted).
    pub fn retained_from(&self) -> u64 {
        self.retained_from
    }

    /// Upper bound for the loop's idle wait while storage work is pending.
    pub fn wait_hint(&self) -> Duration {
        match self.phase {
            Phase::Idle => Duration::MAX,
            Phase::Encoding(_) => Duration::from_micros(SNAPSHOT_SLICE_INTERVAL_US),
            Phase::Writing(_) | Phase::Deleting { .. } => {
                Duration::from_millis(MAINTENANCE_POLL_MS)
            }
        }
    }
}

/// A maintenance job's result, if it has come back.
fn poll<T>(rx: &flume::Receiver<io::Result<T>>) -> Option<io::Result<T>> {
    match rx.try_recv() {
        Ok(result) => Some(result),
        Err(flume::TryRecvError::Empty) => None,
        Err(flume::TryRecvError::Disconnected) => {
            Some(Err(io::Error::other("the maintenance thread lost the job")))
        }
    }
}

impl Shard {
    /// COMPACT: snapshot if the log grew since the last one (or if forced),
    /// then delete what the snapshots cover.
    pub(super) fn request_compaction(
        &mut self,
        force_snapshot: bool,
        done: Option<flume::Sender<CompactReport>>,
    ) {
        let grew = self.wal.stats().records_appended > self.storage.records_at_last_snapshot;
        let any_snapshot = list_snapshots(&*self.env.storage, &self.storage.shard_dir)
            .is_ok_and(|l| !l.is_empty());
        let busy = !matches!(self.storage.phase, Phase::Idle);
        if force_snapshot || grew || !any_snapshot || busy {
            self.storage.wanted = true;
            self.storage.queued.extend(done);
            return;
        }
        // Only compaction: the newest snapshot already covers the log.
        self.storage.answering.extend(done);
        self.storage.report = CompactReport::default();
        self.start_compaction();
    }

    /// Plan the deletions here and hand them to the maintenance thread.
    fn start_compaction(&mut self) {
        let active = self.wal.segment_id();
        let (storage, clock) = (self.env.storage.clone(), self.env.clock.clone());
        let planned = self
            .reader_mut()
            .and_then(|(dir, reader)| plan_compaction((&*storage, &*clock), &dir, reader, active));
        let plan = match planned {
            Ok(plan) => plan,
            Err(e) => {
                self.storage.report.error = Some(format!("compaction failed: {e}"));
                return self.job_done();
            }
        };
        self.storage.report.total_snapshots = plan.total_snapshots;
        if plan.segments.is_empty() {
            return self.job_done();
        }
        // From now on the deleted records are gone for readers, even before
        // the files are: nobody starts reading in a segment being deleted.
        self.storage.retained_from = plan.retained_from;
        self.decisions.forget_below(plan.retained_from);
        let planned = plan.segments.clone();
        let storage = self.env.storage.clone();
        let done = in_background(&*self.env.tasks, move || delete_segments(&*storage, &plan));
        self.storage.phase = Phase::Deleting { done, planned };
    }

    fn segments_deleted(&mut self, result: io::Result<()>, planned: Vec<SegmentInfo>) {
        if let Err(e) = result {
            self.storage.report.error = Some(format!("compaction failed: {e}"));
        }
        if let Err(e) = self.reader_mut().and_then(|(_, r)| r.refresh()) {
            self.fail_stop("cannot list the WAL", &e);
        }
        let present: Vec<u64> = self
            .reader
            .as_ref()
            .map(|r| r.segments().iter().map(|s| s.id).collect())
            .unwrap_or_default();
        for seg in planned.iter().filter(|s| !present.contains(&s.id)) {
            self.storage.recovered.forget(seg.id);
            self.storage.report.segments_deleted += 1;
            self.storage.report.bytes_reclaimed += seg.size_bytes;
        }
        self.job_done();
    }

    /// The current job is over: answer its requests.
    fn job_done(&mut self) {
        self.storage.phase = Phase::Idle;
        let mut report = std::mem::take(&mut self.storage.report);
        report.wal_segments = self.reader.as_ref().map_or(0, |r| r.segments().len()) as u64;
        tracing::debug!(
            "shard {}: storage job done: {} snapshot(s) written, {} segment(s) deleted",
            self.state.shard_id,
            report.snapshots_created,
            report.segments_deleted,
        );
        for w in self.storage.answering.drain(..) {
            let _ = w.send(report.clone());
        }
    }

    fn reader_mut(&mut self) -> io::Result<(PathBuf, &mut LogReader)> {
        if self.reader.is_none() {
            let dir = self.storage.shard_dir.join("wal");
            self.reader = Some(LogReader::open(self.env.storage.clone(), &dir)?);
        }
        let dir = self.storage.shard_dir.clone();
        match self.reader.as_mut() {
            Some(r) => Ok((dir, r)),
            None => Err(io::Error::other("log reader unavailable")),
        }
    }

    fn auto_due(&self) -> bool {
        let Some(auto) = &self.storage.auto else {
            return false;
        };
        if self.env.clock.elapsed(self.storage.last_snapshot_at) < auto.min_interval {
            return false;
        }
        let new_records = self.wal.stats().records_appended - self.storage.records_at_last_snapshot;
        if new_records == 0 {
            return false;
        }
        let size = self.reader.as_ref().map_or(0, LogReader::total_size_bytes);
        (auto.events_threshold > 0 && new_records >= auto.events_threshold)
            || (auto.size_threshold_bytes > 0 && size >= auto.size_threshold_bytes)
    }

    /// One turn of storage work; called by the loop after each group.
    pub(super) fn storage_turn(&mut self) {
        match std::mem::replace(&mut self.storage.phase, Phase::Idle) {
            Phase::Idle => self.maybe_start_snapshot(),
            Phase::Encoding(job) => self.encode_slice(job),
            Phase::Writing(rx) => match poll(&rx) {
                Some(result) => self.snapshot_written(result),
                None => self.storage.phase = Phase::Writing(rx),
            },
            Phase::Deleting { done, planned } => match poll(&done) {
                Some(result) => self.segments_deleted(result, planned),
                None => self.storage.phase = Phase::Deleting { done, planned },
            },
        }
    }

    fn maybe_start_snapshot(&mut self) {
        if !(self.storage.wanted || self.auto_due()) || !self.txns.is_empty() {
            return;
        }
        self.storage.wanted = false;
        self.storage.answering = std::mem::take(&mut self.storage.queued);
        self.storage.report = CompactReport::default();
        let clock = self.wal.clock();
        // Taken between group commits: nothing is staged, every entry counted
        // is in the log, and every record so far has an offset ≤ `covered`.
        debug_assert_eq!(self.wal.staged_records(), 0);
        debug_assert_eq!(self.wal.entries(), self.wal.entries_committed());
        let at = LogPosition {
            covered_offset: make_offset(clock.last_tick(), self.state.shard_id),
            last_tick: clock.last_tick(),
            entries: self.wal.entries_committed(),
        };
        self.storage.records_at_last_snapshot = self.wal.stats().records_appended;
        self.storage.last_snapshot_at = self.env.clock.monotonic();
        let job = SnapshotJob::start(&self.state, at, &*self.env.clock);
        self.storage.phase = Phase::Encoding(job);
    }

    fn encode_slice(&mut self, mut job: SnapshotJob) {
        let txns = &self.txns;
        let original = |id: &str| {
            txns.values()
                .find_map(|p| p.undo.original(id).map(|o| o.cloned()))
        };
        let budget = Duration::from_micros(SNAPSHOT_SLICE_US);
        match job.step(&self.state, &original, &*self.env.clock, budget) {
            SliceOutcome::More => self.storage.phase = Phase::Encoding(job),
            SliceOutcome::Restart => {
                // FLUSH_ALL emptied the shard: start over, for the same askers.
                self.storage.wanted = true;
                let answering = std::mem::take(&mut self.storage.answering);
                self.storage.queued.splice(0..0, answering);
            }
            SliceOutcome::Done => {
                let dir = self.storage.shard_dir.clone();
                tracing::debug!(
                    "shard {}: snapshot encoded in {} ms; writing",
                    self.state.shard_id,
                    self.env.clock.elapsed(job.started).as_millis()
                );
                let image = job.finish();
                let storage = self.env.storage.clone();
                let rx = in_background(&*self.env.tasks, move || write(&*storage, &dir, image));
                self.storage.phase = Phase::Writing(rx);
            }
        }
    }

    fn snapshot_written(&mut self, result: io::Result<WrittenSnapshot>) {
        match result {
            Ok(written) => {
                tracing::debug!(
                    "shard {}: snapshot {} written ({} bytes)",
                    self.state.shard_id,
                    written.file.path.display(),
                    written.file.size_bytes
                );
                self.storage.report.snapshots_created = 1;
                self.start_compaction();
            }
            Err(e) => {
                tracing::warn!("shard {}: snapshot failed: {e}", self.state.shard_id);
                self.storage.report.error = Some(format!("snapshot failed: {e}"));
                self.job_done();
            }
        }
    }

    /// SNAPSHOT_INSTANCE: the instance as JSON in its own file (the latest
    /// one per instance is kept), written atomically and synced.
    pub(super) fn snapshot_instance(&mut self, id: &str) -> EngineResult<Vec<u8>> {
        let inst = self.state.active(id)?;
        let snapshot_id = format!("snap-{}", uuid::Uuid::new_v4());
        let mut r = ResultWriter::new();
        r.u64("created_at", inst.created_at_ms)
            .ctx("ctx", &inst.ctx)
            .str("instance_id", id)
            .str("machine", &inst.machine.machine)
            .str("snapshot_id", &snapshot_id)
            .str("state", &inst.state)
            .u64("version", inst.machine.version as u64)
            .u64("wal_offset", inst.last_wal_offset);
        let body = r.finish();
        let wal_offset = inst.last_wal_offset;
        let dir = self.storage.shard_dir.join("snapshots").join("instances");
        let name = format!(
            "{:08x}{:08x}.json",
            crc32c::crc32c(id.as_bytes()),
            crc32c::crc32c_append(0x5eed, id.as_bytes())
        );
        let storage = &*self.env.storage;
        let write = || -> io::Result<()> {
            storage.create_dir_all(&dir)?;
            storage.replace_file(&dir.join(&name), &body)
        };
        write()
            .map_err(|e| EngineError::internal(format!("writing the instance snapshot: {e}")))?;
        let mut r = ResultWriter::new();
        r.str("checksum", &format!("{:08x}", crc32c::crc32c(&body)))
            .str("instance_id", id)
            .u64("size_bytes", body.len() as u64)
            .str("snapshot_id", &snapshot_id)
            .u64("wal_offset", wal_offset);
        Ok(r.finish())
    }

    /// Log facts for WAL_STATS and metrics.
    pub(super) fn fill_log_stats(&mut self, stats: &mut super::command::ShardStats) {
        stats.entries = self.wal.entries_committed();
        if self.member.is_some() {
            self.fill_member_log_stats(stats);
        } else {
            self.fill_standalone_log_stats(stats);
        }
        stats.snapshots = list_snapshots(&*self.env.storage, &self.storage.shard_dir)
            .map_or(0, |l| l.len() as u64);
    }

    /// A standalone shard's log: its segment files.
    fn fill_standalone_log_stats(&mut self, stats: &mut super::command::ShardStats) {
        if let Ok((_, reader)) = self.reader_mut() {
            if let Err(e) = reader.refresh() {
                let shard = self.state.shard_id;
                self.env.fail_stop(shard, "cannot list the WAL", &e);
            }
            stats.log_segments = reader.segments().len() as u64;
            stats.log_bytes_allocated = reader.total_size_bytes();
            stats.oldest_offset = reader.oldest_offset();
            stats.reads = reader.stats();
            let present: Vec<u64> = reader.segments().iter().map(|s| s.id).collect();
            let written = self.wal.written_per_segment();
            (stats.log_records, stats.log_data_bytes) =
                self.storage.recovered.held(&present, written);
            stats.reads = self.storage.recovery_reads.plus(stats.reads);
        }
        stats.retained_from = self.storage.retained_from;
    }

    /// A member's WAL is its group's log (its own writer only stages
    /// turns): the log store's files and writes, and the reads by offset
    /// this member made of it.
    fn fill_member_log_stats(&mut self, stats: &mut super::command::ShardStats) {
        // How far back it reads (this also takes in a finished read-back).
        stats.retained_from = self.storage.retained_from.max(self.member_readable_from());
        let member = self.member();
        stats.reads = member.reads;
        stats.oldest_offset = member.offsets.oldest_offset();
        match member.link.log_files() {
            Ok((wal, files)) => {
                stats.wal = wal;
                stats.log_segments = files.segments;
                stats.log_bytes_allocated = files.bytes_allocated;
                stats.log_records = files.records;
                stats.log_data_bytes = files.data_bytes;
            }
            Err(e) => {
                let shard = self.state.shard_id;
                self.env.fail_stop(shard, "cannot list the group's log", &e);
            }
        }
    }
}
