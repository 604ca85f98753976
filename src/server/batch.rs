//! BATCH (spec §9): best-effort and truly atomic batches, the latter across
//! shards with two-phase commit coordinated here, on the acceptor.
//!
//! # Atomic batches: the commit protocol
//!
//! Ops are grouped by owner shard (order within a shard is kept; ops on
//! different shards touch different instances, so their relative order does
//! not matter). Reads of machines are answered here; reads of instances run
//! on their shard inside the batch and see the batch's earlier ops.
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
//!      `Abort`); the client gets the failing op's error, nothing applied.
//!   3. All "yes": the decider — the lowest participating shard — logs
//!      `Commit`. **That record, once durable, is the decision.** Then the
//!      others log `Commit`, publish, unlock. The client is answered after
//!      the decision is durable.
//!
//! While prepared, the instances are locked: other requests to them are
//! parked by their shard (they wait; they neither fail nor see staged
//! state). Watch events of the batch are published by each shard only after
//! its `Commit`, and a shard's watermark does not pass a held event, so
//! watchers receive them in offset order after the batch is durable.
//!
//! **Recovery** (presumed abort): a shard whose log holds a `Prepare` without
//! a `Commit`/`Abort` asks the decider's log — at start-up, before serving —
//! whether it holds `Commit(txid)`: yes → apply the prepared records; no →
//! drop them. A crash at any instant thus leaves each batch wholly applied or
//! wholly absent on every shard: before the decider's `Commit` is durable
//! nobody has committed, after it everybody will.

use std::cell::Cell;
use std::collections::BTreeMap;

use serde_json::{Map, Value};
use shards::shard::{BatchVote, Command, Reply, ReplyTo, ShardMsg};
use shards::{EngineError, EngineResult};

use super::context::ServerCtx;
use super::ops::{instance_ops, machine_ops};
use crate::protocol::op::Op;
use crate::protocol::params::Params;
use crate::protocol::response::write_error_object;

/// One op of a batch, ready to run.
enum Step {
    /// Runs on the instance's owner shard.
    Instance(Command),
    /// Answered by the acceptor (machine reads).
    Local(EngineResult<Vec<u8>>),
    /// Could not even be read (best-effort mode reports it in place).
    Invalid(EngineError),
}

fn parse_step(ctx: &ServerCtx, op: Op, params: &Value) -> Step {
    let cmd = match op {
        Op::CreateInstance => instance_ops::create(params),
        Op::ApplyEvent => instance_ops::apply(params),
        Op::DeleteInstance => instance_ops::delete(params),
        Op::GetInstance => instance_ops::get(params),
        Op::GetMachine => return Step::Local(machine_ops::get_machine(ctx, params)),
        Op::ListMachines => return Step::Local(machine_ops::list_machines(ctx)),
        _ => unreachable!("filtered by allowed_in_batch"),
    };
    match cmd {
        Ok(cmd) => Step::Instance(cmd),
        Err(e) => Step::Invalid(e),
    }
}

fn allowed_in_batch(op: Op) -> bool {
    matches!(
        op,
        Op::CreateInstance
            | Op::ApplyEvent
            | Op::DeleteInstance
            | Op::GetInstance
            | Op::GetMachine
            | Op::ListMachines
    )
}

/// Read the BATCH params: (atomic?, [(op, params)]).
fn parse(params: &Value, max_ops: usize) -> EngineResult<(bool, Vec<(Op, Value)>)> {
    let p = Params::loose(params);
    let atomic = matches!(p.get("mode"), Some(Value::String(m)) if m == "atomic");
    let Some(Value::Array(items)) = p.any(&["ops", "operations"]) else {
        return Err(EngineError::bad_request("missing ops array"));
    };
    if items.len() > max_ops {
        return Err(EngineError::bad_request(format_args!(
            "batch size {} exceeds limit {max_ops}",
            items.len()
        )));
    }
    let mut ops = Vec::with_capacity(items.len());
    for item in items {
        let name = match item.get("op") {
            Some(Value::String(name)) => name,
            _ => return Err(EngineError::bad_request("missing op type")),
        };
        let op = Op::from_name(name)
            .ok_or_else(|| EngineError::bad_request(format_args!("unknown op `{name}`")))?;
        if !allowed_in_batch(op) {
            return Err(EngineError::bad_request(format_args!(
                "{name} is not allowed inside a BATCH (only instance operations and machine/instance reads)"
            )));
        }
        ops.push((op, item.get("params").cloned().unwrap_or(Value::Null)));
    }
    Ok((atomic, ops))
}

fn results_json(results: &[EngineResult<Vec<u8>>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        64 + results
            .iter()
            .map(|r| r.as_ref().map_or(96, Vec::len) + 48)
            .sum::<usize>(),
    );
    out.extend_from_slice(br#"{"results":["#);
    for (i, r) in results.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match r {
            Ok(result) => {
                out.extend_from_slice(br#"{"error":null,"result":"#);
                out.extend_from_slice(result);
                out.extend_from_slice(br#","status":"ok"}"#);
            }
            Err(e) => {
                out.extend_from_slice(br#"{"error":"#);
                write_error_object(&mut out, e);
                out.extend_from_slice(br#","result":null,"status":"error"}"#);
            }
        }
    }
    out.extend_from_slice(b"]}");
    out
}

fn atomic_failure(index: usize, op: Op, e: EngineError) -> EngineError {
    let mut details = Map::new();
    details.insert("failed_op_index".into(), Value::from(index as u64));
    details.insert("failed_op".into(), Value::from(op.name()));
    details.insert("failed_code".into(), Value::from(e.code.as_str()));
    details.insert("failed_message".into(), Value::from(e.message.clone()));
    details.insert("applied".into(), Value::from(false));
    EngineError::bad_request(format_args!(
        "atomic batch failed: op {index} ({}) failed with {}: {}; no operation of the batch was applied",
        op.name(),
        e.code.as_str(),
        e.message
    ))
    .with_details(details)
}

thread_local! {
    static NEXT_TXID: Cell<u64> = Cell::new(
        shards::wal::offset::wall_clock_tick() << 16,
    );
}

fn next_txid() -> u64 {
    NEXT_TXID.with(|c| {
        let id = c.get() + 1;
        c.set(id);
        id
    })
}

/// Run a BATCH. Everything that must reach a shard before later requests of
/// the same connection is sent before the first await.
pub async fn run(ctx: &ServerCtx, params: &Value) -> EngineResult<Vec<u8>> {
    let (atomic, ops) = parse(params, ctx.limits.max_batch_ops)?;
    let steps: Vec<(Op, Step)> = ops
        .iter()
        .map(|(op, p)| (*op, parse_step(ctx, *op, p)))
        .collect();
    if atomic {
        run_atomic(ctx, steps).await
    } else {
        run_best_effort(ctx, steps).await
    }
}

async fn run_best_effort(ctx: &ServerCtx, steps: Vec<(Op, Step)>) -> EngineResult<Vec<u8>> {
    let mut results: Vec<Option<EngineResult<Vec<u8>>>> = Vec::with_capacity(steps.len());
    let (tx, rx) = flume::unbounded::<Reply>();
    let mut waiting = 0;
    for (i, (_, step)) in steps.into_iter().enumerate() {
        match step {
            Step::Local(r) => results.push(Some(r)),
            Step::Invalid(e) => results.push(Some(Err(e))),
            Step::Instance(cmd) => {
                results.push(None);
                let reply = ReplyTo {
                    tx: tx.clone(),
                    seq: i as u64,
                };
                match ctx
                    .router
                    .owner(cmd.instance_id())
                    .send(ShardMsg::Exec { cmd, reply })
                {
                    Ok(()) => waiting += 1,
                    Err(_) => results[i] = Some(Err(EngineError::internal("shard mailbox closed"))),
                }
            }
        }
    }
    drop(tx);
    while waiting > 0 {
        let reply = rx
            .recv_async()
            .await
            .map_err(|_| EngineError::internal("shard stopped before answering"))?;
        if let Some(slot) = results.get_mut(reply.seq as usize) {
            *slot = Some(reply.body);
        }
        waiting -= 1;
    }
    let results: Vec<_> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(EngineError::internal("no answer"))))
        .collect();
    Ok(results_json(&results))
}

async fn run_atomic(ctx: &ServerCtx, steps: Vec<(Op, Step)>) -> EngineResult<Vec<u8>> {
    let names: Vec<Op> = steps.iter().map(|(op, _)| *op).collect();
    let mut results: Vec<Option<EngineResult<Vec<u8>>>> = Vec::with_capacity(steps.len());
    // shard → [(index in batch, command)], shards ascending.
    let mut parts: BTreeMap<usize, Vec<(usize, Command)>> = BTreeMap::new();
    for (i, (op, step)) in steps.into_iter().enumerate() {
        match step {
            Step::Invalid(e) => return Err(atomic_failure(i, op, e)),
            Step::Local(Err(e)) => return Err(atomic_failure(i, op, e)),
            Step::Local(Ok(r)) => results.push(Some(Ok(r))),
            Step::Instance(cmd) => {
                results.push(None);
                let shard =
                    shards::shard::shard_for_instance(cmd.instance_id(), ctx.router.shards());
                parts.entry(shard).or_default().push((i, cmd));
            }
        }
    }
    let fill =
        |results: &mut Vec<Option<EngineResult<Vec<u8>>>>, index: &[usize], part: Vec<Vec<u8>>| {
            for (i, r) in index.iter().zip(part) {
                results[*i] = Some(Ok(r));
            }
        };
    let mut prepared: Vec<usize> = Vec::new();
    let txid = next_txid();
    let multi = parts.len() > 1;
    let decider = parts.keys().next().copied().unwrap_or(0);
    for (shard, part) in parts {
        let (index, ops): (Vec<usize>, Vec<Command>) = part.into_iter().unzip();
        let (tx, rx) = flume::bounded(1);
        let msg = if multi {
            ShardMsg::Prepare {
                txid,
                decider: decider as u32,
                ops,
                done: tx,
            }
        } else {
            ShardMsg::AtomicBatch { ops, done: tx }
        };
        ctx.router.all()[shard]
            .send(msg)
            .map_err(|_| EngineError::internal("shard mailbox closed"))?;
        let vote = rx
            .recv_async()
            .await
            .map_err(|_| EngineError::internal("shard stopped before voting"))?;
        match vote {
            BatchVote::Yes(part_results) => {
                fill(&mut results, &index, part_results);
                prepared.push(shard);
            }
            BatchVote::No(j, e) => {
                for &p in &prepared {
                    decide(ctx, p, txid, false);
                }
                let global = index.get(j).copied().unwrap_or(0);
                return Err(atomic_failure(global, names[global], e));
            }
        }
    }
    if multi {
        // The decider's durable Commit is the decision; then the others.
        let done = decide(ctx, decider, txid, true);
        done.recv_async()
            .await
            .map_err(|_| EngineError::internal("decider stopped before committing"))?;
        for &p in prepared.iter().filter(|&&p| p != decider) {
            decide(ctx, p, txid, true);
        }
    }
    let results: Vec<_> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(EngineError::internal("no answer"))))
        .collect();
    Ok(results_json(&results))
}

fn decide(ctx: &ServerCtx, shard: usize, txid: u64, commit: bool) -> flume::Receiver<()> {
    let (tx, rx) = flume::bounded(1);
    let _ = ctx.router.all()[shard].send(ShardMsg::Decide {
        txid,
        commit,
        done: tx,
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn batch_params_are_checked_before_anything_runs() {
        assert_eq!(
            parse(&json!({"mode": "atomic"}), 100)
                .err()
                .unwrap()
                .message,
            "invalid request: missing ops array"
        );
        let many: Vec<_> = (0..101).map(|_| json!({"op": "PING"})).collect();
        assert_eq!(
            parse(&json!({"ops": many}), 100).err().unwrap().message,
            "invalid request: batch size 101 exceeds limit 100"
        );
        assert!(parse(&json!({"ops": [{"op": "BATCH"}]}), 100)
            .err()
            .unwrap()
            .message
            .contains("not allowed inside a BATCH"));
        assert!(parse(&json!({"ops": [{"op": "HELLO"}]}), 100).is_err());
        let (atomic, ops) = parse(
            &json!({"operations": [{"op": "GET_INSTANCE", "params": {"instance_id": "a"}}]}),
            100,
        )
        .unwrap();
        assert!(!atomic);
        assert_eq!(ops[0].0, Op::GetInstance);
    }

    #[test]
    fn results_have_the_0_3_shape() {
        let out = results_json(&[
            Ok(br#"{"pong":true}"#.to_vec()),
            Err(EngineError::instance_not_found("zz")),
        ]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"results":[{"error":null,"result":{"pong":true},"status":"ok"},{"error":{"code":"INSTANCE_NOT_FOUND","message":"core error: instance not found: zz","retryable":false},"result":null,"status":"error"}]}"#
        );
    }
}
