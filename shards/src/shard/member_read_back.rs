//! Reading back past the snapshot a member started from: a member that
//! restarted installs its newest snapshot, and its offset index
//! (`member_read.rs`) starts there — yet its log still holds the entries
//! the group kept behind that snapshot (`log_kept_behind_snapshot_entries`).
//! This indexes them, so that WAL_READ and a watch's `from_offset` reach
//! as far back on a node that restarted as on one that did not.
//!
//! * **Only the group's entries.** The group says which entries qualify
//!   (`SnapshotPart::log_kept_from`): those before the snapshot's last
//!   entry in a log that holds that very entry, which by Raft's log
//!   matching are the committed ones.
//! * **Beside the loop.** A task reads the entries in steps, yielding
//!   between them (the log can hold hundreds of MB), and leaves what it
//!   found in a slot; the loop takes it in before its next read by offset.
//!   Until then a read from before the snapshot is refused as too old, as
//!   before.
//! * **Batch decisions.** A cross-shard part prepared in those entries is
//!   visible once its decision is known (`decisions.rs`). A decision
//!   logged there is found by the same read; one logged after the snapshot
//!   belongs to a part the snapshot holds in doubt, which is noted as
//!   prepared when the read starts, so that its decision is kept when it
//!   is applied, even while the read goes on.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use super::decisions::Decisions;
use super::member_read::{OffsetIndex, MEMBER_READ_ENTRIES_PER_STEP};
use super::runner::Shard;
use crate::env::Env;
use crate::shard::group_link::GroupLink;
use crate::wal::reader::ReadStats;
use crate::wal::record::{decode_record, for_each_record};

/// What the read of the log behind the snapshot found.
struct Found {
    offsets: OffsetIndex,
    decisions: Decisions,
    /// Bytes of the entries read (WAL_STATS counts the read-back as one
    /// read, as a standalone shard counts its recovery).
    bytes_read: u64,
    /// Whether the read began at the log's first entry (index 0) and was
    /// not cut short by a purge: the whole log, from offset 0.
    from_log_start: bool,
}

/// Where the task leaves its result for the loop (`None`: not done yet).
type SlotCell = RefCell<Option<Result<Found, String>>>;
type Slot = Rc<SlotCell>;

/// A read of the log behind the snapshot, under way or done and not yet
/// taken in; dropping it abandons the read.
pub struct ReadBack {
    slot: Slot,
}

impl Shard {
    /// After installing a snapshot: index the committed entries
    /// `from..=to` the log still holds behind it (see the module comment).
    pub(super) fn start_read_back(&mut self, from: u64, to: u64) {
        for (&txid, (_, inner)) in &self.txn_log.in_doubt {
            if let Ok((first, _)) = decode_record(inner) {
                self.decisions.prepared(txid, first.offset);
            }
        }
        let slot: Slot = Rc::new(RefCell::new(None));
        let (link, env, alive) = (
            self.member().link.clone(),
            self.env.clone(),
            Rc::downgrade(&slot),
        );
        let shard = self.state.shard_id;
        self.env.tasks.spawn(Box::pin(async move {
            let started = env.clock.monotonic();
            let found = read_back(&*link, &env, from, to, &alive).await;
            match &found {
                Ok(found) => tracing::info!(
                    "shard {shard}: indexed the log kept behind the snapshot at log index {to} \
                     ({} entries with records from index {from}) in {} ms",
                    found.offsets.len(),
                    (env.clock.monotonic().saturating_sub(started)).as_millis()
                ),
                Err(e) => tracing::warn!(
                    "shard {shard}: reads by offset reach back only to the snapshot at log \
                     index {to}: the log kept behind it (from index {from}) could not be \
                     indexed: {e}"
                ),
            }
            if let Some(slot) = alive.upgrade() {
                *slot.borrow_mut() = Some(found);
            }
        }));
        self.member_mut().read_back = Some(ReadBack { slot });
    }

    /// Take in a finished read of the log behind the snapshot, if any.
    pub(super) fn take_read_back(&mut self) {
        let m = self.member_mut();
        let Some(done) = m
            .read_back
            .as_ref()
            .and_then(|r| r.slot.borrow_mut().take())
        else {
            return;
        };
        m.read_back = None;
        if let Ok(found) = done {
            m.reads = m.reads.plus(ReadStats {
                reads: 1,
                bytes_read: found.bytes_read,
            });
            m.offsets.prepend(found.offsets, found.from_log_start);
            self.decisions.take_earlier(found.decisions);
        }
    }

    /// Whether a read of the log behind the snapshot is still under way.
    pub(super) fn reading_back(&self) -> bool {
        self.member().read_back.is_some()
    }
}

/// Read entries `from..=to` of the group's log, noting where each one's
/// offsets start and what its records say of batch parts; stops early
/// once the loop dropped its `ReadBack` (`alive` gone).
async fn read_back(
    link: &dyn GroupLink,
    env: &Env,
    from: u64,
    to: u64,
    alive: &Weak<SlotCell>,
) -> Result<Found, String> {
    let mut found = Found {
        offsets: OffsetIndex::default(),
        decisions: Decisions::default(),
        bytes_read: 0,
        // A group's log starts at index 0; a log that starts later had
        // its beginning purged.
        from_log_start: from == 0,
    };
    let mut next = from;
    while next <= to {
        if alive.strong_count() == 0 {
            return Err("abandoned: a newer snapshot replaced the state".into());
        }
        let upto = to.min(next + MEMBER_READ_ENTRIES_PER_STEP - 1);
        let entries = match link.entries(next, upto).await {
            Ok(entries) => entries,
            // Purged meanwhile (a snapshot installed from the leader is
            // followed by the purge of the log behind it): what was found
            // is forgotten again by the purge's rule (`member_read.rs`).
            Err(_) if link.has_purged(next) => {
                found.from_log_start = false;
                break;
            }
            Err(e) => return Err(e),
        };
        for (index, records) in entries {
            found.bytes_read += records.len() as u64;
            found.offsets.note(index, &records);
            for_each_record(&records, |header, payload| {
                found.decisions.note_record(header, payload)
            })
            .map_err(|e| format!("log index {index}: {e}"))?;
        }
        next = upto + 1;
        env.tasks.yield_to_others().await;
    }
    Ok(found)
}
