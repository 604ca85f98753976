//! The machines and instances the batch tests use, placed on chosen shards.

use serde_json::{json, Value};

use crate::support::{ids_on_shard, RawClient};

/// Balance every account starts with in the transfer tests.
pub const INITIAL_BALANCE: i64 = 1_000;

/// One id on shard 0 and one on shard 1.
pub fn pair(prefix: &str) -> (String, String) {
    (
        ids_on_shard(prefix, 0, 1).remove(0),
        ids_on_shard(prefix, 1, 1).remove(0),
    )
}

pub fn order_definition() -> Value {
    json!({
        "states": ["created", "paid", "shipped", "cancelled"],
        "initial": "created",
        "transitions": [
            {"from": "created", "event": "PAY", "to": "paid"},
            {"from": "paid", "event": "SHIP", "to": "shipped"},
            {"from": ["created", "paid"], "event": "CANCEL", "to": "cancelled"}
        ]
    })
}

/// An account: one state, MOVE overwrites the balance with the payload.
pub fn account_definition() -> Value {
    json!({
        "states": ["open"],
        "initial": "open",
        "transitions": [{"from": "open", "event": "MOVE", "to": "open"}]
    })
}

pub fn create(client: &mut RawClient, machine: &str, id: &str, ctx: Value) -> u64 {
    let r = client.ok(
        "CREATE_INSTANCE",
        json!({"machine": machine, "version": 1, "instance_id": id, "initial_ctx": ctx}),
    );
    r["wal_offset"].as_u64().expect("create wal_offset")
}

/// GET_INSTANCE's result, or `None` for INSTANCE_NOT_FOUND.
pub fn get(client: &mut RawClient, id: &str) -> Option<Value> {
    let r = client.call("GET_INSTANCE", json!({"instance_id": id}));
    if r["status"] == "error" {
        assert_eq!(r["error"]["code"], "INSTANCE_NOT_FOUND", "GET {id}: {r}");
        return None;
    }
    Some(r["result"].clone())
}
