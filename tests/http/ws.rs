//! `GET /v1/watch`: WATCH_ALL / WATCH_INSTANCE over WebSocket — events in
//! strictly increasing offset order across shards, the same filters,
//! replay from `from_offset` out of the logs, a consumer that stops
//! reading loses nothing, bearer tokens by header or first message, and a
//! close frame on graceful shutdown.

use std::io::Read;
use std::time::{Duration, Instant};

use serde_json::json;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::client::start;
use crate::support::{auth_config, ids_on_shard, RawClient, AUTH_TOKEN, SHARDS};
use crate::ws_client::{create, flip, offsets, open, toggle, try_open, Ws};

/// The server's `WS_AUTH_TIMEOUT_MS`.
const SERVER_WS_AUTH_TIMEOUT: Duration = Duration::from_secs(5);

/// Instances spread over every shard, created from state `a`.
fn instances_on_all_shards(rcp: &mut RawClient, machine: &str, per_shard: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for shard in 0..SHARDS {
        for id in ids_on_shard(&format!("{machine}-"), shard, per_shard) {
            create(rcp, machine, &id);
            ids.push(id);
        }
    }
    ids
}

#[test]
fn events_arrive_in_offset_order_across_shards_with_the_rcp_event_shape() {
    let (server, api) = start(&[]);
    let mut rcp = server.raw();
    flip(&mut rcp, "m");
    let ids = instances_on_all_shards(&mut rcp, "m", 3);
    let (mut ws, ack) = open(api.addr, "");
    assert!(ack["subscription_id"].as_str().unwrap().starts_with("sub-"));
    let mut acked = Vec::new();
    for _round in 0..4 {
        for id in &ids {
            acked.push(toggle(&mut rcp, id));
        }
    }
    let events = ws.events(acked.len());
    let got = offsets(&events);
    assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
    acked.sort_unstable();
    assert_eq!(got, acked, "every acknowledged apply, once, in order");
    let e = &events[0];
    let keys: Vec<&str> = e.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    for key in [
        "type",
        "subscription_id",
        "instance_id",
        "machine",
        "version",
        "wal_offset",
        "from_state",
        "to_state",
        "event",
        "payload",
        "ctx",
    ] {
        assert!(keys.contains(&key), "{key} missing in {e}");
    }
    assert_eq!(e["subscription_id"], ack["subscription_id"]);
    assert_eq!(e["payload"], json!({"n": 1}));
}

#[test]
fn filters_work_as_in_watch_all_and_watch_instance() {
    let (server, api) = start(&[]);
    let mut rcp = server.raw();
    flip(&mut rcp, "m");
    flip(&mut rcp, "other");
    let ids = instances_on_all_shards(&mut rcp, "m", 2);
    let others = instances_on_all_shards(&mut rcp, "other", 1);
    let (mut to_b, _) = open(api.addr, "machines=m&to_states=b&include_ctx=false");
    let (mut flops, _) = open(api.addr, "events=FLOP,NOPE&machines=m&machines=other");
    let (mut one, ack) = open(api.addr, &format!("instance_id={}", ids[1]));
    assert_eq!(ack["current_state"], "a");
    let mut expect_to_b = Vec::new();
    let mut expect_flops = Vec::new();
    let mut expect_one = Vec::new();
    for id in ids.iter().chain(&others) {
        for step in 0..2 {
            let offset = toggle(&mut rcp, id);
            let machine_m = !others.contains(id);
            if machine_m && step == 0 {
                expect_to_b.push(offset);
            }
            if step == 1 {
                expect_flops.push(offset);
            }
            if *id == ids[1] {
                expect_one.push(offset);
            }
        }
    }
    let got = to_b.events(expect_to_b.len());
    assert_eq!(offsets(&got), expect_to_b);
    assert!(
        got.iter().all(|e| e.get("ctx").is_none()),
        "include_ctx=false"
    );
    assert_eq!(offsets(&flops.events(expect_flops.len())), expect_flops);
    assert_eq!(offsets(&one.events(expect_one.len())), expect_one);
    for ws in [&mut to_b, &mut flops, &mut one] {
        ws.assert_quiet(Duration::from_millis(300));
    }
}

#[test]
fn from_offset_replays_history_from_the_logs_then_goes_on_live() {
    let (server, api) = start(&[]);
    let mut rcp = server.raw();
    flip(&mut rcp, "m");
    let ids = instances_on_all_shards(&mut rcp, "m", 2);
    // Nobody watches yet, so the server keeps no ring: the replay below is
    // read from the shards' logs.
    let history: Vec<u64> = (0..3)
        .flat_map(|_| {
            ids.iter()
                .map(|id| toggle(&mut rcp, id))
                .collect::<Vec<_>>()
        })
        .collect();
    let mid = history[history.len() / 2];
    let (mut ws, ack) = open(api.addr, &format!("from_offset={mid}&include_ctx=false"));
    assert_eq!(ack["wal_offset"], mid);
    let suffix: Vec<u64> = history.iter().copied().filter(|o| *o >= mid).collect();
    assert_eq!(offsets(&ws.events(suffix.len())), suffix);
    let live = toggle(&mut rcp, &ids[0]);
    assert_eq!(offsets(&ws.events(1)), vec![live]);
    // Resuming from the next offset after the last one seen gives nothing twice.
    let (mut resumed, _) = open(api.addr, &format!("from_offset={}", live + 1));
    resumed.assert_quiet(Duration::from_millis(300));
    let again = toggle(&mut rcp, &ids[1]);
    assert_eq!(offsets(&resumed.events(1)), vec![again]);
}

#[test]
fn bad_parameters_are_refused_before_the_upgrade() {
    let (_server, api) = start(&[]);
    let status = |query: &str| match try_open(api.addr, query, None) {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("{query}: {e}"),
        Ok(_) => panic!("{query}: upgraded"),
    };
    assert_eq!(status("machine=m"), 400, "unknown parameter");
    assert_eq!(status("from_offset=abc"), 400);
    assert_eq!(status("include_ctx=maybe"), 400);
    assert_eq!(status("instance_id=nope"), 404);
    // Not a WebSocket request at all.
    let plain = api.get("/v1/watch");
    assert_eq!(plain.status, 426, "{}", plain.text);
    assert_eq!(plain.code(), "BAD_REQUEST");
}

#[test]
fn a_consumer_that_stops_reading_loses_nothing_and_is_served_from_the_logs() {
    let (server, api) = start(&[]);
    let mut rcp = server.raw();
    flip(&mut rcp, "m");
    let ids = instances_on_all_shards(&mut rcp, "m", 4);
    let (mut ws, _) = open(api.addr, "include_ctx=false");
    // Events far larger than the socket buffers and than the server's ring
    // (32 MiB): the stream stalls, the ring drops what it has not sent,
    // and the server reads it back from the logs once the client reads.
    let payload = "x".repeat(48 * 1024);
    let rounds = 1200 / ids.len();
    let mut acked = Vec::new();
    let started = Instant::now();
    for round in 0..rounds {
        let event = if round % 2 == 0 { "FLIP" } else { "FLOP" };
        for id in &ids {
            let r = rcp.ok(
                "APPLY_EVENT",
                json!({"instance_id": id, "event": event, "payload": {"pad": payload}}),
            );
            acked.push(r["wal_offset"].as_u64().unwrap());
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the writer must not wait for the stalled watcher"
    );
    let bytes_read = |rcp: &mut RawClient| {
        rcp.ok("WAL_STATS", json!({}))["io_stats"]["bytes_read"]
            .as_u64()
            .expect("io_stats.bytes_read")
    };
    let read_before = bytes_read(&mut rcp);
    let got = offsets(&ws.events(acked.len()));
    let read_for_catch_up = bytes_read(&mut rcp) - read_before;
    assert!(
        read_for_catch_up > 16 * 1024 * 1024,
        "the stream should have been served from the logs (read {read_for_catch_up} bytes)"
    );
    acked.sort_unstable();
    assert_eq!(got.len(), acked.len());
    assert!(got == acked, "lost or reordered events");
}

#[test]
fn tokens_by_header_or_first_message() {
    let (_dir, config) = auth_config();
    let (server, api) = start(&["--config", config.to_str().unwrap()]);
    let mut rcp = server.raw();
    rcp.ok("AUTH", json!({"method": "bearer", "token": AUTH_TOKEN}));
    flip(&mut rcp, "m");
    let id = &instances_on_all_shards(&mut rcp, "m", 1)[0];

    // Header: right.
    let mut by_header = try_open(api.addr, "", Some(AUTH_TOKEN)).unwrap();
    assert_eq!(by_header.next_json()["type"], "subscribed");
    // Header: wrong.
    let mut wrong = try_open(api.addr, "", Some("not-the-secret")).unwrap();
    let (code, reason) = wrong.expect_close();
    assert_eq!(code, CloseCode::Policy, "{reason}");
    assert!(!reason.is_empty());
    // First message: right (nothing is sent before it).
    let mut by_message = try_open(api.addr, "", None).unwrap();
    by_message.assert_quiet(Duration::from_millis(300));
    by_message.send_text(&json!({"token": AUTH_TOKEN}).to_string());
    assert_eq!(by_message.next_json()["type"], "subscribed");
    let offset = toggle(&mut rcp, id);
    assert_eq!(offsets(&by_header.events(1)), vec![offset]);
    assert_eq!(offsets(&by_message.events(1)), vec![offset]);
    // First message: wrong token, not a token, nothing at all.
    for first in [json!({"token": "nope"}).to_string(), "hello".to_string()] {
        let mut ws = try_open(api.addr, "", None).unwrap();
        ws.send_text(&first);
        let (code, reason) = ws.expect_close();
        assert_eq!(code, CloseCode::Policy, "{first}: {reason}");
    }
    let mut silent = try_open(api.addr, "", None).unwrap();
    let started = Instant::now();
    let (code, reason) = silent.expect_close();
    assert_eq!(code, CloseCode::Policy, "{reason}");
    assert!(reason.contains("token"), "{reason}");
    assert!(started.elapsed() >= SERVER_WS_AUTH_TIMEOUT - Duration::from_millis(500));
    // Parameters are checked once the token is: a bad one closes with 4000 + status.
    let mut missing = try_open(api.addr, "instance_id=nope", None).unwrap();
    missing.send_text(&json!({"token": AUTH_TOKEN}).to_string());
    let (code, reason) = missing.expect_close();
    assert_eq!(u16::from(code), 4404, "{reason}");
    assert!(reason.starts_with("INSTANCE_NOT_FOUND"), "{reason}");
}

#[test]
fn graceful_shutdown_closes_streams_with_a_reason() {
    let (mut server, api) = start(&[]);
    let (mut ws, _): (Ws, _) = open(api.addr, "");
    server.signal(libc::SIGTERM);
    let (code, reason) = ws.expect_close();
    assert_eq!(code, CloseCode::Away);
    assert_eq!(reason, "server shutting down");
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
}

#[test]
fn a_stream_holds_a_connection_seat_and_limits_client_messages() {
    let (server, api) = start(&["--max-connections", "2"]);
    let _rcp = server.served_connections(1);
    // The readiness probes' connections may hold a seat for a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut ws = loop {
        match try_open(api.addr, "", None) {
            Ok(ws) => break ws,
            Err(e) => assert!(Instant::now() < deadline, "{e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(ws.next_json()["type"], "subscribed");
    // The stream and the RCP connection hold both seats.
    let refused = api.get("/v1/health");
    assert_eq!(refused.status, 429, "{}", refused.text);
    // A message over WS_CLIENT_MESSAGE_BYTES_MAX (4 KiB) ends the stream.
    ws.send_text(&"x".repeat(8 * 1024));
    let (code, reason) = ws.expect_close();
    assert_eq!(code, CloseCode::Size, "{reason}");
    drop(ws);
    // Its seat is given back.
    let deadline = Instant::now() + Duration::from_secs(5);
    while api.get("/v1/health").status != 200 {
        assert!(
            Instant::now() < deadline,
            "the stream's seat was never freed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_client_that_answers_no_ping_is_closed_after_the_idle_timeout() {
    // The server's WS_IDLE_TIMEOUT_MS, checked every WS_PING_INTERVAL_MS.
    const SERVER_IDLE_TIMEOUT: Duration = Duration::from_secs(45);
    let (_server, api) = start(&[]);
    let (mut ws, _) = open(api.addr, "");
    // Not reading: the client's library answers no ping.
    std::thread::sleep(SERVER_IDLE_TIMEOUT + Duration::from_secs(2));
    // Read the raw bytes (a WebSocket library would now answer the pings
    // into a closed socket): pings, then a close frame with 1008, then EOF.
    let mut raw = Vec::new();
    let _ = ws.socket.get_mut().read_to_end(&mut raw);
    let close = raw
        .windows(2)
        .position(|w| w[0] == 0x88)
        .unwrap_or_else(|| panic!("no close frame in {raw:?}"));
    let code = u16::from_be_bytes([raw[close + 2], raw[close + 3]]);
    assert_eq!(code, 1008);
    let reason = String::from_utf8_lossy(&raw[close + 4..]);
    assert!(reason.contains("nothing heard"), "{reason}");
}

#[test]
fn over_tls_the_stream_is_wss_with_the_servers_certificate() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use std::sync::Arc;

    let pki = crate::pki::Pki::generate();
    let port = crate::support::fresh_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args: Vec<String> = vec!["--http-listen".into(), listen.clone()];
    args.extend(crate::pki::tls_args(&pki));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = crate::support::Server::start(&args);
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    crate::client::wait_listening(addr);

    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(pki.path("ca.pem")).unwrap();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(crate::ws_client::WS_MESSAGE_TIMEOUT))
        .unwrap();
    let stream = rustls::StreamOwned::new(tls, tcp);
    let (mut ws, _) = tungstenite::client(format!("wss://localhost:{port}/v1/watch"), stream)
        .unwrap_or_else(|e| panic!("wss handshake: {e}"));
    let read_json = |ws: &mut tungstenite::WebSocket<_>| loop {
        match ws.read().unwrap() {
            tungstenite::Message::Text(t) => {
                return serde_json::from_str::<serde_json::Value>(t.as_str()).unwrap()
            }
            _ => continue,
        }
    };
    assert_eq!(read_json(&mut ws)["type"], "subscribed");
    // RCP on this server is TLS too: write through the HTTP API instead.
    let _server = server;
    let api = crate::client::Api::new(addr, "https", tls_agent_for(&pki));
    api.put(
        "/v1/machines/m/versions/1",
        &json!({
            "states": ["a", "b"], "initial": "a",
            "transitions": [{"from": "a", "event": "FLIP", "to": "b"}]
        }),
    );
    api.post(
        "/v1/instances",
        &json!({"machine": "m", "version": 1, "instance_id": "t-1"}),
    )
    .expect(201);
    let applied = api
        .post("/v1/instances/t-1/events", &json!({"event": "FLIP"}))
        .expect(200)
        .json();
    let event = read_json(&mut ws);
    assert_eq!(event["type"], "event");
    assert_eq!(event["wal_offset"], applied["wal_offset"]);
}

fn tls_agent_for(pki: &crate::pki::Pki) -> ureq::Agent {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let ca = Certificate::from_pem(&std::fs::read(pki.path("ca.pem")).unwrap())
        .unwrap()
        .to_owned();
    let tls = TlsConfig::builder()
        .root_certs(RootCerts::Specific(std::sync::Arc::new(vec![ca])))
        .build();
    crate::client::agent_config().tls_config(tls).build().into()
}
