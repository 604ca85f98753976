//! Where the listener finds each group: the one explicit cross-executor hop
//! of the peer transport.
//!
//! The peer listener runs on one executor; each group's `Raft` runs on its
//! shard's executor. A group registers a bounded flume mailbox in the
//! [`GroupDirectory`]; [`serve_group`], running on the group's own
//! executor, takes each [`GroupCall`] from it, calls the `Raft` handle
//! there and sends the answer back on the call's reply channel. Only bytes
//! cross the hop (the frame body in, the answer body out), so the Raft
//! types never need to be `Send`, and decoding happens on the group's
//! core, not the listener's.
//!
//! The directory is built before the listener starts and never changes
//! after (a node's shard count is fixed), so the listener reads it with no
//! lock.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use futures_channel::oneshot;
use openraft::storage::RaftStateMachine;
use openraft::{Raft, Snapshot};
use serde::Serialize;

use super::append_wire::decode_append;
use super::frame::FrameKind;
use super::snapshot::{ChunkOutcome, SnapshotReassembler};
use super::wire::{
    decode_chunk, from_json, to_json, ChunkAnswer, ErrorBody, ErrorCode, SnapshotWire,
};
use crate::log_store::WalTypes;

/// Calls queued for one group before the listener waits to queue more.
pub const GROUP_MAILBOX_DEPTH: usize = 256;

/// Calls one group serves at once (each is a glommio task on the group's
/// executor awaiting its `Raft` handle).
pub const GROUP_CALLS_IN_FLIGHT_MAX: usize = 256;

/// What a group answers: the answer frame's body, or an error.
pub type GroupAnswer = Result<Vec<u8>, ErrorBody>;

/// What a group serves beside Raft's calls: `ShardCall` frames (client
/// operations forwarded to the leader, `shard_group::forward`), given the
/// frame's body. The returned future must have done everything that
/// orders the call (queued it) before it is first polled's first await.
pub type ShardCalls = Rc<dyn Fn(Vec<u8>) -> Pin<Box<dyn Future<Output = GroupAnswer>>>>;

/// One request on its way to a group, with the channel for its answer.
pub struct GroupCall {
    /// The node that sent it (from the connection's handshake).
    pub from_node: u64,
    pub kind: FrameKind,
    pub body: Vec<u8>,
    pub reply: oneshot::Sender<GroupAnswer>,
}

/// The sending side of a group's mailbox (held by the directory).
#[derive(Clone)]
pub struct GroupMailbox(flume::Sender<GroupCall>);

impl GroupMailbox {
    /// Queues a call, waiting while the mailbox is full; `Err` gives the
    /// call back when the group no longer serves its mailbox.
    pub async fn send(&self, call: GroupCall) -> Result<(), GroupCall> {
        self.0
            .send_async(call)
            .await
            .map_err(|flume::SendError(call)| call)
    }
}

/// The receiving side, served on the group's executor by [`serve_group`].
pub struct GroupInbox(flume::Receiver<GroupCall>);

/// A new mailbox of [`GROUP_MAILBOX_DEPTH`] calls.
pub fn group_mailbox() -> (GroupMailbox, GroupInbox) {
    let (tx, rx) = flume::bounded(GROUP_MAILBOX_DEPTH);
    (GroupMailbox(tx), GroupInbox(rx))
}

/// Group id → mailbox, for one node.
#[derive(Clone, Default)]
pub struct GroupDirectory {
    groups: HashMap<u64, GroupMailbox>,
}

/// A group id registered twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlreadyRegistered(pub u64);

impl fmt::Display for AlreadyRegistered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "group {} is already registered", self.0)
    }
}

impl std::error::Error for AlreadyRegistered {}

impl GroupDirectory {
    pub fn new() -> GroupDirectory {
        GroupDirectory::default()
    }

    pub fn register(
        &mut self,
        group_id: u64,
        mailbox: GroupMailbox,
    ) -> Result<(), AlreadyRegistered> {
        if self.groups.contains_key(&group_id) {
            return Err(AlreadyRegistered(group_id));
        }
        self.groups.insert(group_id, mailbox);
        Ok(())
    }

    pub fn mailbox(&self, group_id: u64) -> Option<&GroupMailbox> {
        self.groups.get(&group_id)
    }
}

/// Serves a group's mailbox on the calling executor (the group's own)
/// until every sender is gone. Run it with `glommio::spawn_local`; dropping
/// that task stops it.
pub async fn serve_group<C, SM>(raft: Raft<C, SM>, inbox: GroupInbox)
where
    C: WalTypes,
    SM: RaftStateMachine<C>,
    SM::SnapshotData: SnapshotWire,
{
    serve_group_with(raft, inbox, None).await
}

/// As [`serve_group`], also serving `ShardCall` frames with `shard_calls`
/// (refused as bad requests without it).
pub async fn serve_group_with<C, SM>(
    raft: Raft<C, SM>,
    inbox: GroupInbox,
    shard_calls: Option<ShardCalls>,
) where
    C: WalTypes,
    SM: RaftStateMachine<C>,
    SM::SnapshotData: SnapshotWire,
{
    let reassembler = Rc::new(RefCell::new(SnapshotReassembler::default()));
    let slots = Rc::new(glommio::sync::Semaphore::new(
        GROUP_CALLS_IN_FLIGHT_MAX as u64,
    ));
    while let Ok(call) = inbox.0.recv_async().await {
        let Ok(slot) = slots.acquire_static_permit(1).await else {
            return;
        };
        if call.kind == FrameKind::ShardCall {
            // Called here, in arrival order, so that it queues the
            // operation before the next call is taken (see the type).
            let answer = match &shard_calls {
                Some(serve) => serve(call.body),
                None => Box::pin(async { Err(bad_request("no shard calls served here")) }),
            };
            glommio::spawn_local(async move {
                let _ = call.reply.send(answer.await);
                drop(slot);
            })
            .detach();
            continue;
        }
        let (raft, reassembler) = (raft.clone(), reassembler.clone());
        glommio::spawn_local(async move {
            let answer =
                answer_call(&raft, &reassembler, call.from_node, call.kind, &call.body).await;
            // The listener may have given up on the call (connection gone).
            let _ = call.reply.send(answer);
            drop(slot);
        })
        .detach();
    }
}

fn bad_request(why: impl fmt::Display) -> ErrorBody {
    ErrorBody::new(ErrorCode::BadRequest, why.to_string())
}

fn answered<T: Serialize, E: fmt::Display>(result: Result<T, E>) -> GroupAnswer {
    result
        .map(|answer| to_json(&answer))
        .map_err(|err| ErrorBody::new(ErrorCode::GroupStopped, err.to_string()))
}

async fn answer_call<C, SM>(
    raft: &Raft<C, SM>,
    reassembler: &RefCell<SnapshotReassembler>,
    from_node: u64,
    kind: FrameKind,
    body: &[u8],
) -> GroupAnswer
where
    C: WalTypes,
    SM: RaftStateMachine<C>,
    SM::SnapshotData: SnapshotWire,
{
    match kind {
        FrameKind::AppendEntries => {
            let request = decode_append::<C>(body).map_err(bad_request)?;
            answered(raft.append_entries(request).await)
        }
        FrameKind::Vote => {
            let request = from_json(body).map_err(bad_request)?;
            answered(raft.vote(request).await)
        }
        FrameKind::PreVote => {
            let request = from_json(body).map_err(bad_request)?;
            answered(raft.pre_vote(request).await)
        }
        FrameKind::TransferLeader => {
            let request = from_json(body).map_err(bad_request)?;
            answered(raft.handle_transfer_leader(request).await)
        }
        FrameKind::SnapshotChunk => {
            let (header, data) = decode_chunk(body).map_err(bad_request)?;
            // No borrow of the reassembler is held across the install.
            let outcome = reassembler
                .borrow_mut()
                .accept(from_node, header, data)
                .map_err(bad_request)?;
            match outcome {
                ChunkOutcome::Partial => Ok(to_json(&ChunkAnswer::<()>::Received)),
                ChunkOutcome::Complete { vote, meta, bytes } => {
                    let data = SM::SnapshotData::from_wire(bytes).map_err(bad_request)?;
                    let snapshot = Snapshot {
                        meta,
                        snapshot: data,
                    };
                    answered(
                        raft.install_full_snapshot(vote, snapshot)
                            .await
                            .map(ChunkAnswer::Installed),
                    )
                }
            }
        }
        other => Err(bad_request(format!("{other:?} is not a request"))),
    }
}
