//! How a member shard's watch watermark advances while its group is idle
//! (issue 14, item 7): WATCH_ALL on a node merges its shards' events by
//! offset and may release an event only once every shard's watermark is
//! past it — so an idle shard must not hold the merge back.
//!
//! * **No member promises with its clock.** A standalone shard's watermark
//!   is its clock: it alone assigns its offsets. A group's leader could
//!   promise the same only while it leads — once it loses the lead, the
//!   next leader (another node, another clock, perhaps behind) may assign
//!   offsets below what this node's merge already released. So a member's
//!   watermark is capped by the highest tick its group has committed
//!   (`Shard::watermark`), and every new leader starts above every
//!   committed tick (it applies the entries of earlier terms before its
//!   first turn, `lead_check`, and each applied record raises its clock).
//! * **A watermark entry** moves an idle group: an empty Batch record the
//!   leader logs, stamped ahead of its clock — no change to any instance,
//!   but its offset, committed and applied on every member, raises every
//!   member's watermark past it. The leader logs one when its own node's
//!   merge waits on the group; a follower forwards its node's
//!   `AdvanceWatermark` to the leader, which logs one the same way.
//! * **Cost**: only while a merge waits on an idle group — a node's
//!   watchers see another shard's events — and at most one entry per
//!   `WATERMARK_LOOKAHEAD_MS` per idle group: the entry's offset is set
//!   that far ahead of the leader's clock (the leader's later offsets start
//!   above it), so the merge releases that much time before it asks again.

use std::time::Duration;

use super::command::ShardMsg;
use super::group_link::Leadership;
use super::runner::Shard;
use crate::wal::offset::{wall_clock_tick, TICK_MICROS};
use crate::wal::record::RecordKind;

/// How far ahead of its clock a leader stamps a watermark entry, so that
/// an idle group's followers release other shards' events for that long
/// before their merge asks again (at most one entry per this, per idle
/// group).
pub const WATERMARK_LOOKAHEAD_MS: u64 = 20;
/// How long a member waits for the watermark entry its merge asked for
/// before it asks again (the leader changed, the request or the entry was
/// lost).
pub const WATERMARK_ASK_AGAIN_MS: u64 = 100;

/// A member's watermark requests.
#[derive(Debug, Default)]
pub struct WatermarkAsks {
    /// When this member last asked for a watermark entry on behalf of its
    /// node's merge (a follower asks its leader; a leader asks itself),
    /// while the merge still waits (cleared by the next entry applied).
    asked_at: Option<Duration>,
    /// On a leader: when it last staged a watermark entry.
    staged_at: Option<Duration>,
}

impl Shard {
    /// `AdvanceWatermark` on a member: `forwarded` when a follower of this
    /// group sent it here. `lead_ready` says whether this member may run a
    /// turn as the leader now (the caller checked); only then is a
    /// watermark entry staged (it goes out with the turn, and the
    /// watermark moves when the turn is committed). Nothing is published
    /// now — the watermark has not moved, and the merge would only ask
    /// again at once: applying the entry publishes.
    pub(super) fn advance_member_watermark(&mut self, forwarded: bool, lead_ready: bool, now: u64) {
        let leads = matches!(self.member().link.leadership(), Leadership::Leader { .. });
        if leads && lead_ready {
            self.stage_watermark_entry(now);
        }
        // The merge that asked is this node's: note the ask, so that it is
        // made again if no entry comes of it (`ask_again_for_watermark`).
        if !forwarded && self.member().watermark.asked_at.is_none() {
            self.ask_for_watermark();
        }
    }

    /// While this node's merge still waits: ask again when the last ask
    /// brought no entry within `WATERMARK_ASK_AGAIN_MS` — on a leader,
    /// once it may stage the next entry (an ask that came while the last
    /// one was recent staged nothing).
    pub(super) fn ask_again_for_watermark(&mut self) {
        let Some(asked) = self.member().watermark.asked_at else {
            return;
        };
        let again = match self.member().link.leadership() {
            Leadership::Leader { .. } => Duration::from_millis(WATERMARK_LOOKAHEAD_MS) / 2,
            Leadership::Follower { .. } => Duration::from_millis(WATERMARK_ASK_AGAIN_MS),
        };
        if self.env.clock.elapsed(asked) >= again {
            self.ask_for_watermark();
        }
    }

    /// An entry was applied: the watermark moved, nothing is owed.
    pub(super) fn watermark_moved(&mut self) {
        self.member_mut().watermark.asked_at = None;
        self.publish_requested = true;
    }

    /// A follower forwards the ask to its leader; a leader publishes its
    /// (unchanged) watermark, which makes the merge send `AdvanceWatermark`
    /// again if it still waits — and that one stages an entry.
    fn ask_for_watermark(&mut self) {
        let link = self.member().link.clone();
        let first_ask = self.member().watermark.asked_at.is_none();
        self.member_mut().watermark.asked_at = Some(self.env.clock.monotonic());
        match link.leadership() {
            Leadership::Follower {
                leader: Some(leader),
            } => {
                // No answer comes back: the entry does, or we ask again.
                let _ = link.forward(leader, ShardMsg::AdvanceWatermark);
            }
            Leadership::Leader { .. } if !first_ask => self.publish_requested = true,
            _ => {}
        }
    }

    /// Stage an empty Batch record `WATERMARK_LOOKAHEAD_MS` ahead of the
    /// clock, unless one was staged within half that (it covers this
    /// request too).
    fn stage_watermark_entry(&mut self, now: u64) {
        let lookahead = Duration::from_millis(WATERMARK_LOOKAHEAD_MS);
        let recent = self
            .member()
            .watermark
            .staged_at
            .is_some_and(|at| self.env.clock.elapsed(at) < lookahead / 2);
        if recent {
            return;
        }
        let ahead = lookahead.as_micros() as u64 / TICK_MICROS;
        let target = wall_clock_tick(&*self.env.clock) + ahead;
        self.wal.clock_mut().observe_tick(target);
        if let Err(e) = self.wal.append(RecordKind::Batch, now, |_| {}) {
            // Staging into memory failed: the turn would log nothing sane.
            self.fail_stop("staging a watermark entry failed", &e);
        }
        let at = self.env.clock.monotonic();
        self.member_mut().watermark.staged_at = Some(at);
    }
}
