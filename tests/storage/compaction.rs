//! COMPACT (and automatic compaction on its thresholds) reclaims disk and
//! loses nothing, also across a SIGKILL; offsets compacted away get a clear
//! error.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::counter::{put_counter, start_with_config};

fn wal_bytes_on_disk(data: &Path) -> u64 {
    let mut total = 0;
    for shard in std::fs::read_dir(data).unwrap().flatten() {
        let wal = shard.path().join("wal");
        if let Ok(files) = std::fs::read_dir(&wal) {
            for f in files.flatten() {
                total += f.metadata().unwrap().len();
            }
        }
    }
    total
}

#[test]
fn compaction_reclaims_disk_loses_nothing_and_old_offsets_get_a_clear_error() {
    let (_work, data, mut server) =
        start_with_config("storage:\n  wal_segment_size_mb: 1\ncompaction:\n  enabled: false\n");
    let mut c = server.raw();
    put_counter(&mut c);
    let pad = "p".repeat(1000);
    for i in 0..3000 {
        c.ok(
            "CREATE_INSTANCE",
            json!({"machine": "ctr", "version": 1, "instance_id": format!("c{i}"), "initial_ctx": {"i": i, "pad": pad}}),
        );
    }
    let before = wal_bytes_on_disk(&data);
    let first = c.ok("WAL_READ", json!({"from_offset": 0, "limit": 1}))["records"][0]["offset"]
        .as_u64()
        .unwrap();
    // Segments younger than 10 s are kept (see shards/src/shard/snapshotting.rs).
    std::thread::sleep(Duration::from_millis(10_500));
    let r = c.ok("COMPACT", json!({"force_snapshot": true}));
    assert_eq!(r["snapshots_created"], 2, "one per shard: {r}");
    assert!(r["segments_deleted"].as_u64().unwrap() > 0, "{r}");
    assert!(r["bytes_reclaimed"].as_u64().unwrap() > 0, "{r}");
    let after = wal_bytes_on_disk(&data);
    assert!(after < before, "disk use went down: {before} -> {after}");
    // A read from before what the log keeps names the oldest offset.
    let e = c.err_code("WAL_READ", json!({"from_offset": first}), "BAD_REQUEST");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("older than the oldest offset"),
        "{e}"
    );
    let e = c.err_code("WATCH_ALL", json!({"from_offset": first}), "BAD_REQUEST");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("older than the oldest offset"),
        "{e}"
    );
    // After a crash, everything is there (snapshot + tail).
    c.ok(
        "APPLY_EVENT",
        json!({"instance_id": "c7", "event": "TICK", "payload": {"after": true}}),
    );
    server.sigkill();
    server.restart();
    let mut c = server.raw();
    let list = c.ok("LIST_INSTANCES", json!({"limit": 1}));
    assert_eq!(list["total"], 3000);
    let got = c.ok("GET_INSTANCE", json!({"instance_id": "c2999"}));
    assert_eq!(got["ctx"]["i"], 2999);
    let got = c.ok("GET_INSTANCE", json!({"instance_id": "c7"}));
    assert_eq!(got["ctx"]["after"], true);
    assert_eq!(got["ctx"]["i"], 7);
    let machines = c.ok("LIST_MACHINES", Value::Null);
    assert_eq!(machines["items"][0]["machine"], "ctr");
}

#[test]
fn automatic_compaction_snapshots_on_its_thresholds_and_loses_nothing() {
    let (_work, _data, mut server) = start_with_config("compaction:\n  enabled: true\n  events_threshold: 50\n  size_threshold_mb: 0\n  min_interval_secs: 1\n");
    let mut c = server.raw();
    put_counter(&mut c);
    for i in 0..300 {
        c.ok("CREATE_INSTANCE", json!({"machine": "ctr", "version": 1, "instance_id": format!("a{i}"), "initial_ctx": {"i": i}}));
    }
    // The shards check their thresholds as they work; give them their interval.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        c.ok("PING", Value::Null);
        let stats = c.ok("WAL_STATS", Value::Null);
        let snapshots: u64 = stats["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["snapshots"].as_u64().unwrap())
            .sum();
        if snapshots >= 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no automatic snapshot: {stats}"
        );
        c.ok("CREATE_INSTANCE", json!({"machine": "ctr", "version": 1}));
        std::thread::sleep(Duration::from_millis(200));
    }
    server.sigkill();
    server.restart();
    let mut c = server.raw();
    let got = c.ok("GET_INSTANCE", json!({"instance_id": "a299"}));
    assert_eq!(got["ctx"]["i"], 299);
    assert!(
        c.ok("LIST_INSTANCES", json!({"limit": 0}))["total"]
            .as_u64()
            .unwrap()
            >= 300
    );
    assert!(
        server.stderr().contains("recovered"),
        "restart logged its recovery"
    );
}
