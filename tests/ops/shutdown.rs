//! Graceful shutdown (SIGTERM/SIGINT): under load the server stops
//! accepting, answers what it already read, syncs every shard's WAL, ends
//! watch streams at a frame boundary and exits 0 in bounded time; the next
//! start needs no torn-tail repair and finds every acknowledged write. A
//! peer that never reads cannot hold the shutdown past its bound. Also
//! records how the official Rust client sees the server go away. The last
//! frame of every connection is the shutdown notice (a frame of type
//! `notice`), which the official clients skip.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{
    rcpx_json, request, rstmdb_connect, AsyncRawClient, Frame, Proc, RawClient, EXIT_TIMEOUT,
};

/// Writers hammering the server while it is told to stop.
const LOAD_WRITERS: usize = 8;
/// How long the load runs before the signal.
const LOAD_BEFORE_SIGNAL: Duration = Duration::from_millis(1500);
/// corestate's own bound (`SHUTDOWN_DEADLINE_MS`) with room for a slow CI.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(15);

fn door() -> Value {
    json!({
        "states": ["open", "closed"],
        "initial": "open",
        "transitions": [{"from": "open", "event": "CLOSE", "to": "closed"}]
    })
}

/// The shutdown notice, and nothing after it but the close.
fn expect_notice_then_close(c: &mut RawClient, notice: Option<Frame>) {
    let notice = notice.expect("a shutdown notice before the close");
    crate::support::assert_server_frame(&notice);
    let n = notice.json();
    assert_eq!(n["type"], "notice", "{n}");
    assert_eq!(n["notice"], "shutting_down", "{n}");
    assert!(n["message"].as_str().is_some_and(|m| !m.is_empty()), "{n}");
    assert!(c.read_frame().is_none(), "nothing after the notice");
}

/// What the server acknowledged: instance id → state it confirmed.
type Acked = Arc<Mutex<HashMap<String, &'static str>>>;

async fn writer(addr: std::net::SocketAddr, w: usize, acked: Acked, stop: Arc<AtomicBool>) {
    let Ok(mut c) = AsyncRawClient::connect(addr).await else {
        return;
    };
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("w{w}-{i}");
        i += 1;
        let created = c
            .call(
                "CREATE_INSTANCE",
                json!({"machine": "door", "version": 1, "instance_id": id}),
            )
            .await;
        match created {
            Ok(r) if r["status"] == "ok" => {
                acked.lock().unwrap().insert(id.clone(), "open");
            }
            Ok(r) => panic!("CREATE_INSTANCE failed while running: {r}"),
            Err(_) => return,
        }
        match c
            .call("APPLY_EVENT", json!({"instance_id": id, "event": "CLOSE"}))
            .await
        {
            Ok(r) if r["status"] == "ok" => {
                acked.lock().unwrap().insert(id, "closed");
            }
            Ok(r) => panic!("APPLY_EVENT failed while running: {r}"),
            Err(_) => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_exits_0_and_a_restart_finds_every_acknowledged_write() {
    let mut server = Proc::start(&[], &[]);
    let mut setup = server.raw();
    setup.ok(
        "PUT_MACHINE",
        json!({"machine": "door", "version": 1, "definition": door()}),
    );

    // A watcher: its stream must end at a frame boundary, not mid-frame.
    let mut watcher = server.raw();
    watcher.ok("WATCH_ALL", json!({}));

    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..LOAD_WRITERS)
        .map(|w| tokio::spawn(writer(server.addr, w, acked.clone(), stop.clone())))
        .collect();
    tokio::time::sleep(LOAD_BEFORE_SIGNAL).await;
    let before_signal = acked.lock().unwrap().len();
    assert!(before_signal > 0, "the load made no progress");

    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    let status = tokio::task::block_in_place(|| server.wait_exit(EXIT_TIMEOUT));
    let took = signalled.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("writer task");
    }
    assert_eq!(
        status.code(),
        Some(0),
        "graceful shutdown exits 0:\n{}",
        server.stderr()
    );
    assert!(took < SHUTDOWN_BOUND, "shutdown took {took:?}");
    let log = server.stderr();
    assert!(log.contains("received SIGTERM"), "{log}");
    assert!(log.contains("every shard's WAL synced"), "{log}");

    // The watcher got whole events, then the notice and a clean close.
    let mut events = 0;
    let notice = loop {
        let frame = watcher.read_frame();
        match &frame {
            Some(f) if f.json()["type"] == "event" => {
                crate::support::assert_server_frame(f);
                events += 1;
            }
            _ => break frame,
        }
    };
    expect_notice_then_close(&mut watcher, notice);
    eprintln!(
        "acknowledged {} instances ({before_signal} before the signal), watcher saw {events} events, shutdown took {took:?}",
        acked.lock().unwrap().len()
    );

    server.restart();
    let log = server.stderr();
    assert!(
        !log.to_lowercase().contains("torn"),
        "no torn-tail repair after a clean stop:\n{log}"
    );
    let acked = acked.lock().unwrap().clone();
    let mut c = server.raw();
    for (id, state) in &acked {
        let got = c.ok("GET_INSTANCE", json!({"instance_id": id}));
        // An APPLY the server finished but could not answer may be ahead of
        // the acknowledgement; never behind it.
        if *state == "closed" {
            assert_eq!(got["state"], "closed", "{id}: {got}");
        } else {
            assert!(
                got["state"] == "open" || got["state"] == "closed",
                "{id}: {got}"
            );
        }
    }
}

#[test]
fn sigint_stops_an_idle_server_cleanly_and_fast() {
    let mut server = Proc::start(&[], &[]);
    let mut c = server.raw();
    c.ok(
        "PUT_MACHINE",
        json!({"machine": "door", "version": 1, "definition": door()}),
    );
    let started = Instant::now();
    server.signal(libc::SIGINT);
    let status = server.wait_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    // The idle connection got the notice and was closed at a frame boundary.
    let notice = c.read_frame();
    expect_notice_then_close(&mut c, notice);
    server.restart();
    assert!(!server.stderr().to_lowercase().contains("torn"));
    server
        .raw()
        .ok("GET_MACHINE", json!({"machine": "door", "version": 1}));
}

#[test]
fn requests_already_received_are_answered_before_the_close() {
    let mut server = Proc::start(&[], &[]);
    let mut c = server.raw();
    c.ok(
        "PUT_MACHINE",
        json!({"machine": "door", "version": 1, "definition": door()}),
    );
    // A pipeline sent in one write; the signal follows its first answer.
    const PIPELINE: usize = 200;
    let mut burst = Vec::new();
    for i in 0..PIPELINE {
        let params = json!({"machine": "door", "version": 1, "instance_id": format!("p-{i}")});
        burst.extend_from_slice(&rcpx_json(&request(
            &format!("c{i}"),
            "CREATE_INSTANCE",
            params,
        )));
    }
    c.send(&burst);
    let first = c.read_response();
    assert_eq!(first["id"], "c0");
    server.signal(libc::SIGTERM);
    // What was read is answered, in order, then the connection closes at a
    // frame boundary (never mid-frame, never out of order).
    let mut answered = 1;
    let notice = loop {
        let frame = c.read_frame();
        match &frame {
            Some(f) if f.json()["type"] == "response" => {
                let r = f.json();
                assert_eq!(r["id"], format!("c{answered}"));
                assert_eq!(r["status"], "ok", "{r}");
                answered += 1;
            }
            _ => break frame,
        }
    };
    expect_notice_then_close(&mut c, notice);
    eprintln!("{answered} of {PIPELINE} pipelined requests answered before the close");
    assert_eq!(server.wait_exit(EXIT_TIMEOUT).code(), Some(0));
    server.restart();
    let mut c = server.raw();
    for i in 0..answered {
        c.ok("GET_INSTANCE", json!({"instance_id": format!("p-{i}")}));
    }
}

#[test]
fn a_peer_that_never_reads_cannot_hold_the_shutdown() {
    let mut server = Proc::start(&[], &[]);
    // Pipeline pings with 8 KiB ids (echoed in every answer) and never
    // read: the answers fill the socket buffers and the server's writes to
    // this peer block.
    let mut hog = std::net::TcpStream::connect(server.addr).expect("connect");
    hog.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let long_id = "x".repeat(8 * 1024);
    let mut sent = 0usize;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let frame = rcpx_json(&request(&format!("h{sent}-{long_id}"), "PING", Value::Null));
        if hog.write_all(&frame).is_err() {
            break;
        }
        sent += 1;
    }
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    assert!(
        signalled.elapsed() < SHUTDOWN_BOUND,
        "took {:?}",
        signalled.elapsed()
    );
    let log = server.stderr();
    assert!(
        log.contains("still open after") && log.contains("every shard's WAL synced"),
        "the stuck peer is cut off after the drain timeout:\n{log}"
    );
    drop(hog);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn how_the_rust_client_sees_the_server_go_away() {
    let mut server = Proc::start(&[], &[]);
    let client = rstmdb_connect(server.addr, None).await.expect("connect");
    client.put_machine("door", 1, door()).await.expect("PUT");
    let watcher = rstmdb_connect(server.addr, None).await.expect("connect");
    let mut events = watcher.connection().subscribe_stream_events();
    watcher
        .watch_all(None, None, None, None, false)
        .await
        .expect("WATCH_ALL");

    server.signal(libc::SIGTERM);
    let status = tokio::task::block_in_place(|| server.wait_exit(EXIT_TIMEOUT));
    assert_eq!(status.code(), Some(0));
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The client skips the shutdown notice (its read loop logs "unknown
    // message type" and goes on; a frame it failed on would end the loop
    // with the client still marked connected), then sees the close: it is
    // no longer connected, and requests fail at once with NotConnected.
    assert!(!client.is_connected(), "the client should see the close");
    let err = client.ping().await.expect_err("server gone");
    eprintln!("rstmdb-client after shutdown: ping -> {err:?}");
    assert!(
        matches!(err, rstmdb_client::ClientError::NotConnected),
        "{err:?}"
    );
    // Its event stream neither ends nor errors: a watcher must check
    // is_connected() (or time out) to notice.
    let next = tokio::time::timeout(Duration::from_millis(500), events.recv()).await;
    eprintln!("rstmdb-client after shutdown: events.recv() -> {next:?}");
    assert!(next.is_err(), "no event and no close arrive: {next:?}");
    assert!(!watcher.is_connected());
}
