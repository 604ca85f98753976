//! The API's bounds: body size, head size, connections (shared with RCP),
//! one request in flight per connection (answered in order), and the read
//! deadline that closes stalled and idle connections.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::{order_instance, start};

/// `corestate::http::HTTP_BODY_BYTES_MAX`.
const HTTP_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;
/// `corestate::http::HTTP_REQUEST_HEAD_BYTES_MAX` plus one socket read
/// (`corestate::http::io::HTTP_READ_CHUNK_BYTES`): hyper checks the limit
/// between reads.
const HTTP_REQUEST_HEAD_BYTES_MAX: usize = 64 * 1024 + 16 * 1024;
/// `corestate::http::HTTP_REQUEST_READ_TIMEOUT_MS`.
const HTTP_REQUEST_READ_TIMEOUT: Duration = Duration::from_millis(10_000);

/// Send raw bytes, then read until the server closes (or 20 s pass).
fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(bytes).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn a_body_declared_over_the_limit_is_refused_with_413() {
    let (server, api) = start(&[]);
    order_instance(&api, "o-1", 1);
    let head = format!(
        "POST /v1/instances/o-1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        HTTP_BODY_BYTES_MAX + 1
    );
    let answer = exchange(api.addr, head.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""code":"BAD_REQUEST""#), "{answer}");
    // A large body under the limit is read and served.
    let payload = "x".repeat(1024 * 1024);
    let body = json!({"event": "PAY", "payload": {"blob": payload}});
    api.post("/v1/instances/o-1/events", &body).expect(200);
    server.raw().assert_alive();
}

#[test]
fn a_request_head_over_the_limit_is_refused() {
    let (_server, api) = start(&[]);
    let head = format!(
        "GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(HTTP_REQUEST_HEAD_BYTES_MAX + 1024)
    );
    let answer = exchange(api.addr, head.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    api.get("/v1/health").expect(200);
}

#[test]
fn connections_over_the_limit_are_answered_429_and_rcp_connections_count() {
    let (server, api) = start(&["--max-connections", "2"]);
    // One RCP connection and one HTTP keep-alive connection fill the limit.
    let mut rcp = server.served_connections(1).pop().expect("a connection");
    let mut held = TcpStream::connect(api.addr).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    held.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    let n = held.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let refused = api.get("/v1/health").expect(429);
    assert_eq!(refused.code(), "RATE_LIMITED");
    assert_eq!(
        refused.json()["error"]["message"],
        "too many connections (max 2)"
    );
    assert_eq!(refused.json()["error"]["retryable"], true);
    // Room again once the HTTP connection is gone.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while api.get("/v1/health").status != 200 {
        assert!(
            Instant::now() < deadline,
            "no room after a connection closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    rcp.assert_alive();
}

#[test]
fn pipelined_requests_are_answered_one_by_one_in_order() {
    let (_server, api) = start(&[]);
    order_instance(&api, "o-1", 1);
    let apply = r#"{"event":"PAY"}"#;
    let requests = format!(
        "POST /v1/instances/o-1/events HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{apply}\
         GET /v1/instances/o-1 HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /v1/instances/nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        apply.len()
    );
    let answer = exchange(api.addr, requests.as_bytes());
    let statuses: Vec<&str> = answer
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| &answer[at + 9..at + 12])
        .collect();
    assert_eq!(statuses, ["200", "200", "404"], "{answer}");
    let applied = answer.find(r#""to_state":"paid""#).expect("apply answer");
    let got = answer
        .find(r#""state":"paid""#)
        .expect("the GET saw the apply");
    assert!(applied < got, "{answer}");
}

#[test]
fn a_stalled_request_is_closed_after_the_read_timeout_without_blocking_others() {
    let (_server, api) = start(&[]);
    let started = Instant::now();
    let mut stalled = TcpStream::connect(api.addr).unwrap();
    stalled
        .set_read_timeout(Some(HTTP_REQUEST_READ_TIMEOUT * 3))
        .unwrap();
    stalled.write_all(b"GET /v1/hea").unwrap();
    // An idle keep-alive connection that sent nothing at all.
    let mut idle = TcpStream::connect(api.addr).unwrap();
    idle.set_read_timeout(Some(HTTP_REQUEST_READ_TIMEOUT * 3))
        .unwrap();
    // Others are served meanwhile.
    api.get("/v1/health").expect(200);
    for s in [&mut stalled, &mut idle] {
        let mut got = Vec::new();
        let result = s.read_to_end(&mut got);
        let closed = match &result {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        assert!(closed, "the server did not close: {result:?}");
    }
    let waited = started.elapsed();
    assert!(
        waited >= HTTP_REQUEST_READ_TIMEOUT - Duration::from_millis(500)
            && waited < HTTP_REQUEST_READ_TIMEOUT * 2,
        "{waited:?}"
    );
}
