//! The merge of the shards' event streams into one stream in `wal_offset`
//! order, on the acceptor.
//!
//! Each shard publishes, after every group commit, its newly durable events
//! and its *watermark*: every event it publishes later has an offset ≥ it.
//! An event is released once its offset is below every shard's watermark —
//! no shard can still produce a smaller offset — so released events form one
//! strictly increasing sequence. An idle shard would hold the merge back, so
//! the merger asks such a shard to advance its watermark (one message, not a
//! timer), and shards also advance on every commit.
//!
//! Released events go into a ring of at most `WATCH_RING_EVENTS_MAX` events;
//! subscriptions read it by offset. Writers never wait for watchers: the ring
//! drops its oldest events, and a subscription that needs them reads the log.
//! Events waiting for a held watermark are bounded the same way
//! (`WATCH_PENDING_EVENTS_MAX`): past it they are left to the logs.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use shards::shard::events::{Publication, WatchEvent};
use shards::wal::Frontier;

use crate::watch::demand::Seat;
use crate::watch::subscription::shared_fields_len;

/// Released events kept in memory for subscribers, at most.
pub const WATCH_RING_EVENTS_MAX: usize = 65_536;
/// Bytes of released events kept in memory for subscribers, at most.
pub const WATCH_RING_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Events waiting for a shard's watermark, at most; past it (or past
/// `WATCH_PENDING_BYTES_MAX`) they are left to the logs (`Merger::spill`).
pub const WATCH_PENDING_EVENTS_MAX: usize = 262_144;
/// Bytes of events waiting for a shard's watermark, at most.
pub const WATCH_PENDING_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Approximate memory an event holds, counting ahead the wire bytes its
/// first delivery caches in it (about its strings and payload once more,
/// `subscription::shared_fields`), so the ring's byte budget also holds
/// once subscribers have read it.
fn event_bytes(e: &WatchEvent) -> usize {
    std::mem::size_of::<WatchEvent>()
        + e.strings_len()
        + e.payload_json.len()
        + e.ctx_json.len()
        + shared_fields_len(e)
}

struct Pending(Arc<WatchEvent>);

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.0.offset == other.0.offset
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.offset.cmp(&other.0.offset)
    }
}

pub struct Merger {
    watermarks: Vec<u64>,
    advance_asked: Vec<bool>,
    pending: BinaryHeap<Reverse<Pending>>,
    pending_bytes: usize,
    /// Events below this were spilled to the logs (`spill`); 0: never.
    spilled_upto: u64,
    ring: VecDeque<Arc<WatchEvent>>,
    ring_bytes: usize,
    /// Every released event with offset ≥ `ring_floor` is in `ring`.
    ring_floor: u64,
    /// Every event with offset < `released_upto` has been released.
    released_upto: u64,
    /// Events below this are history, read from the logs, even when a
    /// shard publishes them later (`accept`): where this merge started,
    /// raised by every spill (`history_to`).
    history_floor: u64,
    /// Events taken as history since the last `take_history_grew`.
    history_grew: bool,
    /// Connections with subscriptions, woken when events are released.
    wakers: Vec<std::rc::Weak<flume::Sender<()>>>,
    frontier: Option<Frontier>,
    /// Events released since `take_released`, kept only when other cores'
    /// replicas are fed from this merge (`relaying`).
    outbox: Option<Vec<Arc<WatchEvent>>>,
    /// Where this merge tells whether its core has watchers, and learns
    /// whether it must take publications at once (`demand`); none: always.
    seat: Option<Seat>,
}

impl Merger {
    /// `watermarks`: each shard's watermark when it opened. Everything below
    /// their *maximum* is history, in the logs and not in the ring: a busier
    /// shard's log holds records between the others' watermarks and its own,
    /// and a subscriber resuming there must read them from the logs (found by
    /// the linearizability run, tests/linearizability/watch_resume.rs). No
    /// shard stamps a new record below it: every shard's clock starts above
    /// every tick any shard recovered (`shards::wal::offset::Frontier`).
    pub fn new(watermarks: Vec<u64>) -> Self {
        let start = watermarks.iter().copied().max().unwrap_or(0);
        Merger {
            advance_asked: vec![false; watermarks.len()],
            watermarks,
            pending: BinaryHeap::new(),
            pending_bytes: 0,
            spilled_upto: 0,
            ring: VecDeque::new(),
            ring_bytes: 0,
            ring_floor: start,
            released_upto: start,
            history_floor: start,
            history_grew: false,
            wakers: Vec::new(),
            frontier: None,
            outbox: None,
            seat: None,
        }
    }

    /// Report this core's watchers to `seat`, and linger while there are
    /// none (`crate::watch::demand`).
    pub fn with_seat(mut self, seat: Seat) -> Self {
        self.seat = Some(seat);
        self
    }

    /// Where to linger before taking more publications: `Some` while
    /// nobody reads what this merge releases (`crate::watch::demand`).
    pub fn unwatched_seat(&self) -> Option<Seat> {
        self.seat
            .as_ref()
            .filter(|seat| !seat.demand.is_watched(seat.core))
            .cloned()
    }

    /// Keep released events for `take_released` (the primary merge, when
    /// other acceptor cores hold replicas).
    pub fn relaying(mut self) -> Self {
        self.outbox = Some(Vec::new());
        self
    }

    /// Events released since the last call, oldest first.
    pub fn take_released(&mut self) -> Vec<Arc<WatchEvent>> {
        self.outbox.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// The shards' shared frontier, for `live_start`.
    pub fn with_frontier(mut self, frontier: Frontier) -> Self {
        self.frontier = Some(frontier);
        self
    }

    /// Where a new live subscription starts: past every event acknowledged
    /// before now, before every event begun after now.
    pub fn live_start(&self) -> u64 {
        let floor = self
            .frontier
            .as_ref()
            .map_or(0, Frontier::next_offset_floor);
        floor.max(self.released_upto)
    }

    /// Take in a shard's publication (`release` releases what became
    /// releasable).
    ///
    /// An event below `released_upto` is history: a subscriber that wants
    /// it reads it from the logs, and the ring must not take it — it would
    /// sit out of order there, and dropping it from the ring would lower
    /// `ring_floor` below events the ring never held, so a subscriber
    /// resuming between the two would skip them (the watch gap of the long
    /// cluster run at 6f9a464, bench-results/2026-12-05). On a cluster node
    /// this is normal right after a restart: the merge starts above every
    /// event its shards applied, and a shard whose group lags applies
    /// committed entries below that start a moment later; and after a
    /// `spill`. Otherwise it is a shard's bug (`shards::shard::publishing`),
    /// named in the log.
    pub fn accept(&mut self, p: Publication) {
        self.history_to(p.history_upto);
        if let Some(w) = self.watermarks.get_mut(p.shard) {
            *w = (*w).max(p.watermark);
            self.advance_asked[p.shard] = false;
        }
        for e in p.events {
            if e.offset < self.released_upto {
                if e.offset >= self.history_floor {
                    tracing::error!(
                        "watch order violated: event at offset {} from shard {} came after \
                         offsets up to {} were released; watchers read it from the logs only",
                        e.offset,
                        p.shard,
                        self.released_upto
                    );
                }
                // A catch-up read waiting for this shard's log may now go on.
                self.history_grew = true;
                continue;
            }
            self.pending_bytes += event_bytes(&e);
            self.pending.push(Reverse(Pending(e)));
        }
        if self.pending.len() > WATCH_PENDING_EVENTS_MAX
            || self.pending_bytes > WATCH_PENDING_BYTES_MAX
        {
            self.spill();
        }
    }

    /// Too many events wait for a shard whose watermark is held (on a
    /// cluster, a batch part in doubt holds it for up to
    /// `in_doubt_resolve_after_ms`): leave them all to the logs instead of
    /// holding them in memory. Everything up to the newest of them becomes
    /// history — subscribers that want it read the logs, whose reads wait
    /// for the held shard as the merge did — and so do the held shard's
    /// events below it when they come.
    fn spill(&mut self) {
        let Some(newest) = self
            .pending
            .iter()
            .map(|Reverse(Pending(e))| e.offset)
            .max()
        else {
            return;
        };
        tracing::warn!(
            "watch merge: {} events ({} bytes) waited for a shard's watermark; left to the \
             logs up to offset {newest}",
            self.pending.len(),
            self.pending_bytes
        );
        self.pending.clear();
        self.pending_bytes = 0;
        self.spilled_upto = self.spilled_upto.max(newest + 1);
        self.history_to(newest + 1);
    }

    /// Every event below `upto` is history, read from the logs only.
    fn history_to(&mut self, upto: u64) {
        self.history_floor = self.history_floor.max(upto);
        if upto <= self.ring_floor {
            return;
        }
        self.ring_floor = upto;
        self.released_upto = self.released_upto.max(upto);
        while self.ring.front().is_some_and(|e| e.offset < upto) {
            if let Some(old) = self.ring.pop_front() {
                self.ring_bytes -= event_bytes(&old);
            }
        }
        self.history_grew = true;
    }

    /// Where this merge spilled to the logs (for its replicas).
    pub fn spilled_upto(&self) -> u64 {
        self.spilled_upto
    }

    /// Whether events were taken as history since the last call.
    pub fn take_history_grew(&mut self) -> bool {
        std::mem::take(&mut self.history_grew)
    }

    /// Release events below every watermark into the ring; returns how many.
    pub fn release(&mut self) -> usize {
        let floor = self.watermarks.iter().copied().min().unwrap_or(0);
        let mut released = 0;
        while let Some(Reverse(Pending(e))) = self.pending.peek() {
            if e.offset >= floor {
                break;
            }
            let Some(Reverse(Pending(e))) = self.pending.pop() else {
                break;
            };
            self.pending_bytes -= event_bytes(&e);
            debug_assert!(self.ring.back().is_none_or(|last| last.offset < e.offset));
            self.ring_bytes += event_bytes(&e);
            if let Some(outbox) = &mut self.outbox {
                outbox.push(e.clone());
            }
            self.ring.push_back(e);
            released += 1;
        }
        // With nobody subscribed nothing needs the ring: keep it empty (a
        // later subscriber older than the floor reads the logs).
        self.wakers.retain(|w| w.strong_count() > 0);
        let keep_none = self.wakers.is_empty();
        if let (true, Some(seat)) = (keep_none, &self.seat) {
            seat.demand.set_watched(seat.core, false);
        }
        while keep_none
            || self.ring.len() > WATCH_RING_EVENTS_MAX
            || self.ring_bytes > WATCH_RING_BYTES_MAX
        {
            let Some(old) = self.ring.pop_front() else {
                break;
            };
            self.ring_bytes -= event_bytes(&old);
            debug_assert!(
                old.offset >= self.ring_floor,
                "the ring floor never goes down"
            );
            self.ring_floor = old.offset + 1;
        }
        self.released_upto = self.released_upto.max(floor);
        released
    }

    /// Shards whose watermark holds back the oldest pending event, not yet
    /// asked to advance. Marks them as asked.
    pub fn shards_to_advance(&mut self) -> Vec<usize> {
        let Some(Reverse(Pending(oldest))) = self.pending.peek() else {
            return Vec::new();
        };
        let offset = oldest.offset;
        let mut out = Vec::new();
        for (shard, w) in self.watermarks.iter().enumerate() {
            if *w <= offset && !self.advance_asked[shard] {
                self.advance_asked[shard] = true;
                out.push(shard);
            }
        }
        out
    }

    /// Every event with offset < this has been released.
    pub fn released_upto(&self) -> u64 {
        self.released_upto
    }

    pub fn ring_floor(&self) -> u64 {
        self.ring_floor
    }

    /// Released events with offset ≥ `from`, oldest first, at most `max`.
    /// `None` when `from` is older than the ring holds.
    pub fn events_from(&self, from: u64, max: usize) -> Option<Vec<Arc<WatchEvent>>> {
        if from < self.ring_floor {
            return None;
        }
        let start = self.ring.partition_point(|e| e.offset < from);
        Some(self.ring.iter().skip(start).take(max).cloned().collect())
    }

    pub fn register_waker(&mut self, waker: &Rc<flume::Sender<()>>) {
        self.wakers.retain(|w| w.strong_count() > 0);
        self.wakers.push(Rc::downgrade(waker));
        if let Some(seat) = &self.seat {
            seat.demand.set_watched(seat.core, true);
        }
    }

    /// Wake every connection that has subscriptions.
    pub fn wake_all(&mut self) {
        self.wakers.retain(|w| match w.upgrade() {
            Some(tx) => {
                let _ = tx.try_send(());
                true
            }
            None => false,
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An event at `offset` (also for `merge_task`'s tests).
    pub(crate) fn ev(offset: u64) -> Arc<WatchEvent> {
        Arc::new(WatchEvent {
            offset,
            instance_id: format!("i{offset}"),
            machine: "m".into(),
            version: 1,
            from_state: "a".into(),
            to_state: "b".into(),
            event: "E".into(),
            payload_json: b"null".to_vec(),
            ctx_json: b"{}".to_vec(),
            wire: Default::default(),
        })
    }

    fn publication(shard: usize, offsets: &[u64], watermark: u64) -> Publication {
        Publication {
            shard,
            events: offsets.iter().map(|&o| ev(o)).collect(),
            watermark,
            history_upto: 0,
        }
    }

    /// The offsets of the released events from `from` on (at most 10).
    fn offsets_from(m: &Merger, from: u64) -> Vec<u64> {
        let events = m.events_from(from, 10).expect("in the ring");
        events.iter().map(|e| e.offset).collect()
    }

    fn watched(m: &mut Merger) -> Rc<flume::Sender<()>> {
        let (tx, _rx) = flume::bounded(1);
        let tx = Rc::new(tx);
        m.register_waker(&tx);
        tx
    }

    #[test]
    fn events_are_released_in_offset_order_only_below_every_watermark() {
        let mut m = Merger::new(vec![0, 0]);
        let _w = watched(&mut m);
        m.accept(publication(0, &[10, 30], 31));
        assert_eq!(m.release(), 0, "shard 1 may still produce lower offsets");
        assert_eq!(m.shards_to_advance(), vec![1]);
        assert_eq!(m.shards_to_advance(), Vec::<usize>::new(), "asked once");
        m.accept(publication(1, &[20], 25));
        assert_eq!(m.release(), 2);
        let got = offsets_from(&m, 0);
        assert_eq!(got, vec![10, 20]);
        m.accept(publication(1, &[], 100));
        m.release();
        let got = offsets_from(&m, 21);
        assert_eq!(got, vec![30]);
        assert_eq!(m.released_upto(), 31);
    }

    #[test]
    fn without_subscribers_the_ring_stays_empty() {
        let mut m = Merger::new(vec![0]);
        m.accept(publication(0, &[5, 6, 7], 100));
        assert_eq!(m.release(), 3);
        assert_eq!(m.ring_floor(), 8);
        assert!(m.events_from(5, 10).is_none(), "gone: read from the logs");
    }

    #[test]
    fn the_ring_is_bounded_in_bytes() {
        let mut m = Merger::new(vec![0]);
        let _w = watched(&mut m);
        let big = |offset: u64| {
            let mut e = (*ev(offset)).clone();
            e.ctx_json = vec![b' '; 1024 * 1024];
            Arc::new(e)
        };
        m.accept(Publication {
            shard: 0,
            events: (1..=40).map(big).collect(),
            watermark: u64::MAX,
            history_upto: 0,
        });
        m.release();
        assert!(m.ring_bytes <= WATCH_RING_BYTES_MAX);
        assert!(m.ring_floor() > 1);
    }

    #[test]
    fn a_restarted_merge_starts_above_every_shards_history() {
        let m = Merger::new(vec![500, 300]);
        assert_eq!(m.released_upto(), 500);
        assert!(
            m.events_from(100, 1).is_none(),
            "history is read from the logs"
        );
        assert!(
            m.events_from(300, 1).is_none(),
            "shard 0 may hold records in [300, 500): from the logs too"
        );
        assert!(m.events_from(500, 1).is_some());
    }

    #[test]
    fn a_lagging_shards_history_stays_in_the_logs_after_a_restart() {
        // A cluster node restarts: shard 1 applied up to 500, shard 0 (its
        // group lags) only to 300. Events of shard 0 in [300, 500) come
        // once it catches up — history for this merge, like shard 1's.
        let mut m = Merger::new(vec![300, 500]);
        m.accept(publication(0, &[320, 480], 490));
        m.release();
        assert!(m.take_history_grew(), "catch-up readers are woken");
        assert_eq!(m.ring_floor(), 500, "the ring floor never goes down");
        assert!(
            m.events_from(330, 10).is_none(),
            "a subscriber resuming at 330 reads [330, 500) from the logs"
        );
        let _w = watched(&mut m);
        m.accept(publication(0, &[310, 510], 600));
        m.accept(publication(1, &[505], 700));
        m.release();
        let got = offsets_from(&m, 500);
        assert_eq!(got, vec![505, 510], "only events at or above the start");
    }

    #[test]
    fn events_held_back_too_long_are_left_to_the_logs() {
        let mut m = Merger::new(vec![0, 0]);
        let _w = watched(&mut m);
        // Shard 1's watermark is held (a part in doubt); shard 0 goes on.
        m.accept(publication(1, &[], 1));
        let many: Vec<u64> = (10..11 + WATCH_PENDING_EVENTS_MAX as u64).collect();
        let newest = *many.last().expect("events");
        m.accept(publication(0, &many, newest + 1));
        m.release();
        assert!(m.pending.is_empty(), "nothing held in memory");
        assert_eq!(m.pending_bytes, 0);
        assert!(m.take_history_grew(), "catch-up readers are woken");
        assert!(
            m.events_from(10, 1).is_none(),
            "the stretch is read from the logs"
        );
        assert_eq!(
            (m.released_upto(), m.spilled_upto()),
            (newest + 1, newest + 1)
        );
        // The held shard's event comes once decided: history as well.
        m.accept(publication(1, &[5], newest + 10));
        m.release();
        assert!(offsets_from(&m, newest + 1).is_empty());
        // Later events flow through the ring again.
        m.accept(publication(0, &[newest + 5], newest + 10));
        m.release();
        assert_eq!(offsets_from(&m, newest + 1), vec![newest + 5]);
    }

    #[test]
    fn a_replica_leaves_to_the_logs_what_its_primary_spilled() {
        let mut r = Merger::new(vec![0]);
        let _w = watched(&mut r);
        r.accept(publication(0, &[3, 4], 5));
        r.release();
        assert_eq!(offsets_from(&r, 3), vec![3, 4]);
        r.accept(Publication {
            shard: 0,
            events: Vec::new(),
            watermark: 100,
            history_upto: 100,
        });
        r.release();
        assert!(r.events_from(4, 1).is_none(), "read from the logs");
        assert_eq!((r.ring_floor(), r.released_upto()), (100, 100));
    }

    #[test]
    fn the_ring_is_bounded_and_reports_what_it_dropped() {
        let mut m = Merger::new(vec![0]);
        let _w = watched(&mut m);
        let offsets: Vec<u64> = (1..=(WATCH_RING_EVENTS_MAX as u64 + 10)).collect();
        m.accept(publication(0, &offsets, u64::MAX));
        m.release();
        assert_eq!(m.ring_floor(), 11);
        assert!(m.events_from(5, 1).is_none());
        assert_eq!(m.events_from(11, 1).unwrap()[0].offset, 11);
    }
}
