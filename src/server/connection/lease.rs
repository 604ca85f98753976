//! A plain-TCP connection lends its socket for the answer of its one
//! request in flight (`shards::shard::AnswerLease`): the thread that
//! produces the answer — the owning shard's, after its group commit —
//! frames it and sends it itself, and the connection's core is not woken
//! to do it. At one client that wake was 10–20 µs of CPU per request and a
//! third of a GET's latency (bench-results/2026-12-06/direct-answer-prototype/).
//!
//! # When a lease is lent (`reader.rs`)
//!
//! Only when nothing else can write to the socket while it is out: no other
//! request of the connection in flight, no subscription (watch events), and
//! the writer holding no bytes it has not written yet (it pops answers
//! before their write completes). While it is out, the reader takes it
//! back before it admits another request, so answers keep request order;
//! the writer writes nothing else meanwhile (nothing else is owed).
//!
//! # Who owns what
//!
//! The lease holds a share of the connection's own duplicate of the
//! socket's descriptor (`LentSocket`, made once per connection), and lets
//! go of it when the lease is settled or written: whatever happens to the
//! connection — closed, shut down, its task dropped — a late answer can
//! only reach this client's socket, never a descriptor number reused by
//! another. (A duplicate per lease cost a `fcntl` and a `close` per
//! request, 3.5 % of the server's CPU at get 16×1.) No lock (invariant 1
//! of `docs/ARCHITECTURE.md`): one atomic state word, lent → writing →
//! written or returned; whoever moves it out of lent — the producer to
//! write, or the reader to take the lease back — owns the lease's share
//! from then on and drops it. A reader that finds the producer writing
//! waits for it: one non-blocking `send`.
//!
//! # What the reader learns (`settle`)
//!
//! * written whole — the slot is retired by the reader (in-flight count,
//!   request bytes, budget head); the writer counted the answer in the
//!   metrics when it wrote it (`metrics::leased`), so a scrape sees it
//!   even if the connection does not wake again for a while;
//! * still lent — taken back: the answer comes through the reply channel;
//! * handed back — the socket took part of the frame or none (a client not
//!   reading, a full send buffer): the answer comes through the channel
//!   with the count of bytes already sent, and the writer writes the rest
//!   (`writer.rs`). The producer never waits on the socket.

use std::cell::{RefCell, UnsafeCell};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use shards::shard::{AnswerLease, LeaseWrite};
use shards::EngineResult;

use crate::metrics::leased::LeasedCounters;
use crate::protocol::frame::OutputMode;
use crate::protocol::op::Op;
use crate::protocol::response::write_response;

/// Room reserved for a leased answer's frame before it is encoded.
const LEASED_FRAME_INITIAL_BYTES: usize = 512;
/// Largest answer (its `result` JSON) the producer writes through a lease;
/// a larger one goes the usual way: beside its copy the wake is small, and
/// a shard's thread should not frame megabytes for a socket.
const LEASED_ANSWER_BYTES_MAX: usize = 64 * 1024;

/// Out: the producer may claim it to write.
const LENT: u8 = 0;
/// The producer is writing through it.
const WRITING: u8 = 1;
/// The whole frame went out; the reader has not settled it yet.
const WRITTEN: u8 = 2;
/// Taken back, handed back after a partial write, or settled: the answer
/// goes (or went) through the reply channel.
const RETURNED: u8 = 3;
/// Spins a reader waits for a writing producer before it yields its core.
const SETTLE_SPINS_BEFORE_YIELD: u32 = 1024;

/// What a lease's answer is, for its frame and its metrics.
pub(super) struct Request {
    pub op: Op,
    pub id_json: Vec<u8>,
    pub mode: OutputMode,
    /// When it was read, for its latency.
    pub started: Instant,
}

pub(super) struct Lease {
    request: Request,
    /// Where the answer is counted when written whole.
    metrics: Arc<LeasedCounters>,
    state: AtomicU8,
    /// The lease's share of the socket. Touched only by whoever moved
    /// `state` out of `LENT` (one compare-exchange wins), or by `drop`.
    fd: UnsafeCell<Option<LentSocket>>,
}

/// A connection's duplicate of its socket's descriptor, shared by the
/// leases it lends; the descriptor closes when the connection and every
/// lease still out have let go of it.
#[derive(Clone)]
pub(super) struct LentSocket(Arc<OwnedFd>);

impl LentSocket {
    /// Duplicate socket `fd`; `None` when the process is out of
    /// descriptors (answers then go the usual way).
    pub fn duplicate(fd: RawFd) -> Option<Self> {
        // SAFETY: `fd` is the open socket of the connection lending it; it
        // stays open for the duration of this call.
        let socket = unsafe { BorrowedFd::borrow_raw(fd) };
        socket
            .try_clone_to_owned()
            .ok()
            .map(|own| LentSocket(Arc::new(own)))
    }
}

/// A plain-TCP connection's socket as its leases see it: the descriptor,
/// and the duplicate they share once the first lease made it.
pub(super) struct Lendable {
    fd: RawFd,
    shared: RefCell<Option<LentSocket>>,
}

impl Lendable {
    pub fn new(fd: RawFd) -> Self {
        Lendable {
            fd,
            shared: RefCell::new(None),
        }
    }

    /// A share of the duplicate, made now if this is the first lease;
    /// `None` when it cannot be made (tried again at the next lease).
    pub fn share(&self) -> Option<LentSocket> {
        let mut shared = self.shared.borrow_mut();
        if shared.is_none() {
            *shared = LentSocket::duplicate(self.fd);
        }
        shared.clone()
    }
}

// SAFETY: `fd`, the one field not `Sync` by itself, is only accessed by
// the thread that won the compare-exchange out of `LENT`
// (`take_fd`), which happens once; the other fields are immutable or
// atomic.
unsafe impl Sync for Lease {}

impl Lease {
    /// Lend `socket` for the answer to `request`.
    pub fn lend(socket: LentSocket, request: Request, metrics: Arc<LeasedCounters>) -> Self {
        Lease {
            request,
            metrics,
            state: AtomicU8::new(LENT),
            fd: UnsafeCell::new(Some(socket)),
        }
    }

    /// The lease's share of the socket, for the caller that just moved
    /// `state` out of `LENT`.
    fn take_fd(&self) -> Option<LentSocket> {
        // SAFETY: only the one winner of the compare-exchange out of
        // `LENT` calls this (see `Sync` above): no other access overlaps.
        unsafe { (*self.fd.get()).take() }
    }

    /// The connection's side: `true` when the answer was written whole
    /// through the lease; otherwise the lease is taken back (its
    /// descriptor closed) and the answer comes through the reply channel.
    pub fn settle(&self) -> bool {
        let mut spins = 0u32;
        loop {
            match self
                .state
                .compare_exchange(LENT, RETURNED, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    drop(self.take_fd());
                    return false;
                }
                Err(WRITTEN) => {
                    self.state.store(RETURNED, Ordering::Release);
                    return true;
                }
                Err(RETURNED) => return false,
                Err(_) => {
                    // The producer is in one non-blocking send.
                    spins += 1;
                    if spins < SETTLE_SPINS_BEFORE_YIELD {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
            }
        }
    }
}

impl AnswerLease for Lease {
    fn write(&self, body: &EngineResult<Vec<u8>>) -> LeaseWrite {
        let answer_bytes = body.as_ref().map_or(0, Vec::len);
        if answer_bytes > LEASED_ANSWER_BYTES_MAX
            || self
                .state
                .compare_exchange(LENT, WRITING, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return LeaseWrite::Rest { sent_bytes: 0 };
        }
        let Some(fd) = self.take_fd() else {
            self.state.store(RETURNED, Ordering::Release);
            return LeaseWrite::Rest { sent_bytes: 0 };
        };
        let r = &self.request;
        let mut frame = Vec::with_capacity(LEASED_FRAME_INITIAL_BYTES);
        if write_response(&mut frame, r.mode, &r.id_json, body).is_err() {
            // Too large to frame: the writer answers with the error.
            self.state.store(RETURNED, Ordering::Release);
            return LeaseWrite::Rest { sent_bytes: 0 };
        }
        let sent_bytes = send_without_blocking(&fd, &frame);
        if sent_bytes < frame.len() {
            self.state.store(RETURNED, Ordering::Release);
            return LeaseWrite::Rest { sent_bytes };
        }
        let error = body.as_ref().err().map(|e| e.code);
        self.metrics.answered(r.op, r.started.elapsed(), error);
        self.state.store(WRITTEN, Ordering::Release);
        LeaseWrite::Written
    }
}

/// Send as much of `bytes` as the socket takes now; how much it took. A
/// broken socket takes nothing more: the connection's own write of the
/// rest meets the error and ends the connection.
fn send_without_blocking(socket: &LentSocket, bytes: &[u8]) -> usize {
    let mut sent = 0;
    while sent < bytes.len() {
        let rest = &bytes[sent..];
        // SAFETY: the descriptor stays open while this lease holds its
        // share; `rest` is a valid slice for its length.
        let n = unsafe {
            libc::send(
                socket.0.as_raw_fd(),
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n > 0 {
            sent += n as usize;
            continue;
        }
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        break;
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().unwrap()
    }

    fn lend(socket: &UnixStream, mode: OutputMode, metrics: &Metrics) -> Lease {
        let request = Request {
            op: Op::GetInstance,
            id_json: b"\"7\"".to_vec(),
            mode,
            started: Instant::now(),
        };
        Lease::lend(
            LentSocket::duplicate(socket.as_raw_fd()).unwrap(),
            request,
            metrics.leased(),
        )
    }

    fn framed(mode: OutputMode, body: &EngineResult<Vec<u8>>) -> Vec<u8> {
        let mut v = Vec::new();
        write_response(&mut v, mode, b"\"7\"", body).unwrap();
        v
    }

    #[test]
    fn a_written_answer_is_the_frame_the_writer_would_have_written_and_is_counted() {
        let (ours, mut theirs) = pair();
        let metrics = Metrics::new();
        let lease = lend(&ours, OutputMode::Rcpx, &metrics);
        let body: EngineResult<Vec<u8>> = Ok(br#"{"state":"paid"}"#.to_vec());
        assert_eq!(lease.write(&body), LeaseWrite::Written);
        let want = framed(OutputMode::Rcpx, &body);
        let mut got = vec![0; want.len()];
        theirs.read_exact(&mut got).unwrap();
        assert_eq!(got, want);
        // Counted by the writer, before the connection settles it.
        assert_eq!(metrics.requests(Op::GetInstance), 1);
        assert!(lease.settle(), "written");
        // Settled once: a second settle finds nothing.
        assert!(!lease.settle());
    }

    #[test]
    fn an_error_answer_is_counted_with_its_code() {
        let (ours, _theirs) = pair();
        let metrics = Metrics::new();
        let lease = lend(&ours, OutputMode::Jsonl, &metrics);
        let body: EngineResult<Vec<u8>> = Err(shards::EngineError::new(
            shards::ErrorCode::InstanceNotFound,
            "no such instance",
        ));
        assert_eq!(lease.write(&body), LeaseWrite::Written);
        let mut out = crate::metrics::Exposition::new();
        metrics.snapshot().render(&mut out);
        let text = out.finish();
        for line in [
            "rstmdb_errors_total{code=\"INSTANCE_NOT_FOUND\"} 1",
            "rstmdb_requests_total{operation=\"GET_INSTANCE\"} 1",
            "corestate_leased_answers_total{written=\"whole\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn a_lease_taken_back_is_not_written_and_closes_its_descriptor() {
        let (ours, mut theirs) = pair();
        let metrics = Metrics::new();
        let lease = lend(&ours, OutputMode::Rcpx, &metrics);
        assert!(!lease.settle());
        assert_eq!(
            lease.write(&Ok(b"{}".to_vec())),
            LeaseWrite::Rest { sent_bytes: 0 }
        );
        assert_eq!(metrics.requests(Op::GetInstance), 0);
        // Only the connection's own descriptor is left: closing it ends the
        // stream, so the lease's duplicate is gone.
        drop(ours);
        let mut rest = Vec::new();
        theirs.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }

    #[test]
    fn the_connections_duplicate_outlives_its_leases_and_closes_with_the_last_share() {
        let (ours, mut theirs) = pair();
        let metrics = Metrics::new();
        let shared = LentSocket::duplicate(ours.as_raw_fd()).unwrap();
        drop(ours);
        let body: EngineResult<Vec<u8>> = Ok(b"{}".to_vec());
        let request = || Request {
            op: Op::GetInstance,
            id_json: b"\"7\"".to_vec(),
            mode: OutputMode::Rcpx,
            started: Instant::now(),
        };
        // Three leases in turn, each through the one duplicate: the
        // first two written, the third taken back.
        for _ in 0..2 {
            let lease = Lease::lend(shared.clone(), request(), metrics.leased());
            assert_eq!(lease.write(&body), LeaseWrite::Written);
            assert!(lease.settle());
        }
        let late = Lease::lend(shared.clone(), request(), metrics.leased());
        assert!(!late.settle());
        // The connection lets go: its lease, still held by a producer,
        // holds no share any more, so the socket closes.
        drop(shared);
        assert_eq!(late.write(&body), LeaseWrite::Rest { sent_bytes: 0 });
        let mut all = Vec::new();
        theirs.read_to_end(&mut all).unwrap();
        assert_eq!(all.len(), 2 * framed(OutputMode::Rcpx, &body).len());
        drop(late);
    }

    #[test]
    fn a_race_between_the_writer_and_the_taking_back_has_one_winner() {
        const ROUNDS: usize = 2000;
        let (ours, mut theirs) = pair();
        let metrics = Metrics::new();
        let body: EngineResult<Vec<u8>> = Ok(b"{}".to_vec());
        let frame_bytes = framed(OutputMode::Rcpx, &body).len();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            theirs.read_to_end(&mut all).unwrap();
            all.len()
        });
        let mut written = 0;
        for _ in 0..ROUNDS {
            let lease = Arc::new(lend(&ours, OutputMode::Rcpx, &metrics));
            let producer = {
                let (lease, body) = (lease.clone(), body.clone());
                std::thread::spawn(move || lease.write(&body))
            };
            let settled = lease.settle();
            let wrote = producer.join().unwrap();
            // The producer wrote whole exactly when the reader found it
            // written; otherwise it was taken back first, untouched.
            match wrote {
                LeaseWrite::Written => {
                    // A settle before the claim would have taken it back;
                    // one during the write waits for it.
                    assert!(settled);
                    assert!(!lease.settle(), "settled once");
                    written += 1;
                }
                LeaseWrite::Rest { sent_bytes } => {
                    assert_eq!(sent_bytes, 0);
                    assert!(!settled);
                }
            }
        }
        drop(ours);
        assert_eq!(reader.join().unwrap(), written * frame_bytes);
        assert_eq!(metrics.requests(Op::GetInstance), written as u64);
    }

    #[test]
    fn a_large_answer_is_left_to_the_connection() {
        let (ours, _theirs) = pair();
        let metrics = Metrics::new();
        let lease = lend(&ours, OutputMode::Rcpx, &metrics);
        let body: EngineResult<Vec<u8>> = Ok(vec![b'x'; LEASED_ANSWER_BYTES_MAX + 1]);
        assert_eq!(lease.write(&body), LeaseWrite::Rest { sent_bytes: 0 });
        assert!(!lease.settle());
    }

    #[test]
    fn a_full_socket_hands_the_rest_back_without_waiting() {
        let (ours, mut theirs) = pair();
        ours.set_nonblocking(true).unwrap();
        // Fill the socket's buffer: nobody reads the other end.
        let filler = vec![0u8; 64 * 1024];
        let mut filled = 0usize;
        while let Ok(n) = (&ours).write(&filler) {
            filled += n;
        }
        let metrics = Metrics::new();
        let lease = lend(&ours, OutputMode::Rcpx, &metrics);
        let body: EngineResult<Vec<u8>> = Ok(vec![b'x'; LEASED_ANSWER_BYTES_MAX]);
        let LeaseWrite::Rest { sent_bytes } = lease.write(&body) else {
            panic!("a full socket cannot take a 64 KiB frame");
        };
        let want = framed(OutputMode::Rcpx, &body);
        assert!(sent_bytes < want.len());
        assert!(!lease.settle(), "handed back, not written");
        assert_eq!(
            metrics.requests(Op::GetInstance),
            0,
            "the connection counts it"
        );
        // What went out is the frame's head, right after the filler.
        let mut got = vec![0; filled + sent_bytes];
        theirs.read_exact(&mut got).unwrap();
        assert_eq!(&got[filled..], &want[..sent_bytes]);
    }
}
