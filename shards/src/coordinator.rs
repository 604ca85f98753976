//! The coordinator of atomic batches across shards (two-phase commit), and
//! the resolution at start-up of batches a crash left in doubt. It talks to
//! the shards only through their mailboxes, so it runs wherever the caller
//! is: on the server's acceptor, or in the simulator.
//!
//! # The commit protocol
//!
//! Ops are grouped by owner shard (order within a shard is kept; ops on
//! different shards touch different instances, so their relative order does
//! not matter).
//!
//! * **One shard** — fast path: the shard runs its ops all-or-nothing and
//!   logs them as ONE `Batch` record (one checksum: after a crash the record
//!   is whole or absent). No 2PC round.
//! * **Several shards** — two-phase commit with a *decider*:
//!   1. Prepare, one shard after another in ascending shard order: each runs
//!      its ops all-or-nothing, logs a `Prepare` record (txid, decider, the
//!      ops' records) durably, locks the instances it touched, and votes.
//!      Preparing in a fixed shard order means two batches never wait for
//!      each other's locks in a cycle (no deadlock).
//!   2. Any "no": every prepared shard is told to abort (undo, unlock, log
//!      `Abort`); the caller gets the failing op's error, nothing applied.
//!   3. All "yes": the decider — the lowest participating shard — logs
//!      `Commit`. **That record, once durable, is the decision.** Then the
//!      others log `Commit`, publish, unlock. The caller learns the outcome
//!      after the decision is durable.
//!
//! **Recovery** (presumed abort): a shard whose log holds a `Prepare` without
//! a `Commit`/`Abort` asks the decider's log — at start-up, before serving —
//! whether it holds `Commit(txid)`: yes → apply the prepared records; no →
//! drop them (`resolve_in_doubt`). A crash at any instant thus leaves each
//! batch wholly applied or wholly absent on every shard.
//!
//! **On a cluster** each shard is a replicated group, every phase an entry
//! of its log (`shard::member_txn`), and the coordinator's node may die
//! between the phases while the groups live on: a part left undecided is
//! settled while serving (`resolve_stale`), by the decider's log — asked
//! after a second, told to abort (presumed abort) after
//! `in_doubt_resolve_after_ms`. The decider answers a Decide with the
//! decision its log holds, so a coordinator whose batch was aborted that
//! way learns it and answers the client so.

use std::collections::BTreeMap;

use crate::error::{EngineError, EngineResult};
use crate::router::ask;
use crate::router::ask_all;
use crate::shard::group_link::{LinkError, FAILOVER_ERROR_CODE, OUTCOME_NOT_APPLIED};
use crate::shard::{BatchVote, Command, OpenReport, ShardMsg, Verdict};

/// Why an atomic batch failed: the op (by its index in the batch) and the
/// error, or a failure of the machinery itself (a shard gone).
#[derive(Debug)]
pub enum BatchFailure {
    Op(usize, EngineError),
    Internal(EngineError),
    /// A shard refused its part as a whole (a replicated shard between
    /// leaders, say), or the decider's answer did not come: the batch's
    /// answer is this error (for a batch across shards, marked
    /// `not_applied` when nothing can have been committed).
    Refused(EngineError),
}

/// Run an atomic batch whose ops are grouped by shard: `parts[shard]` holds
/// (index in the batch, command), shards ascending. `txid` must be unique
/// on this server — on a cluster, across its nodes (the server puts the
/// node id in its top bits). Returns every op's result by batch index.
pub async fn run_atomic(
    mailboxes: &[flume::Sender<ShardMsg>],
    parts: BTreeMap<usize, Vec<(usize, Command)>>,
    txid: u64,
) -> Result<Vec<(usize, Vec<u8>)>, BatchFailure> {
    let mut results = Vec::new();
    let mut prepared: Vec<usize> = Vec::new();
    let multi = parts.len() > 1;
    let decider = parts.keys().next().copied().unwrap_or(0);
    for (shard, part) in parts {
        let (index, ops): (Vec<usize>, Vec<Command>) = part.into_iter().unzip();
        let vote = ask(&mailboxes[shard], |done| {
            if multi {
                ShardMsg::Prepare {
                    txid,
                    decider: decider as u32,
                    ops,
                    done,
                }
            } else {
                ShardMsg::AtomicBatch { ops, done }
            }
        })
        .await
        .map_err(BatchFailure::Internal)?;
        match vote {
            BatchVote::Yes(part_results) => {
                results.extend(index.into_iter().zip(part_results));
                prepared.push(shard);
            }
            BatchVote::No(j, e) => {
                for &p in &prepared {
                    decide(mailboxes, p, txid, false);
                }
                return Err(BatchFailure::Op(index.get(j).copied().unwrap_or(0), e));
            }
            BatchVote::Refused(e) => {
                // A refused part may still have been prepared (its leader
                // changed after logging it): it is aborted too.
                for &p in prepared.iter().chain(multi.then_some(&shard)) {
                    decide(mailboxes, p, txid, false);
                }
                // Nothing was committed: the decider commits only when told
                // to, after every part voted yes.
                return Err(BatchFailure::Refused(if multi {
                    not_applied(e)
                } else {
                    e
                }));
            }
        }
    }
    if multi {
        // The decider's durable Commit is the decision; then the others.
        // On a cluster the decider may have aborted the batch meanwhile
        // (a part stayed in doubt too long: `resolve_stale`): its answer
        // is the decision either way.
        let verdict = decide(mailboxes, decider, txid, true)
            .recv_async()
            .await
            .map_err(|_| BatchFailure::Refused(outcome_unknown()))?;
        // `Forgotten` (a decider that already forgot a batch this new: its
        // clock far behind the coordinator's) leaves the parts in doubt.
        let committed = verdict
            .decided()
            .ok_or_else(|| BatchFailure::Refused(outcome_unknown()))?;
        for &p in prepared.iter().filter(|&&p| p != decider) {
            decide(mailboxes, p, txid, committed);
        }
        if !committed {
            return Err(BatchFailure::Refused(not_applied(EngineError::new(
                FAILOVER_ERROR_CODE,
                "it was aborted while a shard's part of it was in doubt (a node or leader \
                 failed during it)",
            ))));
        }
    }
    Ok(results)
}

/// A refusal of a cross-shard batch that surely applied nothing: says so
/// (`details.outcome`), whatever the refusing part could tell.
fn not_applied(e: EngineError) -> EngineError {
    let mut details = e.details.map(|d| *d).unwrap_or_default();
    details.insert("outcome".into(), OUTCOME_NOT_APPLIED.into());
    EngineError::new(e.code, format!("atomic batch not applied: {}", e.message))
        .with_details(details)
}

/// The decider's answer never came: the batch may or may not be committed.
fn outcome_unknown() -> EngineError {
    LinkError::OutcomeUnknown { leader: None }.to_engine_error()
}

fn decide(
    mailboxes: &[flume::Sender<ShardMsg>],
    shard: usize,
    txid: u64,
    commit: bool,
) -> flume::Receiver<Verdict> {
    let (tx, rx) = flume::bounded(1);
    let _ = mailboxes[shard].send(ShardMsg::Decide {
        txid,
        commit,
        done: tx,
    });
    rx
}

/// A batch part settled after it was left in doubt, and its outcome:
/// `Committed` or `Aborted` — or, from `resolve_stale`, `Forgotten`: the
/// decider no longer knows (`shard::committed_ids`), the part stays in
/// doubt and needs an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub shard: usize,
    pub txid: u64,
    pub decider: u32,
    pub verdict: Verdict,
}

/// Decide every part left in doubt by a crash, before the shards serve:
/// committed if the decider's log holds its Commit, aborted otherwise.
pub async fn resolve_in_doubt(
    mailboxes: &[flume::Sender<ShardMsg>],
    reports: &[OpenReport],
) -> EngineResult<Vec<Resolved>> {
    let gone = || EngineError::internal("a shard stopped during start-up");
    let mut resolved = Vec::new();
    for report in reports {
        let mut in_doubt = report.in_doubt.clone();
        in_doubt.sort_unstable();
        for (txid, decider) in in_doubt {
            let committed = reports
                .iter()
                .find(|r| r.shard == decider as usize)
                .is_some_and(|r| r.committed.contains(txid));
            ask(&mailboxes[report.shard], |done| ShardMsg::Decide {
                txid,
                commit: committed,
                done,
            })
            .await
            .map_err(|_| gone())?;
            resolved.push(Resolved {
                shard: report.shard,
                txid,
                decider,
                verdict: Verdict::of(committed),
            });
        }
    }
    Ok(resolved)
}

/// How long a part stays undecided on a replicated shard before
/// `resolve_stale` asks its decider what was decided (without changing
/// anything): its Decide was lost with a leader, most likely, while the
/// decider's log holds the decision.
pub const IN_DOUBT_QUERY_AFTER_MS: u64 = 1_000;

/// Settle the cross-shard parts left undecided on replicated shards: a
/// part undecided for `IN_DOUBT_QUERY_AFTER_MS` takes the decision its
/// decider's log holds, if it holds one; a part undecided for
/// `abort_after_ms` (the server's `corestate.cluster.in_doubt_resolve_after_ms`:
/// its coordinator's node died, most likely) has the decider abort the
/// batch — a decider that committed it answers so and changes nothing
/// (presumed abort) — and takes the answer. Returns what it settled, and
/// the parts whose decider answered `Forgotten` (left in doubt); a part
/// whose decider did not answer is left for the next call.
pub async fn resolve_stale(
    mailboxes: &[flume::Sender<ShardMsg>],
    abort_after_ms: u64,
) -> EngineResult<Vec<Resolved>> {
    let lists = ask_all(mailboxes, |done| ShardMsg::InDoubt {
        older_than_ms: IN_DOUBT_QUERY_AFTER_MS.min(abort_after_ms),
        done,
    })
    .await?;
    let mut resolved = Vec::new();
    for (shard, parts) in lists.into_iter().enumerate() {
        for (txid, decider, age_ms) in parts {
            let Some(at_decider) = mailboxes.get(decider as usize) else {
                continue; // a shard count the log's batch does not fit
            };
            let verdict = if age_ms >= abort_after_ms {
                ask(at_decider, |done| ShardMsg::Decide {
                    txid,
                    commit: false,
                    done,
                })
                .await
            } else {
                ask(at_decider, |done| ShardMsg::Decision { txid, done }).await
            };
            let settled = match verdict {
                Ok(Verdict::Committed) => true,
                Ok(Verdict::Aborted) => false,
                Ok(Verdict::Forgotten) => {
                    resolved.push(Resolved {
                        shard,
                        txid,
                        decider,
                        verdict: Verdict::Forgotten,
                    });
                    continue;
                }
                Ok(Verdict::Undecided) | Err(_) => continue,
            };
            if ask(&mailboxes[shard], |done| ShardMsg::Decide {
                txid,
                commit: settled,
                done,
            })
            .await
            .is_ok()
            {
                resolved.push(Resolved {
                    shard,
                    txid,
                    decider,
                    verdict: Verdict::of(settled),
                });
            }
        }
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Two fake shards: 0 decides and answers every Decide and Decision
    /// `Forgotten`; 1 holds `txid` in doubt (for `age_ms`) and votes yes.
    /// Returns the mailboxes and the txids shard 1 was told to decide.
    fn forgetful_decider(
        txid: u64,
        age_ms: u64,
    ) -> (Vec<flume::Sender<ShardMsg>>, Arc<Mutex<Vec<u64>>>) {
        let told = Arc::new(Mutex::new(Vec::new()));
        let mut mailboxes = Vec::new();
        for shard in 0..2 {
            let (tx, rx) = flume::unbounded::<ShardMsg>();
            let told = told.clone();
            std::thread::spawn(move || {
                for msg in rx.iter() {
                    match msg {
                        ShardMsg::InDoubt { done, .. } => {
                            let parts = if shard == 1 {
                                vec![(txid, 0, age_ms)]
                            } else {
                                vec![]
                            };
                            let _ = done.send(parts);
                        }
                        ShardMsg::Decision { done, .. } => {
                            let _ = done.send(Verdict::Forgotten);
                        }
                        ShardMsg::Decide { txid, done, .. } => {
                            if shard == 1 {
                                told.lock().unwrap().push(txid);
                            }
                            let _ = done.send(Verdict::Forgotten);
                        }
                        ShardMsg::Prepare { done, .. } => {
                            let _ = done.send(BatchVote::Yes(vec![b"{}".to_vec()]));
                        }
                        _ => {}
                    }
                }
            });
            mailboxes.push(tx);
        }
        (mailboxes, told)
    }

    #[test]
    fn a_part_whose_decider_forgot_its_batch_stays_in_doubt_and_is_reported() {
        for age_ms in [2_000, 20_000] {
            let (mailboxes, told) = forgetful_decider(42, age_ms);
            let resolved =
                futures_lite::future::block_on(resolve_stale(&mailboxes, 10_000)).unwrap();
            assert_eq!(
                resolved,
                vec![Resolved {
                    shard: 1,
                    txid: 42,
                    decider: 0,
                    verdict: Verdict::Forgotten
                }],
                "undecided for {age_ms} ms"
            );
            assert!(told.lock().unwrap().is_empty(), "no presumed abort");
        }
    }

    #[test]
    fn a_batch_its_decider_answers_forgotten_is_outcome_unknown_not_aborted() {
        let (mailboxes, told) = forgetful_decider(0, 0);
        let get = |id: &str| Command::Get {
            instance_id: id.into(),
        };
        let parts = BTreeMap::from([(0, vec![(0, get("a"))]), (1, vec![(1, get("b"))])]);
        let Err(BatchFailure::Refused(e)) =
            futures_lite::future::block_on(run_atomic(&mailboxes, parts, 42))
        else {
            panic!("the batch must fail");
        };
        assert_eq!(e.message, outcome_unknown().message);
        assert!(
            told.lock().unwrap().is_empty(),
            "the other part is left in doubt"
        );
    }
}
