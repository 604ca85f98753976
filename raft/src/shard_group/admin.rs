//! Running a shard's group: its status (what REPLICATION_STATUS and the
//! metrics report), membership changes (a node added as a learner, caught
//! up by snapshot and log, then made a voter; a node removed — openraft
//! changes membership through a joint configuration), and handing
//! leadership to another member before this one stops (graceful shutdown).

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::rt::watch::WatchReceiver;
use openraft::{BasicNode, ChangeMembers, ServerState};
use shards::shard::group_link::MemberChange;

use super::member::{write_error, GroupError, GroupMember, GroupRaft, MemberMachine};

/// Longest a hand-over waits for another member to take the lead.
pub const LEADERSHIP_HANDOVER_TIMEOUT_MS: u64 = 2_000;
/// How often a hand-over looks whether it happened.
const HANDOVER_POLL_MS: u64 = 10;
/// How long an added node may take to catch up (snapshot and log) before
/// the change is given up, unless the request says: a large shard's
/// snapshot over a slow link takes minutes.
pub const MEMBER_CATCH_UP_TIMEOUT_MS_DEFAULT: u64 = 300_000;
/// How long COMPACT waits for a member's snapshot to be built.
pub const SNAPSHOT_NOW_TIMEOUT_MS: u64 = 120_000;
/// How often an add looks whether the new node caught up (and COMPACT
/// whether the snapshot is built).
const CATCH_UP_POLL_MS: u64 = 20;
/// The longest catch-up a request may allow.
pub const MEMBER_CATCH_UP_TIMEOUT_MS_MAX: u64 = 3_600_000;

/// A member's role in its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupRole {
    Leader,
    Follower,
    Candidate,
    Learner,
    Stopped,
}

/// How far a follower is behind, as its leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplicaLag {
    pub node: u64,
    /// The last log index the leader knows it has.
    pub matched_index: Option<u64>,
    /// Entries it lacks of the leader's log.
    pub lag_entries: u64,
}

/// A member's view of its group.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupStatus {
    pub role: GroupRole,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// The last index this member's newest snapshot covers.
    pub snapshot_index: Option<u64>,
    /// The last index purged from this member's log (behind a snapshot).
    pub purged_index: Option<u64>,
    pub voters: BTreeSet<u64>,
    /// Filled on the leader only: each other member's progress.
    pub replicas: Vec<ReplicaLag>,
}

impl<M: MemberMachine> GroupMember<M> {
    /// What this member knows of its group now.
    pub fn status(&self) -> GroupStatus {
        status_of(self.raft())
    }

    /// Add node `id` (its peer listener at `addr`): first as a learner,
    /// returning once it has caught up, then as a voter. Run on the leader.
    pub async fn add_member(&self, id: u64, addr: &str) -> Result<(), GroupError> {
        let add = MemberChange::Add {
            node: id,
            peer: addr.to_string(),
            catch_up_timeout_ms: MEMBER_CATCH_UP_TIMEOUT_MS_DEFAULT,
        };
        change_members(self.raft(), add).await.map(drop)
    }

    /// Remove node `id` from the group's voters (and from the group). Run
    /// on the leader; a leader that removes itself steps down once the
    /// change is committed.
    pub async fn remove_member(&self, id: u64) -> Result<(), GroupError> {
        change_members(self.raft(), MemberChange::Remove { node: id })
            .await
            .map(drop)
    }

    /// If this member leads, hand the lead to the follower with the most
    /// of the log and wait until another member leads; the new leader, or
    /// `None` when this member did not lead.
    pub async fn hand_over_leadership(&self) -> Result<Option<u64>, GroupError> {
        hand_over(self.raft()).await
    }
}

/// Run `change` on the leader's `Raft` handle (adding: as a learner until
/// caught up, then a voter; removing: out of the group, not kept as a
/// learner); the group's voters after it.
pub(super) async fn change_members<M: MemberMachine>(
    raft: &GroupRaft<M>,
    change: MemberChange,
) -> Result<Vec<u64>, GroupError> {
    match change {
        MemberChange::Add {
            node,
            peer,
            catch_up_timeout_ms,
        } => {
            // Not openraft's blocking add: it returns after a short wait
            // whether or not the learner caught up.
            let added = raft
                .add_learner(node, BasicNode::new(peer), false)
                .await
                .map_err(write_error)?;
            let waited = Duration::from_millis(catch_up_timeout_ms);
            if !caught_up(raft, node, added.log_id.index, waited).await? {
                // Unreachable, or too slow: leave the group as it was.
                let out = ChangeMembers::RemoveNodes(BTreeSet::from([node]));
                let undone = raft.change_membership(out, false).await;
                return Err(GroupError::Refused(format!(
                    "node {node} did not catch up within {catch_up_timeout_ms} ms ({})",
                    match undone {
                        Ok(_) => "taken out of the group again".to_string(),
                        Err(e) => format!("it stays a learner: {e}"),
                    }
                )));
            }
            raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node])), false)
                .await
                .map_err(write_error)?;
        }
        MemberChange::Remove { node } => {
            raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([node])), false)
                .await
                .map_err(write_error)?;
        }
    }
    Ok(status_of(raft).voters.into_iter().collect())
}

/// Wait until `node`'s log matches this leader's up to `index`: `Ok(true)`
/// then, `Ok(false)` after `waited`; an error when this member stops
/// leading meanwhile.
async fn caught_up<M: MemberMachine>(
    raft: &GroupRaft<M>,
    node: u64,
    index: u64,
    waited: Duration,
) -> Result<bool, GroupError> {
    let started = std::time::Instant::now();
    loop {
        let status = status_of(raft);
        if status.role != GroupRole::Leader {
            return Err(GroupError::NotLeader {
                leader: status.leader,
            });
        }
        let matched = status
            .replicas
            .iter()
            .find(|r| r.node == node)
            .and_then(|r| r.matched_index);
        if matched.is_some_and(|m| m >= index) {
            return Ok(true);
        }
        if started.elapsed() >= waited {
            return Ok(false);
        }
        glommio::timer::sleep(Duration::from_millis(CATCH_UP_POLL_MS)).await;
    }
}

/// Build a snapshot now and wait until it covers what was applied at the
/// call (`Ok(false)`: one did already).
pub(super) async fn snapshot_now<M: MemberMachine>(
    raft: &GroupRaft<M>,
) -> Result<bool, GroupError> {
    let (applied, covered) = {
        let m = raft.metrics().borrow_watched().clone();
        (m.last_applied.map(|l| l.index), m.snapshot.map(|l| l.index))
    };
    if applied.is_none() || covered >= applied {
        return Ok(false);
    }
    raft.trigger()
        .snapshot()
        .await
        .map_err(|e| GroupError::Stopped(e.to_string()))?;
    let started = std::time::Instant::now();
    loop {
        let covered = raft.metrics().borrow_watched().snapshot.map(|l| l.index);
        if covered >= applied {
            return Ok(true);
        }
        if started.elapsed() >= Duration::from_millis(SNAPSHOT_NOW_TIMEOUT_MS) {
            return Err(GroupError::Stopped(format!(
                "the snapshot was not built within {SNAPSHOT_NOW_TIMEOUT_MS} ms"
            )));
        }
        glommio::timer::sleep(Duration::from_millis(CATCH_UP_POLL_MS)).await;
    }
}

/// [`GroupMember::hand_over_leadership`] on a member's `Raft` handle.
pub(super) async fn hand_over<M: MemberMachine>(
    raft: &GroupRaft<M>,
) -> Result<Option<u64>, GroupError> {
    let status = status_of(raft);
    if status.role != GroupRole::Leader {
        return Ok(None);
    }
    let me = raft.metrics().borrow_watched().id;
    let best = status
        .replicas
        .iter()
        .filter(|r| status.voters.contains(&r.node))
        .max_by_key(|r| r.matched_index)
        .map(|r| r.node)
        .ok_or_else(|| GroupError::NoQuorum("no other voter to hand over to".into()))?;
    raft.trigger()
        .transfer_leader(best)
        .await
        .map_err(|e| GroupError::Stopped(e.to_string()))?;
    let waited = Duration::from_millis(LEADERSHIP_HANDOVER_TIMEOUT_MS);
    let started = std::time::Instant::now();
    loop {
        let m = raft.metrics().borrow_watched().clone();
        if let Some(leader) = m.current_leader.filter(|&l| l != me) {
            return Ok(Some(leader));
        }
        if started.elapsed() >= waited {
            return Err(GroupError::NoQuorum(format!(
                "no other member took the lead within {LEADERSHIP_HANDOVER_TIMEOUT_MS} ms"
            )));
        }
        glommio::timer::sleep(Duration::from_millis(HANDOVER_POLL_MS)).await;
    }
}

/// What a member (its `Raft` handle) knows of its group now.
pub(super) fn status_of<M: MemberMachine>(raft: &GroupRaft<M>) -> GroupStatus {
    let m = raft.metrics().borrow_watched().clone();
    let role = match m.state {
        ServerState::Leader => GroupRole::Leader,
        ServerState::Follower => GroupRole::Follower,
        ServerState::Candidate => GroupRole::Candidate,
        ServerState::Learner => GroupRole::Learner,
        ServerState::Shutdown => GroupRole::Stopped,
    };
    let last = m.last_log_index;
    let replicas = m
        .replication
        .iter()
        .flat_map(|r| r.iter())
        .filter(|(node, _)| **node != m.id)
        .map(|(node, matched)| {
            let matched_index = matched.map(|l| l.index);
            ReplicaLag {
                node: *node,
                matched_index,
                lag_entries: last.unwrap_or(0).saturating_sub(matched_index.unwrap_or(0)),
            }
        })
        .collect();
    GroupStatus {
        role,
        leader: m.current_leader,
        term: m.current_term,
        last_log_index: last,
        commit_index: m.cluster_committed.map(|l| l.index),
        applied_index: m.last_applied.map(|l| l.index),
        snapshot_index: m.snapshot.map(|l| l.index),
        purged_index: m.purged.map(|l| l.index),
        voters: m.membership_config.membership().voter_ids().collect(),
        replicas,
    }
}
