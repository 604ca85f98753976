//! A watching connection: requests answered in order, pushed events
//! queued in arrival order until the test asks for them.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    assert_server_frame, rcpx_json, request, take_rcpx_frame, Frame, RESPONSE_TIMEOUT,
};

/// How long a watcher waits for an event that must come.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a watcher listens to be sure no (further) event comes.
pub const QUIET_PERIOD: Duration = Duration::from_millis(400);

/// A blocking RCPX connection that may hold subscriptions: responses are
/// matched to requests, events are queued in arrival order.
pub struct WatchConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
    events: VecDeque<Frame>,
    next_id: u64,
    /// Server stderr path is not known here; callers add it to messages.
    pub label: String,
}

impl WatchConn {
    pub fn connect(addr: SocketAddr, label: &str) -> WatchConn {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).ok();
        WatchConn {
            stream,
            buf: Vec::new(),
            events: VecDeque::new(),
            next_id: 1,
            label: label.to_string(),
        }
    }

    /// The next frame before `deadline`, or `None` on timeout.
    fn read_frame_until(&mut self, deadline: Instant) -> Option<Frame> {
        match self.poll_frame(deadline) {
            Ok(frame) => frame,
            Err(e) => panic!("{}: {e}", self.label),
        }
    }

    /// The next frame before `deadline` (`Ok(None)` on timeout), or how the
    /// connection ended.
    pub fn poll_frame(&mut self, deadline: Instant) -> Result<Option<Frame>, String> {
        let mut chunk = vec![0u8; 256 * 1024];
        loop {
            if let Some(frame) = take_rcpx_frame(&mut self.buf)? {
                assert_server_frame(&frame);
                return Ok(Some(frame));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let wait = (deadline - now).max(Duration::from_millis(1));
            self.stream
                .set_read_timeout(Some(wait))
                .expect("set read timeout");
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(format!(
                        "the server closed the watching connection ({} bytes buffered)",
                        self.buf.len()
                    ))
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(format!("reading from the server failed: {e}")),
            }
        }
    }

    fn send(&mut self, op: &str, params: Value) -> String {
        let id = format!("w{}", self.next_id);
        self.next_id += 1;
        self.stream
            .write_all(&rcpx_json(&request(&id, op, params)))
            .expect("write request");
        id
    }

    /// Send a request and return its response envelope; events that arrive
    /// before it are queued.
    pub fn call(&mut self, op: &str, params: Value) -> Value {
        let id = self.send(op, params);
        let deadline = Instant::now() + RESPONSE_TIMEOUT;
        loop {
            let frame = self.read_frame_until(deadline).unwrap_or_else(|| {
                panic!(
                    "{}: no response to {op} within {RESPONSE_TIMEOUT:?}",
                    self.label
                )
            });
            let doc = frame.json();
            match doc["type"].as_str() {
                Some("event") => self.events.push_back(frame),
                Some("response") => {
                    assert_eq!(doc["id"], id.as_str(), "{}: response id: {doc}", self.label);
                    return doc;
                }
                _ => panic!("{}: unexpected message {doc}", self.label),
            }
        }
    }

    pub fn ok(&mut self, op: &str, params: Value) -> Value {
        let r = self.call(op, params.clone());
        assert_eq!(
            r["status"], "ok",
            "{}: {op} {params} should succeed: {r}",
            self.label
        );
        r["result"].clone()
    }

    pub fn err_code(&mut self, op: &str, params: Value, code: &str) -> Value {
        let r = self.call(op, params.clone());
        assert_eq!(
            r["status"], "error",
            "{}: {op} {params} should fail: {r}",
            self.label
        );
        assert_eq!(
            r["error"]["code"], code,
            "{}: {op} {params}: {r}",
            self.label
        );
        r["error"].clone()
    }

    /// The next event frame within `timeout`.
    pub fn next_event_frame(&mut self, timeout: Duration) -> Option<Frame> {
        if let Some(frame) = self.events.pop_front() {
            return Some(frame);
        }
        let frame = self.read_frame_until(Instant::now() + timeout)?;
        let doc = frame.json();
        assert_eq!(
            doc["type"], "event",
            "{}: expected only events, got {doc}",
            self.label
        );
        Some(frame)
    }

    pub fn next_event(&mut self, timeout: Duration) -> Option<Value> {
        self.next_event_frame(timeout).map(|f| f.json())
    }

    /// Exactly `n` events (each within `EVENT_TIMEOUT` of the previous),
    /// then nothing more for `QUIET_PERIOD`.
    pub fn expect_events(&mut self, n: usize, context: &str) -> Vec<Value> {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            match self.next_event(EVENT_TIMEOUT) {
                Some(e) => got.push(e),
                None => panic!(
                    "{} ({context}): only {} of {n} events arrived; got {got:#?}",
                    self.label,
                    got.len()
                ),
            }
        }
        self.expect_quiet(context);
        got
    }

    /// No event arrives for `QUIET_PERIOD`.
    pub fn expect_quiet(&mut self, context: &str) {
        if let Some(e) = self.next_event(QUIET_PERIOD) {
            panic!("{} ({context}): unexpected event {e}", self.label);
        }
    }
}
