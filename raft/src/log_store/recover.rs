//! Opening a member's log: the WAL's own recovery scan (checksums, torn
//! tails, missing segments, the entry-count chain) with a visitor that
//! replays the Raft records in order — entries into the index, truncations
//! and purges by the same rules the store follows at run time, the last
//! vote and committed log id. Entries are not decoded here (only their log
//! ids): the reader reads them back from the places recorded.
//!
//! The log starts at the segment its head file names (`shards::wal::head`;
//! segment 1 when there is none): segments below it were retired, an oldest
//! segment above it refuses the start as missing. A log whose head was
//! retired is replayed by the index's rule for that case (`index.rs`).

use std::collections::BTreeMap;
use std::path::Path;

use shards::env::Storage;
use shards::wal::head::{head_path, read_first_segment};
use shards::wal::record::RecordKind;
use shards::wal::recovery::{scan_placed, RecoveryError, ScanOutcome, ScanPlan};

use super::codec::{
    decode_entry_log_id, decode_optional, decode_purge, decode_vote, WalLogId, WalVote,
};
use super::index::LiveLog;

/// What the log held.
pub struct Recovered {
    pub log: LiveLog,
    pub vote: Option<WalVote>,
    pub committed: Option<WalLogId>,
    pub scan: ScanOutcome,
    /// The log's first segment (its head).
    pub first_segment: u64,
    /// Per segment read: the highest index of an entry record in it.
    pub entry_index_max: BTreeMap<u64, u64>,
}

/// Scan the log in `dir` (a member of shard `shard`'s group). A damaged
/// record or one that breaks the log's rules refuses the start, naming the
/// segment file and byte (`RecoveryError`); a torn last write is cut off,
/// as for a standalone shard.
pub fn recover(
    storage: &dyn Storage,
    dir: &Path,
    shard: usize,
) -> Result<Recovered, RecoveryError> {
    let first_segment = read_first_segment(storage, dir).map_err(|error| RecoveryError::Io {
        path: head_path(dir),
        error,
    })?;
    let mut log = if first_segment > 1 {
        LiveLog::replaying_retired_head()
    } else {
        LiveLog::default()
    };
    let mut vote = None;
    let mut committed = None;
    let mut entry_index_max = BTreeMap::new();
    let plan = ScanPlan {
        shard,
        salvage: false,
        covered: None,
        entries_covered: 0,
        first_segment: Some(first_segment),
    };
    let scan = scan_placed(storage, dir, plan, |place, header, payload| {
        let bad = |e: super::codec::CodecError| format!("{:?} record: {e}", header.kind);
        match header.kind {
            RecordKind::RaftEntry => {
                let id = decode_entry_log_id(payload).map_err(bad)?;
                let max = entry_index_max.entry(place.segment).or_insert(id.index);
                *max = (*max).max(id.index);
                log.push(id, Some(place))
            }
            RecordKind::RaftVote => {
                vote = Some(decode_vote(payload).map_err(bad)?);
                Ok(())
            }
            RecordKind::RaftTruncate => {
                let last = decode_optional(payload, "truncation").map_err(bad)?;
                log.truncate_after(last.as_ref());
                Ok(())
            }
            RecordKind::RaftPurge => {
                log.purge(&decode_purge(payload).map_err(bad)?);
                Ok(())
            }
            RecordKind::RaftCommitted => {
                committed = decode_optional(payload, "committed log id").map_err(bad)?;
                Ok(())
            }
            other => Err(format!(
                "a standalone shard's {other:?} record in a Raft member's log"
            )),
        }
    })?;
    log.end_replay();
    Ok(Recovered {
        log,
        vote,
        committed,
        scan,
        first_segment,
        entry_index_max,
    })
}
