//! One client connection: a reader task that decodes frames, parses and
//! dispatches requests, and a writer task that writes answers strictly in
//! request order (spec §3.8), whatever order the shards answer in.
//!
//! Every request takes a sequence number and a slot in `Slots`; answers
//! (from shards, fan-out tasks, or the reader itself for session ops) arrive
//! on one channel tagged with that number. The writer fills slots and writes
//! the ready prefix, coalescing everything ready into one socket write.
//! At most `max_inflight_requests_per_connection` requests are unanswered at
//! once: beyond that the reader stops reading the socket, so a client that
//! pipelines without reading cannot make the server buffer without bound.
//!
//! The connection ends when the reader stops (EOF, BYE, a framing
//! violation) and every answer owed has been written: the writer sees the
//! reply channel close once the reader and every in-flight request have
//! dropped their senders.
//!
//! Watch events are written by the same writer, between whole responses:
//! when the merger releases events it wakes the writer, which advances each
//! subscription's cursor through the in-memory ring — or through the logs
//! when the cursor is older than the ring — at the pace the socket takes.
//!
//! Shutdown: when the server asks the connection to stop (its `ConnHandle`),
//! the reader stops reading the socket once every request already received
//! is dispatched; the writer then writes every answer still owed and the
//! connection closes. Every socket write is followed by a flush, which a TLS
//! stream needs to push out what it buffered.
//!
//! Metrics: each answer, when encoded, adds its operation, latency and
//! error code to the acceptor's plain counters (`Metrics`).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use futures_lite::future::{self, poll_fn};
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::sync::Semaphore;
use shards::shard::{Reply, ReplyTo};
use shards::{EngineError, EngineResult};

use super::context::{ConnHandle, ServerCtx};
use super::dispatch::{dispatch, Flow};
use super::session::Session;
use crate::metrics::WatchKind;
use crate::protocol::frame::{FrameDecoder, OutputMode};
use crate::protocol::op::Op;
use crate::protocol::request::parse_request;
use crate::protocol::response::write_response;
use crate::watch::catchup::read_merged;
use crate::watch::subscription::{write_event, ConnWatch, Filter};

/// Initial (and resting) size of a connection's read buffer.
pub const READ_BUFFER_INITIAL_BYTES: usize = 64 * 1024;
/// Least free space offered to one socket read.
pub const READ_CHUNK_MIN_BYTES: usize = 16 * 1024;
/// Pending output at which the writer flushes even if more answers are ready.
pub const WRITE_BUFFER_FLUSH_BYTES: usize = 256 * 1024;
/// Events one subscription takes from the ring per writer round.
pub const WATCH_EVENTS_PER_ROUND_MAX: usize = 4096;

struct Slot {
    id_json: Vec<u8>,
    mode: OutputMode,
    body: Option<EngineResult<Vec<u8>>>,
    /// `None` when the envelope could not be read.
    op: Option<Op>,
    /// When the request was read, for the latency histogram.
    started: Instant,
}

#[derive(Default)]
struct Slots {
    /// Sequence number of `queue[0]`.
    base_seq: u64,
    queue: VecDeque<Slot>,
    /// Set by the writer when the socket can no longer be written.
    broken: bool,
}

/// The connection's byte stream (plain TCP, or TLS over it), shared by the
/// reader and writer tasks. They run on one thread and borrow it only inside
/// a single poll, so the borrows never overlap; glommio keeps separate read
/// and write readiness, so a pending read does not block a write.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + 'static> ByteStream for T {}

type Stream<S> = Rc<RefCell<S>>;

/// Write all of `buf`, then flush (a TLS stream may hold back what it
/// accepted until flushed).
async fn write_all<S: ByteStream>(stream: &Stream<S>, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_write(cx, buf)).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_flush(cx)).await
}

/// Serve one connection until it ends. `conn` is its registration handle
/// (peer address, stop request).
pub async fn serve<S: ByteStream>(ctx: Rc<ServerCtx>, stream: S, conn: Rc<ConnHandle>) {
    let stream: Stream<S> = Rc::new(RefCell::new(stream));
    if conn.stopping() {
        // Shutdown began while this connection was being accepted.
        let _ = poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_close(cx)).await;
        return;
    }
    let slots = Rc::new(RefCell::new(Slots::default()));
    let watch = Rc::new(RefCell::new(ConnWatch::new(OutputMode::Rcpx)));
    conn.set_watch(watch.clone());
    let inflight = Rc::new(Semaphore::new(
        ctx.limits.max_inflight_requests_per_connection as u64,
    ));
    let (reply_tx, reply_rx) = flume::unbounded::<Reply>();
    let writer = glommio::spawn_local(write_loop(
        ctx.clone(),
        stream.clone(),
        reply_rx,
        slots.clone(),
        inflight.clone(),
        watch.clone(),
    ));
    read_loop(&ctx, &conn, &stream, reply_tx, &slots, &inflight, &watch).await;
    writer.await;
    let _ = poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_close(cx)).await;
}

#[allow(clippy::too_many_arguments)]
async fn read_loop<S: ByteStream>(
    ctx: &Rc<ServerCtx>,
    conn: &ConnHandle,
    stream: &Stream<S>,
    reply_tx: flume::Sender<Reply>,
    slots: &Rc<RefCell<Slots>>,
    inflight: &Rc<Semaphore>,
    watch: &Rc<RefCell<ConnWatch>>,
) {
    let mut session = Session::default();
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; READ_BUFFER_INITIAL_BYTES];
    let (mut start, mut filled) = (0usize, 0usize);
    let mut next_seq = 0u64;
    loop {
        // Handle every complete message already buffered.
        loop {
            let decoded = match decoder.decode(&buf[start..filled]) {
                Ok(Some(d)) => d,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!("closing connection: {e}");
                    return;
                }
            };
            let (from, to) = (start + decoded.payload.start, start + decoded.payload.end);
            start += decoded.consumed;
            if inflight.acquire(1).await.is_err() || slots.borrow().broken {
                return;
            }
            let seq = next_seq;
            next_seq += 1;
            let mode = output_mode(&session, &decoder);
            let reply = ReplyTo {
                tx: reply_tx.clone(),
                seq,
            };
            let flow = match parse_request(&mut buf[from..to]) {
                Err(bad) => {
                    push_slot(slots, seq, bad.id_json, mode, None);
                    let _ = reply.tx.send(Reply {
                        seq,
                        body: Err(bad.error),
                    });
                    Flow::Continue
                }
                Ok(req) => {
                    let op = req.op;
                    push_slot(slots, seq, req.id_json.clone(), mode, Some(op));
                    let flow = dispatch(ctx, &mut session, watch, req, reply, conn.peer).await;
                    if op == Op::Hello {
                        // HELLO answers in the mode it negotiated (spec §3.2);
                        // it never awaits, so its answer is not written yet.
                        decoder.set_jsonl_input(session.jsonl);
                        set_slot_mode(slots, seq, output_mode(&session, &decoder));
                    }
                    watch.borrow().mode.set(output_mode(&session, &decoder));
                    flow
                }
            };
            if flow == Flow::Close {
                return;
            }
        }
        // Make room: drop consumed bytes, grow for a large frame, shrink back after.
        if start > 0 {
            buf.copy_within(start..filled, 0);
            filled -= start;
            start = 0;
        }
        let needed = decoder.bytes_needed_hint(&buf[..filled]);
        let want = needed.max(filled + READ_CHUNK_MIN_BYTES);
        if want > buf.len() {
            buf.resize(want.next_power_of_two(), 0);
        } else if buf.len() > READ_BUFFER_INITIAL_BYTES && want <= READ_BUFFER_INITIAL_BYTES {
            buf.truncate(READ_BUFFER_INITIAL_BYTES);
            buf.shrink_to_fit();
        }
        match read_with_idle_timeout(ctx, conn, stream, &mut buf[filled..], slots, watch).await {
            Some(n) => filled += n,
            None => return,
        }
    }
}

enum ReadOutcome {
    Data(std::io::Result<usize>),
    /// The server is shutting down.
    Stop,
    /// The idle period passed without input.
    Idle,
}

/// One socket read; `None` on EOF, error, shutdown, or an idle timeout
/// (spec §3.7: nothing received for the idle period while nothing is in
/// flight). A connection that holds subscriptions is never idle: it is
/// watching.
async fn read_with_idle_timeout<S: ByteStream>(
    ctx: &ServerCtx,
    conn: &ConnHandle,
    stream: &Stream<S>,
    buf: &mut [u8],
    slots: &Rc<RefCell<Slots>>,
    watch: &Rc<RefCell<ConnWatch>>,
) -> Option<usize> {
    loop {
        // The stop request is checked in the same poll as the socket, so a
        // waiting reader costs no extra task or allocation.
        let read = poll_fn(|cx| {
            if conn.poll_stop(cx).is_ready() {
                return Poll::Ready(ReadOutcome::Stop);
            }
            Pin::new(&mut *stream.borrow_mut())
                .poll_read(cx, buf)
                .map(ReadOutcome::Data)
        });
        let result = match ctx.limits.idle_timeout {
            None => read.await,
            Some(idle) => {
                future::or(read, async {
                    glommio::timer::sleep(idle).await;
                    ReadOutcome::Idle
                })
                .await
            }
        };
        match result {
            ReadOutcome::Data(Ok(0)) | ReadOutcome::Data(Err(_)) => return None,
            ReadOutcome::Data(Ok(n)) => return Some(n),
            ReadOutcome::Stop => {
                tracing::debug!("shutdown: connection stops reading");
                return None;
            }
            ReadOutcome::Idle
                if slots.borrow().queue.is_empty() && watch.borrow().subs.is_empty() =>
            {
                tracing::debug!("closing idle connection");
                return None;
            }
            ReadOutcome::Idle => continue,
        }
    }
}

fn output_mode(session: &Session, decoder: &FrameDecoder) -> OutputMode {
    if session.jsonl {
        OutputMode::Jsonl
    } else {
        decoder.output_mode_for_binary()
    }
}

fn push_slot(
    slots: &Rc<RefCell<Slots>>,
    seq: u64,
    id_json: Vec<u8>,
    mode: OutputMode,
    op: Option<Op>,
) {
    let mut s = slots.borrow_mut();
    debug_assert_eq!(s.base_seq + s.queue.len() as u64, seq);
    s.queue.push_back(Slot {
        id_json,
        mode,
        body: None,
        op,
        started: Instant::now(),
    });
}

fn set_slot_mode(slots: &Rc<RefCell<Slots>>, seq: u64, mode: OutputMode) {
    let mut s = slots.borrow_mut();
    let index = (seq - s.base_seq) as usize;
    if let Some(slot) = s.queue.get_mut(index) {
        slot.mode = mode;
    }
}

enum Wake {
    Reply(Reply),
    Events,
    Closed,
}

async fn write_loop<S: ByteStream>(
    ctx: Rc<ServerCtx>,
    stream: Stream<S>,
    replies: flume::Receiver<Reply>,
    slots: Rc<RefCell<Slots>>,
    inflight: Rc<Semaphore>,
    watch: Rc<RefCell<ConnWatch>>,
) {
    let mut out: Vec<u8> = Vec::with_capacity(READ_BUFFER_INITIAL_BYTES);
    let wake_rx = watch.borrow().wake_rx.clone();
    loop {
        let wake = future::or(
            async {
                match replies.recv_async().await {
                    Ok(r) => Wake::Reply(r),
                    Err(_) => Wake::Closed,
                }
            },
            async {
                let _ = wake_rx.recv_async().await;
                Wake::Events
            },
        )
        .await;
        let mut next = match wake {
            Wake::Closed => return,
            Wake::Reply(r) => Some(r),
            Wake::Events => None,
        };
        loop {
            if let Some(reply) = next.take() {
                fill(&slots, reply);
            }
            let written = encode_ready(&ctx, &slots, &mut out);
            inflight.signal(written);
            if out.len() >= WRITE_BUFFER_FLUSH_BYTES {
                break;
            }
            match replies.try_recv() {
                Ok(reply) => next = Some(reply),
                Err(_) => break,
            }
        }
        if !watch.borrow().subs.is_empty() {
            match deliver_events(&ctx, &watch, &mut out).await {
                Ok(true) => {
                    // More to send: come back after this write.
                    let _ = watch.borrow().waker.try_send(());
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!("closing a watching connection: {e}");
                    slots.borrow_mut().broken = true;
                    inflight.close();
                    return;
                }
            }
        }
        if !out.is_empty() {
            if write_all(&stream, &out).await.is_err() {
                slots.borrow_mut().broken = true;
                inflight.close();
                return;
            }
            out.clear();
            if out.capacity() > 4 * WRITE_BUFFER_FLUSH_BYTES {
                out.shrink_to(READ_BUFFER_INITIAL_BYTES);
            }
        }
    }
}

/// Events released to each subscription since its cursor, appended to `out`
/// until it holds `WRITE_BUFFER_FLUSH_BYTES`. Returns whether more are due.
async fn deliver_events(
    ctx: &ServerCtx,
    watch: &Rc<RefCell<ConnWatch>>,
    out: &mut Vec<u8>,
) -> Result<bool, String> {
    let mode = watch.borrow().mode.get();
    let ids: Vec<String> = watch.borrow().subs.iter().map(|s| s.id.clone()).collect();
    let mut more = false;
    for id in ids {
        if out.len() >= WRITE_BUFFER_FLUSH_BYTES {
            return Ok(true);
        }
        let Some(cursor) = watch
            .borrow()
            .subs
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.cursor)
        else {
            continue;
        };
        let (ring_floor, released_upto) = {
            let m = ctx.merger.borrow();
            (m.ring_floor(), m.released_upto())
        };
        let (events, next_cursor, caught_up) = if cursor < ring_floor {
            let got = read_merged(&ctx.router, cursor)
                .await
                .map_err(|e| e.message)?;
            // Go round again: to read on from the logs, or — caught up — to
            // take what the ring already holds. Without progress (a batch
            // still undecided), the next release wakes us instead.
            let progressed = got.next_cursor > cursor;
            (got.events, got.next_cursor, !progressed)
        } else {
            let m = ctx.merger.borrow();
            let events = m
                .events_from(cursor, WATCH_EVENTS_PER_ROUND_MAX)
                .unwrap_or_default();
            if events.len() == WATCH_EVENTS_PER_ROUND_MAX {
                let next = events.last().map_or(cursor, |e| e.offset + 1);
                (events, next, false)
            } else {
                (events, cursor.max(released_upto), true)
            }
        };
        let mut w = watch.borrow_mut();
        let Some(sub) = w.subs.iter_mut().find(|s| s.id == id) else {
            continue;
        };
        let mut forwarded = 0u64;
        for e in events.iter().filter(|e| e.offset >= sub.cursor) {
            if sub.filter.matches(e) {
                write_event(out, mode, sub, e)
                    .map_err(|_| format!("event at offset {} exceeds the frame limit", e.offset))?;
                forwarded += 1;
            }
        }
        if forwarded > 0 {
            let kind = match sub.filter {
                Filter::Instance(_) => WatchKind::Instance,
                Filter::All { .. } => WatchKind::All,
            };
            ctx.metrics.events_forwarded(kind, forwarded);
        }
        sub.cursor = sub.cursor.max(next_cursor);
        more |= !caught_up;
    }
    Ok(more)
}

fn fill(slots: &Rc<RefCell<Slots>>, reply: Reply) {
    let mut s = slots.borrow_mut();
    let Some(index) = reply.seq.checked_sub(s.base_seq) else {
        return;
    };
    if let Some(slot) = s.queue.get_mut(index as usize) {
        slot.body = Some(reply.body);
    }
}

/// Encode the answered prefix of the queue; returns how many were encoded.
fn encode_ready(ctx: &ServerCtx, slots: &Rc<RefCell<Slots>>, out: &mut Vec<u8>) -> u64 {
    let mut s = slots.borrow_mut();
    let mut n = 0;
    while s.queue.front().is_some_and(|slot| slot.body.is_some()) {
        let Some(slot) = s.queue.pop_front() else {
            break;
        };
        s.base_seq += 1;
        n += 1;
        let Some(body) = slot.body else { continue };
        let error = body.as_ref().err().map(|e| e.code);
        ctx.metrics
            .request_answered(slot.op, slot.started.elapsed(), error);
        if write_response(out, slot.mode, &slot.id_json, &body).is_err() {
            // The answer cannot be framed (over 16 MiB): say so instead.
            let too_large: EngineResult<Vec<u8>> = Err(EngineError::internal(
                "response exceeds the maximum frame size",
            ));
            let _ = write_response(out, slot.mode, &slot.id_json, &too_large);
        }
    }
    n
}
