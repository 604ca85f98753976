//! A replicated cluster of real `corestate` processes on 127.0.0.1: each
//! node with its own config file (`corestate.cluster`), data directory,
//! fresh client and peer ports, one shard per process (this machine has
//! two cores). Nodes are SIGKILLed and restarted on their directories and
//! peer ports (their client port changes: the harness tracks it).

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::support::{fresh_port, RawClient, Server};

/// How long a cluster may take to answer a request after a change
/// (start, a leader's loss): elections take 150–300 ms by default, a
/// debug build and a busy machine stretch that.
pub const CLUSTER_SETTLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between attempts while looking for the leader.
pub const LEADER_POLL: Duration = Duration::from_millis(25);
/// The code a node refuses with when it does not lead (retryable).
pub const NOT_LEADER_CODE: &str = "WAL_IO_ERROR";
pub const CLUSTER_TOKEN: &str = "cluster-tests-token-0123456789";

pub struct Cluster {
    pub nodes: BTreeMap<u64, Server>,
    _dir: TempDir,
}

impl Cluster {
    /// Start `size` nodes that form one cluster.
    pub fn start(size: u64) -> Cluster {
        let dir = TempDir::new().expect("temp dir");
        let peers: BTreeMap<u64, u16> = (1..=size).map(|id| (id, fresh_port())).collect();
        let members: String = peers
            .iter()
            .map(|(id, port)| format!("      - {{id: {id}, peer: \"127.0.0.1:{port}\"}}\n"))
            .collect();
        let mut nodes = BTreeMap::new();
        for (&id, port) in &peers {
            let yaml = format!(
                "corestate:\n  cluster:\n    node_id: {id}\n    name: cluster-tests\n    \
                 token: {CLUSTER_TOKEN}\n    peer_listen: \"127.0.0.1:{port}\"\n    members:\n{members}"
            );
            let config = dir.path().join(format!("node-{id}.yaml"));
            fs::write(&config, yaml).expect("write node config");
            let data: PathBuf = dir.path().join(format!("data-{id}"));
            fs::create_dir_all(&data).expect("data dir");
            let config = config.display().to_string();
            let server = Server::start_in(&data, &["--config", &config, "--shards", "1"]);
            nodes.insert(id, server);
        }
        Cluster { nodes, _dir: dir }
    }

    /// Send `op` to each running node in turn until one answers other than
    /// "not the leader"; that node's id and its response envelope. Retries
    /// until `CLUSTER_SETTLE_TIMEOUT`.
    pub fn call_on_leader(&mut self, op: &str, params: Value) -> (u64, Value) {
        let started = Instant::now();
        loop {
            for (&id, server) in self.nodes.iter_mut() {
                if !server.is_running() {
                    continue;
                }
                let response = server.raw().call(op, params.clone());
                if response["error"]["code"] != NOT_LEADER_CODE {
                    return (id, response);
                }
            }
            assert!(
                started.elapsed() < CLUSTER_SETTLE_TIMEOUT,
                "no node led within {CLUSTER_SETTLE_TIMEOUT:?} ({op} {params})"
            );
            std::thread::sleep(LEADER_POLL);
        }
    }

    /// As `call_on_leader`, for a request that must succeed: the leader and
    /// the result.
    pub fn ok_on_leader(&mut self, op: &str, params: Value) -> (u64, Value) {
        let (id, response) = self.call_on_leader(op, params.clone());
        assert_eq!(
            response["status"], "ok",
            "{op} {params} on node {id}: {response}"
        );
        (id, response["result"].clone())
    }

    pub fn raw(&self, id: u64) -> RawClient {
        self.nodes[&id].raw()
    }
}
