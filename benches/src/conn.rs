//! One client connection: the session handshake and single calls used by
//! setup, and the closed-loop load driver that keeps exactly `pipeline`
//! requests outstanding. Each read is followed by at most one write that
//! carries every request it made room for.

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::frame;
use crate::response::{Checker, Failure};
use crate::workload::{Expect, Generator, OpKind, OP_KINDS};

/// Initial read buffer; it grows (up to one maximal frame) only when a
/// single frame does not fit.
pub const READ_BUFFER_BYTES_INITIAL: usize = 256 * 1024;
/// Free space below which the read buffer is compacted before a read.
pub const READ_SPACE_BYTES_MIN: usize = 64 * 1024;
/// Largest frame the read buffer grows to hold.
pub const READ_BUFFER_BYTES_MAX: usize = frame::HEADER_BYTES + 64 * 1024 + frame::PAYLOAD_BYTES_MAX;
/// Highest latency the histogram tracks (60 s), in microseconds.
pub const LATENCY_US_MAX: u64 = 60_000_000;
/// Significant decimal digits kept by the latency histogram.
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;
/// Individual failures printed as they happen (the rest are only counted).
pub const PRINTED_FAILURES_MAX: usize = 20;
/// How long a setup call waits for its answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A harness failure outside the counted per-request errors.
#[derive(Debug)]
pub struct BenchError(pub String);

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BenchError {}

/// An error response to a setup call.
#[derive(Debug, Clone)]
pub struct ServerError {
    pub code: String,
    pub message: String,
}

/// State the orchestrator shares with every load connection (one thread).
pub struct Shared {
    /// No new requests once set; outstanding ones are drained.
    pub stop: Cell<bool>,
    /// Set when draining took too long: connections give up at once.
    pub abort: Cell<bool>,
    pub abort_notify: Notify,
    /// Responses received in `[window_start, window_end)` are measured.
    pub window_start: Cell<Option<Instant>>,
    pub window_end: Cell<Option<Instant>>,
    /// The window on the wall clock (Unix ns), for stamped applies: one
    /// whose stamp falls in it belongs to the window, for the writer that
    /// sent it and for the subscribers that receive its event alike.
    pub window_start_unix_ns: Cell<Option<u64>>,
    pub window_end_unix_ns: Cell<Option<u64>>,
    /// All verified responses so far (progress display).
    pub completed: Cell<u64>,
    /// All failures so far.
    pub failures: Cell<u64>,
    printed_failures: Cell<usize>,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            stop: Cell::new(false),
            abort: Cell::new(false),
            abort_notify: Notify::new(),
            window_start: Cell::new(None),
            window_end: Cell::new(None),
            window_start_unix_ns: Cell::new(None),
            window_end_unix_ns: Cell::new(None),
            completed: Cell::new(0),
            failures: Cell::new(0),
            printed_failures: Cell::new(0),
        }
    }

    pub(crate) fn in_window(&self, at: Instant) -> bool {
        self.window_start.get().is_some_and(|s| at >= s)
            && self.window_end.get().is_none_or(|e| at < e)
    }

    /// Whether a request stamped at `stamp_ns` was sent in the window.
    pub fn stamp_in_window(&self, stamp_ns: u64) -> bool {
        self.window_start_unix_ns
            .get()
            .is_some_and(|s| stamp_ns >= s)
            && self.window_end_unix_ns.get().is_none_or(|e| stamp_ns < e)
    }

    pub fn report_failure(&self, connection: usize, failure: &str) {
        self.failures.set(self.failures.get() + 1);
        let printed = self.printed_failures.get();
        if printed < PRINTED_FAILURES_MAX {
            eprintln!("!!! ERROR on connection {connection}: {failure}");
            if printed + 1 == PRINTED_FAILURES_MAX {
                eprintln!("!!! (further errors are only counted)");
            }
            self.printed_failures.set(printed + 1);
        }
    }
}

impl Default for Shared {
    fn default() -> Self {
        Shared::new()
    }
}

/// What one load connection measured.
pub struct LoadOutcome {
    pub measured_ops: u64,
    pub measured_by_kind: [u64; OP_KINDS],
    /// Verified responses to stamped applies (whole run).
    pub stamped_acked: u64,
    /// … of which the stamp is in the measured window.
    pub stamped_acked_in_window: u64,
    pub histogram: Histogram<u64>,
    /// Every failure (warm-up, window and drain), by code.
    pub failures: BTreeMap<String, u64>,
    /// Why the connection stopped early, if it did.
    pub fatal: Option<String>,
    pub completed: u64,
    pub slow_path_count: u64,
}

impl LoadOutcome {
    pub(crate) fn new() -> LoadOutcome {
        LoadOutcome {
            measured_ops: 0,
            measured_by_kind: [0; OP_KINDS],
            stamped_acked: 0,
            stamped_acked_in_window: 0,
            histogram: new_histogram(),
            failures: BTreeMap::new(),
            fatal: None,
            completed: 0,
            slow_path_count: 0,
        }
    }

    /// Counts the verdict on `request` (answered at `received_at`, inside
    /// the measured window when `measured`); a failure is also reported.
    /// True when the failure stops the connection (the stream is out of
    /// step).
    pub(crate) fn record(
        &mut self,
        shared: &Shared,
        index: usize,
        request: Pending,
        received_at: Instant,
        measured: bool,
        verdict: Result<(), Failure>,
    ) -> bool {
        let Pending {
            id,
            expect,
            sent_at,
            stamp_ns,
        } = request;
        match verdict {
            Ok(()) => {
                self.completed += 1;
                if stamp_ns != 0 {
                    self.stamped_acked += 1;
                    if shared.stamp_in_window(stamp_ns) {
                        self.stamped_acked_in_window += 1;
                    }
                }
                if measured {
                    self.measured_ops += 1;
                    self.measured_by_kind[expect.kind().index()] += 1;
                    let latency_us = received_at.duration_since(sent_at).as_micros() as u64;
                    self.histogram.saturating_record(latency_us.max(1));
                }
                false
            }
            Err(failure) => {
                *self.failures.entry(failure.code().to_string()).or_default() += 1;
                let what = format!("{} request id {id}: {}", expect.kind(), failure.describe());
                shared.report_failure(index, &what);
                if let Failure::Protocol(_) = failure {
                    self.fatal = Some(what);
                    return true;
                }
                false
            }
        }
    }

    /// Closes the books when the connection stops: a fatal end that no
    /// protocol violation explains counts as a lost connection.
    pub(crate) fn finish(&mut self, shared: &Shared, index: usize, slow_path_count: u64) {
        self.slow_path_count = slow_path_count;
        if let Some(fatal) = &self.fatal {
            if !self.failures.contains_key("PROTOCOL_VIOLATION") {
                *self.failures.entry("CONNECTION_LOST".into()).or_default() += 1;
                shared.report_failure(index, fatal);
            }
        }
    }
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGNIFICANT_DIGITS)
        .expect("valid histogram bounds")
}

/// A request sent and not yet answered: what its answer is checked and
/// counted against.
pub(crate) struct Pending {
    pub(crate) id: u64,
    pub(crate) expect: Expect,
    pub(crate) sent_at: Instant,
    /// The payload's `"t"` (0: none).
    pub(crate) stamp_ns: u64,
}

/// HELLO parameters of every harness connection: binary framing.
pub fn hello_params() -> Value {
    json!({"protocol_version": 1, "client_name": "corestate-bench",
           "wire_modes": ["binary_json"], "features": []})
}

/// AUTH parameters for a bearer token.
pub fn auth_params(token: &str) -> Value {
    json!({"method": "bearer", "token": token})
}

/// A connected, greeted session.
pub struct Conn {
    stream: TcpStream,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    wbuf: Vec<u8>,
    next_id: u64,
}

impl Conn {
    /// Connects, sends HELLO (binary framing) and AUTH when a token is
    /// given; returns the session and the HELLO result.
    pub async fn open(addr: &str, token: Option<&str>) -> Result<(Conn, Value), BenchError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| BenchError(format!("connect to {addr}: {e}")))?;
        stream
            .set_nodelay(true)
            .map_err(|e| BenchError(format!("TCP_NODELAY: {e}")))?;
        let mut conn = Conn {
            stream,
            rbuf: vec![0; READ_BUFFER_BYTES_INITIAL],
            rstart: 0,
            rend: 0,
            wbuf: Vec::with_capacity(64 * 1024),
            next_id: 1,
        };
        let hello = conn
            .call("HELLO", hello_params())
            .await?
            .map_err(|e| BenchError(format!("HELLO refused: {}: {}", e.code, e.message)))?;
        if let Some(token) = token {
            conn.call("AUTH", auth_params(token))
                .await?
                .map_err(|e| BenchError(format!("AUTH refused: {}: {}", e.code, e.message)))?;
        }
        Ok((conn, hello))
    }

    /// Sends one request and waits for its answer (setup and sampling only;
    /// allocates freely).
    pub async fn call(
        &mut self,
        op: &str,
        params: Value,
    ) -> Result<Result<Value, ServerError>, BenchError> {
        let id = self.next_id.to_string();
        self.next_id += 1;
        let body = json!({"type": "request", "id": id, "op": op, "params": params});
        self.wbuf.clear();
        frame::encode(&mut self.wbuf, body.to_string().as_bytes());
        let exchange = async {
            self.stream.write_all(&self.wbuf).await?;
            loop {
                if let Some(range) = self.next_frame()? {
                    return Ok::<_, std::io::Error>(range);
                }
                self.fill().await?;
            }
        };
        let range = tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| BenchError(format!("{op}: no answer within {CALL_TIMEOUT:?}")))?
            .map_err(|e| BenchError(format!("{op}: {e}")))?;
        self.wbuf.clear();
        let v: Value = serde_json::from_slice(&self.rbuf[range])
            .map_err(|e| BenchError(format!("{op}: response is not JSON: {e}")))?;
        if v.get("id").and_then(Value::as_str) != Some(id.as_str()) {
            return Err(BenchError(format!("{op}: answer has the wrong id: {v}")));
        }
        match v.get("status").and_then(Value::as_str) {
            Some("ok") => Ok(Ok(v.get("result").cloned().unwrap_or(Value::Null))),
            Some("error") => {
                let field = |k: &str| v["error"][k].as_str().unwrap_or("?").to_string();
                Ok(Err(ServerError {
                    code: field("code"),
                    message: field("message"),
                }))
            }
            _ => Err(BenchError(format!("{op}: malformed response: {v}"))),
        }
    }

    /// The payload range of the next complete frame, consumed; its bytes
    /// stay readable through [`Conn::payload`] until the next read.
    pub fn next_frame(&mut self) -> std::io::Result<Option<std::ops::Range<usize>>> {
        match frame::decode(&self.rbuf[self.rstart..self.rend]) {
            Ok(Some(d)) => {
                let range = self.rstart + d.payload_start..self.rstart + d.payload_end;
                self.rstart += d.payload_end;
                Ok(Some(range))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e.0)),
        }
    }

    /// Makes room at the end of the read buffer (keeping unread bytes).
    fn make_room(&mut self) {
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        } else if self.rbuf.len() - self.rend < READ_SPACE_BYTES_MIN {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
            if self.rbuf.len() - self.rend < READ_SPACE_BYTES_MIN {
                let grown = (self.rbuf.len() * 2).min(READ_BUFFER_BYTES_MAX);
                self.rbuf.resize(grown, 0);
            }
        }
    }

    /// The bytes of a frame payload returned by [`Conn::next_frame`].
    pub fn payload(&self, range: std::ops::Range<usize>) -> &[u8] {
        &self.rbuf[range]
    }

    /// Reads once; fails on EOF. Cancel-safe (nothing is lost when the
    /// future is dropped before it completes).
    pub async fn fill(&mut self) -> std::io::Result<usize> {
        self.make_room();
        let n = self.stream.read(&mut self.rbuf[self.rend..]).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
        self.rend += n;
        Ok(n)
    }

    /// The closed loop: keeps `pipeline` requests outstanding until
    /// `shared.stop` (or until the generator is used up), verifies every
    /// answer in order, then drains what is still outstanding.
    pub async fn run_load(
        mut self,
        index: usize,
        mut generator: Generator,
        shared: &Shared,
        pipeline: usize,
        mut checker: Checker,
    ) -> LoadOutcome {
        let mut outcome = LoadOutcome::new();
        let mut pending: VecDeque<Pending> = VecDeque::with_capacity(pipeline);
        let mut id = self.next_id;
        self.wbuf.clear();

        let mut added = 0;
        while pending.len() < pipeline && generator.has_next() && !shared.stop.get() {
            let expect = generator.render_next(id, &mut self.wbuf);
            pending.push_back(Pending {
                id,
                expect,
                sent_at: Instant::now(),
                stamp_ns: generator.stamp_ns(),
            });
            id += 1;
            added += 1;
        }
        loop {
            if added > 0 {
                let sent_at = Instant::now();
                for p in pending.iter_mut().rev().take(added) {
                    p.sent_at = sent_at;
                }
                let write = self.stream.write_all(&self.wbuf);
                let result = tokio::select! {
                    r = write => r,
                    _ = shared.abort_notify.notified() => {
                        outcome.fatal = Some(abandoned(pending.len()));
                        break;
                    }
                };
                if let Err(e) = result {
                    outcome.fatal = Some(format!("write failed: {e}"));
                    break;
                }
                self.wbuf.clear();
                added = 0;
            }
            if pending.is_empty() {
                break;
            }
            if shared.abort.get() {
                outcome.fatal = Some(abandoned(pending.len()));
                break;
            }
            self.make_room();
            let read = self.stream.read(&mut self.rbuf[self.rend..]);
            let result = tokio::select! {
                r = read => r,
                _ = shared.abort_notify.notified() => {
                    outcome.fatal = Some(abandoned(pending.len()));
                    break;
                }
            };
            match result {
                Ok(0) => {
                    outcome.fatal = Some(format!(
                        "server closed the connection with {} requests outstanding",
                        pending.len()
                    ));
                    break;
                }
                Ok(n) => self.rend += n,
                Err(e) => {
                    outcome.fatal = Some(format!("read failed: {e}"));
                    break;
                }
            }
            let received_at = Instant::now();
            let measured = shared.in_window(received_at);
            let stopping = shared.stop.get();
            let completed_before = outcome.completed;
            loop {
                let decoded = match frame::decode(&self.rbuf[self.rstart..self.rend]) {
                    Ok(Some(d)) => d,
                    Ok(None) => break,
                    Err(e) => {
                        outcome.fatal = Some(format!("bad frame from server: {}", e.0));
                        break;
                    }
                };
                let payload = &self.rbuf
                    [self.rstart + decoded.payload_start..self.rstart + decoded.payload_end];
                self.rstart += decoded.payload_end;
                let Some(p) = pending.pop_front() else {
                    outcome.fatal = Some("a response arrived with nothing outstanding".into());
                    break;
                };
                let verdict = checker.check(
                    payload,
                    p.id,
                    p.expect,
                    generator.templates(),
                    generator.create_prefix(),
                );
                if outcome.record(shared, index, p, received_at, measured, verdict) {
                    break;
                }
                if !stopping && generator.has_next() {
                    let expect = generator.render_next(id, &mut self.wbuf);
                    pending.push_back(Pending {
                        id,
                        expect,
                        sent_at: received_at,
                        stamp_ns: generator.stamp_ns(),
                    });
                    id += 1;
                    added += 1;
                }
            }
            if outcome.fatal.is_some() {
                break;
            }
            shared
                .completed
                .set(shared.completed.get() + outcome.completed - completed_before);
        }
        outcome.finish(shared, index, checker.slow_path_count);
        outcome
    }
}

fn abandoned(outstanding: usize) -> String {
    format!("gave up waiting: {outstanding} requests never answered within the drain timeout")
}

/// Op kinds as JSON object keys, in order.
pub fn kind_names() -> [&'static str; OP_KINDS] {
    OpKind::ALL.map(OpKind::name)
}
