//! [`MemberLink`]: the group's side of the seam a member shard loop calls
//! (`shards::shard::group_link::GroupLink`), over a [`GroupMember`] whose
//! state machine is a [`LoopMachine`]; and [`start_loop_member`], which
//! sets one up.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use openraft::rt::watch::WatchReceiver;
use openraft::{AsyncRuntime, ServerState};
use shards::env::Env;
use shards::shard::group_link::{
    Committed, Deliveries, GroupLink, Leadership, LinkError, LinkFuture, LoggedTurn, MemberChange,
};
use shards::shard::ShardMsg;
use shards::wal::files::LogFiles;
use shards::wal::record::{
    ENTRY_HEAD_RESERVE_BYTES, RECORD_HEADER_BYTES, RECORD_PAYLOAD_MAX_BYTES,
    SHARD_RECORD_PAYLOAD_MAX_BYTES,
};
use shards::wal::WalStats;

use super::forward_batch::ForwardQueue;
use super::member::{GroupError, GroupMember, GroupRaft, MemberSetup};
use super::{LoopMachine, TurnRecords};
use crate::log_store::codec::NORMAL_ENTRY_HEAD_BYTES;
use crate::log_store::OpenReport;
use crate::net::{GroupInbox, PeerPool};
use crate::GlommioRuntime;

/// Deliveries queued from a member's state machine to its shard loop, at
/// most; applying waits while the queue is full (`loop_machine.rs`).
pub const DELIVERIES_QUEUED_MAX: usize = 64 * 1024;

/// How long a turn's entry may take to commit before its clients are told
/// the outcome is unknown (a leader cut off from its quorum): the loop
/// rebuilds from the committed log and goes on; the entry is applied if it
/// commits later. Within the failover goal (≤ 2 s) so that a client's retry
/// meets the new leader.
pub const TURN_COMMIT_TIMEOUT_MS: u64 = 2_000;
/// How long a read's ReadIndex round may take.
pub const READ_BARRIER_TIMEOUT_MS: u64 = 2_000;
/// How long a new leader may take to commit and apply the whole log it
/// holds before its first turn.
pub const LEADER_CATCH_UP_TIMEOUT_MS: u64 = 2_000;

/// The most bytes of records one turn's entry holds: the log store keeps an
/// encoded entry (its log id, its kind and the records) in one WAL record.
pub const ENTRY_RECORDS_BYTES_MAX: usize = RECORD_PAYLOAD_MAX_BYTES - NORMAL_ENTRY_HEAD_BYTES;

// A shard record of the largest size a shard writes (what a standalone
// shard takes), with its header, fits an entry alone: a cluster refuses no
// single write for its size that a standalone shard takes.
const _: () = assert!(NORMAL_ENTRY_HEAD_BYTES <= ENTRY_HEAD_RESERVE_BYTES);
const _: () =
    assert!(SHARD_RECORD_PAYLOAD_MAX_BYTES + RECORD_HEADER_BYTES <= ENTRY_RECORDS_BYTES_MAX);

/// What a shard loop calls on its group.
pub struct MemberLink {
    node_id: u64,
    shard: usize,
    raft: GroupRaft<LoopMachine>,
    machine: LoopMachine,
    /// Operations for the leader, batched per turn (`forward_batch.rs`).
    forwards: ForwardQueue,
    /// The group's term when this member started: every election since
    /// raised it by one.
    term_at_start: u64,
}

fn link_error(e: GroupError) -> LinkError {
    match e {
        GroupError::NotLeader { leader } => LinkError::NotLeader { leader },
        GroupError::OutcomeUnknown { leader } => LinkError::OutcomeUnknown { leader },
        GroupError::NoQuorum(why) => LinkError::NoQuorum(why),
        GroupError::Refused(why) | GroupError::Stopped(why) => LinkError::Failed(why),
    }
}

impl MemberLink {
    /// The leader this member knows of, if another.
    fn leader_hint(&self) -> Option<u64> {
        self.raft
            .metrics()
            .borrow_watched()
            .current_leader
            .filter(|&l| l != self.node_id)
    }
}

impl GroupLink for MemberLink {
    fn leadership(&self) -> Leadership {
        // Asked every turn: read the metrics in place (a clone copies the
        // membership and replication maps).
        let led_term = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow_watched();
            let leads = m.state == ServerState::Leader && m.current_leader == Some(self.node_id);
            leads.then_some(m.current_term)
        };
        match led_term {
            Some(term) => Leadership::Leader { term },
            None => Leadership::Follower {
                leader: self.leader_hint(),
            },
        }
    }

    fn propose(&self, records: Vec<u8>) -> LinkFuture<Result<u64, LinkError>> {
        let raft = self.raft.clone();
        let leader = self.leader_hint();
        Box::pin(async move {
            let limit = Duration::from_millis(TURN_COMMIT_TIMEOUT_MS);
            match GlommioRuntime::timeout(limit, raft.client_write(TurnRecords(records))).await {
                Ok(written) => written
                    .map(|r| r.log_id.index)
                    .map_err(|e| link_error(super::member::write_error(e))),
                Err(_) => Err(LinkError::OutcomeUnknown { leader }),
            }
        })
    }

    fn entry_records_bytes_max(&self) -> usize {
        ENTRY_RECORDS_BYTES_MAX
    }

    fn barrier(&self) -> LinkFuture<Result<(), LinkError>> {
        let raft = self.raft.clone();
        Box::pin(async move {
            let limit = Duration::from_millis(READ_BARRIER_TIMEOUT_MS);
            match GlommioRuntime::timeout(limit, super::member::read_barrier(&raft)).await {
                Ok(done) => done.map_err(link_error),
                Err(_) => Err(LinkError::NoQuorum(format!(
                    "no ReadIndex round completed within {READ_BARRIER_TIMEOUT_MS} ms"
                ))),
            }
        })
    }

    fn catch_up(&self) -> LinkFuture<Result<(), LinkError>> {
        let raft = self.raft.clone();
        Box::pin(async move {
            let last = raft.metrics().borrow_watched().last_log_index;
            let limit = Duration::from_millis(LEADER_CATCH_UP_TIMEOUT_MS);
            // openraft counts an entry applied once `apply` returned, which
            // is after its delivery was queued.
            raft.wait(Some(limit))
                .applied_index_at_least(last, "the leader's log is applied")
                .await
                .map(|_| ())
                .map_err(|e| {
                    LinkError::NoQuorum(format!(
                        "the leader's log (to index {last:?}) was not committed and applied \
                         within {LEADER_CATCH_UP_TIMEOUT_MS} ms: {e}"
                    ))
                })
        })
    }

    fn committed(&self) -> LinkFuture<Result<Committed, String>> {
        let machine = self.machine.clone();
        Box::pin(async move { machine.committed().await })
    }

    fn entries(&self, from: u64, to: u64) -> LinkFuture<Result<Vec<LoggedTurn>, String>> {
        let machine = self.machine.clone();
        Box::pin(async move { machine.entries(from, to).await })
    }

    fn purged_index(&self) -> Option<u64> {
        self.raft.metrics().borrow_watched().purged.map(|l| l.index)
    }

    fn snapshot_now(&self) -> LinkFuture<Result<bool, String>> {
        let raft = self.raft.clone();
        Box::pin(async move {
            super::admin::snapshot_now(&raft)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn hand_over(&self) -> LinkFuture<Result<Option<u64>, String>> {
        let raft = self.raft.clone();
        Box::pin(async move {
            super::admin::hand_over(&raft)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn change_members(&self, change: MemberChange) -> LinkFuture<Result<Vec<u64>, LinkError>> {
        let raft = self.raft.clone();
        Box::pin(async move {
            super::admin::change_members(&raft, change)
                .await
                .map_err(|e| match e {
                    // A change the group cannot make (a learner unknown, the
                    // last voter removed): the asker's mistake.
                    GroupError::Refused(why) => LinkError::Rejected(why),
                    other => link_error(other),
                })
        })
    }

    fn status(&self) -> serde_json::Value {
        let mut status = serde_json::to_value(super::admin::status_of(&self.raft))
            .expect("a group status serializes");
        if let Some(obj) = status.as_object_mut() {
            obj.insert("shard".into(), self.shard.into());
            obj.insert("node".into(), self.node_id.into());
            let (ops, batches) = self.forwards.counts();
            obj.insert("forwarded_ops".into(), ops.into());
            obj.insert("forwarded_batches".into(), batches.into());
            let term = obj.get("term").and_then(|t| t.as_u64()).unwrap_or(0);
            let elections = term.saturating_sub(self.term_at_start);
            obj.insert("elections_seen".into(), elections.into());
        }
        status
    }

    fn log_files(&self) -> std::io::Result<(WalStats, LogFiles)> {
        let log = self.machine.log();
        Ok((log.wal_stats(), log.files()?))
    }

    fn forward(&self, leader: u64, msg: ShardMsg) -> Result<(), Box<ShardMsg>> {
        // The membership's address; a configured one wins in the pool.
        let addr = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        self.forwards.forward(leader, &addr, msg)
    }
}

/// Start a member whose shard loop keeps the state: the member, the link
/// its loop calls, and the deliveries its loop reads
/// (`Shard::open_member`). Operations other members forward to this one
/// go into `shard_mailbox` (its shard's).
///
/// Starting, openraft installs the newest snapshot and applies every
/// committed entry after it before it returns, while no loop runs yet:
/// those deliveries are collected here as they come (as many as the log
/// holds after its snapshot — a bounded queue would stop the start once
/// full) and handed over as `Deliveries::early`.
pub async fn start_loop_member(
    setup: MemberSetup<'_>,
    env: Env,
    peers: &Rc<PeerPool>,
    inbox: GroupInbox,
    shard_mailbox: flume::Sender<ShardMsg>,
) -> Result<
    (
        GroupMember<LoopMachine>,
        Rc<MemberLink>,
        Deliveries,
        OpenReport,
    ),
    String,
> {
    let (deliver, queue) = flume::bounded(DELIVERIES_QUEUED_MAX);
    let early = Rc::new(RefCell::new(Vec::new()));
    let collector = {
        let (queue, early) = (queue.clone(), early.clone());
        glommio::spawn_local(async move {
            while let Ok(d) = queue.recv_async().await {
                early.borrow_mut().push(d);
            }
        })
    };
    let (shard, allow, dir) = (
        setup.shard,
        setup.allow_instance_recreate,
        setup.snapshot_dir.to_path_buf(),
    );
    let node_id = setup.node_id;
    let storage = env.storage.clone();
    let calls = super::forward_serve::serve_forwarded(shard_mailbox);
    let started = GroupMember::start_with(
        setup,
        env,
        peers,
        inbox,
        |log| LoopMachine::open(shard, allow, storage, dir, log, deliver),
        Some(calls),
    )
    .await;
    // The collector runs only when this task yields: let it take what the
    // start queued, so that the state the loop opens with (and the
    // server's start-up report) is the recovered one. Cancelled between
    // receives: nothing taken from the queue is lost, and what comes later
    // stays in it, after the early ones.
    while !queue.is_empty() {
        yield_once().await;
    }
    collector.cancel().await;
    let early = std::mem::take(&mut *early.borrow_mut());
    let (member, report) = started?;
    let link = Rc::new(MemberLink {
        node_id,
        shard,
        raft: member.raft().clone(),
        machine: member.machine().clone(),
        forwards: ForwardQueue::new(peers.clone(), shard),
        term_at_start: member.raft().metrics().borrow_watched().current_term,
    });
    Ok((member, link, Deliveries { early, queue }, report))
}

/// Let the executor's other ready tasks run once.
pub(super) async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}
