//! A cluster member on its own thread and its own glommio executor, as in
//! production: its Raft group, its peer listener and its peer links all
//! live there. The test thread drives it with commands over a channel and
//! sees only plain data (nothing Raft-typed crosses the thread boundary).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use corestate_raft::net::{
    group_mailbox, serve_group, ClusterCredentials, GroupDirectory, PeerPool, PeerServer, PeerTls,
};
use corestate_raft::GlommioRuntime;
use openraft::rt::watch::WatchReceiver;
use openraft::{AsyncRuntime, BasicNode, Config, Raft, ServerState};

use crate::mem_store::{KvSnapshot, MemLogStore, MemStateMachine, Put, TestConfig};
use crate::member_thread::MemberThread;
pub use crate::member_thread::{wait_until, STEP_TIMEOUT};
use crate::memlock;

/// The group every member serves (any id; not 0, to catch a lost id).
pub const GROUP_ID: u64 = 7;
pub const CLUSTER_NAME: &str = "peer-tests";
pub const CLUSTER_TOKEN: &str = "s3cret";

/// What the test thread can see of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub state: ServerState,
    pub current_leader: Option<u64>,
    pub term: u64,
    pub last_applied: Option<u64>,
    pub snapshot: Option<u64>,
    pub purged: Option<u64>,
}

enum Command {
    Status(flume::Sender<Status>),
    Initialize(BTreeMap<u64, BasicNode>, flume::Sender<Result<(), String>>),
    Write(Put, flume::Sender<Result<u64, String>>),
    Contents(flume::Sender<KvSnapshot>),
    TransferLeader(u64, flume::Sender<Result<(), String>>),
    Stop,
}

/// The test thread's handle on a member.
pub struct PeerMember {
    pub id: u64,
    /// The member's own peer listener.
    pub addr: SocketAddr,
    thread: MemberThread<Command>,
}

impl PeerMember {
    /// Starts member `id` with `config`; `peers` gives, for every other
    /// member, the address to dial (its listener, or a proxy in front of
    /// it), known only after every listener is bound: hence the channel.
    pub fn spawn(
        id: u64,
        config: Arc<Config>,
        peers: flume::Receiver<BTreeMap<u64, SocketAddr>>,
    ) -> PeerMember {
        PeerMember::spawn_with_tls(id, config, peers, None)
    }

    /// As [`PeerMember::spawn`], its listener and links over TLS when
    /// `tls` is set.
    pub fn spawn_with_tls(
        id: u64,
        config: Arc<Config>,
        peers: flume::Receiver<BTreeMap<u64, SocketAddr>>,
        tls: Option<PeerTls>,
    ) -> PeerMember {
        let (bound, bound_addr) = flume::bounded(1);
        let thread = MemberThread::spawn(
            format!("member-{id}"),
            || Command::Stop,
            move |inbox| member_main(id, config, peers, tls, inbox, bound),
        );
        let addr = bound_addr
            .recv_timeout(STEP_TIMEOUT)
            .expect("the member binds its listener");
        PeerMember { id, addr, thread }
    }

    fn ask<T>(&self, make: impl FnOnce(flume::Sender<T>) -> Command) -> T {
        self.thread.ask(make)
    }

    pub fn status(&self) -> Status {
        self.ask(Command::Status)
    }

    pub fn initialize(&self, members: BTreeMap<u64, BasicNode>) {
        self.ask(|tx| Command::Initialize(members, tx))
            .expect("initialize");
    }

    /// Writes through this member once; the log index, or why not.
    pub fn try_write(&self, key: &str, value: &str) -> Result<u64, String> {
        let put = Put {
            key: key.to_string(),
            value: value.to_string(),
        };
        self.ask(|tx| Command::Write(put, tx))
    }

    /// Writes through this member, retrying while it is not (yet) a leader
    /// with a quorum lease; returns the log index.
    pub fn write(&self, key: &str, value: &str) -> u64 {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            match self.try_write(key, value) {
                Ok(index) => return index,
                Err(err) if Instant::now() < deadline => {
                    let _ = err;
                    thread::sleep(Duration::from_millis(20));
                }
                Err(err) => panic!("member {} refused {key}: {err}", self.id),
            }
        }
    }

    pub fn contents(&self) -> KvSnapshot {
        self.ask(Command::Contents)
    }

    pub fn transfer_leader(&self, to: u64) {
        self.ask(|tx| Command::TransferLeader(to, tx))
            .expect("transfer leadership");
    }

    /// Stops the member's Raft, listener and executor, and joins its thread.
    pub fn stop(&mut self) {
        self.thread.stop();
    }
}

fn member_main(
    id: u64,
    config: Arc<Config>,
    peers: flume::Receiver<BTreeMap<u64, SocketAddr>>,
    tls: Option<PeerTls>,
    commands: flume::Receiver<Command>,
    bound: flume::Sender<SocketAddr>,
) {
    memlock::raise_memlock_limit();
    let mut rt = GlommioRuntime::new(1);
    rt.block_on(async move {
        let me = ClusterCredentials::new(CLUSTER_NAME, CLUSTER_TOKEN, id);
        // The group's mailbox, registered before the listener starts.
        let (mailbox, inbox) = group_mailbox();
        let mut directory = GroupDirectory::new();
        directory.register(GROUP_ID, mailbox).expect("register");
        let server =
            PeerServer::start_with_tls("127.0.0.1:0", me.clone(), Arc::new(directory), tls.clone())
                .expect("bind the peer listener");
        bound.send(server.local_addr()).expect("report the address");

        let Ok(peers) = peers.recv_async().await else {
            return;
        };
        let pool = PeerPool::with_tls(me, tls);
        for (peer, addr) in peers {
            pool.set_address(peer, addr.to_string());
        }
        let state_machine = MemStateMachine::default();
        let raft: Raft<TestConfig, MemStateMachine> = Raft::new(
            id,
            config,
            pool.network(GROUP_ID),
            MemLogStore::default(),
            state_machine.clone(),
        )
        .await
        .expect("start raft");
        let serving = glommio::spawn_local(serve_group(raft.clone(), inbox));

        while let Ok(command) = commands.recv_async().await {
            match command {
                Command::Status(reply) => {
                    let m = raft.metrics().borrow_watched().clone();
                    let _ = reply.send(Status {
                        state: m.state,
                        current_leader: m.current_leader,
                        term: m.current_term,
                        last_applied: m.last_applied.map(|id| id.index),
                        snapshot: m.snapshot.map(|id| id.index),
                        purged: m.purged.map(|id| id.index),
                    });
                }
                Command::Initialize(members, reply) => {
                    let _ = reply.send(raft.initialize(members).await.map_err(|e| e.to_string()));
                }
                Command::Write(put, reply) => {
                    let write = GlommioRuntime::timeout(STEP_TIMEOUT, raft.client_write(put));
                    let answer = match write.await {
                        Ok(Ok(answer)) => Ok(answer.log_id.index),
                        Ok(Err(err)) => Err(err.to_string()),
                        Err(elapsed) => Err(elapsed.to_string()),
                    };
                    let _ = reply.send(answer);
                }
                Command::Contents(reply) => {
                    let _ = reply.send(state_machine.contents());
                }
                Command::TransferLeader(to, reply) => {
                    let done = raft.trigger().transfer_leader(to).await;
                    let _ = reply.send(done.map_err(|e| e.to_string()));
                }
                Command::Stop => break,
            }
        }
        raft.shutdown().await.expect("raft stops");
        drop(serving);
        drop(server);
    });
}
