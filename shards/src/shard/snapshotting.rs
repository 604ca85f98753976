//! Taking a shard's snapshot without stopping the shard, and compacting its
//! log once snapshots cover it.
//!
//! # A fuzzy snapshot, in slices
//!
//! A snapshot job starts between two group commits, when no cross-shard
//! batch is prepared on the shard; its `covered_offset` is the offset of the
//! last record written then. It walks the instance table's positions in use
//! at that moment (`InstanceTable::positions`: an instance keeps its
//! position while it stays in the table) and encodes the instances there in
//! slices of at most `SNAPSHOT_SLICE_US`, one per turn of the shard loop,
//! while the shard keeps serving requests in between — so a large shard is
//! never paused for more than one slice. (A
//! slice is bounded by time, not by a count of instances: how long an
//! instance takes depends on its size and on what is in the CPU cache.)
//!
//! Instances may change while the job runs, so the file may hold some
//! instances as they were *after* `covered_offset`. That is harmless:
//! recovery replays every record after `covered_offset`, and replay is
//! idempotent (a create replaces, an apply sets the state and context it
//! recorded, a delete marks) — each instance ends as its last record says.
//! The walk may also meet an instance created after `covered_offset` (a
//! batch's undone create left a position free and a later create took it):
//! harmless too, its create record is replayed over it.
//! Instances held by a batch prepared during the job are encoded as they
//! were before the batch, because the batch's records lie after
//! `covered_offset` and replay will apply them only if the batch committed.
//!
//! # Compaction
//!
//! After a snapshot is durable, a WAL segment is deleted only when
//! * all its records are covered by the OLDEST retained snapshot (a damaged
//!   newest snapshot falls back to the previous one, which needs the log
//!   after it), and
//! * it was last written more than `COMPACTION_SEGMENT_AGE_MIN_MS` ago: the
//!   decider of a cross-shard batch keeps its `Commit` record in the log
//!   long after every participant has logged its own decision, so recovery
//!   can always resolve a part left in doubt.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::state::ShardState;
use crate::env::{Clock, Storage};
use crate::instance::Instance;
use crate::snapshot::{
    list_snapshots, write_snapshot, LogPosition, SnapshotEncoder, WrittenSnapshot,
};
use crate::wal::reader::{LogReader, SegmentInfo};
use crate::wal::retire::retire_segments;
use crate::wal::segment::segment_path;

/// Longest a slice of snapshot encoding runs: what a request arriving
/// meanwhile may have to wait.
pub const SNAPSHOT_SLICE_US: u64 = 250;
/// Instances encoded between two looks at the clock within a slice.
const SNAPSHOT_CLOCK_CHECK_INSTANCES: usize = 16;
/// A segment younger than this is never deleted by compaction.
pub const COMPACTION_SEGMENT_AGE_MIN_MS: u64 = 10_000;

/// What a COMPACT did on one shard.
#[derive(Debug, Clone, Default)]
pub struct CompactReport {
    pub snapshots_created: u64,
    pub segments_deleted: u64,
    pub bytes_reclaimed: u64,
    pub total_snapshots: u64,
    pub wal_segments: u64,
    pub error: Option<String>,
}

pub struct SnapshotJob {
    encoder: SnapshotEncoder,
    /// The job encodes the instances at the table's positions `..end`:
    /// every instance present at start.
    end: usize,
    generation: u64,
    next: usize,
    pub covered_offset: u64,
    /// Monotonic time the job started.
    pub started: Duration,
}

/// What one slice of a job did.
#[derive(Debug, PartialEq, Eq)]
pub enum SliceOutcome {
    More,
    Done,
    /// The shard's id list was cleared (FLUSH_ALL): start a new job.
    Restart,
}

impl SnapshotJob {
    pub fn start(state: &ShardState, at: LogPosition, clock: &dyn Clock) -> Self {
        let end = state.instances.positions();
        let encoder = SnapshotEncoder::for_state(state, at, state.instances.len());
        SnapshotJob {
            encoder,
            end,
            generation: state.instances.generation(),
            next: 0,
            covered_offset: at.covered_offset,
            started: clock.monotonic(),
        }
    }

    /// Encode the next slice, for about `budget` (at least
    /// `SNAPSHOT_CLOCK_CHECK_INSTANCES` instances). `original(id)` gives, for
    /// an instance held by a prepared batch, its state before the batch
    /// (`Some(None)`: the batch created it).
    pub fn step(
        &mut self,
        state: &ShardState,
        original: &dyn Fn(&str) -> Option<Option<Instance>>,
        clock: &dyn Clock,
        budget: Duration,
    ) -> SliceOutcome {
        if state.instances.generation() != self.generation {
            return SliceOutcome::Restart;
        }
        let deadline = clock.monotonic() + budget;
        while self.next < self.end {
            let end = (self.next + SNAPSHOT_CLOCK_CHECK_INSTANCES).min(self.end);
            for position in self.next..end {
                if let Some((id, inst)) = state.instances.at_position(position) {
                    self.add(id, inst, original);
                }
            }
            self.next = end;
            if clock.monotonic() >= deadline {
                break;
            }
        }
        if self.next >= self.end {
            SliceOutcome::Done
        } else {
            SliceOutcome::More
        }
    }

    fn add(
        &mut self,
        id: &str,
        inst: &Instance,
        original: &dyn Fn(&str) -> Option<Option<Instance>>,
    ) {
        match original(id) {
            Some(Some(before)) => self.encoder.add_instance(id, &before),
            Some(None) => {}
            None => self.encoder.add_instance(id, inst),
        }
    }

    /// The encoded image; sealing it (its checksum) is left to the writer
    /// thread.
    pub fn finish(self) -> crate::snapshot::codec::UnsealedImage {
        self.encoder.into_unsealed()
    }
}

/// Seal and write a snapshot image (blocking: run it off the shard loop).
pub fn write(
    storage: &dyn Storage,
    shard_dir: &Path,
    image: crate::snapshot::codec::UnsealedImage,
) -> io::Result<WrittenSnapshot> {
    let written = write_snapshot(storage, shard_dir, &image.seal());
    // The image, as large as the shard's state, was just freed.
    crate::env::memory::release_freed_memory();
    written
}

/// Milliseconds since the file at `path` was last modified (0 if unknown).
fn age_ms(storage: &dyn Storage, clock: &dyn Clock, path: &Path) -> u64 {
    storage
        .metadata(path)
        .map_or(0, |m| clock.now_ms().saturating_sub(m.modified_ms))
}

/// The segments a compaction will delete, decided on the shard (where the
/// log reader lives); the deleting itself is left to the maintenance thread.
#[derive(Debug, Default)]
pub struct CompactionPlan {
    pub wal_dir: PathBuf,
    /// Oldest first.
    pub segments: Vec<SegmentInfo>,
    /// The first offset that stays in the log once they are gone.
    pub retained_from: u64,
    pub total_snapshots: u64,
}

/// Choose the segments the oldest retained snapshot covers (see the module
/// comment for the rule). `active` is the segment being written.
pub fn plan_compaction(
    (storage, clock): (&dyn Storage, &dyn Clock),
    shard_dir: &Path,
    reader: &mut LogReader,
    active: u64,
) -> io::Result<CompactionPlan> {
    let snapshots = list_snapshots(storage, shard_dir)?;
    let mut plan = CompactionPlan {
        wal_dir: reader.dir().to_path_buf(),
        total_snapshots: snapshots.len() as u64,
        ..CompactionPlan::default()
    };
    let Some(oldest_covered) = snapshots.iter().map(|s| s.covered_offset).min() else {
        return Ok(plan);
    };
    reader.refresh()?;
    for pair in reader.segments().windows(2) {
        let (seg, next) = (pair[0], pair[1]);
        if seg.id >= active {
            break;
        }
        // Every record of `seg` is below the next segment's first offset.
        let Some(next_first) = next.first_offset else {
            break;
        };
        if next_first > oldest_covered.saturating_add(1) {
            break;
        }
        if age_ms(storage, clock, &segment_path(&plan.wal_dir, seg.id))
            < COMPACTION_SEGMENT_AGE_MIN_MS
        {
            break;
        }
        plan.segments.push(seg);
        plan.retained_from = next_first;
    }
    Ok(plan)
}

/// Delete the planned segments (blocking: run it on a background thread;
/// see `wal::retire` for how the space is freed without stalling syncs).
pub fn delete_segments(storage: &dyn Storage, plan: &CompactionPlan) -> io::Result<()> {
    let ids: Vec<u64> = plan.segments.iter().map(|s| s.id).collect();
    retire_segments(storage, &plan.wal_dir, &ids)
}

#[cfg(test)]
#[path = "snapshotting_tests.rs"]
mod tests;
