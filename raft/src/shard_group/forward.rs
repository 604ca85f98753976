//! Forwarding a client's operation to its shard's leader (issue 14: any
//! node serves any request). A follower's shard loop hands the operations
//! it cannot run to its `ForwardQueue` (`forward_batch.rs`), which sends a
//! turn's operations to the leader's node as one `ShardCall` frame (the
//! [`Forwarded`] operations in order, `forward_ops.rs`); the leader's group
//! server puts them into the leader's shard mailbox marked as forwarded
//! (`forward_serve.rs`) and answers with as many answers, in order
//! (`forward_answers.rs`); each
//! answer goes to its client's reply channel as if the follower had
//! answered.
//!
//! * **Once.** A forwarded operation is never forwarded again: a node that
//!   is no longer the leader when it arrives refuses it with the failover
//!   error, and the client retries.
//! * **Order.** A follower forwards a turn's operations in the order they
//!   came, over the one connection its executor has to the leader; the
//!   leader's listener queues calls in arrival order, and its group server
//!   puts each batch's operations into the shard mailbox, in their order,
//!   before it waits for anything — so one connection's operations reach
//!   the leader's loop in their order. Across a leadership change that
//!   order is not kept (an operation forwarded to the old leader may
//!   arrive after one the new leader ran).
//! * **Bounds.** A forwarded batch waits at most the longest timeout of
//!   its operations (`FORWARD_TIMEOUT_MS` but for membership changes); a
//!   batch that fails or times out is answered with the failover error
//!   (retryable; a write's outcome may then be unknown, as in a failover).
//!   The leader answers [`FORWARD_ANSWER_MARGIN_MS`] before that with the
//!   answers it has, so one operation still waiting (parked behind a batch
//!   part in doubt) costs only its own answer.
//!   The answers of a batch fill at most [`FORWARD_ANSWERS_BYTES_MAX`]; an
//!   answer past that is replaced by an error (outcome unknown, retryable)
//!   rather than sending a frame the follower must refuse.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use shards::error::{EngineError, EngineResult};
use shards::machine::definition::parse_definition;
use shards::shard::group_link::MemberChange;
use shards::shard::{BatchVote, ListPage, MachinesPage, ReplyTo, ShardMsg, Verdict};

use super::forward_wire::{value_as_text, Wire, WireCommand, WireError, WireVote};
use crate::net::frame::ANSWER_FRAME_BODY_MAX_BYTES;

/// How long a forwarded operation may take, answer included: a commit's
/// own limit (`TURN_COMMIT_TIMEOUT_MS`) plus the trip.
pub const FORWARD_TIMEOUT_MS: u64 = 3_000;
/// How much sooner than its follower gives up the leader answers a
/// forwarded batch with the answers it has: an operation still waiting
/// then (parked on an instance a cross-shard batch part has locked, until
/// the part is decided) is answered "outcome unknown" alone, instead of
/// the whole batch timing out on the follower with every answer lost.
pub const FORWARD_ANSWER_MARGIN_MS: u64 = 500;
/// How long a forwarded membership change may take (two membership
/// entries committed); adding a member may take its catch-up time more.
pub const FORWARD_MEMBER_CHANGE_TIMEOUT_MS: u64 = 30_000;

/// Bytes of one batch's encoded answers, at most, before answers past it
/// are replaced by errors: more than any one client answer (16 MiB), with
/// room in an answer frame for the small errors that replace the rest. It
/// was half a request frame (8 MiB): a GET of a large instance through a
/// follower was then "outcome unknown" at every retry, and an APPLY_EVENT
/// on one (its answer holds the new context) too, although it was applied.
pub const FORWARD_ANSWERS_BYTES_MAX: usize = 24 << 20;

/// Bytes of machine definitions one answer to a follower's catalog holds
/// (more when the first alone is larger); it asks again for the rest.
/// Every definition once came in one answer, at every GET_MACHINE,
/// LIST_MACHINES and PUT_MACHINE on a node not leading shard 0: past the
/// answers' limit, those failed at every retry.
pub const FORWARD_MACHINES_BYTES_MAX: usize = 4 << 20;
const _: () = assert!(
    FORWARD_ANSWERS_BYTES_MAX + (1 << 20) <= ANSWER_FRAME_BODY_MAX_BYTES as usize,
    "the errors replacing a batch's answers past the limit must fit its frame"
);

/// An operation on its way to the leader.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Forwarded {
    Exec(WireCommand),
    /// A single-shard atomic batch (one entry: all or nothing).
    AtomicBatch(Vec<WireCommand>),
    /// A cross-shard batch's part: phase one, and its decision.
    Prepare {
        txid: u64,
        decider: u32,
        ops: Vec<WireCommand>,
    },
    Decide {
        txid: u64,
        commit: bool,
    },
    /// What the log decided for a batch, changing nothing.
    Decision {
        txid: u64,
    },
    /// FLUSH_ALL's part on this shard.
    Flush,
    InstallMachine {
        machine: String,
        version: u32,
        #[serde(with = "value_as_text")]
        definition: Value,
    },
    /// The installed machines, but for those the follower knows already.
    Machines {
        known: Vec<(String, u32)>,
    },
    List {
        machine: Option<String>,
        state: Option<String>,
        rows_max: usize,
    },
    ChangeMembers {
        change: MemberChange,
    },
    /// A follower's merge waits on this group: log a watermark entry
    /// (`shards::shard::member_watermark`). Nothing is answered but that
    /// it was queued.
    AdvanceWatermark,
}

impl Forwarded {
    /// Whether it travels in a call of its own. Only client operations
    /// are batched: the leader answers a batch once its slowest operation
    /// is done, and an operation on an instance a batch part has locked
    /// waits there until the part is decided. Batched with such an
    /// operation, a batch part's Prepare, Decide or Decision — the very
    /// messages that decide it — timed out with it, again at every retry,
    /// and a part stayed in doubt (tests/linearizability, cluster run). A
    /// membership change may wait long too (a new member's catch-up).
    pub(super) fn goes_alone(&self) -> bool {
        !matches!(self, Forwarded::Exec(_))
    }

    /// How long the leader may take to answer it.
    pub(super) fn timeout(&self) -> Duration {
        Duration::from_millis(match self {
            Forwarded::ChangeMembers {
                change:
                    MemberChange::Add {
                        catch_up_timeout_ms,
                        ..
                    },
            } => catch_up_timeout_ms.saturating_add(FORWARD_MEMBER_CHANGE_TIMEOUT_MS),
            Forwarded::ChangeMembers { .. } => FORWARD_MEMBER_CHANGE_TIMEOUT_MS,
            _ => FORWARD_TIMEOUT_MS,
        })
    }
}

/// A machine as it travels: name, version, definition as JSON text.
pub(super) type MachineText = (String, u32, String);

/// The leader's answer.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Answer {
    /// A connection operation's result (the JSON text the shard answered)
    /// or error. A result travels as its bytes (`forward_answers.rs`),
    /// never through JSON.
    Exec(Wire<Vec<u8>>),
    Installed(Wire<bool>),
    /// (machine, version, definition as JSON text: `forward_wire.rs` says
    /// why) of machines the follower did not know, and whether that is all
    /// of them (an answer holds at most `FORWARD_MACHINES_BYTES_MAX` of
    /// definitions).
    Machines(Wire<(Vec<MachineText>, bool)>),
    Listed {
        total: u64,
        rows: Vec<(String, String)>,
    },
    /// A membership change's result (JSON text) or error.
    Members(Wire<String>),
    /// Queued; no answer is owed.
    Queued,
    Vote(WireVote),
    /// What the log holds of a batch (`Decide`, `Decision`).
    Verdict(Verdict),
    /// (instance records removed, machine versions removed) or an error.
    Flushed(Wire<(u64, u64)>),
}

/// Where the answer goes on the follower.
pub(super) enum ReplyTarget {
    Conn(ReplyTo),
    Install(flume::Sender<EngineResult<bool>>),
    Machines(flume::Sender<EngineResult<MachinesPage>>),
    List(
        flume::Sender<ListPage>,
        Option<(Arc<shards::shard::budget::ResponseBudget>, u64)>,
    ),
    Members(flume::Sender<EngineResult<Value>>),
    /// No one waits for the answer.
    Nobody,
    Vote(flume::Sender<BatchVote>),
    Verdict(flume::Sender<Verdict>),
    Flushed(flume::Sender<EngineResult<(u64, u64)>>),
}

/// Split a message into what travels and where its answer goes; `Err`
/// gives back a message that cannot be forwarded.
pub(super) fn split(msg: ShardMsg) -> Result<(Forwarded, ReplyTarget), Box<ShardMsg>> {
    Ok(match msg {
        ShardMsg::Exec { cmd, reply } => (Forwarded::Exec(cmd.into()), ReplyTarget::Conn(reply)),
        ShardMsg::Flush { done } => (Forwarded::Flush, ReplyTarget::Flushed(done)),
        ShardMsg::AtomicBatch { ops, done } => (
            Forwarded::AtomicBatch(ops.into_iter().map(WireCommand::from).collect()),
            ReplyTarget::Vote(done),
        ),
        ShardMsg::Prepare {
            txid,
            decider,
            ops,
            done,
        } => (
            Forwarded::Prepare {
                txid,
                decider,
                ops: ops.into_iter().map(WireCommand::from).collect(),
            },
            ReplyTarget::Vote(done),
        ),
        ShardMsg::Decide { txid, commit, done } => (
            Forwarded::Decide { txid, commit },
            ReplyTarget::Verdict(done),
        ),
        ShardMsg::Decision { txid, done } => {
            (Forwarded::Decision { txid }, ReplyTarget::Verdict(done))
        }
        ShardMsg::InstallMachine {
            def,
            raw_definition,
            done,
        } => (
            Forwarded::InstallMachine {
                machine: def.machine.clone(),
                version: def.version,
                definition: (*raw_definition).clone(),
            },
            ReplyTarget::Install(done),
        ),
        ShardMsg::Machines { known, done } => {
            (Forwarded::Machines { known }, ReplyTarget::Machines(done))
        }
        ShardMsg::List {
            query,
            done,
            budget,
        } => (
            Forwarded::List {
                machine: query.machine,
                state: query.state,
                rows_max: query.rows_max,
            },
            ReplyTarget::List(done, budget),
        ),
        ShardMsg::ChangeMembers { change, done } => (
            Forwarded::ChangeMembers { change },
            ReplyTarget::Members(done),
        ),
        ShardMsg::AdvanceWatermark => (Forwarded::AdvanceWatermark, ReplyTarget::Nobody),
        other => return Err(Box::new(other)),
    })
}

impl ReplyTarget {
    pub(super) fn fail(self, error: EngineError) {
        match self {
            ReplyTarget::Conn(reply) => reply.send(Err(error)),
            ReplyTarget::Install(done) => {
                let _ = done.send(Err(error));
            }
            ReplyTarget::Machines(done) => {
                let _ = done.send(Err(error));
            }
            ReplyTarget::Members(done) => {
                let _ = done.send(Err(error));
            }
            ReplyTarget::Nobody => {}
            ReplyTarget::Vote(done) => {
                let _ = done.send(BatchVote::Refused(error));
            }
            ReplyTarget::Flushed(done) => {
                let _ = done.send(Err(error));
            }
            // A page has no error to carry, nor a decision whose outcome is
            // unknown: the asker sees the channel close.
            ReplyTarget::List(..) | ReplyTarget::Verdict(_) => {}
        }
    }

    pub(super) fn deliver(self, answer: Answer) {
        match (self, answer) {
            (ReplyTarget::Conn(reply), Answer::Exec(r)) => {
                reply.send(r.map_err(WireError::into_engine))
            }
            (ReplyTarget::Install(done), Answer::Installed(r)) => {
                let _ = done.send(r.map_err(WireError::into_engine));
            }
            (ReplyTarget::Machines(done), Answer::Machines(r)) => {
                let page = r
                    .map_err(WireError::into_engine)
                    .and_then(|(list, complete)| {
                        let defs = list
                            .into_iter()
                            .map(|(m, v, text)| {
                                let d: Value = serde_json::from_str(&text).map_err(|e| {
                                    EngineError::internal(format!("the leader's definition: {e}"))
                                })?;
                                parse_definition(&m, v, &d).map(Arc::new)
                            })
                            .collect::<EngineResult<_>>()?;
                        Ok(MachinesPage { defs, complete })
                    });
                let _ = done.send(page);
            }
            (ReplyTarget::List(done, budget), Answer::Listed { total, rows }) => {
                let rows: Vec<(String, Vec<u8>)> = rows
                    .into_iter()
                    .map(|(id, r)| (id, r.into_bytes()))
                    .collect();
                let bytes: usize = rows.iter().map(|(id, row)| id.len() + row.len()).sum();
                let charge = budget.and_then(|(b, _)| b.charge(bytes));
                let _ = done.send(ListPage {
                    total,
                    rows,
                    charge,
                });
            }
            (ReplyTarget::Members(done), Answer::Members(r)) => {
                let value = r.map_err(WireError::into_engine).and_then(|text| {
                    serde_json::from_str(&text).map_err(|e| {
                        EngineError::internal(format!("the leader's membership answer: {e}"))
                    })
                });
                let _ = done.send(value);
            }
            (ReplyTarget::Nobody, _) => {}
            (ReplyTarget::Vote(done), Answer::Vote(vote)) => {
                let _ = done.send(vote.into());
            }
            (ReplyTarget::Verdict(done), Answer::Verdict(verdict)) => {
                let _ = done.send(verdict);
            }
            (ReplyTarget::Flushed(done), Answer::Flushed(r)) => {
                let _ = done.send(r.map_err(WireError::into_engine));
            }
            (target, other) => target.fail(EngineError::internal(format!(
                "the leader answered a forwarded operation with {other:?}"
            ))),
        }
    }
}
