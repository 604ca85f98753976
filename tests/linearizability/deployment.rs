//! What the run is pointed at: one server process (two shards), or a
//! replicated cluster of real processes (`tests/cluster/harness.rs`), two
//! shards per node, whose groups' leaders are the ones killed or cut off
//! (fault proxies on every peer link).

use std::thread;
use std::time::Duration;

use serde_json::json;

use crate::fault_proxy::Mode;
use crate::harness::{peer_tls_settings, Cluster};
use crate::peer_pki::PeerPki;
use crate::support::{put_machine, RawClient, Server, SHARDS};
use crate::workload::{definition, MACHINE};

/// Cluster settings of the run: snapshots far apart.
const NO_SNAPSHOTS: &str = "    snapshot_every_entries: 100000000\n";
/// The log each member keeps behind its snapshot when a run takes
/// snapshots (`CORESTATE_LIN_SNAPSHOT_EVERY_ENTRIES`): the most allowed,
/// more entries than a run writes, so the whole log stays readable.
const LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES: u64 = 1_000_000;
/// How long cross-shard batch parts may take to be decided after the load
/// (a lost decision is asked for after 1 s; an orphaned part is aborted
/// after `in_doubt_resolve_after_ms`, 10 s).
const BATCHES_SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

pub enum Deployment {
    Single(Server),
    Cluster(Cluster),
}

/// One SIGKILL: which node died, and where it listens after its restart.
pub struct Kill {
    pub node: usize,
    pub port: u16,
}

impl Deployment {
    pub fn single() -> Deployment {
        let server = Server::start(&[]);
        put_machine(&mut server.raw(), MACHINE, definition());
        Deployment::Single(server)
    }

    /// A cluster of `nodes`; its peer links over mutual TLS with `pki`'s
    /// node-1 certificate when given (it must outlive the cluster).
    pub fn cluster(nodes: u64, pki: Option<&PeerPki>) -> Deployment {
        // No group snapshot during a run unless asked for
        // (`CORESTATE_LIN_SNAPSHOT_EVERY_ENTRIES`): the checker reads the
        // whole log back (WAL_READ from offset 0), so a run with snapshots
        // keeps the whole log behind them; a node restarted after one
        // reads past it once it has indexed that log.
        // Two groups, so that atomic batches span shards (`batches.rs`).
        let snapshots = match snapshot_every_entries() {
            None => NO_SNAPSHOTS.to_string(),
            Some(every) => format!(
                "    snapshot_every_entries: {every}\n    log_kept_behind_snapshot_entries: \
                 {LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES}\n"
            ),
        };
        let settings = match pki {
            None => snapshots,
            Some(pki) => format!(
                "{snapshots}{}",
                peer_tls_settings(
                    &pki.path("node-1.pem"),
                    &pki.path("node-1.key"),
                    &pki.path("ca.pem")
                )
            ),
        };
        let mut cluster = Cluster::start_full(nodes, true, &settings, SHARDS);
        let params = json!({"machine": MACHINE, "version": 1, "definition": definition()});
        cluster.ok_anywhere("PUT_MACHINE", params);
        Deployment::Cluster(cluster)
    }

    pub fn label(&self) -> String {
        match self {
            Deployment::Single(_) => "single node".into(),
            Deployment::Cluster(c) if c.peer_tls() => {
                format!("{}-node cluster, peer links over mutual TLS", c.nodes.len())
            }
            Deployment::Cluster(c) => format!("{}-node cluster", c.nodes.len()),
        }
    }

    /// The client ports, by node (counting from 0).
    pub fn ports(&self) -> Vec<u16> {
        match self {
            Deployment::Single(s) => vec![s.port()],
            Deployment::Cluster(c) => c.nodes.values().map(Server::port).collect(),
        }
    }

    /// Whether a request in flight at a SIGKILL took effect before it or
    /// never: true of a single process; on a cluster the request may have
    /// reached the leader (or been forwarded) and commit later.
    pub fn deaths_bound_unknowns(&self) -> bool {
        matches!(self, Deployment::Single(_))
    }

    /// The node (counting from 0) that leads shard `shard` now: the one
    /// a kill aimed at that shard hits.
    pub fn leader_index(&mut self, shard: usize) -> usize {
        match self {
            Deployment::Single(_) => 0,
            Deployment::Cluster(c) => {
                let leader = c.leader_of_shard(shard);
                c.nodes.keys().position(|&id| id == leader).expect("a node")
            }
        }
    }

    /// SIGKILL the server (on a cluster: shard `shard`'s leader), with
    /// `on_death` called once it is reaped; start it again on its data
    /// after `downtime`.
    pub fn kill_and_restart(
        &mut self,
        shard: usize,
        downtime: Duration,
        on_death: impl FnOnce(),
    ) -> Kill {
        let node = self.leader_index(shard);
        let server = match self {
            Deployment::Single(s) => s,
            Deployment::Cluster(c) => c.nodes.values_mut().nth(node).expect("the leader"),
        };
        server.sigkill();
        on_death();
        thread::sleep(downtime);
        server.restart();
        Kill {
            node,
            port: server.port(),
        }
    }

    /// Cut shard `shard`'s leader off from the other nodes for `duration`
    /// (its clients still reach it), then heal every link. A single server
    /// has no links: nothing happens.
    pub fn partition_leader(&mut self, shard: usize, duration: Duration) {
        if let Deployment::Cluster(c) = self {
            let leader = c.leader_of_shard(shard);
            c.isolate(leader, Mode::Blackhole);
            thread::sleep(duration);
            c.heal();
        }
    }

    /// On a cluster, wait until no group's leader holds a cross-shard batch
    /// part undecided (a part whose Decide was lost with a leader takes
    /// its decider's decision within a second or two): the final reads
    /// then see every batch decided.
    pub fn settle_batches(&mut self) {
        let Deployment::Cluster(c) = self else { return };
        let started = std::time::Instant::now();
        loop {
            let mut settled = [false; SHARDS];
            for server in c.nodes.values_mut() {
                if !server.is_running() {
                    continue;
                }
                let status = server.raw().ok("REPLICATION_STATUS", json!({}));
                for (shard, s) in status["shards"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    if s["role"] == "leader" && s["batch_parts_in_doubt"] == 0 {
                        settled[shard] = true;
                    }
                }
            }
            if settled.iter().all(|&s| s) {
                return;
            }
            assert!(
                started.elapsed() < BATCHES_SETTLE_TIMEOUT,
                "batch parts still in doubt after {BATCHES_SETTLE_TIMEOUT:?}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// A client for the final reads: one that sees every committed write
    /// (on a cluster, the leader's node: its reads wait for a ReadIndex
    /// round, which applies every entry committed before it).
    pub fn reader(&mut self) -> RawClient {
        match self {
            Deployment::Single(s) => s.raw(),
            Deployment::Cluster(c) => {
                let leader = c.leader();
                c.raw(leader)
            }
        }
    }

    pub fn servers(&mut self) -> Vec<&mut Server> {
        match self {
            Deployment::Single(s) => vec![s],
            Deployment::Cluster(c) => c.nodes.values_mut().collect(),
        }
    }
}

/// `CORESTATE_LIN_SNAPSHOT_EVERY_ENTRIES`: a cluster run whose groups
/// snapshot after that many entries (at least 100).
pub fn snapshot_every_entries() -> Option<u64> {
    crate::env_u64("CORESTATE_LIN_SNAPSHOT_EVERY_ENTRIES")
}
