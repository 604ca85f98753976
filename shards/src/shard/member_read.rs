//! Reading a member shard's log by offset (WAL_READ, and the catch-up of a
//! watch that starts at `from_offset`): a member's log is its group's
//! entries, each a turn's records with the offsets its leader gave them,
//! so the same logical entries come out of it as out of a standalone
//! shard's segments (`log_read.rs` turns records into entries either way).
//!
//! * **Which entry holds an offset.** [`OffsetIndex`] keeps, per applied
//!   entry, the offset of its first record (offsets grow along the log, on
//!   every member and across leader changes). A read starts at the last
//!   entry whose first offset is at or before `from`.
//! * **Only what this member applied.** A read goes up to the member's
//!   applied index, so a follower answers from its own committed copy with
//!   no trip to the leader, and nothing uncommitted is ever read.
//! * **Its bound** is one past the highest offset applied: records staged
//!   by a turn still in flight, or entries the group commits later, come
//!   after it.
//! * **How far back.** Entries a snapshot covers are not indexed (a member
//!   that installed a snapshot never saw them); the index also forgets its
//!   oldest entries beyond [`MEMBER_READ_INDEX_ENTRIES_MAX`], and the log
//!   itself deletes entries behind its snapshots. A read from before what
//!   is still readable fails as a standalone shard's read from before its
//!   compaction does.

use std::collections::VecDeque;
use std::io;

use super::command::ShardMsg;
use super::deferred::Deferred;
use super::log_read::{entries_of, EntryChunk, ReadContext};
use super::runner::Shard;
use crate::wal::reader::{LogRecord, ReadBatch, ReadStats};
use crate::wal::record::{decode_record, for_each_record};

/// Entries the offset index remembers, at most (16 bytes each, 16 MiB in
/// all): far more than a group keeps in its log between snapshots by
/// default (10,000 + 1,000), so the log's own purge is what normally
/// limits how far back a read can go.
pub const MEMBER_READ_INDEX_ENTRIES_MAX: usize = 1024 * 1024;
/// Log entries fetched from the group per step of a read.
pub const MEMBER_READ_ENTRIES_PER_STEP: u64 = 64;

/// The first offset of each applied entry that carries records.
#[derive(Debug, Default)]
pub struct OffsetIndex {
    /// (first record's offset, log index), in log order.
    entries: VecDeque<(u64, u64)>,
    /// Offsets below this cannot be read here (covered by a snapshot, or
    /// forgotten).
    readable_from: u64,
}

impl OffsetIndex {
    /// Note an applied entry.
    pub fn note(&mut self, index: u64, records: &[u8]) {
        let Ok((first, _)) = decode_record(records) else {
            return; // no records: nothing to find in it
        };
        self.entries.push_back((first.offset, index));
        if self.entries.len() > MEMBER_READ_INDEX_ENTRIES_MAX {
            self.entries.pop_front();
            if let Some(&(offset, _)) = self.entries.front() {
                self.readable_from = offset;
            }
        }
    }

    /// Start over after the state was replaced by a snapshot covering every
    /// offset up to `covered_offset` (`None`: an empty start).
    pub fn reset(&mut self, covered_offset: Option<u64>) {
        self.entries.clear();
        self.readable_from = covered_offset.map_or(0, |c| c + 1);
    }

    /// Put `earlier`, an index of the entries before every one indexed
    /// here (the log behind the snapshot this index started from), in
    /// front: reads reach back to its first entry (less what exceeds
    /// [`MEMBER_READ_INDEX_ENTRIES_MAX`]) — or to offset 0 when `earlier`
    /// starts at the log's very first entry (`from_log_start`): nothing
    /// was ever purged, so no offset lies before what can be read, as on a
    /// member that never installed a snapshot.
    pub fn prepend(&mut self, earlier: OffsetIndex, from_log_start: bool) {
        let first_here = self.entries.front().map(|&(_, index)| index);
        let mut joined = earlier.entries;
        joined.retain(|&(_, index)| first_here.is_none_or(|here| index < here));
        let mut from = match joined.front() {
            _ if from_log_start => 0,
            Some(&(first, _)) => first.min(self.readable_from),
            None => return,
        };
        joined.extend(self.entries.drain(..));
        while joined.len() > MEMBER_READ_INDEX_ENTRIES_MAX {
            joined.pop_front();
            from = joined.front().map_or(from, |&(offset, _)| offset);
        }
        self.entries = joined;
        self.readable_from = from;
    }

    /// Entries indexed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn readable_from(&self) -> u64 {
        self.readable_from
    }

    /// The offset of the oldest record still readable (`None`: no entry
    /// indexed holds one).
    pub fn oldest_offset(&self) -> Option<u64> {
        self.entries
            .front()
            .map(|&(first, _)| first.max(self.readable_from))
    }

    /// The log purged every entry at or below `purged`: forget them, and
    /// read only from the first entry left (or, with none left, from
    /// `next_offset`, one past everything applied).
    pub fn forget_purged(&mut self, purged: u64, next_offset: u64) {
        let mut forgot = false;
        while self
            .entries
            .front()
            .is_some_and(|&(_, index)| index <= purged)
        {
            self.entries.pop_front();
            forgot = true;
        }
        if forgot {
            let from = self
                .entries
                .front()
                .map_or(next_offset, |&(first, _)| first);
            self.readable_from = self.readable_from.max(from);
        }
    }

    /// The log index to start a read of offsets ≥ `from` at (`None`: no
    /// indexed entry can hold one).
    fn start_for(&self, from: u64) -> Option<u64> {
        let after = self.entries.partition_point(|&(first, _)| first <= from);
        match after {
            0 => self.entries.front().map(|&(_, index)| index),
            n => Some(self.entries[n - 1].1),
        }
    }
}

impl Shard {
    /// The oldest offset this member can still read: what its offset index
    /// covers, less what the log has purged behind its snapshots since.
    /// What lies below it is forgotten here: its index entries, and the
    /// decisions of the batch parts prepared there (no read needs them;
    /// a Decide is answered from the committed ids, as after a restart).
    /// Called before each read and at each snapshot's start, so that a
    /// member's memory follows its log, not its whole history.
    pub(super) fn member_readable_from(&mut self) -> u64 {
        self.take_read_back();
        let m = self.member_mut();
        let before = m.offsets.readable_from();
        if let Some(purged) = m.link.purged_index() {
            let next_offset = m.position.covered_offset + 1;
            m.offsets.forget_purged(purged, next_offset);
        }
        let readable_from = m.offsets.readable_from();
        if readable_from > before {
            self.decisions.forget_below(readable_from);
        }
        readable_from
    }

    /// Answer a ReadLog (WAL_READ) or ReadEvents (watch catch-up) message
    /// from this member's log; `None` for any other message.
    pub(super) async fn answer_log_read(&mut self, msg: ShardMsg) -> Option<Deferred> {
        let (from, max_records, max_bytes) = match &msg {
            ShardMsg::ReadLog {
                from_offset,
                max_records,
                max_bytes,
                ..
            }
            | ShardMsg::ReadEvents {
                from_offset,
                max_records,
                max_bytes,
                ..
            } => (*from_offset, *max_records, *max_bytes),
            _ => return None,
        };
        let chunk = self.member_read(from, max_records, max_bytes).await;
        match msg {
            ShardMsg::ReadLog { done, .. } => Some(Deferred::Entries(done, chunk)),
            ShardMsg::ReadEvents { done, .. } => Some(Deferred::Events(
                done,
                chunk.and_then(EntryChunk::into_events),
            )),
            _ => None,
        }
    }

    /// Logical entries from offset `from` on, as `read_entries` gives a
    /// standalone shard's (see the module comment).
    pub(super) async fn member_read(
        &mut self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> io::Result<EntryChunk> {
        let shard = self.state.shard_id;
        let readable_from = self.member_readable_from();
        let still = if self.reading_back() {
            " (the log kept behind the snapshot this member started from is still being \
             indexed)"
        } else {
            ""
        };
        let too_old = |from: u64, readable_from: u64| {
            io::Error::other(format!(
                "offset {from} is older than the oldest offset this member of shard {shard}'s \
                 group can still read ({readable_from}){still}; the log before it was purged \
                 behind a snapshot (or lies more than {MEMBER_READ_INDEX_ENTRIES_MAX} entries \
                 back)"
            ))
        };
        if from < readable_from {
            return Err(too_old(from, readable_from));
        }
        let (link, applied, position, start) = {
            let m = self.member();
            (
                m.link.clone(),
                m.applied_index,
                m.position,
                m.offsets.start_for(from),
            )
        };
        let (max_records, max_bytes) = (max_records.max(1), max_bytes.max(1));
        let mut batch = ReadBatch::default();
        let mut bytes = 0usize;
        let mut fetched = ReadStats {
            reads: 1,
            bytes_read: 0,
        };
        let mut next = start.unwrap_or(applied + 1);
        let mut full = false;
        while !full && next <= applied {
            let to = applied.min(next + MEMBER_READ_ENTRIES_PER_STEP - 1);
            let entries = match link.entries(next, to).await {
                Ok(entries) => entries,
                // Purged while this read went on (a snapshot just finished).
                Err(_) if link.has_purged(next) => {
                    return Err(too_old(from, self.member_readable_from()));
                }
                Err(e) => return Err(io::Error::other(e)),
            };
            fetched.bytes_read += entries.iter().map(|(_, r)| r.len() as u64).sum::<u64>();
            for (_, records) in &entries {
                for_each_record(records, |header, payload| {
                    if full || header.offset < from {
                        return Ok(());
                    }
                    // At least one record, however large.
                    if !batch.records.is_empty() && bytes + header.total_len() > max_bytes {
                        full = true;
                        return Ok(());
                    }
                    bytes += header.total_len();
                    batch.records.push(LogRecord {
                        header: *header,
                        payload: payload.to_vec(),
                    });
                    full = batch.records.len() >= max_records;
                    Ok(())
                })
                .map_err(io::Error::other)?;
                if full {
                    break;
                }
            }
            next = to + 1;
        }
        let m = self.member_mut();
        m.reads = m.reads.plus(fetched);
        batch.reached_end = !full;
        batch.next_offset = batch.records.last().map(|r| r.offset() + 1);
        // A cross-shard part is visible once its decision is applied here
        // (`member_txn.rs`); one still in doubt ends the chunk.
        let undecided = |txid: u64| self.txn_log.in_doubt.contains_key(&txid);
        let decision = |txid: u64| self.known_decision(txid);
        let cx = ReadContext {
            shard,
            // Every offset applied is ≤ covered_offset; what comes later
            // (a turn in flight, entries committed later) is above it.
            watermark: position.covered_offset + 1,
            entries_written: position.entries,
            undecided: &undecided,
            decision: &decision,
        };
        entries_of(&batch, Some(readable_from), from, &cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::record::{append_record, RecordKind, RecordStamp};

    fn records(offsets: &[u64]) -> Vec<u8> {
        let mut out = Vec::new();
        for &o in offsets {
            let stamp = RecordStamp::new(RecordKind::ApplyEvent, o, 0);
            append_record(&mut out, &stamp, 0, |p| p.extend_from_slice(b"{}")).unwrap();
        }
        out
    }

    #[test]
    fn a_read_starts_at_the_entry_that_may_hold_the_offset() {
        let mut index = OffsetIndex::default();
        assert_eq!(index.start_for(5), None);
        index.note(3, &records(&[10, 11, 12]));
        index.note(4, &[]); // an entry without records is not indexed
        index.note(5, &records(&[20]));
        index.note(7, &records(&[30, 31]));
        assert_eq!(index.start_for(0), Some(3));
        assert_eq!(index.start_for(10), Some(3));
        assert_eq!(index.start_for(12), Some(3));
        assert_eq!(index.start_for(19), Some(3));
        assert_eq!(index.start_for(20), Some(5));
        assert_eq!(index.start_for(31), Some(7));
        assert_eq!(index.start_for(99), Some(7));
    }

    #[test]
    fn a_purge_moves_what_is_readable_to_the_first_entry_left() {
        let mut index = OffsetIndex::default();
        index.note(3, &records(&[10, 11]));
        index.note(5, &records(&[20]));
        index.note(7, &records(&[30, 31]));
        index.forget_purged(2, 32);
        assert_eq!(index.readable_from(), 0, "nothing indexed was purged");
        assert_eq!(index.oldest_offset(), Some(10));
        index.forget_purged(4, 32);
        assert_eq!(index.readable_from(), 20);
        assert_eq!(index.oldest_offset(), Some(20));
        assert_eq!(index.start_for(20), Some(5));
        index.forget_purged(6, 32);
        assert_eq!(index.readable_from(), 30);
        // Every entry purged: only what comes after the applied ones.
        index.forget_purged(9, 32);
        assert_eq!(index.readable_from(), 32);
        assert_eq!(index.oldest_offset(), None, "no record left to read");
        assert_eq!(index.start_for(40), None);
        // A purge never moves it back.
        index.forget_purged(9, 0);
        assert_eq!(index.readable_from(), 32);
    }

    #[test]
    fn the_log_behind_a_snapshot_goes_in_front_of_what_came_after() {
        let mut index = OffsetIndex::default();
        index.reset(Some(31));
        index.note(8, &records(&[40, 41]));
        let mut earlier = OffsetIndex::default();
        earlier.note(3, &records(&[10, 11]));
        earlier.note(5, &records(&[20]));
        earlier.note(7, &records(&[30, 31]));
        earlier.note(8, &records(&[40, 41])); // already here: not twice
        assert_eq!(index.oldest_offset(), Some(40));
        index.prepend(earlier, false);
        assert_eq!(index.readable_from(), 10);
        assert_eq!(index.oldest_offset(), Some(10));
        assert_eq!(index.entries.len(), 4);
        assert_eq!(index.start_for(25), Some(5));
        assert_eq!(index.start_for(41), Some(8));
        // A purge after it counts as before.
        index.forget_purged(5, 42);
        assert_eq!(index.readable_from(), 30);
        // Nothing earlier: nothing moves.
        index.prepend(OffsetIndex::default(), false);
        assert_eq!(index.readable_from(), 30);
    }

    #[test]
    fn the_whole_log_behind_a_snapshot_reads_from_offset_zero() {
        let mut index = OffsetIndex::default();
        index.reset(Some(31));
        index.note(8, &records(&[40, 41]));
        let mut earlier = OffsetIndex::default();
        earlier.note(3, &records(&[10, 11]));
        index.prepend(earlier, true);
        assert_eq!(index.readable_from(), 0, "nothing was ever purged");
        assert_eq!(index.start_for(0), Some(3));
        // A log behind the snapshot with no records at all: the same.
        let mut bare = OffsetIndex::default();
        bare.reset(Some(31));
        bare.prepend(OffsetIndex::default(), true);
        assert_eq!(bare.readable_from(), 0);
    }

    #[test]
    fn what_goes_in_front_keeps_to_the_entry_limit() {
        let mut index = OffsetIndex::default();
        index.reset(Some(1_000_000_000));
        for i in 0..10u64 {
            index.note(2_000_000 + i, &records(&[2_000_000_000 + i]));
        }
        let mut earlier = OffsetIndex::default();
        for i in 0..MEMBER_READ_INDEX_ENTRIES_MAX as u64 {
            earlier.note(i + 1, &records(&[100 + i]));
        }
        index.prepend(earlier, true);
        assert_eq!(index.entries.len(), MEMBER_READ_INDEX_ENTRIES_MAX);
        assert_eq!(index.readable_from(), 110, "the 10 oldest dropped");
        assert_eq!(index.start_for(110), Some(11));
    }

    #[test]
    fn a_snapshot_and_the_entry_limit_move_what_is_readable() {
        let mut index = OffsetIndex::default();
        assert_eq!(index.readable_from(), 0);
        index.reset(Some(41));
        assert_eq!(index.readable_from(), 42);
        assert_eq!(index.start_for(50), None);
        for i in 0..=MEMBER_READ_INDEX_ENTRIES_MAX as u64 {
            index.note(i + 1, &records(&[100 + i]));
        }
        assert_eq!(index.entries.len(), MEMBER_READ_INDEX_ENTRIES_MAX);
        assert_eq!(index.readable_from(), 101);
        assert_eq!(index.start_for(101), Some(2));
    }
}
