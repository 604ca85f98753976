//! A shard group member as the server will run it: on its own thread and
//! glommio executor, its log in a directory of its own (the WAL log
//! store, `every_write`), its state a `ShardMachine`, its peers over the
//! peer transport. The test thread drives it with commands and sees plain
//! data only. A stopped node can be started again on the same directory
//! (its log in `log/`, its snapshots in `snapshots/`) and listener address
//! (a restart).

#![allow(dead_code, unused_imports)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use corestate_raft::log_store::WalLogOptions;
use corestate_raft::net::{
    group_mailbox, ClusterCredentials, GroupDirectory, GroupInbox, PeerPool, PeerServer,
};
use corestate_raft::shard_group::{GroupError, GroupMember, GroupStatus, MemberSetup, TurnRecords};
use corestate_raft::GlommioRuntime;
use openraft::rt::watch::WatchReceiver;
use openraft::{AsyncRuntime, BasicNode, Config, ServerState};
use shards::env::Env;
use shards::wal::FsyncPolicy;

use crate::member_thread::MemberThread;
pub use crate::member_thread::{wait_until, STEP_TIMEOUT};
use crate::memlock;
use crate::turns::SHARD;

pub const CLUSTER_NAME: &str = "group-tests";
pub const CLUSTER_TOKEN: &str = "group-s3cret";
/// Each member's log segments: small, so logs span segments.
pub const SEGMENT_SIZE_BYTES: u64 = 256 * 1024;

/// What the test thread sees of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub state: ServerState,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_applied: Option<u64>,
    pub snapshot: Option<u64>,
    pub purged: Option<u64>,
}

/// An instance as a member's state holds it: (state, context as JSON).
pub type Instances = BTreeMap<String, (String, String)>;

enum Command {
    Status(flume::Sender<Status>),
    Initialize(BTreeMap<u64, BasicNode>, flume::Sender<Result<(), String>>),
    Propose(Vec<u8>, flume::Sender<Result<u64, GroupError>>),
    ReadBarrier(flume::Sender<Result<(), GroupError>>),
    Instances(flume::Sender<Instances>),
    GroupStatus(flume::Sender<GroupStatus>),
    AddMember(u64, String, flume::Sender<Result<(), GroupError>>),
    RemoveMember(u64, flume::Sender<Result<(), GroupError>>),
    HandOver(flume::Sender<Result<Option<u64>, GroupError>>),
    Stop,
}

pub struct GroupNode {
    pub id: u64,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    thread: MemberThread<Command>,
}

impl GroupNode {
    /// Start member `id` keeping its log in `dir`, listening on `listen`
    /// (port 0 picks one); `peers` are the other members' addresses.
    pub fn start(
        id: u64,
        dir: PathBuf,
        listen: SocketAddr,
        config: Arc<Config>,
        peers: flume::Receiver<BTreeMap<u64, SocketAddr>>,
    ) -> GroupNode {
        let (bound, bound_addr) = flume::bounded(1);
        let log_dir = dir.clone();
        let thread = MemberThread::spawn(
            format!("group-node-{id}"),
            || Command::Stop,
            move |inbox| node_main(id, log_dir, listen, config, peers, inbox, bound),
        );
        let addr = bound_addr
            .recv_timeout(STEP_TIMEOUT)
            .expect("the node binds its listener");
        GroupNode {
            id,
            addr,
            dir,
            thread,
        }
    }

    fn ask<T>(&self, make: impl FnOnce(flume::Sender<T>) -> Command) -> T {
        self.thread.ask(make)
    }

    pub fn status(&self) -> Status {
        self.ask(Command::Status)
    }

    pub fn initialize(&self, voters: BTreeMap<u64, BasicNode>) {
        self.ask(|tx| Command::Initialize(voters, tx))
            .expect("initialize");
    }

    /// Propose a turn through this member; the log index it committed at.
    pub fn propose(&self, turn: TurnRecords) -> Result<u64, GroupError> {
        self.ask(|tx| Command::Propose(turn.0, tx))
    }

    /// Propose through this member, which is expected to lead: while it
    /// has not yet got a quorum's acknowledgement as a new leader it
    /// answers NotLeader without naming another leader (nothing was
    /// logged), so that is retried; any other answer is returned.
    pub fn propose_as_leader(&self, turn: TurnRecords) -> Result<u64, GroupError> {
        let started = std::time::Instant::now();
        loop {
            match self.propose(turn.clone()) {
                Err(GroupError::NotLeader { leader })
                    if (leader.is_none() || leader == Some(self.id))
                        && started.elapsed() < STEP_TIMEOUT =>
                {
                    thread::sleep(Duration::from_millis(10));
                }
                answer => return answer,
            }
        }
    }

    pub fn read_barrier(&self) -> Result<(), GroupError> {
        self.ask(Command::ReadBarrier)
    }

    pub fn instances(&self) -> Instances {
        self.ask(Command::Instances)
    }

    pub fn group_status(&self) -> GroupStatus {
        self.ask(Command::GroupStatus)
    }

    pub fn add_member(&self, id: u64, addr: SocketAddr) -> Result<(), GroupError> {
        self.ask(|tx| Command::AddMember(id, addr.to_string(), tx))
    }

    pub fn remove_member(&self, id: u64) -> Result<(), GroupError> {
        self.ask(|tx| Command::RemoveMember(id, tx))
    }

    pub fn hand_over(&self) -> Result<Option<u64>, GroupError> {
        self.ask(Command::HandOver)
    }

    /// Stop Raft and the executor and join the thread (the log stays).
    pub fn stop(&mut self) {
        self.thread.stop();
    }
}

/// A test node's peer side: its listener for group `SHARD` (the address
/// it bound is sent on `bound`) and, once the test sends the other
/// members' addresses, its pool of links to them. `None`: the test went
/// away first.
pub async fn join_peers(
    id: u64,
    listen: SocketAddr,
    bound: &flume::Sender<SocketAddr>,
    peers: &flume::Receiver<BTreeMap<u64, SocketAddr>>,
) -> Option<(PeerServer, Rc<PeerPool>, GroupInbox)> {
    let me = ClusterCredentials::new(CLUSTER_NAME, CLUSTER_TOKEN, id);
    let (mailbox, inbox) = group_mailbox();
    let mut directory = GroupDirectory::new();
    directory.register(SHARD as u64, mailbox).expect("register");
    let server = PeerServer::start(&listen.to_string(), me.clone(), Arc::new(directory))
        .expect("bind the peer listener");
    bound.send(server.local_addr()).expect("report the address");
    let peers = peers.recv_async().await.ok()?;
    let pool = PeerPool::new(me);
    for (peer, addr) in peers {
        pool.set_address(peer, addr.to_string());
    }
    Some((server, pool, inbox))
}

/// How a test member of group `SHARD` is set up: its log (`every_write`,
/// small segments) and snapshots in the directories given.
pub fn member_setup<'a>(
    id: u64,
    log_dir: &'a Path,
    snapshot_dir: &'a Path,
    config: Arc<Config>,
) -> MemberSetup<'a> {
    MemberSetup {
        node_id: id,
        shard: SHARD,
        log_dir,
        snapshot_dir,
        log: WalLogOptions {
            shard: SHARD,
            fsync: FsyncPolicy::EveryWrite,
            segment_size_bytes: SEGMENT_SIZE_BYTES,
            node_id: id,
        },
        allow_instance_recreate: false,
        raft_config: config,
    }
}

fn node_main(
    id: u64,
    dir: PathBuf,
    listen: SocketAddr,
    config: Arc<Config>,
    peers: flume::Receiver<BTreeMap<u64, SocketAddr>>,
    commands: flume::Receiver<Command>,
    bound: flume::Sender<SocketAddr>,
) {
    memlock::raise_memlock_limit();
    let mut rt = GlommioRuntime::new(1);
    rt.block_on(async move {
        let Some((server, pool, inbox)) = join_peers(id, listen, &bound, &peers).await else {
            return;
        };
        let (log_dir, snapshot_dir) = (dir.join("log"), dir.join("snapshots"));
        let setup = member_setup(id, &log_dir, &snapshot_dir, config);
        let (member, _report) = GroupMember::start(setup, Env::os(SHARD), &pool, inbox)
            .await
            .expect("start the member");
        while let Ok(command) = commands.recv_async().await {
            match command {
                Command::Status(reply) => {
                    let m = member.raft().metrics().borrow_watched().clone();
                    let _ = reply.send(Status {
                        state: m.state,
                        leader: m.current_leader,
                        term: m.current_term,
                        last_applied: m.last_applied.map(|l| l.index),
                        snapshot: m.snapshot.map(|l| l.index),
                        purged: m.purged.map(|l| l.index),
                    });
                }
                Command::Initialize(voters, reply) => {
                    let done = member.raft().initialize(voters).await;
                    let _ = reply.send(done.map_err(|e| e.to_string()));
                }
                Command::Propose(bytes, reply) => {
                    let proposed =
                        GlommioRuntime::timeout(STEP_TIMEOUT, member.propose(TurnRecords(bytes)))
                            .await
                            .expect("a proposal ends within the step timeout");
                    let _ = reply.send(proposed.map(|(index, _)| index));
                }
                Command::ReadBarrier(reply) => {
                    let _ = reply.send(member.read_barrier().await);
                }
                Command::Instances(reply) => {
                    let instances = member.machine().with_state(|s| {
                        s.instances
                            .iter()
                            .map(|(id, i)| (id.clone(), (i.state.to_string(), i.ctx.to_string())))
                            .collect()
                    });
                    let _ = reply.send(instances);
                }
                Command::GroupStatus(reply) => {
                    let _ = reply.send(member.status());
                }
                Command::AddMember(id, addr, reply) => {
                    let _ = reply.send(member.add_member(id, &addr).await);
                }
                Command::RemoveMember(id, reply) => {
                    let _ = reply.send(member.remove_member(id).await);
                }
                Command::HandOver(reply) => {
                    let _ = reply.send(member.hand_over_leadership().await);
                }
                Command::Stop => break,
            }
        }
        member.shutdown().await.expect("raft stops");
        drop(member);
        drop(server);
    });
}
