//! The seam between a shard and its replicated group (issue 14): what the
//! shard loop asks of the group, and what the group delivers to the loop.
//!
//! The shard loop owns the shard's state, on a member as on a standalone
//! shard. The group (crate `corestate-raft`) owns the log. They meet here:
//!
//! * the loop asks through [`GroupLink`]: who leads, log this turn
//!   ([`GroupLink::propose`]), confirm leadership for a read
//!   ([`GroupLink::barrier`]), and — after its memory ran ahead of a log
//!   that did not take its turn — the committed state to rebuild from
//!   ([`GroupLink::committed`]); and committed entries by log index, to
//!   read the log by offset ([`GroupLink::entries`]);
//! * the group delivers to the loop, in log order, over one channel
//!   ([`Delivery`]): committed entries to apply, a snapshot to install, a
//!   look at the applied state (a snapshot being built).
//!
//! The group never touches the state itself, so there is one copy of it
//! and one task that changes it — the actor model of a standalone shard.
//! Deliveries are sent without waiting for the loop: openraft answers a
//! proposal only after applying its entry, and the leader's loop is the one
//! waiting for that answer.

use std::future::Future;
use std::pin::Pin;

use super::replay::{InDoubtPart, TxnLog};
use super::state::ShardState;
use crate::error::{EngineError, ErrorCode};
use crate::snapshot::LogPosition;
use crate::wal::files::LogFiles;
use crate::wal::WalStats;

/// What a link call returns: a future on the shard's executor.
pub type LinkFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// Who leads the group, as this member knows it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    /// This member leads, in `term`.
    Leader { term: u64 },
    /// Another member leads (or none is known).
    Follower { leader: Option<u64> },
}

/// The code of a refusal a failover causes (not the leader, outcome
/// unknown, no quorum): retryable, and one every official client parses.
pub const FAILOVER_ERROR_CODE: ErrorCode = ErrorCode::WalIoError;

/// `details.outcome` of a failover refusal: the request was not run.
pub const OUTCOME_NOT_APPLIED: &str = "not_applied";
/// `details.outcome` when the request may or may not have taken effect.
pub const OUTCOME_UNKNOWN: &str = "unknown";

/// Why the group did not take a turn or confirm a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkError {
    /// This member does not lead; nothing was logged.
    NotLeader { leader: Option<u64> },
    /// Logged (or sent to the leader), then no answer: a leader change, a
    /// trip that failed, an answer not in time. It may or may not commit.
    OutcomeUnknown { leader: Option<u64> },
    /// No quorum answered.
    NoQuorum(String),
    /// The leader could not be reached to forward the request to; it was
    /// not sent.
    LeaderUnreachable { leader: u64, why: String },
    /// The group member stopped or refused.
    Failed(String),
    /// The group refused the request as one it cannot carry out (a
    /// membership change that is not possible); nothing changed.
    Rejected(String),
    /// A turn's records came to more than one entry holds
    /// (`GroupLink::entry_records_bytes_max`); nothing was logged and the
    /// turn's writes were undone. `alone`: the turn ran one request, which
    /// is too large however it is sent; otherwise requests that fit on
    /// their own may be sent again.
    TurnTooLarge {
        bytes: usize,
        max: usize,
        alone: bool,
    },
}

impl LinkError {
    /// What the clients of the turn are told. Every case but a stopped
    /// member may be retried (elsewhere or later) — a write safely only
    /// with an idempotency key when the outcome is unknown.
    ///
    /// The code is `FAILOVER_ERROR_CODE`, not rstmdb 0.3's
    /// `REPLICATION_TIMEOUT`: the official Python client (0.2.1) cannot
    /// parse that code (PROTOCOL.md §15 row 25) and would raise a protocol
    /// error instead of a retryable one. `details.leader` names the leader
    /// when known; `details.outcome` says whether the request may have
    /// taken effect (`unknown`) or surely did not (`not_applied`).
    pub fn to_engine_error(&self) -> EngineError {
        let (code, leader, what) = match self {
            LinkError::NotLeader { leader } => (
                FAILOVER_ERROR_CODE,
                *leader,
                "this node does not lead the shard's group",
            ),
            LinkError::OutcomeUnknown { leader } => (
                FAILOVER_ERROR_CODE,
                *leader,
                "the shard's leader changed, or did not answer in time, before the request's \
                 outcome was known; a write may or may not have been applied",
            ),
            LinkError::NoQuorum(_) => (
                FAILOVER_ERROR_CODE,
                None,
                "no quorum of the shard's group answered",
            ),
            LinkError::LeaderUnreachable { leader, .. } => (
                FAILOVER_ERROR_CODE,
                Some(*leader),
                "the shard's leader could not be reached; the request was not sent",
            ),
            LinkError::Failed(_) => (
                ErrorCode::InternalError,
                None,
                "the shard's group member stopped",
            ),
            LinkError::Rejected(_) => (
                ErrorCode::BadRequest,
                None,
                "the shard's group refused the change",
            ),
            LinkError::TurnTooLarge { alone: true, .. } => (
                ErrorCode::BadRequest,
                None,
                "the request's writes are larger than one entry of the shard's log holds; \
                 nothing was applied",
            ),
            LinkError::TurnTooLarge { alone: false, .. } => (
                FAILOVER_ERROR_CODE,
                None,
                "the writes run together with this request's came to more than one entry of \
                 the shard's log holds; nothing was applied, and a request that fits alone \
                 may be sent again",
            ),
        };
        let detail = match self {
            LinkError::NoQuorum(why)
            | LinkError::Failed(why)
            | LinkError::Rejected(why)
            | LinkError::LeaderUnreachable { why, .. } => format!("{what}: {why}"),
            LinkError::TurnTooLarge { bytes, max, .. } => {
                format!("{what} ({bytes} bytes of records, an entry holds at most {max})")
            }
            _ => what.to_string(),
        };
        let mut details = serde_json::Map::new();
        if let Some(id) = leader {
            details.insert("leader".into(), id.into());
        }
        // Whether the request may have taken effect, so that a client (and
        // the tests' checker) knows a refusal from a lost write.
        let outcome = match self {
            LinkError::NotLeader { .. }
            | LinkError::NoQuorum(_)
            | LinkError::LeaderUnreachable { .. }
            | LinkError::TurnTooLarge { .. } => Some(OUTCOME_NOT_APPLIED),
            LinkError::OutcomeUnknown { .. } => Some(OUTCOME_UNKNOWN),
            LinkError::Failed(_) | LinkError::Rejected(_) => None,
        };
        if let Some(outcome) = outcome {
            details.insert("outcome".into(), outcome.into());
        }
        let err = EngineError::new(code, detail);
        if details.is_empty() {
            err
        } else {
            err.with_details(details)
        }
    }
}

/// A change of a group's members, which its leader runs (issue 14,
/// item 11): joint consensus by openraft's membership changes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MemberChange {
    /// Add node `node`, whose peer listener is at `peer`: a learner until
    /// it has caught up (snapshot and log), then a voter. A learner that
    /// has not caught up within `catch_up_timeout_ms` is taken out again
    /// and the change refused.
    Add {
        node: u64,
        peer: String,
        catch_up_timeout_ms: u64,
    },
    /// Remove node `node` from the group (voter or learner).
    Remove { node: u64 },
}

/// A snapshot of the shard's state at a log index.
pub struct SnapshotPart {
    /// The last log index the snapshot covers.
    pub index: u64,
    pub state: ShardState,
    pub position: LogPosition,
    /// Cross-shard parts in doubt at the snapshot, and committed batches.
    pub txns: TxnLog,
    /// The member's log still holds the group's committed entries from
    /// this index up to `index` (a member that restarted since it took its
    /// snapshot): reads by offset may reach back into them
    /// (`member_read_back.rs`).
    pub log_kept_from: Option<u64>,
}

/// The committed state to rebuild from: the newest snapshot (none: an
/// empty shard) and every committed entry after it that was applied.
pub struct Committed {
    pub snapshot: Option<SnapshotPart>,
    /// (log index, records), in log order.
    pub entries: Vec<LoggedTurn>,
}

/// One committed entry's records: (log index, records).
pub type LoggedTurn = (u64, Vec<u8>);

/// What the group delivers to the shard loop, in log order.
pub enum Delivery {
    /// A committed entry: its log index and records. Blank and membership
    /// entries change nothing in a shard and are not delivered.
    Apply { index: u64, records: Vec<u8> },
    /// Replace the state with a snapshot's.
    Install(Box<SnapshotPart>),
    /// Take a snapshot of the state as applied so far, in slices between
    /// the loop's turns (`member_snapshot.rs`); the image goes to the
    /// sender once complete (dropped: the job was abandoned).
    Snapshot(flume::Sender<GroupImage>),
}

/// A member's snapshot, taken by its loop: the shard's image (unsealed)
/// and the cross-shard batch bookkeeping as of the snapshot's log index.
pub struct GroupImage {
    pub image: crate::snapshot::codec::UnsealedImage,
    /// Batch parts in doubt, by txid.
    pub in_doubt: Vec<InDoubtPart>,
    /// Committed batch ids kept, oldest first, and their horizon
    /// (`committed_ids.rs`).
    pub committed: (Vec<u64>, u64),
}

/// Everything the group delivers to a member's loop: `early`, what came
/// while the member started (before the loop ran), then `queue`.
pub struct Deliveries {
    pub early: Vec<Delivery>,
    pub queue: flume::Receiver<Delivery>,
}

/// What the shard loop asks of its group.
pub trait GroupLink {
    fn leadership(&self) -> Leadership;
    /// Log `records` (one turn) as one entry. `Ok(index)` once committed,
    /// with its `Delivery::Apply` already sent.
    fn propose(&self, records: Vec<u8>) -> LinkFuture<Result<u64, LinkError>>;
    /// The most bytes of records one entry holds: a turn's records that
    /// come to more are not proposed (`LinkError::TurnTooLarge`).
    fn entry_records_bytes_max(&self) -> usize;
    /// ReadIndex: `Ok` once this member was confirmed leader by a quorum
    /// after the call, with every entry committed before it delivered.
    fn barrier(&self) -> LinkFuture<Result<(), LinkError>>;
    /// On a leader: `Ok` once every entry in this member's log as of the
    /// call — a tail an earlier term, or this node before a restart, left
    /// uncommitted included — is committed and its delivery sent.
    fn catch_up(&self) -> LinkFuture<Result<(), LinkError>>;
    /// The committed state to rebuild from.
    fn committed(&self) -> LinkFuture<Result<Committed, String>>;
    /// The committed entries with log index in `from..=to` that carry
    /// records, as (log index, records) in log order; `Err` when the log
    /// no longer holds `from` (purged behind a snapshot) or cannot be read.
    /// Callers ask only for applied indexes.
    fn entries(&self, from: u64, to: u64) -> LinkFuture<Result<Vec<LoggedTurn>, String>>;
    /// The last log index purged from this member's log (entries at or
    /// below it are gone), if any.
    fn purged_index(&self) -> Option<u64>;
    /// Whether the log no longer holds `index` (purged behind a snapshot).
    fn has_purged(&self, index: u64) -> bool {
        self.purged_index().is_some_and(|p| p >= index)
    }
    /// Hand the lead to the most caught-up other voter and wait until it
    /// leads (a graceful stop): `Ok(Some(node))` then, `Ok(None)` when this
    /// member did not lead, `Err` when no one took over in time.
    fn hand_over(&self) -> LinkFuture<Result<Option<u64>, String>>;
    /// On the leader: run `change` (adding waits until the new member has
    /// caught up) and answer with the group's voters after it. Runs as
    /// its own task: the loop must not wait for it.
    fn change_members(&self, change: MemberChange) -> LinkFuture<Result<Vec<u64>, LinkError>>;
    /// Build a snapshot of this member's applied state now (COMPACT) and
    /// wait until it covers everything applied at the call: `Ok(true)`
    /// then, `Ok(false)` when a snapshot covered it already. The log
    /// behind it is then purged and its segments retired in the
    /// background. Runs as its own task: the loop takes the snapshot in
    /// slices (`Delivery::Snapshot`).
    fn snapshot_now(&self) -> LinkFuture<Result<bool, String>>;
    /// What this member knows of its group now, as JSON (role, leader,
    /// term, log indexes, voters, and on a leader each follower's lag):
    /// REPLICATION_STATUS material.
    fn status(&self) -> serde_json::Value;
    /// The group's log — this member's WAL — as WAL_STATS and the metrics
    /// report it: its writer's counters (syncs, groups, bytes) and its
    /// segment files.
    fn log_files(&self) -> std::io::Result<(WalStats, LogFiles)>;
    /// Send `msg` to `leader`'s shard, whose answer goes where `msg` says;
    /// `Err` gives back a message that cannot be forwarded.
    fn forward(
        &self,
        leader: u64,
        msg: super::command::ShardMsg,
    ) -> Result<(), Box<super::command::ShardMsg>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detail(e: &LinkError, key: &str) -> Option<serde_json::Value> {
        e.to_engine_error()
            .details
            .and_then(|d| d.get(key).cloned())
    }

    #[test]
    fn a_refusal_says_whether_the_request_may_have_run() {
        let not_run = [
            LinkError::NotLeader { leader: Some(2) },
            LinkError::NotLeader { leader: None },
            LinkError::NoQuorum("no answer".into()),
            LinkError::LeaderUnreachable {
                leader: 3,
                why: "connection refused".into(),
            },
        ];
        for e in &not_run {
            assert_eq!(e.to_engine_error().code, FAILOVER_ERROR_CODE, "{e:?}");
            assert_eq!(detail(e, "outcome"), Some(OUTCOME_NOT_APPLIED.into()));
        }
        let maybe = LinkError::OutcomeUnknown { leader: Some(1) };
        assert_eq!(detail(&maybe, "outcome"), Some(OUTCOME_UNKNOWN.into()));
        assert_eq!(detail(&maybe, "leader"), Some(1.into()));
        assert_eq!(detail(&not_run[3], "leader"), Some(3.into()));
        assert_eq!(detail(&not_run[1], "leader"), None);
        let failed = LinkError::Failed("stopped".into()).to_engine_error();
        assert_eq!(failed.code, ErrorCode::InternalError);
        assert!(failed.details.is_none());
    }
}
