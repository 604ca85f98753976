//! An in-memory network for a cluster in one executor: a member "sends" a
//! Raft RPC by calling the target member's `Raft` handle directly. A member
//! can be cut off, and then every RPC to or from it fails as `Unreachable`
//! (openraft backs off and retries, as with a dead TCP peer).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::rc::Rc;

use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotOf, VoteOf};
use openraft::{BasicNode, OptionalSend, Raft, RaftNetworkFactory, RaftNetworkV2};

use crate::mem_store::{KvSnapshot, MemStateMachine, TestConfig};

pub type Member = Raft<TestConfig, MemStateMachine>;

#[derive(Default)]
struct Wires {
    members: BTreeMap<u64, Member>,
    cut: BTreeSet<u64>,
}

/// Who is connected to whom. Cheap to clone; one per cluster.
#[derive(Clone, Default)]
pub struct Router(Rc<RefCell<Wires>>);

impl Router {
    pub fn add(&self, id: u64, member: Member) {
        self.0.borrow_mut().members.insert(id, member);
    }

    /// Every RPC to or from `id` fails from now on.
    pub fn cut(&self, id: u64) {
        self.0.borrow_mut().cut.insert(id);
    }

    /// RPCs to and from `id` flow again.
    pub fn heal(&self, id: u64) {
        self.0.borrow_mut().cut.remove(&id);
    }

    /// The network a member with id `source` is started with.
    pub fn network_of(&self, source: u64) -> MemNetwork {
        MemNetwork {
            source,
            router: self.clone(),
        }
    }

    fn reach(&self, source: u64, target: u64) -> Result<Member, Unreachable<TestConfig>> {
        let wires = self.0.borrow();
        if wires.cut.contains(&source) || wires.cut.contains(&target) {
            return Err(Unreachable::from_string(format!(
                "link {source} -> {target} is cut"
            )));
        }
        wires
            .members
            .get(&target)
            .cloned()
            .ok_or_else(|| Unreachable::from_string(format!("no member {target}")))
    }
}

/// One member's view of the network (openraft's network factory).
pub struct MemNetwork {
    source: u64,
    router: Router,
}

impl RaftNetworkFactory<TestConfig> for MemNetwork {
    type Network = MemLink;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> MemLink {
        MemLink {
            source: self.source,
            target,
            router: self.router.clone(),
        }
    }
}

/// A connection from one member to another.
pub struct MemLink {
    source: u64,
    target: u64,
    router: Router,
}

impl MemLink {
    fn peer(&self) -> Result<Member, Unreachable<TestConfig>> {
        self.router.reach(self.source, self.target)
    }
}

/// A stopped peer looks like an unreachable one to the caller.
fn stopped(err: impl std::error::Error + 'static) -> Unreachable<TestConfig> {
    Unreachable::new(&err)
}

impl RaftNetworkV2<TestConfig> for MemLink {
    type SnapshotData = KvSnapshot;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TestConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TestConfig>, RPCError<TestConfig>> {
        let peer = self.peer()?;
        let answer = peer.append_entries(rpc).await.map_err(stopped)?;
        Ok(answer)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TestConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TestConfig>, RPCError<TestConfig>> {
        let peer = self.peer()?;
        let answer = peer.vote(rpc).await.map_err(stopped)?;
        Ok(answer)
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TestConfig>,
        snapshot: SnapshotOf<TestConfig, KvSnapshot>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TestConfig>, StreamingError<TestConfig>> {
        let peer = self.peer()?;
        let answer = peer
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(stopped)?;
        Ok(answer)
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TestConfig>,
        _option: RPCOption,
    ) -> Result<TransferLeaderResponse<TestConfig>, RPCError<TestConfig>> {
        let peer = self.peer()?;
        let answer = peer.handle_transfer_leader(req).await.map_err(stopped)?;
        Ok(answer)
    }
}
