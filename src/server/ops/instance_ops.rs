//! CREATE_INSTANCE, GET_INSTANCE, DELETE_INSTANCE, APPLY_EVENT (turned into
//! typed commands for the owner shard) and LIST_INSTANCES (fanned out to all
//! shards and merged) — docs/PROTOCOL.md §4.5–4.9.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use shards::shard::result::ResultWriter;
use std::sync::Arc;

use shards::shard::budget::ResponseBudget;
use shards::shard::ShardMsg;
use shards::shard::{ApplyEvent, Command, CreateInstance, DeleteInstance, ListPage, ListQuery};
use shards::{EngineError, EngineResult};

use crate::protocol::params::{take_any, Params};
use crate::server::context::Router;

/// Largest LIST_INSTANCES page; a larger `limit` is served as this many rows
/// (`has_more` tells the client to continue), so a page always fits a frame.
pub const LIST_INSTANCES_PAGE_ROWS_MAX: u32 = 10_000;
/// `limit` when the request names none (PROTOCOL.md §4.7).
pub const LIST_INSTANCES_DEFAULT_LIMIT: u32 = 100;

/// A new instance id: a random UUID v4, or — when the create carries an
/// idempotency key — one derived from the key, so that a retry of the same
/// create names the same instance (and reaches the same shard, which answers
/// with the first result).
fn new_instance_id(idempotency_key: Option<&str>) -> String {
    match idempotency_key {
        None => uuid::Uuid::new_v4().to_string(),
        Some(key) => {
            let digest = Sha256::digest(format!("corestate/create/{key}").as_bytes());
            let mut bytes = [0u8; 16];
            bytes.copy_from_slice(&digest[..16]);
            uuid::Builder::from_random_bytes(bytes)
                .into_uuid()
                .to_string()
        }
    }
}

/// The context of the new instance is moved out of `params`.
pub fn create(params: &mut Value) -> EngineResult<Command> {
    let p = Params::strict(params, "CreateInstanceParams")?;
    let machine = p.str("machine")?.to_owned();
    let version = p.u32("version")?;
    let idempotency_key = p.opt_str("idempotency_key")?.map(str::to_owned);
    let instance_id = match p.opt_str_any(&["instance_id", "id"])? {
        Some(id) => id.to_owned(),
        None => new_instance_id(idempotency_key.as_deref()),
    };
    // `initial_ctx` defaults to {} (PROTOCOL.md §15 row 22), aliases `context`, `ctx`.
    let initial_ctx = match take_any(params, &["initial_ctx", "context", "ctx"]) {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v) => v,
    };
    Ok(Command::Create(CreateInstance {
        instance_id,
        machine,
        version,
        initial_ctx,
        idempotency_key,
    }))
}

pub fn get(params: &Value) -> EngineResult<Command> {
    let p = Params::strict(params, "GetInstanceParams")?;
    Ok(Command::Get {
        instance_id: p.str_any(&["instance_id", "id"])?.to_owned(),
    })
}

pub fn delete(params: &Value) -> EngineResult<Command> {
    // Loose parameters (PROTOCOL.md §4.8).
    let p = Params::loose(params);
    let instance_id = match p.any(&["instance_id", "id"]) {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(EngineError::bad_request("missing instance_id")),
    };
    let idempotency_key = match p.get("idempotency_key") {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    Ok(Command::Delete(DeleteInstance {
        instance_id,
        idempotency_key,
    }))
}

/// The event's payload is moved out of `params`.
pub fn apply(params: &mut Value) -> EngineResult<Command> {
    let p = Params::strict(params, "ApplyEventParams")?;
    let instance_id = p.str_any(&["instance_id", "id"])?.to_owned();
    let event = p.str("event")?.to_owned();
    let expected_state = p.opt_str("expected_state")?.map(str::to_owned);
    let expected_wal_offset = p.opt_offset("expected_wal_offset")?;
    let event_id = p.opt_str("event_id")?.map(str::to_owned);
    let idempotency_key = p.opt_str("idempotency_key")?.map(str::to_owned);
    Ok(Command::Apply(ApplyEvent {
        instance_id,
        event,
        payload: take_any(params, &["payload"]).unwrap_or(Value::Null),
        expected_state,
        expected_wal_offset,
        event_id,
        idempotency_key,
    }))
}

pub struct ListRequest {
    query: ListQuery,
    offset: usize,
    limit: usize,
}

pub fn parse_list(params: &Value) -> EngineResult<ListRequest> {
    let p = Params::lenient(params, "ListInstancesParams")?;
    let machine = p.opt_str("machine")?.map(str::to_owned);
    let state = p.opt_str("state")?.map(str::to_owned);
    let limit = p
        .opt_u32("limit")?
        .unwrap_or(LIST_INSTANCES_DEFAULT_LIMIT)
        .min(LIST_INSTANCES_PAGE_ROWS_MAX) as usize;
    let offset = p.opt_u32("offset")?.unwrap_or(0) as usize;
    Ok(ListRequest {
        query: ListQuery {
            machine,
            state,
            rows_max: offset.saturating_add(limit),
        },
        offset,
        limit,
    })
}

/// Ask every shard (behind whatever this connection sent it before), then
/// merge the per-shard pages, each sorted by id, into one page. `budget`:
/// the asking client's answer budget and request number — the shards charge
/// their pages to it (and hold the request while it is spent).
pub async fn list(
    router: &Router,
    req: ListRequest,
    budget: Option<(Arc<ResponseBudget>, u64)>,
) -> EngineResult<Vec<u8>> {
    let pages: Vec<ListPage> = router
        .ask_all(|done| ShardMsg::List {
            query: req.query.clone(),
            done,
            budget: budget.clone(),
        })
        .await?;
    let total: u64 = pages.iter().map(|p| p.total).sum();
    let mut rows: Vec<(String, Vec<u8>)> = pages.into_iter().flat_map(|p| p.rows).collect();
    rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let page: Vec<_> = rows.into_iter().skip(req.offset).take(req.limit).collect();
    let mut instances =
        Vec::with_capacity(page.iter().map(|(_, r)| r.len() + 1).sum::<usize>() + 2);
    instances.push(b'[');
    for (i, (_, row)) in page.iter().enumerate() {
        if i > 0 {
            instances.push(b',');
        }
        instances.extend_from_slice(row);
    }
    instances.push(b']');
    let mut r = ResultWriter::with_capacity(instances.len() + 48);
    r.bool(
        "has_more",
        (req.offset as u64).saturating_add(page.len() as u64) < total,
    )
    .raw("instances", &instances)
    .u64("total", total);
    Ok(r.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn create_defaults_ctx_to_an_empty_object_and_accepts_aliases() {
        let Command::Create(c) = create(&mut json!({"machine": "m", "version": 1})).unwrap() else {
            panic!()
        };
        assert_eq!(c.initial_ctx, json!({}));
        assert_eq!(c.instance_id.len(), 36);
        let Command::Create(c) =
            create(&mut json!({"machine": "m", "version": 1, "id": "a", "context": {"x": 1}}))
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (c.instance_id.as_str(), c.initial_ctx),
            ("a", json!({"x": 1}))
        );
    }

    #[test]
    fn create_retries_with_a_key_name_the_same_instance() {
        let a = new_instance_id(Some("k"));
        assert_eq!(a, new_instance_id(Some("k")));
        assert_ne!(a, new_instance_id(Some("k2")));
        assert_eq!(uuid::Uuid::parse_str(&a).unwrap().get_version_num(), 4);
    }

    #[test]
    fn delete_reads_loosely() {
        assert_eq!(
            delete(&json!({"instance_id": 5})).err().unwrap().message,
            "invalid request: missing instance_id"
        );
        assert!(delete(&json!({"instance_id": "x", "idempotency_key": 3})).is_ok());
    }
}
