//! Three shard loops as the members of one group (`LoopNode`s over TCP),
//! and the server's own commands to drive them: the cluster the loop
//! tests start.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use openraft::{BasicNode, Config, ServerState, SnapshotPolicy};
use serde_json::{json, Value};
use shards::shard::{ApplyEvent, Command, CreateInstance};

use crate::loop_node::{self, on_leader, LoopNode, STEP_TIMEOUT};

/// Entries between snapshots (small: the tests' logs are short).
const SNAPSHOT_EVERY_ENTRIES: u64 = 3;

pub struct Cluster {
    pub nodes: BTreeMap<u64, LoopNode>,
    config: Arc<Config>,
    dirs: BTreeMap<u64, tempfile::TempDir>,
    /// Every member's peer address, running or not (a restart keeps it).
    addrs: BTreeMap<u64, SocketAddr>,
}

impl Cluster {
    pub fn start() -> Cluster {
        Cluster::start_with(|_| {})
    }

    /// A cluster whose Raft config `tune` adjusts.
    pub fn start_with(tune: impl FnOnce(&mut Config)) -> Cluster {
        // Snapshots every few entries, and no log kept behind them: the
        // loop's look at its state builds them, and a restarted or lagging
        // member installs one into its loop.
        let mut config = Config {
            cluster_name: loop_node::CLUSTER_NAME.to_string(),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY_ENTRIES),
            max_in_snapshot_log_to_keep: 0,
            ..Config::default()
        };
        tune(&mut config);
        let config = Arc::new(config.validate().expect("valid config"));
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            config,
            dirs: BTreeMap::new(),
            addrs: BTreeMap::new(),
        };
        let mut books = BTreeMap::new();
        for id in [1, 2, 3] {
            let dir = tempfile::tempdir().expect("temp dir");
            let (book, peers) = flume::bounded(1);
            let node = LoopNode::start(
                id,
                dir.path().to_path_buf(),
                "127.0.0.1:0".parse().unwrap(),
                cluster.config.clone(),
                peers,
            );
            cluster.addrs.insert(id, node.addr);
            cluster.nodes.insert(id, node);
            cluster.dirs.insert(id, dir);
            books.insert(id, book);
        }
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

    pub fn peers_of(&self, id: u64) -> BTreeMap<u64, SocketAddr> {
        let mut peers = self.addrs.clone();
        peers.remove(&id);
        peers
    }

    pub fn running(&self) -> Vec<&LoopNode> {
        self.nodes.values().collect()
    }

    /// The leader the running members agree on.
    pub fn leader(&self) -> u64 {
        let started = std::time::Instant::now();
        loop {
            let statuses: Vec<_> = self.nodes.values().map(|n| (n.id, n.status())).collect();
            let leader = statuses
                .iter()
                .find(|(_, s)| s.state == ServerState::Leader)
                .map(|&(id, _)| id);
            if let Some(id) = leader {
                if statuses.iter().all(|(_, s)| s.leader == Some(id)) {
                    return id;
                }
            }
            assert!(
                started.elapsed() < STEP_TIMEOUT,
                "no agreed leader within {STEP_TIMEOUT:?}: {statuses:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    pub fn stop(&mut self, id: u64) -> SocketAddr {
        let mut node = self.nodes.remove(&id).expect("a running node");
        node.stop();
        node.addr
    }

    /// Start node `id` again on its directory and address.
    pub fn restart(&mut self, id: u64, addr: SocketAddr) {
        let (book, peers) = flume::bounded(1);
        let dir = self.dirs[&id].path().to_path_buf();
        let node = LoopNode::start(id, dir, addr, self.config.clone(), peers);
        book.send(self.peers_of(id)).expect("node waits");
        self.nodes.insert(id, node);
    }
}

pub fn create(id: &str) -> Command {
    Command::Create(CreateInstance {
        instance_id: id.to_string(),
        machine: "order".into(),
        version: 1,
        initial_ctx: json!({"amount": 10}),
        idempotency_key: None,
    })
}

/// PAY under idempotency key `key`: a retry after an unknown outcome gets
/// the first answer, never a second transition.
pub fn pay_keyed(id: &str, key: &str) -> Command {
    Command::Apply(ApplyEvent {
        instance_id: id.to_string(),
        event: "PAY".into(),
        payload: json!({}),
        expected_state: None,
        expected_wal_offset: None,
        event_id: None,
        idempotency_key: Some(key.to_string()),
    })
}

pub fn pay(id: &str) -> Command {
    pay_keyed(id, &format!("pay-{id}"))
}

pub fn get(id: &str) -> Command {
    Command::Get {
        instance_id: id.to_string(),
    }
}

pub fn state_of(answer: &Value) -> &str {
    answer["state"].as_str().expect("a state")
}

pub fn offset_of(answer: &Value) -> u64 {
    answer["wal_offset"].as_u64().expect("an offset")
}

pub fn exec(cluster: &Cluster, cmd: impl Fn() -> Command) -> Value {
    on_leader(&cluster.running(), |n| n.exec(cmd())).expect("the leader runs it")
}
