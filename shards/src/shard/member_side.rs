//! A shard's side of its group membership (`replica.rs` runs it): what a
//! member keeps beside the state, and how a member shard is opened.

use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use hashbrown::HashMap;

use super::command::ShardMsg;
use super::group_link::{Deliveries, Delivery, GroupLink};
use super::member_read::OffsetIndex;
use super::member_read_back::ReadBack;
use super::member_snapshot::GroupSnapshotJob;
use super::member_watermark::WatermarkAsks;
use super::replay::ReplayCounts;
use super::runner::{OpenReport, Shard, ShardConfig};
use super::state::ShardState;
use crate::env::Env;
use crate::latency::LatencyHistogram;
use crate::snapshot::LogPosition;
use crate::wal::reader::ReadStats;
use crate::wal::{Frontier, OffsetClock, WalWriter};

/// A shard's side of its group membership.
pub struct MemberSide {
    pub(super) link: Rc<dyn GroupLink>,
    pub(super) deliveries: flume::Receiver<Delivery>,
    /// The last log index the state reflects (applied, or executed here
    /// and committed).
    pub(super) applied_index: u64,
    /// Where the shard's log stands as of `applied_index`.
    pub(super) position: LogPosition,
    /// Which applied entry holds which offsets (`member_read.rs`).
    pub(super) offsets: OffsetIndex,
    /// The term whose earlier entries this member has caught up with.
    pub(super) ready_term: Option<u64>,
    /// The index of this member's own turn, committed and not yet seen
    /// among the deliveries.
    pub(super) own_index: Option<u64>,
    /// Watermark entries asked for or staged (`member_watermark.rs`).
    pub(super) watermark: WatermarkAsks,
    /// A message a turn left for the next one to start with.
    pub(super) carried: Option<ShardMsg>,
    /// Parked requests unparked without room in their turn wait first in
    /// `Shard::parked` (`dispatch.rs`, `unpark`): the next turn runs them
    /// before it takes any new message.
    pub(super) parked_first: bool,
    /// A write this turn's entry had no room for, handed back by
    /// `run_admitted` (`LogSink::room_bytes`): it becomes `carried`.
    pub(super) not_run: Option<ShardMsg>,
    /// When each cross-shard part held in doubt here was prepared (or
    /// found, after a snapshot or restart): `member_txn.rs`.
    pub(super) prepared_at: HashMap<u64, Duration>,
    /// The group snapshot being taken (`member_snapshot.rs`).
    pub(super) snapshot_job: Option<GroupSnapshotJob>,
    /// The read of the log behind the installed snapshot, until taken in
    /// (`member_read_back.rs`).
    pub(super) read_back: Option<ReadBack>,
    /// This member's turns (as leader), from proposal to commit (metrics).
    pub(super) turn_commit_latency: LatencyHistogram,
    /// Reads of the group's log by offset (WAL_READ, watch catch-up) and
    /// the read-back at start, for WAL_STATS.
    pub(super) reads: ReadStats,
}

impl Shard {
    /// A shard that is a member of its group: empty until the group
    /// delivers its snapshot and committed entries (at start, openraft
    /// installs the newest snapshot and applies the log after it).
    pub fn open_member(
        cfg: &ShardConfig,
        env: Env,
        frontier: Frontier,
        heartbeat: Arc<AtomicU64>,
        link: Rc<dyn GroupLink>,
        deliveries: Deliveries,
    ) -> Shard {
        let clock = OffsetClock::new(cfg.id, 0, frontier, env.clock.clone());
        let wal = WalWriter::open_turns(env.clone(), clock, 0);
        let state = ShardState::new(cfg.id, cfg.allow_instance_recreate);
        let mut shard = Shard::assemble(cfg, env, state, wal, heartbeat, &Default::default());
        shard.member = Some(MemberSide {
            link,
            deliveries: deliveries.queue,
            applied_index: 0,
            position: LogPosition {
                covered_offset: 0,
                last_tick: 0,
                entries: 0,
            },
            ready_term: None,
            own_index: None,
            offsets: OffsetIndex::default(),
            watermark: WatermarkAsks::default(),
            carried: None,
            parked_first: false,
            not_run: None,
            prepared_at: HashMap::new(),
            snapshot_job: None,
            read_back: None,
            turn_commit_latency: LatencyHistogram::default(),
            reads: ReadStats::default(),
        });
        // The snapshot and entries the group replayed while it started:
        // history, as a standalone shard's recovery, not events to publish.
        for d in deliveries.early {
            shard.deliver(d);
        }
        shard.state.events.clear();
        shard
    }

    /// What the server's start-up reads of a shard, for a member: its
    /// state comes from the group (delivered after start), not from a scan.
    pub fn member_report(&self) -> OpenReport {
        OpenReport {
            shard: self.state.shard_id,
            counts: ReplayCounts::default(),
            scan: Default::default(),
            instances_active: self.state.active_instances,
            machines: self.state.machines.iter().cloned().collect(),
            in_doubt: Vec::new(),
            committed: Default::default(),
            snapshot_covered: None,
            watermark: self.wal.clock().watermark(),
        }
    }
}
