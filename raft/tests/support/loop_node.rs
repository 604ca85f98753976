//! A member as the server will run it with its shard: on its own thread
//! and glommio executor, the group member (WAL log store, `every_write`,
//! peers over TCP) and the shard loop that keeps the state
//! (`Shard::open_member`, `run_member`), fed by the member's deliveries.
//! The test thread sends the shard the server's own messages (`ShardMsg`)
//! and reads their answers. A stopped node starts again on its directory
//! and address (a restart).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corestate_raft::shard_group::start_loop_member;
use corestate_raft::GlommioRuntime;
use openraft::rt::watch::WatchReceiver;
use openraft::{AsyncRuntime, BasicNode, Config, ServerState};
use serde_json::Value;
use shards::env::Env;
use shards::error::{EngineError, EngineResult};
use shards::machine::definition::parse_definition;
use shards::shard::group_link::FAILOVER_ERROR_CODE;
use shards::shard::{Command, ReplyTo, Shard, ShardConfig, ShardMsg};
use shards::wal::{Frontier, FsyncPolicy};

use crate::group_node::{join_peers, member_setup, SEGMENT_SIZE_BYTES};
use crate::member_thread::MemberThread;
pub use crate::member_thread::{wait_until, STEP_TIMEOUT};
use crate::memlock;
use crate::turns::SHARD;

pub use crate::group_node::CLUSTER_NAME;

/// What the test thread sees of a member's Raft.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub state: ServerState,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_applied: Option<u64>,
    pub snapshot: Option<u64>,
}

enum Control {
    Status(flume::Sender<Status>),
    Initialize(BTreeMap<u64, BasicNode>, flume::Sender<Result<(), String>>),
    Stop,
}

pub struct LoopNode {
    pub id: u64,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    shard: flume::Sender<ShardMsg>,
    thread: MemberThread<Control>,
}

impl LoopNode {
    pub fn start(
        id: u64,
        dir: PathBuf,
        listen: SocketAddr,
        config: Arc<Config>,
        peers: flume::Receiver<BTreeMap<u64, SocketAddr>>,
    ) -> LoopNode {
        let (bound, bound_addr) = flume::bounded(1);
        let (shard, mailbox) = flume::unbounded();
        let node_dir = dir.clone();
        let to_shard = shard.clone();
        let thread = MemberThread::spawn(
            format!("loop-node-{id}"),
            || Control::Stop,
            move |inbox| {
                node_main(
                    id, node_dir, listen, config, peers, inbox, bound, mailbox, to_shard,
                )
            },
        );
        let addr = bound_addr
            .recv_timeout(STEP_TIMEOUT)
            .expect("the node binds its listener");
        LoopNode {
            id,
            addr,
            dir,
            shard,
            thread,
        }
    }

    pub fn status(&self) -> Status {
        self.thread.ask(Control::Status)
    }

    pub fn initialize(&self, voters: BTreeMap<u64, BasicNode>) {
        self.thread
            .ask(|tx| Control::Initialize(voters, tx))
            .expect("initialize");
    }

    /// Run `cmd` on this node's shard; its answer.
    pub fn exec(&self, cmd: Command) -> EngineResult<Value> {
        let mut answers = self.exec_queued(vec![cmd], false);
        answers.pop().expect("one answer")
    }

    /// Send every one of `cmds` to this node's shard before awaiting any
    /// answer, so that its loop finds them queued together; their answers
    /// in order. `forwarded`: sent as a leader's forward server sends what
    /// a follower forwarded (run or refused, never forwarded again).
    pub fn exec_queued(&self, cmds: Vec<Command>, forwarded: bool) -> Vec<EngineResult<Value>> {
        let answers: Vec<_> = cmds
            .into_iter()
            .map(|cmd| {
                let (tx, rx) = flume::bounded(1);
                let msg = ShardMsg::Exec {
                    cmd,
                    reply: ReplyTo::internal(tx, 0),
                };
                let msg = if forwarded {
                    ShardMsg::Forwarded(Box::new(msg))
                } else {
                    msg
                };
                self.shard.send(msg).expect("the shard runs");
                rx
            })
            .collect();
        answers
            .into_iter()
            .map(|rx| {
                let reply = rx.recv_timeout(STEP_TIMEOUT).expect("the shard answers");
                reply
                    .body
                    .map(|b| serde_json::from_slice(&b).expect("an answer is JSON"))
            })
            .collect()
    }

    /// Put `msg` in this node's shard's mailbox (its answer comes on the
    /// channel it carries).
    pub fn send(&self, msg: ShardMsg) {
        self.shard.send(msg).expect("the shard runs");
    }

    /// Install the machine `name` v1 on this node's shard.
    pub fn install(&self, name: &str, definition: &Value) -> EngineResult<bool> {
        let def = Arc::new(parse_definition(name, 1, definition).expect("a valid definition"));
        let (done, answer) = flume::bounded(1);
        self.shard
            .send(ShardMsg::InstallMachine {
                def,
                raw_definition: Arc::new(definition.clone()),
                done,
            })
            .expect("the shard runs");
        answer
            .recv_timeout(STEP_TIMEOUT)
            .expect("the shard answers")
    }

    /// The shard answers a message that needs no leader.
    pub fn shard_answers(&self) -> bool {
        let (done, stats) = flume::bounded(1);
        self.shard.send(ShardMsg::Stats { done }).is_ok()
            && stats.recv_timeout(STEP_TIMEOUT).is_ok()
    }

    pub fn stop(&mut self) {
        self.thread.stop();
    }
}

/// Whether an answer is the retryable refusal of a node that cannot serve
/// now (not the leader, no quorum, outcome unknown).
pub fn retryable(e: &EngineError) -> bool {
    e.code == FAILOVER_ERROR_CODE && e.code.retryable()
}

/// Run `ask` on whichever running node leads, retrying the retryable
/// refusals of a failover, until `STEP_TIMEOUT`.
pub fn on_leader<T>(
    nodes: &[&LoopNode],
    ask: impl Fn(&LoopNode) -> EngineResult<T>,
) -> EngineResult<T> {
    let started = Instant::now();
    loop {
        let leader = nodes
            .iter()
            .find(|n| n.status().state == ServerState::Leader);
        if let Some(node) = leader {
            match ask(node) {
                Err(e) if retryable(&e) && started.elapsed() < STEP_TIMEOUT => {}
                answer => return answer,
            }
        }
        assert!(started.elapsed() < STEP_TIMEOUT, "no leader answered");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[allow(clippy::too_many_arguments)]
fn node_main(
    id: u64,
    dir: PathBuf,
    listen: SocketAddr,
    config: Arc<Config>,
    peers: flume::Receiver<BTreeMap<u64, SocketAddr>>,
    control: flume::Receiver<Control>,
    bound: flume::Sender<SocketAddr>,
    mailbox: flume::Receiver<ShardMsg>,
    to_shard: flume::Sender<ShardMsg>,
) {
    memlock::raise_memlock_limit();
    let mut rt = GlommioRuntime::new(1);
    rt.block_on(async move {
        let Some((server, pool, inbox)) = join_peers(id, listen, &bound, &peers).await else {
            return;
        };
        let (log_dir, snapshot_dir) = (dir.join("log"), dir.join("snapshots"));
        let setup = member_setup(id, &log_dir, &snapshot_dir, config);
        let (member, link, deliveries, _report) =
            start_loop_member(setup, Env::os(SHARD), &pool, inbox, to_shard.clone())
                .await
                .expect("start the member");
        let cfg = ShardConfig {
            id: SHARD,
            auto_compaction: None,
            dir: dir.join("shard"),
            fsync: FsyncPolicy::EveryWrite,
            segment_size_bytes: SEGMENT_SIZE_BYTES,
            allow_instance_recreate: false,
            salvage: false,
        };
        let shard = Shard::open_member(
            &cfg,
            Env::os(SHARD),
            Frontier::new(),
            Arc::new(AtomicU64::new(0)),
            link,
            deliveries,
        );
        let running = glommio::spawn_local(shard.run_member(mailbox, None));
        while let Ok(command) = control.recv_async().await {
            match command {
                Control::Status(reply) => {
                    let m = member.raft().metrics().borrow_watched().clone();
                    let _ = reply.send(Status {
                        state: m.state,
                        leader: m.current_leader,
                        term: m.current_term,
                        last_applied: m.last_applied.map(|l| l.index),
                        snapshot: m.snapshot.map(|l| l.index),
                    });
                }
                Control::Initialize(voters, reply) => {
                    let done = member.raft().initialize(voters).await;
                    let _ = reply.send(done.map_err(|e| e.to_string()));
                }
                Control::Stop => break,
            }
        }
        let (done, stopped) = flume::bounded(1);
        // The test thread holds a sender too: stop the loop by message.
        let _ = to_shard.send(ShardMsg::Shutdown { done });
        let _ = stopped.recv_async().await;
        running.await;
        member.shutdown().await.expect("raft stops");
        drop(member);
        drop(server);
    });
}
