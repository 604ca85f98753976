//! A replicated cluster of real `corestate` processes on 127.0.0.1: each
//! node with its own config file (`corestate.cluster`), data directory,
//! fresh client and peer ports, one shard per process (this machine has
//! two cores). Nodes are SIGKILLed and restarted on their directories and
//! peer ports (their client port changes: the harness tracks it).
//!
//! `Cluster::start_proxied` puts a fault proxy (the Raft crate's
//! `tests/support/fault_proxy.rs`) on every
//! directed peer link: node i calls node k through proxy (i, k), so links
//! can be cut one way or both, and a node isolated, while it runs.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::fault_proxy::{FaultProxy, Mode};
use crate::support::{flip_definition, fresh_port, RawClient, Server};

/// How long a cluster may take to answer a request after a change
/// (start, a leader's loss): elections take 150–300 ms by default, a
/// debug build and a busy machine stretch that.
pub const CLUSTER_SETTLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between attempts while looking for the leader.
pub const LEADER_POLL: Duration = Duration::from_millis(25);
/// The code a node answers with while no leader is known (retryable).
pub const NOT_LEADER_CODE: &str = "WAL_IO_ERROR";
pub const CLUSTER_TOKEN: &str = "cluster-tests-token-0123456789";

/// Numbers the idempotency keys `retry_safe` gives writes.
static RETRY_KEYS: AtomicU64 = AtomicU64::new(0);

/// `params` of `op` safe to send again: a write that carries no
/// idempotency key gets one of its own. The helpers below send a request
/// again after the failover refusal, which may say the outcome is unknown
/// (a debug build under load may take longer than an election, and the
/// lead moves mid-request): sent again without a key, a create that was
/// applied answers INSTANCE_EXISTS and an apply runs twice. With one, the
/// retry gets the first answer.
fn retry_safe(op: &str, mut params: Value) -> Value {
    let write = matches!(op, "CREATE_INSTANCE" | "APPLY_EVENT" | "DELETE_INSTANCE");
    if let Some(fields) = params.as_object_mut().filter(|_| write) {
        fields.entry("idempotency_key").or_insert_with(|| {
            json!(format!(
                "retry-safe-{}",
                RETRY_KEYS.fetch_add(1, Ordering::Relaxed)
            ))
        });
    }
    params
}

pub struct Cluster {
    pub nodes: BTreeMap<u64, Server>,
    /// (caller, callee) → the proxy the caller dials (proxied clusters).
    pub links: BTreeMap<(u64, u64), FaultProxy>,
    /// Each node's peer port.
    pub peers: BTreeMap<u64, u16>,
    /// Each node's metrics endpoint (Prometheus text at `/metrics`).
    pub metrics: BTreeMap<u64, std::net::SocketAddr>,
    settings: String,
    shards: usize,
    dir: TempDir,
}

impl Cluster {
    /// Start `size` nodes that form one cluster.
    pub fn start(size: u64) -> Cluster {
        Cluster::start_with(size, false, "")
    }

    /// Start `size` nodes whose peer links all go through fault proxies.
    pub fn start_proxied(size: u64) -> Cluster {
        Cluster::start_with(size, true, "")
    }

    /// Start `size` nodes, their peer links through fault proxies when
    /// `proxied`, with `settings` (YAML lines, each indented by four
    /// spaces) added to every node's `corestate.cluster` section.
    pub fn start_with(size: u64, proxied: bool, settings: &str) -> Cluster {
        Cluster::start_full(size, proxied, settings, 1)
    }

    /// Start `size` nodes of `shards` shards each (a group per shard).
    pub fn start_sharded(size: u64, shards: usize) -> Cluster {
        Cluster::start_full(size, false, "", shards)
    }

    /// Start `size` nodes of `shards` shards each, with `settings` (see
    /// `start_with`), their peer links through fault proxies when `proxied`.
    pub fn start_full(size: u64, proxied: bool, settings: &str, shards: usize) -> Cluster {
        let dir = TempDir::new().expect("temp dir");
        let peers: BTreeMap<u64, u16> = (1..=size).map(|id| (id, fresh_port())).collect();
        let mut links = BTreeMap::new();
        if proxied {
            for &from in peers.keys() {
                for (&to, &port) in &peers {
                    if from != to {
                        let target = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                        links.insert((from, to), FaultProxy::start_on(fresh_listener(), target));
                    }
                }
            }
        }
        let mut nodes = BTreeMap::new();
        let mut metrics = BTreeMap::new();
        for (&id, port) in &peers {
            // Whom this node dials where: a proxy per link when proxied.
            let members: String = peers
                .iter()
                .map(|(&peer, &peer_port)| {
                    let port = links
                        .get(&(id, peer))
                        .map_or(peer_port, |p| p.addr().port());
                    format!("      - {{id: {peer}, peer: \"127.0.0.1:{port}\"}}\n")
                })
                .collect();
            let (node, endpoint) = start_node(&dir, id, *port, settings, &members, shards);
            nodes.insert(id, node);
            metrics.insert(id, endpoint);
        }
        Cluster {
            nodes,
            links,
            peers,
            metrics,
            settings: settings.to_string(),
            shards,
            dir,
        }
    }

    /// Start node `id` on a fresh peer port with `join: true` (it waits to
    /// be added: CLUSTER_ADD_NODE), listing the running members and itself;
    /// its peer port. Not proxied.
    pub fn start_joiner(&mut self, id: u64) -> u16 {
        let port = fresh_port();
        self.peers.insert(id, port);
        let members: String = self
            .peers
            .iter()
            .map(|(peer, port)| format!("      - {{id: {peer}, peer: \"127.0.0.1:{port}\"}}\n"))
            .collect();
        let settings = format!("{}    join: true\n", self.settings);
        let (server, endpoint) = start_node(&self.dir, id, port, &settings, &members, self.shards);
        self.nodes.insert(id, server);
        self.metrics.insert(id, endpoint);
        port
    }

    /// Put every link to and from `node` in `mode` (`Blackhole`: the node
    /// is cut off from the others; clients still reach it).
    pub fn isolate(&self, node: u64, mode: Mode) {
        for ((from, to), proxy) in &self.links {
            if *from == node || *to == node {
                proxy.set_mode(mode);
            }
        }
    }

    /// Every link passes traffic again.
    pub fn heal(&self) {
        for proxy in self.links.values() {
            proxy.set_mode(Mode::Pass);
        }
    }

    /// Send `op` to each running node in turn until one answers other than
    /// with the failover refusal (any node serves any request: a follower
    /// forwards to the leader); that node's id and its response envelope.
    /// Retries until `CLUSTER_SETTLE_TIMEOUT`.
    pub fn call_anywhere(&mut self, op: &str, params: Value) -> (u64, Value) {
        let params = retry_safe(op, params);
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
                "no node answered within {CLUSTER_SETTLE_TIMEOUT:?} ({op} {params})"
            );
            std::thread::sleep(LEADER_POLL);
        }
    }

    /// As `call_anywhere`, for a request that must succeed: the node that
    /// answered and the result.
    pub fn ok_anywhere(&mut self, op: &str, params: Value) -> (u64, Value) {
        let (id, response) = self.call_anywhere(op, params.clone());
        assert_eq!(
            response["status"], "ok",
            "{op} {params} on node {id}: {response}"
        );
        (id, response["result"].clone())
    }

    /// `op` on node `id`, which must answer it (forwarding if it does not
    /// lead); retried while the cluster is between leaders.
    pub fn ok_on(&mut self, id: u64, op: &str, params: Value) -> Value {
        let params = retry_safe(op, params);
        let started = Instant::now();
        loop {
            let response = self.raw(id).call(op, params.clone());
            if response["error"]["code"] != NOT_LEADER_CODE
                || started.elapsed() > CLUSTER_SETTLE_TIMEOUT
            {
                assert_eq!(
                    response["status"], "ok",
                    "{op} {params} on node {id}: {response}"
                );
                return response["result"].clone();
            }
            std::thread::sleep(LEADER_POLL);
        }
    }

    /// Whether the peer links run over TLS (`peer_tls_settings`).
    pub fn peer_tls(&self) -> bool {
        self.settings.contains("    tls:\n")
    }

    /// The node that leads shard 0's group, as every running node's
    /// REPLICATION_STATUS agrees.
    /// The running nodes other than `node`, in id order.
    /// Three nodes of one shard with `settings` (see `start_with`), the
    /// flip machine and its instances `ids`: the cluster, its leader and
    /// a follower.
    pub fn with_flips(settings: &str, ids: &[&str]) -> (Cluster, u64, u64) {
        let mut cluster = Cluster::start_with(3, false, settings);
        let leader = cluster.leader();
        cluster.flip_instances(leader, ids);
        let follower = cluster.others(leader)[0];
        (cluster, leader, follower)
    }

    pub fn others(&self, node: u64) -> Vec<u64> {
        self.nodes.keys().copied().filter(|&n| n != node).collect()
    }

    /// The term shard 0's group is in, as node `id` reports it.
    pub fn term_on(&mut self, id: u64) -> u64 {
        let status = self.ok_on(id, "REPLICATION_STATUS", json!({}));
        status["shards"][0]["term"].as_u64().expect("a term")
    }

    pub fn leader(&mut self) -> u64 {
        self.leader_of_shard(0)
    }

    /// The node that leads shard `shard`'s group, as every running node's
    /// REPLICATION_STATUS agrees.
    pub fn leader_of_shard(&mut self, shard: usize) -> u64 {
        let started = Instant::now();
        loop {
            let mut seen = Vec::new();
            for (_, server) in self.nodes.iter_mut() {
                if server.is_running() {
                    let status = server.raw().ok("REPLICATION_STATUS", json!({}));
                    seen.push(status["shards"][shard]["leader"].as_u64());
                }
            }
            if let Some(Some(leader)) = seen.first().copied() {
                let agreed = seen.iter().all(|s| *s == Some(leader));
                if agreed && self.nodes.get_mut(&leader).is_some_and(|s| s.is_running()) {
                    return leader;
                }
            }
            assert!(
                started.elapsed() < CLUSTER_SETTLE_TIMEOUT,
                "no agreed leader of shard {shard} within {CLUSTER_SETTLE_TIMEOUT:?}: {seen:?}"
            );
            std::thread::sleep(LEADER_POLL);
        }
    }

    /// The transitions in node `id`'s own log (WAL_READ from offset 0, up
    /// to what it applied): (offset, instance, event), in log order.
    pub fn transitions(&mut self, id: u64) -> Vec<(u64, String, String)> {
        let page = self.ok_on(id, "WAL_READ", json!({"from_offset": 0, "limit": 1000}));
        page["records"]
            .as_array()
            .expect("records")
            .iter()
            .filter(|r| r["entry"]["type"] == "apply_event")
            .map(|r| {
                let text = |key: &str| r["entry"][key].as_str().unwrap_or_default().to_string();
                (
                    r["offset"].as_u64().expect("offset"),
                    text("instance_id"),
                    text("event"),
                )
            })
            .collect()
    }

    pub fn raw(&self, id: u64) -> RawClient {
        self.nodes[&id].raw()
    }

    /// Wait until `node`'s own log holds the same transitions as
    /// `leader`'s. Both are read again each time: with two groups, `leader`
    /// (shard 0's) may itself still be applying shard 1's latest commits
    /// (a write acknowledged through shard 1's leader elsewhere), so its
    /// log read once is not the end state.
    pub fn converges(&mut self, node: u64, leader: u64) {
        let started = Instant::now();
        loop {
            let expected = self.transitions(leader);
            let seen = self.transitions(node);
            if seen == expected {
                return;
            }
            assert!(
                started.elapsed() < CLUSTER_SETTLE_TIMEOUT,
                "node {node} never caught up: {seen:?}, leader {leader}: {expected:?}"
            );
            std::thread::sleep(LEADER_POLL);
        }
    }

    /// Wait until every node's own log holds the same transitions as the
    /// leader's (of shard 0).
    pub fn all_converge(&mut self) {
        let leader = self.leader();
        let nodes: Vec<u64> = self.nodes.keys().copied().collect();
        for node in nodes {
            self.converges(node, leader);
        }
    }

    /// Put the `flip` machine (states a and b) through node `via` and
    /// create instances `ids` of it (each starts in `a`).
    pub fn flip_instances(&mut self, via: u64, ids: &[&str]) {
        let put = json!({"machine": "flip", "version": 1, "definition": flip_definition()});
        self.ok_on(via, "PUT_MACHINE", put);
        for id in ids {
            let create = json!({"machine": "flip", "version": 1, "instance_id": id});
            self.ok_on(via, "CREATE_INSTANCE", create);
        }
    }

    /// Wait until node `node`'s own state of instance `id` reaches the
    /// write at `offset` (SNAPSHOT_INSTANCE is answered from the node's
    /// state); its REPLICATION_STATUS of shard 0's group then.
    pub fn wait_applied(&self, node: u64, id: &str, offset: u64) -> Value {
        let started = Instant::now();
        loop {
            let snap = self
                .raw(node)
                .call("SNAPSHOT_INSTANCE", json!({"instance_id": id}));
            if snap["result"]["wal_offset"] == offset {
                let status = self.raw(node).ok("REPLICATION_STATUS", json!({}));
                return status["shards"][0].clone();
            }
            assert!(
                started.elapsed() < CLUSTER_SETTLE_TIMEOUT,
                "node {node} never applied {offset}: {snap}"
            );
            std::thread::sleep(LEADER_POLL);
        }
    }
}

/// APPLY_EVENT FLIP on instance `id` over `conn`, `n` times one at a time
/// (each write its own entry: pipelined writes share one entry per turn);
/// the offsets, in order. A flip refused as surely not applied (the lead
/// moving: an election, or the groups' leader balancing) is sent again,
/// as a client would; any other error fails the test.
pub fn flips_one_at_a_time(conn: &mut RawClient, id: &str, n: usize) -> Vec<u64> {
    (0..n)
        .map(|i| {
            let started = std::time::Instant::now();
            loop {
                let r = conn.call("APPLY_EVENT", json!({"instance_id": id, "event": "FLIP"}));
                let not_applied = r["error"]["retryable"] == true
                    && r["error"]["details"]["outcome"] == "not_applied";
                if not_applied && started.elapsed() < CLUSTER_SETTLE_TIMEOUT {
                    std::thread::sleep(LEADER_POLL);
                    continue;
                }
                assert_eq!(r["status"], "ok", "flip {i}: {r}");
                return r["result"]["wal_offset"].as_u64().expect("an offset");
            }
        })
        .collect()
}

/// A listener on a port from `fresh_port`. A proxy bound to port 0 could
/// take a peer port promised to a node not started yet (the node then
/// failed: "address already in use"); taking its port from the same
/// hand-out cannot.
fn fresh_listener() -> std::net::TcpListener {
    loop {
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", fresh_port())) {
            return listener;
        }
    }
}

/// The cluster settings (YAML lines) of peer links over mutual TLS: every
/// node with the certificate `cert` and key `key`, trusting the CA `ca`.
pub fn peer_tls_settings(cert: &Path, key: &Path, ca: &Path) -> String {
    format!(
        "    tls:\n      cert_path: \"{}\"\n      key_path: \"{}\"\n      peer_ca_path: \"{}\"\n",
        cert.display(),
        key.display(),
        ca.display()
    )
}

/// Write node `id`'s config (peer listener on `port`, `settings` and
/// `members` as YAML lines) into `dir` and start it on its data directory
/// with `shards` shards; the node and its metrics endpoint (a fresh port,
/// kept across restarts).
fn start_node(
    dir: &TempDir,
    id: u64,
    port: u16,
    settings: &str,
    members: &str,
    shards: usize,
) -> (Server, std::net::SocketAddr) {
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], fresh_port()));
    // FLUSH_ALL is allowed (tests/cluster/storage_ops.rs runs it).
    let yaml = format!(
        "metrics:\n  enabled: true\n  bind_addr: \"{metrics}\"\nstorage:\n  allow_flush_all: true\ncorestate:\n  cluster:\n    node_id: {id}\n    name: cluster-tests\n    \
         token: {CLUSTER_TOKEN}\n    peer_listen: \"127.0.0.1:{port}\"\n{settings}    members:\n{members}"
    );
    let config = dir.path().join(format!("node-{id}.yaml"));
    fs::write(&config, yaml).expect("write node config");
    let data: PathBuf = dir.path().join(format!("data-{id}"));
    fs::create_dir_all(&data).expect("data dir");
    let config = config.display().to_string();
    let shards = shards.to_string();
    let server = Server::start_in(&data, &["--config", &config, "--shards", &shards]);
    (server, metrics)
}
