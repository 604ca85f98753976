//! The dialing side of one peer link: one connection from this executor to
//! one peer node, shared by every group on this executor that talks to it.
//! Requests are multiplexed on it by request id, at most
//! [`PEER_REQUESTS_IN_FLIGHT_MAX`] at a time; answers may come back in any
//! order. A broken connection is dialled again on the next request, after
//! a capped, doubling backoff if dialling itself failed.
//!
//! Each connection runs two glommio tasks on this executor: a reader that
//! hands each answer to the request waiting for it, and a writer that
//! sends queued frames. Dropping the connection cancels both and closes the
//! socket.
//!
//! With TLS configured the connection is TLS from its first byte, and the
//! cluster handshake runs inside it; a TLS failure is a failed dial like
//! any other (the peer is unreachable, dialled again after the backoff).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use futures_util::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use openraft::AsyncRuntime;

use super::frame::{
    encode_frame, read_frame, write_frame, Frame, FrameKind, ANSWER_FRAME_BODY_MAX_BYTES,
};
use super::handshake::{self, ClusterCredentials};
use super::tls::PeerTls;
use super::wire::{from_json, ErrorBody};
use crate::GlommioRuntime;

/// Requests one connection carries at once; the next waits for a slot.
pub const PEER_REQUESTS_IN_FLIGHT_MAX: usize = 64;

/// How long a connection may owe an answer without any frame arriving
/// before it is presumed dead and dialled afresh (checked when a request
/// times out). Longer than one request's timeout on purpose: openraft
/// gives an AppendEntries the heartbeat interval (50 ms), and a follower
/// busy for a moment (a group snapshot, a slow sync) answers later than
/// that — breaking the connection then also failed the heartbeats and
/// forwarded requests riding on it, and the slow follower became an
/// election. Measured under create 16×16 (bench-results/2026-12-05/
/// peer-silence/): at 0 the lead moved under load in 5 of 6 runs and 1,328
/// requests were refused; at 500 ms, in none of 6, and none were. (Set to
/// 0 for a while because one short checker run with 500 ms left a batch
/// part in doubt; 14 runs since, on that run's seed and others, passed.)
pub const PEER_SILENCE_BREAK_MS: u64 = 500;

/// How long a TCP connect may take.
pub const DIAL_TIMEOUT_MS: u64 = 1_000;

/// The first wait before dialling a peer again after a failed dial.
pub const REDIAL_BACKOFF_MIN_MS: u64 = 20;

/// The longest wait between two dials of the same peer.
pub const REDIAL_BACKOFF_MAX_MS: u64 = 1_000;

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// No connection (dial failed, handshake refused, backing off): the
    /// request never left this node.
    NotSent(String),
    /// The connection broke after the request was handed to it, before the
    /// answer came: the peer may have acted on it.
    Unreachable(String),
    /// No answer within the request's timeout.
    Timeout,
    /// The peer answered with an error frame.
    Remote(ErrorBody),
    /// The peer answered with something that is not an answer.
    Protocol(String),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::NotSent(why) => write!(f, "not sent: {why}"),
            CallError::Unreachable(why) => write!(f, "unreachable: {why}"),
            CallError::Timeout => write!(f, "timed out"),
            CallError::Remote(body) => write!(f, "remote error {body}"),
            CallError::Protocol(why) => write!(f, "protocol error: {why}"),
        }
    }
}

impl std::error::Error for CallError {}

type Waiter = oneshot::Sender<Frame>;

/// What the reader, the writer and the callers of one connection share.
struct ConnShared {
    pending: RefCell<HashMap<u64, Waiter>>,
    /// Set once the connection is unusable, with the reason.
    broken: RefCell<Option<String>>,
    /// Since when the peer owes an answer and has sent nothing: set when a
    /// request leaves while none is owed, cleared (or restarted, if answers
    /// are still owed) by every frame that arrives.
    owing_since: Cell<Option<Instant>>,
    /// Snapshot chunks owed an answer: while any is, silence is no sign of
    /// a dead peer (`silent_too_long`).
    chunks_owed: Cell<usize>,
}

impl ConnShared {
    fn break_with(&self, why: String) {
        let mut broken = self.broken.borrow_mut();
        if broken.is_none() {
            *broken = Some(why);
        }
        drop(broken);
        // Dropping the waiters wakes every caller with "connection lost".
        self.pending.borrow_mut().clear();
    }
}

/// One live, handshaken connection.
struct Conn {
    shared: Rc<ConnShared>,
    outbox: flume::Sender<Vec<u8>>,
    next_request_id: Cell<u64>,
    _reader: glommio::Task<()>,
    _writer: glommio::Task<()>,
}

impl Conn {
    /// Starts the reader and writer tasks over a handshaken stream.
    fn start<S: AsyncRead + AsyncWrite + Unpin + 'static>(stream: S) -> Conn {
        let (mut read_half, mut write_half) = stream.split();
        let shared = Rc::new(ConnShared {
            pending: RefCell::new(HashMap::new()),
            broken: RefCell::new(None),
            owing_since: Cell::new(None),
            chunks_owed: Cell::new(0),
        });
        let (outbox, queued) = flume::bounded::<Vec<u8>>(PEER_REQUESTS_IN_FLIGHT_MAX);

        let reading = shared.clone();
        let reader = glommio::spawn_local(async move {
            loop {
                // Only answers may be this large; checked below by kind.
                let frame = match read_frame(&mut read_half, ANSWER_FRAME_BODY_MAX_BYTES).await {
                    Ok(frame) => frame,
                    Err(err) => return reading.break_with(format!("reading: {err}")),
                };
                let now = Instant::now();
                if !matches!(frame.kind, FrameKind::Answer | FrameKind::Error) {
                    return reading
                        .break_with(format!("a {:?} frame from the listener", frame.kind));
                }
                if frame.body.len() > frame.kind.body_max_bytes() as usize {
                    return reading.break_with(format!(
                        "a {:?} frame of {} bytes from the listener",
                        frame.kind,
                        frame.body.len()
                    ));
                }
                // No waiter: the request timed out or was dropped; its
                // late answer is discarded.
                let waiter = reading.pending.borrow_mut().remove(&frame.request_id);
                // The peer is alive: what it still owes, it owes since now.
                let still_owed = !reading.pending.borrow().is_empty();
                reading.owing_since.set(still_owed.then_some(now));
                if let Some(waiter) = waiter {
                    let _ = waiter.send(frame);
                }
            }
        });

        let writing = shared.clone();
        let writer = glommio::spawn_local(async move {
            while let Ok(encoded) = queued.recv_async().await {
                if let Err(err) = write_frame(&mut write_half, &encoded).await {
                    return writing.break_with(format!("writing: {err}"));
                }
            }
        });

        Conn {
            shared,
            outbox,
            next_request_id: Cell::new(1),
            _reader: reader,
            _writer: writer,
        }
    }

    fn is_broken(&self) -> bool {
        self.shared.broken.borrow().is_some()
    }
}

/// How long the peer has owed an answer without sending anything, if that
/// is at least `PEER_SILENCE_BREAK_MS` and no snapshot chunk is owed. A
/// member answers a snapshot's last chunk once it has installed it, and
/// answers nothing else on the link meanwhile: seconds for a million
/// instances. The rule broke the link then, failing the transfer, and the
/// leader sent the whole snapshot again (three times more in one test
/// run); a chunk's own timeout (`snapshot::chunk_timeout`) bounds the wait.
fn silent_too_long(shared: &ConnShared, now: Instant) -> Option<Duration> {
    if shared.chunks_owed.get() > 0 {
        return None;
    }
    let since = shared.owing_since.get()?;
    let silent_for = now.saturating_duration_since(since);
    (silent_for >= Duration::from_millis(PEER_SILENCE_BREAK_MS)).then_some(silent_for)
}

/// Removes a request's waiter if the request ends without its answer
/// (timed out, or its caller dropped it).
struct PendingGuard {
    shared: Rc<ConnShared>,
    request_id: u64,
    /// A snapshot chunk, counted in `ConnShared::chunks_owed`.
    chunk: bool,
}

impl PendingGuard {
    fn new(shared: Rc<ConnShared>, request_id: u64, kind: FrameKind) -> PendingGuard {
        let chunk = kind == FrameKind::SnapshotChunk;
        if chunk {
            shared.chunks_owed.set(shared.chunks_owed.get() + 1);
        }
        PendingGuard {
            shared,
            request_id,
            chunk,
        }
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.shared.pending.borrow_mut().remove(&self.request_id);
        if self.chunk {
            self.shared
                .chunks_owed
                .set(self.shared.chunks_owed.get() - 1);
        }
    }
}

/// When to dial again after a failed dial.
#[derive(Clone, Copy)]
struct Redial {
    not_before: Option<Instant>,
    backoff_ms: u64,
}

/// This executor's link to one peer node.
pub struct PeerClient {
    me: Rc<ClusterCredentials>,
    /// `None`: plain TCP.
    tls: Option<PeerTls>,
    target: u64,
    addr: RefCell<String>,
    conn: RefCell<Option<Rc<Conn>>>,
    /// One dial at a time: concurrent requests wait for its outcome.
    dialing: futures_util::lock::Mutex<()>,
    redial: Cell<Redial>,
    last_dial_error: RefCell<String>,
    in_flight: glommio::sync::Semaphore,
}

impl PeerClient {
    /// A plain-TCP link.
    pub fn new(me: Rc<ClusterCredentials>, target: u64, addr: String) -> PeerClient {
        PeerClient::with_tls(me, None, target, addr)
    }

    /// A link over TLS when `tls` is set, plain TCP when it is `None`.
    pub fn with_tls(
        me: Rc<ClusterCredentials>,
        tls: Option<PeerTls>,
        target: u64,
        addr: String,
    ) -> PeerClient {
        PeerClient {
            me,
            tls,
            target,
            addr: RefCell::new(addr),
            conn: RefCell::new(None),
            dialing: futures_util::lock::Mutex::new(()),
            redial: Cell::new(Redial {
                not_before: None,
                backoff_ms: REDIAL_BACKOFF_MIN_MS,
            }),
            last_dial_error: RefCell::new(String::new()),
            in_flight: glommio::sync::Semaphore::new(PEER_REQUESTS_IN_FLIGHT_MAX as u64),
        }
    }

    pub fn target(&self) -> u64 {
        self.target
    }

    /// Points the link at a new address; the current connection is dropped.
    pub fn set_addr(&self, addr: &str) {
        if *self.addr.borrow() != addr {
            *self.addr.borrow_mut() = addr.to_string();
            self.conn.borrow_mut().take();
            self.redial.set(Redial {
                not_before: None,
                backoff_ms: REDIAL_BACKOFF_MIN_MS,
            });
        }
    }

    /// Sends one request and waits up to `timeout` for its answer's body.
    pub async fn call(
        &self,
        kind: FrameKind,
        group_id: u64,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let deadline = Instant::now() + timeout;
        let sent = Cell::new(false);
        let conn_used = RefCell::new(None);
        let exchange = async {
            let _slot = self
                .in_flight
                .acquire_permit(1)
                .await
                .map_err(|err| CallError::NotSent(format!("link closed: {err}")))?;
            let conn = self.connection().await.map_err(|e| match e {
                CallError::Unreachable(why) => CallError::NotSent(why),
                other => other,
            })?;
            *conn_used.borrow_mut() = Some(conn.shared.clone());
            let request_id = conn.next_request_id.get();
            conn.next_request_id.set(request_id + 1);
            let (waiter, answer) = oneshot::channel();
            conn.shared.pending.borrow_mut().insert(request_id, waiter);
            let _guard = PendingGuard::new(conn.shared.clone(), request_id, kind);
            let frame = encode_frame(kind, request_id, group_id, body);
            sent.set(true);
            if conn.shared.owing_since.get().is_none() {
                conn.shared.owing_since.set(Some(Instant::now()));
            }
            conn.outbox
                .send_async(frame)
                .await
                .map_err(|_| self.lost(&conn))?;
            let answer = answer.await.map_err(|_| self.lost(&conn))?;
            match answer.kind {
                FrameKind::Answer => Ok(answer.body),
                FrameKind::Error => Err(match from_json::<ErrorBody>(&answer.body) {
                    Ok(body) => CallError::Remote(body),
                    Err(err) => CallError::Protocol(format!("undecodable error body: {err}")),
                }),
                other => Err(CallError::Protocol(format!("a {other:?} frame as answer"))),
            }
        };
        match GlommioRuntime::timeout_at(deadline, exchange).await {
            Ok(result) => result,
            Err(_elapsed) => {
                // The peer has owed an answer for PEER_SILENCE_BREAK_MS
                // and sent nothing at all: it (or the path) is presumed
                // dead, as after a partition; the next request dials
                // afresh. A request timing out alone proves nothing (a
                // slow disk on the other side).
                if let (true, Some(shared)) = (sent.get(), conn_used.take()) {
                    if let Some(silent_for) = silent_too_long(&shared, Instant::now()) {
                        shared.break_with(format!(
                            "no frame from node {} for {} ms while answers were owed",
                            self.target,
                            silent_for.as_millis()
                        ));
                    }
                }
                Err(CallError::Timeout)
            }
        }
    }

    fn lost(&self, conn: &Conn) -> CallError {
        let why = conn
            .shared
            .broken
            .borrow()
            .clone()
            .unwrap_or_else(|| "connection closed".to_string());
        CallError::Unreachable(format!("connection to node {} lost: {why}", self.target))
    }

    fn live_connection(&self) -> Option<Rc<Conn>> {
        self.conn
            .borrow()
            .as_ref()
            .filter(|conn| !conn.is_broken())
            .cloned()
    }

    /// Whether a request could leave now: there is a live connection, or
    /// one was dialled now (after a failed dial, not before its backoff).
    pub async fn reachable(&self) -> Result<(), CallError> {
        self.connection().await.map(|_| ())
    }

    /// The live connection, dialling one if there is none.
    async fn connection(&self) -> Result<Rc<Conn>, CallError> {
        if let Some(conn) = self.live_connection() {
            return Ok(conn);
        }
        let _dialing = self.dialing.lock().await;
        if let Some(conn) = self.live_connection() {
            return Ok(conn);
        }
        // A broken connection is dropped here, which cancels its tasks.
        self.conn.borrow_mut().take();
        let redial = self.redial.get();
        if let Some(not_before) = redial.not_before {
            let now = Instant::now();
            if now < not_before {
                return Err(CallError::Unreachable(format!(
                    "node {}: dialling again in {} ms (last failure: {})",
                    self.target,
                    (not_before - now).as_millis(),
                    self.last_dial_error.borrow()
                )));
            }
        }
        match self.dial().await {
            Ok(conn) => {
                let conn = Rc::new(conn);
                *self.conn.borrow_mut() = Some(conn.clone());
                self.redial.set(Redial {
                    not_before: None,
                    backoff_ms: REDIAL_BACKOFF_MIN_MS,
                });
                Ok(conn)
            }
            Err(why) => {
                self.redial.set(Redial {
                    not_before: Some(Instant::now() + Duration::from_millis(redial.backoff_ms)),
                    backoff_ms: (redial.backoff_ms * 2).min(REDIAL_BACKOFF_MAX_MS),
                });
                *self.last_dial_error.borrow_mut() = why.clone();
                Err(CallError::Unreachable(why))
            }
        }
    }

    async fn dial(&self) -> Result<Conn, String> {
        let addr = self.addr.borrow().clone();
        let stream = glommio::net::TcpStream::connect_timeout(
            addr.as_str(),
            Duration::from_millis(DIAL_TIMEOUT_MS),
        )
        .await
        .map_err(|err| format!("node {} at {addr}: connect: {err}", self.target))?;
        // Raft messages are small and latency-bound.
        stream
            .set_nodelay(true)
            .map_err(|err| format!("node {} at {addr}: nodelay: {err}", self.target))?;
        match &self.tls {
            None => self.introduce(&addr, stream).await,
            Some(tls) => {
                let stream = tls
                    .connect(&addr, stream)
                    .await
                    .map_err(|err| format!("node {} at {addr}: {err}", self.target))?;
                self.introduce(&addr, stream).await
            }
        }
    }

    /// The cluster handshake on a fresh stream, then the connection's tasks.
    async fn introduce<S: AsyncRead + AsyncWrite + Unpin + 'static>(
        &self,
        addr: &str,
        mut stream: S,
    ) -> Result<Conn, String> {
        let peer = handshake::dial(&mut stream, &self.me)
            .await
            .map_err(|err| format!("node {} at {addr}: {err}", self.target))?;
        if peer != self.target {
            return Err(format!(
                "{addr} answers as node {peer}, not node {}",
                self.target
            ));
        }
        Ok(Conn::start(stream))
    }
}
