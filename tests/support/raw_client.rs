//! Raw RCPX clients: a blocking one that speaks raw bytes, RCPX, RCP1 and
//! JSONL and asserts on every answer, and a tokio one for concurrent load.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};

use super::wire::{
    assert_server_frame, rcpx_json, request, take_rcp1_frame, take_rcpx_frame, Frame,
};

/// How long a raw client waits for one response before failing the test.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the server to close a connection it must close.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A blocking socket client that speaks raw bytes, RCPX, RCP1 and JSONL.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
    next_id: u64,
}

/// How a connection ended when the test expected it to end.
#[derive(Debug)]
pub enum Closed {
    Eof,
    Reset,
}

impl RawClient {
    pub fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr)
            .unwrap_or_else(|e| panic!("connect to corestate at {addr}: {e}"));
        stream.set_nodelay(true).ok();
        stream
            .set_read_timeout(Some(RESPONSE_TIMEOUT))
            .expect("set read timeout");
        RawClient {
            stream,
            buf: Vec::new(),
            next_id: 1,
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to server");
    }

    /// Send `doc` as an RCPX frame.
    pub fn send_json(&mut self, doc: &Value) {
        self.send(&rcpx_json(doc));
    }

    /// Read more bytes into the buffer; returns 0 on EOF.
    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Next RCPX frame, or `None` when the server closed cleanly at a
    /// frame boundary.
    pub fn read_frame(&mut self) -> Option<Frame> {
        loop {
            match take_rcpx_frame(&mut self.buf) {
                Ok(Some(frame)) => return Some(frame),
                Ok(None) => {}
                Err(e) => panic!("{e}"),
            }
            match self.fill() {
                Ok(0) if self.buf.is_empty() => return None,
                Ok(0) => panic!(
                    "server closed in the middle of a frame; {} bytes buffered: {:?}",
                    self.buf.len(),
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(_) => {}
                Err(e) => panic!("reading a frame from the server failed: {e}"),
            }
        }
    }

    /// Next RCP1 frame.
    pub fn read_rcp1_frame(&mut self) -> Frame {
        loop {
            match take_rcp1_frame(&mut self.buf) {
                Ok(Some(frame)) => return frame,
                Ok(None) => {}
                Err(e) => panic!("{e}"),
            }
            match self.fill() {
                Ok(0) => panic!("server closed before a complete RCP1 frame"),
                Ok(_) => {}
                Err(e) => panic!("reading an RCP1 frame failed: {e}"),
            }
        }
    }

    /// Next JSONL line, parsed.
    pub fn read_line_json(&mut self) -> Value {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let text = &line[..line.len() - 1];
                return serde_json::from_slice(text).unwrap_or_else(|e| {
                    panic!(
                        "JSONL line is not JSON ({e}): {:?}",
                        String::from_utf8_lossy(text)
                    )
                });
            }
            match self.fill() {
                Ok(0) => panic!(
                    "server closed before a complete JSON line; buffered {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(_) => {}
                Err(e) => panic!("reading a JSON line failed: {e}"),
            }
        }
    }

    /// Next RCPX response frame, checked for docs/PROTOCOL.md §1.6 conformance, as JSON.
    pub fn read_response(&mut self) -> Value {
        let frame = self
            .read_frame()
            .expect("server closed the connection instead of answering");
        assert_server_frame(&frame);
        frame.json()
    }

    pub fn fresh_id(&mut self) -> String {
        let id = format!("r{}", self.next_id);
        self.next_id += 1;
        id
    }

    /// Send one request and return the whole response envelope; checks
    /// the id is echoed.
    pub fn call(&mut self, op: &str, params: Value) -> Value {
        let id = self.fresh_id();
        self.send_json(&request(&id, op, params));
        let response = self.read_response();
        assert_eq!(response["type"], "response", "envelope type: {response}");
        assert_eq!(response["id"], id.as_str(), "response id: {response}");
        response
    }

    /// A request that must succeed; returns its `result`.
    pub fn ok(&mut self, op: &str, params: Value) -> Value {
        let response = self.call(op, params.clone());
        assert_eq!(
            response["status"], "ok",
            "{op} {params} should succeed, got {response}"
        );
        response["result"].clone()
    }

    /// A request that must fail; returns its `error` object.
    pub fn err(&mut self, op: &str, params: Value) -> Value {
        let response = self.call(op, params.clone());
        assert_eq!(
            response["status"], "error",
            "{op} {params} should fail, got {response}"
        );
        assert!(
            response.get("result").is_none(),
            "error response carries no result: {response}"
        );
        response["error"].clone()
    }

    /// A request that must fail with `code`; returns its `error` object.
    pub fn err_code(&mut self, op: &str, params: Value, code: &str) -> Value {
        let error = self.err(op, params.clone());
        assert_eq!(error["code"], code, "{op} {params}: {error}");
        error
    }

    /// PING must be answered: the connection is still usable.
    pub fn assert_alive(&mut self) {
        let result = self.ok("PING", Value::Null);
        assert_eq!(result, json!({"pong": true}));
    }

    /// The server must close this connection without sending another byte.
    pub fn expect_closed(&mut self) -> Closed {
        assert!(
            self.buf.is_empty(),
            "unexpected buffered bytes before close: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        self.stream
            .set_read_timeout(Some(CLOSE_TIMEOUT))
            .expect("set read timeout");
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => Closed::Eof,
            Ok(n) => panic!(
                "server answered ({n} bytes: {:?}) where it must close silently",
                String::from_utf8_lossy(&chunk[..n])
            ),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                ) =>
            {
                Closed::Reset
            }
            Err(e) => panic!("server did not close the connection within {CLOSE_TIMEOUT:?}: {e}"),
        }
    }

    /// Half-close our side (no more requests).
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

/// Limit a socket's receive buffer (turns off the kernel's autotuning), so
/// a client that does not read fills it, and the server's send buffer,
/// sooner.
pub fn set_receive_buffer(stream: &TcpStream, bytes: usize) {
    use std::os::fd::AsRawFd;
    let value = bytes as libc::c_int;
    // SAFETY: setsockopt on a socket we own, with a pointer to a c_int that
    // lives across the call and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt(SO_RCVBUF): {}",
        io::Error::last_os_error()
    );
}

/// Write `count` copies of one request (ids `{prefix}{i}`) to `stream`
/// without reading anything.
pub fn pipeline(stream: &mut TcpStream, prefix: &str, count: usize, op: &str, params: &Value) {
    let mut out = Vec::new();
    for i in 0..count {
        out.extend_from_slice(&rcpx_json(&request(
            &format!("{prefix}{i}"),
            op,
            params.clone(),
        )));
    }
    stream.write_all(&out).expect("write pipelined requests");
}

/// A tokio RCPX client with one request in flight at a time.
pub struct AsyncRawClient {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
    next_id: u64,
}

impl AsyncRawClient {
    pub async fn connect(addr: SocketAddr) -> io::Result<AsyncRawClient> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true).ok();
        Ok(AsyncRawClient {
            stream,
            buf: Vec::new(),
            next_id: 1,
        })
    }

    /// Write one request without waiting; returns its id.
    pub async fn send(&mut self, op: &str, params: Value) -> io::Result<String> {
        use tokio::io::AsyncWriteExt;
        let id = format!("a{}", self.next_id);
        self.next_id += 1;
        self.stream
            .write_all(&rcpx_json(&request(&id, op, params)))
            .await?;
        Ok(id)
    }

    /// The next response envelope. Any transport failure (EOF, reset,
    /// timeout) is an `Err`.
    pub async fn next_response(&mut self) -> io::Result<Value> {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + RESPONSE_TIMEOUT;
        loop {
            match take_rcpx_frame(&mut self.buf) {
                Ok(Some(frame)) => {
                    assert_server_frame(&frame);
                    let doc = frame.json();
                    if doc["type"] == "notice" {
                        // The server's last frame before a shutdown close.
                        return Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            format!("server notice: {doc}"),
                        ));
                    }
                    return Ok(doc);
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            let mut chunk = vec![0u8; 16 * 1024];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "response timeout"))??;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Send one request and wait for its response envelope.
    pub async fn call(&mut self, op: &str, params: Value) -> io::Result<Value> {
        let id = self.send(op, params).await?;
        let response = self.next_response().await?;
        assert_eq!(response["id"], id.as_str(), "response id: {response}");
        Ok(response)
    }
}
