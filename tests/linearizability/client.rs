//! A blocking RCPX client that never panics: every transport failure
//! (refused, reset, EOF, timeout, a garbled frame) is an `Err`, which the
//! workload records as an unknown outcome. The support `RawClient` panics
//! instead, which suits tests that expect a live server.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{rcpx_json, request, take_rcpx_frame};

/// How long to wait for a connection to be accepted.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long one request may go unanswered before its outcome is unknown.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    next_id: u64,
}

pub fn io_error(what: impl Into<String>) -> io::Error {
    io::Error::other(what.into())
}

impl Client {
    pub fn connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            buf: Vec::new(),
            next_id: 1,
        })
    }

    pub fn send(&mut self, op: &str, params: Value) -> io::Result<String> {
        let id = format!("l{}", self.next_id);
        self.next_id += 1;
        self.stream
            .write_all(&rcpx_json(&request(&id, op, params)))?;
        Ok(id)
    }

    /// The next frame as JSON, waiting at most `timeout`; `Ok(None)` when
    /// nothing complete arrived in that time.
    pub fn next_frame(&mut self, timeout: Duration) -> io::Result<Option<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            match take_rcpx_frame(&mut self.buf) {
                Ok(Some(frame)) => {
                    return serde_json::from_slice(&frame.payload)
                        .map(Some)
                        .map_err(|e| io_error(format!("frame is not JSON: {e}")))
                }
                Ok(None) => {}
                Err(e) => return Err(io_error(e)),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.stream.set_read_timeout(Some(left))?;
            let mut chunk = vec![0u8; READ_CHUNK_BYTES];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "server closed the connection",
                    ))
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One request and its response envelope (`status` ok or error).
    pub fn call(&mut self, op: &str, params: Value) -> io::Result<Value> {
        let id = self.send(op, params)?;
        let response = self
            .next_frame(REQUEST_TIMEOUT)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "no response in time"))?;
        if response["id"] != id.as_str() {
            return Err(io_error(format!("response to another request: {response}")));
        }
        Ok(response)
    }
}
