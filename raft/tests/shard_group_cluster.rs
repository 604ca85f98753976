//! A shard's Raft group end to end, as the server will run it: three
//! members, each on its own thread and executor, each keeping its log in
//! its own directory on the WAL (`every_write`), its state a
//! `ShardMachine`, talking over the peer transport on real TCP. The leader
//! proposes turns of real WAL records; every member replays them into the
//! same instances. Followers refuse proposals and reads with the leader's
//! id; a stopped leader is replaced; a member restarted on its directory
//! recovers its log and catches up.

#[path = "support/group_node.rs"]
mod group_node;
#[path = "support/member_thread.rs"]
mod member_thread;
#[path = "support/memlock.rs"]
mod memlock;
#[path = "support/turns.rs"]
mod turns;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use corestate_raft::shard_group::{GroupError, GroupRole};
use group_node::{wait_until, GroupNode, Instances};
use openraft::{BasicNode, Config, ServerState, SnapshotPolicy};
use turns::Turn;

const MEMBER_IDS: [u64; 3] = [1, 2, 3];

struct Cluster {
    nodes: BTreeMap<u64, GroupNode>,
    config: Arc<Config>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    fn start() -> Cluster {
        Cluster::start_with(Config {
            cluster_name: group_node::CLUSTER_NAME.to_string(),
            ..Config::default()
        })
    }

    fn start_with(config: Config) -> Cluster {
        let config = Arc::new(config.validate().expect("valid config"));
        let mut dirs = Vec::new();
        let mut nodes = BTreeMap::new();
        let mut books = BTreeMap::new();
        for id in MEMBER_IDS {
            let dir = tempfile::tempdir().expect("temp dir");
            let (book, peers) = flume::bounded(1);
            let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
            let node = GroupNode::start(
                id,
                dir.path().to_path_buf(),
                any_port,
                config.clone(),
                peers,
            );
            nodes.insert(id, node);
            books.insert(id, book);
            dirs.push(dir);
        }
        let cluster = Cluster {
            nodes,
            config,
            _dirs: dirs,
        };
        for (id, book) in books {
            book.send(cluster.peers_of(id)).expect("node waits");
        }
        let voters = cluster
            .nodes
            .values()
            .map(|n| (n.id, BasicNode::new(n.addr.to_string())))
            .collect();
        cluster.nodes[&1].initialize(voters);
        cluster
    }

    fn peers_of(&self, id: u64) -> BTreeMap<u64, SocketAddr> {
        self.nodes
            .values()
            .filter(|n| n.id != id)
            .map(|n| (n.id, n.addr))
            .collect()
    }

    /// The leader every running member agrees on.
    fn leader(&self) -> u64 {
        let mut leader = None;
        wait_until("an agreed leader", || {
            let statuses: Vec<_> = self.nodes.values().map(|n| (n.id, n.status())).collect();
            let Some(&(id, _)) = statuses
                .iter()
                .find(|(_, s)| s.state == ServerState::Leader)
            else {
                return false;
            };
            leader = Some(id);
            statuses.iter().all(|(_, s)| s.leader == Some(id))
        });
        leader.expect("a leader")
    }

    /// Every running member has applied `index`; their instances.
    fn converged(&self, index: u64) -> Instances {
        wait_until("every member applied the last entry", || {
            self.nodes
                .values()
                .all(|n| n.status().last_applied >= Some(index))
        });
        let mut states = self.nodes.values().map(|n| (n.id, n.instances()));
        let (first_id, first) = states.next().expect("members");
        for (id, other) in states {
            assert_eq!(other, first, "member {id} differs from member {first_id}");
        }
        first
    }

    /// Start node `id`, not yet a member of the group (it learns its
    /// membership when the leader adds it).
    fn start_node(&mut self, id: u64) -> SocketAddr {
        let dir = tempfile::tempdir().expect("temp dir");
        let (book, peers) = flume::bounded(1);
        let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let node = GroupNode::start(
            id,
            dir.path().to_path_buf(),
            any_port,
            self.config.clone(),
            peers,
        );
        let addr = node.addr;
        book.send(self.peers_of(id)).expect("node waits");
        self.nodes.insert(id, node);
        self._dirs.push(dir);
        addr
    }

    /// Stop member `id` and start it again on its directory and address.
    fn restart(&mut self, id: u64) {
        let mut node = self.nodes.remove(&id).expect("member");
        node.stop();
        let (dir, addr) = (node.dir.clone(), node.addr);
        drop(node);
        let (book, peers) = flume::bounded(1);
        let node = GroupNode::start(id, dir, addr, self.config.clone(), peers);
        assert_eq!(node.addr, addr, "the member listens where it did");
        book.send(self.peers_of(id)).expect("node waits");
        self.nodes.insert(id, node);
    }
}

fn instance(state: &str) -> (String, String) {
    (state.to_string(), r#"{"amount":10}"#.to_string())
}

#[test]
fn a_shard_group_replicates_turns_of_records_and_survives_a_leader_loss_and_a_restart() {
    let mut cluster = Cluster::start();
    let leader = cluster.leader();
    let follower = MEMBER_IDS.into_iter().find(|&id| id != leader).unwrap();

    // Turns of real WAL records through the leader; every member replays them.
    let mut turn = Turn::new(1_000);
    let mut index = cluster.nodes[&leader]
        .propose_as_leader(turn.put_machine().create("o-1").create("o-2").take())
        .expect("the leader logs a turn");
    index = index.max(
        cluster.nodes[&leader]
            .propose_as_leader(turn.pay("o-1").take())
            .expect("second turn"),
    );
    let got = cluster.converged(index);
    assert_eq!(got["o-1"], instance("paid"));
    assert_eq!(got["o-2"], instance("created"));

    // A follower neither logs nor reads; it names the leader.
    assert_eq!(
        cluster.nodes[&follower].propose(turn.create("o-x").take()),
        Err(GroupError::NotLeader {
            leader: Some(leader)
        })
    );
    assert_eq!(
        cluster.nodes[&follower].read_barrier(),
        Err(GroupError::NotLeader {
            leader: Some(leader)
        })
    );
    cluster.nodes[&leader]
        .read_barrier()
        .expect("the leader reads after a quorum round");

    // The leader goes away: the others elect one and keep logging.
    let mut old = cluster.nodes.remove(&leader).unwrap();
    old.stop();
    let new_leader = cluster.leader();
    assert_ne!(new_leader, leader);
    let mut turn = Turn::new(2_000);
    let index = cluster.nodes[&new_leader]
        .propose_as_leader(turn.create("o-3").pay("o-2").take())
        .expect("the new leader logs");
    let got = cluster.converged(index);
    assert_eq!(got["o-2"], instance("paid"));
    assert_eq!(got["o-3"], instance("created"));

    // The old leader comes back on its directory: it recovers its log from
    // the WAL, learns what it missed and ends up with the same instances.
    cluster.nodes.insert(leader, old);
    cluster.restart(leader);
    let got = cluster.converged(index);
    assert_eq!(got.len(), 3);
    assert_eq!(cluster.nodes[&leader].status().leader, Some(new_leader));
}

#[test]
fn every_member_restarted_at_once_comes_back_with_every_committed_turn() {
    let mut cluster = Cluster::start();
    let leader = cluster.leader();
    let mut turn = Turn::new(1);
    let mut index = cluster.nodes[&leader]
        .propose_as_leader(turn.put_machine().take())
        .expect("put");
    for n in 0..20 {
        index = cluster.nodes[&leader]
            .propose_as_leader(turn.create(&format!("i-{n}")).take())
            .expect("create");
    }
    let before = cluster.converged(index);
    for id in MEMBER_IDS {
        cluster.restart(id);
    }
    let leader = cluster.leader();
    // A new leader commits an entry of its term, then everything committed
    // before the restart is applied again from the logs.
    let index = cluster.nodes[&leader]
        .propose_as_leader(Turn::new(10_000).pay("i-0").take())
        .expect("a write after the restart");
    let after = cluster.converged(index);
    assert_eq!(after.len(), before.len());
    assert_eq!(after["i-0"], instance("paid"));
    for (id, state) in &before {
        if id != "i-0" {
            assert_eq!(&after[id], state, "{id}");
        }
    }
}

#[test]
fn members_restarted_after_their_logs_were_purged_come_back_from_their_snapshots() {
    let mut cluster = Cluster::start_with(Config {
        cluster_name: group_node::CLUSTER_NAME.to_string(),
        // Snapshot every 10 entries and purge everything a snapshot covers.
        snapshot_policy: SnapshotPolicy::LogsSinceLast(10),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Config::default()
    });
    let leader = cluster.leader();
    let mut turn = Turn::new(1);
    let mut index = cluster.nodes[&leader]
        .propose_as_leader(turn.put_machine().take())
        .expect("put");
    for n in 0..40 {
        index = cluster.nodes[&leader]
            .propose_as_leader(turn.create(&format!("p-{n}")).take())
            .expect("create");
    }
    let before = cluster.converged(index);
    assert_eq!(before.len(), 40);
    wait_until("every member purged most of its log", || {
        cluster
            .nodes
            .values()
            .all(|n| n.status().purged.is_some_and(|p| p >= 30))
    });
    for id in MEMBER_IDS {
        cluster.restart(id);
    }
    let leader = cluster.leader();
    let index = cluster.nodes[&leader]
        .propose_as_leader(Turn::new(10_000).pay("p-0").take())
        .expect("a write after the restart");
    let after = cluster.converged(index);
    assert_eq!(after.len(), 40, "every instance is back");
    assert_eq!(after["p-0"], instance("paid"));
    assert_eq!(after["p-39"], instance("created"));
}

#[test]
fn a_node_joins_as_a_learner_becomes_a_voter_and_another_is_removed() {
    let mut cluster = Cluster::start();
    let leader = cluster.leader();
    let mut turn = Turn::new(1);
    cluster.nodes[&leader]
        .propose_as_leader(turn.put_machine().create("m-1").take())
        .expect("first turn");

    // Node 4 joins: learner (caught up from the log), then voter.
    let addr = cluster.start_node(4);
    cluster.nodes[&leader]
        .add_member(4, addr)
        .expect("node 4 is added");
    let status = cluster.nodes[&leader].group_status();
    assert_eq!(status.voters, [1, 2, 3, 4].into_iter().collect());
    let index = cluster.nodes[&leader]
        .propose_as_leader(turn.pay("m-1").take())
        .expect("a turn with four voters");
    let got = cluster.converged(index);
    assert_eq!(got["m-1"], instance("paid"), "node 4 has everything");
    assert_eq!(cluster.nodes[&4].group_status().role, GroupRole::Follower);

    // A voter that is not the leader is removed; the others go on.
    let removed = MEMBER_IDS.into_iter().find(|&id| id != leader).unwrap();
    cluster.nodes[&leader]
        .remove_member(removed)
        .expect("removal");
    let mut gone = cluster.nodes.remove(&removed).unwrap();
    gone.stop();
    let status = cluster.nodes[&leader].group_status();
    assert!(!status.voters.contains(&removed), "{status:?}");
    assert_eq!(status.voters.len(), 3);
    let index = cluster.nodes[&leader]
        .propose_as_leader(turn.create("m-2").take())
        .expect("a turn without the removed member");
    let got = cluster.converged(index);
    assert_eq!(got.len(), 2);
}

#[test]
fn a_leader_hands_over_before_it_stops_and_reports_its_followers_lag() {
    let cluster = Cluster::start();
    let leader = cluster.leader();
    let mut turn = Turn::new(1);
    let index = cluster.nodes[&leader]
        .propose_as_leader(turn.put_machine().create("h-1").take())
        .expect("a turn");
    cluster.converged(index);

    // The leader's status names each follower and how far behind it is.
    wait_until("the leader sees both followers caught up", || {
        let s = cluster.nodes[&leader].group_status();
        s.replicas.len() == 2 && s.replicas.iter().all(|r| r.lag_entries == 0)
    });
    let status = cluster.nodes[&leader].group_status();
    assert_eq!(status.role, GroupRole::Leader);
    assert_eq!(status.leader, Some(leader));
    assert!(status.commit_index >= Some(index), "{status:?}");
    let follower = MEMBER_IDS.into_iter().find(|&id| id != leader).unwrap();
    let theirs = cluster.nodes[&follower].group_status();
    assert_eq!(theirs.role, GroupRole::Follower);
    assert_eq!(theirs.leader, Some(leader));
    assert!(theirs.replicas.is_empty(), "only a leader tracks replicas");

    // Hand-over: another member leads, everyone agrees, the old leader
    // refuses writes naming the new one; a follower has nothing to hand.
    let new_leader = cluster.nodes[&leader]
        .hand_over()
        .expect("hand-over")
        .expect("this member led");
    assert_ne!(new_leader, leader);
    assert_eq!(cluster.leader(), new_leader);
    assert_eq!(
        cluster.nodes[&leader].propose(turn.create("h-2").take()),
        Err(GroupError::NotLeader {
            leader: Some(new_leader)
        })
    );
    assert_eq!(cluster.nodes[&leader].hand_over(), Ok(None));
    let index = cluster.nodes[&new_leader]
        .propose_as_leader(turn.create("h-3").take())
        .expect("the new leader logs");
    assert_eq!(cluster.converged(index).len(), 2);
}
