//! Batch elements (`{op, params}`) and the checks of one entry of a
//! batch's `results`.

use std::collections::BTreeSet;

use serde_json::{json, Value};

/// Ops a batch may hold (the server's default `max_batch_ops`).
pub const MAX_BATCH_OPS: usize = 100;

pub fn op(name: &str, params: Value) -> Value {
    json!({"op": name, "params": params})
}

pub fn apply_op(id: &str, event: &str, payload: Value) -> Value {
    op(
        "APPLY_EVENT",
        json!({"instance_id": id, "event": event, "payload": payload}),
    )
}

pub fn get_op(id: &str) -> Value {
    op("GET_INSTANCE", json!({"instance_id": id}))
}

/// Key names of a JSON object, in the order serde_json keeps them (sorted
/// unless `preserve_order`; used only for set comparison).
pub fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// Check one entry of a `results` array: `{error, result, status}`.
pub fn assert_ok_entry(entry: &Value, what: &str) -> Value {
    assert_eq!(
        keys(entry),
        BTreeSet::from(["error".into(), "result".into(), "status".into()]),
        "{what}: {entry}"
    );
    assert_eq!(entry["status"], "ok", "{what}: {entry}");
    assert!(entry["error"].is_null(), "{what}: {entry}");
    entry["result"].clone()
}

pub fn assert_error_entry(entry: &Value, code: &str, what: &str) -> Value {
    assert_eq!(
        keys(entry),
        BTreeSet::from(["error".into(), "result".into(), "status".into()]),
        "{what}: {entry}"
    );
    assert_eq!(entry["status"], "error", "{what}: {entry}");
    assert!(entry["result"].is_null(), "{what}: {entry}");
    assert_eq!(entry["error"]["code"], code, "{what}: {entry}");
    assert_eq!(entry["error"]["retryable"], false, "{what}: {entry}");
    entry["error"].clone()
}
