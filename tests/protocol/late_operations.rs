//! The operations built late answer their 0.3 result keys (or BAD_REQUEST
//! "not supported yet" while unbuilt), and LIST_INSTANCES pages in
//! ascending id order.

use serde_json::{json, Value};

use crate::machines::counter_definition;
use crate::support::Server;

/// The ops still being built answer `BAD_REQUEST` "not supported yet"; once
/// an op is built it must answer with its 0.3 result keys (docs/PROTOCOL.md §4).
#[test]
fn every_late_operation_answers_its_result_or_not_supported_yet() {
    let server = Server::start(&[]);
    let mut client = server.raw();
    client.ok(
        "PUT_MACHINE",
        json!({"machine": "m", "version": 1, "definition": counter_definition()}),
    );
    client.ok(
        "CREATE_INSTANCE",
        json!({"machine": "m", "version": 1, "instance_id": "i1"}),
    );
    let cases: [(&str, Value, &[&str]); 8] = [
        (
            "WATCH_INSTANCE",
            json!({"instance_id": "i1"}),
            &[
                "current_state",
                "current_wal_offset",
                "instance_id",
                "subscription_id",
            ],
        ),
        ("WATCH_ALL", json!({}), &["subscription_id", "wal_offset"]),
        (
            "UNWATCH",
            json!({"subscription_id": "sub-x"}),
            &["removed", "subscription_id"],
        ),
        (
            "BATCH",
            json!({"mode": "atomic",
                   "ops": [{"op": "GET_INSTANCE", "params": {"instance_id": "i1"}}]}),
            &["results"],
        ),
        (
            "SNAPSHOT_INSTANCE",
            json!({"instance_id": "i1"}),
            &[
                "checksum",
                "instance_id",
                "size_bytes",
                "snapshot_id",
                "wal_offset",
            ],
        ),
        (
            "WAL_READ",
            json!({"from_offset": 0, "limit": 1}),
            &["next_offset", "records"],
        ),
        (
            "WAL_STATS",
            Value::Null,
            &[
                "entry_count",
                "io_stats",
                "latest_offset",
                "segment_count",
                "total_size_bytes",
            ],
        ),
        (
            "COMPACT",
            json!({"force_snapshot": false}),
            &[
                "bytes_reclaimed",
                "segments_deleted",
                "snapshots_created",
                "total_snapshots",
                "wal_segments",
            ],
        ),
    ];
    let mut built = Vec::new();
    for (op, params, keys) in cases {
        let response = client.call(op, params);
        if response["status"] == "ok" {
            let result = &response["result"];
            for key in keys {
                assert!(
                    result.get(key).is_some(),
                    "{op} result lacks `{key}`: {response}"
                );
            }
            built.push(op);
            continue;
        }
        let error = &response["error"];
        assert_eq!(error["code"], "BAD_REQUEST", "{op}: {response}");
        assert_eq!(error["retryable"], false, "{op}: {response}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("not supported yet"),
            "{op}: an unbuilt op says 'not supported yet': {response}"
        );
    }
    eprintln!("built: {built:?}");
    // FLUSH_ALL is disabled by default (0.3) or not built: BAD_REQUEST either way.
    client.err_code("FLUSH_ALL", Value::Null, "BAD_REQUEST");
    for op in ["REPLICATE", "REPLICATE_ACK"] {
        client.err_code(op, json!({}), "BAD_REQUEST");
    }
    client.assert_alive();
    let got = client.ok("GET_INSTANCE", json!({"instance_id": "i1"}));
    assert_eq!(got["state"], "s", "{got}");
}

#[test]
fn list_instances_pages_in_ascending_id_order() {
    let server = Server::start(&[]);
    let mut client = server.raw();
    client.ok(
        "PUT_MACHINE",
        json!({"machine": "m", "version": 1, "definition": counter_definition()}),
    );
    let mut ids: Vec<String> = (0..25)
        .map(|i| format!("inst-{:03}", (i * 7) % 25))
        .collect();
    for id in &ids {
        client.ok(
            "CREATE_INSTANCE",
            json!({"machine": "m", "version": 1, "instance_id": id}),
        );
    }
    ids.sort();

    let all = client.ok("LIST_INSTANCES", Value::Null);
    assert_eq!(all["total"], 25, "{all}");
    assert_eq!(all["has_more"], false, "{all}");
    let listed: Vec<&str> = all["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids, "ascending by id");

    let page = client.ok("LIST_INSTANCES", json!({"limit": 10, "offset": 10}));
    assert_eq!(page["total"], 25, "{page}");
    assert_eq!(page["has_more"], true, "{page}");
    let listed: Vec<&str> = page["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids[10..20].to_vec());
    let summary = &page["instances"][0];
    for key in [
        "created_at",
        "id",
        "last_wal_offset",
        "machine",
        "state",
        "updated_at",
        "version",
    ] {
        assert!(summary.get(key).is_some(), "summary lacks {key}: {summary}");
    }

    let last = client.ok("LIST_INSTANCES", json!({"limit": 10, "offset": 20}));
    assert_eq!(last["instances"].as_array().unwrap().len(), 5, "{last}");
    assert_eq!(last["has_more"], false, "{last}");
    let none = client.ok("LIST_INSTANCES", json!({"limit": 0}));
    assert_eq!(none["instances"], json!([]), "{none}");
    assert_eq!(none["total"], 25, "{none}");
}
