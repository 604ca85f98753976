//! A node of a replicated cluster (`corestate.cluster`, issue 14): every
//! shard is a member of its Raft group (`corestate_raft::shard_group`),
//! run by the shard loop as a member (`shards::shard::replica`).
//!
//! What this file sets up, per node:
//! * the peer links' **TLS** (`corestate.cluster.tls`), read once before
//!   the executors start, or plain TCP;
//! * the **peer listener** on the acceptor's executor, with a directory
//!   that hands each group's calls to its shard's executor (one bounded
//!   mailbox per group: the one explicit cross-core hop);
//! * per shard, on the shard's executor: a **peer pool** (glommio sockets
//!   cannot cross threads), the group member (its log in
//!   `shard-NNN/raft/log`, its snapshots in `shard-NNN/raft/snapshots`),
//!   and the shard loop fed by it;
//! * a member whose log is empty **initializes** its group with the
//!   configured members (openraft allows every member to do so with the
//!   same list; one leader is elected) — unless the node was started to
//!   `join`: then its groups wait until a running cluster adds it
//!   (CLUSTER_ADD_NODE, `src/server/ops/cluster_ops.rs`).
//!
//! Requests reach any node: a shard that does not lead its group forwards
//! what needs the leader to it over the peer transport and relays the
//! answer (`corestate_raft::shard_group`'s `forward.rs`); while no leader
//! is known it answers with a retryable `WAL_IO_ERROR`.

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use corestate_raft::log_store::WalLogOptions;
use corestate_raft::net::{
    group_mailbox, ClusterCredentials, GroupDirectory, GroupInbox, PeerPool, PeerServer, PeerTls,
};
use corestate_raft::shard_group::{
    pace_snapshots, start_loop_member, GroupMember, LoopMachine, MemberSetup, SnapshotPacing,
};
use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, SnapshotPolicy};
use shards::env::Env;
use shards::shard::{OpenReport, Shard, ShardConfig, ShardMsg};
use shards::wal::Frontier;

use crate::config::ClusterConfig;

/// The per-shard mailboxes of the peer listener's directory, before the
/// executors start: the directory goes to the acceptor's executor, each
/// inbox to its shard's.
pub struct PeerWiring {
    pub directory: Arc<GroupDirectory>,
    pub inboxes: Vec<Option<GroupInbox>>,
    /// The peer links' TLS, read once at start (`None`: plain TCP).
    pub tls: Option<PeerTls>,
}

pub fn wire(shards: usize, tls: Option<PeerTls>) -> Result<PeerWiring, String> {
    let mut directory = GroupDirectory::new();
    let mut inboxes = Vec::with_capacity(shards);
    for shard in 0..shards {
        let (mailbox, inbox) = group_mailbox();
        directory
            .register(shard as u64, mailbox)
            .map_err(|e| format!("cannot register shard {shard}'s group: {e}"))?;
        inboxes.push(Some(inbox));
    }
    Ok(PeerWiring {
        directory: Arc::new(directory),
        inboxes,
        tls,
    })
}

fn credentials(cluster: &ClusterConfig) -> ClusterCredentials {
    ClusterCredentials::new(&cluster.name, &cluster.token, cluster.node_id)
}

/// Start the peer listener on the calling executor (the acceptor's).
pub fn listen(
    cluster: &ClusterConfig,
    directory: Arc<GroupDirectory>,
    tls: Option<PeerTls>,
) -> Result<PeerServer, String> {
    PeerServer::start_with_tls(
        &cluster.peer_listen.to_string(),
        credentials(cluster),
        directory,
        tls,
    )
    .map_err(|e| format!("cannot listen for peers on {}: {e}", cluster.peer_listen))
}

fn raft_config(cluster: &ClusterConfig) -> Result<Arc<openraft::Config>, String> {
    let config = openraft::Config {
        cluster_name: cluster.name.clone(),
        // Each member decides when it snapshots (`pace_snapshots`, below).
        snapshot_policy: SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: cluster.log_kept_behind_snapshot_entries,
        election_timeout_min: cluster.election_timeout_ms,
        election_timeout_max: cluster.election_timeout_ms * 2,
        heartbeat_interval: (cluster.election_timeout_ms / 3).max(1),
        // A member whose election timeout passes first asks whether the
        // others would vote for it, in its current term (Pre-Vote). Off
        // (openraft's default), a follower cut off from the leader — or
        // restarted before the leader's heartbeats reached it — raised its
        // term at each timeout; back in touch, its answers carried that
        // term and the leader stepped down: an election, and writes
        // refused meanwhile, each time a follower came back. A leader
        // transfer does not go through Pre-Vote.
        enable_pre_vote: Some(true),
        ..openraft::Config::default()
    };
    config
        .validate()
        .map(Arc::new)
        .map_err(|e| format!("Raft settings: {e}"))
}

/// A shard started as a member of its group, on the calling executor.
pub struct MemberShard {
    pub shard: Shard,
    pub report: OpenReport,
    pub member: GroupMember<LoopMachine>,
    /// Keeps this executor's links to the other members.
    pub peers: Rc<PeerPool>,
}

/// Start shard `cfg.id` as a member of its group (on its executor).
pub async fn open_member_shard(
    cfg: &ShardConfig,
    cluster: &ClusterConfig,
    frontier: Frontier,
    heartbeat: Arc<AtomicU64>,
    inbox: GroupInbox,
    mailbox: flume::Sender<ShardMsg>,
    tls: Option<PeerTls>,
) -> Result<MemberShard, String> {
    let peers = PeerPool::with_tls(credentials(cluster), tls);
    for (&id, peer) in &cluster.members {
        if id != cluster.node_id {
            peers.set_address(id, peer.to_string());
        }
    }
    let raft_dir = cfg.dir.join("raft");
    let (log_dir, snapshot_dir) = (raft_dir.join("log"), raft_dir.join("snapshots"));
    let setup = MemberSetup {
        node_id: cluster.node_id,
        shard: cfg.id,
        log_dir: &log_dir,
        snapshot_dir: &snapshot_dir,
        log: WalLogOptions {
            shard: cfg.id,
            fsync: cfg.fsync,
            segment_size_bytes: cfg.segment_size_bytes,
            node_id: cluster.node_id,
        },
        allow_instance_recreate: cfg.allow_instance_recreate,
        raft_config: raft_config(cluster)?,
    };
    let (member, link, deliveries, log_report) =
        start_loop_member(setup, Env::os(cfg.id), &peers, inbox, mailbox).await?;
    if let Some(t) = &log_report.torn_tail {
        tracing::warn!(
            "shard {}: torn write at the end of its Raft log {} cut at byte {} ({} bytes \
             discarded; never acknowledged, the group's leader sends what it lacks)",
            cfg.id,
            t.path.display(),
            t.position,
            t.bytes_zeroed
        );
    }
    let pristine = log_report.last_log_id.is_none() && log_report.last_purged.is_none();
    if pristine && cluster.join {
        tracing::info!(
            "shard {}: joining: waiting for a running cluster's CLUSTER_ADD_NODE to add node {}",
            cfg.id,
            cluster.node_id
        );
    } else if pristine {
        initialize(&member, cluster, cfg.id, &raft_dir).await?;
    }
    if cluster.balance_leaders {
        let raft = member.raft().clone();
        glommio::spawn_local(corestate_raft::shard_group::spread_leaders(raft, cfg.id)).detach();
    }
    let pacing = SnapshotPacing {
        every_entries: cluster.snapshot_every_entries,
        log_growth_percent: cluster.snapshot_log_growth_percent,
    };
    let (raft, machine) = (member.raft().clone(), member.machine().clone());
    glommio::spawn_local(pace_snapshots(raft, machine, pacing, cfg.id)).detach();
    let shard = Shard::open_member(cfg, Env::os(cfg.id), frontier, heartbeat, link, deliveries);
    let report = shard.member_report();
    Ok(MemberShard {
        shard,
        report,
        member,
        peers,
    })
}

/// Start a pristine member's group with the configured members.
async fn initialize(
    member: &GroupMember<LoopMachine>,
    cluster: &ClusterConfig,
    shard: usize,
    raft_dir: &Path,
) -> Result<(), String> {
    let voters: BTreeMap<u64, BasicNode> = cluster
        .members
        .iter()
        .map(|(&id, peer)| (id, BasicNode::new(peer.to_string())))
        .collect();
    match member.raft().initialize(voters).await {
        Ok(()) => Ok(()),
        // The member has a log after all (a vote, or entries from a
        // leader that reached it first): nothing to do.
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(format!(
            "shard {shard}: cannot initialize the group in {}: {e}",
            raft_dir.display()
        )),
    }
}
