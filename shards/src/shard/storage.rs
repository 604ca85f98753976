//! The shard's storage lifecycle, run between group commits: snapshot jobs
//! (one slice per loop turn; the file is written on a blocking thread),
//! compaction after each snapshot, automatic triggering, SNAPSHOT_INSTANCE,
//! and the log statistics behind WAL_STATS. See `snapshotting.rs` for the
//! snapshot and deletion rules.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::result::ResultWriter;
use super::runner::{fail_stop, Shard, ShardConfig};
use super::snapshotting::{compact, write, CompactReport, SliceOutcome, SnapshotJob};
use crate::error::{EngineError, EngineResult};
use crate::snapshot::{list_snapshots, WrittenSnapshot};
use crate::wal::offset::make_offset;
use crate::wal::reader::LogReader;
use crate::wal::recovery::ScanOutcome;
use crate::wal::segment::sync_dir;

/// When the shard snapshots and compacts by itself (spec §11.11; the
/// thresholds apply to each shard's own log).
#[derive(Debug, Clone)]
pub struct AutoCompaction {
    pub events_threshold: u64,
    pub size_threshold_bytes: u64,
    pub min_interval: Duration,
}

/// How soon the loop must come back while a snapshot file is being written.
const SNAPSHOT_WRITE_POLL_MS: u64 = 2;
/// Pause between two snapshot slices. It must be a real wait, not a yield:
/// only a task that is not ready lets the executor poll for network I/O, so
/// the connections that share shard 0's executor keep being served.
const SNAPSHOT_SLICE_INTERVAL_US: u64 = 100;

pub struct StorageState {
    shard_dir: PathBuf,
    auto: Option<AutoCompaction>,
    job: Option<SnapshotJob>,
    writing: Option<flume::Receiver<io::Result<WrittenSnapshot>>>,
    /// A snapshot (+ compaction) is wanted and not yet started.
    wanted: bool,
    waiters: Vec<flume::Sender<CompactReport>>,
    last_snapshot_at: Instant,
    records_at_last_snapshot: u64,
    /// Records per segment found by recovery.
    recovered_records: BTreeMap<u64, u64>,
    /// Offsets below this were compacted away (0: nothing ever deleted).
    retained_from: u64,
}

impl StorageState {
    pub fn new(cfg: &ShardConfig, scan: &ScanOutcome, _covered: Option<u64>) -> Self {
        StorageState {
            shard_dir: cfg.dir.clone(),
            auto: cfg.auto_compaction.clone(),
            job: None,
            writing: None,
            wanted: false,
            waiters: Vec::new(),
            last_snapshot_at: Instant::now(),
            records_at_last_snapshot: 0,
            recovered_records: scan.segment_records.iter().copied().collect(),
            retained_from: 0,
        }
    }

    /// Offsets below this are no longer in the log (0: nothing deleted).
    pub fn retained_from(&self) -> u64 {
        self.retained_from
    }

    /// Upper bound for the loop's idle wait while storage work is pending.
    pub fn wait_hint(&self) -> Duration {
        if self.job.is_some() {
            Duration::from_micros(SNAPSHOT_SLICE_INTERVAL_US)
        } else if self.writing.is_some() {
            Duration::from_millis(SNAPSHOT_WRITE_POLL_MS)
        } else {
            Duration::MAX
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
        let any_snapshot = list_snapshots(&self.storage.shard_dir).is_ok_and(|l| !l.is_empty());
        if force_snapshot || grew || !any_snapshot || self.storage.job.is_some() {
            self.storage.wanted = true;
            if let Some(done) = done {
                self.storage.waiters.push(done);
            }
            return;
        }
        let report = self.compact_now(CompactReport::default());
        if let Some(done) = done {
            let _ = done.send(report);
        }
    }

    fn compact_now(&mut self, mut report: CompactReport) -> CompactReport {
        let started = Instant::now();
        let active = self.wal.segment_id();
        let result = self
            .reader_mut()
            .and_then(|(dir, reader)| compact(&dir, reader, active, &mut report));
        match result {
            Ok(deleted) => {
                for id in deleted {
                    self.storage.recovered_records.remove(&id);
                }
                if report.segments_deleted > 0 {
                    self.storage.retained_from = self
                        .reader
                        .as_ref()
                        .and_then(LogReader::oldest_offset)
                        .unwrap_or(self.storage.retained_from);
                }
            }
            Err(e) => report.error = Some(format!("compaction failed: {e}")),
        }
        tracing::debug!(
            "shard {}: compaction deleted {} segment(s) in {} us",
            self.state.shard_id,
            report.segments_deleted,
            started.elapsed().as_micros()
        );
        report
    }

    fn reader_mut(&mut self) -> io::Result<(PathBuf, &mut LogReader)> {
        if self.reader.is_none() {
            self.reader = Some(LogReader::open(&self.storage.shard_dir.join("wal"))?);
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
        if self.storage.last_snapshot_at.elapsed() < auto.min_interval {
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
        if let Some(rx) = &self.storage.writing {
            match rx.try_recv() {
                Ok(result) => {
                    self.storage.writing = None;
                    self.snapshot_written(result);
                }
                Err(flume::TryRecvError::Empty) => return,
                Err(flume::TryRecvError::Disconnected) => {
                    self.storage.writing = None;
                    self.snapshot_written(Err(io::Error::other("snapshot writer vanished")));
                }
            }
        }
        if let Some(job) = &mut self.storage.job {
            let txns = &self.txns;
            let original = |id: &str| {
                txns.values()
                    .find_map(|p| p.undo.original(id).map(|o| o.cloned()))
            };
            let outcome = job.step(&self.state, &original);
            if outcome == SliceOutcome::Restart {
                self.storage.job = None;
                self.storage.wanted = true;
                return;
            }
            if outcome == SliceOutcome::Done {
                if let Some(job) = self.storage.job.take() {
                    let dir = self.storage.shard_dir.clone();
                    let encode_ms = job.started.elapsed().as_millis();
                    let image = job.finish();
                    tracing::debug!(
                        "shard {}: snapshot encoded in {encode_ms} ms; writing",
                        self.state.shard_id
                    );
                    let (tx, rx) = flume::bounded(1);
                    glommio::spawn_local(async move {
                        let result = glommio::executor()
                            .spawn_blocking(move || write(&dir, image))
                            .await;
                        let _ = tx.send(result);
                    })
                    .detach();
                    self.storage.writing = Some(rx);
                }
            }
            return;
        }
        if self.storage.writing.is_none()
            && (self.storage.wanted || self.auto_due())
            && self.txns.is_empty()
        {
            self.storage.wanted = false;
            let clock = self.wal.clock();
            let covered = make_offset(clock.last_tick(), self.state.shard_id);
            self.storage.records_at_last_snapshot = self.wal.stats().records_appended;
            self.storage.last_snapshot_at = Instant::now();
            self.storage.job = Some(SnapshotJob::start(&self.state, covered, clock.last_tick()));
        }
    }

    fn snapshot_written(&mut self, result: io::Result<WrittenSnapshot>) {
        let report = match result {
            Ok(written) => {
                tracing::debug!(
                    "shard {}: snapshot {} written ({} bytes)",
                    self.state.shard_id,
                    written.file.path.display(),
                    written.file.size_bytes
                );
                self.compact_now(CompactReport {
                    snapshots_created: 1,
                    ..CompactReport::default()
                })
            }
            Err(e) => {
                tracing::warn!("shard {}: snapshot failed: {e}", self.state.shard_id);
                CompactReport {
                    error: Some(format!("snapshot failed: {e}")),
                    ..CompactReport::default()
                }
            }
        };
        for w in self.storage.waiters.drain(..) {
            let _ = w.send(report.clone());
        }
    }

    /// SNAPSHOT_INSTANCE: the instance as JSON in its own file (the latest
    /// one per instance is kept), written atomically and synced.
    pub(super) fn snapshot_instance(&mut self, id: &str) -> EngineResult<Vec<u8>> {
        let inst = self.state.active(id)?;
        let snapshot_id = format!("snap-{}", uuid::Uuid::new_v4());
        let mut r = ResultWriter::new();
        r.u64("created_at", inst.created_at_ms)
            .value("ctx", &inst.ctx)
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
        let write = || -> io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            let tmp = dir.join(format!("{name}.tmp"));
            std::fs::write(&tmp, &body)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, dir.join(&name))?;
            sync_dir(&dir)
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
        if let Ok((_, reader)) = self.reader_mut() {
            if let Err(e) = reader.refresh() {
                fail_stop(self.state.shard_id, "cannot list the WAL", &e);
            }
            stats.log_segments = reader.segments().len() as u64;
            stats.log_bytes_on_disk = reader.total_size_bytes();
            stats.oldest_offset = reader.oldest_offset();
            let present: Vec<u64> = reader.segments().iter().map(|s| s.id).collect();
            let mut per_segment = self.storage.recovered_records.clone();
            for (id, n) in self.wal.written_per_segment() {
                *per_segment.entry(*id).or_default() += n;
            }
            stats.log_entries = per_segment
                .iter()
                .filter(|(id, _)| present.contains(id))
                .map(|(_, n)| n)
                .sum();
        }
        stats.retained_from = self.storage.retained_from;
        stats.snapshots = list_snapshots(&self.storage.shard_dir).map_or(0, |l| l.len() as u64);
    }
}
