//! Connections that stall in their request head cannot lock scrapes out of
//! the metrics endpoint.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support::{fresh_port, http_get, Server};

#[test]
fn stalled_metrics_connections_do_not_lock_scrapes_out() {
    let port = fresh_port();
    let bind = format!("127.0.0.1:{port}");
    let server = Server::start(&["--metrics-bind", &bind]);
    let addr: SocketAddr = bind.parse().unwrap();
    // More stalled partial heads than there are slots.
    let stalled: Vec<TcpStream> = (0..24)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /metr").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..3 {
        let t = Instant::now();
        let (status, _, body) = http_get(addr, "/metrics").expect("scrape");
        assert!(status.contains("200"), "{status}");
        assert!(body.contains("rstmdb_connections_active"), "{body}");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }
    drop(stalled);
    server.raw().assert_alive();
}
