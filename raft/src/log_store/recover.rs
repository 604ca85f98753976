//! Opening a member's log: the WAL's own recovery scan (checksums, torn
//! tails, missing segments, the entry-count chain) with a visitor that
//! replays the Raft records in order — entries into the index, truncations
//! and purges by the same rules the store follows at run time, the last
//! vote and committed log id. Entries are not decoded here (only their log
//! ids): the reader reads them back from the places recorded.

use std::path::Path;

use shards::env::Storage;
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
    let mut log = LiveLog::default();
    let mut vote = None;
    let mut committed = None;
    let plan = ScanPlan {
        shard,
        salvage: false,
        covered: None,
        entries_covered: 0,
    };
    let scan = scan_placed(storage, dir, plan, |place, header, payload| {
        let bad = |e: super::codec::CodecError| format!("{:?} record: {e}", header.kind);
        match header.kind {
            RecordKind::RaftEntry => {
                let id = decode_entry_log_id(payload).map_err(bad)?;
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
    Ok(Recovered {
        log,
        vote,
        committed,
        scan,
    })
}
