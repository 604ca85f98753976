//! WAL_READ's `sequence`: a record's position in the server's whole log,
//! 1, 2, 3, … in offset order across shards — the same on every read, after
//! a restart and after compaction deleted the segments that held the first
//! records; WAL_STATS `entry_count` is the sequence of the newest record.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{write_config, RawClient, Server};

fn sequences(c: &mut RawClient) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut from = json!(0);
    loop {
        let r = c.ok("WAL_READ", json!({"from_offset": from, "limit": 1000}));
        for rec in r["records"].as_array().unwrap() {
            out.push((
                rec["offset"].as_u64().unwrap(),
                rec["sequence"].as_u64().unwrap(),
            ));
        }
        if r["next_offset"].is_null() {
            return out;
        }
        from = r["next_offset"].clone();
    }
}

fn put(c: &mut RawClient) {
    c.ok(
        "PUT_MACHINE",
        json!({"machine": "m", "version": 1, "definition":
            {"states": ["a", "b"], "initial": "a",
             "transitions": [{"from": "a", "event": "GO", "to": "b"}]}}),
    );
}

#[test]
fn sequences_count_from_one_and_survive_restarts_and_compaction() {
    let cfg = tempfile::TempDir::new().unwrap();
    let config = write_config(
        cfg.path(),
        "storage:\n  wal_segment_size_mb: 1\ncompaction:\n  enabled: false\n",
    );
    let dir = tempfile::TempDir::new().unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let mut server = Server::start_in(dir.path(), &args);
    let mut c = server.raw();
    put(&mut c);
    let pad = "s".repeat(1500);
    for i in 0..1_500 {
        c.ok(
            "CREATE_INSTANCE",
            json!({"machine": "m", "version": 1, "instance_id": format!("s{i}"),
                   "initial_ctx": {"pad": pad}}),
        );
    }
    let before = sequences(&mut c);
    assert_eq!(before.len(), 1_501);
    let numbers: Vec<u64> = before.iter().map(|(_, s)| *s).collect();
    assert_eq!(numbers, (1..=1_501).collect::<Vec<u64>>());
    assert_eq!(c.ok("WAL_STATS", Value::Null)["entry_count"], 1_501);
    // A read from the middle numbers the same records the same way.
    let (mid_offset, mid_seq) = before[700];
    let r = c.ok("WAL_READ", json!({"from_offset": mid_offset, "limit": 3}));
    assert_eq!(r["records"][0]["sequence"], mid_seq);
    assert_eq!(r["records"][2]["sequence"], mid_seq + 2);

    server.restart();
    let mut c = server.raw();
    assert_eq!(sequences(&mut c), before, "the same after a restart");

    // Compaction deletes the first segments (older than 10 s); what is
    // left keeps its numbers, and new records continue them.
    std::thread::sleep(Duration::from_millis(10_500));
    let compact = c.ok("COMPACT", json!({"force_snapshot": true}));
    assert!(
        compact["segments_deleted"].as_u64().unwrap() > 0,
        "{compact}"
    );
    let oldest = c.ok("WAL_STATS", Value::Null)["oldest_offset"]
        .as_u64()
        .unwrap();
    let kept: Vec<(u64, u64)> = before
        .iter()
        .copied()
        .filter(|(o, _)| *o >= oldest)
        .collect();
    let after = {
        let mut out = Vec::new();
        let mut from = json!(oldest);
        loop {
            let r = c.ok("WAL_READ", json!({"from_offset": from, "limit": 1000}));
            for rec in r["records"].as_array().unwrap() {
                out.push((
                    rec["offset"].as_u64().unwrap(),
                    rec["sequence"].as_u64().unwrap(),
                ));
            }
            if r["next_offset"].is_null() {
                break out;
            }
            from = r["next_offset"].clone();
        }
    };
    assert_eq!(after, kept);
    assert!(kept.len() < before.len());
    c.ok(
        "CREATE_INSTANCE",
        json!({"machine": "m", "version": 1, "instance_id": "late"}),
    );
    server.restart();
    let mut c = server.raw();
    let r = c.ok("WAL_STATS", Value::Null);
    assert_eq!(
        r["entry_count"], 1_502,
        "counts survive compaction and restart: {r}"
    );
    let last = c.ok("WAL_READ", json!({"from_offset": before[1_500].0 + 1}));
    assert_eq!(last["records"][0]["sequence"], 1_502, "{last}");
    assert_eq!(last["records"][0]["entry"]["instance_id"], "late");
}
