//! The ids of cross-shard batches a replicated decider shard committed,
//! kept so that a part left in doubt on another shard can still learn, after
//! the decider's `Commit` record left the log (a group snapshot, then a
//! purge), that its batch was committed (`coordinator::resolve_stale`).
//!
//! Kept forever, these would grow with every batch ever committed, in memory
//! and in every group snapshot. So the newest `COMMITTED_BATCH_IDS_KEPT_MAX`
//! are kept and older ones forgotten — but forgetting must never turn into a
//! wrong "presumed abort" for a batch that did commit. The **horizon** makes
//! that safe: it is the largest txid counter (a txid without its node bits;
//! `txid_counter`) among the ids forgotten. An id not kept whose counter is
//! above the horizon was never committed here (presumed abort stands); one at
//! or below it may have been, so the answer is `Verdict::Forgotten` and the
//! asking part stays in doubt (logged for an operator) rather than guess.
//!
//! Txid counters follow the coordinators' clocks (`src/server/batch.rs`), so
//! the horizon trails the newest batches by however long the decider took to
//! commit `COMMITTED_BATCH_IDS_KEPT_MAX` more: a part whose batch is older
//! than that is the only one that can be answered `Forgotten`. Parts in doubt
//! are asked about after a second and aborted after
//! `in_doubt_resolve_after_ms` (10 s by default).
//!
//! Deterministic: ids are kept and forgotten in log order, so every member
//! of a group holds the same ids and horizon at the same log index, and a
//! snapshot carries both in that order.

use std::collections::VecDeque;

use hashbrown::HashSet;
use serde::{Deserialize, Serialize};

/// How many committed batch ids a decider shard keeps (about 28 bytes each
/// in memory with the table and the order queue, 8 in a group snapshot).
pub const COMMITTED_BATCH_IDS_KEPT_MAX: usize = 1_000_000;

/// The top bits of a txid name the cluster node that made it; the rest is a
/// counter that follows the node's clock.
pub const TXID_NODE_BITS: u32 = 12;
/// The counter part of a txid.
pub const TXID_COUNTER_MASK: u64 = (1 << (64 - TXID_NODE_BITS)) - 1;

/// A txid without its node bits: comparable across nodes (by age).
pub fn txid_counter(txid: u64) -> u64 {
    txid & TXID_COUNTER_MASK
}

/// What a shard's log says of a cross-shard batch: the answer to `Decide`
/// (never `Undecided`) and to `Decision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    Committed,
    /// Aborted, or never committed here (presumed abort).
    Aborted,
    /// Its part here is prepared and not yet decided.
    Undecided,
    /// Not among the ids kept, and not newer than those forgotten: it may
    /// have been committed long ago. The asker must not presume either way.
    Forgotten,
}

impl Verdict {
    /// The decision, if this answer is one.
    pub fn decided(self) -> Option<bool> {
        match self {
            Verdict::Committed => Some(true),
            Verdict::Aborted => Some(false),
            Verdict::Undecided | Verdict::Forgotten => None,
        }
    }

    pub fn of(committed: bool) -> Verdict {
        if committed {
            Verdict::Committed
        } else {
            Verdict::Aborted
        }
    }
}

#[derive(Debug, Clone)]
pub struct CommittedIds {
    ids: HashSet<u64>,
    /// `ids` in the order they were committed (oldest first).
    order: VecDeque<u64>,
    /// The largest counter of an id forgotten (0: none forgotten).
    horizon: u64,
    keep_max: usize,
}

impl Default for CommittedIds {
    fn default() -> Self {
        CommittedIds::keeping(COMMITTED_BATCH_IDS_KEPT_MAX)
    }
}

impl CommittedIds {
    /// Keeps the newest `keep_max` ids (`usize::MAX`: every one, for a
    /// standalone shard's start-up, which forgets the set once it served).
    pub fn keeping(keep_max: usize) -> CommittedIds {
        CommittedIds {
            ids: HashSet::new(),
            order: VecDeque::new(),
            horizon: 0,
            keep_max: keep_max.max(1),
        }
    }

    /// A snapshot's ids (oldest first) and horizon.
    pub fn restore(ids: impl IntoIterator<Item = u64>, horizon: u64) -> CommittedIds {
        let mut kept = CommittedIds {
            horizon,
            ..CommittedIds::default()
        };
        for txid in ids {
            kept.insert(txid);
        }
        kept
    }

    /// `txid` committed: keep it, forgetting the oldest past the bound.
    pub fn insert(&mut self, txid: u64) {
        if !self.ids.insert(txid) {
            return;
        }
        self.order.push_back(txid);
        while self.order.len() > self.keep_max {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
                self.horizon = self.horizon.max(txid_counter(old));
            }
        }
    }

    pub fn contains(&self, txid: u64) -> bool {
        self.ids.contains(&txid)
    }

    /// What the kept ids say of a batch with no decision record here.
    pub fn verdict(&self, txid: u64) -> Verdict {
        if self.ids.contains(&txid) {
            Verdict::Committed
        } else if txid_counter(txid) <= self.horizon {
            Verdict::Forgotten
        } else {
            Verdict::Aborted
        }
    }

    /// The ids oldest first, and the horizon (what a snapshot holds).
    pub fn copy(&self) -> (Vec<u64>, u64) {
        (self.order.iter().copied().collect(), self.horizon)
    }

    pub fn horizon(&self) -> u64 {
        self.horizon
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txid(node: u64, counter: u64) -> u64 {
        (node << (64 - TXID_NODE_BITS)) | counter
    }

    #[test]
    fn the_newest_ids_are_kept_and_older_unknown_ones_are_forgotten_not_aborted() {
        let mut kept = CommittedIds::keeping(3);
        for c in [10, 30, 20, 40] {
            kept.insert(txid(1, c));
        }
        // 10 was committed first: forgotten, horizon 10.
        assert_eq!(kept.len(), 3);
        assert_eq!(kept.horizon(), 10);
        assert_eq!(kept.verdict(txid(1, 10)), Verdict::Forgotten);
        // Never committed, but as old as one forgotten: cannot say.
        assert_eq!(kept.verdict(txid(2, 5)), Verdict::Forgotten);
        // Newer than every id forgotten, not kept: never committed here.
        assert_eq!(kept.verdict(txid(2, 11)), Verdict::Aborted);
        assert_eq!(kept.verdict(txid(3, 20)), Verdict::Aborted);
        for c in [20, 30, 40] {
            assert_eq!(kept.verdict(txid(1, c)), Verdict::Committed);
        }
        // The horizon is the largest counter forgotten, whatever the order.
        kept.insert(txid(2, 50));
        kept.insert(txid(2, 60));
        assert_eq!(kept.horizon(), 30);
        assert_eq!(kept.verdict(txid(1, 20)), Verdict::Forgotten);
        assert_eq!(kept.verdict(txid(1, 40)), Verdict::Committed);
    }

    #[test]
    fn a_restored_copy_answers_alike_and_keeps_the_order() {
        let mut kept = CommittedIds::keeping(3);
        for c in [5, 9, 7, 8] {
            kept.insert(c);
        }
        kept.insert(9); // a replayed Commit: kept once
        let (ids, horizon) = kept.copy();
        assert_eq!((ids.clone(), horizon), (vec![9, 7, 8], 5));
        let back = CommittedIds::restore(ids, horizon);
        for c in 0..12 {
            assert_eq!(back.verdict(c), kept.verdict(c), "txid {c}");
        }
        assert_eq!(back.copy(), kept.copy());
    }

    #[test]
    fn every_id_counts_within_the_bound_and_memory_stays_bounded() {
        let mut kept = CommittedIds::keeping(1_000);
        for c in 1..=100_000u64 {
            kept.insert(txid(c % 7, c));
        }
        assert_eq!(kept.len(), 1_000);
        assert_eq!(kept.ids.len(), 1_000);
        assert_eq!(kept.horizon(), 99_000);
        assert_eq!(kept.verdict(txid(99_001 % 7, 99_001)), Verdict::Committed);
        assert_eq!(kept.verdict(txid(3, 99_001)), Verdict::Aborted);
        assert_eq!(kept.verdict(txid(3, 100_001)), Verdict::Aborted);
        assert_eq!(kept.verdict(txid(3, 98_999)), Verdict::Forgotten);
    }
}
