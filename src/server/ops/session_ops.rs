//! HELLO, AUTH, PING, BYE, INFO, REPLICATION_STATUS (docs/PROTOCOL.md §3).

use serde_json::{json, Value};
use shards::shard::result::ResultWriter;
use shards::shard::ShardMsg;
use shards::EngineResult;

use crate::protocol::frame::FRAME_PAYLOAD_MAX_BYTES;
use crate::protocol::params::Params;
use crate::server::context::ServerCtx;
use crate::server::session::Session;

/// The optional features this server offers (PROTOCOL.md §3.2), in the fixed order
/// HELLO and INFO list them: rstmdb 0.3's three (BATCH, idempotency keys,
/// WAL_READ) and `watch` (WATCH_INSTANCE / WATCH_ALL with replay), which
/// the protocol's older documents name.
pub const SERVER_FEATURES: &[&str] = &["batch", "idempotency", "wal_read", "watch"];
pub const SERVER_NAME: &str = "corestate";
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");
pub const PROTOCOL_VERSION: u64 = 1;

fn str_array(items: &[&str]) -> Vec<u8> {
    let mut out = b"[".to_vec();
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        shards::json::canonical::write_str(&mut out, s);
    }
    out.push(b']');
    out
}

pub fn hello(session: &mut Session, params: &Value) -> EngineResult<Vec<u8>> {
    let p = Params::strict(params, "HelloParams")?;
    let version = p.u16("protocol_version")?;
    let wire_modes = p.opt_str_list("wire_modes")?;
    let features = p.opt_str_list("features")?;
    if version as u64 != PROTOCOL_VERSION {
        return Err(shards::EngineError::bad_request(format_args!(
            "unsupported protocol version: {version}"
        )));
    }
    // `binary_json` wins wherever it appears; then `jsonl`; else binary.
    session.jsonl =
        !wire_modes.iter().any(|m| m == "binary_json") && wire_modes.iter().any(|m| m == "jsonl");
    let agreed: Vec<&str> = SERVER_FEATURES
        .iter()
        .copied()
        .filter(|f| features.iter().any(|c| c == f))
        .collect();
    let mut r = ResultWriter::new();
    r.raw("features", &str_array(&agreed))
        .u64("protocol_version", PROTOCOL_VERSION)
        .str("server_name", SERVER_NAME)
        .str("server_version", SERVER_VERSION)
        .str(
            "wire_mode",
            if session.jsonl {
                "jsonl"
            } else {
                "binary_json"
            },
        );
    Ok(r.finish())
}

pub fn auth(ctx: &ServerCtx, session: &mut Session, params: &Value) -> EngineResult<Vec<u8>> {
    let p = Params::strict(params, "AuthParams")?;
    // A missing `method` means bearer (PROTOCOL.md §15 row 16).
    let method = p.opt_str("method")?.unwrap_or("bearer");
    let token = p.str("token")?;
    ctx.tokens.check(method, token)?;
    session.authenticated = true;
    Ok(br#"{"authenticated":true}"#.to_vec())
}

pub fn ping() -> EngineResult<Vec<u8>> {
    Ok(br#"{"pong":true}"#.to_vec())
}

pub fn bye() -> EngineResult<Vec<u8>> {
    Ok(br#"{"goodbye":true}"#.to_vec())
}

pub fn info(ctx: &ServerCtx) -> EngineResult<Vec<u8>> {
    let mut r = ResultWriter::new();
    r.bool("auth_required", ctx.tokens.required())
        .raw("features", &str_array(SERVER_FEATURES))
        .u64("max_batch_ops", ctx.limits.max_batch_ops as u64)
        .u64("max_frame_bytes", FRAME_PAYLOAD_MAX_BYTES as u64)
        .u64("max_payload_bytes", FRAME_PAYLOAD_MAX_BYTES as u64)
        .u64("protocol_version", PROTOCOL_VERSION)
        .str("server_name", SERVER_NAME)
        .str("server_version", SERVER_VERSION)
        .u64("shards", ctx.router.shards() as u64);
    Ok(r.finish())
}

/// REPLICATION_STATUS: `{"role":"standalone"}` on a standalone node (as
/// rstmdb 0.3 answers). On a cluster node, rstmdb's fields where they
/// apply — `role` (`leader` when this node leads every shard's group,
/// `follower` when it leads none, `mixed` otherwise), `connected_replicas`
/// and `replicas[]` (each other node with the largest lag, in log entries,
/// among the groups this node leads) — plus `node_id` and per shard what
/// its group member knows (`shards[]`: role, leader, term, last log,
/// commit and applied index, voters, each follower's lag on a leader,
/// `batch_parts_in_doubt`: cross-shard batch parts prepared and not yet
/// decided).
pub async fn replication_status(ctx: &ServerCtx) -> EngineResult<Vec<u8>> {
    let statuses = ctx
        .router
        .ask_all(|done| ShardMsg::GroupStatus { done })
        .await?;
    let shards: Vec<Value> = statuses.into_iter().flatten().collect();
    if shards.is_empty() {
        return Ok(br#"{"role":"standalone"}"#.to_vec());
    }
    Ok(cluster_status(shards).to_string().into_bytes())
}

fn cluster_status(shards: Vec<Value>) -> Value {
    let leads = shards.iter().filter(|s| s["role"] == "leader").count();
    let role = match leads {
        0 => "follower",
        n if n == shards.len() => "leader",
        _ => "mixed",
    };
    // Each follower's largest lag over the groups this node leads.
    let mut lag: std::collections::BTreeMap<u64, u64> = Default::default();
    for s in shards.iter().filter(|s| s["role"] == "leader") {
        for r in s["replicas"].as_array().into_iter().flatten() {
            if let (Some(node), Some(entries)) = (r["node"].as_u64(), r["lag_entries"].as_u64()) {
                let worst = lag.entry(node).or_default();
                *worst = (*worst).max(entries);
            }
        }
    }
    let replicas: Vec<Value> = lag
        .iter()
        .map(|(node, entries)| json!({"node": node, "lag": entries}))
        .collect();
    json!({
        "role": role,
        "node_id": shards[0]["node"],
        "connected_replicas": replicas.len(),
        "replicas": replicas,
        "shards": shards,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hello_picks_binary_whenever_listed_then_jsonl() {
        let mut s = Session::default();
        let out = hello(
            &mut s,
            &json!({"protocol_version": 1, "wire_modes": ["jsonl", "binary_json"]}),
        )
        .unwrap();
        assert!(!s.jsonl);
        assert!(String::from_utf8(out)
            .unwrap()
            .contains(r#""wire_mode":"binary_json""#));
        hello(
            &mut s,
            &json!({"protocol_version": 1, "wire_modes": ["jsonl"]}),
        )
        .unwrap();
        assert!(s.jsonl);
        hello(&mut s, &json!({"protocol_version": 1, "wire_modes": ["x"]})).unwrap();
        assert!(!s.jsonl);
    }

    #[test]
    fn hello_rejects_other_versions_and_null_lists() {
        let mut s = Session::default();
        assert_eq!(
            hello(&mut s, &json!({"protocol_version": 2}))
                .unwrap_err()
                .message,
            "invalid request: unsupported protocol version: 2"
        );
        assert!(hello(&mut s, &json!({"protocol_version": 1, "features": null})).is_err());
        let out = hello(
            &mut s,
            &json!({"protocol_version": 1, "features": ["idempotency", "zzz"]}),
        )
        .unwrap();
        assert!(String::from_utf8(out)
            .unwrap()
            .contains(r#""features":["idempotency"]"#));
    }
}
