//! One client connection: a reader task that decodes frames, parses and
//! dispatches requests (`reader.rs`), and a writer task that writes answers
//! strictly in request order (docs/PROTOCOL.md §3.8), whatever order the shards answer
//! in, between them the watch events of the connection's subscriptions
//! (`writer.rs`).
//!
//! Every request takes a sequence number and a slot in `Slots`; answers
//! (from shards, fan-out tasks, or the reader itself for session ops) arrive
//! on one channel tagged with that number. The writer fills slots and writes
//! the ready prefix, coalescing everything ready into one socket write.
//!
//! # Bounds
//!
//! A client that pipelines without reading, or sends huge requests, must
//! not make the server hold memory without bound:
//!
//! * **Requests in flight**: at most `max_inflight_requests_per_connection`
//!   requests and `request_buffer_per_connection_bytes` bytes of them are
//!   read and not yet answered; beyond, the reader stops reading the socket.
//! * **Answers**: each connection has an answer budget
//!   (`answer_buffer_per_connection_bytes`, inside a server-wide
//!   `answer_buffer_total_bytes`) that the *producers* of answers — shards,
//!   fan-outs — charge as they produce them, so a GET of a 4 MiB instance
//!   pipelined a thousand times takes the budget, not a gigabyte; requests
//!   of a client whose budget is spent wait on their shard, and the reader
//!   stops reading until the writer has written answers out
//!   (`shards::shard::budget`).
//! * **Before authentication** (when it is required) a message may be at
//!   most `UNAUTHENTICATED_MESSAGE_BYTES_MAX`; a larger one closes the
//!   connection. The read buffer grows only with bytes that arrived, never
//!   to the size a header announces.
//!
//! The connection ends when the reader stops (EOF, BYE, a framing
//! violation) and every answer owed has been written: the writer sees the
//! reply channel close once the reader and every in-flight request have
//! dropped their senders.
//!
//! Shutdown: when the server asks the connection to stop (its `ConnHandle`),
//! the reader stops reading the socket once every request already received
//! is dispatched; the writer then writes every answer still owed and the
//! connection closes. Just before the close it writes one notice frame,
//! `{"type":"notice","notice":"shutting_down",...}`, so a client can tell a
//! server going away from a network failure and reconnect (to another node,
//! in a cluster). The standard clients skip frames of a type they do not
//! know: the Rust client (`rstmdb-client` 0.3.0) logs a warning, the Python
//! client (`rstmdb` 0.2.1) ignores it silently (tests/ops/shutdown.rs and
//! tests/python/test_operations.py hold both to that). Every socket write
//! is followed by a flush, which a TLS stream needs to push out what it
//! buffered.
//!
//! A plain-TCP connection with one request in flight lends its socket to
//! whoever produces that answer (`lease.rs`): the owning shard writes it
//! itself and this core is not woken for it.
//!
//! Metrics: each answer, when encoded, adds its operation, latency and
//! error code to the acceptor's plain counters (`Metrics`); one written
//! whole through a lease is counted by its writer, in the same core's
//! atomic side counters (`metrics::leased`).

mod lease;
mod reader;
mod writer;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use futures_lite::future::poll_fn;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::sync::Semaphore;
use shards::shard::budget::{Charge, ResponseBudget};
use shards::shard::Reply;
use shards::EngineResult;

use super::context::{ConnHandle, ServerCtx};
use crate::protocol::frame::{encode_frame, OutputMode};
use crate::protocol::op::Op;
use crate::watch::subscription::ConnWatch;

/// Initial (and resting) size of a connection's read buffer.
pub const READ_BUFFER_INITIAL_BYTES: usize = 64 * 1024;
/// Least free space offered to one socket read.
pub const READ_CHUNK_MIN_BYTES: usize = 16 * 1024;
/// Pending output at which the writer flushes even if more answers are ready.
pub const WRITE_BUFFER_FLUSH_BYTES: usize = 256 * 1024;
/// Events one subscription takes from the ring per writer round.
pub const WATCH_EVENTS_PER_ROUND_MAX: usize = 4096;
/// Largest message a connection may send before it authenticated, when
/// authentication is required (HELLO and AUTH are far smaller).
pub const UNAUTHENTICATED_MESSAGE_BYTES_MAX: usize = 64 * 1024;
/// The last frame a connection gets when the server shuts down.
pub const SHUTDOWN_NOTICE_JSON: &[u8] = br#"{"type":"notice","notice":"shutting_down","message":"the server is shutting down: every request it read was answered; reconnect and retry elsewhere or later"}"#;

struct Slot {
    id_json: Vec<u8>,
    mode: OutputMode,
    body: Option<EngineResult<Vec<u8>>>,
    /// What the answer holds of the connection's budget, until written.
    charge: Option<Charge>,
    /// `None` when the envelope could not be read.
    op: Option<Op>,
    /// When the request was read, for the latency histogram.
    started: Instant,
    /// Request bytes held for it (given back when it is answered).
    request_bytes: u64,
    /// Bytes of its frame already written through a lease.
    sent_bytes: usize,
}

#[derive(Default)]
struct Slots {
    /// Sequence number of `queue[0]`.
    base_seq: u64,
    queue: VecDeque<Slot>,
    /// Set by the writer when the socket can no longer be written.
    broken: bool,
}

/// What the reader and the writer of one connection share.
struct Conn {
    ctx: Rc<ServerCtx>,
    slots: RefCell<Slots>,
    watch: Rc<RefCell<ConnWatch>>,
    /// Requests read and not yet answered (count).
    inflight: Semaphore,
    /// Bytes of requests read and not yet answered.
    request_bytes: Semaphore,
    budget: Arc<ResponseBudget>,
    /// The writer wrote something: a reader waiting for budget looks again.
    progress: (flume::Sender<()>, flume::Receiver<()>),
    /// The socket, when answers may be written through leases (plain TCP:
    /// a TLS stream's state lives on this core).
    lendable: Option<lease::Lendable>,
    /// The lease out, with its request's sequence number (`lease.rs`).
    lease: RefCell<Option<(u64, Arc<lease::Lease>)>>,
    /// The writer holds bytes it has not written yet: no lease meanwhile.
    writing: Cell<bool>,
}

impl Conn {
    /// The writer has stopped for good: readers waiting on it give up.
    fn close_gates(&self) {
        self.slots.borrow_mut().broken = true;
        self.inflight.close();
        self.request_bytes.close();
        // A reader waiting for answer budget (`reader::admit`) waits for
        // the writer's progress, which will not come from a writer that
        // stopped: wake it to see the connection broken. Without this a
        // client that left with answers unread kept them, and their share
        // of the server's budget, charged for good.
        let _ = self.progress.0.try_send(());
    }
}

/// The connection's byte stream (plain TCP, or TLS over it), shared by the
/// reader and writer tasks. They run on one thread and borrow it only inside
/// a single poll, so the borrows never overlap; glommio keeps separate read
/// and write readiness, so a pending read does not block a write.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + 'static> ByteStream for T {}

type Stream<S> = Rc<RefCell<S>>;

/// Serve one connection until it ends. `handle` is its registration
/// (peer address, stop request); `lend_fd` the socket's descriptor when
/// answers may be written through leases (plain TCP).
pub async fn serve<S: ByteStream>(
    ctx: Rc<ServerCtx>,
    stream: S,
    handle: Rc<ConnHandle>,
    lend_fd: Option<RawFd>,
) {
    let stream: Stream<S> = Rc::new(RefCell::new(stream));
    if handle.stopping() {
        // Shutdown began while this connection was being accepted.
        let _ = poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_close(cx)).await;
        return;
    }
    let watch = Rc::new(RefCell::new(ConnWatch::new(OutputMode::Rcpx)));
    handle.set_watch(watch.clone());
    let limits = &ctx.limits;
    let conn = Rc::new(Conn {
        slots: RefCell::new(Slots::default()),
        watch,
        inflight: Semaphore::new(limits.max_inflight_requests_per_connection as u64),
        request_bytes: Semaphore::new(limits.request_buffer_per_connection_bytes as u64),
        budget: ResponseBudget::new(
            limits.answer_buffer_per_connection_bytes,
            ctx.answer_budget.clone(),
        ),
        progress: flume::bounded(1),
        ctx: ctx.clone(),
        lendable: lend_fd.map(lease::Lendable::new),
        lease: RefCell::new(None),
        writing: Cell::new(false),
    });
    let (reply_tx, reply_rx) = flume::unbounded::<Reply>();
    let writer = glommio::spawn_local(writer::write_loop(
        conn.clone(),
        handle.clone(),
        stream.clone(),
        reply_rx,
    ));
    reader::read_loop(&conn, &handle, &stream, reply_tx).await;
    writer.await;
    if handle.stopping() && !conn.slots.borrow().broken {
        // Every answer owed is written: say why the connection ends. A peer
        // that does not read holds this write only until the drain timeout
        // or the idle period, whichever ends first.
        let mut notice = Vec::new();
        let mode = conn.watch.borrow().mode.get();
        if encode_frame(&mut notice, mode, SHUTDOWN_NOTICE_JSON).is_ok() {
            let _ = writer::write_all(&stream, &notice, ctx.limits.idle_timeout).await;
        }
    }
    // Nobody will write this connection's answers any more: its requests
    // still waiting on shards are dropped, so they stop holding the answers
    // queued for it and the server's budget (`shards::shard::budget`).
    conn.budget.close();
    writer::returned_budget(&conn);
    let _ = poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_close(cx)).await;
}
