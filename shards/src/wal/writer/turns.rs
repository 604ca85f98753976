//! A writer that stages turns for a replicated group instead of writing
//! segments: a shard that is a member of a group (issue 14) stages its
//! records exactly as a standalone shard does — offsets from its clock,
//! entry counts, batch reservations — and its group logs each turn as one
//! Raft entry. Kept here, beside the writer it shares every field with.

use std::path::{Path, PathBuf};

use super::*;

impl WalWriter {
    /// A writer for a shard that is a member of a replicated group: it
    /// stages records and hands each group out as one turn (`commit`, then
    /// `take_turn`) for the group to log; it has no segments of its own.
    /// `entries`: the log entries the shard's state counts so far.
    pub fn open_turns(env: Env, clock: OffsetClock, entries: u64) -> WalWriter {
        let rollover = Rollover::new(env.clone(), Path::new(""), u64::MAX, false);
        WalWriter {
            env,
            dir: PathBuf::new(),
            policy: FsyncPolicy::EveryWrite,
            segment_size_bytes: u64::MAX,
            segment_id: 0,
            file: None,
            turn_out: Some(Vec::new()),
            end: 0,
            tail: Vec::new(),
            chunks: vec![Vec::new()],
            chunk_records: vec![0],
            written_per_segment: Vec::new(),
            last_chunk_base: 0,
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
            manifest: Manifest::new(0, None),
            last_offset: 0,
            committing: false,
            turn_bytes_max: None,
        }
    }

    /// The records of the groups committed since the last call, back to
    /// back (a turns-only writer; empty otherwise).
    pub fn take_turn(&mut self) -> Vec<u8> {
        self.turn_out
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Limit the records this turn stages to `max` bytes from now on
    /// (`None`: no limit), as `has_room` tells the writes that ask it.
    /// Returns the limit it replaces.
    pub fn limit_turn_bytes(&mut self, max: Option<usize>) -> Option<usize> {
        std::mem::replace(&mut self.turn_bytes_max, max)
    }

    /// Whether a record of `payload_bytes` fits beside what this turn
    /// staged, under the limit of `limit_turn_bytes`. A turn's first record
    /// always fits: a shard record alone fits an entry
    /// (`SHARD_RECORD_PAYLOAD_MAX_BYTES`), and waiting would not make it
    /// smaller.
    pub fn has_room(&self, payload_bytes: usize) -> bool {
        self.room_bytes().is_none_or(|room| payload_bytes <= room)
    }

    /// The payload bytes a record staged now may take (`has_room`), or
    /// `None` when any fits: no limit, or nothing staged yet. A write that
    /// learns its size only by staging (a batch part, a machine) asks this
    /// first, to keep what it needs to run again only when it may have to.
    pub fn room_bytes(&self) -> Option<usize> {
        match self.turn_bytes_max {
            Some(max) if self.staged_records > 0 => {
                Some(max.saturating_sub(self.staged_bytes + RECORD_HEADER_BYTES))
            }
            _ => None,
        }
    }

    /// The log entries the shard's state counts now (a member follows a
    /// log it does not write: applied entries, a snapshot installed).
    pub fn set_entries(&mut self, entries: u64) {
        debug_assert_eq!(self.staged_records, 0, "entries set with records staged");
        self.entries = entries;
        self.entries_committed = entries;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::Frontier;

    fn turns_writer() -> WalWriter {
        let env = Env::os(0);
        let clock = OffsetClock::new(0, 0, Frontier::new(), env.clock.clone());
        WalWriter::open_turns(env, clock, 0)
    }

    #[test]
    fn a_turns_first_record_always_fits_and_the_others_fit_under_its_limit() {
        let mut w = turns_writer();
        assert_eq!(w.room_bytes(), None, "no limit");
        w.limit_turn_bytes(Some(1_000));
        assert_eq!(
            w.room_bytes(),
            None,
            "nothing staged: any first record fits"
        );
        assert!(w.has_room(1 << 30));

        w.append(RecordKind::Flush, 1, |out| out.extend_from_slice(&[0; 100]))
            .unwrap();
        let room = 1_000 - w.staged_bytes() - RECORD_HEADER_BYTES;
        assert_eq!(w.room_bytes(), Some(room));
        assert!(w.has_room(room));
        assert!(!w.has_room(room + 1));

        // Lifted (parked requests run whatever the room), then put back.
        assert_eq!(w.limit_turn_bytes(None), Some(1_000));
        assert!(w.has_room(1 << 30));
        w.limit_turn_bytes(Some(100));
        assert_eq!(
            w.room_bytes(),
            Some(0),
            "past the limit: no room, not an overflow"
        );
        assert!(w.has_room(0) && !w.has_room(1));
    }
}
