//! How a member shard's watch watermark advances while its group is idle
//! (issue 14, item 7): WATCH_ALL on a node merges its shards' events by
//! offset and may release an event only once every shard's watermark is
//! past it — so an idle shard must not hold the merge back.
//!
//! * **A leader** promises with its clock, as a standalone shard does: it
//!   will assign no offset below it (`AdvanceWatermark` raises the clock).
//! * **A follower** takes its offsets from its leader and cannot promise
//!   anything by itself: its watermark moves only with the entries it
//!   applies. When its node's merge waits on it, it forwards the
//!   `AdvanceWatermark` to its leader, which answers by logging an empty
//!   Batch record — a **watermark entry**: no change to any instance, but
//!   its offset, applied on every member, raises each follower's clock
//!   and watermark past it.
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
/// How long a follower waits for the watermark entry it asked for before
/// it asks again (the leader changed, the request or the entry was lost).
pub const WATERMARK_ASK_AGAIN_MS: u64 = 100;

/// A member's watermark requests.
#[derive(Debug, Default)]
pub struct WatermarkAsks {
    /// On a follower: when it last asked its leader for a watermark entry,
    /// while its merge still waits (cleared by the next entry applied).
    asked_at: Option<Duration>,
    /// On a leader: when it last staged a watermark entry.
    staged_at: Option<Duration>,
}

impl Shard {
    /// `AdvanceWatermark` on a member: `forwarded` when a follower of this
    /// group sent it here. `lead_ready` says whether this member may run a
    /// turn as the leader now (the caller checked); only then is a
    /// watermark entry staged (it goes out with the turn).
    pub(super) fn advance_member_watermark(&mut self, forwarded: bool, lead_ready: bool, now: u64) {
        match self.member().link.leadership() {
            Leadership::Leader { .. } => {
                self.raise_watermark();
                if forwarded && lead_ready {
                    self.stage_watermark_entry(now);
                }
            }
            // Not published now (the merge would only ask again at once):
            // the leader's entry moves the watermark, and applying it
            // publishes.
            Leadership::Follower { .. } if !forwarded => {
                if self.member().watermark.asked_at.is_none() {
                    self.ask_leader_for_watermark();
                }
            }
            Leadership::Follower { .. } => {}
        }
    }

    /// On a follower whose merge still waits: ask the leader again when
    /// the last request went unanswered for `WATERMARK_ASK_AGAIN_MS`.
    pub(super) fn ask_again_for_watermark(&mut self) {
        let Some(asked) = self.member().watermark.asked_at else {
            return;
        };
        let again = Duration::from_millis(WATERMARK_ASK_AGAIN_MS);
        if self.env.clock.elapsed(asked) >= again {
            self.ask_leader_for_watermark();
        }
    }

    /// An entry was applied: the watermark moved, nothing is owed.
    pub(super) fn watermark_moved(&mut self) {
        self.member_mut().watermark.asked_at = None;
        self.publish_requested = true;
    }

    fn ask_leader_for_watermark(&mut self) {
        let link = self.member().link.clone();
        self.member_mut().watermark.asked_at = Some(self.env.clock.monotonic());
        if let Leadership::Follower {
            leader: Some(leader),
        } = link.leadership()
        {
            // No answer comes back: the entry does, or we ask again.
            let _ = link.forward(leader, ShardMsg::AdvanceWatermark);
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
