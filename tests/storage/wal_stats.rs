//! WAL_STATS reports real numbers, with a per-shard breakdown.

use serde_json::{json, Value};

use crate::counter::put_counter;
use crate::support::Server;

#[test]
fn wal_stats_reports_real_numbers_with_a_shard_breakdown() {
    let server = Server::start(&[]);
    let mut c = server.raw();
    put_counter(&mut c);
    for i in 0..20 {
        c.ok(
            "CREATE_INSTANCE",
            json!({"machine": "ctr", "version": 1, "instance_id": format!("s{i}")}),
        );
    }
    let stats = c.ok("WAL_STATS", Value::Null);
    // 1 machine definition (logged on both shards, one entry as WAL_READ
    // shows it) + 20 creates.
    assert_eq!(stats["entry_count"], 21, "{stats}");
    let records = c.ok("WAL_READ", json!({"from_offset": 0, "limit": 1000}));
    assert_eq!(records["records"].as_array().unwrap().len(), 21);
    assert_eq!(records["records"][20]["sequence"], 21, "{records}");
    // Bytes of records held, not the pre-allocated files; it grows.
    let held = stats["total_size_bytes"].as_u64().unwrap();
    assert!(held > 0 && held < stats["allocated_size_bytes"].as_u64().unwrap());
    c.ok(
        "CREATE_INSTANCE",
        json!({"machine": "ctr", "version": 1, "instance_id": "one-more"}),
    );
    let grown = c.ok("WAL_STATS", Value::Null);
    assert!(
        grown["total_size_bytes"].as_u64().unwrap() > held,
        "{grown}"
    );
    assert_eq!(grown["entry_count"], 22);
    // Reads: start-up recovery of each shard, then the WAL_READ above.
    let io = &grown["io_stats"];
    for key in ["bytes_read", "bytes_written", "fsyncs", "reads", "writes"] {
        assert!(io[key].as_u64().is_some(), "io_stats.{key}: {grown}");
    }
    assert!(io["reads"].as_u64().unwrap() >= 3, "{grown}");
    assert!(stats["segment_count"].as_u64().unwrap() >= 2);
    assert!(stats["io_stats"]["fsyncs"].as_u64().unwrap() > 0);
    assert!(stats["io_stats"]["bytes_written"].as_u64().unwrap() > 0);
    assert!(stats["latest_offset"].as_u64().unwrap() > stats["oldest_offset"].as_u64().unwrap());
    let shards = stats["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    let sum: u64 = shards
        .iter()
        .map(|s| s["entry_count"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, 21);
}
