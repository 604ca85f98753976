//! Request dispatch: the authentication gate, then a table from operation to
//! handler. Instance operations become typed commands sent to the owner
//! shard's mailbox (the shard answers into the connection's reply channel);
//! fan-out operations run as a task on the acceptor; session operations are
//! answered at once.
//!
//! The gate: when tokens are configured, every operation except HELLO,
//! AUTH, PING and BYE needs a successful AUTH first — WATCH_*, BATCH, the
//! WAL and admin operations included (stricter than rstmdb 0.3, which let
//! WATCH_* through; docs/PROTOCOL.md §3.4). A failed AUTH is logged as a
//! rate-limited warning with the peer's address.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use serde_json::Value;
use shards::shard::{Command, ReplyTo, ShardMsg};
use shards::{EngineError, EngineResult, ErrorCode};

use super::batch;
use super::context::ServerCtx;
use super::ops::{cluster_ops, instance_ops, machine_ops, session_ops, storage_ops, watch_ops};
use super::refusals::RefusalCause;
use super::session::Session;
use crate::protocol::op::Op;
use crate::protocol::request::Request;
use crate::watch::subscription::ConnWatch;

/// What the connection does after a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Stop reading; close once every earlier answer is written (BYE).
    Close,
}

fn answer(reply: ReplyTo, body: EngineResult<Vec<u8>>) {
    reply.send(body);
}

fn to_shard(ctx: &ServerCtx, cmd: EngineResult<Command>, reply: ReplyTo) {
    match cmd {
        Ok(cmd) => {
            let mailbox = ctx.router.owner(cmd.instance_id());
            if let Err(flume::SendError(ShardMsg::Exec { reply, .. })) =
                mailbox.send(ShardMsg::Exec { cmd, reply })
            {
                answer(reply, Err(EngineError::internal("shard mailbox closed")));
            }
        }
        Err(e) => answer(reply, Err(e)),
    }
}

pub async fn dispatch(
    ctx: &Rc<ServerCtx>,
    session: &mut Session,
    watch: &Rc<RefCell<ConnWatch>>,
    req: Request,
    reply: ReplyTo,
    peer: Option<SocketAddr>,
) -> Flow {
    let op = req.op;
    if ctx.tokens.required() && !session.authenticated && !op.allowed_unauthenticated() {
        answer(
            reply,
            Err(EngineError::new(
                ErrorCode::Unauthorized,
                "authentication required",
            )),
        );
        return Flow::Continue;
    }
    let mut params = req.params;
    run_request(ctx, session, watch, op, &mut params, reply, peer).await
}

/// Run one request that passed the authentication gate and answer it —
/// exactly once — through `reply`. Shared by RCP connections and the HTTP
/// API (`crate::http`), so an operation means the same over both. Values
/// the command keeps (a context, a payload) are moved out of `params`.
pub async fn run_request(
    ctx: &Rc<ServerCtx>,
    session: &mut Session,
    watch: &Rc<RefCell<ConnWatch>>,
    op: Op,
    params: &mut Value,
    reply: ReplyTo,
    peer: Option<SocketAddr>,
) -> Flow {
    match op {
        // In line: a batch's messages must reach the shards before later
        // requests of this connection do.
        Op::Batch => {
            let result = batch::run(ctx, session, watch, params, peer).await;
            answer(reply, result);
            Flow::Continue
        }
        _ => run_op(ctx, session, watch, op, params, reply, peer).await,
    }
}

/// Run one operation other than BATCH (a request, or an element of a
/// best-effort BATCH) and answer it — exactly once — through `reply`.
pub async fn run_op(
    ctx: &Rc<ServerCtx>,
    session: &mut Session,
    watch: &Rc<RefCell<ConnWatch>>,
    op: Op,
    params: &mut Value,
    reply: ReplyTo,
    peer: Option<SocketAddr>,
) -> Flow {
    match op {
        Op::Hello => answer(reply, session_ops::hello(session, params)),
        Op::Auth => {
            let result = session_ops::auth(ctx, session, params);
            if let Err(e) = &result {
                if e.code == ErrorCode::AuthFailed {
                    ctx.refusals
                        .refuse(RefusalCause::AuthFailed, peer, || e.message.clone());
                }
            }
            answer(reply, result)
        }
        Op::Ping => answer(reply, session_ops::ping()),
        Op::Bye => {
            answer(reply, session_ops::bye());
            return Flow::Close;
        }
        Op::Info => answer(reply, session_ops::info(ctx)),
        Op::ReplicationStatus => answer(reply, session_ops::replication_status(ctx).await),
        // PUT_MACHINE is awaited in line: later requests on this connection
        // (a CREATE of the new machine, say) must find it installed.
        Op::PutMachine => answer(reply, machine_ops::put_machine(ctx, params).await),
        Op::GetMachine => answer(reply, machine_ops::get_machine_fresh(ctx, params).await),
        Op::ListMachines => answer(reply, machine_ops::list_machines_fresh(ctx).await),
        Op::CreateInstance => to_shard(ctx, instance_ops::create(params), reply),
        Op::GetInstance => to_shard(ctx, instance_ops::get(params), reply),
        Op::DeleteInstance => to_shard(ctx, instance_ops::delete(params), reply),
        Op::ApplyEvent => to_shard(ctx, instance_ops::apply(params), reply),
        Op::ListInstances => match instance_ops::parse_list(params) {
            Ok(list) => {
                let ctx = ctx.clone();
                let budget = reply.budget.clone().map(|b| (b, reply.seq));
                glommio::spawn_local(async move {
                    let body = instance_ops::list(&ctx.router, list, budget).await;
                    answer(reply, body);
                })
                .detach();
            }
            Err(e) => answer(reply, Err(e)),
        },
        Op::Replicate | Op::ReplicateAck => answer(
            reply,
            Err(EngineError::bad_request(
                "replication operations are handled internally",
            )),
        ),
        Op::Batch => answer(
            reply,
            Err(EngineError::bad_request("BATCH cannot run inside a BATCH")),
        ),
        Op::WatchInstance => answer(reply, watch_ops::watch_instance(ctx, watch, params).await),
        Op::WatchAll => answer(reply, watch_ops::watch_all(ctx, watch, params).await),
        Op::Unwatch => answer(reply, watch_ops::unwatch(watch, params)),
        Op::SnapshotInstance | Op::WalRead | Op::WalStats | Op::Compact | Op::FlushAll => {
            answer(reply, storage_ops::handle(ctx, op, params).await)
        }
        Op::ClusterResolveBatch => match cluster_ops::parse_ruling(params) {
            Ok((txid, commit)) => {
                let ctx = ctx.clone();
                glommio::spawn_local(async move {
                    answer(reply, cluster_ops::rule_batch(&ctx, txid, commit).await);
                })
                .detach();
            }
            Err(e) => answer(reply, Err(e)),
        },
        Op::ClusterAddNode | Op::ClusterRemoveNode => {
            let change = if op == Op::ClusterAddNode {
                cluster_ops::parse_add(params)
            } else {
                cluster_ops::parse_remove(params)
            };
            match change {
                // Adding waits until the node caught up: the connection
                // goes on serving meanwhile.
                Ok(change) => {
                    let ctx = ctx.clone();
                    glommio::spawn_local(async move {
                        answer(reply, cluster_ops::change_members(&ctx, change).await);
                    })
                    .detach();
                }
                Err(e) => answer(reply, Err(e)),
            }
        }
    }
    Flow::Continue
}
