//! Storage lifecycle through the protocol: WAL_READ merged across shards,
//! WAL_STATS, COMPACT reclaiming disk without losing anything (across a
//! SIGKILL restart), retention errors for old offsets, SNAPSHOT_INSTANCE,
//! and FLUSH_ALL that a restart does not undo.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use support::{write_config, Server};

fn put_counter(c: &mut support::RawClient) {
    c.ok(
        "PUT_MACHINE",
        json!({"machine": "ctr", "version": 1, "definition": {
            "states": ["on"], "initial": "on",
            "transitions": [{"from": "on", "event": "TICK", "to": "on"}]}}),
    );
}

/// A server on a fresh data directory with `yaml` as its config file; the
/// temp dir must outlive the server.
fn start_with_config(yaml: &str) -> (tempfile::TempDir, std::path::PathBuf, Server) {
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), yaml);
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let config = config.to_str().unwrap().to_owned();
    let server = Server::start_in(&data, &["--config", &config]);
    (work, data, server)
}

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

/// Read the whole log through WAL_READ pages of `limit`.
fn read_all(c: &mut support::RawClient, limit: u64) -> Vec<Value> {
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
fn snapshot_instance_answers_the_0_3_shape() {
    let server = Server::start(&[]);
    let mut c = server.raw();
    put_counter(&mut c);
    let created = c.ok(
        "CREATE_INSTANCE",
        json!({"machine": "ctr", "version": 1, "instance_id": "x", "initial_ctx": {"a": 1}}),
    );
    let r = c.ok("SNAPSHOT_INSTANCE", json!({"instance_id": "x"}));
    assert_eq!(r["instance_id"], "x");
    assert!(r["snapshot_id"].as_str().unwrap().starts_with("snap-"));
    assert_eq!(r["wal_offset"], created["wal_offset"]);
    assert!(r["size_bytes"].as_u64().unwrap() > 0);
    let checksum = r["checksum"].as_str().unwrap();
    assert!(checksum.len() == 8 && checksum.chars().all(|ch| ch.is_ascii_hexdigit()));
    c.err_code(
        "SNAPSHOT_INSTANCE",
        json!({"instance_id": "nope"}),
        "INSTANCE_NOT_FOUND",
    );
    c.err_code(
        "SNAPSHOT_INSTANCE",
        json!({"instance_id": 5}),
        "BAD_REQUEST",
    );
}

#[test]
fn flush_all_is_refused_unless_enabled_and_survives_a_restart() {
    let server = Server::start(&[]);
    let mut c = server.raw();
    let e = c.err_code("FLUSH_ALL", Value::Null, "BAD_REQUEST");
    assert_eq!(
        e["message"],
        "invalid request: FLUSH_ALL is disabled. Set storage.allow_flush_all=true in config to enable."
    );
    drop(server);

    let (_work, _data, mut server) = start_with_config("storage:\n  allow_flush_all: true\n");
    let mut c = server.raw();
    put_counter(&mut c);
    for i in 0..10 {
        c.ok(
            "CREATE_INSTANCE",
            json!({"machine": "ctr", "version": 1, "instance_id": format!("f{i}")}),
        );
    }
    let r = c.ok("FLUSH_ALL", Value::Null);
    assert_eq!(
        r,
        json!({"flushed": true, "instances_removed": 10, "machines_removed": 1})
    );
    assert_eq!(c.ok("LIST_INSTANCES", Value::Null)["total"], 0);
    c.err_code(
        "CREATE_INSTANCE",
        json!({"machine": "ctr", "version": 1}),
        "MACHINE_NOT_FOUND",
    );
    server.sigkill();
    server.restart();
    let mut c = server.raw();
    assert_eq!(c.ok("LIST_INSTANCES", Value::Null)["total"], 0);
    assert_eq!(c.ok("LIST_MACHINES", Value::Null)["items"], json!([]));
    // The server is fully usable after a flush.
    put_counter(&mut c);
    c.ok(
        "CREATE_INSTANCE",
        json!({"machine": "ctr", "version": 1, "instance_id": "again"}),
    );
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
