//! The decisions of the cross-shard batches whose `Prepare` record is still
//! in this shard's log: how a log read knows whether a prepared part's
//! entries are visible without finding its `Commit` or `Abort` record.
//!
//! A decision can be written arbitrarily far after its `Prepare` (other
//! clients' records interleave while the coordinator waits for the slowest
//! participant), and after a `--salvage` cut it may not be in the log at
//! all. Searching the log forward for it would make a read's cost depend on
//! that distance; this index answers in O(1) instead.
//!
//! Memory: one entry per cross-shard batch part in the retained log (about
//! 32 bytes with the table's overhead); compaction drops the entries of the
//! parts it deletes.

use hashbrown::HashMap;

use crate::wal::entry;
use crate::wal::record::{RecordHeader, RecordKind};

/// What the log says about one prepared part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Part {
    prepare_offset: u64,
    /// `None` while no decision is logged.
    committed: Option<bool>,
}

#[derive(Debug, Default)]
pub struct Decisions {
    parts: HashMap<u64, Part>,
}

impl Decisions {
    /// A `Prepare` record for `txid` at `offset` is in the log.
    pub fn prepared(&mut self, txid: u64, offset: u64) {
        self.parts.insert(
            txid,
            Part {
                prepare_offset: offset,
                committed: None,
            },
        );
    }

    /// A decision for `txid` is in the log (or staged in the group being
    /// committed: a read is answered only after that group is durable).
    pub fn decided(&mut self, txid: u64, committed: bool) {
        if let Some(part) = self.parts.get_mut(&txid) {
            part.committed = Some(committed);
        }
    }

    /// Note what a logged record says of a batch part (a `Prepare`, a
    /// `Commit` or an `Abort`; other records say nothing).
    pub fn note_record(&mut self, header: &RecordHeader, payload: &[u8]) -> Result<(), String> {
        match header.kind {
            RecordKind::Prepare => self.prepared(entry::read_prepare(payload)?.0, header.offset),
            RecordKind::Commit => self.decided(entry::read_txid(payload)?, true),
            RecordKind::Abort => self.decided(entry::read_txid(payload)?, false),
            _ => {}
        }
        Ok(())
    }

    /// Take in what a read of the log before everything noted so far
    /// found (`member_read_back.rs`): a part noted already (prepared
    /// there, in doubt at the snapshot and maybe decided since) keeps what
    /// is known of it now.
    pub fn take_earlier(&mut self, earlier: Decisions) {
        for (txid, part) in earlier.parts {
            self.parts.entry(txid).or_insert(part);
        }
    }

    /// The logged decision of `txid`'s part, if there is one.
    pub fn get(&self, txid: u64) -> Option<bool> {
        self.parts.get(&txid).and_then(|p| p.committed)
    }

    /// Prepared parts remembered.
    pub(crate) fn len(&self) -> usize {
        self.parts.len()
    }

    /// Compaction deleted every record below `retained_from`.
    pub fn forget_below(&mut self, retained_from: u64) {
        self.parts.retain(|_, p| p.prepare_offset >= retained_from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_is_known_once_logged_and_forgotten_with_its_prepare() {
        let mut d = Decisions::default();
        d.prepared(7, 100);
        d.prepared(8, 200);
        assert_eq!(d.get(7), None);
        d.decided(7, true);
        d.decided(8, false);
        d.decided(9, true); // no prepare here: nothing to note
        assert_eq!(
            (d.get(7), d.get(8), d.get(9)),
            (Some(true), Some(false), None)
        );
        d.forget_below(150);
        assert_eq!((d.get(7), d.get(8)), (None, Some(false)));
        assert_eq!(d.parts.len(), 1);
    }

    #[test]
    fn what_an_earlier_read_found_never_overrides_what_is_known_now() {
        let mut now = Decisions::default();
        now.prepared(1, 50); // in doubt at the snapshot…
        now.decided(1, true); // …and committed since
        now.prepared(2, 60); // still in doubt
        let mut earlier = Decisions::default();
        earlier.prepared(1, 50);
        earlier.prepared(2, 60);
        earlier.prepared(3, 40);
        earlier.decided(3, false);
        now.take_earlier(earlier);
        assert_eq!(
            (now.get(1), now.get(2), now.get(3)),
            (Some(true), None, Some(false))
        );
        now.decided(2, true);
        assert_eq!(now.get(2), Some(true));
    }
}
