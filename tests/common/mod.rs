//! Shared harness of the integration tests: starts the real `corestate`
//! binary on a fresh port and a fresh data directory, kills it by PID, and
//! talks to it with a hand-written RCPX client (sync and async) or with the
//! official `rstmdb-client` crate.
//!
//! Every test owns its servers outright: a fresh port (glommio's listener
//! sets SO_REUSEPORT, so a leftover server on a reused port would silently
//! steal connections), a fresh temporary directory, and a `Drop` that
//! SIGKILLs exactly the process it started. When a test panics, the tail of
//! the server's stderr is printed and its directory is kept for inspection.

// Each test crate uses a different subset of this module.
#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

/// How long a server may take to accept its first connection.
pub const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Poll interval while waiting for the server to accept connections.
pub const SERVER_READY_POLL: Duration = Duration::from_millis(20);
/// How long a raw client waits for one response before failing the test.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the server to close a connection it must close.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of server stderr quoted in failure messages.
pub const STDERR_TAIL_LINES: usize = 60;
/// Largest payload the protocol allows (spec §1.2).
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024 * 1024;

/// Token `secret` and its SHA-256 (spec §3.3).
pub const AUTH_TOKEN: &str = "secret";
pub const AUTH_TOKEN_SHA256: &str =
    "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

/// Path of the binary under test.
pub fn server_binary() -> &'static str {
    env!("CARGO_BIN_EXE_corestate")
}

/// A port nobody listens on right now: bind to port 0, read it, release it.
pub fn fresh_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// The last `lines` lines of a log file (or a note that it is missing).
pub fn file_tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            all[from..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// One running (or stopped) server process and everything it owns.
pub struct Server {
    child: Option<Child>,
    addr: SocketAddr,
    data_dir: PathBuf,
    extra_args: Vec<String>,
    /// Holds the stderr logs (and the data directory when we created it).
    work: Option<TempDir>,
    stderr_path: PathBuf,
    starts: usize,
}

/// A server launch that ended with the process exiting.
pub struct Exited {
    pub status: ExitStatus,
    pub stderr: String,
}

impl Server {
    /// Start a server on a fresh data directory.
    pub fn start(extra_args: &[&str]) -> Server {
        let work = TempDir::new().expect("create temp dir");
        let data_dir = work.path().join("data");
        fs::create_dir_all(&data_dir).expect("create data dir");
        Server::launch(work, data_dir, extra_args)
    }

    /// Start a server on an existing data directory (owned by the caller).
    pub fn start_in(data_dir: &Path, extra_args: &[&str]) -> Server {
        let work = TempDir::new().expect("create temp dir");
        Server::launch(work, data_dir.to_path_buf(), extra_args)
    }

    fn launch(work: TempDir, data_dir: PathBuf, extra_args: &[&str]) -> Server {
        let mut server = Server {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            work: Some(work),
            stderr_path: PathBuf::new(),
            starts: 0,
        };
        server.spawn_and_wait_ready();
        server
    }

    /// Launch on `data_dir` expecting the process to exit by itself (it
    /// must refuse to start). Panics if it accepts a connection instead.
    pub fn expect_exit_in(data_dir: &Path, extra_args: &[&str], timeout: Duration) -> Exited {
        let work = TempDir::new().expect("create temp dir");
        let port = fresh_port();
        let stderr_path = work.path().join("stderr-exit.log");
        let mut child = spawn_server(data_dir, port, extra_args, &stderr_path);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Exited {
                    status,
                    stderr: fs::read_to_string(&stderr_path).unwrap_or_default(),
                };
            }
            if TcpStream::connect_timeout(&addr, SERVER_READY_POLL).is_ok() {
                kill_child(&mut child);
                panic!(
                    "server was expected to refuse to start but it accepted a connection on \
                     {addr}; stderr:\n{}",
                    file_tail(&stderr_path, STDERR_TAIL_LINES)
                );
            }
            if Instant::now() > deadline {
                kill_child(&mut child);
                panic!(
                    "server neither exited nor listened within {timeout:?}; stderr:\n{}",
                    file_tail(&stderr_path, STDERR_TAIL_LINES)
                );
            }
            std::thread::sleep(SERVER_READY_POLL);
        }
    }

    fn spawn_and_wait_ready(&mut self) {
        assert!(self.child.is_none(), "server already running");
        self.starts += 1;
        let port = fresh_port();
        self.addr = SocketAddr::from(([127, 0, 0, 1], port));
        self.stderr_path = self.work_dir().join(format!("stderr-{}.log", self.starts));
        let args: Vec<&str> = self.extra_args.iter().map(String::as_str).collect();
        let mut child = spawn_server(&self.data_dir, port, &args, &self.stderr_path);
        let started = Instant::now();
        let deadline = started + SERVER_READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!(
                    "corestate exited during start-up with {status}; stderr:\n{}",
                    file_tail(&self.stderr_path, STDERR_TAIL_LINES)
                );
            }
            if TcpStream::connect_timeout(&self.addr, SERVER_READY_POLL).is_ok() {
                eprintln!(
                    "corestate run {} ready on {} after {} ms",
                    self.starts,
                    self.addr,
                    started.elapsed().as_millis()
                );
                break;
            }
            if Instant::now() > deadline {
                kill_child(&mut child);
                panic!(
                    "corestate did not accept connections on {} within {SERVER_READY_TIMEOUT:?}; \
                     stderr:\n{}",
                    self.addr,
                    file_tail(&self.stderr_path, STDERR_TAIL_LINES)
                );
            }
            std::thread::sleep(SERVER_READY_POLL);
        }
        self.child = Some(child);
    }

    fn work_dir(&self) -> &Path {
        self.work.as_ref().expect("work dir").path()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stderr of the current (or last) run.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The last lines of stderr of the current (or last) run.
    pub fn stderr_tail(&self) -> String {
        file_tail(&self.stderr_path, STDERR_TAIL_LINES)
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    /// Kill the process with a real SIGKILL and reap it.
    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
    }

    /// SIGKILL (if running), then start again on the same data directory
    /// with a fresh port.
    pub fn restart(&mut self) {
        self.sigkill();
        self.spawn_and_wait_ready();
    }

    /// A connected raw RCPX client.
    pub fn raw(&self) -> RawClient {
        RawClient::connect(self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.sigkill();
        if std::thread::panicking() {
            eprintln!(
                "--- corestate stderr (last {STDERR_TAIL_LINES} lines, run {}) ---\n{}\n--- end ---",
                self.starts,
                self.stderr_tail()
            );
            if let Some(work) = self.work.take() {
                // Keep the logs, not the (pre-allocated, large) WAL segments.
                let _ = fs::remove_dir_all(work.path().join("data"));
                let kept = work.keep();
                eprintln!("kept server logs in {}", kept.display());
            }
        }
    }
}

fn spawn_server(data_dir: &Path, port: u16, extra_args: &[&str], stderr_path: &Path) -> Child {
    let log = File::create(stderr_path).expect("create stderr log");
    let log_for_stdout = log.try_clone().expect("clone log handle");
    let mut cmd = Command::new(server_binary());
    cmd.arg("--bind")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--shards", "2", "--fsync", "every_write"])
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_for_stdout))
        .stderr(Stdio::from(log))
        .env("RUST_LOG", "info");
    // Nothing from the environment of the test run may configure the server.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("RSTMDB_") || key.starts_with("CORESTATE_") {
            cmd.env_remove(key);
        }
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", server_binary()))
}

fn kill_child(child: &mut Child) {
    let pid = child.id() as libc::pid_t;
    if child.try_wait().ok().flatten().is_none() {
        // SAFETY: kill(2) on the PID of a child we spawned and have not reaped
        // yet, so the PID cannot have been reused by another process.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    let _ = child.wait();
}

/// Write a YAML config file into `dir` and return its path.
pub fn write_config(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("corestate.yaml");
    fs::write(&path, yaml).expect("write config file");
    path
}

/// A temp dir holding a config that requires bearer auth with token `secret`.
pub fn auth_config() -> (TempDir, PathBuf) {
    let dir = TempDir::new().expect("temp dir");
    let path = write_config(
        dir.path(),
        &format!("auth:\n  required: true\n  token_hashes:\n    - \"{AUTH_TOKEN_SHA256}\"\n"),
    );
    (dir, path)
}

// ---------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------

pub const RCPX_MAGIC: [u8; 4] = *b"RCPX";
pub const RCP1_MAGIC: [u8; 4] = *b"RCP1";
pub const FLAG_CRC_PRESENT: u16 = 0x0001;
pub const RCPX_HEADER_BYTES: usize = 18;
pub const RCP1_HEADER_BYTES: usize = 16;

/// A request envelope.
pub fn request(id: &str, op: &str, params: Value) -> Value {
    if params.is_null() {
        json!({"type": "request", "id": id, "op": op})
    } else {
        json!({"type": "request", "id": id, "op": op, "params": params})
    }
}

/// An RCPX frame with every header field chosen by the caller.
pub fn rcpx_frame_with(version: u16, flags: u16, ext: &[u8], payload: &[u8], crc: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(RCPX_HEADER_BYTES + ext.len() + payload.len());
    out.extend_from_slice(&RCPX_MAGIC);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(ext);
    out.extend_from_slice(payload);
    out
}

/// A well-formed RCPX frame (version 1, CRC present and correct).
pub fn rcpx_frame(payload: &[u8]) -> Vec<u8> {
    rcpx_frame_with(1, FLAG_CRC_PRESENT, &[], payload, crc32c::crc32c(payload))
}

/// A well-formed RCPX frame carrying `doc`.
pub fn rcpx_json(doc: &Value) -> Vec<u8> {
    rcpx_frame(doc.to_string().as_bytes())
}

/// A legacy 16-byte RCP1 frame as the guide's minimal client writes it
/// (variant A: four zero flag bytes, length, CRC).
pub fn rcp1_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RCP1_HEADER_BYTES + payload.len());
    out.extend_from_slice(&RCP1_MAGIC);
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// One JSON document as a JSONL line.
pub fn json_line(doc: &Value) -> Vec<u8> {
    let mut out = doc.to_string().into_bytes();
    out.push(b'\n');
    out
}

/// A frame as received, header fields kept for assertions.
#[derive(Debug, Clone)]
pub struct Frame {
    pub magic: [u8; 4],
    /// Bytes 4..8 of the header (version+flags for RCPX, flags for RCP1).
    pub header_word: [u8; 4],
    pub version: u16,
    pub flags: u16,
    pub header_len: u16,
    pub crc: u32,
    pub payload: Vec<u8>,
    /// The complete frame bytes.
    pub raw: Vec<u8>,
}

impl Frame {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "frame payload is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.payload)
            )
        })
    }

    pub fn crc_ok(&self) -> bool {
        crc32c::crc32c(&self.payload) == self.crc
    }
}

/// Try to cut one RCPX frame off the front of `buf`.
pub fn take_rcpx_frame(buf: &mut Vec<u8>) -> Result<Option<Frame>, String> {
    if buf.len() < RCPX_HEADER_BYTES {
        return Ok(None);
    }
    let magic: [u8; 4] = buf[0..4].try_into().unwrap();
    if magic != RCPX_MAGIC {
        return Err(format!(
            "expected an RCPX frame, got {:?} (first bytes {:?})",
            String::from_utf8_lossy(&magic),
            String::from_utf8_lossy(&buf[..buf.len().min(80)])
        ));
    }
    let version = u16::from_be_bytes([buf[4], buf[5]]);
    let flags = u16::from_be_bytes([buf[6], buf[7]]);
    let header_len = u16::from_be_bytes([buf[8], buf[9]]);
    let payload_len = u32::from_be_bytes(buf[10..14].try_into().unwrap()) as usize;
    let crc = u32::from_be_bytes(buf[14..18].try_into().unwrap());
    let total = RCPX_HEADER_BYTES + header_len as usize + payload_len;
    if buf.len() < total {
        return Ok(None);
    }
    let raw: Vec<u8> = buf.drain(..total).collect();
    let payload = raw[RCPX_HEADER_BYTES + header_len as usize..].to_vec();
    Ok(Some(Frame {
        magic,
        header_word: raw[4..8].try_into().unwrap(),
        version,
        flags,
        header_len,
        crc,
        payload,
        raw,
    }))
}

/// Try to cut one RCP1 frame (16-byte header, variant A/B) off `buf`.
pub fn take_rcp1_frame(buf: &mut Vec<u8>) -> Result<Option<Frame>, String> {
    if buf.len() < RCP1_HEADER_BYTES {
        return Ok(None);
    }
    let magic: [u8; 4] = buf[0..4].try_into().unwrap();
    if magic != RCP1_MAGIC {
        return Err(format!(
            "expected an RCP1 frame, got {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(80)])
        ));
    }
    let payload_len = u32::from_be_bytes(buf[8..12].try_into().unwrap()) as usize;
    let crc = u32::from_be_bytes(buf[12..16].try_into().unwrap());
    let total = RCP1_HEADER_BYTES + payload_len;
    if buf.len() < total {
        return Ok(None);
    }
    let raw: Vec<u8> = buf.drain(..total).collect();
    Ok(Some(Frame {
        magic,
        header_word: raw[4..8].try_into().unwrap(),
        version: 0,
        flags: u16::from_be_bytes([raw[4], raw[5]]),
        header_len: u16::from_be_bytes([raw[6], raw[7]]),
        crc,
        payload: raw[RCP1_HEADER_BYTES..].to_vec(),
        raw,
    }))
}

/// Check what every RCPX frame the server sends must look like (spec §1.6).
pub fn assert_server_frame(frame: &Frame) {
    assert_eq!(frame.version, 1, "server frame version: {frame:?}");
    assert_eq!(
        frame.flags, FLAG_CRC_PRESENT,
        "server frame flags must be exactly CRC_PRESENT: {frame:?}"
    );
    assert_eq!(frame.header_len, 0, "server never sends an extension");
    assert!(
        frame.crc_ok(),
        "server frame CRC {:#010x} does not match payload (expected {:#010x}): {:?}",
        frame.crc,
        crc32c::crc32c(&frame.payload),
        String::from_utf8_lossy(&frame.payload)
    );
}

// ---------------------------------------------------------------------------
// Synchronous raw client
// ---------------------------------------------------------------------------

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

    /// Next RCPX response frame, checked for §1.6 conformance, as JSON.
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

// ---------------------------------------------------------------------------
// Asynchronous raw client (for concurrent load)
// ---------------------------------------------------------------------------

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
                    return Ok(frame.json());
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

// ---------------------------------------------------------------------------
// rstmdb-client
// ---------------------------------------------------------------------------

/// Connect the official Rust client and spawn its read loop (rstmdb-client
/// 0.3.0 has no one-call connect: without the loop every request times out).
pub async fn rstmdb_connect(
    addr: SocketAddr,
    token: Option<&str>,
) -> Result<rstmdb_client::Client, rstmdb_client::ClientError> {
    let mut config = rstmdb_client::ConnectionConfig::new(addr)
        .with_client_name("corestate-tests")
        .with_connect_timeout(Duration::from_secs(5))
        .with_request_timeout(RESPONSE_TIMEOUT);
    if let Some(token) = token {
        config = config.with_auth_token(token);
    }
    let client = rstmdb_client::Client::new(config);
    client.connect().await?;
    let conn: Arc<rstmdb_client::Connection> = client.connection();
    tokio::spawn(async move {
        let _ = conn.read_loop().await;
    });
    Ok(client)
}

/// The RCP code of a client error, or a description of a non-server error.
pub fn error_code(err: &rstmdb_client::ClientError) -> String {
    match err {
        rstmdb_client::ClientError::ServerError { code, .. } => code.to_string(),
        other => format!("<not a server error: {other}>"),
    }
}

// ---------------------------------------------------------------------------
// On-disk WAL files
// ---------------------------------------------------------------------------

/// Every WAL segment file: `DIR/shard-*/wal/*.wal`, sorted.
pub fn wal_segments(data_dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(shards) = fs::read_dir(data_dir) else {
        return out;
    };
    for shard in shards.flatten() {
        let name = shard.file_name().to_string_lossy().into_owned();
        if !name.starts_with("shard-") {
            continue;
        }
        let Ok(files) = fs::read_dir(shard.path().join("wal")) else {
            continue;
        };
        for file in files.flatten() {
            if file.path().extension().is_some_and(|e| e == "wal") {
                out.push(file.path());
            }
        }
    }
    out.sort();
    out
}

/// Length of the written data of a pre-zeroed segment: one past its last
/// non-zero byte (0 for an unused segment).
pub fn data_end(bytes: &[u8]) -> usize {
    const BLOCK: usize = 4096;
    let mut end = bytes.len();
    // Skip all-zero blocks from the back quickly, then find the exact byte.
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        if bytes[start..end].iter().any(|&b| b != 0) {
            break;
        }
        end = start;
    }
    while end > 0 && bytes[end - 1] == 0 {
        end -= 1;
    }
    end
}
