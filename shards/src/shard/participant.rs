//! The shard's side of batches: an atomic batch that lives on this shard
//! alone (one `Batch` record), and the participant's part of a cross-shard
//! batch — prepare (stage, log a `Prepare` record, lock what it touched)
//! and decide (log `Commit` or `Abort`, release or undo). The coordinator
//! and the protocol are described in `src/server/batch.rs`.

use super::command::{BatchVote, Command};
use super::committed_ids::Verdict;
use super::replay::{Publish, ReplayCounts};
use super::runner::Shard;
use super::state::ShardState;
use super::txn::{BufferSink, Prepared, Undo};
use crate::wal::entry;
use crate::wal::record::RecordKind;

/// A staged atomic part: each op's result, how to undo it, its inner records.
pub(super) type Staged = (Vec<Vec<u8>>, Undo, Vec<u8>);

/// A batch part whose record would not fit in its member's log entry
/// beside the records the turn staged already (`WalWriter::room_bytes`):
/// nothing of it ran, and its ops come back to start the next turn.
pub(super) struct NoRoom(pub Vec<Command>);

/// Why a part was not staged: an op failed (the part's vote), or its
/// record has no room in this turn.
pub(super) enum NotStaged {
    No(BatchVote),
    NoRoom(NoRoom),
}

/// The bytes a `Prepare` record holds around its inner records (txid,
/// decider: `entry::write_prepare`).
const PREPARE_HEAD_BYTES: usize = 12;

impl Shard {
    /// Run the ops all-or-nothing into a buffer of inner records, for a
    /// record that holds them and `head_bytes` more. Only the size of the
    /// staged records tells whether that record fits a member's turn: the
    /// ops are kept (cloned) to run again when the turn has a limit.
    pub(super) fn stage(
        &mut self,
        ops: Vec<Command>,
        head_bytes: usize,
        now: u64,
    ) -> Result<Staged, NotStaged> {
        let again = self.wal.room_bytes().map(|_| ops.clone());
        let mut inner = Vec::new();
        let entries_before = self.wal.entries();
        let wal = &mut self.wal;
        let mut reserve = |kind, time_ms| wal.reserve(kind, time_ms);
        let mut sink = BufferSink {
            out: &mut inner,
            reserve: &mut reserve,
        };
        match self.state.run_atomic(ops, now, &mut sink) {
            Ok((results, undo)) => {
                let record_bytes = head_bytes + inner.len();
                if let Some(ops) = again.filter(|_| !self.wal.has_room(record_bytes)) {
                    self.state.undo(undo);
                    self.wal.rewind_entries(entries_before);
                    return Err(NotStaged::NoRoom(NoRoom(ops)));
                }
                Ok((results, undo, inner))
            }
            Err((i, e)) => {
                // The undone ops' records are never written: their places
                // in the entry count go to the next records.
                self.wal.rewind_entries(entries_before);
                Err(NotStaged::No(BatchVote::No(i, e)))
            }
        }
    }

    pub(super) fn atomic_batch(
        &mut self,
        ops: Vec<Command>,
        now: u64,
    ) -> Result<BatchVote, NoRoom> {
        let entries_before = self.wal.entries();
        let (results, undo, inner) = match self.stage(ops, 0, now) {
            Ok(staged) => staged,
            Err(NotStaged::No(vote)) => return Ok(vote),
            Err(NotStaged::NoRoom(ops)) => return Err(ops),
        };
        if inner.is_empty() {
            return Ok(BatchVote::Yes(results));
        }
        match self
            .wal
            .append(RecordKind::Batch, now, |out| out.extend_from_slice(&inner))
        {
            Ok(_) => Ok(BatchVote::Yes(results)),
            Err(e) => {
                self.state.undo(undo);
                self.wal.rewind_entries(entries_before);
                Ok(BatchVote::No(0, e))
            }
        }
    }

    /// Stage the ops and log their `Prepare` record: each op's result, how
    /// to undo the ops, their inner records and the record's offset. On a
    /// failure nothing of them stays.
    pub(super) fn stage_prepare(
        &mut self,
        txid: u64,
        decider: u32,
        ops: Vec<Command>,
        now: u64,
    ) -> Result<(Staged, u64), NotStaged> {
        let entries_before = self.wal.entries();
        let (results, undo, inner) = self.stage(ops, PREPARE_HEAD_BYTES, now)?;
        let logged = self.wal.append(RecordKind::Prepare, now, |out| {
            entry::write_prepare(out, txid, decider, &inner)
        });
        match logged {
            Ok(offset) => Ok(((results, undo, inner), offset)),
            Err(e) => {
                self.state.undo(undo);
                self.wal.rewind_entries(entries_before);
                Err(NotStaged::No(BatchVote::No(0, e)))
            }
        }
    }

    pub(super) fn prepare(
        &mut self,
        txid: u64,
        decider: u32,
        ops: Vec<Command>,
        now: u64,
    ) -> Result<BatchVote, NoRoom> {
        if self.member.is_some() && self.prepared_before(txid) {
            return Ok(BatchVote::Refused(crate::error::EngineError::bad_request(
                format!(
                    "batch {txid} was prepared on shard {} already",
                    self.state.shard_id
                ),
            )));
        }
        let ((results, mut undo, inner), offset) = match self.stage_prepare(txid, decider, ops, now)
        {
            Ok(prepared) => prepared,
            Err(NotStaged::No(vote)) => return Ok(vote),
            Err(NotStaged::NoRoom(ops)) => return Err(ops),
        };
        if self.member.is_some() {
            // A replicated shard holds the part unapplied (`member_txn.rs`).
            self.hold_prepared(txid, decider, undo, inner, offset);
            return Ok(BatchVote::Yes(results));
        }
        self.decisions.prepared(txid, offset);
        let events = self.state.take_events_since(&mut undo);
        let locked = ShardState::touched(&undo);
        for id in &locked {
            self.locked.insert(id.clone(), txid);
        }
        self.txns.insert(
            txid,
            Prepared {
                undo,
                events,
                locked,
            },
        );
        Ok(BatchVote::Yes(results))
    }

    /// Log the decision of `txid`'s part; returns the decision the log holds.
    pub(super) fn decide(&mut self, txid: u64, commit: bool, now: u64) -> Verdict {
        if self.member.is_some() {
            return self.member_decide(txid, commit, now);
        }
        if let Some(part) = self.txns.remove(&txid) {
            for id in &part.locked {
                self.locked.remove(id);
            }
            if commit {
                self.state.events.extend(part.events);
            } else {
                self.state.undo(part.undo);
            }
        } else if let Some((_, inner)) = self.txn_log.in_doubt.remove(&txid) {
            // A part left undecided by a crash, resolved at start-up.
            if commit {
                let mut counts = ReplayCounts::default();
                if let Err(e) = self.state.replay_inner(&inner, &mut counts, Publish::No) {
                    self.fail_stop("cannot apply a recovered batch", &e);
                }
                self.state.events.clear();
            }
        } else {
            // Already decided (or never prepared here: presumed abort).
            return self.settled_verdict(txid);
        }
        self.log_decision(txid, commit, now);
        Verdict::of(commit)
    }

    /// What the log decided for `txid` (`ShardMsg::Decision`).
    pub(super) fn logged_decision(&self, txid: u64) -> Verdict {
        if self.txns.contains_key(&txid) || self.txn_log.in_doubt.contains_key(&txid) {
            return Verdict::Undecided;
        }
        self.settled_verdict(txid)
    }

    /// The decision of a batch whose part here is not pending: the one the
    /// log holds; for a batch it knows nothing of, presumed abort — unless
    /// the batch is as old as the committed ids forgotten (`committed_ids.rs`).
    pub(super) fn settled_verdict(&self, txid: u64) -> Verdict {
        match self.known_decision(txid) {
            Some(committed) => Verdict::of(committed),
            None => self.txn_log.committed.verdict(txid),
        }
    }

    /// The decision the log holds for `txid`, if it holds one: a decision
    /// record still indexed, or (a replicated shard, whose snapshots carry
    /// them) a committed batch id.
    pub(super) fn known_decision(&self, txid: u64) -> Option<bool> {
        self.decisions
            .get(txid)
            .or_else(|| self.txn_log.committed.contains(txid).then_some(true))
    }

    /// Stage `txid`'s Commit or Abort record and note the decision.
    pub(super) fn log_decision(&mut self, txid: u64, commit: bool, now: u64) {
        let kind = if commit {
            RecordKind::Commit
        } else {
            RecordKind::Abort
        };
        match self
            .wal
            .append(kind, now, |out| out.extend_from_slice(&txid.to_le_bytes()))
        {
            Ok(_) => self.decisions.decided(txid, commit),
            Err(e) => self.fail_stop("cannot log a batch decision", &e),
        }
    }
}
