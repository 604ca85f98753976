//! WAL_READ reaches every record at once, whatever the shards do: an idle
//! shard does not hold back the others' records, and paging by
//! `next_offset` with any `limit` reaches every record exactly once.

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::support::{RawClient, Server};

fn read_all(c: &mut RawClient, limit: u64) -> Vec<Value> {
    let mut out = Vec::new();
    let mut from = json!(0);
    for _ in 0..10_000 {
        let r = c.ok("WAL_READ", json!({"from_offset": from, "limit": limit}));
        out.extend(r["records"].as_array().unwrap().iter().cloned());
        if r["next_offset"].is_null() {
            return out;
        }
        from = r["next_offset"].clone();
    }
    panic!("paging never ended");
}

#[test]
fn with_one_shard_idle_every_record_is_readable_at_once() {
    let server = Server::start(&["--shards", "4"]);
    let mut c = server.raw();
    c.ok(
        "PUT_MACHINE",
        json!({"machine": "m", "version": 1, "definition":
            {"states": ["a"], "initial": "a", "transitions": []}}),
    );
    // Three creates that land on whichever shards they land on; the others idle.
    for id in ["x1", "x2", "x3"] {
        c.ok(
            "CREATE_INSTANCE",
            json!({"machine": "m", "version": 1, "instance_id": id}),
        );
    }
    let records = read_all(&mut c, 100);
    let creates: Vec<&Value> = records
        .iter()
        .filter(|r| r["entry"]["type"] == "create_instance")
        .collect();
    assert_eq!(creates.len(), 3, "{records:?}");
    // Each is readable from its own offset, too.
    for r in creates {
        let one = c.ok("WAL_READ", json!({"from_offset": r["offset"], "limit": 1}));
        assert_eq!(one["records"][0]["offset"], r["offset"], "{one}");
    }
}

#[test]
fn paging_by_next_offset_reaches_every_record_for_every_limit() {
    let server = Server::start(&["--shards", "4"]);
    let mut c = server.raw();
    // Machine definitions are logged on every shard; WAL_READ shows one.
    for v in 1..=20u32 {
        c.ok(
            "PUT_MACHINE",
            json!({"machine": "m", "version": v, "definition":
                {"states": ["a"], "initial": "a", "transitions": []}}),
        );
    }
    for i in 0..40 {
        c.ok(
            "CREATE_INSTANCE",
            json!({"machine": "m", "version": 1, "instance_id": format!("p{i}")}),
        );
    }
    let everything = read_all(&mut c, 1000);
    assert_eq!(everything.len(), 60);
    let sequences: Vec<u64> = everything
        .iter()
        .map(|r| r["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(
        sequences,
        (1..=60).collect::<Vec<u64>>(),
        "sequences 1, 2, 3..."
    );
    for limit in [1, 2, 3, 7] {
        let paged = read_all(&mut c, limit);
        let offsets: Vec<u64> = paged
            .iter()
            .map(|r| r["offset"].as_u64().unwrap())
            .collect();
        let unique: HashSet<u64> = offsets.iter().copied().collect();
        assert_eq!(paged.len(), 60, "limit {limit}");
        assert_eq!(unique.len(), 60, "limit {limit}: no duplicates");
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "limit {limit}: in order"
        );
        assert_eq!(
            paged, everything,
            "limit {limit}: same records, same sequences"
        );
    }
    let stats = c.ok("WAL_STATS", Value::Null);
    assert_eq!(stats["entry_count"], 60, "{stats}");
}
