//! The reading half of a connection: frames in, requests dispatched, with
//! the connection's bounds applied before each request (see `mod.rs`).

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use futures_lite::future::{self, poll_fn};
use shards::shard::{AnswerLease, ReplyTo};

use super::lease::{self, Lease};
use super::{
    ByteStream, Conn, Slot, Slots, Stream, READ_BUFFER_INITIAL_BYTES, READ_CHUNK_MIN_BYTES,
    UNAUTHENTICATED_MESSAGE_BYTES_MAX,
};
use crate::protocol::frame::{FrameDecoder, OutputMode};
use crate::protocol::op::Op;
use crate::protocol::request::parse_request;
use crate::server::context::ConnHandle;
use crate::server::dispatch::{dispatch, Flow};
use crate::server::session::Session;
use crate::watch::subscription::ConnWatch;

pub(super) async fn read_loop<S: ByteStream>(
    conn: &Rc<Conn>,
    handle: &ConnHandle,
    stream: &Stream<S>,
    reply_tx: flume::Sender<shards::shard::Reply>,
) {
    read_requests(conn, handle, stream, reply_tx).await;
    // The last answer may have gone out through a lease: retire it, or take
    // the lease back so the writer writes it.
    settle_lease(conn);
}

async fn read_requests<S: ByteStream>(
    conn: &Rc<Conn>,
    handle: &ConnHandle,
    stream: &Stream<S>,
    reply_tx: flume::Sender<shards::shard::Reply>,
) {
    let ctx = &conn.ctx;
    let mut session = Session::default();
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; READ_BUFFER_INITIAL_BYTES];
    let (mut start, mut filled) = (0usize, 0usize);
    let mut next_seq = 0u64;
    loop {
        // When the buffered messages arrived, for their latency: one clock
        // read per read from the socket, not per request (at 500k
        // requests/s the clock reads were a visible share of the CPU,
        // bench-results/2026-12-05/get-16x16-profile.md).
        let arrived = Instant::now();
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
            let request_bytes = (to - from).min(ctx.limits.request_buffer_per_connection_bytes);
            // A request behind a lent answer: settle the lease first (its
            // slot may hold the in-flight permit this one waits for, and
            // answers keep request order).
            settle_lease(conn);
            if !admit(conn, next_seq, request_bytes as u64).await {
                return;
            }
            let seq = next_seq;
            next_seq += 1;
            let mode = output_mode(&session, &decoder);
            let mut reply = ReplyTo {
                tx: reply_tx.clone(),
                seq,
                budget: Some(conn.budget.clone()),
                lease: None,
            };
            let slot = |id_json, op| Slot {
                id_json,
                mode,
                body: None,
                charge: None,
                op,
                started: arrived,
                request_bytes: request_bytes as u64,
                sent_bytes: 0,
            };
            let flow = match parse_request(&mut buf[from..to]) {
                Err(bad) => {
                    push_slot(&conn.slots, seq, slot(bad.id_json, None));
                    reply.send(Err(bad.error));
                    Flow::Continue
                }
                Ok(req) => {
                    let op = req.op;
                    reply.lease = lend(conn, seq, op, &req.id_json, mode, arrived);
                    push_slot(&conn.slots, seq, slot(req.id_json.clone(), Some(op)));
                    let flow =
                        dispatch(ctx, &mut session, &conn.watch, req, reply, handle.peer).await;
                    if op == Op::Hello {
                        // HELLO answers in the mode it negotiated (docs/PROTOCOL.md §3.2);
                        // it never awaits, so its answer is not written yet.
                        decoder.set_jsonl_input(session.jsonl);
                        set_slot_mode(&conn.slots, seq, output_mode(&session, &decoder));
                    }
                    conn.watch
                        .borrow()
                        .mode
                        .set(output_mode(&session, &decoder));
                    flow
                }
            };
            if flow == Flow::Close {
                return;
            }
        }
        // Make room: drop consumed bytes, grow for a large message as its
        // bytes arrive, shrink back after.
        if start > 0 {
            buf.copy_within(start..filled, 0);
            filled -= start;
            start = 0;
        }
        let needed = decoder.bytes_needed_hint(&buf[..filled]);
        if ctx.tokens.required()
            && !session.authenticated
            && needed.max(filled) > UNAUTHENTICATED_MESSAGE_BYTES_MAX
        {
            tracing::debug!(
                "closing connection: a {needed}-byte message before authentication \
                 (at most {UNAUTHENTICATED_MESSAGE_BYTES_MAX} bytes)"
            );
            return;
        }
        let want = filled + read_room(filled, needed);
        if want > buf.len() {
            buf.resize(want, 0);
        } else if buf.len() > READ_BUFFER_INITIAL_BYTES && want <= READ_BUFFER_INITIAL_BYTES {
            buf.truncate(READ_BUFFER_INITIAL_BYTES);
            buf.shrink_to_fit();
        }
        let read = read_with_idle_timeout(conn, handle, stream, &mut buf[filled..]).await;
        // Woken: an answer written through the lease meanwhile is retired
        // now, whatever the read brought.
        settle_lease(conn);
        match read {
            Some(n) => filled += n,
            None => return,
        }
    }
}

/// Free space to offer the next socket read when `filled` bytes are
/// buffered and the message under way needs `needed` in all: at least
/// `READ_CHUNK_MIN_BYTES`, at most as much as is already there (so the
/// buffer grows with what arrives, doubling, never to what a header merely
/// announces), and no more than the message still needs.
fn read_room(filled: usize, needed: usize) -> usize {
    let missing = needed.saturating_sub(filled);
    filled.min(missing).max(READ_CHUNK_MIN_BYTES)
}

/// Wait until the connection may take request `seq` of `bytes`: a free
/// in-flight slot, request bytes, and answer budget. `false` when the
/// connection is going away.
async fn admit(conn: &Conn, seq: u64, bytes: u64) -> bool {
    if conn.inflight.acquire(1).await.is_err() || conn.slots.borrow().broken {
        return false;
    }
    if bytes > 0 && conn.request_bytes.acquire(bytes).await.is_err() {
        return false;
    }
    // Answers produced and not yet written have spent the budget: read no
    // more until the writer has written some out.
    while !conn.budget.may_run(seq) {
        if conn.progress.1.recv_async().await.is_err() || conn.slots.borrow().broken {
            return false;
        }
    }
    true
}

enum ReadOutcome {
    Data(std::io::Result<usize>),
    /// The server is shutting down.
    Stop,
    /// The idle period passed without input.
    Idle,
}

/// One socket read; `None` on EOF, error, shutdown, or an idle timeout
/// (PROTOCOL.md §3.7: nothing received for the idle period while nothing is in
/// flight). A connection that holds subscriptions is never idle: it is
/// watching.
async fn read_with_idle_timeout<S: ByteStream>(
    conn: &Conn,
    handle: &ConnHandle,
    stream: &Stream<S>,
    buf: &mut [u8],
) -> Option<usize> {
    loop {
        // The stop request is checked in the same poll as the socket, so a
        // waiting reader costs no extra task or allocation.
        let read = poll_fn(|cx| {
            if handle.poll_stop(cx).is_ready() {
                return Poll::Ready(ReadOutcome::Stop);
            }
            Pin::new(&mut *stream.borrow_mut())
                .poll_read(cx, buf)
                .map(ReadOutcome::Data)
        });
        let result = match conn.ctx.limits.idle_timeout {
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
            ReadOutcome::Idle => {
                // An answer written through the lease is not in flight.
                settle_lease(conn);
                if is_idle(&conn.slots, &conn.watch) {
                    tracing::debug!("closing idle connection");
                    return None;
                }
            }
        }
    }
}

fn is_idle(slots: &RefCell<Slots>, watch: &Rc<RefCell<ConnWatch>>) -> bool {
    slots.borrow().queue.is_empty() && watch.borrow().subs.is_empty()
}

fn output_mode(session: &Session, decoder: &FrameDecoder) -> OutputMode {
    if session.jsonl {
        OutputMode::Jsonl
    } else {
        decoder.output_mode_for_binary()
    }
}

/// The lease for request `seq`'s answer, when it may have one (`lease.rs`):
/// a request routed to one shard, on a plain-TCP connection with nothing
/// else in flight, no subscription and nothing left to write.
fn lend(
    conn: &Conn,
    seq: u64,
    op: Op,
    id_json: &[u8],
    mode: OutputMode,
    started: Instant,
) -> Option<Arc<dyn AnswerLease>> {
    let lendable = conn.lendable.as_ref()?;
    let routed_to_one_shard = matches!(
        op,
        Op::GetInstance | Op::ApplyEvent | Op::CreateInstance | Op::DeleteInstance
    );
    if !routed_to_one_shard
        || conn.writing.get()
        || !conn.slots.borrow().queue.is_empty()
        || !conn.watch.borrow().subs.is_empty()
        || conn.lease.borrow().is_some()
    {
        return None;
    }
    let socket = lendable.share()?;
    let request = lease::Request {
        op,
        id_json: id_json.to_vec(),
        mode,
        started,
    };
    let lease = Arc::new(Lease::lend(socket, request, conn.ctx.metrics.leased()));
    *conn.lease.borrow_mut() = Some((seq, lease.clone()));
    Some(lease)
}

/// Settle the lease out, if any: an answer written through it retires its
/// slot here (the writer never sees it); one not written comes through the
/// reply channel.
fn settle_lease(conn: &Conn) {
    let Some((seq, lease)) = conn.lease.borrow_mut().take() else {
        return;
    };
    if !lease.settle() {
        return;
    }
    let slot = {
        let mut s = conn.slots.borrow_mut();
        // A lease is lent only to a lone request, and taken back before
        // another is admitted: its slot is the oldest.
        debug_assert_eq!(s.base_seq, seq);
        if s.base_seq != seq {
            return;
        }
        let Some(slot) = s.queue.pop_front() else {
            return;
        };
        s.base_seq += 1;
        slot
    };
    conn.inflight.signal(1);
    conn.request_bytes.signal(slot.request_bytes);
    super::writer::returned_budget(conn);
}

fn push_slot(slots: &RefCell<Slots>, seq: u64, slot: Slot) {
    let mut s = slots.borrow_mut();
    debug_assert_eq!(s.base_seq + s.queue.len() as u64, seq);
    s.queue.push_back(slot);
}

fn set_slot_mode(slots: &RefCell<Slots>, seq: u64, mode: OutputMode) {
    let mut s = slots.borrow_mut();
    let index = (seq - s.base_seq) as usize;
    if let Some(slot) = s.queue.get_mut(index) {
        slot.mode = mode;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_buffer_grows_with_what_arrived_not_with_what_was_announced() {
        // A header announcing 16 MiB, 18 bytes there: a small read.
        assert_eq!(read_room(18, 16 << 20), READ_CHUNK_MIN_BYTES);
        // Half of it there: room for as much again.
        assert_eq!(read_room(8 << 20, 16 << 20), 8 << 20);
        // Nearly complete: only what is missing (but a chunk at least).
        assert_eq!(read_room((16 << 20) - 10, 16 << 20), READ_CHUNK_MIN_BYTES);
        // No message under way.
        assert_eq!(read_room(0, 1), READ_CHUNK_MIN_BYTES);
    }
}
