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
//!   ([`GroupLink::committed`]);
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

use super::state::ShardState;
use crate::error::{EngineError, ErrorCode};
use crate::snapshot::LogPosition;

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

/// Why the group did not take a turn or confirm a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkError {
    /// This member does not lead; nothing was logged.
    NotLeader { leader: Option<u64> },
    /// Logged, then dropped by a leader change: it may or may not commit.
    OutcomeUnknown { leader: Option<u64> },
    /// No quorum answered.
    NoQuorum(String),
    /// The group member stopped or refused.
    Failed(String),
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
    /// when known.
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
                "the shard's leader changed before the write committed; it may or may not \
                 have been applied",
            ),
            LinkError::NoQuorum(_) => (
                FAILOVER_ERROR_CODE,
                None,
                "no quorum of the shard's group answered",
            ),
            LinkError::Failed(_) => (
                ErrorCode::InternalError,
                None,
                "the shard's group member stopped",
            ),
        };
        let detail = match self {
            LinkError::NoQuorum(why) | LinkError::Failed(why) => format!("{what}: {why}"),
            _ => what.to_string(),
        };
        let err = EngineError::new(code, detail);
        match leader {
            None => err,
            Some(id) => {
                let mut details = serde_json::Map::new();
                details.insert("leader".into(), id.into());
                err.with_details(details)
            }
        }
    }
}

/// A snapshot of the shard's state at a log index.
pub struct SnapshotPart {
    /// The last log index the snapshot covers.
    pub index: u64,
    pub state: ShardState,
    pub position: LogPosition,
}

/// The committed state to rebuild from: the newest snapshot (none: an
/// empty shard) and every committed entry after it that was applied.
pub struct Committed {
    pub snapshot: Option<SnapshotPart>,
    /// (log index, records), in log order.
    pub entries: Vec<(u64, Vec<u8>)>,
}

/// A look at the applied state and where the shard's log stands.
pub type Visit = Box<dyn FnOnce(&ShardState, LogPosition)>;

/// What the group delivers to the shard loop, in log order.
pub enum Delivery {
    /// A committed entry: its log index and records. Blank and membership
    /// entries change nothing in a shard and are not delivered.
    Apply { index: u64, records: Vec<u8> },
    /// Replace the state with a snapshot's.
    Install(Box<SnapshotPart>),
    /// Look at the state as applied so far (no speculative turn in it).
    Visit(Visit),
}

/// What the shard loop asks of its group.
pub trait GroupLink {
    fn leadership(&self) -> Leadership;
    /// Log `records` (one turn) as one entry. `Ok(index)` once committed,
    /// with its `Delivery::Apply` already sent.
    fn propose(&self, records: Vec<u8>) -> LinkFuture<Result<u64, LinkError>>;
    /// ReadIndex: `Ok` once this member was confirmed leader by a quorum
    /// after the call, with every entry committed before it delivered.
    fn barrier(&self) -> LinkFuture<Result<(), LinkError>>;
    /// The committed state to rebuild from.
    fn committed(&self) -> LinkFuture<Result<Committed, String>>;
    /// What this member knows of its group now, as JSON (role, leader,
    /// term, log indexes, voters, and on a leader each follower's lag):
    /// REPLICATION_STATUS material.
    fn status(&self) -> serde_json::Value;
    /// Send `msg` to `leader`'s shard, whose answer goes where `msg` says;
    /// `Err` gives back a message that cannot be forwarded.
    fn forward(
        &self,
        leader: u64,
        msg: super::command::ShardMsg,
    ) -> Result<(), Box<super::command::ShardMsg>>;
}
