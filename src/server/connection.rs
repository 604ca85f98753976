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

use std::cell::RefCell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::rc::Rc;

use futures_lite::future::{self, poll_fn};
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::sync::Semaphore;
use shards::shard::{Reply, ReplyTo};
use shards::{EngineError, EngineResult};

use super::context::ServerCtx;
use super::dispatch::{dispatch, Flow};
use super::session::Session;
use crate::protocol::frame::{FrameDecoder, OutputMode};
use crate::protocol::op::Op;
use crate::protocol::request::parse_request;
use crate::protocol::response::write_response;
use crate::watch::catchup::read_merged;
use crate::watch::subscription::{write_event, ConnWatch};

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

async fn read_some<S: ByteStream>(stream: &Stream<S>, buf: &mut [u8]) -> std::io::Result<usize> {
    poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_read(cx, buf)).await
}

async fn write_all<S: ByteStream>(stream: &Stream<S>, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_write(cx, buf)).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    Ok(())
}

pub async fn serve<S: ByteStream>(ctx: Rc<ServerCtx>, stream: S) {
    let stream: Stream<S> = Rc::new(RefCell::new(stream));
    let slots = Rc::new(RefCell::new(Slots::default()));
    let watch = Rc::new(RefCell::new(ConnWatch::new(OutputMode::Rcpx)));
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
    read_loop(&ctx, &stream, reply_tx, &slots, &inflight, &watch).await;
    writer.await;
    let _ = poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_close(cx)).await;
}

async fn read_loop<S: ByteStream>(
    ctx: &Rc<ServerCtx>,
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
                    push_slot(slots, seq, bad.id_json, mode);
                    let _ = reply.tx.send(Reply {
                        seq,
                        body: Err(bad.error),
                    });
                    Flow::Continue
                }
                Ok(req) => {
                    let op = req.op;
                    push_slot(slots, seq, req.id_json.clone(), mode);
                    let flow = dispatch(ctx, &mut session, watch, req, reply).await;
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
        match read_with_idle_timeout(ctx, stream, &mut buf[filled..], slots, watch).await {
            Some(n) => filled += n,
            None => return,
        }
    }
}

/// One socket read; `None` on EOF, error, or an idle timeout (spec §3.7:
/// nothing received for the idle period while nothing is in flight). A
/// connection that holds subscriptions is never idle: it is watching.
async fn read_with_idle_timeout<S: ByteStream>(
    ctx: &ServerCtx,
    stream: &Stream<S>,
    buf: &mut [u8],
    slots: &Rc<RefCell<Slots>>,
    watch: &Rc<RefCell<ConnWatch>>,
) -> Option<usize> {
    loop {
        let read = async { Some(read_some(stream, buf).await) };
        let result = match ctx.limits.idle_timeout {
            None => read.await,
            Some(idle) => {
                future::or(read, async {
                    glommio::timer::sleep(idle).await;
                    None
                })
                .await
            }
        };
        match result {
            Some(Ok(0)) | Some(Err(_)) => return None,
            Some(Ok(n)) => return Some(n),
            None if slots.borrow().queue.is_empty() && watch.borrow().subs.is_empty() => {
                tracing::debug!("closing idle connection");
                return None;
            }
            None => continue,
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

fn push_slot(slots: &Rc<RefCell<Slots>>, seq: u64, id_json: Vec<u8>, mode: OutputMode) {
    let mut s = slots.borrow_mut();
    debug_assert_eq!(s.base_seq + s.queue.len() as u64, seq);
    s.queue.push_back(Slot {
        id_json,
        mode,
        body: None,
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
            let written = encode_ready(&slots, &mut out);
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
            let caught_up = got.next_cursor >= ctx.merger.borrow().ring_floor();
            (got.events, got.next_cursor, caught_up)
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
        for e in events.iter().filter(|e| e.offset >= sub.cursor) {
            if sub.filter.matches(e) {
                write_event(out, mode, sub, e)
                    .map_err(|_| format!("event at offset {} exceeds the frame limit", e.offset))?;
            }
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
fn encode_ready(slots: &Rc<RefCell<Slots>>, out: &mut Vec<u8>) -> u64 {
    let mut s = slots.borrow_mut();
    let mut n = 0;
    while s.queue.front().is_some_and(|slot| slot.body.is_some()) {
        let Some(slot) = s.queue.pop_front() else {
            break;
        };
        s.base_seq += 1;
        n += 1;
        let Some(body) = slot.body else { continue };
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
