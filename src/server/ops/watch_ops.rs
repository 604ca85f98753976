//! WATCH_INSTANCE, WATCH_ALL, UNWATCH (docs/PROTOCOL.md §10). A new subscription is a
//! filter plus a cursor: `from_offset` when given (history is replayed from
//! the logs), else the point the merged stream has reached.

use std::cell::RefCell;
use std::rc::Rc;

use serde_json::Value;
use shards::shard::result::ResultWriter;
use shards::shard::{Command, Reply, ReplyTo, ShardMsg};
use shards::{EngineError, EngineResult};

use crate::protocol::params::Params;
use crate::server::context::ServerCtx;
use crate::watch::subscription::{
    new_subscription_id, ConnWatch, Filter, Subscription, WATCH_SUBSCRIPTIONS_PER_CONNECTION_MAX,
};

fn include_ctx(p: &Params<'_>) -> EngineResult<bool> {
    match p.get("include_ctx") {
        None => Ok(true),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::Null) => Err(EngineError::bad_request(
            "invalid type: null, expected a boolean",
        )),
        Some(_) => Err(EngineError::bad_request(
            "invalid type for `include_ctx`, expected a boolean",
        )),
    }
}

fn add(ctx: &ServerCtx, watch: &Rc<RefCell<ConnWatch>>, sub: Subscription) -> EngineResult<()> {
    let mut w = watch.borrow_mut();
    if w.subs.len() >= WATCH_SUBSCRIPTIONS_PER_CONNECTION_MAX {
        return Err(EngineError::bad_request(format_args!(
            "too many subscriptions on this connection (max {WATCH_SUBSCRIPTIONS_PER_CONNECTION_MAX})"
        )));
    }
    if !w.registered {
        ctx.merger.borrow_mut().register_waker(&w.waker);
        w.registered = true;
    }
    w.subs.push(sub);
    // Deliver anything already due (history, or events released meanwhile).
    let _ = w.waker.try_send(());
    Ok(())
}

pub async fn watch_instance(
    ctx: &ServerCtx,
    watch: &Rc<RefCell<ConnWatch>>,
    params: &Value,
) -> EngineResult<Vec<u8>> {
    let p = Params::strict(params, "WatchInstanceParams")?;
    let instance_id = p.str_any(&["instance_id", "id"])?.to_owned();
    let include_ctx = include_ctx(&p)?;
    let from_offset = p.opt_offset("from_offset")?;
    // The instance must exist: ask its shard (behind this connection's
    // earlier requests, so a just-created instance is found).
    let (tx, rx) = flume::bounded::<Reply>(1);
    ctx.router
        .owner(&instance_id)
        .send(ShardMsg::Exec {
            cmd: Command::Get {
                instance_id: instance_id.clone(),
            },
            reply: ReplyTo::internal(tx, 0),
        })
        .map_err(|_| EngineError::internal("shard mailbox closed"))?;
    let got = rx
        .recv_async()
        .await
        .map_err(|_| EngineError::internal("shard stopped before answering"))?
        .body?;
    let current: Value = serde_json::from_slice(&got)
        .map_err(|e| EngineError::internal(format!("instance result: {e}")))?;
    let last_offset = current["last_wal_offset"].as_u64().unwrap_or(0);
    if let Some(from) = from_offset {
        check_retained(ctx, from).await?;
    }
    let id = new_subscription_id();
    add(
        ctx,
        watch,
        Subscription {
            id: id.clone(),
            filter: Filter::Instance(instance_id.clone()),
            include_ctx,
            cursor: from_offset.unwrap_or(last_offset + 1),
        },
    )?;
    let mut r = ResultWriter::new();
    r.str(
        "current_state",
        current["state"].as_str().unwrap_or_default(),
    )
    .u64("current_wal_offset", last_offset)
    .str("instance_id", &instance_id)
    .str("subscription_id", &id);
    Ok(r.finish())
}

/// A replay from `from` needs every shard's log from `from` on: refuse an
/// offset older than what compaction kept, naming the oldest one available.
pub async fn check_retained(ctx: &ServerCtx, from: u64) -> EngineResult<()> {
    let oldest = super::storage_ops::shard_stats(&ctx.router)
        .await?
        .iter()
        .map(|s| s.retained_from)
        .max()
        .unwrap_or(0);
    if from < oldest {
        return Err(EngineError::bad_request(format_args!(
            "from_offset {from} is older than the oldest offset still in the log ({oldest}); \
             earlier records were compacted away"
        )));
    }
    Ok(())
}

pub async fn watch_all(
    ctx: &ServerCtx,
    watch: &Rc<RefCell<ConnWatch>>,
    params: &Value,
) -> EngineResult<Vec<u8>> {
    let p = Params::lenient(params, "WatchAllParams")?;
    let include_ctx = include_ctx(&p)?;
    let from_offset = p.opt_offset("from_offset")?;
    let filter = Filter::All {
        machines: p.opt_str_list("machines")?,
        from_states: p.opt_str_list("from_states")?,
        to_states: p.opt_str_list("to_states")?,
        events: p.opt_str_list("events")?,
    };
    if let Some(from) = from_offset {
        check_retained(ctx, from).await?;
    }
    let cursor = from_offset.unwrap_or_else(|| ctx.merger.borrow().live_start());
    let id = new_subscription_id();
    add(
        ctx,
        watch,
        Subscription {
            id: id.clone(),
            filter,
            include_ctx,
            cursor,
        },
    )?;
    let mut r = ResultWriter::new();
    r.str("subscription_id", &id).u64("wal_offset", cursor);
    Ok(r.finish())
}

pub fn unwatch(watch: &Rc<RefCell<ConnWatch>>, params: &Value) -> EngineResult<Vec<u8>> {
    let p = Params::strict(params, "UnwatchParams")?;
    let id = p.str("subscription_id")?;
    let removed = watch.borrow_mut().remove(id);
    let mut r = ResultWriter::new();
    r.bool("removed", removed).str("subscription_id", id);
    Ok(r.finish())
}
