//! What a shard tells the watch merge: its durable events, in offset
//! order, and its watermark — every event it publishes later has an offset
//! at or above it (`crate::wal::offset`, "Merging shards by offset").

use super::events::Publication;
use super::runner::Shard;
use super::txn::Prepared;
use crate::wal::offset::make_offset;

impl Shard {
    /// Send the durable events (in offset order) and the watermark.
    pub(super) fn publish(&mut self, publisher: Option<&flume::Sender<Publication>>) {
        self.publish_requested = false;
        let mut events = std::mem::take(&mut self.state.events);
        let Some(publisher) = publisher else { return };
        events.sort_unstable_by_key(|e| e.offset);
        let watermark = self.watermark();
        // Watchers merge shards by watermark: one going back, or an event
        // below one already published, lets the merge release events out of
        // order — and a watcher already past it never gets it. A bug if it
        // happens: stop a debug build, and name it in a release build's log
        // (a watch gap in the long cluster run is not explained yet).
        let late = events
            .first()
            .map(|e| e.offset)
            .filter(|&first| first < self.published_watermark);
        if watermark < self.published_watermark || late.is_some() {
            tracing::error!(
                "watch order violated: shard {}: watermark {watermark} after {} published, \
                 first event {late:?}; watchers may miss or misorder events",
                self.state.shard_id,
                self.published_watermark
            );
            debug_assert!(
                false,
                "shard {}: watermark went down from {} to {watermark}, or an event came late \
                 ({late:?})",
                self.state.shard_id, self.published_watermark
            );
        }
        self.published_watermark = watermark;
        let _ = publisher.send(Publication {
            shard: self.state.shard_id,
            events,
            watermark,
            history_upto: 0,
        });
    }

    /// Before a group's write and sync: publish how far this shard is
    /// settled — below the group's first offset (`watermark` counts staged
    /// records). Other shards' events under it need not wait for this sync
    /// to be released to watchers. Only when the merge asked (it holds
    /// events back for this shard), so a load nobody watches pays nothing.
    pub(super) fn announce_watermark(&mut self, publisher: Option<&flume::Sender<Publication>>) {
        let Some(publisher) = publisher else { return };
        // Events of this turn not yet published (a cross-shard batch
        // decided in it brings events with the offsets of its prepare,
        // which no longer hold the watermark back) go out after the
        // commit: the promise must stay below them.
        let unpublished = self.state.events.iter().map(|e| e.offset).min();
        let watermark = self.watermark().min(unpublished.unwrap_or(u64::MAX));
        if watermark > self.published_watermark {
            self.published_watermark = watermark;
            let _ = publisher.send(Publication {
                shard: self.state.shard_id,
                events: Vec::new(),
                watermark,
                history_upto: 0,
            });
        }
    }

    /// The watermark this shard may publish: below its next offset and below
    /// any event held by a prepared batch (or by a replicated shard's part
    /// in doubt).
    pub(super) fn watermark(&self) -> u64 {
        // A group member promises no more than its group's log holds: a
        // leader's clock runs ahead of its log, and a member that loses the
        // lead cannot take back a watermark it published — the next leader
        // (another node, another clock) starts above every committed tick,
        // not above this node's clock (`member_watermark.rs`).
        let committed = self
            .member
            .as_ref()
            .map_or(u64::MAX, |m| make_offset(m.position.last_tick + 1, 0));
        let held = self
            .txns
            .values()
            .filter_map(Prepared::min_event_offset)
            .min();
        self.wal
            .clock()
            .watermark()
            .min(held.unwrap_or(u64::MAX))
            .min(self.held_by_in_doubt().unwrap_or(u64::MAX))
            .min(self.wal.unwritten_floor().unwrap_or(u64::MAX))
            .min(committed)
    }
}
