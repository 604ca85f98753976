//! Every public method of the official Rust client, `rstmdb-client` 0.3.0,
//! called at least once against the real binary, its parsed result checked.
//! A method that errors, or whose result does not parse into the client's
//! type, fails the test. `CLIENT_METHODS` and `CONNECTION_METHODS` list the
//! crate's public methods; a test compares them with the crate's source
//! (when cargo's registry copy is there), so a method missing here shows.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rstmdb_client::{Client, Connection, ConnectionConfig};
use rstmdb_protocol::message::Operation;
use serde_json::{json, Value};

use crate::support::{write_config, Server};

/// `rstmdb_client::Client`'s public methods.
const CLIENT_METHODS: &[&str] = &[
    "new",
    "connect",
    "is_connected",
    "close",
    "connection",
    "ping",
    "info",
    "replication_status",
    "put_machine",
    "get_machine",
    "list_machines",
    "create_instance",
    "get_instance",
    "list_instances",
    "delete_instance",
    "apply_event",
    "batch",
    "wal_read",
    "wal_stats",
    "snapshot_instance",
    "flush_all",
    "compact",
    "watch_instance",
    "watch_all",
    "unwatch",
];

/// `rstmdb_client::Connection`'s public methods.
const CONNECTION_METHODS: &[&str] = &[
    "new",
    "subscribe_stream_events",
    "connect",
    "request",
    "read_loop",
    "is_connected",
    "close",
    "pending_count",
];

/// The `pub fn` names of one source file of the crate, if cargo's registry
/// copy of it can be found.
fn public_methods_in_source(file: &str) -> Option<BTreeSet<String>> {
    let home = std::env::var("CARGO_HOME")
        .ok()
        .or_else(|| std::env::var("HOME").ok().map(|h| format!("{h}/.cargo")))?;
    let registry = std::path::Path::new(&home).join("registry/src");
    for index in std::fs::read_dir(registry).ok()?.flatten() {
        let path = index.path().join("rstmdb-client-0.3.0/src").join(file);
        if let Ok(text) = std::fs::read_to_string(&path) {
            let names = text
                .lines()
                .map(str::trim_start)
                .filter_map(|l| {
                    l.strip_prefix("pub async fn ")
                        .or_else(|| l.strip_prefix("pub fn "))
                })
                .map(|rest| rest.split(['(', '<']).next().unwrap_or("").to_string())
                .collect();
            return Some(names);
        }
    }
    None
}

#[test]
fn the_lists_name_every_public_method_of_the_client() {
    for (file, listed, ty) in [
        ("client.rs", CLIENT_METHODS, "Client"),
        ("connection.rs", CONNECTION_METHODS, "Connection"),
    ] {
        let Some(mut found) = public_methods_in_source(file) else {
            eprintln!("skipped: rstmdb-client 0.3.0 source not found in cargo's registry");
            return;
        };
        // The builders of ConnectionConfig and TlsClientConfig live in
        // connection.rs too; they configure, they do not talk to a server.
        found.retain(|m| !m.starts_with("with_"));
        let listed: BTreeSet<String> = listed.iter().map(|s| s.to_string()).collect();
        let missing: Vec<_> = found.difference(&listed).collect();
        assert!(
            missing.is_empty(),
            "{ty} methods not exercised here: {missing:?}"
        );
    }
}

fn order_definition() -> Value {
    json!({
        "states": ["created", "paid", "shipped"],
        "initial": "created",
        "transitions": [
            {"from": "created", "event": "PAY", "to": "paid"},
            {"from": "paid", "event": "SHIP", "to": "shipped"}
        ]
    })
}

fn flush_config() -> (tempfile::TempDir, String) {
    let dir = tempfile::TempDir::new().unwrap();
    let path = write_config(dir.path(), "storage:\n  allow_flush_all: true\n");
    (dir, path.to_string_lossy().into_owned())
}

#[tokio::test]
async fn every_client_method_works_against_corestate() {
    let (_cfg, config) = flush_config();
    let server = Server::start(&["--config", &config]);
    let mut called: BTreeSet<&str> = BTreeSet::new();

    // new, connect (and the read loop every application must spawn).
    let client = Client::new(
        ConnectionConfig::new(server.addr())
            .with_client_name("surface")
            .with_request_timeout(Duration::from_secs(10)),
    );
    client.connect().await.expect("connect");
    let conn: Arc<Connection> = client.connection();
    let reader = conn.clone();
    tokio::spawn(async move {
        let _ = reader.read_loop().await;
    });
    called.extend(["new", "connect", "connection"]);
    assert!(client.is_connected());
    called.insert("is_connected");

    client.ping().await.expect("ping");
    called.insert("ping");
    let info = client.info().await.expect("info");
    assert_eq!(info["server_name"], "corestate");
    assert_eq!(info["protocol_version"], 1);
    assert!(info["max_batch_ops"].as_u64().unwrap() >= 1);
    assert_eq!(
        info["features"],
        json!(["batch", "idempotency", "wal_read", "watch"])
    );
    called.insert("info");
    let repl = client
        .replication_status()
        .await
        .expect("replication_status");
    assert_eq!(repl["role"], "standalone");
    called.insert("replication_status");

    let put = client
        .put_machine("order", 1, order_definition())
        .await
        .expect("put_machine");
    assert!(put.created && put.machine == "order" && put.version == 1);
    assert_eq!(put.stored_checksum.len(), 8);
    called.insert("put_machine");
    let got = client.get_machine("order", 1).await.expect("get_machine");
    assert_eq!(got.checksum, put.stored_checksum);
    assert_eq!(got.definition["initial"], "created");
    called.insert("get_machine");
    let machines = client.list_machines().await.expect("list_machines");
    assert_eq!(machines["items"][0]["machine"], "order", "{machines}");
    called.insert("list_machines");

    let created = client
        .create_instance("order", 1, Some("o-1"), Some(json!({"n": 1})), Some("k-1"))
        .await
        .expect("create_instance");
    assert_eq!(
        (created.instance_id.as_str(), created.state.as_str()),
        ("o-1", "created")
    );
    let anonymous = client
        .create_instance("order", 1, None, None, None)
        .await
        .expect("create_instance without id");
    assert_eq!(anonymous.instance_id.len(), 36, "a UUID");
    called.insert("create_instance");
    let inst = client.get_instance("o-1").await.expect("get_instance");
    assert_eq!((inst.machine.as_str(), inst.version), ("order", 1));
    assert_eq!(inst.ctx, json!({"n": 1}));
    assert_eq!(inst.last_wal_offset, created.wal_offset);
    called.insert("get_instance");
    let listed = client
        .list_instances(Some("order"), Some("created"), Some(1), Some(0))
        .await
        .expect("list_instances");
    assert_eq!(
        (listed.total, listed.has_more, listed.instances.len()),
        (2, true, 1)
    );
    assert!(listed.instances[0].created_at > 0);
    called.insert("list_instances");

    let applied = client
        .apply_event(
            "o-1",
            "PAY",
            Some(json!({"paid": true})),
            Some("created"),
            Some("pay-1"),
        )
        .await
        .expect("apply_event");
    assert!(applied.applied);
    assert_eq!(
        (applied.from_state.as_str(), applied.to_state.as_str()),
        ("created", "paid")
    );
    assert_eq!(applied.ctx, Some(json!({"n": 1, "paid": true})));
    let replay = client
        .apply_event(
            "o-1",
            "PAY",
            Some(json!({"paid": true})),
            None,
            Some("pay-1"),
        )
        .await
        .expect("apply_event replay");
    assert!(!replay.applied);
    assert_eq!(replay.wal_offset, applied.wal_offset);
    called.insert("apply_event");

    let batch = client
        .batch(
            vec![
                json!({"op": "APPLY_EVENT", "params": {"instance_id": "o-1", "event": "SHIP"}}),
                json!({"op": "GET_INSTANCE", "params": {"instance_id": "o-1"}}),
            ],
            true,
        )
        .await
        .expect("batch atomic");
    assert_eq!(batch["results"][1]["result"]["state"], "shipped", "{batch}");
    let best = client
        .batch(
            vec![
                json!({"op": "PING"}),
                json!({"op": "GET_INSTANCE", "params": {"instance_id": "zz"}}),
            ],
            false,
        )
        .await
        .expect("batch best effort");
    assert_eq!(best["results"][0]["result"]["pong"], true, "{best}");
    assert_eq!(best["results"][1]["error"]["code"], "INSTANCE_NOT_FOUND");
    called.insert("batch");

    let wal = client.wal_read(0, Some(100)).await.expect("wal_read");
    let records = wal["records"].as_array().unwrap();
    assert_eq!(records[0]["entry"]["type"], "put_machine", "{wal}");
    assert_eq!(records[0]["sequence"], 1);
    assert!(wal["next_offset"].as_u64().is_some());
    called.insert("wal_read");
    let stats = client.wal_stats().await.expect("wal_stats");
    assert_eq!(stats["entry_count"], records.len(), "{stats}");
    for key in ["bytes_read", "bytes_written", "fsyncs", "reads", "writes"] {
        assert!(stats["io_stats"][key].is_u64(), "io_stats.{key}: {stats}");
    }
    called.insert("wal_stats");
    let snap = client
        .snapshot_instance("o-1")
        .await
        .expect("snapshot_instance");
    assert_eq!(snap["instance_id"], "o-1");
    assert!(snap["snapshot_id"].as_str().is_some());
    called.insert("snapshot_instance");
    let compacted = client.compact(true).await.expect("compact");
    assert!(
        compacted["snapshots_created"].as_u64().is_some(),
        "{compacted}"
    );
    called.insert("compact");

    let mut events = conn.subscribe_stream_events();
    let watched = client
        .watch_instance("o-1", true)
        .await
        .expect("watch_instance");
    assert_eq!(watched.instance_id, "o-1");
    assert_eq!(watched.current_state, "shipped");
    called.insert("watch_instance");
    let all = client
        .watch_all(Some(vec!["order".into()]), None, None, None, false)
        .await
        .expect("watch_all");
    assert!(all.wal_offset > 0);
    called.insert("watch_all");
    client
        .apply_event(&anonymous.instance_id, "PAY", None, None, None)
        .await
        .expect("apply for the watchers");
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event arrives")
        .expect("event");
    assert_eq!(event.instance_id, anonymous.instance_id);
    assert_eq!(event.to_state, "paid");
    let removed = client.unwatch(&all.subscription_id).await.expect("unwatch");
    assert!(removed.removed);
    called.insert("unwatch");

    let deleted = client
        .delete_instance("o-1", Some("del-1"))
        .await
        .expect("delete_instance");
    assert_eq!(deleted["deleted"], true, "{deleted}");
    called.insert("delete_instance");
    let flushed = client.flush_all().await.expect("flush_all");
    assert_eq!(flushed["flushed"], true, "{flushed}");
    called.insert("flush_all");

    client.close().await.expect("close");
    called.insert("close");
    let expected: BTreeSet<&str> = CLIENT_METHODS.iter().copied().collect();
    assert_eq!(called, expected, "every listed Client method was called");
}

#[tokio::test]
async fn every_connection_method_works_against_corestate() {
    let server = Server::start(&[]);
    let mut called: BTreeSet<&str> = BTreeSet::new();
    let conn = Arc::new(Connection::new(ConnectionConfig::new(server.addr())));
    called.insert("new");
    let mut events = conn.subscribe_stream_events();
    called.insert("subscribe_stream_events");
    conn.connect().await.expect("connect");
    called.insert("connect");
    let reader = conn.clone();
    let loop_task = tokio::spawn(async move { reader.read_loop().await });
    called.insert("read_loop");
    assert!(conn.is_connected());
    called.insert("is_connected");
    assert_eq!(conn.pending_count(), 0);
    called.insert("pending_count");
    let pong = conn
        .request(Operation::Ping, json!({}))
        .await
        .expect("request");
    assert_eq!(pong.result, Some(json!({"pong": true})));
    conn.request(
        Operation::PutMachine,
        json!({"machine": "m", "version": 1, "definition": order_definition()}),
    )
    .await
    .expect("put");
    conn.request(
        Operation::CreateInstance,
        json!({"machine": "m", "version": 1, "instance_id": "c1"}),
    )
    .await
    .expect("create");
    conn.request(Operation::WatchInstance, json!({"instance_id": "c1"}))
        .await
        .expect("watch");
    conn.request(
        Operation::ApplyEvent,
        json!({"instance_id": "c1", "event": "PAY"}),
    )
    .await
    .expect("apply");
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("event in time")
        .expect("event");
    assert_eq!(event.to_state, "paid");
    called.insert("request");
    conn.close().await.expect("close");
    called.insert("close");
    assert!(!conn.is_connected());
    loop_task.abort();
    let expected: BTreeSet<&str> = CONNECTION_METHODS.iter().copied().collect();
    assert_eq!(
        called, expected,
        "every listed Connection method was called"
    );
}
