//! Forwarding a client's operation to its shard's leader (issue 14: any
//! node serves any request). A follower's shard loop hands the operations
//! it cannot run to its `ForwardQueue` (`forward_batch.rs`), which sends a
//! turn's operations to the leader's node as one `ShardCall` frame (a JSON
//! array of [`Forwarded`]); the leader's group server puts them into the
//! leader's shard mailbox marked as forwarded ([`serve_forwarded`]) and
//! answers with as many answers, in order (`forward_answers.rs`); each
//! answer goes to its client's reply channel as if the follower had
//! answered.
//!
//! * **Once.** A forwarded operation is never forwarded again: a node that
//!   is no longer the leader when it arrives refuses it with the failover
//!   error, and the client retries.
//! * **Order.** A follower forwards a turn's operations in the order they
//!   came, over the one connection its executor has to the leader; the
//!   leader's listener queues calls in arrival order, and its group server
//!   puts each batch's operations into the shard mailbox, in array order,
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

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{select, Either};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use shards::error::{EngineError, EngineResult};
use shards::machine::definition::{parse_definition, MachineDef};
use shards::shard::group_link::{LinkError, MemberChange};
use shards::shard::{BatchVote, Command, ListPage, ListQuery, ReplyTo, ShardMsg, Verdict};

use super::forward_answers::encode_answers;
use super::forward_wire::{Wire, WireCommand, WireError, WireVote};
use crate::net::frame::FRAME_BODY_MAX_BYTES;
use crate::net::wire::{from_json, ErrorBody, ErrorCode as WireCode};
use crate::net::ShardCalls;

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

/// Bytes of one batch's encoded answers, at most: half a peer frame, so
/// that the small errors replacing answers past it always fit.
pub const FORWARD_ANSWERS_BYTES_MAX: usize = FRAME_BODY_MAX_BYTES as usize / 2;

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
        definition: Value,
    },
    Machines,
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

/// The leader's answer.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Answer {
    /// A connection operation's result (the JSON text the shard answered)
    /// or error. A result travels as its bytes (`forward_answers.rs`),
    /// never through JSON.
    Exec(Wire<Vec<u8>>),
    Installed(Wire<bool>),
    /// (machine, version, definition) of each machine.
    Machines(Wire<Vec<(String, u32, Value)>>),
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
    Machines(flume::Sender<EngineResult<Vec<Arc<MachineDef>>>>),
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
        ShardMsg::Machines { done } => (Forwarded::Machines, ReplyTarget::Machines(done)),
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
                let defs = r.map_err(WireError::into_engine).and_then(|list| {
                    list.into_iter()
                        .map(|(m, v, d)| parse_definition(&m, v, &d).map(Arc::new))
                        .collect()
                });
                let _ = done.send(defs);
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

/// Serve forwarded batches into `mailbox` (the leader's shard), each
/// operation marked forwarded so that it is never forwarded again.
pub fn serve_forwarded(mailbox: flume::Sender<ShardMsg>) -> ShardCalls {
    Rc::new(move |body: Vec<u8>| {
        // Decoded and queued before the first await: batches reach the
        // mailbox in the order the group server started them, and a
        // batch's operations in array order.
        let queued: Result<(Vec<_>, Duration), ErrorBody> = from_json::<Vec<Forwarded>>(&body)
            .map_err(|e| ErrorBody::new(WireCode::BadRequest, format!("a forwarded batch: {e}")))
            .map(|ops| {
                let wait = answer_wait(&ops);
                let queued = ops.into_iter().map(|op| queue(&mailbox, op)).collect();
                (queued, wait)
            });
        Box::pin(async move {
            let (queued, wait) = queued?;
            let deadline = Instant::now() + wait;
            let mut answers = Vec::new();
            for waiting in queued {
                answers.push(match waiting {
                    Ok(answer) => answer_by(answer, deadline, wait).await,
                    Err(refused) => Err(refused),
                });
            }
            Ok(encode_answers(answers, FORWARD_ANSWERS_BYTES_MAX))
        })
    })
}

/// How long the leader waits for a forwarded batch's answers: the
/// longest of its operations' timeouts, less `FORWARD_ANSWER_MARGIN_MS`
/// for the trip back.
fn answer_wait(ops: &[Forwarded]) -> Duration {
    ops.iter()
        .map(Forwarded::timeout)
        .max()
        .unwrap_or_default()
        .saturating_sub(Duration::from_millis(FORWARD_ANSWER_MARGIN_MS))
}

/// An operation's answer if it comes by `deadline` (one already there
/// always counts), else the error that tells its client the outcome is
/// unknown.
async fn answer_by(
    answer: Waiting,
    deadline: Instant,
    wait: Duration,
) -> Result<Answer, ErrorBody> {
    let left = deadline.saturating_duration_since(Instant::now());
    let timer = std::pin::pin!(glommio::timer::sleep(left));
    match select(answer, timer).await {
        Either::Left((answer, _)) => Ok(answer),
        Either::Right(_) => Err(ErrorBody::new(
            WireCode::Timeout,
            format!("not answered within {} ms on the leader", wait.as_millis()),
        )),
    }
}

type Waiting = Pin<Box<dyn Future<Output = Answer>>>;

fn queue(mailbox: &flume::Sender<ShardMsg>, op: Forwarded) -> Result<Waiting, ErrorBody> {
    let gone = || ErrorBody::new(WireCode::GroupStopped, "the shard stopped".to_string());
    let send = |msg: ShardMsg| {
        mailbox
            .send(ShardMsg::Forwarded(Box::new(msg)))
            .map_err(|_| gone())
    };
    let exec = |cmd: Command| -> Result<Waiting, ErrorBody> {
        let (tx, rx) = flume::bounded(1);
        send(ShardMsg::Exec {
            cmd,
            reply: ReplyTo::internal(tx, 0),
        })?;
        Ok(Box::pin(async move {
            let body = match rx.recv_async().await {
                Ok(reply) => reply.body,
                Err(_) => Err(stopped()),
            };
            Answer::Exec(body.map_err(WireError::from))
        }))
    };
    match op {
        Forwarded::Exec(cmd) => exec(cmd.into()),
        Forwarded::Flush => {
            let (done, rx) = flume::bounded(1);
            send(ShardMsg::Flush { done })?;
            Ok(Box::pin(async move {
                let r = rx.recv_async().await.unwrap_or_else(|_| Err(stopped()));
                Answer::Flushed(r.map_err(WireError::from))
            }))
        }
        Forwarded::AtomicBatch(cmds) => {
            let (done, rx) = flume::bounded(1);
            send(ShardMsg::AtomicBatch {
                ops: cmds.into_iter().map(Command::from).collect(),
                done,
            })?;
            Ok(vote_of(rx))
        }
        Forwarded::Prepare { txid, decider, ops } => {
            let (done, rx) = flume::bounded(1);
            send(ShardMsg::Prepare {
                txid,
                decider,
                ops: ops.into_iter().map(Command::from).collect(),
                done,
            })?;
            Ok(vote_of(rx))
        }
        Forwarded::Decide { txid, commit } => {
            let (done, rx) = flume::bounded(1);
            send(ShardMsg::Decide { txid, commit, done })?;
            Ok(decision_of(rx, Answer::Verdict))
        }
        Forwarded::Decision { txid } => {
            let (done, rx) = flume::bounded(1);
            send(ShardMsg::Decision { txid, done })?;
            Ok(decision_of(rx, Answer::Verdict))
        }
        Forwarded::InstallMachine {
            machine,
            version,
            definition,
        } => {
            let def = match parse_definition(&machine, version, &definition) {
                Ok(def) => Arc::new(def),
                Err(e) => {
                    return Ok(Box::pin(async move {
                        Answer::Installed(Err(WireError::from(e)))
                    }))
                }
            };
            let (done, rx) = flume::bounded(1);
            send(ShardMsg::InstallMachine {
                def,
                raw_definition: Arc::new(definition),
                done,
            })?;
            Ok(Box::pin(async move {
                let r = rx.recv_async().await.unwrap_or_else(|_| Err(stopped()));
                Answer::Installed(r.map_err(WireError::from))
            }))
        }
        Forwarded::Machines => {
            let (done, rx) = flume::bounded(1);
            send(ShardMsg::Machines { done })?;
            Ok(Box::pin(async move {
                let r = rx.recv_async().await.unwrap_or_else(|_| Err(stopped()));
                Answer::Machines(
                    r.map(|defs| {
                        defs.iter()
                            .map(|d| (d.machine.clone(), d.version, d.normalized_value()))
                            .collect()
                    })
                    .map_err(WireError::from),
                )
            }))
        }
        Forwarded::AdvanceWatermark => {
            send(ShardMsg::AdvanceWatermark)?;
            Ok(Box::pin(async { Answer::Queued }))
        }
        Forwarded::ChangeMembers { change } => {
            let (done, rx) = flume::bounded(1);
            send(ShardMsg::ChangeMembers { change, done })?;
            Ok(Box::pin(async move {
                let r = rx.recv_async().await.unwrap_or_else(|_| Err(stopped()));
                Answer::Members(r.map(|v| v.to_string()).map_err(WireError::from))
            }))
        }
        Forwarded::List {
            machine,
            state,
            rows_max,
        } => {
            let (done, rx) = flume::bounded(1);
            send(ShardMsg::List {
                query: ListQuery {
                    machine,
                    state,
                    rows_max,
                },
                done,
                budget: None,
            })?;
            Ok(Box::pin(async move {
                match rx.recv_async().await {
                    Ok(page) => Answer::Listed {
                        total: page.total,
                        rows: page
                            .rows
                            .into_iter()
                            .map(|(id, r)| (id, String::from_utf8_lossy(&r).into_owned()))
                            .collect(),
                    },
                    // The leader could not serve the page (it lost the
                    // lead): an empty page would be a wrong answer.
                    Err(_) => Answer::Exec(Err(WireError::from(stopped()))),
                }
            }))
        }
    }
}

/// A batch part's vote, once the leader's shard gives it.
fn vote_of(rx: flume::Receiver<BatchVote>) -> Waiting {
    Box::pin(async move {
        let vote = rx
            .recv_async()
            .await
            .unwrap_or_else(|_| BatchVote::Refused(stopped()));
        Answer::Vote(vote.into())
    })
}

/// A batch decision's answer, once the leader's shard gives it. Not given
/// (the leader lost the lead): the follower's asker sees its channel close,
/// for the outcome is unknown.
fn decision_of<T: 'static>(rx: flume::Receiver<T>, answer: fn(T) -> Answer) -> Waiting {
    Box::pin(async move {
        match rx.recv_async().await {
            Ok(decision) => answer(decision),
            Err(_) => Answer::Exec(Err(WireError::from(stopped()))),
        }
    })
}

/// The leader's shard could not answer (it stopped, or lost the lead on
/// the way): the failover refusal, retryable.
fn stopped() -> EngineError {
    LinkError::NotLeader { leader: None }.to_engine_error()
}
