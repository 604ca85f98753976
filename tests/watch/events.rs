//! What the watch tests expect: their machines, acknowledged applies, the
//! event each must produce, keys in the order sent, and offset checks.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{json, Value};

use crate::support::{ids_on_shard, RawClient, Server, SHARDS};

pub fn order_definition() -> Value {
    json!({
        "states": ["created", "paid", "shipped", "cancelled"],
        "initial": "created",
        "transitions": [
            {"from": "created", "event": "PAY", "to": "paid"},
            {"from": "paid", "event": "SHIP", "to": "shipped"},
            {"from": ["created", "paid"], "event": "CANCEL", "to": "cancelled"},
            {"from": ["created", "paid", "shipped", "cancelled"], "event": "NOTE", "to": "created"}
        ]
    })
}

pub fn ticket_definition() -> Value {
    json!({
        "states": ["open", "closed"],
        "initial": "open",
        "transitions": [
            {"from": "open", "event": "CLOSE", "to": "closed"},
            {"from": "closed", "event": "REOPEN", "to": "open"},
            {"from": ["open", "closed"], "event": "NOTE", "to": "open"}
        ]
    })
}

/// `per_shard` ids on every shard, interleaved (shard 0, shard 1, ...).
pub fn ids_on_all_shards(prefix: &str, per_shard: usize) -> Vec<String> {
    let lists: Vec<Vec<String>> = (0..SHARDS)
        .map(|s| ids_on_shard(prefix, s, per_shard))
        .collect();
    (0..per_shard)
        .flat_map(|i| lists.iter().map(move |l| l[i].clone()))
        .collect()
}

pub fn create(client: &mut RawClient, machine: &str, id: &str) -> u64 {
    let result = client.ok(
        "CREATE_INSTANCE",
        json!({"machine": machine, "version": 1, "instance_id": id}),
    );
    result["wal_offset"].as_u64().expect("create wal_offset")
}

/// One acknowledged APPLY_EVENT, as the writer saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Acked {
    pub offset: u64,
    pub instance_id: String,
    pub machine: String,
    pub event: String,
    pub from_state: String,
    pub to_state: String,
    pub payload: Value,
    pub ctx: Value,
}

pub fn apply(
    client: &mut RawClient,
    machine: &str,
    id: &str,
    event: &str,
    payload: Option<Value>,
) -> Acked {
    let mut params = json!({"instance_id": id, "event": event});
    if let Some(p) = &payload {
        params["payload"] = p.clone();
    }
    let r = client.ok("APPLY_EVENT", params);
    assert_eq!(r["applied"], true, "{r}");
    Acked {
        offset: r["wal_offset"].as_u64().expect("apply wal_offset"),
        instance_id: id.to_string(),
        machine: machine.to_string(),
        event: event.to_string(),
        from_state: r["from_state"].as_str().unwrap_or_default().to_string(),
        to_state: r["to_state"].as_str().unwrap_or_default().to_string(),
        payload: payload.unwrap_or(Value::Null),
        ctx: r["ctx"].clone(),
    }
}

/// The top-level keys of a JSON object in the order they appear.
struct KeyOrder(Vec<String>);

impl<'de> Deserialize<'de> for KeyOrder {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = KeyOrder;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeyOrder, A::Error> {
                let mut keys = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    map.next_value::<IgnoredAny>()?;
                    keys.push(key);
                }
                Ok(KeyOrder(keys))
            }
        }
        d.deserialize_map(Keys)
    }
}

pub fn key_order(payload: &[u8]) -> Vec<String> {
    serde_json::from_slice::<KeyOrder>(payload)
        .unwrap_or_else(|e| {
            panic!(
                "not a JSON object ({e}): {:?}",
                String::from_utf8_lossy(payload)
            )
        })
        .0
}

pub fn offset_of(e: &Value) -> u64 {
    e["wal_offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("event without wal_offset: {e}"))
}

/// The event a subscription must have produced for `a`.
pub fn expected_event(sub: &str, version: u64, a: &Acked, include_ctx: bool) -> Value {
    let mut e = json!({
        "type": "event",
        "subscription_id": sub,
        "instance_id": a.instance_id,
        "machine": a.machine,
        "version": version,
        "wal_offset": a.offset,
        "from_state": a.from_state,
        "to_state": a.to_state,
        "event": a.event,
        "payload": a.payload,
    });
    if include_ctx {
        e["ctx"] = a.ctx.clone();
    }
    e
}

/// Offsets strictly increasing; panics with the first violation.
fn assert_strictly_increasing(offsets: &[u64], who: &str, server: &Server) {
    if let Some(i) = (1..offsets.len()).find(|&i| offsets[i] <= offsets[i - 1]) {
        panic!(
            "{who}: event #{i} has wal_offset {} after {} (not strictly increasing); \
             {} events\nserver stderr:\n{}",
            offsets[i],
            offsets[i - 1],
            offsets.len(),
            server.stderr_tail()
        );
    }
}

/// `got` must be exactly `want` (both in delivery order).
pub fn assert_same_offsets(got: &[u64], want: &[u64], who: &str, server: &Server) {
    assert_strictly_increasing(got, who, server);
    if got == want {
        return;
    }
    let got_set: BTreeSet<u64> = got.iter().copied().collect();
    let want_set: BTreeSet<u64> = want.iter().copied().collect();
    let missing: Vec<u64> = want_set.difference(&got_set).copied().collect();
    let extra: Vec<u64> = got_set.difference(&want_set).copied().collect();
    panic!(
        "{who}: received {} events, expected {}; {} missing (first {:?}), {} unexpected \
         (first {:?}), duplicates: {}\nserver stderr:\n{}",
        got.len(),
        want.len(),
        missing.len(),
        &missing[..missing.len().min(10)],
        extra.len(),
        &extra[..extra.len().min(10)],
        got.len() - got_set.len(),
        server.stderr_tail()
    );
}
