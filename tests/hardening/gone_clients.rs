//! Clients that leave with answers unread give their answer budget back:
//! wave after wave of connections that pipeline GETs of a big instance and
//! close without reading never use up the server-wide budget, and a client
//! that reads is served throughout. Clients that stay but stop reading are
//! closed after the idle period, and give their budget back too.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use tempfile::TempDir;

use crate::support::{fresh_port, http_get, rcpx_json, request, write_config, Server};

/// The server-wide answer budget of this test's server.
const ANSWER_BUFFER_TOTAL_MB: u64 = 32;
const WAVES: usize = 4;
const CONNECTIONS_PER_WAVE: usize = 6;
const GETS_PER_CONNECTION: usize = 200;
const PAD_BYTES: usize = 1 << 20;

/// `corestate_answer_buffer_bytes` from the metrics endpoint.
fn answer_bytes(metrics: SocketAddr) -> u64 {
    gauge(metrics, "corestate_answer_buffer_bytes")
}

/// One unlabelled gauge or counter from the metrics endpoint.
fn gauge(metrics: SocketAddr, name: &str) -> u64 {
    let (_, _, body) = http_get(metrics, "/metrics").expect("scrape");
    let prefix = format!("{name} ");
    body.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{name} in the scrape")) as u64
}

/// Bytes of a pipeline of `count` GETs of instance `big`.
fn pipelined_gets(count: usize) -> Vec<u8> {
    (0..count)
        .flat_map(|i| {
            rcpx_json(&request(
                &format!("g{i}"),
                "GET_INSTANCE",
                json!({"instance_id": "big"}),
            ))
        })
        .collect()
}

/// A server with a 1 MiB instance `big`, and a connection that made it.
fn server_with_big_instance(extra_args: &[&str]) -> (Server, crate::support::RawClient) {
    let server = Server::start(extra_args);
    let mut c = server.raw();
    c.ok(
        "PUT_MACHINE",
        json!({"machine": "m", "version": 1,
               "definition": {"states": ["a"], "initial": "a", "transitions": []}}),
    );
    c.ok(
        "CREATE_INSTANCE",
        json!({"machine": "m", "version": 1, "instance_id": "big",
               "initial_ctx": {"pad": "x".repeat(PAD_BYTES)}}),
    );
    (server, c)
}

#[test]
fn connections_that_close_with_unread_answers_give_their_budget_back() {
    let dir = TempDir::new().unwrap();
    let config = write_config(
        dir.path(),
        &format!("corestate:\n  answer_buffer_total_mb: {ANSWER_BUFFER_TOTAL_MB}\n"),
    );
    let metrics: SocketAddr = format!("127.0.0.1:{}", fresh_port()).parse().unwrap();
    let (server, mut c) = server_with_big_instance(&[
        "--config",
        config.to_str().unwrap(),
        "--metrics-bind",
        &metrics.to_string(),
    ]);
    for wave in 0..WAVES {
        // Each wave asks for far more than the whole server's budget.
        let senders: Vec<_> = (0..CONNECTIONS_PER_WAVE)
            .map(|_| {
                let addr = server.addr();
                thread::spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    let bytes = pipelined_gets(GETS_PER_CONNECTION);
                    // The server stops reading once the budget is spent, so
                    // the pipeline may not go out whole: give up after a while.
                    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
                    let _ = s.write_all(&bytes);
                    s.shutdown(std::net::Shutdown::Both).ok();
                })
            })
            .collect();
        for s in senders {
            s.join().unwrap();
        }
        // Gone: within a few seconds nothing of theirs is held.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut held = answer_bytes(metrics);
        while held > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
            held = answer_bytes(metrics);
        }
        assert_eq!(
            held, 0,
            "wave {wave}: answer bytes still held after its clients left"
        );
        // A client that reads is served.
        let got = c.ok("GET_INSTANCE", json!({"instance_id": "big"}));
        assert_eq!(got["ctx"]["pad"].as_str().unwrap().len(), PAD_BYTES);
    }
}

/// The idle period of the next test's server.
const IDLE_TIMEOUT_SECS: u64 = 2;

#[test]
fn clients_that_stop_reading_are_closed_after_the_idle_period() {
    let metrics: SocketAddr = format!("127.0.0.1:{}", fresh_port()).parse().unwrap();
    let (server, mut c) = server_with_big_instance(&[
        "--idle-timeout-secs",
        &IDLE_TIMEOUT_SECS.to_string(),
        "--metrics-bind",
        &metrics.to_string(),
    ]);
    // Two clients that ask for far more than their answer budget and then
    // read nothing, staying connected: one silent, one that closed its
    // sending side (the server may not take that for a reset).
    let mut stay: Vec<TcpStream> = Vec::new();
    for half_close in [false, true] {
        let mut s = TcpStream::connect(server.addr()).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = s.write_all(&pipelined_gets(GETS_PER_CONNECTION));
        if half_close {
            s.shutdown(std::net::Shutdown::Write).unwrap();
        }
        stay.push(s);
    }
    drop(c.ok("GET_INSTANCE", json!({"instance_id": "big"})));
    assert!(
        answer_bytes(metrics) > 0,
        "the stalled clients' answers wait"
    );
    // Within the idle period (and some slack) every connection is closed —
    // `c` as idle, the other two as stalled — and nothing is held.
    let deadline = Instant::now() + Duration::from_secs(IDLE_TIMEOUT_SECS + 10);
    while (gauge(metrics, "rstmdb_connections_active") > 0 || answer_bytes(metrics) > 0)
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(gauge(metrics, "rstmdb_connections_active"), 0);
    assert_eq!(
        answer_bytes(metrics),
        0,
        "the closed clients' answers are let go"
    );
    // A client that reads is served.
    let got = server
        .raw()
        .ok("GET_INSTANCE", json!({"instance_id": "big"}));
    assert_eq!(got["ctx"]["pad"].as_str().unwrap().len(), PAD_BYTES);
    drop(stay);
}
