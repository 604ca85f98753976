//! A group member's snapshot, taken in slices between the loop's turns.
//!
//! openraft asks for a snapshot every `snapshot_every_entries` entries, at
//! the same log index on every member. Copying and encoding the whole state
//! in one go stopped the loop for seconds once a shard held about a million
//! instances — on every node at once, past the watchdog's limit, which
//! stopped all three (bench-results/2026-12-05/cluster-vs-single/notes.md).
//! Here the snapshot is a standalone shard's COMPACT job
//! (`snapshotting.rs`): it starts once every entry up to the snapshot's
//! index is applied, lists the instances present then, and encodes them a
//! slice (`SNAPSHOT_SLICE_US`) after each turn while the loop goes on.
//!
//! The image is fuzzy: an instance encoded late may show entries after the
//! snapshot's index. That is safe for the same reason as for COMPACT: every
//! reader of a group snapshot — a follower installing it, a member
//! restarting or rebuilding from it — applies the committed entries after
//! its index on top, and applying a record is idempotent (a create
//! replaces, an apply sets the state and context it recorded, a delete
//! marks; a batch part's Commit applies the part's records the same way).
//! Instances created after the start are not in the image; their creates
//! come after the index. A member holds a prepared batch part's records
//! aside (its instances unchanged until the Commit), so the image needs no
//! "before the batch" view; the parts in doubt and the committed batch ids
//! are copied at the start, as of the index.

use std::time::Duration;

use super::group_link::GroupImage;
use super::replay::InDoubtPart;
use super::runner::Shard;
use super::snapshotting::{SliceOutcome, SnapshotJob, SNAPSHOT_SLICE_US};

/// A group snapshot being taken.
pub struct GroupSnapshotJob {
    job: SnapshotJob,
    in_doubt: Vec<InDoubtPart>,
    committed: (Vec<u64>, u64),
    done: flume::Sender<GroupImage>,
}

impl Shard {
    /// Start the snapshot `done` waits for: the state now reflects every
    /// entry up to its index (deliveries come in log order).
    pub(super) fn start_member_snapshot(&mut self, done: flume::Sender<GroupImage>) {
        // The last snapshot's purge has been made by now: forget what it
        // removed (`member_read.rs`).
        self.member_readable_from();
        let (in_doubt, committed) = self.txn_log.sorted_copy();
        let position = self.member().position;
        let job = SnapshotJob::start(&self.state, position, &*self.env.clock);
        // A newer request replaces an older one (its builder gave up).
        self.member_mut().snapshot_job = Some(GroupSnapshotJob {
            job,
            in_doubt,
            committed,
            done,
        });
    }

    /// Whether a snapshot is being taken (the loop then does not sleep).
    pub(super) fn member_snapshot_running(&self) -> bool {
        self.member
            .as_ref()
            .is_some_and(|m| m.snapshot_job.is_some())
    }

    /// Encode one slice of the snapshot being taken; hand the image over
    /// once complete.
    pub(super) fn step_member_snapshot(&mut self) {
        let Some(mut running) = self.member_mut().snapshot_job.take() else {
            return;
        };
        let budget = Duration::from_micros(SNAPSHOT_SLICE_US);
        // A member's prepared parts leave their instances as they were.
        let unchanged = |_: &str| None;
        match running
            .job
            .step(&self.state, &unchanged, &*self.env.clock, budget)
        {
            SliceOutcome::More => self.member_mut().snapshot_job = Some(running),
            SliceOutcome::Done => {
                let _ = running.done.send(GroupImage {
                    image: running.job.finish(),
                    in_doubt: running.in_doubt,
                    committed: running.committed,
                });
            }
            // The table was emptied under the job (FLUSH_ALL): dropping
            // `done` makes the builder ask again (`loop_machine.rs`).
            SliceOutcome::Restart => {}
        }
    }
}
