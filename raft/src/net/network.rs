//! openraft's network traits over the peer links: a [`PeerPool`] per
//! executor holds one [`PeerClient`] per peer node; each group on the
//! executor gets a [`PeerNetworkFactory`] from it, whose connections
//! ([`PeerLink`]) tag every request with the group id.
//!
//! Error mapping (openraft's `RPCError<C>` has no room for a remote error
//! of the RPC itself, its error type is `Infallible`):
//! * no connection, connection lost, unknown group, group stopped →
//!   `Unreachable` (openraft backs off before retrying);
//! * no answer within `RPCOption::hard_ttl` → `Timeout`;
//! * an answer that does not decode, or a `BadRequest` error → `Network`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::time::Duration;

use futures_util::future::{select, Either};
use futures_util::stream::Stream;
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{
    ErrorSource, NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotOf, VoteOf};
use openraft::{
    BasicNode, OptionalSend, RaftNetworkFactory, RaftNetworkV2, RaftTypeConfig, StorageError,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::append_pipeline::AppendPipeline;
use super::append_wire::{encode_append_within, APPEND_BODY_TARGET_BYTES};
use super::client::{CallError, PeerClient};
use super::frame::{FrameKind, FRAME_BODY_MAX_BYTES};
use super::handshake::ClusterCredentials;
use super::snapshot::{
    chunk_size_bytes, chunk_timeout, SNAPSHOT_PEER_RETRY_MS, SNAPSHOT_SIZE_MAX_BYTES,
};
use super::tls::PeerTls;
use super::wire::{
    encode_chunk, from_json, to_json, ChunkAnswer, ChunkHeader, ErrorCode, SnapshotWire,
};
use crate::log_store::WalTypes;

/// The peer links of one executor.
pub struct PeerPool {
    me: Rc<ClusterCredentials>,
    /// Every link's TLS; `None`: plain TCP.
    tls: Option<PeerTls>,
    clients: RefCell<HashMap<u64, Rc<PeerClient>>>,
    /// Addresses that win over the one in the membership (`BasicNode::addr`):
    /// a node behind NAT, or a test's fault proxy.
    overrides: RefCell<HashMap<u64, String>>,
}

impl PeerPool {
    /// Links over plain TCP.
    pub fn new(me: ClusterCredentials) -> Rc<PeerPool> {
        PeerPool::with_tls(me, None)
    }

    /// Links over TLS when `tls` is set, plain TCP when it is `None`.
    pub fn with_tls(me: ClusterCredentials, tls: Option<PeerTls>) -> Rc<PeerPool> {
        Rc::new(PeerPool {
            me: Rc::new(me),
            tls,
            clients: RefCell::new(HashMap::new()),
            overrides: RefCell::new(HashMap::new()),
        })
    }

    /// Dial `node` at `addr` instead of the address its membership entry
    /// names.
    pub fn set_address(&self, node: u64, addr: impl Into<String>) {
        let addr = addr.into();
        if let Some(client) = self.clients.borrow().get(&node) {
            client.set_addr(&addr);
        }
        self.overrides.borrow_mut().insert(node, addr);
    }

    /// The link to `target`, made on first use.
    pub fn client(&self, target: u64, membership_addr: &str) -> Rc<PeerClient> {
        let addr = self
            .overrides
            .borrow()
            .get(&target)
            .cloned()
            .unwrap_or_else(|| membership_addr.to_string());
        let mut clients = self.clients.borrow_mut();
        let client = clients.entry(target).or_insert_with(|| {
            Rc::new(PeerClient::with_tls(
                self.me.clone(),
                self.tls.clone(),
                target,
                addr.clone(),
            ))
        });
        client.set_addr(&addr);
        client.clone()
    }

    /// The network factory for group `group_id`, to pass to `Raft::new`.
    pub fn network<C, S>(self: &Rc<Self>, group_id: u64) -> PeerNetworkFactory<C, S> {
        PeerNetworkFactory {
            group_id,
            pool: self.clone(),
            types: PhantomData,
        }
    }
}

/// openraft's network factory for one group.
pub struct PeerNetworkFactory<C, S> {
    group_id: u64,
    pool: Rc<PeerPool>,
    types: PhantomData<fn() -> (C, S)>,
}

impl<C, S> RaftNetworkFactory<C> for PeerNetworkFactory<C, S>
where
    C: WalTypes,
    S: SnapshotWire,
{
    type Network = PeerLink<C, S>;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerLink<C, S> {
        PeerLink {
            group_id: self.group_id,
            me: self.pool.me.node_id,
            client: self.pool.client(target, &node.addr),
            next_transfer_id: Cell::new(1),
            types: PhantomData,
        }
    }
}

/// One group's connection to one peer (a view of the shared peer link).
pub struct PeerLink<C, S> {
    group_id: u64,
    me: u64,
    client: Rc<PeerClient>,
    next_transfer_id: Cell<u64>,
    types: PhantomData<fn() -> (C, S)>,
}

impl<C, S> PeerLink<C, S>
where
    C: WalTypes,
{
    async fn rpc<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        kind: FrameKind,
        action: RPCTypes,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<C>> {
        self.call(kind, action, &to_json(request), option).await
    }

    /// One AppendEntries call: the entries that fit one body
    /// (`APPEND_BODY_TARGET_BYTES`) go, and a follower that took them all
    /// is answered as having taken only those (`PartialSuccess`), so that
    /// openraft sends the rest next.
    pub(super) async fn send_append(
        &self,
        rpc: AppendEntriesRequest<C>,
        option: &RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        let (body, sent) = encode_append_within(&rpc, APPEND_BODY_TARGET_BYTES);
        if body.len() > FRAME_BODY_MAX_BYTES as usize {
            // Not reachable: the log store keeps every entry small enough
            // to travel alone (asserted in `append_wire`). Refused rather
            // than sent, as a frame that large cannot be.
            return Err(RPCError::Network(NetworkError::from_string(format!(
                "group {}: an entry of {} bytes cannot travel in one frame (at most \
                 {FRAME_BODY_MAX_BYTES} bytes)",
                self.group_id,
                body.len()
            ))));
        }
        let answer: AppendEntriesResponse<C> = self
            .call(
                FrameKind::AppendEntries,
                RPCTypes::AppendEntries,
                &body,
                option,
            )
            .await?;
        // The follower took the entries sent; the others go next.
        match answer {
            AppendEntriesResponse::Success if sent < rpc.entries.len() => Ok(
                AppendEntriesResponse::PartialSuccess(Some(rpc.entries[sent - 1].log_id)),
            ),
            answer => Ok(answer),
        }
    }

    /// Waits until the member's link is up (tried every
    /// `SNAPSHOT_PEER_RETRY_MS`) or openraft cancels the transfer. Failing
    /// at once made openraft read the snapshot again for its next try,
    /// about once a second for as long as the member was down. After a
    /// wait, the snapshot read before it may be old (the member would then
    /// need another): the transfer fails with a network error, which
    /// openraft retries at once, with the newest.
    async fn link_for_snapshot<F>(&self, mut cancel: Pin<&mut F>) -> Result<(), StreamingError<C>>
    where
        F: Future<Output = ReplicationClosed>,
    {
        let mut waited = false;
        loop {
            let reachable = pin!(self.client.reachable());
            match select(cancel.as_mut(), reachable).await {
                Either::Left((closed, _)) => return Err(StreamingError::Closed(closed)),
                Either::Right((Ok(()), _)) if !waited => return Ok(()),
                Either::Right((Ok(()), _)) => {
                    return Err(StreamingError::Network(NetworkError::from_string(format!(
                        "node {} is reachable again: the newest snapshot goes instead",
                        self.client.target()
                    ))))
                }
                Either::Right((Err(_), _)) => waited = true,
            }
            let wait = pin!(glommio::timer::sleep(Duration::from_millis(
                SNAPSHOT_PEER_RETRY_MS
            )));
            if let Either::Left((closed, _)) = select(cancel.as_mut(), wait).await {
                return Err(StreamingError::Closed(closed));
            }
        }
    }

    /// Sends an encoded body and decodes the JSON answer.
    async fn call<Resp: DeserializeOwned>(
        &self,
        kind: FrameKind,
        action: RPCTypes,
        body: &[u8],
        option: &RPCOption,
    ) -> Result<Resp, RPCError<C>> {
        let answer = self
            .client
            .call(kind, self.group_id, body, option.hard_ttl())
            .await
            .map_err(|err| self.rpc_error(err, action, option))?;
        from_json(&answer).map_err(|err| {
            RPCError::Network(NetworkError::from_string(format!(
                "node {}: undecodable {action} answer: {err}",
                self.client.target()
            )))
        })
    }

    fn rpc_error(&self, err: CallError, action: RPCTypes, option: &RPCOption) -> RPCError<C> {
        let target = self.client.target();
        let context = format!("group {} on node {target}: {err}", self.group_id);
        match err {
            CallError::Timeout => RPCError::Timeout(Timeout {
                action,
                id: self.me,
                target,
                timeout: option.hard_ttl(),
            }),
            CallError::NotSent(_) | CallError::Unreachable(_) => {
                RPCError::Unreachable(Unreachable::from_string(context))
            }
            CallError::Remote(body) => match body.code {
                ErrorCode::UnknownGroup | ErrorCode::GroupStopped | ErrorCode::HandshakeRefused => {
                    RPCError::Unreachable(Unreachable::from_string(context))
                }
                ErrorCode::BadRequest | ErrorCode::Timeout => {
                    RPCError::Network(NetworkError::from_string(context))
                }
            },
            CallError::Protocol(_) => RPCError::Network(NetworkError::from_string(context)),
        }
    }
}

fn streaming_error<C: RaftTypeConfig>(err: RPCError<C>) -> StreamingError<C> {
    match err {
        RPCError::Timeout(err) => StreamingError::Timeout(err),
        RPCError::Unreachable(err) => StreamingError::Unreachable(err),
        RPCError::Network(err) => StreamingError::Network(err),
        RPCError::RemoteError(err) => match err.source {},
    }
}

impl<C, S> RaftNetworkV2<C> for PeerLink<C, S>
where
    C: WalTypes,
    S: SnapshotWire,
{
    type SnapshotData = S;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        self.send_append(rpc, &option).await
    }

    fn stream_append<'s, St>(
        &'s mut self,
        input: St,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, Result<StreamAppendResult<C>, RPCError<C>>>, RPCError<C>>>
    where
        St: Stream<Item = AppendEntriesRequest<C>> + OptionalSend + Unpin + 'static,
    {
        let link: &'s Self = self;
        Box::pin(async move {
            let pipeline: BoxStream<'s, _> = Box::pin(AppendPipeline::new(link, input, option));
            Ok(pipeline)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.rpc(FrameKind::Vote, RPCTypes::Vote, &rpc, &option)
            .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.rpc(FrameKind::PreVote, RPCTypes::Vote, &rpc, &option)
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, S>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let unsendable = |why: String| {
            StreamingError::StorageError(StorageError::read_snapshot(
                Some(snapshot.meta.signature()),
                C::ErrorSource::from_string(why),
            ))
        };
        let mut cancel = pin!(cancel);
        self.link_for_snapshot(cancel.as_mut()).await?;
        let bytes = snapshot
            .snapshot
            .to_wire()
            .map_err(|err| unsendable(format!("the snapshot does not serialize: {err}")))?;
        if bytes.len() as u64 > SNAPSHOT_SIZE_MAX_BYTES {
            // Not a storage error: openraft stops a leader's Raft on one.
            // The member stays behind, and the send is tried again.
            return Err(StreamingError::Network(NetworkError::from_string(format!(
                "group {}: a snapshot of {} bytes exceeds SNAPSHOT_SIZE_MAX_BYTES",
                self.group_id,
                bytes.len()
            ))));
        }
        let chunk_bytes = chunk_size_bytes(option.snapshot_chunk_size());
        let transfer_id = self.next_transfer_id.get();
        self.next_transfer_id.set(transfer_id + 1);
        let mut offset = 0usize;
        loop {
            let end = (offset + chunk_bytes).min(bytes.len());
            let header = ChunkHeader {
                transfer_id,
                offset_bytes: offset as u64,
                total_bytes: bytes.len() as u64,
                vote,
                meta: snapshot.meta.clone(),
            };
            let body = encode_chunk(&header, &bytes[offset..end]);
            // Each chunk gets its own time; the last one the install's too.
            let last = end == bytes.len();
            let chunk_option =
                RPCOption::new(chunk_timeout(option.hard_ttl(), last, bytes.len() as u64));
            let sending = pin!(self.call::<ChunkAnswer<SnapshotResponse<C>>>(
                FrameKind::SnapshotChunk,
                RPCTypes::InstallSnapshot,
                &body,
                &chunk_option,
            ));
            let answer = match select(cancel.as_mut(), sending).await {
                Either::Left((closed, _)) => return Err(StreamingError::Closed(closed)),
                Either::Right((answer, _)) => answer.map_err(|err| {
                    // openraft sends the snapshot again without a word.
                    tracing::warn!(
                        "group {}: snapshot transfer {transfer_id} to node {} failed at \
                         {end} of {} bytes: {err}",
                        self.group_id,
                        self.client.target(),
                        bytes.len()
                    );
                    streaming_error(err)
                })?,
            };
            match (answer, last) {
                (ChunkAnswer::Installed(response), true) => return Ok(response),
                (ChunkAnswer::Received, false) => offset = end,
                (answer, last) => {
                    return Err(StreamingError::Network(NetworkError::from_string(format!(
                        "node {}: {} to a {} chunk",
                        self.client.target(),
                        match answer {
                            ChunkAnswer::Received => "received",
                            ChunkAnswer::Installed(_) => "installed",
                        },
                        if last { "last" } else { "middle" }
                    ))))
                }
            }
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<C>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<C>, RPCError<C>> {
        self.rpc(
            FrameKind::TransferLeader,
            RPCTypes::TransferLeader,
            &req,
            &option,
        )
        .await
    }
}
