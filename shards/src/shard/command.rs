//! The typed messages a shard's mailbox carries, and how it answers.
//!
//! Every message travels with its own reply target (a "frame" in the Iggy
//! sense): connection requests answer into the connection's reply channel
//! tagged with the request's sequence number, internal fan-out messages
//! answer into a one-shot channel of their own.

use std::sync::Arc;

use serde_json::Value;

use super::budget::{Charge, ResponseBudget};
use super::committed_ids::Verdict;
use crate::error::EngineResult;
use crate::machine::definition::MachineDef;

#[derive(Clone)]
pub struct CreateInstance {
    pub instance_id: String,
    pub machine: String,
    pub version: u32,
    pub initial_ctx: Value,
    pub idempotency_key: Option<String>,
}

#[derive(Clone)]
pub struct ApplyEvent {
    pub instance_id: String,
    pub event: String,
    pub payload: Value,
    pub expected_state: Option<String>,
    pub expected_wal_offset: Option<u64>,
    pub event_id: Option<String>,
    pub idempotency_key: Option<String>,
}

#[derive(Clone)]
pub struct DeleteInstance {
    pub instance_id: String,
    pub idempotency_key: Option<String>,
}

/// Requests about one instance, routed to its owner shard. Cloned only
/// to run a batch part again that a member's turn had no room for
/// (`participant.rs`).
#[derive(Clone)]
pub enum Command {
    Create(CreateInstance),
    Apply(ApplyEvent),
    Delete(DeleteInstance),
    Get { instance_id: String },
}

impl Command {
    pub fn instance_id(&self) -> &str {
        match self {
            Command::Create(c) => &c.instance_id,
            Command::Apply(c) => &c.instance_id,
            Command::Delete(c) => &c.instance_id,
            Command::Get { instance_id } => instance_id,
        }
    }
}

/// The answer to one connection request: the `result` object as JSON bytes,
/// or an error, and the bytes it holds of its client's budget.
pub struct Reply {
    pub seq: u64,
    pub body: EngineResult<Vec<u8>>,
    pub charge: Option<Charge>,
    /// Bytes of this answer's frame already written to the client through
    /// a lease (`AnswerLease`); the connection writes only the rest.
    pub sent_bytes: usize,
}

/// A connection's socket lent for the answer of its one request in flight:
/// whoever produces the answer — usually the owning shard, on its own core
/// — writes it to the client itself, so the connection's core is not woken
/// just to copy a few hundred bytes out (issue 13: that wake cost 10–20 µs
/// of CPU per request at one client, a fifth of a GET's;
/// bench-results/2026-12-06/direct-answer-prototype/). The connection
/// implements it (`src/server/connection/lease.rs`): this crate does not
/// know how answers are framed.
pub trait AnswerLease: Send + Sync {
    /// Write the answer's frame to the client without blocking.
    fn write(&self, body: &EngineResult<Vec<u8>>) -> LeaseWrite;
}

/// What became of an answer offered to its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseWrite {
    /// The whole frame went out: nothing goes through the reply channel.
    Written,
    /// The lease was no longer lent, or the socket took only part of the
    /// frame (`sent_bytes` of it, possibly none): the answer goes through
    /// the reply channel as usual and the connection writes the rest.
    Rest { sent_bytes: usize },
}

/// Where a connection request's answer goes.
pub struct ReplyTo {
    pub tx: flume::Sender<Reply>,
    pub seq: u64,
    /// The client's answer budget (`budget.rs`); `None` for internal asks.
    pub budget: Option<Arc<ResponseBudget>>,
    /// The connection lent its socket for this answer (`AnswerLease`).
    pub lease: Option<Arc<dyn AnswerLease>>,
}

impl ReplyTo {
    /// An internal ask: nobody's budget.
    pub fn internal(tx: flume::Sender<Reply>, seq: u64) -> Self {
        ReplyTo {
            tx,
            seq,
            budget: None,
            lease: None,
        }
    }

    /// Send the answer, charging it to the client's budget. A send fails
    /// only when the asker is gone: there is nobody left to tell.
    pub fn send(self, body: EngineResult<Vec<u8>>) {
        let charge = self.charge_for(&body);
        self.deliver(body, charge);
    }

    /// Send an answer already charged: through the lease when one is lent
    /// (a written answer holds no budget: its charge is given back here),
    /// else — or for the rest the socket did not take — through the reply
    /// channel. Every answer to a connection request leaves through here.
    pub fn deliver(mut self, body: EngineResult<Vec<u8>>, charge: Option<Charge>) {
        let mut sent_bytes = 0;
        if let Some(lease) = self.lease.take() {
            match lease.write(&body) {
                LeaseWrite::Written => return,
                LeaseWrite::Rest { sent_bytes: n } => sent_bytes = n,
            }
        }
        let _ = self.tx.send(Reply {
            seq: self.seq,
            body,
            charge,
            sent_bytes,
        });
    }

    /// The charge an answer takes (`None`: uncharged or no budget).
    pub fn charge_for(&self, body: &EngineResult<Vec<u8>>) -> Option<Charge> {
        let len = body.as_ref().map_or(0, Vec::len);
        self.budget.as_ref().and_then(|b| b.charge(len))
    }

    /// The client's budget and this request's place, for parking.
    pub fn budget_seq(&self) -> Option<(&Arc<ResponseBudget>, u64)> {
        self.budget.as_ref().map(|b| (b, self.seq))
    }
}

/// LIST_INSTANCES filter; each shard answers with its matching rows sorted by
/// id, at most `rows_max` of them, and the total count.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub machine: Option<String>,
    pub state: Option<String>,
    pub rows_max: usize,
}

pub struct ListPage {
    pub total: u64,
    /// (instance id, summary object as JSON), ascending by id.
    pub rows: Vec<(String, Vec<u8>)>,
    /// What the rows hold of the asking client's budget.
    pub charge: Option<Charge>,
}

/// Counters a shard reports for INFO / WAL_STATS / metrics.
#[derive(Clone, Debug, Default)]
pub struct ShardStats {
    pub shard: usize,
    pub instances_active: u64,
    pub machines: u64,
    pub wal: crate::wal::WalStats,
    pub wal_segment_id: u64,
    /// Records now in the log files.
    pub log_records: u64,
    pub log_segments: u64,
    /// Bytes of records the segment files hold.
    pub log_data_bytes: u64,
    /// Bytes the segment files take on disk (segments are pre-allocated).
    pub log_bytes_allocated: u64,
    /// Log entries this shard has written, as of its last commit
    /// (`wal/sequence.rs`): not reduced by compaction.
    pub entries: u64,
    /// What the shard has read from its log files, recovery included.
    pub reads: crate::wal::reader::ReadStats,
    /// Oldest offset still in the log, if any record is.
    pub oldest_offset: Option<u64>,
    /// Offsets below this are no longer in the log (compacted away); 0 when
    /// nothing was ever deleted.
    pub retained_from: u64,
    /// The offset the next record of this shard will get.
    pub next_offset: u64,
    pub snapshots: u64,
    pub mailbox_depth: u64,
    /// Requests waiting because their clients' answer budgets are spent.
    pub waiting_for_budget: u64,
    /// The next log segment cannot be made (a full disk): writes that need
    /// it are refused.
    pub rollover_failing: bool,
    /// A replicated shard: its group as this member sees it (what
    /// REPLICATION_STATUS reports), and how long its turns took to commit.
    pub group: Option<serde_json::Value>,
    pub turn_commit_latency: crate::latency::LatencyHistogram,
}

/// A shard's answer to an atomic batch part: every op's result, or the
/// index (within the part) of the op that failed and its error — or, on a
/// replicated shard, a refusal of the whole part (not the leader, a
/// failover, cross-shard batches not available): the error is the batch's
/// answer as it stands (`details.outcome` says whether it may have run).
#[derive(Debug)]
pub enum BatchVote {
    Yes(Vec<Vec<u8>>),
    No(usize, crate::error::EngineError),
    Refused(crate::error::EngineError),
}
/// Installed machines a shard answers `ShardMsg::Machines` with. Through
/// a leader a reply may hold only part of them (`complete: false`): ask
/// again, knowing these too.
#[derive(Debug, Clone)]
pub struct MachinesPage {
    pub defs: Vec<Arc<MachineDef>>,
    pub complete: bool,
}

pub enum ShardMsg {
    /// A request about one instance.
    Exec {
        cmd: Command,
        reply: ReplyTo,
    },
    /// Make a machine definition durable on this shard and install it.
    /// Answers whether this shard had to write it.
    InstallMachine {
        def: Arc<MachineDef>,
        raw_definition: Arc<Value>,
        done: flume::Sender<EngineResult<bool>>,
    },
    List {
        query: ListQuery,
        done: flume::Sender<ListPage>,
        /// The asking client's budget and request number, for parking.
        budget: Option<(Arc<ResponseBudget>, u64)>,
    },
    /// A client's answer budget came back: run the requests parked on it.
    Unpark,
    /// The machines this shard has installed but those in `known` (a
    /// cluster node's catalog reads them from the group, through its
    /// leader, learning only what it lacks).
    Machines {
        known: Vec<(String, u32)>,
        done: flume::Sender<EngineResult<MachinesPage>>,
    },
    Stats {
        done: flume::Sender<ShardStats>,
    },
    /// Check every whole-state invariant now (`audit.rs`; the simulation).
    #[cfg(test)]
    Audit {
        done: flume::Sender<Result<(), String>>,
    },
    /// An atomic batch whose ops all live on this shard: one `Batch` record.
    AtomicBatch {
        ops: Vec<Command>,
        done: flume::Sender<BatchVote>,
    },
    /// Phase one of a cross-shard atomic batch: stage, log `Prepare`, lock
    /// the instances, vote.
    Prepare {
        txid: u64,
        decider: u32,
        ops: Vec<Command>,
        done: flume::Sender<BatchVote>,
    },
    /// Phase two: log `Commit` or `Abort`, publish or undo, unlock. Also
    /// resolves a part left in doubt by a crash (see recovery). Answers the
    /// decision the log holds for `txid`: `commit` when this message made
    /// it, the earlier one when the part was decided already (a decider
    /// that aborted a batch left in doubt answers a late Commit `Aborted`),
    /// `Forgotten` for a batch too old to tell (`committed_ids.rs`).
    Decide {
        txid: u64,
        commit: bool,
        done: flume::Sender<Verdict>,
    },
    /// What this shard's log decided for batch `txid`, changing nothing:
    /// `Undecided` while its part here is; `Aborted` for a batch it holds
    /// no commit of (presumed abort) unless that batch is too old to tell
    /// (`Forgotten`).
    Decision {
        txid: u64,
        done: flume::Sender<Verdict>,
    },
    /// The cross-shard parts this shard has held prepared-but-undecided for
    /// at least `older_than_ms`: (txid, decider shard, how long in ms).
    /// Only a replicated shard's leader has any (a standalone shard's
    /// coordinator runs in its own process and decides every part;
    /// `coordinator::resolve_stale`).
    InDoubt {
        older_than_ms: u64,
        done: flume::Sender<Vec<(u64, u32, u64)>>,
    },
    /// Whether this shard holds its part of batch `txid` prepared and not
    /// decided — answered by any member, from the log it applied: the
    /// part's decider shard, or `None`. A standalone shard refuses it
    /// (CLUSTER_RESOLVE_BATCH; `operator_ruling.rs`).
    PartInDoubt {
        txid: u64,
        done: flume::Sender<EngineResult<Option<u32>>>,
    },
    /// Raise this shard's offset floor to the frontier and publish its
    /// watermark, so an idle shard does not hold back the watch merge.
    AdvanceWatermark,
    /// Graceful stop: finish the current group, sync the WAL, answer, and
    /// leave the loop (messages still queued behind it are not served).
    Shutdown {
        done: flume::Sender<()>,
    },
    /// Snapshot the shard and delete the log segments snapshots cover.
    /// Without `force_snapshot`, a snapshot is taken only if the log grew
    /// since the last one.
    Compact {
        force_snapshot: bool,
        done: flume::Sender<super::snapshotting::CompactReport>,
    },
    /// FLUSH_ALL on this shard: log a durable `Flush` record and forget
    /// everything; answers (instance records removed, machine versions removed).
    Flush {
        done: flume::Sender<EngineResult<(u64, u64)>>,
    },
    /// Write one instance's snapshot file (SNAPSHOT_INSTANCE).
    SnapshotInstance {
        instance_id: String,
        done: flume::Sender<crate::error::EngineResult<Vec<u8>>>,
    },
    /// Logical log entries from `from_offset` on (WAL_READ).
    ReadLog {
        from_offset: u64,
        max_records: usize,
        max_bytes: usize,
        done: flume::Sender<std::io::Result<super::log_read::EntryChunk>>,
    },
    /// Watch events from the log, from `from_offset` on (catch-up).
    /// What this shard's group member knows of its group (`None`: a
    /// standalone shard) — REPLICATION_STATUS.
    GroupStatus {
        done: flume::Sender<Option<Value>>,
    },
    /// Hand this shard's group lead to another member before the node
    /// stops (`GroupLink::hand_over`; `Ok(None)`: standalone, or not the
    /// leader).
    HandOver {
        done: flume::Sender<Result<Option<u64>, String>>,
    },
    /// Add a node to this shard's group or remove one
    /// (CLUSTER_ADD_NODE / CLUSTER_REMOVE_NODE), run by the group's
    /// leader; the answer is the group's voters after the change. A
    /// standalone shard refuses it.
    ChangeMembers {
        change: super::group_link::MemberChange,
        done: flume::Sender<EngineResult<Value>>,
    },
    /// A message another node's shard forwarded here because this node
    /// leads the group (`replica.rs`): run it, never forward it again.
    Forwarded(Box<ShardMsg>),
    ReadEvents {
        from_offset: u64,
        max_records: usize,
        max_bytes: usize,
        done: flume::Sender<std::io::Result<super::log_read::EventChunk>>,
    },
}

impl ShardMsg {
    /// The budget this message's answer is charged to, and its request
    /// number: a message whose client's budget is spent waits (`budget.rs`).
    pub fn budget(&self) -> Option<(&Arc<ResponseBudget>, u64)> {
        match self {
            ShardMsg::Forwarded(inner) => inner.budget(),
            ShardMsg::Exec { reply, .. } => reply.budget_seq(),
            ShardMsg::List {
                budget: Some((b, seq)),
                ..
            } => Some((b, *seq)),
            _ => None,
        }
    }

    /// The instances this message touches, for parking behind locks.
    pub fn instance_ids(&self) -> Vec<&str> {
        match self {
            ShardMsg::Forwarded(inner) => inner.instance_ids(),
            ShardMsg::Exec { cmd, .. } => vec![cmd.instance_id()],
            ShardMsg::AtomicBatch { ops, .. } | ShardMsg::Prepare { ops, .. } => {
                ops.iter().map(Command::instance_id).collect()
            }
            ShardMsg::SnapshotInstance { instance_id, .. } => vec![instance_id.as_str()],
            _ => Vec::new(),
        }
    }
}
