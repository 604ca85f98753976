//! How a member applies what its group committed (`replica.rs`): entries
//! delivered by the group (a follower's replay, a leader's own entries
//! skipped), snapshots installed, and the rebuild of a leader whose memory
//! ran ahead of the committed log. Cross-shard batch records go to
//! `member_txn.rs`; watch events are queued for every transition applied,
//! those inside atomic batches included.

use super::decisions::Decisions;
use super::group_link::{Delivery, SnapshotPart};
use super::replay::{Publish, ReplayCounts, TxnLog};
use super::runner::Shard;
use super::state::ShardState;
use crate::snapshot::LogPosition;
use crate::wal::offset::tick_of_offset;
use crate::wal::record::{for_each_record, RecordHeader, RecordKind};
use crate::wal::sequence::entries_in;

impl Shard {
    /// Apply every delivery waiting.
    pub(super) fn drain_deliveries(&mut self) {
        while let Ok(d) = self.member().deliveries.try_recv() {
            self.deliver(d);
        }
    }

    pub(super) fn deliver(&mut self, d: Delivery) {
        match d {
            Delivery::Apply { index, records } => {
                if index <= self.member().applied_index {
                    return; // already in the state (a rebuild read it)
                }
                let own = self.member().own_index == Some(index);
                let result = if own {
                    self.member_mut().own_index = None;
                    let shard = self.state.shard_id;
                    advance_position(&mut self.member_mut().position, &records, shard)
                } else {
                    self.apply_records(&records)
                };
                if let Err(e) = result {
                    // A committed entry this member cannot apply: its state
                    // would differ from the group's from here on.
                    self.fail_stop("a committed entry cannot be applied", &e);
                }
                let m = self.member_mut();
                m.applied_index = index;
                m.offsets.note(index, &records);
                let entries = m.position.entries;
                self.wal.set_entries(entries);
                self.watermark_moved();
            }
            Delivery::Install(part) => {
                if part.index <= self.member().applied_index {
                    return;
                }
                // A snapshot being taken lists the instances of the state
                // this one replaces: it is abandoned (the builder asks again).
                self.member_mut().snapshot_job = None;
                self.install(*part);
                // What the snapshot holds was published by whoever applied it.
                self.state.events.clear();
                self.watermark_moved();
            }
            Delivery::Snapshot(done) => self.start_member_snapshot(done),
        }
    }

    fn install(&mut self, part: SnapshotPart) {
        self.wal.clock_mut().observe_tick(part.position.last_tick);
        self.state = part.state;
        self.txn_log = part.txns;
        self.relock_in_doubt();
        // Reads reach back to the snapshot, and past it once the log kept
        // behind it is indexed (`member_read_back.rs`).
        self.decisions = Decisions::default();
        let m = self.member_mut();
        m.applied_index = part.index;
        m.position = part.position;
        m.offsets.reset(Some(part.position.covered_offset));
        m.read_back = None;
        self.wal.set_entries(part.position.entries);
        if let Some(from) = part.log_kept_from {
            self.start_read_back(from, part.index);
        }
        // The state this one replaced, as large as the shard, was just
        // freed on this thread.
        crate::env::memory::release_freed_memory();
    }

    /// Replay one committed entry's records into the state.
    fn apply_records(&mut self, records: &[u8]) -> Result<(), String> {
        let mut counts = ReplayCounts::default();
        // Cross-shard batch records are `member_txn.rs`'s: none reach this.
        let mut no_txns = TxnLog::default();
        let shard = self.state.shard_id;
        for_each_record(records, |header, payload| {
            let at = |e: String| format!("record at offset {}: {e}", header.offset);
            match header.kind {
                RecordKind::Prepare | RecordKind::Commit | RecordKind::Abort => {
                    self.apply_txn_record(header, payload).map_err(at)?
                }
                _ => {
                    self.state
                        .replay_any_as(header, payload, &mut counts, &mut no_txns, Publish::Events)
                        .map_err(at)?;
                }
            }
            note_record(&mut self.member_mut().position, header, shard);
            self.wal
                .clock_mut()
                .observe_tick(tick_of_offset(header.offset));
            Ok(())
        })
    }

    /// Memory ran ahead of the committed log (a turn the group did not
    /// take): rebuild the state from the newest snapshot and the committed
    /// entries after it. Entries this loop had applied before are not
    /// published again; those it had not are.
    pub(super) async fn rebuild(&mut self) {
        let link = self.member().link.clone();
        let committed = match link.committed().await {
            Ok(c) => c,
            Err(e) => self.fail_stop("cannot rebuild the state from the group's log", &e),
        };
        let published_up_to = self.member().applied_index;
        let shard = self.state.shard_id;
        let allow_recreate = self.state.allow_instance_recreate;
        match committed.snapshot {
            Some(part) => self.install(part),
            None => {
                self.state = ShardState::new(shard, allow_recreate);
                self.txn_log = TxnLog::default();
                self.relock_in_doubt();
                self.decisions = Decisions::default();
                let m = self.member_mut();
                m.applied_index = 0;
                m.position = LogPosition {
                    covered_offset: 0,
                    last_tick: 0,
                    entries: 0,
                };
                m.offsets.reset(None);
                m.read_back = None;
            }
        }
        self.state.events.clear();
        for (index, records) in committed.entries {
            if index <= self.member().applied_index {
                continue;
            }
            if let Err(e) = self.apply_records(&records) {
                self.fail_stop("a committed entry cannot be applied", &e);
            }
            let m = self.member_mut();
            m.applied_index = index;
            m.offsets.note(index, &records);
            if index <= published_up_to {
                self.state.events.clear();
            }
        }
        let m = self.member_mut();
        // The state was replaced: a snapshot being taken is abandoned.
        m.snapshot_job = None;
        m.ready_term = None;
        m.own_index = None;
        let entries = m.position.entries;
        self.wal.set_entries(entries);
    }
}

fn note_record(position: &mut LogPosition, header: &RecordHeader, shard: usize) {
    position.entries += entries_in(header.kind, shard);
    position.covered_offset = position.covered_offset.max(header.offset);
    position.last_tick = position.last_tick.max(tick_of_offset(header.offset));
}

/// Move `position` past an entry's records without replaying them.
fn advance_position(
    position: &mut LogPosition,
    records: &[u8],
    shard: usize,
) -> Result<(), String> {
    for_each_record(records, |header, _| {
        note_record(position, header, shard);
        Ok(())
    })
}
