//! The follower's side of forwarding: the operations a shard loop forwards
//! in one turn travel to the leader together, as one `ShardCall` frame
//! (`forward_ops.rs` lays it out), and come back as one body of answers
//! (`forward_answers.rs`).
//!
//! Why: a peer connection carries at most `PEER_REQUESTS_IN_FLIGHT_MAX`
//! calls at once. Forwarded one call per operation, a follower could keep
//! only that many client requests at the leader, so its throughput was
//! that many divided by the leader's commit latency — measured, apply
//! 16×16 durable through a follower: 19,300 ops/s against the leader's
//! ~80,000, with 64 calls in flight (the limit raised to 512, 54,800). A
//! turn's operations in one call lift that cap without raising the limit,
//! and cost one frame, one checksum and one write per turn instead of per
//! operation.
//!
//! * **Order.** Operations join the open batch in the order the loop
//!   forwards them; a batch is sent by a task spawned when it is sealed,
//!   and tasks start in the order they were spawned, so batches leave in
//!   order too (the leader queues a batch's operations in array order
//!   before it waits for any of them: `forward.rs`).
//! * **When.** A batch is sealed once the loop's turn yields (its flush
//!   task runs then), or earlier when the next operation would take it
//!   past [`FORWARD_BATCH_OPS_MAX`] or [`FORWARD_BATCH_BYTES_MAX`], goes to
//!   another leader, or must go alone: only client operations are batched;
//!   batch parts' messages and the rest travel one per call
//!   (`Forwarded::goes_alone` says why).
//! * **Failure.** A batch fails as a whole, as one forwarded operation did:
//!   not sent → every operation gets the "leader unreachable" refusal;
//!   sent and no answer → "outcome unknown". Both are retryable.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use shards::shard::group_link::LinkError;
use shards::shard::ShardMsg;

use super::forward::{split, ReplyTarget};
use super::forward_answers::decode_answers;
use super::forward_ops::{encode_op, seal_ops, start_ops};
use crate::net::frame::{FrameKind, FRAME_BODY_MAX_BYTES};
use crate::net::{CallError, PeerPool};

/// Operations in one forwarded batch, at most: the leader answers them in
/// one frame, so this bounds that frame's count of answers.
pub const FORWARD_BATCH_OPS_MAX: usize = 256;
/// Bytes of encoded operations in one forwarded batch, at most (an
/// operation larger than this goes alone; the frame limit still applies).
pub const FORWARD_BATCH_BYTES_MAX: usize = 1 << 20;

/// Operations for one leader, gathered during a turn.
struct Batch {
    /// Which batch this is (a flush task seals only its own).
    seq: u64,
    leader: u64,
    leader_addr: String,
    /// The operations encoded so far, after room for their count.
    body: Vec<u8>,
    targets: Vec<ReplyTarget>,
    timeout: Duration,
}

impl Batch {
    fn has_room(&self, op_bytes: usize) -> bool {
        self.targets.len() < FORWARD_BATCH_OPS_MAX
            && self.body.len() + op_bytes <= FORWARD_BATCH_BYTES_MAX
    }

    fn push(&mut self, op: &[u8], target: ReplyTarget, timeout: Duration) {
        self.body.extend_from_slice(op);
        self.targets.push(target);
        self.timeout = self.timeout.max(timeout);
    }
}

/// A shard's forwarding on this executor: its open batch and the peer
/// links the batches travel on.
pub struct ForwardQueue {
    peers: Rc<PeerPool>,
    shard: usize,
    open: Rc<RefCell<Option<Batch>>>,
    next_seq: Cell<u64>,
    /// Operations forwarded since start (REPLICATION_STATUS).
    ops_forwarded: Cell<u64>,
}

impl ForwardQueue {
    pub fn new(peers: Rc<PeerPool>, shard: usize) -> ForwardQueue {
        ForwardQueue {
            peers,
            shard,
            open: Rc::new(RefCell::new(None)),
            next_seq: Cell::new(0),
            ops_forwarded: Cell::new(0),
        }
    }

    /// (operations forwarded, batches they travelled in) since start.
    pub fn counts(&self) -> (u64, u64) {
        (self.ops_forwarded.get(), self.next_seq.get())
    }

    /// Forward `msg` to `leader` (reached at `leader_addr`, or the address
    /// the pool has for it); its answer goes where `msg` said. `Err` gives
    /// back a message that cannot be forwarded.
    pub fn forward(
        &self,
        leader: u64,
        leader_addr: &str,
        msg: ShardMsg,
    ) -> Result<(), Box<ShardMsg>> {
        let (op, target) = split(msg)?;
        let encoded = encode_op(&op);
        let (timeout, alone) = (op.timeout(), op.goes_alone());
        let fits = self
            .open
            .borrow()
            .as_ref()
            .is_some_and(|b| b.leader == leader && !alone && b.has_room(encoded.len()));
        if !fits {
            self.seal();
            self.open_batch(leader, leader_addr);
        }
        if let Some(batch) = self.open.borrow_mut().as_mut() {
            batch.push(&encoded, target, timeout);
        }
        self.ops_forwarded.set(self.ops_forwarded.get() + 1);
        if alone {
            self.seal();
        }
        Ok(())
    }

    /// A new open batch, and the task that seals it once the turn yields.
    fn open_batch(&self, leader: u64, leader_addr: &str) {
        let seq = self.next_seq.get();
        self.next_seq.set(seq + 1);
        *self.open.borrow_mut() = Some(Batch {
            seq,
            leader,
            leader_addr: leader_addr.to_string(),
            body: start_ops(),
            targets: Vec::new(),
            timeout: Duration::ZERO,
        });
        let (open, peers, shard) = (self.open.clone(), self.peers.clone(), self.shard);
        glommio::spawn_local(async move {
            super::link::yield_once().await;
            // Taken in a statement of its own, so that the borrow ends
            // before the send waits (the loop forwards into the next
            // batch meanwhile). `None`: sealed already (it filled, or an
            // operation went alone).
            let batch = take_if_seq(&open, seq);
            if let Some(batch) = batch {
                send(&peers, shard, batch).await;
            }
        })
        .detach();
    }

    /// Send the open batch now, if there is one.
    fn seal(&self) {
        let Some(batch) = self.open.borrow_mut().take() else {
            return;
        };
        let (peers, shard) = (self.peers.clone(), self.shard);
        glommio::spawn_local(async move { send(&peers, shard, batch).await }).detach();
    }
}

/// The open batch, if it is batch `seq`.
fn take_if_seq(open: &RefCell<Option<Batch>>, seq: u64) -> Option<Batch> {
    let mut open = open.borrow_mut();
    match open.as_ref() {
        Some(b) if b.seq == seq => open.take(),
        _ => None,
    }
}

/// One call to the leader with the batch; each answer to its operation.
async fn send(peers: &Rc<PeerPool>, shard: usize, mut batch: Batch) {
    if batch.targets.is_empty() {
        return;
    }
    seal_ops(&mut batch.body, batch.targets.len());
    let leader = batch.leader;
    if batch.body.len() > FRAME_BODY_MAX_BYTES as usize {
        // One operation larger than a peer frame (it went alone): it
        // cannot travel, was not sent, and a retry would not help.
        let why = format!(
            "an operation of {} bytes cannot be forwarded to the leader (peer frames \
             hold at most {FRAME_BODY_MAX_BYTES} bytes)",
            batch.body.len()
        );
        return fail_all(batch.targets, LinkError::Rejected(why));
    }
    // The leader may have run it: as in a failover, the client retries.
    let unknown = || LinkError::OutcomeUnknown {
        leader: Some(leader),
    };
    let client = peers.client(leader, &batch.leader_addr);
    let called = client
        .call(
            FrameKind::ShardCall,
            shard as u64,
            &batch.body,
            batch.timeout,
        )
        .await;
    let failed = match called {
        Ok(answer) => match decode_answers(&answer) {
            Ok(answers) if answers.len() == batch.targets.len() => {
                for (target, answer) in batch.targets.into_iter().zip(answers) {
                    match answer {
                        Ok(answer) => target.deliver(answer),
                        // The leader could not queue it (its shard
                        // stopped) or not answer it in the frame.
                        Err(_) => target.fail(unknown().to_engine_error()),
                    }
                }
                return;
            }
            _ => unknown(),
        },
        // No connection to the leader: the batch never left.
        Err(CallError::NotSent(why)) => LinkError::LeaderUnreachable { leader, why },
        // The trip failed after the batch left (the leader went away, a
        // timeout): the leader may have run any of it.
        Err(_) => unknown(),
    };
    fail_all(batch.targets, failed);
}

/// Every operation of a batch gets `failed`.
fn fail_all(targets: Vec<ReplyTarget>, failed: LinkError) {
    let error = failed.to_engine_error();
    for target in targets {
        target.fail(error.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::super::forward::Forwarded;
    use super::super::forward_ops::decode_ops;
    use super::super::forward_wire::WireCommand;
    use super::*;

    fn batch() -> Batch {
        Batch {
            seq: 0,
            leader: 2,
            leader_addr: String::new(),
            body: start_ops(),
            targets: Vec::new(),
            timeout: Duration::ZERO,
        }
    }

    #[test]
    fn a_batch_holds_its_operations_in_order_and_waits_the_longest() {
        let mut b = batch();
        for (i, t) in [3u64, 1, 2].into_iter().enumerate() {
            let op = Forwarded::Exec(WireCommand::Get {
                instance_id: format!("i{i}"),
            });
            b.push(
                &encode_op(&op),
                ReplyTarget::Nobody,
                Duration::from_millis(t),
            );
        }
        seal_ops(&mut b.body, b.targets.len());
        let ids: Vec<String> = decode_ops(&b.body)
            .expect("operations")
            .into_iter()
            .map(|op| match op {
                Forwarded::Exec(WireCommand::Get { instance_id }) => instance_id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, vec!["i0", "i1", "i2"]);
        assert_eq!(b.timeout, Duration::from_millis(3), "the longest wait");
    }

    #[test]
    fn a_batch_has_room_up_to_its_count_and_byte_limits() {
        let mut b = batch();
        for _ in 0..FORWARD_BATCH_OPS_MAX {
            assert!(b.has_room(2));
            b.push(b"{}", ReplyTarget::Nobody, Duration::ZERO);
        }
        assert!(!b.has_room(2), "full by count");

        let b = batch();
        let head = b.body.len();
        assert!(b.has_room(FORWARD_BATCH_BYTES_MAX - head));
        assert!(!b.has_room(FORWARD_BATCH_BYTES_MAX - head + 1));
    }
}
