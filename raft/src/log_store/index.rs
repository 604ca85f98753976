//! Which Raft entries are live and where their records are: the log's
//! shape (first index, last log id, last purged) with one slot per live
//! entry, and a bounded cache of the newest entries.
//!
//! The same rules run at run time (each call of the store) and in
//! recovery (each record of the WAL, in order), so whatever the store
//! accepted, recovery rebuilds — and what it refuses at run time, a log
//! cannot hold:
//!
//! * entries are consecutive: an entry must follow the last live one; an
//!   empty log takes any first index, but after a purge only the next one
//!   (no hole after the purged prefix);
//! * `truncate_after` drops the live entries after a log id (all of them
//!   for none), from the end back — never a hole;
//! * `purge` drops the live entries up to a log id and remembers it; a
//!   purge at or below the last one changes nothing.
//!
//! One exception, for recovery only: a log whose oldest segments were
//! retired (`retire.rs`) is replayed from the middle, so an empty log after
//! a purge may meet an entry above the one after it (the entries between
//! were in a retired segment, purged by a later record). While replaying
//! such a log, that entry is taken; the replay ends with the checkpoint's
//! purge record, after which the log is exactly the one the store had.

use std::collections::VecDeque;

use shards::wal::RecordPlace;

use super::codec::WalLogId;

/// Newest entries kept in memory beyond those not yet written, in entries.
/// Older ones are read back from their segments. Entries staged but not
/// yet written are always in memory (the file does not hold them yet), so
/// the cache holds at most this many plus the unwritten ones.
pub const CACHED_ENTRIES_MAX: usize = 1024;

/// One live entry: its log id and, once its group was written, where its
/// record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub log_id: WalLogId,
    pub place: Option<RecordPlace>,
}

/// The live entries' slots, consecutive from `first_index`.
#[derive(Debug, Default)]
pub struct LiveLog {
    first_index: u64,
    slots: VecDeque<Slot>,
    last_purged: Option<WalLogId>,
    /// Replaying a log whose head was retired (see the file's comment).
    replaying_retired_head: bool,
}

impl LiveLog {
    /// An empty log to replay a WAL whose oldest segments were retired.
    pub fn replaying_retired_head() -> Self {
        LiveLog {
            replaying_retired_head: true,
            ..LiveLog::default()
        }
    }

    /// The replay is over: the store's rules hold in full from now on.
    pub fn end_replay(&mut self) {
        self.replaying_retired_head = false;
    }

    pub fn last_purged(&self) -> Option<WalLogId> {
        self.last_purged
    }

    /// The last live entry's log id, or the last purged one.
    pub fn last_log_id(&self) -> Option<WalLogId> {
        self.slots.back().map(|s| s.log_id).or(self.last_purged)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Indexes of the live entries, `[first, end)`.
    pub fn span(&self) -> (u64, u64) {
        (self.first_index, self.first_index + self.slots.len() as u64)
    }

    pub fn get(&self, index: u64) -> Option<&Slot> {
        let at = index.checked_sub(self.first_index)?;
        self.slots.get(usize::try_from(at).ok()?)
    }

    /// Whether `log_id` may be appended now (see the file's rules).
    pub fn check_next(&self, log_id: &WalLogId) -> Result<(), String> {
        let index = log_id.index;
        match (self.slots.back(), self.last_purged) {
            (Some(last), _) if index != last.log_id.index + 1 => Err(format!(
                "entry {log_id} does not follow the last entry {} (entries must be consecutive; \
                 a conflicting tail is truncated first)",
                last.log_id
            )),
            (None, Some(purged)) if self.replaying_retired_head && index <= purged.index => Err(
                format!("entry {log_id} is at or below the last purged entry {purged}"),
            ),
            (None, Some(purged)) if !self.replaying_retired_head && index != purged.index + 1 => {
                Err(format!(
                    "entry {log_id} does not follow the last purged entry {purged}"
                ))
            }
            _ => Ok(()),
        }
    }

    /// Add the next entry (`check_next` first).
    pub fn push(&mut self, log_id: WalLogId, place: Option<RecordPlace>) -> Result<(), String> {
        self.check_next(&log_id)?;
        if self.slots.is_empty() {
            self.first_index = log_id.index;
        }
        self.slots.push_back(Slot { log_id, place });
        Ok(())
    }

    /// Drop every live entry after `last` (all of them for `None`).
    pub fn truncate_after(&mut self, last: Option<&WalLogId>) {
        let keep = match last {
            None => 0,
            Some(id) => (id.index + 1).saturating_sub(self.first_index),
        };
        let keep = usize::try_from(keep).unwrap_or(usize::MAX);
        self.slots.truncate(keep.min(self.slots.len()));
    }

    /// Drop every live entry up to `upto`; remember it as the last purged.
    /// Returns false (nothing changed) for a purge at or below the last one.
    pub fn purge(&mut self, upto: &WalLogId) -> bool {
        if self.last_purged.is_some_and(|p| p.index >= upto.index) {
            return false;
        }
        while self
            .slots
            .front()
            .is_some_and(|s| s.log_id.index <= upto.index)
        {
            self.slots.pop_front();
            self.first_index += 1;
        }
        if self.slots.is_empty() {
            self.first_index = upto.index + 1;
        }
        self.last_purged = Some(*upto);
        true
    }

    /// Note where the record of `log_id` was written — if that entry is
    /// still live (a truncation may have dropped it meanwhile).
    pub fn set_place(&mut self, log_id: &WalLogId, place: RecordPlace) {
        let Some(at) = log_id.index.checked_sub(self.first_index) else {
            return;
        };
        let Some(slot) = usize::try_from(at).ok().and_then(|i| self.slots.get_mut(i)) else {
            return;
        };
        if slot.log_id == *log_id && slot.place.is_none() {
            slot.place = Some(place);
        }
    }
}

/// The newest entries, consecutive, ending at the log's last entry.
#[derive(Debug)]
pub struct RecentEntries<E> {
    first_index: u64,
    entries: VecDeque<E>,
}

impl<E> Default for RecentEntries<E> {
    fn default() -> Self {
        RecentEntries {
            first_index: 0,
            entries: VecDeque::new(),
        }
    }
}

impl<E> RecentEntries<E> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, index: u64) -> Option<&E> {
        let at = index.checked_sub(self.first_index)?;
        self.entries.get(usize::try_from(at).ok()?)
    }

    /// Add the entry at `index`, which follows the log's last entry; a
    /// cache that does not end right before it starts over.
    pub fn push(&mut self, index: u64, entry: E) {
        if self.first_index + self.entries.len() as u64 != index {
            self.entries.clear();
        }
        if self.entries.is_empty() {
            self.first_index = index;
        }
        self.entries.push_back(entry);
    }

    /// Forget entries after `last` (all for `None`).
    pub fn truncate_after(&mut self, last: Option<u64>) {
        let keep = last.map_or(0, |l| (l + 1).saturating_sub(self.first_index));
        let keep = usize::try_from(keep).unwrap_or(usize::MAX);
        self.entries.truncate(keep.min(self.entries.len()));
    }

    /// Forget entries up to `upto`.
    pub fn purge(&mut self, upto: u64) {
        while !self.entries.is_empty() && self.first_index <= upto {
            self.entries.pop_front();
            self.first_index += 1;
        }
    }

    /// Forget the oldest entries beyond `CACHED_ENTRIES_MAX` — only those
    /// whose records are written (`written` says), which can be read back.
    pub fn evict(&mut self, written: impl Fn(u64) -> bool) {
        while self.entries.len() > CACHED_ENTRIES_MAX && written(self.first_index) {
            self.entries.pop_front();
            self.first_index += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_store::codec::WalLeaderId;
    use openraft::LogId;

    fn id(term: u64, index: u64) -> WalLogId {
        LogId::new(WalLeaderId { term, node_id: 1 }, index)
    }

    #[test]
    fn entries_must_be_consecutive() {
        let mut log = LiveLog::default();
        log.push(id(1, 5), None).unwrap();
        log.push(id(1, 6), None).unwrap();
        assert!(log.push(id(1, 8), None).is_err());
        assert!(log.push(id(2, 6), None).is_err());
        assert_eq!(log.span(), (5, 7));
        assert_eq!(log.last_log_id(), Some(id(1, 6)));
    }

    #[test]
    fn truncation_drops_the_tail_and_purge_the_head() {
        let mut log = LiveLog::default();
        for i in 1..=10 {
            log.push(id(1, i), None).unwrap();
        }
        log.truncate_after(Some(&id(1, 7)));
        assert_eq!(log.span(), (1, 8));
        assert!(log.purge(&id(1, 3)));
        assert_eq!(log.span(), (4, 8));
        assert!(!log.purge(&id(1, 2)), "a purge below the last one is void");
        assert!(log.get(3).is_none());
        assert_eq!(log.get(4).unwrap().log_id, id(1, 4));
        log.push(id(2, 8), None).unwrap();
        // Purged beyond the end: the next entry is the one after the purge.
        assert!(log.purge(&id(2, 20)));
        assert!(log.is_empty());
        assert_eq!(log.last_log_id(), Some(id(2, 20)));
        assert!(log.push(id(2, 22), None).is_err());
        log.push(id(2, 21), None).unwrap();
        log.truncate_after(None);
        assert!(log.is_empty());
        assert_eq!(log.last_log_id(), Some(id(2, 20)));
    }

    #[test]
    fn a_replay_after_a_retired_head_takes_an_entry_past_a_gap_until_it_ends() {
        // Segment 1 (retired) held entries 1..=10; segment 2 begins with an
        // old purge record, then entry 11.
        let mut log = LiveLog::default();
        log.purge(&id(1, 5));
        assert!(log.push(id(1, 11), None).is_err(), "the store's rule");
        let mut log = LiveLog::replaying_retired_head();
        log.purge(&id(1, 5));
        assert!(
            log.push(id(1, 5), None).is_err(),
            "never at or below a purge"
        );
        log.push(id(1, 11), None).unwrap();
        log.purge(&id(1, 10));
        assert_eq!(log.span(), (11, 12));
        log.truncate_after(Some(&id(1, 10)));
        log.end_replay();
        assert!(log.push(id(1, 12), None).is_err(), "strict again");
        log.push(id(1, 11), None).unwrap();
    }

    #[test]
    fn places_land_only_on_the_entry_they_belong_to() {
        let mut log = LiveLog::default();
        log.push(id(1, 1), None).unwrap();
        log.truncate_after(None);
        log.push(id(2, 1), None).unwrap();
        let place = RecordPlace {
            segment: 1,
            position: 40,
        };
        log.set_place(&id(1, 1), place);
        assert_eq!(log.get(1).unwrap().place, None);
        log.set_place(&id(2, 1), place);
        assert_eq!(log.get(1).unwrap().place, Some(place));
    }

    #[test]
    fn the_cache_keeps_unwritten_entries_and_a_bounded_tail() {
        let mut cache = RecentEntries::default();
        let total = CACHED_ENTRIES_MAX as u64 + 100;
        for i in 1..=total {
            cache.push(i, i);
        }
        cache.evict(|i| i <= 50);
        assert_eq!(cache.get(50), None);
        assert_eq!(cache.get(51), Some(&51), "unwritten entries stay");
        cache.evict(|_| true);
        assert_eq!(cache.len(), CACHED_ENTRIES_MAX);
        cache.truncate_after(Some(total - 10));
        assert_eq!(cache.get(total - 9), None);
        cache.push(total + 5, 0);
        assert_eq!(cache.len(), 1, "a gap starts the cache over");
    }
}
