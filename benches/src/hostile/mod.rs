//! Hostile clients beside the normal load (`--hostile
//! slowloris=N,unread=N,biglist=N`): connections that hold on to server
//! resources without ever behaving like a client. They are opened after
//! setup, kept open through the warm-up, the measured window and the drain,
//! then closed. They run on one thread of their own, with non-blocking std
//! sockets driven by poll(2), so the measured event loop never waits for
//! them. What they receive is not verified, and the server closing one is
//! reported, not a failure of the run.
//!
//! - `slowloris`: after HELLO, an RCPX header announcing a 16 MiB payload
//!   and a few bytes of it, then one more byte every
//!   [`SLOWLORIS_TRICKLE_INTERVAL`]; the frame never completes.
//! - `unread`: GET_INSTANCE of one instance with a 1 MiB context, pipelined
//!   as fast as the socket takes them; no answer is ever read.
//! - `biglist`: LIST_INSTANCES `{"limit": 10000}` pipelined as fast as the
//!   socket takes them; answers are read at [`BIGLIST_READ_BYTES_PER_SEC`].

mod client;
mod results;
mod spec;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};

use crate::conn::{auth_params, hello_params, BenchError, Conn, CALL_TIMEOUT};
use crate::frame;
use crate::workload::{MACHINE_NAME, MACHINE_VERSION};
use client::Hostile;
pub use results::{HostileKindResult, HostileResults};
pub use spec::{HostileKind, HostileSpec};

/// Most hostile connections of all kinds together (corestate and rstmdb
/// accept 1000 connections by default).
pub const HOSTILE_CONNECTIONS_MAX: usize = 1000;
/// The payload a slowloris header announces: the largest the protocol allows.
pub const SLOWLORIS_ANNOUNCED_PAYLOAD_BYTES: usize = frame::PAYLOAD_BYTES_MAX;
/// The start of the payload a slowloris sends right after its header.
pub const SLOWLORIS_FIRST_BYTES: &[u8] = br#"{"type":"request","id":"slowloris","#;
/// Time between two trickled slowloris bytes (JSON whitespace).
pub const SLOWLORIS_TRICKLE_INTERVAL: Duration = Duration::from_secs(2);
/// Length of the string in the context of the instance `unread` GETs.
pub const UNREAD_CONTEXT_BYTES: usize = 1024 * 1024;
/// The `limit` of every `biglist` LIST_INSTANCES (corestate's largest page).
pub const BIGLIST_LIMIT_ROWS: u32 = 10_000;
/// How fast one `biglist` connection reads its answers.
pub const BIGLIST_READ_BYTES_PER_SEC: f64 = 256.0 * 1024.0;
/// A `biglist` connection waits for answers once it may read this much.
pub const BIGLIST_READ_CHUNK_BYTES: usize = 16 * 1024;
/// Most a `biglist` connection may read at once: what it earned while the
/// hostile thread was late, so the rate holds on a busy machine.
pub const BIGLIST_READ_BURST_BYTES: usize = 4 * BIGLIST_READ_CHUNK_BYTES;
/// Requests rendered into a connection's write buffer at a time.
pub const REQUESTS_PER_REFILL: usize = 64;
/// Writes one connection may make per wake-up before the others get a turn.
pub const WRITES_PER_WAKE_MAX: usize = 16;
/// Longest poll(2) wait: how late the hostile thread notices the end.
pub const POLL_TIMEOUT_MAX: Duration = Duration::from_millis(50);
/// Bytes of the first answer a connection read, kept for the report.
pub const ANSWER_HEAD_BYTES: usize = 160;
/// Distinct reasons for server closes kept per kind.
pub const CLOSE_REASONS_KEPT_MAX: usize = 5;

/// Creates the instance `unread` connections GET (when there are any): its
/// context holds a string of [`UNREAD_CONTEXT_BYTES`] characters.
pub async fn prepare(
    control: &mut Conn,
    spec: &HostileSpec,
    run_tag: &str,
) -> Result<Option<String>, BenchError> {
    if spec.count(HostileKind::Unread) == 0 {
        return Ok(None);
    }
    let instance_id = format!("bh-{run_tag}-big");
    let ctx = json!({"d": "x".repeat(UNREAD_CONTEXT_BYTES)});
    control
        .call(
            "CREATE_INSTANCE",
            json!({"machine": MACHINE_NAME, "version": MACHINE_VERSION,
                   "instance_id": instance_id, "initial_ctx": ctx}),
        )
        .await?
        .map_err(|e| {
            BenchError(format!(
                "creating the {UNREAD_CONTEXT_BYTES}-byte instance for unread clients: {}: {}",
                e.code, e.message
            ))
        })?;
    Ok(Some(instance_id))
}

/// Hostile connections being driven on their own thread.
pub struct HostileRun {
    spec: HostileSpec,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(Vec<Hostile>, f64, Duration)>,
}

/// Opens every hostile connection (HELLO, and AUTH with a token; off the
/// event loop) and starts driving them. `big_instance` is what
/// [`prepare`] created.
pub async fn start(
    addr: &str,
    token: Option<&str>,
    spec: HostileSpec,
    big_instance: Option<String>,
) -> Result<HostileRun, BenchError> {
    let (addr, token) = (addr.to_string(), token.map(str::to_string));
    let conns = tokio::task::spawn_blocking(move || {
        let mut conns = Vec::with_capacity(spec.total());
        for kind in HostileKind::ALL {
            for _ in 0..spec.count(kind) {
                let stream = handshake(&addr, token.as_deref())
                    .map_err(|e| BenchError(format!("hostile {} client: {e}", kind.name())))?;
                conns.push(Hostile::new(kind, stream, big_instance.as_deref()));
            }
        }
        Ok::<_, BenchError>(conns)
    })
    .await
    .map_err(|e| BenchError(format!("opening hostile clients: {e}")))??;
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("hostile".into())
            .spawn(move || client::drive(conns, &stop))
            .map_err(|e| BenchError(format!("hostile thread: {e}")))?
    };
    Ok(HostileRun { spec, stop, thread })
}

impl HostileRun {
    /// Closes every hostile connection and reports what they did.
    pub fn finish(self) -> Result<HostileResults, BenchError> {
        self.stop.store(true, Ordering::Release);
        let (conns, thread_cpu_seconds, open) = self
            .thread
            .join()
            .map_err(|_| BenchError("the hostile thread panicked".into()))?;
        Ok(HostileResults::new(
            &self.spec,
            &conns,
            thread_cpu_seconds,
            open,
        ))
    }
}

/// Connects and greets in blocking mode; the stream comes back non-blocking.
fn handshake(addr: &str, token: Option<&str>) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(CALL_TIMEOUT))?;
    call(&mut stream, "HELLO", hello_params())?;
    if let Some(token) = token {
        call(&mut stream, "AUTH", auth_params(token))?;
    }
    stream.set_nonblocking(true)?;
    Ok(stream)
}

/// One request, one answer that must be `ok`.
fn call(stream: &mut TcpStream, op: &str, params: Value) -> io::Result<()> {
    let mut out = Vec::new();
    let body = json!({"type": "request", "id": "1", "op": op, "params": params});
    frame::encode(&mut out, body.to_string().as_bytes());
    stream.write_all(&out)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let decoded = loop {
        if let Some(d) = frame::decode(&buf).map_err(|e| invalid(e.0))? {
            break d;
        }
        match stream.read(&mut chunk)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let answer: Value = serde_json::from_slice(&buf[decoded.payload_start..decoded.payload_end])
        .map_err(|e| invalid(format!("{op}: answer is not JSON: {e}")))?;
    match answer["status"].as_str() {
        Some("ok") => Ok(()),
        _ => Err(invalid(format!("{op} refused: {answer}"))),
    }
}
