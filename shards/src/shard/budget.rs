//! Memory budgets for clients' answers: how many bytes of answers a client
//! may have produced and not yet taken off the socket, and the same for the
//! whole server.
//!
//! An answer is produced on the shard that owns the data (a GET of an
//! instance with a 4 MiB context is 4 MiB there), long before the client's
//! connection writes it. A client that pipelines such requests without
//! reading them — or many clients that read slowly — would make the shards
//! produce answers without bound. So the *producer* checks the budget:
//!
//! * Before running a request of a client whose budget is spent, a shard
//!   parks it (with every later request of that client on that shard, so
//!   per-client order holds) and marks itself in `parked_on`. Whoever
//!   returns bytes to the budget wakes the marked shards.
//! * An answer larger than `ANSWER_UNCHARGED_BYTES_MAX` takes a `Charge` of
//!   its size from the client's budget and the server's; dropping the charge
//!   (the connection wrote the answer, or went away) gives the bytes back.
//!   Smaller answers are bounded by the per-connection limit on requests in
//!   flight.
//! * The client's oldest unwritten answer always runs, spent budget or not:
//!   answers are written in request order, so everything queued behind it
//!   waits for it, and parking it would stall the client for good.
//!
//! The server-wide budget parks only clients that hold more than a fair
//! share (`CLIENT_FAIR_SHARE_BYTES`), so a few clients that stop reading
//! cannot stall those that read.
//!
//! So a client's answers take at most its limit plus one answer per shard
//! (a shard runs at most one request past the limit before it sees the
//! budget spent) plus the exempt oldest one.
//!
//! When the connection ends its budget is closed, and its requests that
//! have not run yet are dropped without running, as a crash would drop
//! them (none was answered). Running them would produce answers nobody
//! takes; leaving them parked would hold, through their reply channel, the
//! answers queued for the connection — and the server's budget — forever.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

/// Answers up to this size are not charged (they are bounded by the number
/// of requests a connection may have in flight).
pub const ANSWER_UNCHARGED_BYTES_MAX: usize = 4 * 1024;
/// A client holding fewer bytes than this keeps running when the server's
/// budget is spent.
pub const CLIENT_FAIR_SHARE_BYTES: i64 = 1024 * 1024;

/// The bytes of unwritten answers all clients together may hold.
#[derive(Debug)]
pub struct ServerBudget {
    available: AtomicI64,
    limit: i64,
}

impl ServerBudget {
    pub fn new(limit_bytes: usize) -> Arc<Self> {
        Arc::new(ServerBudget {
            available: AtomicI64::new(limit_bytes as i64),
            limit: limit_bytes as i64,
        })
    }

    /// Bytes charged right now.
    pub fn used_bytes(&self) -> u64 {
        (self.limit - self.available.load(Ordering::Relaxed)).max(0) as u64
    }

    pub fn limit_bytes(&self) -> u64 {
        self.limit as u64
    }
}

/// One client's (connection's) budget.
#[derive(Debug)]
pub struct ResponseBudget {
    available: AtomicI64,
    limit: i64,
    server: Arc<ServerBudget>,
    /// Sequence number of the client's oldest unwritten answer.
    head_seq: AtomicU64,
    /// Shards holding parked requests of this client, one bit per shard.
    parked_on: AtomicU64,
    /// The connection ended: nobody will write its answers.
    closed: AtomicBool,
}

impl ResponseBudget {
    pub fn new(limit_bytes: usize, server: Arc<ServerBudget>) -> Arc<Self> {
        Arc::new(ResponseBudget {
            available: AtomicI64::new(limit_bytes as i64),
            limit: limit_bytes as i64,
            server,
            head_seq: AtomicU64::new(0),
            parked_on: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        })
    }

    /// The connection ended: its requests that have not run are dropped.
    /// The caller wakes the shards in `take_parked`, so they let go of the
    /// ones waiting there.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Whether request `seq` of this client may run now.
    pub fn may_run(&self, seq: u64) -> bool {
        if seq == self.head_seq.load(Ordering::SeqCst) {
            return true;
        }
        let available = self.available.load(Ordering::SeqCst);
        if available <= 0 {
            return false;
        }
        let held = self.limit - available;
        self.server.available.load(Ordering::SeqCst) > 0 || held < CLIENT_FAIR_SHARE_BYTES
    }

    /// Take `bytes` for an answer; `None` for an answer small enough to go
    /// uncharged.
    pub fn charge(self: &Arc<Self>, bytes: usize) -> Option<Charge> {
        if bytes <= ANSWER_UNCHARGED_BYTES_MAX {
            return None;
        }
        let bytes = bytes as i64;
        self.available.fetch_sub(bytes, Ordering::SeqCst);
        self.server.available.fetch_sub(bytes, Ordering::SeqCst);
        Some(Charge {
            budget: self.clone(),
            bytes,
        })
    }

    /// The client's oldest unwritten answer is now `seq` (the connection's
    /// writer says so as it writes).
    pub fn set_head(&self, seq: u64) {
        self.head_seq.store(seq, Ordering::SeqCst);
    }

    /// Shard `shard` parked a request of this client. Returns whether the
    /// shard must look at it again now rather than wait for a wake-up: the
    /// budget was returned meanwhile, or the connection ended (it takes
    /// the marks when it closes, and a mark set after that wakes nobody).
    pub fn note_parked(&self, shard: usize, seq: u64) -> bool {
        self.parked_on.fetch_or(1 << shard, Ordering::SeqCst);
        self.is_closed() || self.may_run(seq)
    }

    /// Shards to wake because budget came back; clears the marks.
    pub fn take_parked(&self) -> u64 {
        if self.parked_on.load(Ordering::SeqCst) == 0 {
            return 0;
        }
        self.parked_on.swap(0, Ordering::SeqCst)
    }

    /// Bytes charged right now.
    pub fn used_bytes(&self) -> u64 {
        (self.limit - self.available.load(Ordering::Relaxed)).max(0) as u64
    }
}

/// Bytes an answer holds of a budget; given back when dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<ResponseBudget>,
    bytes: i64,
}

impl Charge {
    pub fn budget(&self) -> &Arc<ResponseBudget> {
        &self.budget
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget
            .available
            .fetch_add(self.bytes, Ordering::SeqCst);
        self.budget
            .server
            .available
            .fetch_add(self.bytes, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spent_budget_parks_all_but_the_oldest_answer() {
        let server = ServerBudget::new(1 << 30);
        let b = ResponseBudget::new(10_000, server.clone());
        assert!(b.may_run(5));
        assert!(b.charge(100).is_none(), "small answers are not charged");
        let c1 = b.charge(8_000).unwrap();
        assert!(b.may_run(5));
        let c2 = b.charge(8_000).unwrap();
        assert_eq!(b.used_bytes(), 16_000);
        assert_eq!(server.used_bytes(), 16_000);
        assert!(!b.may_run(5));
        b.set_head(5);
        assert!(b.may_run(5), "the oldest unwritten answer always runs");
        assert!(!b.may_run(6));
        drop(c1);
        assert!(b.may_run(6));
        drop(c2);
        assert_eq!(server.used_bytes(), 0);
    }

    #[test]
    fn a_spent_server_budget_parks_only_clients_above_their_fair_share() {
        let server = ServerBudget::new(3 * CLIENT_FAIR_SHARE_BYTES as usize);
        let hog = ResponseBudget::new(1 << 30, server.clone());
        let small = ResponseBudget::new(1 << 30, server.clone());
        hog.set_head(u64::MAX);
        small.set_head(u64::MAX);
        let _held = hog.charge(4 * CLIENT_FAIR_SHARE_BYTES as usize).unwrap();
        assert!(!hog.may_run(1));
        assert!(small.may_run(1));
    }

    #[test]
    fn parking_marks_the_shard_once_until_taken() {
        let b = ResponseBudget::new(10, ServerBudget::new(100));
        b.set_head(0);
        let _c = b.charge(ANSWER_UNCHARGED_BYTES_MAX + 1).unwrap();
        assert!(!b.note_parked(3, 1));
        assert!(!b.note_parked(5, 2));
        assert_eq!(b.take_parked(), (1 << 3) | (1 << 5));
        assert_eq!(b.take_parked(), 0);
    }

    #[test]
    fn a_shard_that_parks_after_the_connection_closed_is_told_to_look_again() {
        let b = ResponseBudget::new(10, ServerBudget::new(100));
        b.set_head(0);
        let _c = b.charge(ANSWER_UNCHARGED_BYTES_MAX + 1).unwrap();
        // The connection closes and takes the marks (none yet) ...
        b.close();
        assert_eq!(b.take_parked(), 0);
        // ... then a shard parks a request: nobody will wake it.
        assert!(b.note_parked(2, 1), "the shard must drop it now, not wait");
    }
}
