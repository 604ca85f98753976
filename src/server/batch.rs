//! BATCH (docs/PROTOCOL.md §9): best-effort and truly atomic batches, the latter across
//! shards with two-phase commit, coordinated on the acceptor.
//!
//! Atomic batches are all-or-nothing across shards: the two-phase commit
//! and the recovery of batches left in doubt live in
//! `shards::coordinator`; this module reads the batch, answers what needs no
//! shard (machine reads, PING), and hands the rest to the coordinator.
//! While a batch is prepared its instances are locked: other requests to
//! them are parked by their shard (they wait; they neither fail nor see
//! staged state), and its watch events are published only after its Commit.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;

use serde_json::{Map, Value};
use shards::coordinator::{self, BatchFailure};
use shards::shard::committed_ids::{TXID_COUNTER_MASK, TXID_NODE_BITS};
use shards::shard::{Command, Reply, ReplyTo};
use shards::{EngineError, EngineResult};

use super::context::ServerCtx;
use super::dispatch::run_op;
use super::ops::{instance_ops, machine_ops, session_ops};
use super::session::Session;
use crate::protocol::op::Op;
use crate::protocol::params::{take_any, Params};
use crate::protocol::response::write_error_object;
use crate::watch::subscription::ConnWatch;

/// One op of a batch, ready to run.
enum Step {
    /// Runs on the instance's owner shard.
    Instance(Command),
    /// Answered by the acceptor (machine reads, PING).
    Local(EngineResult<Vec<u8>>),
    /// Could not even be read (best-effort mode reports it in place).
    Invalid(EngineError),
}

fn parse_step(ctx: &ServerCtx, op: Op, params: &mut Value) -> Step {
    let cmd = match op {
        Op::CreateInstance => instance_ops::create(params),
        Op::ApplyEvent => instance_ops::apply(params),
        Op::DeleteInstance => instance_ops::delete(params),
        Op::GetInstance => instance_ops::get(params),
        Op::GetMachine => return Step::Local(machine_ops::get_machine(ctx, params)),
        Op::ListMachines => return Step::Local(machine_ops::list_machines(ctx)),
        Op::Ping => return Step::Local(session_ops::ping()),
        other => {
            return Step::Invalid(EngineError::bad_request(format_args!(
                "{} cannot run inside an atomic BATCH",
                other.name()
            )))
        }
    };
    match cmd {
        Ok(cmd) => Step::Instance(cmd),
        Err(e) => Step::Invalid(e),
    }
}

/// Operations an atomic batch can hold: instance operations (applied
/// all-or-nothing), and reads that touch nothing (machines, PING).
fn allowed_in_atomic_batch(op: Op) -> bool {
    matches!(
        op,
        Op::CreateInstance
            | Op::ApplyEvent
            | Op::DeleteInstance
            | Op::GetInstance
            | Op::GetMachine
            | Op::ListMachines
            | Op::Ping
    )
}

/// Operations a best-effort batch runs: every operation except those that
/// change the session or the connection (HELLO, AUTH, BYE, watches) and
/// batches inside batches. rstmdb 0.3 runs those too, with effects a batch
/// cannot express well (a HELLO switching the batch's own wire mode, a
/// WATCH whose events never arrive); here each gets its own error item.
fn allowed_in_best_effort_batch(op: Op) -> bool {
    !matches!(
        op,
        Op::Hello
            | Op::Auth
            | Op::Bye
            | Op::WatchInstance
            | Op::WatchAll
            | Op::Unwatch
            | Op::Batch
            | Op::Replicate
            | Op::ReplicateAck
    )
}

/// One element of the `ops` array: its operation and params, or why it
/// cannot run.
type Item = Result<(Op, Value), EngineError>;

/// Its params are moved out of `item`.
fn parse_item(item: &mut Value) -> Item {
    let name = match item.get("op") {
        Some(Value::String(name)) => name,
        _ => return Err(EngineError::bad_request("missing op type")),
    };
    let op = Op::from_name(name)
        .ok_or_else(|| EngineError::bad_request(format_args!("unknown op `{name}`")))?;
    Ok((op, take_any(item, &["params"]).unwrap_or(Value::Null)))
}

/// Read the BATCH params: (atomic?, every element, moved out of `params`).
fn parse(params: &mut Value, max_ops: usize) -> EngineResult<(bool, Vec<Item>)> {
    let p = Params::loose(params);
    let atomic = matches!(p.get("mode"), Some(Value::String(m)) if m == "atomic");
    let Some(Value::Array(mut items)) = take_any(params, &["ops", "operations"]) else {
        return Err(EngineError::bad_request("missing ops array"));
    };
    if items.len() > max_ops {
        return Err(EngineError::bad_request(format_args!(
            "batch size {} exceeds limit {max_ops}",
            items.len()
        )));
    }
    Ok((atomic, items.iter_mut().map(parse_item).collect()))
}

/// An atomic batch runs only if every element can: the first that cannot
/// fails the whole batch, naming its index.
fn atomic_items(ctx: &ServerCtx, items: Vec<Item>) -> EngineResult<Vec<(Op, Step)>> {
    let mut steps = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let (op, mut params) = item.map_err(|e| refused_element(i, None, e))?;
        if !allowed_in_atomic_batch(op) {
            let e = EngineError::bad_request(format_args!(
                "{} cannot run inside an atomic BATCH (only instance operations, machine reads \
                 and PING)",
                op.name()
            ));
            return Err(refused_element(i, Some(op), e));
        }
        steps.push((op, parse_step(ctx, op, &mut params)));
    }
    Ok(steps)
}

/// An atomic batch refused before anything ran, because element `index`
/// cannot run in one.
fn refused_element(index: usize, op: Option<Op>, e: EngineError) -> EngineError {
    let mut details = Map::new();
    details.insert("failed_op_index".into(), Value::from(index as u64));
    if let Some(op) = op {
        details.insert("failed_op".into(), Value::from(op.name()));
    }
    details.insert("failed_code".into(), Value::from(e.code.as_str()));
    details.insert("failed_message".into(), Value::from(e.message.clone()));
    details.insert("applied".into(), Value::from(false));
    EngineError::bad_request(format_args!(
        "atomic batch refused: element {index}: {}; nothing was applied",
        e.message
    ))
    .with_details(details)
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

/// Batch ids. Unique in the process: every acceptor core coordinates
/// batches, and a shard tells batches apart by id alone — two cores with a
/// counter each would hand out the same ids. One atomic update and one clock
/// read per atomic batch (which costs two rounds of shard messages anyway).
///
/// The counter follows the clock: never below `TXID_PER_TICK` ids per 16 µs
/// tick since the epoch, so ids differ from those of earlier runs, and an
/// id's counter says when it was made — a decider shard that forgets old
/// committed ids relies on that (`shards::shard::committed_ids`): a counter
/// that lagged the clock (one started long ago, seldom used) would make new
/// batches look as old as forgotten ones.
///
/// Unique in a cluster too: a group's decider sees the batches every node
/// coordinates, so the top `TXID_NODE_BITS` bits hold the node's id
/// (`set_txid_node`, before any batch runs).
static NEXT_TXID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static TXID_NODE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
const TXID_PER_TICK: u64 = 16;

/// This process is node `node_id` of a cluster: its batch ids say so.
pub fn set_txid_node(node_id: u64) {
    let bits = (node_id & ((1 << TXID_NODE_BITS) - 1)) << (64 - TXID_NODE_BITS);
    TXID_NODE.store(bits, std::sync::atomic::Ordering::Relaxed);
}

fn next_txid() -> u64 {
    let now =
        shards::wal::offset::wall_clock_tick(&shards::env::SystemClock).wrapping_mul(TXID_PER_TICK);
    let next = |n: u64| n.wrapping_add(1).max(now) & TXID_COUNTER_MASK;
    let before = NEXT_TXID
        .fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |n| Some(next(n)),
        )
        .unwrap_or_else(|n| n);
    TXID_NODE.load(std::sync::atomic::Ordering::Relaxed) | next(before)
}

/// Run a BATCH. Everything that must reach a shard before later requests of
/// the same connection is sent before the first await.
pub async fn run(
    ctx: &Rc<ServerCtx>,
    session: &mut Session,
    watch: &Rc<RefCell<ConnWatch>>,
    params: &mut Value,
    peer: Option<SocketAddr>,
) -> EngineResult<Vec<u8>> {
    let (atomic, items) = parse(params, ctx.limits.max_batch_ops)?;
    if atomic {
        let steps = atomic_items(ctx, items)?;
        run_atomic(ctx, steps).await
    } else {
        run_best_effort(ctx, session, watch, items, peer).await
    }
}

/// Every element runs as the request it would be on its own, in order
/// (instance operations reach their shards in element order; operations
/// that await — PUT_MACHINE, fan-outs — finish before the next element
/// starts), and each gets its own result.
async fn run_best_effort(
    ctx: &Rc<ServerCtx>,
    session: &mut Session,
    watch: &Rc<RefCell<ConnWatch>>,
    items: Vec<Item>,
    peer: Option<SocketAddr>,
) -> EngineResult<Vec<u8>> {
    let mut results: Vec<Option<EngineResult<Vec<u8>>>> = Vec::with_capacity(items.len());
    let (tx, rx) = flume::unbounded::<Reply>();
    let mut waiting = 0;
    for (i, item) in items.into_iter().enumerate() {
        results.push(None);
        let (op, mut params) = match item {
            Ok((op, _)) if !allowed_in_best_effort_batch(op) => {
                results[i] = Some(Err(EngineError::bad_request(format_args!(
                    "{} cannot run inside a BATCH (it changes the session or the connection)",
                    op.name()
                ))));
                continue;
            }
            Ok(item) => item,
            Err(e) => {
                results[i] = Some(Err(e));
                continue;
            }
        };
        // The batch's answer as a whole is charged to the client.
        let reply = ReplyTo::internal(tx.clone(), i as u64);
        run_op(ctx, session, watch, op, &mut params, reply, peer).await;
        waiting += 1;
    }
    drop(tx);
    while waiting > 0 {
        let reply = rx
            .recv_async()
            .await
            .map_err(|_| EngineError::internal("an element was never answered"))?;
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
    match coordinator::run_atomic(ctx.router.all(), parts, next_txid()).await {
        Ok(done) => {
            for (i, r) in done {
                results[i] = Some(Ok(r));
            }
        }
        Err(BatchFailure::Op(i, e)) => return Err(atomic_failure(i, names[i], e)),
        Err(BatchFailure::Internal(e)) | Err(BatchFailure::Refused(e)) => return Err(e),
    }
    let results: Vec<_> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(EngineError::internal("no answer"))))
        .collect();
    Ok(results_json(&results))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn batch_params_are_checked_before_anything_runs() {
        assert_eq!(
            parse(&mut json!({"mode": "atomic"}), 100)
                .err()
                .unwrap()
                .message,
            "invalid request: missing ops array"
        );
        let many: Vec<_> = (0..101).map(|_| json!({"op": "PING"})).collect();
        assert_eq!(
            parse(&mut json!({"ops": many}), 100).err().unwrap().message,
            "invalid request: batch size 101 exceeds limit 100"
        );
        let (atomic, ops) = parse(
            &mut json!({"operations": [{"op": "GET_INSTANCE", "params": {"instance_id": "a"}}]}),
            100,
        )
        .unwrap();
        assert!(!atomic);
        assert_eq!(ops[0].as_ref().unwrap().0, Op::GetInstance);
    }

    #[test]
    fn each_element_is_read_on_its_own() {
        let (_, items) = parse(
            &mut json!({"ops": [{"op": "PING"}, {"op": "NOPE"}, {"params": {}}, {"op": "BATCH"}]}),
            100,
        )
        .unwrap();
        assert_eq!(items[0].as_ref().unwrap().0, Op::Ping);
        assert!(items[1]
            .as_ref()
            .unwrap_err()
            .message
            .contains("unknown op `NOPE`"));
        assert!(items[2]
            .as_ref()
            .unwrap_err()
            .message
            .contains("missing op type"));
        assert_eq!(items[3].as_ref().unwrap().0, Op::Batch);
        assert!(allowed_in_best_effort_batch(Op::Ping));
        assert!(allowed_in_best_effort_batch(Op::ListInstances));
        assert!(!allowed_in_best_effort_batch(Op::Batch));
        assert!(!allowed_in_best_effort_batch(Op::Hello));
        assert!(allowed_in_atomic_batch(Op::Ping));
        assert!(!allowed_in_atomic_batch(Op::ListInstances));
    }

    #[test]
    fn a_refused_atomic_element_is_named_by_index() {
        let e = refused_element(
            3,
            Some(Op::WalStats),
            EngineError::bad_request("WAL_STATS cannot run inside an atomic BATCH"),
        );
        let details = e.details.clone().unwrap();
        assert_eq!(details["failed_op_index"], 3);
        assert_eq!(details["failed_op"], "WAL_STATS");
        assert_eq!(details["applied"], false);
        assert!(e.message.contains("element 3"));
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
