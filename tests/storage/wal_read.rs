//! WAL_READ merges both shards in offset order, every record exactly once.

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::counter::put_counter;
use crate::support::Server;

/// Read the whole log through WAL_READ pages of `limit`.
fn read_all(c: &mut crate::support::RawClient, limit: u64) -> Vec<Value> {
    let mut from = json!(0);
    let mut out = Vec::new();
    loop {
        let r = c.ok("WAL_READ", json!({"from_offset": from, "limit": limit}));
        let records = r["records"].as_array().unwrap().clone();
        if records.is_empty() {
            assert!(r["next_offset"].is_null(), "{r}");
            return out;
        }
        assert!(records.len() as u64 <= limit);
        from = r["next_offset"].clone();
        out.extend(records);
    }
}

#[test]
fn wal_read_merges_both_shards_in_offset_order_exactly_once() {
    let server = Server::start(&[]);
    let mut c = server.raw();
    put_counter(&mut c);
    for i in 0..40 {
        c.ok(
            "CREATE_INSTANCE",
            json!({"machine": "ctr", "version": 1, "instance_id": format!("i{i}")}),
        );
        c.ok(
            "APPLY_EVENT",
            json!({"instance_id": format!("i{i}"), "event": "TICK", "payload": {"n": i}}),
        );
    }
    let records = read_all(&mut c, 7);
    // One machine entry (shown once although every shard logs it), 40 creates, 40 applies.
    assert_eq!(records.len(), 81, "{records:?}");
    let offsets: Vec<u64> = records
        .iter()
        .map(|r| r["offset"].as_u64().unwrap())
        .collect();
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing: {offsets:?}"
    );
    let shards: HashSet<u64> = offsets.iter().map(|o| o & 63).collect();
    assert_eq!(shards.len(), 2, "entries from both shards");
    let types: Vec<&str> = records
        .iter()
        .map(|r| r["entry"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(types.iter().filter(|t| **t == "put_machine").count(), 1);
    assert_eq!(types.iter().filter(|t| **t == "apply_event").count(), 40);
    let apply = records
        .iter()
        .find(|r| r["entry"]["type"] == "apply_event")
        .unwrap();
    for key in [
        "instance_id",
        "event",
        "from_state",
        "to_state",
        "payload",
        "ctx",
    ] {
        assert!(
            apply["entry"].get(key).is_some(),
            "apply entry lacks {key}: {apply}"
        );
    }
    // Aliases: fromOffset as a numeric string.
    let second = offsets[1];
    let r = c.ok(
        "WAL_READ",
        json!({"fromOffset": second.to_string(), "limit": 1}),
    );
    assert_eq!(r["records"][0]["offset"].as_u64(), Some(second));
    assert_eq!(r["next_offset"].as_u64(), Some(second + 1));
    // Bad offsets are refused, a huge limit is capped.
    c.err_code("WAL_READ", json!({"from_offset": -1}), "BAD_REQUEST");
    c.err_code("WAL_READ", json!({}), "BAD_REQUEST");
    let capped = c.ok("WAL_READ", json!({"from_offset": 0, "limit": 1_000_000}));
    assert_eq!(capped["records"].as_array().unwrap().len(), 81);
}
