//! One member of a shard's group, set up on the shard's executor: its log
//! in the shard's directory (`log_store`), its state machine
//! ([`ShardMachine`]), its links to the other members (`net`), and the
//! task that serves the calls other members make to it. What the shard
//! loop calls on it: [`GroupMember::propose`] for a turn's records and
//! [`GroupMember::read_barrier`] before a linearizable read.

use std::fmt;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use openraft::error::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::storage::RaftStateMachine;
use openraft::{Config, Raft, ReadPolicy};
use shards::env::Env;

use super::{GroupSnapshotBytes, ShardGroup, ShardMachine, TurnApplied, TurnRecords};
use crate::log_store::{OpenReport, WalLogOptions, WalLogStore};
use crate::net::{serve_group_with, GroupInbox, PeerPool, ShardCalls};

/// openraft's handle on a shard group member.
pub type GroupRaft<M = ShardMachine> = Raft<ShardGroup, M>;

/// What a member's state machine is: [`ShardMachine`] (the state kept by
/// the machine itself) or [`super::LoopMachine`] (the state kept by the
/// shard loop, which the machine feeds).
pub trait MemberMachine:
    RaftStateMachine<ShardGroup, SnapshotData = GroupSnapshotBytes> + Clone + 'static
{
}
impl<M: RaftStateMachine<ShardGroup, SnapshotData = GroupSnapshotBytes> + Clone + 'static>
    MemberMachine for M
{
}

/// Why a proposal or a read barrier did not go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupError {
    /// This member does not lead the group (or not yet: a new leader
    /// refuses until a quorum acknowledged it). Nothing was logged: the
    /// request may go to `leader`, or be retried.
    NotLeader { leader: Option<u64> },
    /// The entry was logged here but dropped when this member took another
    /// leader's log: it may or may not have committed. Only a retry that
    /// the records make idempotent (an idempotency key) is safe.
    OutcomeUnknown { leader: Option<u64> },
    /// No quorum answered (a read barrier, a hand-over).
    NoQuorum(String),
    /// openraft refused the request as such (a membership change that is
    /// not allowed now, a failed precondition).
    Refused(String),
    /// The member stopped (a storage failure, or shutdown).
    Stopped(String),
}

impl GroupError {
    /// Whether a client may simply try again (elsewhere or later).
    pub fn retryable(&self) -> bool {
        !matches!(self, GroupError::Stopped(_) | GroupError::Refused(_))
    }
}

impl fmt::Display for GroupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let leader = |l: &Option<u64>| l.map_or("unknown".to_string(), |id| format!("node {id}"));
        match self {
            GroupError::NotLeader { leader: l } => {
                write!(f, "not the group's leader (leader: {})", leader(l))
            }
            GroupError::OutcomeUnknown { leader: l } => write!(
                f,
                "leadership changed before the write committed; it may or may not have been \
                 applied (leader: {})",
                leader(l)
            ),
            GroupError::NoQuorum(why) => write!(f, "no quorum: {why}"),
            GroupError::Refused(why) => write!(f, "refused: {why}"),
            GroupError::Stopped(why) => write!(f, "the group member stopped: {why}"),
        }
    }
}

impl std::error::Error for GroupError {}

/// What a client can be told about a write (a turn, a membership change)
/// openraft refused.
pub(super) fn write_error(e: RaftError<ShardGroup, ClientWriteError<ShardGroup>>) -> GroupError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => GroupError::NotLeader {
            leader: f.leader_id,
        },
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)) => GroupError::OutcomeUnknown {
            leader: f.leader_id,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            GroupError::Refused(e.to_string())
        }
        RaftError::APIError(e) => GroupError::Refused(e.to_string()),
        RaftError::Fatal(e) => GroupError::Stopped(e.to_string()),
    }
}

/// How a member is set up.
pub struct MemberSetup<'a> {
    pub node_id: u64,
    pub shard: usize,
    /// Where the member keeps its log.
    pub log_dir: &'a Path,
    /// Where it keeps its snapshots (not inside `log_dir`).
    pub snapshot_dir: &'a Path,
    pub log: WalLogOptions,
    pub allow_instance_recreate: bool,
    pub raft_config: Arc<Config>,
}

/// A running member. Dropping it stops serving other members' calls;
/// [`GroupMember::shutdown`] stops its Raft.
pub struct GroupMember<M: MemberMachine = ShardMachine> {
    raft: GroupRaft<M>,
    machine: M,
    _serving: glommio::Task<()>,
}

impl GroupMember {
    /// Open the log, start Raft on the calling executor (the shard's) and
    /// serve the calls `inbox` brings from the peer listener.
    pub async fn start(
        setup: MemberSetup<'_>,
        env: Env,
        peers: &Rc<PeerPool>,
        inbox: GroupInbox,
    ) -> Result<(GroupMember, OpenReport), String> {
        let machine = ShardMachine::open(
            setup.shard,
            setup.allow_instance_recreate,
            env.storage.clone(),
            setup.snapshot_dir.to_path_buf(),
        )?;
        GroupMember::start_with(setup, env, peers, inbox, |_| Ok(machine), None).await
    }
}

/// `config` with openraft's "leader restore" off, whatever it asked: a
/// leader restarted on its log must win a new term before it leads again.
///
/// A leader sends entries to its followers while it writes them itself;
/// killed in between, it restarts without entries they hold (a majority
/// of followers may even have committed them). Resuming the same term,
/// its next entries would take those entries' log ids with other content,
/// and Raft's log matching would take the two logs for one: replicas
/// that differ for good (the 600 s linearizability run's anomaly;
/// `tests/cluster/leader_restart.rs`). A new term makes the followers
/// truncate what the restarted leader no longer has.
fn without_leader_restore(config: Arc<Config>) -> Arc<Config> {
    if config.enable_leader_restore == Some(false) {
        return config;
    }
    Arc::new(Config {
        enable_leader_restore: Some(false),
        ..(*config).clone()
    })
}

impl<M: MemberMachine> GroupMember<M> {
    /// Open the log, make the state machine (`machine` may keep a reader
    /// of the log), start Raft on the calling executor and serve `inbox`.
    pub async fn start_with(
        setup: MemberSetup<'_>,
        env: Env,
        peers: &Rc<PeerPool>,
        inbox: GroupInbox,
        machine: impl FnOnce(&WalLogStore<ShardGroup>) -> Result<M, String>,
        shard_calls: Option<ShardCalls>,
    ) -> Result<(GroupMember<M>, OpenReport), String> {
        let (log, report) = WalLogStore::<ShardGroup>::open(env, setup.log_dir, setup.log)
            .await
            .map_err(|e| {
                format!(
                    "shard {}: cannot open the group log in {}: {e}",
                    setup.shard,
                    setup.log_dir.display()
                )
            })?;
        let machine = machine(&log)?;
        let raft = Raft::new(
            setup.node_id,
            without_leader_restore(setup.raft_config),
            peers.network(setup.shard as u64),
            log,
            machine.clone(),
        )
        .await
        .map_err(|e| format!("shard {}: cannot start Raft: {e}", setup.shard))?;
        let serving = glommio::spawn_local(serve_group_with(raft.clone(), inbox, shard_calls));
        Ok((
            GroupMember {
                raft,
                machine,
                _serving: serving,
            },
            report,
        ))
    }

    pub fn raft(&self) -> &GroupRaft<M> {
        &self.raft
    }

    pub fn machine(&self) -> &M {
        &self.machine
    }

    /// Log `turn` and wait until a majority has it and this member applied
    /// it; the entry's log index and what applying it did.
    pub async fn propose(&self, turn: TurnRecords) -> Result<(u64, TurnApplied), GroupError> {
        let response = self.raft.client_write(turn).await.map_err(write_error)?;
        Ok((response.log_id.index, response.data))
    }

    /// Wait until this member may answer a read linearizably: it leads the
    /// group, a quorum confirmed that after the read began (ReadIndex), and
    /// everything committed before it is applied here.
    pub async fn read_barrier(&self) -> Result<(), GroupError> {
        read_barrier(&self.raft).await
    }

    /// Stop Raft (its tasks end; the log stays as it is on disk).
    pub async fn shutdown(&self) -> Result<(), String> {
        self.raft.shutdown().await.map_err(|e| e.to_string())
    }
}

/// A ReadIndex barrier on `raft` (see [`GroupMember::read_barrier`]).
pub(super) async fn read_barrier<M: MemberMachine>(raft: &GroupRaft<M>) -> Result<(), GroupError> {
    {
        match raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                Err(GroupError::NotLeader {
                    leader: f.leader_id,
                })
            }
            Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(e))) => {
                Err(GroupError::NoQuorum(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => Err(GroupError::Stopped(e.to_string())),
        }
    }
}
