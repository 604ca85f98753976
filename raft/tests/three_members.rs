//! End-to-end: a 3-member openraft cluster on one glommio executor, with
//! an in-memory network. Elections, heartbeats, replication, commit and
//! apply all run on glommio tasks and timers, so a broken runtime (timers
//! that never fire, lost wake-ups, channels that drop messages) shows up
//! here as a timeout or a wrong state. Every scenario runs twice: with
//! in-memory logs, and with every member's log in the WAL log store (each
//! member its own temporary directory, real segment files, `every_write`).

#[path = "support/mem_network.rs"]
mod mem_network;
#[path = "support/mem_store.rs"]
mod mem_store;
#[path = "support/memlock.rs"]
mod memlock;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use corestate_raft::log_store::{WalLogOptions, WalLogStore};
use corestate_raft::GlommioRuntime;
use mem_network::{Member, Router};
use mem_store::{KvSnapshot, MemLogStore, MemStateMachine, Put, TestConfig};
use openraft::{AsyncRuntime, BasicNode, Config, ServerState};
use shards::env::Env;
use shards::wal::FsyncPolicy;

/// How long any one step may take before the test fails (elections take
/// 150–300 ms with the default timeouts; this is generous for a loaded CI).
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

const MEMBER_IDS: [u64; 3] = [1, 2, 3];

/// Segment size of each member's WAL log: small, so logs span segments.
const SEGMENT_SIZE_BYTES: u64 = 64 * 1024;

/// Where the members keep their Raft logs.
#[derive(Clone, Copy)]
enum Logs {
    Memory,
    Wal,
}

struct Cluster {
    /// Each member's WAL log directory, removed when the cluster is dropped.
    _dirs: Vec<tempfile::TempDir>,
    router: Router,
    members: BTreeMap<u64, (Member, MemStateMachine)>,
}

impl Cluster {
    async fn start(logs: Logs) -> Cluster {
        let config = Arc::new(
            Config {
                cluster_name: "three-members".to_string(),
                ..Config::default()
            }
            .validate()
            .expect("valid config"),
        );
        let router = Router::default();
        let mut members = BTreeMap::new();
        let mut dirs = Vec::new();
        for id in MEMBER_IDS {
            let state_machine = MemStateMachine::default();
            let raft = match logs {
                Logs::Memory => {
                    Member::new(
                        id,
                        config.clone(),
                        router.network_of(id),
                        MemLogStore::default(),
                        state_machine.clone(),
                    )
                    .await
                }
                Logs::Wal => {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let options = WalLogOptions {
                        shard: 0,
                        fsync: FsyncPolicy::EveryWrite,
                        segment_size_bytes: SEGMENT_SIZE_BYTES,
                        node_id: id,
                    };
                    let (log, _) = WalLogStore::<TestConfig>::open(Env::os(0), dir.path(), options)
                        .await
                        .expect("open the member's WAL log");
                    dirs.push(dir);
                    Member::new(
                        id,
                        config.clone(),
                        router.network_of(id),
                        log,
                        state_machine.clone(),
                    )
                    .await
                }
            }
            .expect("start member");
            router.add(id, raft.clone());
            members.insert(id, (raft, state_machine));
        }
        let voters: BTreeMap<u64, BasicNode> = MEMBER_IDS
            .iter()
            .map(|&id| (id, BasicNode::new(format!("member-{id}"))))
            .collect();
        members[&1]
            .0
            .initialize(voters)
            .await
            .expect("initialize the cluster");
        Cluster {
            _dirs: dirs,
            router,
            members,
        }
    }

    /// Writes `count` keys `{prefix}{n}` through `leader`, adds them to
    /// `expected` and returns the last log index.
    async fn put_many(
        &self,
        leader: u64,
        prefix: &str,
        count: usize,
        expected: &mut KvSnapshot,
    ) -> u64 {
        let mut last_index = 0;
        for n in 0..count {
            let (key, value) = (format!("{prefix}{n}"), format!("v{n}"));
            let (index, previous) = self.put(leader, &key, &value).await;
            assert!(index > last_index, "log indexes increase");
            assert_eq!(previous, None, "a new key had no value");
            last_index = index;
            expected.insert(key, value);
        }
        last_index
    }

    fn raft(&self, id: u64) -> &Member {
        &self.members[&id].0
    }

    fn state_machine(&self, id: u64) -> &MemStateMachine {
        &self.members[&id].1
    }

    /// Waits until every member in `ids` names the same leader, other than
    /// `not`, and returns it with its term.
    async fn agreed_leader(&self, ids: &[u64], not: Option<u64>) -> (u64, u64) {
        let first = self.raft(ids[0]);
        let metrics = first
            .wait(Some(STEP_TIMEOUT))
            .metrics(
                |m| m.current_leader.is_some() && m.current_leader != not,
                "a new leader",
            )
            .await
            .expect("a leader is elected");
        let leader = metrics.current_leader.expect("leader");
        for &id in ids {
            self.raft(id)
                .wait(Some(STEP_TIMEOUT))
                .current_leader(leader, "every member follows the leader")
                .await
                .expect("members agree on the leader");
        }
        // A new leader refuses writes (ForwardToLeader, LeaseExpired) until
        // a quorum has acknowledged it: wait for that before writing.
        let leader_metrics = self
            .raft(leader)
            .wait(Some(STEP_TIMEOUT))
            .leader_with_quorum_acked(None, "the leader holds a quorum lease")
            .await
            .expect("the leader's lease is acknowledged");
        assert_eq!(leader_metrics.state, ServerState::Leader);
        (leader, leader_metrics.current_term)
    }

    /// Writes `key=value` through `leader`; returns the log index and the
    /// previous value the state machine answered with.
    async fn put(&self, leader: u64, key: &str, value: &str) -> (u64, Option<String>) {
        let write = self.raft(leader).client_write(Put {
            key: key.to_string(),
            value: value.to_string(),
        });
        let answer = GlommioRuntime::timeout(STEP_TIMEOUT, write)
            .await
            .expect("the write commits in time")
            .expect("the leader accepts the write");
        (answer.log_id.index, answer.data)
    }

    /// Waits until each member in `ids` has applied up to `index`, then
    /// checks its state machine holds exactly `expected`.
    async fn all_applied(&self, ids: &[u64], index: u64, expected: &KvSnapshot) {
        for &id in ids {
            self.raft(id)
                .wait(Some(STEP_TIMEOUT))
                .applied_index_at_least(Some(index), "member applied the writes")
                .await
                .unwrap_or_else(|err| panic!("member {id} did not apply up to {index}: {err}"));
            assert_eq!(
                &self.state_machine(id).contents(),
                expected,
                "member {id} applied what was committed"
            );
        }
    }

    async fn shutdown(&self, ids: &[u64]) {
        for &id in ids {
            self.raft(id).shutdown().await.expect("member stops");
        }
    }
}

#[test]
fn three_members_elect_a_leader_replicate_writes_and_fail_over_in_memory() {
    three_members_elect_a_leader_replicate_writes_and_fail_over(Logs::Memory);
}

#[test]
fn three_members_elect_a_leader_replicate_writes_and_fail_over_on_the_wal() {
    three_members_elect_a_leader_replicate_writes_and_fail_over(Logs::Wal);
}

fn three_members_elect_a_leader_replicate_writes_and_fail_over(logs: Logs) {
    memlock::raise_memlock_limit();
    let mut rt = GlommioRuntime::new(1);
    rt.block_on(async {
        let executor_id = glommio::executor().id();
        let cluster = Cluster::start(logs).await;

        // A leader is elected and everyone follows it.
        let (leader, term) = cluster.agreed_leader(&MEMBER_IDS, None).await;

        // Client writes commit through the leader, in log order, and every
        // member applies exactly them.
        let mut expected = KvSnapshot::new();
        let last_index = cluster.put_many(leader, "k", 5, &mut expected).await;
        cluster
            .all_applied(&MEMBER_IDS, last_index, &expected)
            .await;

        // The leader dies: the two others elect a new one in a later term
        // and keep committing (2 of 3 is a majority).
        cluster.router.cut(leader);
        cluster.shutdown(&[leader]).await;
        let survivors: Vec<u64> = MEMBER_IDS.into_iter().filter(|&id| id != leader).collect();
        let (new_leader, new_term) = cluster.agreed_leader(&survivors, Some(leader)).await;
        assert_ne!(new_leader, leader);
        assert!(new_term > term, "a new leader is elected in a later term");

        let (index, previous) = cluster.put(new_leader, "k0", "after-failover").await;
        assert!(
            index > last_index,
            "the new leader appends after the old log"
        );
        assert_eq!(
            previous.as_deref(),
            Some("v0"),
            "nothing committed was lost"
        );
        expected.insert("k0".to_string(), "after-failover".to_string());
        cluster.all_applied(&survivors, index, &expected).await;

        // All of it ran on this one executor.
        assert_eq!(glommio::executor().id(), executor_id);
        cluster.shutdown(&survivors).await;
    });
}

#[test]
fn a_cut_off_member_catches_up_by_snapshot_once_the_log_is_purged_in_memory() {
    a_cut_off_member_catches_up_by_snapshot_once_the_log_is_purged(Logs::Memory);
}

#[test]
fn a_cut_off_member_catches_up_by_snapshot_once_the_log_is_purged_on_the_wal() {
    a_cut_off_member_catches_up_by_snapshot_once_the_log_is_purged(Logs::Wal);
}

fn a_cut_off_member_catches_up_by_snapshot_once_the_log_is_purged(logs: Logs) {
    memlock::raise_memlock_limit();
    let mut rt = GlommioRuntime::new(1);
    rt.block_on(async {
        let cluster = Cluster::start(logs).await;
        let (leader, _term) = cluster.agreed_leader(&MEMBER_IDS, None).await;
        let lagging = MEMBER_IDS
            .into_iter()
            .find(|&id| id != leader)
            .expect("a follower");

        // The cluster commits without the lagging member (2 of 3)...
        cluster.router.cut(lagging);
        let mut expected = KvSnapshot::new();
        let last_index = cluster.put_many(leader, "k", 5, &mut expected).await;

        // ...snapshots, and drops the log the lagging member would need —
        // on every member that has it: the lagging member's elections while
        // cut off may hand leadership to the other one once it is back.
        for id in MEMBER_IDS.into_iter().filter(|&id| id != lagging) {
            let raft = cluster.raft(id);
            raft.wait(Some(STEP_TIMEOUT))
                .applied_index_at_least(Some(last_index), "the writes are applied")
                .await
                .expect("writes applied");
            raft.trigger().snapshot().await.expect("snapshot");
            raft.wait(Some(STEP_TIMEOUT))
                .metrics(
                    |m| m.snapshot.is_some_and(|s| s.index >= last_index),
                    "the snapshot covers the writes",
                )
                .await
                .expect("snapshot built");
            raft.trigger().purge_log(last_index).await.expect("purge");
            raft.wait(Some(STEP_TIMEOUT))
                .metrics(
                    |m| m.purged.is_some_and(|p| p.index >= last_index),
                    "the log is purged",
                )
                .await
                .expect("log purged");
        }

        // Back on the network, the member can only catch up by snapshot.
        cluster.router.heal(lagging);
        let metrics = cluster
            .raft(lagging)
            .wait(Some(STEP_TIMEOUT))
            .applied_index_at_least(Some(last_index), "the lagging member caught up")
            .await
            .expect("the lagging member catches up");
        assert!(
            metrics.snapshot.is_some_and(|s| s.index >= last_index),
            "it installed the leader's snapshot: {metrics:?}"
        );
        assert_eq!(cluster.state_machine(lagging).contents(), expected);

        // And it takes part in later commits as usual. (Cut off, it may
        // have stood for election in higher terms; back, it can depose the
        // leader: ask who leads now.)
        let (leader, _) = cluster.agreed_leader(&MEMBER_IDS, None).await;
        let (index, _) = cluster.put(leader, "after-snapshot", "x").await;
        expected.insert("after-snapshot".to_string(), "x".to_string());
        cluster.all_applied(&MEMBER_IDS, index, &expected).await;
        cluster.shutdown(&MEMBER_IDS).await;
    });
}

#[test]
fn leadership_moves_to_the_member_it_is_transferred_to_in_memory() {
    leadership_moves_to_the_member_it_is_transferred_to(Logs::Memory);
}

#[test]
fn leadership_moves_to_the_member_it_is_transferred_to_on_the_wal() {
    leadership_moves_to_the_member_it_is_transferred_to(Logs::Wal);
}

fn leadership_moves_to_the_member_it_is_transferred_to(logs: Logs) {
    memlock::raise_memlock_limit();
    let mut rt = GlommioRuntime::new(1);
    rt.block_on(async {
        let cluster = Cluster::start(logs).await;
        let (leader, term) = cluster.agreed_leader(&MEMBER_IDS, None).await;
        let mut expected = KvSnapshot::new();
        cluster.put_many(leader, "k", 3, &mut expected).await;

        // Rebalancing a shard's leader (issue 14, item 1) is this call.
        let target = MEMBER_IDS
            .into_iter()
            .find(|&id| id != leader)
            .expect("a follower");
        cluster
            .raft(leader)
            .trigger()
            .transfer_leader(target)
            .await
            .expect("transfer leadership");
        let (new_leader, new_term) = cluster.agreed_leader(&MEMBER_IDS, Some(leader)).await;
        assert_eq!(new_leader, target);
        assert!(new_term > term);

        let (index, previous) = cluster.put(new_leader, "k1", "moved").await;
        assert_eq!(previous.as_deref(), Some("v1"));
        expected.insert("k1".to_string(), "moved".to_string());
        cluster.all_applied(&MEMBER_IDS, index, &expected).await;
        cluster.shutdown(&MEMBER_IDS).await;
    });
}
