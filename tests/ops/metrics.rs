//! The Prometheus endpoint (docs/PROTOCOL.md §13.6): off unless enabled; when on, a
//! separate HTTP port serves `/metrics` in the text format with the spec's
//! metric names plus corestate's per-shard ones, `/health`, `/healthz`, `/`
//! and 404 for the rest.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{fresh_port, http_get, parse_exposition, Server};

pub(crate) fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, headers, body) = http_get(addr, "/metrics").expect("scrape");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{headers}"
    );
    // Every metric has HELP and TYPE.
    for line in body.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split_whitespace().nth(2).unwrap();
        assert!(
            body.contains(&format!("# HELP {name} ")),
            "no HELP for {name}"
        );
    }
    parse_exposition(&body)
}

pub(crate) fn value(samples: &HashMap<String, f64>, key: &str) -> f64 {
    *samples.get(key).unwrap_or_else(|| {
        panic!("missing sample {key}; have:\n{:#?}", {
            let mut keys: Vec<_> = samples.keys().collect();
            keys.sort();
            keys
        })
    })
}

const DOOR: &str = r#"{"states":["open","closed"],"initial":"open","transitions":[{"from":"open","event":"CLOSE","to":"closed"},{"from":"closed","event":"OPEN","to":"open"}]}"#;

#[test]
fn metrics_are_off_unless_enabled() {
    let port = fresh_port();
    let dir = tempfile::TempDir::new().unwrap();
    let config = crate::support::write_config(
        dir.path(),
        &format!("metrics:\n  enabled: false\n  bind_addr: \"127.0.0.1:{port}\"\n"),
    );
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    server.raw().assert_alive();
    let metrics_addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        TcpStream::connect_timeout(&metrics_addr, Duration::from_millis(500)).is_err(),
        "nothing may listen on the metrics address when metrics are off"
    );
}

#[test]
fn the_endpoint_serves_metrics_health_and_an_index() {
    let port = fresh_port();
    let dir = tempfile::TempDir::new().unwrap();
    let config = crate::support::write_config(
        dir.path(),
        &format!("metrics:\n  enabled: true\n  bind_addr: \"127.0.0.1:{port}\"\n"),
    );
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for path in ["/health", "/healthz"] {
        let (status, _, body) = http_get(addr, path).expect("health");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, "OK");
    }
    let (status, headers, body) = http_get(addr, "/").expect("index");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers.to_ascii_lowercase().contains("text/html"),
        "{headers}"
    );
    assert!(body.contains("href=\"/metrics\""), "{body}");
    let (status, _, body) = http_get(addr, "/nope").expect("404");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    assert_eq!(body, "Not Found");
    // A request that never ends its head does not wedge the endpoint.
    let _stuck = TcpStream::connect(addr).expect("connect");
    assert_eq!(http_get(addr, "/healthz").expect("health").2, "OK");
    assert!(server
        .stderr()
        .contains(&format!("http://127.0.0.1:{port}/metrics")));
}

#[test]
fn a_scrape_reports_requests_errors_connections_watches_wal_shards_and_process() {
    let port = fresh_port();
    let metrics_bind = format!("127.0.0.1:{port}");
    let (_dir, auth) = crate::support::auth_config();
    let server = Server::start(&[
        "--metrics-bind",
        &metrics_bind,
        "--config",
        auth.to_str().unwrap(),
    ]);
    let addr: SocketAddr = metrics_bind.parse().unwrap();

    let mut c = server.raw();
    c.err_code(
        "AUTH",
        json!({"method": "bearer", "token": "wrong"}),
        "AUTH_FAILED",
    );
    c.err_code("INFO", Value::Null, "UNAUTHORIZED");
    c.ok(
        "AUTH",
        json!({"method": "bearer", "token": crate::support::AUTH_TOKEN}),
    );
    let mut watcher = server.raw();
    watcher.ok(
        "AUTH",
        json!({"method": "bearer", "token": crate::support::AUTH_TOKEN}),
    );
    watcher.ok("WATCH_ALL", json!({}));
    watcher.ok("WATCH_ALL", json!({"machines": ["door"]}));

    let definition: Value = serde_json::from_str(DOOR).unwrap();
    c.ok(
        "PUT_MACHINE",
        json!({"machine": "door", "version": 1, "definition": definition}),
    );
    for i in 0..10 {
        let id = format!("door-{i}");
        c.ok(
            "CREATE_INSTANCE",
            json!({"machine": "door", "version": 1, "instance_id": id}),
        );
        c.ok("APPLY_EVENT", json!({"instance_id": id, "event": "CLOSE"}));
    }
    c.err_code(
        "GET_INSTANCE",
        json!({"instance_id": "missing"}),
        "INSTANCE_NOT_FOUND",
    );
    // The watcher receives its events (2 subscriptions × 10 transitions).
    for _ in 0..20 {
        let frame = watcher.read_frame().expect("event");
        assert_eq!(frame.json()["type"], "event");
    }

    let m = scrape(addr);
    assert_eq!(
        value(&m, "rstmdb_requests_total{operation=\"CREATE_INSTANCE\"}"),
        10.0
    );
    assert_eq!(
        value(&m, "rstmdb_requests_total{operation=\"APPLY_EVENT\"}"),
        10.0
    );
    assert_eq!(
        value(&m, "rstmdb_requests_total{operation=\"WATCH_ALL\"}"),
        2.0
    );
    assert_eq!(value(&m, "rstmdb_errors_total{code=\"AUTH_FAILED\"}"), 1.0);
    assert_eq!(value(&m, "rstmdb_errors_total{code=\"UNAUTHORIZED\"}"), 1.0);
    assert_eq!(
        value(&m, "rstmdb_errors_total{code=\"INSTANCE_NOT_FOUND\"}"),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "rstmdb_request_duration_seconds_count{operation=\"APPLY_EVENT\"}"
        ),
        10.0
    );
    assert_eq!(
        value(
            &m,
            "rstmdb_request_duration_seconds_bucket{operation=\"APPLY_EVENT\",le=\"+Inf\"}"
        ),
        10.0
    );
    assert!(
        value(
            &m,
            "rstmdb_request_duration_seconds_bucket{operation=\"APPLY_EVENT\",le=\"1\"}"
        ) <= 10.0
    );
    assert!(
        value(
            &m,
            "rstmdb_request_duration_seconds_sum{operation=\"APPLY_EVENT\"}"
        ) > 0.0
    );
    assert!(value(&m, "rstmdb_connections_total") >= 2.0);
    assert!(value(&m, "rstmdb_connections_active") >= 2.0);
    assert_eq!(value(&m, "rstmdb_subscriptions_active{type=\"all\"}"), 2.0);
    assert_eq!(
        value(&m, "rstmdb_subscriptions_active{type=\"instance\"}"),
        0.0
    );
    assert_eq!(
        value(&m, "rstmdb_events_forwarded_total{type=\"all\"}"),
        20.0
    );
    assert_eq!(value(&m, "rstmdb_instances_total"), 10.0);
    assert_eq!(value(&m, "rstmdb_machines_total"), 1.0);
    assert!(value(&m, "rstmdb_wal_entries") >= 20.0);
    assert!(value(&m, "rstmdb_wal_segments") >= 2.0);
    assert!(value(&m, "rstmdb_wal_size_bytes") > 0.0);
    assert!(value(&m, "rstmdb_wal_bytes_written_total") > 0.0);
    assert!(value(&m, "rstmdb_wal_writes_total") > 0.0);
    assert!(value(&m, "rstmdb_wal_fsyncs_total") > 0.0);
    assert_eq!(
        value(&m, "corestate_refusals_total{cause=\"auth_failed\"}"),
        1.0
    );
    assert_eq!(
        value(&m, "corestate_refusals_total{cause=\"connection_limit\"}"),
        0.0
    );
    assert!(value(&m, "corestate_watch_subscriber_lag_offsets_max") >= 0.0);
    assert!(value(&m, "corestate_watch_released_offset") > 0.0);
    let mut records = 0.0;
    for shard in ["0", "1"] {
        assert_eq!(
            value(&m, &format!("corestate_shard_up{{shard=\"{shard}\"}}")),
            1.0
        );
        assert!(
            value(
                &m,
                &format!("corestate_shard_mailbox_depth{{shard=\"{shard}\"}}")
            ) >= 0.0
        );
        assert!(
            value(
                &m,
                &format!("corestate_shard_wal_syncs_total{{shard=\"{shard}\"}}")
            ) > 0.0
        );
        assert!(
            value(
                &m,
                &format!("corestate_shard_wal_group_commits_total{{shard=\"{shard}\"}}")
            ) > 0.0
        );
        assert!(
            value(
                &m,
                &format!("corestate_shard_wal_records_per_sync{{shard=\"{shard}\"}}")
            ) > 0.0
        );
        let commits = value(
            &m,
            &format!("corestate_shard_wal_commit_latency_seconds_count{{shard=\"{shard}\"}}"),
        );
        assert!(commits > 0.0, "commit latency histogram for shard {shard}");
        assert_eq!(
            value(
                &m,
                &format!(
                    "corestate_shard_wal_commit_latency_seconds_bucket{{shard=\"{shard}\",le=\"+Inf\"}}"
                )
            ),
            commits
        );
        records += value(
            &m,
            &format!("corestate_shard_wal_records_appended_total{{shard=\"{shard}\"}}"),
        );
    }
    assert!(
        records >= 20.0,
        "every create and apply is a record: {records}"
    );
    for name in [
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
        "process_virtual_memory_bytes",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_threads",
    ] {
        assert!(value(&m, name) > 0.0, "{name}");
    }

    // Subscriptions end with their connection.
    drop(watcher);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = scrape(addr);
        if value(&m, "rstmdb_subscriptions_active{type=\"all\"}") == 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "subscriptions still counted after disconnect"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every shard's executor serves connections too (`server::cores`): core 0
/// accepts and hands each connection to the core with the fewest open
/// ones, the scrape counts them per core, and a watcher on either core gets
/// every event, in offset order, through that core's replica of the merge.
#[test]
fn connections_spread_over_the_acceptor_cores_and_watchers_on_each_get_every_event() {
    const APPLIES: usize = 40;
    let port = fresh_port();
    let metrics_bind = format!("127.0.0.1:{port}");
    let server = Server::start(&["--metrics-bind", &metrics_bind]);
    let addr: SocketAddr = metrics_bind.parse().unwrap();
    // One at a time, so that each is seated before the next arrives:
    // core 0, core 1, then core 0 again (ties go to the lower core).
    let mut watchers = Vec::new();
    for _ in 0..2 {
        let mut w = server.raw();
        w.assert_alive();
        watchers.push(w);
    }
    let mut writer = server.raw();
    writer.assert_alive();
    let samples = scrape(addr);
    assert_eq!(value(&samples, "rstmdb_connections_active"), 3.0);
    assert_eq!(
        value(&samples, "corestate_core_connections_open{core=\"0\"}"),
        2.0
    );
    assert_eq!(
        value(&samples, "corestate_core_connections_open{core=\"1\"}"),
        1.0
    );

    for w in &mut watchers {
        w.ok("WATCH_ALL", json!({}));
    }
    writer.ok(
        "PUT_MACHINE",
        json!({"machine": "door", "version": 1, "definition": serde_json::from_str::<Value>(DOOR).unwrap()}),
    );
    let ids: Vec<String> = (0..crate::support::SHARDS)
        .flat_map(|s| crate::support::ids_on_shard("door", s, 2))
        .collect();
    let mut offsets = Vec::new();
    for id in &ids {
        writer.ok(
            "CREATE_INSTANCE",
            json!({"machine": "door", "version": 1, "instance_id": id}),
        );
    }
    for i in 0..APPLIES {
        let id = &ids[i % ids.len()];
        let event = if (i / ids.len()).is_multiple_of(2) {
            "CLOSE"
        } else {
            "OPEN"
        };
        let r = writer.ok("APPLY_EVENT", json!({"instance_id": id, "event": event}));
        offsets.push(r["wal_offset"].as_u64().expect("wal_offset"));
    }
    for (n, w) in watchers.iter_mut().enumerate() {
        let got: Vec<u64> = (0..APPLIES)
            .map(|_| {
                let e = w.read_response();
                assert_eq!(e["type"], "event", "watcher {n}: {e}");
                e["wal_offset"].as_u64().expect("event wal_offset")
            })
            .collect();
        assert_eq!(got, offsets, "watcher {n} (core {}) saw", [0, 1][n]);
    }
}
