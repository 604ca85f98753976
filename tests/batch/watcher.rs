//! A connection that only watches: WATCH_ALL, then events.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    assert_server_frame, rcpx_json, request, take_rcpx_frame, Server, RESPONSE_TIMEOUT,
};

/// How long a watcher waits for an event that must come.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a watcher listens to be sure no (further) event comes.
pub const QUIET_PERIOD: Duration = Duration::from_millis(400);

/// A connection that only watches: WATCH_ALL, then events.
pub struct Watcher {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Watcher {
    pub fn subscribe(addr: SocketAddr, params: Value) -> Watcher {
        let stream = TcpStream::connect(addr).expect("connect watcher");
        stream.set_nodelay(true).ok();
        let mut w = Watcher {
            stream,
            buf: Vec::new(),
        };
        w.stream
            .write_all(&rcpx_json(&request("watch", "WATCH_ALL", params)))
            .expect("send WATCH_ALL");
        let r = w
            .next_message(RESPONSE_TIMEOUT)
            .expect("WATCH_ALL response");
        assert_eq!(r["type"], "response", "{r}");
        assert_eq!(r["status"], "ok", "{r}");
        w
    }

    fn next_message(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match take_rcpx_frame(&mut self.buf) {
                Ok(Some(frame)) => {
                    assert_server_frame(&frame);
                    return Some(frame.json());
                }
                Ok(None) => {}
                Err(e) => panic!("watcher: {e}"),
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            self.stream
                .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))
                .expect("set read timeout");
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("watcher: the server closed the connection"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("watcher: read failed: {e}"),
            }
        }
    }

    pub fn next_event(&mut self, timeout: Duration) -> Option<Value> {
        let e = self.next_message(timeout)?;
        assert_eq!(e["type"], "event", "a watcher gets only events: {e}");
        Some(e)
    }

    /// Exactly `n` events, then quiet.
    pub fn expect_events(&mut self, n: usize, context: &str, server: &Server) -> Vec<Value> {
        let mut got = Vec::new();
        while got.len() < n {
            match self.next_event(EVENT_TIMEOUT) {
                Some(e) => got.push(e),
                None => panic!(
                    "watcher ({context}): {} of {n} events; got {got:#?}\n{}",
                    got.len(),
                    server.stderr_tail()
                ),
            }
        }
        if let Some(e) = self.next_event(QUIET_PERIOD) {
            panic!("watcher ({context}): unexpected event {e}");
        }
        got
    }
}
