//! The leader's side of forwarding (`forward.rs`): a follower's batch of
//! operations put into the leader's shard mailbox, each marked forwarded,
//! and their answers gathered into one body, in the batch's order.
//!
//! A batch of instance commands — what a follower forwards in bulk — has
//! one reply channel and one timer for all its commands, each command's
//! reply tagged with its place in the batch. It used to take a channel,
//! a boxed future and a timer per command. Every other operation travels
//! alone (`Forwarded::goes_alone`) and keeps a future of its own.

use std::future::Future;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{select, Either};

use shards::error::EngineError;
use shards::machine::definition::{parse_definition, MachineDef};
use shards::shard::group_link::LinkError;
use shards::shard::{BatchVote, Command, ListQuery, Reply, ReplyTo, ShardMsg};

use super::forward::{
    Answer, Forwarded, MachineText, FORWARD_ANSWERS_BYTES_MAX, FORWARD_ANSWER_MARGIN_MS,
    FORWARD_MACHINES_BYTES_MAX,
};
use super::forward_answers::encode_answers;
use super::forward_ops::decode_ops;
use super::forward_wire::WireError;
use crate::net::wire::{ErrorBody, ErrorCode as WireCode};
use crate::net::ShardCalls;

/// Serve forwarded batches into `mailbox` (the leader's shard), each
/// operation marked forwarded so that it is never forwarded again.
pub fn serve_forwarded(mailbox: flume::Sender<ShardMsg>) -> ShardCalls {
    Rc::new(move |body: Vec<u8>| {
        // Decoded and queued before the first await: batches reach the
        // mailbox in the order the group server started them, and a
        // batch's operations in their order.
        let queued = decode_ops(&body)
            .map_err(|e| ErrorBody::new(WireCode::BadRequest, format!("a forwarded batch: {e}")))
            .map(|ops| {
                let wait = answer_wait(&ops);
                (Queued::new(&mailbox, ops), wait)
            });
        Box::pin(async move {
            let (queued, wait) = queued?;
            let answers = queued.answers(Instant::now() + wait, wait).await;
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

type Waiting = Pin<Box<dyn Future<Output = Answer>>>;

/// Where one operation's answer is.
enum Slot {
    /// Known already (it could not be queued), or arrived.
    Answered(Result<Answer, ErrorBody>),
    /// An instance command's: on the batch's reply channel.
    Replied,
    /// Any other operation's.
    Waiting(Waiting),
}

/// A batch's operations in the mailbox, waiting for their answers.
struct Queued {
    slots: Vec<Slot>,
    /// Instance commands' replies, each tagged with its slot.
    replies: flume::Receiver<Reply>,
    /// How many instance commands were queued.
    commands: usize,
}

impl Queued {
    fn new(mailbox: &flume::Sender<ShardMsg>, ops: Vec<Forwarded>) -> Queued {
        // Unbounded, yet it holds at most the batch's count of replies:
        // each queued command answers once.
        let (tx, replies) = flume::unbounded();
        let slots: Vec<Slot> = ops
            .into_iter()
            .enumerate()
            .map(|(at, op)| {
                queue(mailbox, op, &tx, at).unwrap_or_else(|refused| Slot::Answered(Err(refused)))
            })
            .collect();
        let commands = slots.iter().filter(|s| matches!(s, Slot::Replied)).count();
        // Only the queued commands hold a sender now: once every one of
        // them is answered or dropped unanswered, the channel closes.
        drop(tx);
        Queued {
            slots,
            replies,
            commands,
        }
    }

    /// Every operation's answer by `deadline` (one already there always
    /// counts), else the error that tells its client the outcome is
    /// unknown.
    async fn answers(
        mut self,
        deadline: Instant,
        wait: Duration,
    ) -> Vec<Result<Answer, ErrorBody>> {
        let late = || {
            Err(ErrorBody::new(
                WireCode::Timeout,
                format!("not answered within {} ms on the leader", wait.as_millis()),
            ))
        };
        let mut timer = pin!(glommio::timer::sleep(
            deadline.saturating_duration_since(Instant::now())
        ));
        // The instance commands' replies, as they come; once the time is
        // up, those already there.
        let mut left = self.commands;
        let mut closed = false;
        let mut late_now = false;
        while left > 0 {
            let reply = match self.replies.try_recv() {
                Ok(reply) => reply,
                Err(flume::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
                Err(flume::TryRecvError::Empty) if late_now => break,
                Err(flume::TryRecvError::Empty) => {
                    match select(self.replies.recv_async(), timer.as_mut()).await {
                        Either::Left((Ok(reply), _)) => reply,
                        Either::Left((Err(_), _)) => {
                            closed = true;
                            break;
                        }
                        Either::Right(_) => {
                            late_now = true;
                            continue;
                        }
                    }
                }
            };
            if let Some(slot) = self.slots.get_mut(reply.seq as usize) {
                *slot = Slot::Answered(Ok(Answer::Exec(reply.body.map_err(WireError::from))));
                left -= 1;
            }
        }
        let mut answers = Vec::with_capacity(self.slots.len());
        for slot in self.slots {
            answers.push(match slot {
                Slot::Answered(answer) => answer,
                // Dropped unanswered: the leader's shard stopped or lost
                // the lead on the way.
                Slot::Replied if closed => Ok(Answer::Exec(Err(WireError::from(stopped())))),
                Slot::Replied => late(),
                Slot::Waiting(answer) => match select(answer, timer.as_mut()).await {
                    Either::Left((answer, _)) => Ok(answer),
                    Either::Right(_) => late(),
                },
            });
        }
        answers
    }
}

fn send(mailbox: &flume::Sender<ShardMsg>, msg: ShardMsg) -> Result<(), ErrorBody> {
    mailbox
        .send(ShardMsg::Forwarded(Box::new(msg)))
        .map_err(|_| ErrorBody::new(WireCode::GroupStopped, "the shard stopped".to_string()))
}

/// `op` queued as the batch's operation `at`: an instance command replies
/// on the batch's channel (`replies`), any other operation has a future
/// of its own for its answer.
fn queue(
    mailbox: &flume::Sender<ShardMsg>,
    op: Forwarded,
    replies: &flume::Sender<Reply>,
    at: usize,
) -> Result<Slot, ErrorBody> {
    let send = |msg: ShardMsg| send(mailbox, msg);
    let waiting: Result<Waiting, ErrorBody> = match op {
        Forwarded::Exec(cmd) => {
            send(ShardMsg::Exec {
                cmd: cmd.into(),
                reply: ReplyTo::internal(replies.clone(), at as u64),
            })?;
            return Ok(Slot::Replied);
        }
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
                    return Ok(Slot::Waiting(Box::pin(async move {
                        Answer::Installed(Err(WireError::from(e)))
                    })))
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
        Forwarded::Machines { known } => {
            let (done, rx) = flume::bounded(1);
            send(ShardMsg::Machines { known, done })?;
            Ok(Box::pin(async move {
                let r = rx.recv_async().await.unwrap_or_else(|_| Err(stopped()));
                Answer::Machines(
                    r.map(|page| machines_page(&page.defs, FORWARD_MACHINES_BYTES_MAX))
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
    };
    waiting.map(Slot::Waiting)
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

/// `defs` as they travel, as many as fill `bytes_max` (at least one), and
/// whether that is all of them.
fn machines_page(defs: &[Arc<MachineDef>], bytes_max: usize) -> (Vec<MachineText>, bool) {
    let mut page = Vec::new();
    let mut bytes = 0;
    for d in defs {
        if !page.is_empty() && bytes >= bytes_max {
            return (page, false);
        }
        let text = d.normalized_value().to_string();
        bytes += text.len();
        page.push((d.machine.clone(), d.version, text));
    }
    (page, true)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn machine(name: &str, pad: usize) -> Arc<MachineDef> {
        let definition = json!({"states": ["a"], "initial": "a", "transitions": [],
                                "meta": {"pad": "x".repeat(pad)}});
        Arc::new(parse_definition(name, 1, &definition).expect("a definition"))
    }

    #[test]
    fn a_page_of_machines_fills_its_bytes_and_holds_one_at_least() {
        let defs = vec![machine("m0", 600), machine("m1", 600), machine("m2", 600)];
        let names = |page: &[MachineText]| page.iter().map(|m| m.0.clone()).collect::<Vec<_>>();
        let (page, complete) = machines_page(&defs, 1_000);
        assert_eq!(
            (names(&page), complete),
            (vec!["m0".into(), "m1".into()], false)
        );
        let (page, complete) = machines_page(&defs, 1);
        assert_eq!((names(&page), complete), (vec!["m0".into()], false));
        let (page, complete) = machines_page(&defs, 1 << 20);
        assert_eq!((page.len(), complete), (3, true));
        assert_eq!(machines_page(&[], 1), (Vec::new(), true));
        // The text parses back to the same definition.
        let back: Value = serde_json::from_str(&page[2].2).unwrap();
        assert_eq!(
            parse_definition("m2", 1, &back).unwrap().checksum,
            defs[2].checksum
        );
    }
}
