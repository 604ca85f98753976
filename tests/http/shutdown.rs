//! Graceful shutdown covers HTTP connections: SIGTERM closes idle
//! keep-alive connections at once, the listener stops, the process exits 0.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::client::start;

#[test]
fn sigterm_closes_keep_alive_connections_and_exits_cleanly() {
    let (mut server, api) = start(&[]);
    let mut kept = TcpStream::connect(api.addr).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    kept.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    let n = kept.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let started = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    // Idle keep-alive connections do not hold the drain (5 s) up.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let mut rest = Vec::new();
    let _ = kept.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");
    assert!(TcpStream::connect_timeout(&api.addr, Duration::from_millis(500)).is_err());
}
