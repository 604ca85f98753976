//! A replicated shard's part of a cross-shard atomic batch (issue 14,
//! item 8): the two-phase commit of `coordinator.rs`, with every step an
//! entry of the group's log so that it survives the loss of any leader.
//!
//! * **Prepare** (leader): the ops run all-or-nothing to learn their
//!   results and their records; the state is then put back, and the records
//!   go into the group's log inside one `Prepare` record. On *every* member
//!   — the leader included — a prepared part is the same thing: its records,
//!   held unapplied in `txn_log.in_doubt`, and its instances locked. So a
//!   leader that loses the lead holds exactly its followers' state, and a
//!   new leader already holds the part and its locks.
//! * **Commit / Abort** (leader, on the coordinator's Decide): the records
//!   are applied (and their watch events published) or dropped, the locks
//!   released, and the decision logged; followers do the same when they
//!   apply the decision's entry.
//! * **The decision** is the decider shard's record (the lowest shard of
//!   the batch, which prepares first). A part left undecided — its
//!   coordinator's node died, or its Decide was lost with a leader — is
//!   settled by `coordinator::resolve_stale`, which runs on every cluster
//!   node: it asks the decider to abort the batch (presumed abort: a decider
//!   that committed answers so and logs nothing), then tells the part what
//!   the decider's log holds.
//! * **Watermark**: a part's records carry the offsets of its prepare; the
//!   shard's watermark stays below them until the part is decided, so the
//!   merged watch stream still arrives in offset order.
//!
//! Known limit: locks taken for reads (a GET inside a part) are held by the
//! leader that prepared the part only; a new leader locks the instances the
//! part writes.

use std::time::Duration;

use super::committed_ids::{txid_counter, Verdict};
use super::replay::{Publish, ReplayCounts};
use super::runner::Shard;
use super::state::ShardState;
use super::txn::Undo;
use crate::wal::entry::{self, Entry};
use crate::wal::record::{decode_record, for_each_record, RecordHeader, RecordKind};

/// How many of a member's batch parts in doubt REPLICATION_STATUS lists
/// (`batch_parts_in_doubt` counts them all).
pub const BATCHES_IN_DOUBT_LISTED_MAX: usize = 64;

impl Shard {
    /// Phase one on the group's leader, once `participant.rs` staged the
    /// ops and logged their Prepare record (see the module comment): the
    /// state goes back as it was, the part is held.
    pub(super) fn hold_prepared(
        &mut self,
        txid: u64,
        decider: u32,
        undo: Undo,
        inner: Vec<u8>,
        offset: u64,
    ) {
        let read_locks = ShardState::touched(&undo);
        self.state.undo(undo);
        self.note_prepared(txid, decider, inner, offset);
        // This leader also holds the instances the part only read.
        for id in read_locks {
            self.locked.insert(id, txid);
        }
    }

    /// Whether `txid` was prepared here already (a replayed Prepare would
    /// hold its instances twice).
    pub(super) fn prepared_before(&self, txid: u64) -> bool {
        self.txn_log.in_doubt.contains_key(&txid) || self.decisions.get(txid).is_some()
    }

    /// Phase two on the group's leader: returns the decision the log holds.
    pub(super) fn member_decide(&mut self, txid: u64, commit: bool, now: u64) -> Verdict {
        let Some((decider, inner)) = self.txn_log.in_doubt.remove(&txid) else {
            // Decided already, or unknown here: what the log says (an
            // unknown batch was never committed here: presumed abort —
            // unless it is as old as the ids forgotten).
            return self.settled_verdict(txid);
        };
        if commit {
            if let Err(e) = self.apply_part(&inner) {
                self.fail_stop("cannot apply a prepared batch part", &e);
            }
        }
        self.settled(txid, commit, Some(decider));
        self.log_decision(txid, commit, now);
        Verdict::of(commit)
    }

    /// A member applies a committed entry's `Prepare`, `Commit` or `Abort`
    /// record (its own entries were done when the leader staged them).
    pub(super) fn apply_txn_record(
        &mut self,
        header: &RecordHeader,
        payload: &[u8],
    ) -> Result<(), String> {
        match header.kind {
            RecordKind::Prepare => {
                let (txid, decider, inner) = entry::read_prepare(payload)?;
                self.note_prepared(txid, decider, inner.to_vec(), header.offset);
            }
            RecordKind::Commit | RecordKind::Abort => {
                let txid = entry::read_txid(payload)?;
                let commit = header.kind == RecordKind::Commit;
                let part = self.txn_log.in_doubt.remove(&txid);
                if let (true, Some((_, inner))) = (commit, &part) {
                    self.apply_part(inner)?;
                }
                self.settled(txid, commit, part.map(|(decider, _)| decider));
                self.decisions.decided(txid, commit);
            }
            _ => {}
        }
        Ok(())
    }

    /// A part is prepared: hold its records, lock what they write.
    fn note_prepared(&mut self, txid: u64, decider: u32, inner: Vec<u8>, offset: u64) {
        for id in written_ids(&inner) {
            self.locked.insert(id, txid);
        }
        self.decisions.prepared(txid, offset);
        let at = self.env.clock.monotonic();
        self.member_mut().prepared_at.insert(txid, at);
        self.txn_log.in_doubt.insert(txid, (decider, inner));
    }

    /// A part is decided: release its locks, remember a commit this shard
    /// decided (`decider`: the shard its Prepare named, if this log has it).
    fn settled(&mut self, txid: u64, commit: bool, decider: Option<u32>) {
        self.locked.retain(|_, holder| *holder != txid);
        self.member_mut().prepared_at.remove(&txid);
        let shard = self.state.shard_id;
        self.txn_log.settled(txid, commit, decider, shard);
    }

    /// Apply a committed part's records and queue their watch events.
    fn apply_part(&mut self, inner: &[u8]) -> Result<(), String> {
        self.state
            .replay_inner(inner, &mut ReplayCounts::default(), Publish::Events)
    }

    /// After a snapshot: the parts it holds in doubt lock their instances
    /// again, undecided since now.
    pub(super) fn relock_in_doubt(&mut self) {
        self.locked.clear();
        let at = self.env.clock.monotonic();
        let parts: Vec<(u64, Vec<String>)> = self
            .txn_log
            .in_doubt
            .iter()
            .map(|(txid, (_, inner))| (*txid, written_ids(inner)))
            .collect();
        let m = self.member_mut();
        m.prepared_at.clear();
        for (txid, _) in &parts {
            m.prepared_at.insert(*txid, at);
        }
        for (txid, ids) in parts {
            for id in ids {
                self.locked.insert(id, txid);
            }
        }
    }

    /// The parts undecided here for at least `older_than_ms`, with how
    /// long in ms (a leader's only: a follower's parts are its leader's to
    /// settle).
    pub(super) fn in_doubt_older_than(&self, older_than_ms: u64) -> Vec<(u64, u32, u64)> {
        let Some(m) = self.member.as_ref() else {
            return Vec::new();
        };
        if !matches!(
            m.link.leadership(),
            super::group_link::Leadership::Leader { .. }
        ) {
            return Vec::new();
        }
        let mut parts: Vec<(u64, u32, u64)> = self
            .txn_log
            .in_doubt
            .iter()
            .map(|(txid, (decider, _))| {
                let age = m
                    .prepared_at
                    .get(txid)
                    .map_or(Duration::MAX, |at| self.env.clock.elapsed(*at));
                let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
                (*txid, *decider, age_ms)
            })
            .filter(|(_, _, age_ms)| *age_ms >= older_than_ms)
            .collect();
        parts.sort_unstable();
        parts
    }

    /// The decider of this member's part of `txid`, if it holds one in
    /// doubt (`ShardMsg::PartInDoubt`).
    pub(super) fn part_in_doubt(&self, txid: u64) -> crate::error::EngineResult<Option<u32>> {
        if self.member.is_none() {
            return Err(super::member_gate::not_a_member());
        }
        Ok(self
            .txn_log
            .in_doubt
            .get(&txid)
            .map(|(decider, _)| *decider))
    }

    /// The parts this member holds in doubt, oldest first, at most
    /// `BATCHES_IN_DOUBT_LISTED_MAX` of them, for REPLICATION_STATUS:
    /// `txid` (a decimal string: JSON readers lose digits of a u64 past
    /// 2^53), `decider` and `held_ms` (since this member prepared it, or
    /// since it started for a part its start-up snapshot held).
    pub(super) fn batches_in_doubt_listed(&self) -> serde_json::Value {
        let Some(m) = self.member.as_ref() else {
            return serde_json::Value::Array(Vec::new());
        };
        let mut parts: Vec<(u64, u32)> = self
            .txn_log
            .in_doubt
            .iter()
            .map(|(txid, (decider, _))| (*txid, *decider))
            .collect();
        // Oldest first: by the txid's clock part (its top bits name the
        // node that made it).
        parts.sort_unstable_by_key(|&(txid, _)| (txid_counter(txid), txid));
        parts
            .into_iter()
            .take(BATCHES_IN_DOUBT_LISTED_MAX)
            .map(|(txid, decider)| {
                let held = m
                    .prepared_at
                    .get(&txid)
                    .map_or(Duration::ZERO, |at| self.env.clock.elapsed(*at));
                serde_json::json!({
                    "txid": txid.to_string(),
                    "decider": decider,
                    "held_ms": u64::try_from(held.as_millis()).unwrap_or(u64::MAX),
                })
            })
            .collect()
    }

    /// The lowest offset among the records of parts held in doubt: the
    /// watermark must stay below it until they are decided.
    pub(super) fn held_by_in_doubt(&self) -> Option<u64> {
        self.txn_log
            .in_doubt
            .values()
            .filter_map(|(_, inner)| decode_record(inner).ok().map(|(h, _)| h.offset))
            .min()
    }
}

/// The instances a part's records write.
fn written_ids(inner: &[u8]) -> Vec<String> {
    let mut ids = Vec::new();
    let _ = for_each_record(inner, |_, payload| {
        if let Ok(entry) = Entry::decode(payload) {
            match entry.instance_id() {
                Some(id) if !ids.iter().any(|known| known == id) => ids.push(id.to_string()),
                _ => {}
            }
        }
        Ok(())
    });
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::record::{append_record, RecordStamp};

    fn record(out: &mut Vec<u8>, offset: u64, payload: serde_json::Value) {
        let stamp = RecordStamp::new(RecordKind::ApplyEvent, offset, 0);
        let text = payload.to_string();
        append_record(out, &stamp, 0, |p| p.extend_from_slice(text.as_bytes())).unwrap();
    }

    #[test]
    fn a_part_locks_each_instance_it_writes_once() {
        let mut inner = Vec::new();
        record(
            &mut inner,
            64,
            serde_json::json!({"type": "create_instance", "instance_id": "a", "machine": "m",
                               "version": 1, "initial_state": "s", "initial_ctx": {}}),
        );
        record(
            &mut inner,
            128,
            serde_json::json!({"type": "apply_event", "instance_id": "a", "event": "E",
                               "from_state": "s", "to_state": "t", "ctx": {}}),
        );
        record(
            &mut inner,
            192,
            serde_json::json!({"type": "delete_instance", "instance_id": "b"}),
        );
        assert_eq!(written_ids(&inner), ["a", "b"]);
        assert!(written_ids(&[]).is_empty());
    }
}
