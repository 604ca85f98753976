//! Counting log entries: what `entries_before` in a record header means,
//! and the check recovery runs with it.
//!
//! An *entry* is what WAL_READ shows: a machine definition (once per
//! server: the copy every shard but shard 0 logs is not an entry), a create,
//! an apply, a delete — standalone or inside a `Batch` or `Prepare` record.
//! `Batch`, `Prepare`, `Commit`, `Abort` and `Flush` records themselves are
//! not entries. Every record carries the number of entries its shard wrote
//! before it, in offset order, so:
//!
//! * WAL_READ can number the merged log (`sequence`: an entry's position in
//!   the whole server's log, in offset order, from 1) by asking each shard
//!   how many entries it holds below the first offset read — one header,
//!   not a scan from the start. The count survives compaction: snapshots
//!   record it.
//! * Recovery knows what to expect: each record continues the count of the
//!   ones before it. A record whose count jumps ahead means entries are
//!   missing from the middle of the log (a deleted or emptied segment) — a
//!   gap that refuses start-up instead of losing acknowledged data silently.
//!
//! Raft records (kinds 10..=14, a Raft member's log) are not entries for
//! now: the cluster integration decides how WAL_READ numbers them.
//!
//! The entries of a prepared cross-shard batch are counted when it is
//! prepared; if it is aborted, its numbers stay used (sequences may skip).

use super::entry;
use super::record::{decode_record, RecordHeader, RecordKind};

/// Entries a plain record adds to its shard's count.
pub fn entries_in(kind: RecordKind, shard: usize) -> u64 {
    match kind {
        RecordKind::PutMachine => u64::from(shard == 0),
        RecordKind::CreateInstance | RecordKind::ApplyEvent | RecordKind::DeleteInstance => 1,
        RecordKind::Batch
        | RecordKind::Prepare
        | RecordKind::Commit
        | RecordKind::Abort
        | RecordKind::Flush => 0,
        // A Raft member's records: how WAL_READ numbers Raft entries is for
        // the cluster integration to decide (corestate-raft's README); until
        // then they count nothing, and a standalone shard refuses them.
        RecordKind::RaftEntry
        | RecordKind::RaftVote
        | RecordKind::RaftTruncate
        | RecordKind::RaftPurge
        | RecordKind::RaftCommitted => 0,
    }
}

/// Records that hold other records: where their first inner record starts.
fn inner_records<'a>(header: &RecordHeader, payload: &'a [u8]) -> Option<Result<&'a [u8], String>> {
    match header.kind {
        RecordKind::Batch => Some(Ok(payload)),
        RecordKind::Prepare => Some(entry::read_prepare(payload).map(|(_, _, inner)| inner)),
        _ => None,
    }
}

/// Entries are missing before a record: it says `found` entries came before
/// it, the log read so far holds `expected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub expected: u64,
    pub found: u64,
}

/// The running entry count of a log read in order, checking that each
/// record continues it.
#[derive(Debug, Clone)]
pub struct SequenceChain {
    shard: usize,
    /// Entries before the next record.
    count: u64,
}

impl SequenceChain {
    /// A chain whose next record must say `count` entries came before it.
    pub fn starting_at(shard: usize, count: u64) -> Self {
        SequenceChain { shard, count }
    }

    /// Entries counted so far: the next record's `entries_before`.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Take the next record of the log. A record that does not continue the
    /// count is a gap (or, for a count that goes back, a log from elsewhere).
    pub fn check(&mut self, header: &RecordHeader, payload: &[u8]) -> Result<(), ChainError> {
        match inner_records(header, payload) {
            Some(inner) => {
                let inner = inner.map_err(ChainError::Unreadable)?;
                // The batch's entries are its inner records; the outer record
                // comes after them and says so.
                let first = match decode_record(inner) {
                    Ok((h, _)) => h.entries_before,
                    Err(_) if inner.is_empty() => header.entries_before,
                    Err(d) => {
                        return Err(ChainError::Unreadable(format!(
                            "damaged record inside a batch: {d:?}"
                        )))
                    }
                };
                self.expect(first)?;
                if header.entries_before < first {
                    return Err(ChainError::Unreadable(format!(
                        "batch record counts {} entries before it, its first inner record {first}",
                        header.entries_before
                    )));
                }
                self.count = header.entries_before;
            }
            None => {
                self.expect(header.entries_before)?;
                self.count += entries_in(header.kind, self.shard);
            }
        }
        Ok(())
    }

    fn expect(&self, found: u64) -> Result<(), ChainError> {
        if found == self.count {
            Ok(())
        } else {
            Err(ChainError::Gap(Gap {
                expected: self.count,
                found,
            }))
        }
    }
}

/// Why a record does not continue the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainError {
    Gap(Gap),
    Unreadable(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::record::{append_record, RecordStamp};

    fn record(kind: RecordKind, entries_before: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let stamp = RecordStamp {
            kind,
            offset: 64 + entries_before,
            time_ms: 0,
            entries_before,
        };
        append_record(&mut out, &stamp, 0, |o| o.extend_from_slice(payload)).unwrap();
        out
    }

    fn check(chain: &mut SequenceChain, bytes: &[u8]) -> Result<(), ChainError> {
        let (h, p) = decode_record(bytes).unwrap();
        chain.check(&h, p)
    }

    #[test]
    fn machine_copies_on_other_shards_are_not_entries() {
        assert_eq!(entries_in(RecordKind::PutMachine, 0), 1);
        assert_eq!(entries_in(RecordKind::PutMachine, 3), 0);
        assert_eq!(entries_in(RecordKind::ApplyEvent, 3), 1);
        assert_eq!(entries_in(RecordKind::Commit, 0), 0);
    }

    #[test]
    fn a_continuous_log_passes_and_counts() {
        let mut chain = SequenceChain::starting_at(1, 5);
        check(&mut chain, &record(RecordKind::CreateInstance, 5, b"{}")).unwrap();
        check(&mut chain, &record(RecordKind::PutMachine, 6, b"{}")).unwrap();
        check(&mut chain, &record(RecordKind::Commit, 6, b"12345678")).unwrap();
        check(&mut chain, &record(RecordKind::ApplyEvent, 6, b"{}")).unwrap();
        assert_eq!(chain.count(), 7);
    }

    #[test]
    fn a_jump_is_a_gap() {
        let mut chain = SequenceChain::starting_at(0, 5);
        assert_eq!(
            check(&mut chain, &record(RecordKind::ApplyEvent, 9, b"{}")),
            Err(ChainError::Gap(Gap {
                expected: 5,
                found: 9
            }))
        );
    }

    #[test]
    fn a_batch_continues_with_its_inner_records() {
        let mut inner = record(RecordKind::CreateInstance, 3, b"{}");
        inner.extend(record(RecordKind::ApplyEvent, 4, b"{}"));
        let batch = record(RecordKind::Batch, 5, &inner);
        let mut chain = SequenceChain::starting_at(0, 3);
        check(&mut chain, &batch).unwrap();
        assert_eq!(chain.count(), 5);
        let mut late = SequenceChain::starting_at(0, 2);
        assert!(matches!(check(&mut late, &batch), Err(ChainError::Gap(_))));
    }
}
