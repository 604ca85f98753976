//! The writing half of a connection: answers in request order and watch
//! events between them, coalesced into few socket writes; it gives back the
//! request slots, request bytes and answer budget the written answers held,
//! and wakes the shards holding requests that waited for that budget.

use std::future::Future;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future::{self, poll_fn};
use shards::shard::budget::Charge;
use shards::shard::{Reply, ShardMsg};
use shards::{EngineError, EngineResult};

use super::{ByteStream, Conn, Stream, WRITE_BUFFER_FLUSH_BYTES};
use crate::protocol::response::write_response;
use crate::server::context::ConnHandle;
use crate::watch::deliver::deliver_events;

use super::READ_BUFFER_INITIAL_BYTES;

/// Write all of `buf`, then flush (a TLS stream may hold back what it
/// accepted until flushed). A peer that takes none of it for `stall_limit`
/// (the idle period) fails the write with `TimedOut`: a client that stopped
/// reading its answers is closed like an idle one, instead of holding its
/// connection, its slot and its answers' budget for as long as it stays.
pub(super) async fn write_all<S: ByteStream>(
    stream: &Stream<S>,
    mut buf: &[u8],
    stall_limit: Option<Duration>,
) -> std::io::Result<()> {
    while !buf.is_empty() {
        let write = poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_write(cx, buf));
        let n = until_stalled(write, stall_limit).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    let flush = poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_flush(cx));
    until_stalled(flush, stall_limit).await
}

/// `op`, or `TimedOut` once it made no progress for `limit`. The timer is
/// armed only when the socket cannot take the bytes at once, so a write
/// that goes straight out costs no timer.
async fn until_stalled<T>(
    op: impl Future<Output = std::io::Result<T>>,
    limit: Option<Duration>,
) -> std::io::Result<T> {
    let mut op = pin!(op);
    if let Some(done) = future::poll_once(op.as_mut()).await {
        return done;
    }
    let Some(limit) = limit else {
        return op.await;
    };
    future::or(op, async {
        glommio::timer::sleep(limit).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the peer read nothing for the idle period",
        ))
    })
    .await
}

enum Wake {
    Reply(Reply),
    Events,
    /// Answers are ready that the last round left for lack of room.
    Ready,
    Closed,
}

pub(super) async fn write_loop<S: ByteStream>(
    conn: Rc<Conn>,
    handle: Rc<ConnHandle>,
    stream: Stream<S>,
    replies: flume::Receiver<Reply>,
) {
    let ctx = conn.ctx.clone();
    let mut out: Vec<u8> = Vec::with_capacity(READ_BUFFER_INITIAL_BYTES);
    // Charges of the answers in `out`: given back once they are written.
    let mut charges: Vec<Charge> = Vec::new();
    let wake_rx = conn.watch.borrow().wake_rx.clone();
    loop {
        let wake = if answer_ready(&conn) {
            // Let the executor's other tasks in between rounds.
            future::yield_now().await;
            Wake::Ready
        } else {
            future::or(
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
            .await
        };
        let mut next = match wake {
            Wake::Closed => return,
            Wake::Reply(r) => Some(r),
            Wake::Events | Wake::Ready => None,
        };
        loop {
            if let Some(reply) = next.take() {
                fill(&conn, reply);
            }
            encode_ready(&conn, &mut out, &mut charges);
            if out.len() >= WRITE_BUFFER_FLUSH_BYTES {
                break;
            }
            match replies.try_recv() {
                Ok(reply) => next = Some(reply),
                Err(_) => break,
            }
        }
        if !conn.watch.borrow().subs.is_empty() {
            match deliver_events(&ctx, &conn.watch, &mut out).await {
                Ok(true) => {
                    // More to send: come back after this write.
                    let _ = conn.watch.borrow().waker.try_send(());
                }
                Ok(false) => {}
                Err(e) => {
                    // A subscription cannot go on (its next events were
                    // purged or compacted away under it): the answers
                    // already encoded (a WATCH_ALL's own, say) go out, then
                    // the connection ends — the reader too, so the client
                    // sees the close instead of waiting on an open socket.
                    tracing::warn!("closing a watching connection: {e}");
                    if !out.is_empty() {
                        let _ = write_all(&stream, &out, ctx.limits.idle_timeout).await;
                    }
                    conn.close_gates();
                    handle.request_stop();
                    return;
                }
            }
        }
        if !out.is_empty() {
            // Answers popped but not written yet: no lease until they are.
            conn.writing.set(true);
            let written = write_all(&stream, &out, ctx.limits.idle_timeout).await;
            conn.writing.set(false);
            if let Err(e) = written {
                // Gone, or not reading: the reader stops too (it may be
                // waiting on a silent socket), and nothing more is written.
                tracing::debug!("closing a connection whose answers cannot be written: {e}");
                conn.close_gates();
                handle.request_stop();
                return;
            }
            out.clear();
            if out.capacity() > 4 * WRITE_BUFFER_FLUSH_BYTES {
                out.shrink_to(READ_BUFFER_INITIAL_BYTES);
            }
        }
        charges.clear();
        returned_budget(&conn);
    }
}

/// After a round: the oldest unwritten answer moved on and budget may have
/// come back. Tell the reader, and wake the shards holding requests of this
/// connection that waited for it.
pub(super) fn returned_budget(conn: &Conn) {
    conn.budget.set_head(conn.slots.borrow().base_seq);
    let _ = conn.progress.0.try_send(());
    let mut parked_on = conn.budget.take_parked();
    while parked_on != 0 {
        let shard = parked_on.trailing_zeros() as usize;
        parked_on &= parked_on - 1;
        if let Some(mailbox) = conn.ctx.router.all().get(shard) {
            let _ = mailbox.send(ShardMsg::Unpark);
        }
    }
}

/// Whether the oldest unwritten answer is there to write.
fn answer_ready(conn: &Conn) -> bool {
    conn.slots
        .borrow()
        .queue
        .front()
        .is_some_and(|slot| slot.body.is_some())
}

fn fill(conn: &Conn, reply: Reply) {
    let mut s = conn.slots.borrow_mut();
    let Some(index) = reply.seq.checked_sub(s.base_seq) else {
        return;
    };
    if let Some(slot) = s.queue.get_mut(index as usize) {
        slot.body = Some(reply.body);
        slot.charge = reply.charge;
        slot.sent_bytes = reply.sent_bytes;
    }
}

/// Encode the answered prefix of the queue into `out` (until it holds
/// `WRITE_BUFFER_FLUSH_BYTES`), keeping the answers' charges in `charges`
/// until they are written; give back their request slots and bytes.
fn encode_ready(conn: &Conn, out: &mut Vec<u8>, charges: &mut Vec<Charge>) {
    let ctx = &conn.ctx;
    let mut s = conn.slots.borrow_mut();
    // One clock read for every answer encoded now.
    let now = Instant::now();
    let (mut requests, mut request_bytes) = (0u64, 0u64);
    while out.len() < WRITE_BUFFER_FLUSH_BYTES
        && s.queue.front().is_some_and(|slot| slot.body.is_some())
    {
        let Some(slot) = s.queue.pop_front() else {
            break;
        };
        s.base_seq += 1;
        requests += 1;
        request_bytes += slot.request_bytes;
        charges.extend(slot.charge);
        let Some(body) = slot.body else { continue };
        let error = body.as_ref().err().map(|e| e.code);
        ctx.metrics
            .request_answered(slot.op, now.saturating_duration_since(slot.started), error);
        let frame_at = out.len();
        if write_response(out, slot.mode, &slot.id_json, &body).is_err() {
            // The answer cannot be framed (over 16 MiB): say so instead.
            let too_large: EngineResult<Vec<u8>> = Err(EngineError::internal(
                "response exceeds the maximum frame size",
            ));
            let _ = write_response(out, slot.mode, &slot.id_json, &too_large);
        }
        // A lease sent the frame's head: only the rest is owed. The frame
        // is the same bytes (same answer, id and mode: encoding is
        // deterministic), and a frame too large to encode was never sent.
        if slot.sent_bytes > 0 {
            drop_sent_head(out, frame_at, slot.sent_bytes);
            ctx.metrics.answer_leased_in_part();
        }
    }
    conn.inflight.signal(requests);
    conn.request_bytes.signal(request_bytes);
}

/// Remove the `sent` bytes a lease already wrote from the frame that starts
/// at `frame_at` in `out`.
fn drop_sent_head(out: &mut Vec<u8>, frame_at: usize, sent: usize) {
    let end = (frame_at + sent).min(out.len());
    out.drain(frame_at..end);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_unsent_rest_of_a_leased_frame_is_written() {
        let mut out = b"AAAAframe-bytes".to_vec();
        drop_sent_head(&mut out, 4, 6);
        assert_eq!(out, b"AAAAbytes");
        let mut untouched = b"AAAAframe".to_vec();
        drop_sent_head(&mut untouched, 4, 0);
        assert_eq!(untouched, b"AAAAframe");
    }
}
