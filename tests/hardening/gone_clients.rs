//! Clients that leave with answers unread give their answer budget back:
//! wave after wave of connections that pipeline GETs of a big instance and
//! close without reading never use up the server-wide budget, and a client
//! that reads is served throughout.

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
    let (_, _, body) = http_get(metrics, "/metrics").expect("scrape");
    body.lines()
        .find_map(|l| l.strip_prefix("corestate_answer_buffer_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .expect("corestate_answer_buffer_bytes")
}

#[test]
fn connections_that_close_with_unread_answers_give_their_budget_back() {
    let dir = TempDir::new().unwrap();
    let config = write_config(
        dir.path(),
        &format!("corestate:\n  answer_buffer_total_mb: {ANSWER_BUFFER_TOTAL_MB}\n"),
    );
    let metrics: SocketAddr = format!("127.0.0.1:{}", fresh_port()).parse().unwrap();
    let server = Server::start(&[
        "--config",
        config.to_str().unwrap(),
        "--metrics-bind",
        &metrics.to_string(),
    ]);
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
    for wave in 0..WAVES {
        // Each wave asks for far more than the whole server's budget.
        let senders: Vec<_> = (0..CONNECTIONS_PER_WAVE)
            .map(|_| {
                let addr = server.addr();
                thread::spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    let bytes: Vec<u8> = (0..GETS_PER_CONNECTION)
                        .flat_map(|i| {
                            rcpx_json(&request(
                                &format!("g{i}"),
                                "GET_INSTANCE",
                                json!({"instance_id": "big"}),
                            ))
                        })
                        .collect();
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
