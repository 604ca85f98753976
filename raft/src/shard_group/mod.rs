//! A shard as a Raft group: what its log entries carry and the state
//! machine that followers (and a restarted member) apply them to.
//!
//! The leader of a shard's group executes requests as a standalone shard
//! does — checks them against its state, applies them in memory, stages
//! WAL records with offsets from its clock — and proposes the records of
//! one loop turn as one entry ([`TurnRecords`]). The records are results,
//! not commands: applying an entry is recovery's replay
//! (`ShardState::replay_any`), so no member evaluates a guard twice and
//! every member reports the same `wal_offset` for the same write.
//!
//! * `state_machine.rs` — [`ShardMachine`], openraft's `RaftStateMachine`
//!   over a `ShardState`;
//! * `member.rs` — [`GroupMember`]: a member set up on its shard's
//!   executor (log, state machine, peer links), and what the shard loop
//!   calls on it (propose a turn, a read barrier), with the errors a
//!   client can be told (`GroupError`);
//! * `loop_machine.rs` — [`LoopMachine`], the state machine of a member
//!   whose shard loop keeps the state (`shards::shard::replica`): it
//!   delivers committed entries to the loop;
//! * `link.rs` — [`MemberLink`], what that loop calls on its group
//!   (propose, barrier, leadership, the committed state to rebuild from,
//!   forwarding to the leader);
//! * `forward.rs` — a follower's operations forwarded to the leader's
//!   shard over the peer transport: what travels, where answers go;
//! * `forward_batch.rs` — a turn's forwarded operations gathered into one
//!   call to the leader;
//! * `forward_ops.rs`, `forward_answers.rs` — that call's operations and
//!   its answers as they travel;
//! * `forward_serve.rs` — the leader serving a forwarded batch;
//! * `admin.rs` — the group's status, membership changes, handing the
//!   lead over before a graceful stop;
//! * `balance.rs` — leaders spread over the nodes (each group's preferred
//!   leader);
//! * `snapshot_file.rs` — snapshots on disk beside the member's log;
//! * `snapshot_pacing.rs` — when a member snapshots: after enough entries
//!   and a log grown to a share of its snapshot's size;
//! * `snapshot.rs` — the group snapshot: the shard snapshot (the standalone
//!   format, `shards::snapshot`) plus the cross-shard batches still in
//!   doubt, checksummed.

mod admin;
mod balance;
mod forward;
mod forward_answers;
mod forward_batch;
mod forward_ops;
mod forward_serve;
mod forward_wire;
mod link;
mod loop_machine;
mod member;
mod snapshot;
pub mod snapshot_file;
mod snapshot_pacing;
mod state_machine;

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

use crate::log_store::{AppDataCodec, CodecError};
use crate::GlommioRuntime;

pub use admin::{
    GroupRole, GroupStatus, ReplicaLag, LEADERSHIP_HANDOVER_TIMEOUT_MS,
    MEMBER_CATCH_UP_TIMEOUT_MS_DEFAULT, MEMBER_CATCH_UP_TIMEOUT_MS_MAX,
};
pub use balance::{
    preferred_leader, spread_leaders, LEADER_BALANCE_INTERVAL_MS, LEADER_BALANCE_SETTLE_MS,
};
pub use forward::FORWARD_TIMEOUT_MS;
pub use link::{
    start_loop_member, MemberLink, DELIVERIES_QUEUED_MAX, ENTRY_RECORDS_BYTES_MAX,
    READ_BARRIER_TIMEOUT_MS, TURN_COMMIT_TIMEOUT_MS,
};
pub use loop_machine::LoopMachine;
pub use member::{GroupError, GroupMember, GroupRaft, MemberMachine, MemberSetup};
pub use snapshot::{
    decode_group, GroupSnapshot, GroupSnapshotBytes, GroupSnapshotError, GROUP_SNAPSHOT_MAGIC,
};
pub use snapshot_pacing::{pace_snapshots, LogSinceSnapshot, SnapshotPacing};
pub use state_machine::ShardMachine;

/// One entry of a shard's Raft log: the WAL records of one leader turn,
/// complete (header and payload) and back to back, as a standalone shard
/// writes them to its segments.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnRecords(pub Vec<u8>);

impl fmt::Debug for TurnRecords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TurnRecords({} bytes)", self.0.len())
    }
}

impl fmt::Display for TurnRecords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes of records", self.0.len())
    }
}

/// In the member's log (`log_store`) an entry's records are stored as they
/// are; each record carries its own checksum, checked when it is applied.
impl AppDataCodec for TurnRecords {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0);
    }

    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        Ok(TurnRecords(bytes.to_vec()))
    }
}

/// On the peer transport (JSON bodies) the records travel as one base64
/// string: 4/3 of their size, where a JSON array of byte values would take
/// up to 4 bytes per byte and a parse per number.
impl serde::Serialize for TurnRecords {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&BASE64.encode(&self.0))
    }
}

impl<'de> serde::Deserialize<'de> for TurnRecords {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        BASE64
            .decode(text.as_bytes())
            .map(TurnRecords)
            .map_err(serde::de::Error::custom)
    }
}

/// What applying one entry did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TurnApplied {
    /// Records the entry held (a batch record counts once).
    pub records: u64,
    /// The highest offset among them.
    pub last_offset: Option<u64>,
}

openraft::declare_raft_types!(
    /// A shard's Raft group: entries are turns of WAL records, answered with
    /// what applying them did, on the shard's glommio executor.
    pub ShardGroup:
        D = TurnRecords,
        R = TurnApplied,
        AsyncRuntime = GlommioRuntime,
);

/// A log id of a shard group.
pub type GroupLogId = openraft::type_config::alias::LogIdOf<ShardGroup>;
/// The membership a shard group's state machine last applied.
pub type GroupMembership = openraft::type_config::alias::StoredMembershipOf<ShardGroup>;

/// The decoders of a forwarded call's bodies, reachable from the fuzz
/// targets (tests/fuzz/fuzz_targets/peer_bodies.rs); not an API.
#[doc(hidden)]
pub mod fuzz_entry {
    pub use super::forward_ops::fuzz_round_trip as forwarded_ops;

    /// Decode `body` as a forwarded batch's answers.
    pub fn forwarded_answers(body: &[u8]) {
        let _ = super::forward_answers::decode_answers(body);
    }
}
