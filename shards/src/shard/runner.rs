//! The shard's mailbox loop: open (recover) the shard, then forever take a
//! batch of messages, apply them in memory while staging their WAL records,
//! make the whole batch durable with one group commit, and only then answer
//! and publish the batch's watch events.
//!
//! Answers of a batch — reads included — leave after its commit, so no
//! client can observe a change before it is on disk (invariant 2 of
//! docs/ARCHITECTURE.md).
//! Messages from one sender are handled in the order sent (flume is FIFO),
//! which gives per-connection, per-instance ordering (invariant 3).
//! Messages that touch an instance locked by a prepared cross-shard batch
//! are parked, in order, until the batch is decided (`participant.rs`).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future;
use hashbrown::HashMap;

use super::command::{ShardMsg, ShardStats};
use super::committed_ids::CommittedIds;
use super::decisions::Decisions;
pub(super) use super::deferred::Deferred;
use super::events::Publication;
use super::replay::{ReplayCounts, TxnLog};
use super::state::ShardState;
use super::txn::Prepared;
use crate::env::Env;
use crate::wal::entry;
use crate::wal::reader::LogReader;
use crate::wal::record::RecordKind;
use crate::wal::recovery::{self, RecoveryError, ScanOutcome, ScanPlan};
use crate::wal::{CommitIo, Frontier, FsyncPolicy, OffsetClock, RolloverNews, WalOpen, WalWriter};

/// A turn of at most this many messages, with none waiting after it,
/// commits with blocking system calls (`CommitIo::Blocking`): at one
/// request at a time that costs a quarter less CPU per durable apply and
/// halves a `never` apply's latency; heavier turns stay on io_uring, where
/// blocking the core held back the watch merge (event p99 +1.5 ms at 16×16;
/// `bench-results/2026-12-06/blocking-sync-ab/`).
pub const BLOCKING_COMMIT_TURN_MESSAGES_MAX: usize = 4;

/// Most messages handled in one group commit.
pub const GROUP_COMMIT_MESSAGES_MAX: usize = 4096;
/// A group commit closes once this many record bytes are staged.
pub const GROUP_COMMIT_BYTES_MAX: usize = 8 * 1024 * 1024;
/// How often an idle shard wakes up to heartbeat (and run timers).
pub const SHARD_TICK_INTERVAL_MS: u64 = 250;
/// A loop turn stops taking messages after this long, commits what it has
/// and lets the executor run other tasks (the connections every acceptor
/// core serves beside its shard), however heavy the queued requests are —
/// requests waiting for their clients' answer budgets included.
pub const SHARD_TURN_TIME_MAX_US: u64 = 2_000;
// The turn looks at the clock after every message: a single GET of a 2 MiB
// instance takes milliseconds (tens in a debug build), so looking every few
// messages let turns run for seconds and starve the connections on the same
// core (tests/hardening/heavy_clients.rs); a look costs a vDSO clock read,
// tens of nanoseconds.

pub struct ShardConfig {
    pub id: usize,
    /// Automatic snapshot + compaction, if enabled.
    pub auto_compaction: Option<super::storage::AutoCompaction>,
    /// This shard's own directory (its WAL lives in `wal/` below it).
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
    pub segment_size_bytes: u64,
    pub allow_instance_recreate: bool,
    pub salvage: bool,
}

/// What opening a shard found, for the start-up log line and for resolving
/// cross-shard batches left in doubt by a crash.
#[derive(Debug, Clone)]
pub struct OpenReport {
    pub shard: usize,
    pub counts: ReplayCounts,
    pub scan: ScanOutcome,
    pub instances_active: u64,
    pub machines: Vec<Arc<crate::machine::definition::MachineDef>>,
    /// Prepared parts with no decision in this log: (txid, decider shard).
    pub in_doubt: Vec<(u64, u32)>,
    /// Batches this log records as committed.
    pub committed: CommittedIds,
    /// The snapshot recovery started from: its covered offset.
    pub snapshot_covered: Option<u64>,
    /// Every record this shard writes from now on has an offset ≥ this:
    /// where the watch merge starts.
    pub watermark: u64,
}

pub struct Shard {
    pub(super) state: ShardState,
    pub(super) wal: WalWriter,
    /// Loop turns so far: the watchdog's sign of progress.
    pub(super) heartbeat: Arc<AtomicU64>,
    /// Cross-shard parts prepared here and awaiting their decision.
    pub(super) txns: HashMap<u64, Prepared>,
    /// Instance → the batch that holds it.
    pub(super) locked: HashMap<String, u64>,
    pub(super) parked: VecDeque<ShardMsg>,
    /// Requests waiting for their clients' answer budgets (`admission.rs`).
    pub(super) waiting: super::admission::Waiting,
    /// Run the waiting requests this turn.
    pub(super) wake_waiting: bool,
    /// Prepared parts whose records are not applied: found undecided at
    /// recovery, or (a replicated shard) every part awaiting its decision;
    /// and, on a replicated shard, the batches its log committed
    /// (`member_txn.rs`).
    pub(super) txn_log: TxnLog,
    /// Decisions of the parts whose `Prepare` the log still holds.
    pub(super) decisions: Decisions,
    /// The last watermark published (it never goes down).
    pub(super) published_watermark: u64,
    pub(super) publish_requested: bool,
    /// Bytes one group commit stages at most: `GROUP_COMMIT_BYTES_MAX`, or
    /// half a segment for small segments (so a group rolls over at most once).
    pub(super) group_bytes_max: usize,
    /// Set by a Shutdown message: leave the loop after this group.
    pub(super) stopping: Option<flume::Sender<()>>,
    /// Opened on first use (watch catch-up, WAL reads, compaction).
    pub(super) reader: Option<LogReader>,
    pub(super) wal_dir: PathBuf,
    pub(super) storage: super::storage::StorageState,
    /// The disk, the clock and the executor (`crate::env`).
    pub(super) env: Env,
    /// Set when the shard is a member of a replicated group (`replica.rs`).
    pub(super) member: Option<super::member_side::MemberSide>,
}

impl Shard {
    /// Recover the shard from its log and open it for appends.
    pub async fn open(
        cfg: &ShardConfig,
        env: Env,
        frontier: Frontier,
        heartbeat: Arc<AtomicU64>,
    ) -> Result<(Shard, OpenReport), String> {
        let storage = &*env.storage;
        let wal_dir = cfg.dir.join("wal");
        storage
            .create_dir_all(&wal_dir)
            .map_err(|e| format!("cannot create {}: {e}", wal_dir.display()))?;
        crate::wal::retire::remove_retired(storage, &wal_dir)
            .map_err(|e| format!("shard {}: cleaning {}: {e}", cfg.id, wal_dir.display()))?;
        let snapshot = crate::snapshot::load_newest(storage, &cfg.dir)
            .map_err(|e| format!("shard {}: {e}", cfg.id))?;
        let (mut state, at) = match snapshot {
            Some((loaded, warnings)) => {
                for w in warnings {
                    tracing::warn!("shard {}: {w}; falling back to an older snapshot", cfg.id);
                }
                let at = loaded.data.position();
                (
                    loaded.data.into_state(cfg.allow_instance_recreate),
                    Some(at),
                )
            }
            None => (ShardState::new(cfg.id, cfg.allow_instance_recreate), None),
        };
        let covered = at.map(|a| a.covered_offset);
        let plan = ScanPlan {
            shard: cfg.id,
            salvage: cfg.salvage,
            covered,
            entries_covered: at.map_or(0, |a| a.entries),
            first_segment: None,
        };
        let mut counts = ReplayCounts::default();
        // Every commit in the log is kept: `resolve_in_doubt` reads them all.
        let mut txn_log = TxnLog {
            committed: CommittedIds::keeping(usize::MAX),
            ..TxnLog::default()
        };
        let mut decisions = Decisions::default();
        let scan = recovery::scan(storage, &wal_dir, plan, |header, payload| {
            decisions.note_record(header, payload)?;
            if covered.is_some_and(|c| header.offset <= c) {
                // Reflected in the snapshot; only batch decisions are noted,
                // for resolving other shards' parts left in doubt.
                if header.kind == RecordKind::Commit {
                    txn_log.committed.insert(entry::read_txid(payload)?);
                }
                return Ok(());
            }
            state.replay_any(header, payload, &mut counts, &mut txn_log)
        })
        .map_err(|e: RecoveryError| format!("shard {}: {e}", cfg.id))?;
        state.events.clear();
        let snapshot_tick = at.map_or(0, |a| a.last_tick);
        let last_tick = scan.last_tick.max(snapshot_tick);
        let clock = OffsetClock::new(cfg.id, last_tick, frontier, env.clock.clone());
        let open = WalOpen {
            policy: cfg.fsync,
            segment_size_bytes: cfg.segment_size_bytes,
            segment_id: scan.active_segment,
            end: scan.active_end,
            entries: scan.entries,
            // A salvaged log was cut: what the seal promised is gone.
            sealed: match scan.salvage {
                None => scan.manifest.and_then(|m| m.sealed),
                Some(_) => None,
            },
        };
        let wal = WalWriter::open(env.clone(), &wal_dir, open, clock)
            .await
            .map_err(|e| {
                format!(
                    "shard {}: cannot open WAL in {}: {e}",
                    cfg.id,
                    wal_dir.display()
                )
            })?;
        let report = OpenReport {
            shard: cfg.id,
            counts,
            scan,
            instances_active: state.active_instances,
            machines: state.machines.iter().cloned().collect(),
            in_doubt: txn_log
                .in_doubt
                .iter()
                .map(|(txid, (decider, _))| (*txid, *decider))
                .collect(),
            committed: txn_log.committed,
            snapshot_covered: covered,
            watermark: wal.clock().watermark(),
        };
        heartbeat.fetch_add(1, Ordering::Relaxed);
        let mut shard = Shard::assemble(cfg, env, state, wal, heartbeat, &report.scan);
        shard.txn_log.in_doubt = txn_log.in_doubt;
        shard.decisions = decisions;
        Ok((shard, report))
    }

    /// A shard around its recovered (or empty) state and its log writer.
    pub(super) fn assemble(
        cfg: &ShardConfig,
        env: Env,
        state: ShardState,
        wal: WalWriter,
        heartbeat: Arc<AtomicU64>,
        scan: &ScanOutcome,
    ) -> Shard {
        Shard {
            state,
            wal,
            heartbeat,
            txns: HashMap::new(),
            locked: HashMap::new(),
            parked: VecDeque::new(),
            waiting: Default::default(),
            group_bytes_max: GROUP_COMMIT_BYTES_MAX
                .min((cfg.segment_size_bytes / 2).max(1) as usize),
            wake_waiting: false,
            txn_log: TxnLog::default(),
            decisions: Decisions::default(),
            published_watermark: 0,
            publish_requested: false,
            stopping: None,
            reader: None,
            wal_dir: cfg.dir.join("wal"),
            storage: super::storage::StorageState::new(cfg, &env, scan),
            env,
            member: None,
        }
    }

    /// Serve the mailbox until every sender is gone, then sync and return.
    /// Durable events and watermarks go to `publisher` after each commit.
    pub async fn run(
        mut self,
        mailbox: flume::Receiver<ShardMsg>,
        publisher: Option<flume::Sender<Publication>>,
    ) {
        let mut deferred: Vec<Deferred> = Vec::with_capacity(256);
        let tick = Duration::from_millis(SHARD_TICK_INTERVAL_MS);
        loop {
            let wait = self
                .wal
                .sync_due_in()
                .map_or(tick, |d| d.min(tick))
                .min(self.storage.wait_hint());
            // Requests that were let through but did not fit in the last
            // turn run now, without waiting for a message.
            let wait = if self.wake_waiting {
                Duration::ZERO
            } else {
                wait
            };
            let first = future::or(async { mailbox.recv_async().await.map(Some) }, async {
                self.env.tasks.sleep(wait).await;
                Ok(None)
            })
            .await;
            let started = self.env.clock.monotonic();
            let turn = Duration::from_micros(SHARD_TURN_TIME_MAX_US);
            // Before staging anything: a rollover in this turn must not be
            // able to fail after records were staged.
            let news = self.wal.before_turn(self.group_bytes_max).await;
            self.note_rollover(news);
            let mut handled = 0;
            match first {
                Err(_) => break,
                Ok(None) => {}
                Ok(Some(msg)) => {
                    let now = self.env.clock.now_ms();
                    self.handle(msg, now, &mut deferred);
                    handled = 1;
                    while handled < GROUP_COMMIT_MESSAGES_MAX
                        && self.wal.staged_bytes() < self.group_bytes_max
                    {
                        if self.stopping.is_some() || self.env.clock.elapsed(started) >= turn {
                            break;
                        }
                        match mailbox.try_recv() {
                            Ok(msg) => self.handle(msg, now, &mut deferred),
                            Err(_) => break,
                        }
                        handled += 1;
                    }
                }
            }
            if self.wake_waiting || !self.waiting.is_empty() {
                let now = self.env.clock.now_ms();
                self.run_waiting(now, &mut deferred, started + turn);
            }
            // Always: with nothing staged it only forgets reserved offsets.
            let committed = self.wal.staged_records() > 0;
            if committed && self.publish_requested && self.wal.policy().acks_after_sync() {
                // The watch merge is waiting on this shard (it asked for a
                // watermark): do not make it wait for this group's sync too.
                self.announce_watermark(publisher.as_ref());
            }
            // A light turn and nothing waiting: block the shard's thread on
            // the write and sync rather than park it (`CommitIo`).
            let io = if handled <= BLOCKING_COMMIT_TURN_MESSAGES_MAX
                && mailbox.is_empty()
                && !self.wake_waiting
            {
                CommitIo::Blocking
            } else {
                CommitIo::Async
            };
            if let Err(e) = self.wal.commit_with(io).await {
                self.fail_stop("WAL write failed", &e);
            }
            for d in deferred.drain(..) {
                self.answer(d);
            }
            if committed || self.publish_requested || !self.state.events.is_empty() {
                self.publish(publisher.as_ref());
            }
            if let Err(e) = self.wal.sync_if_due().await {
                self.fail_stop("WAL sync failed", &e);
            }
            self.storage_turn();
            self.debug_check_turn();
            self.heartbeat.fetch_add(1, Ordering::Relaxed);
            if self.stopping.is_some() {
                break;
            }
            if !mailbox.is_empty() || self.wake_waiting {
                // The turn ended on its limits with work left: let the
                // executor's other tasks (the connections this core serves)
                // and their I/O run before the next one.
                self.env.tasks.yield_to_others().await;
            }
        }
        if let Err(e) = self.wal.sync().await {
            self.fail_stop("final WAL sync failed", &e);
        }
        // Everything is synced: say so, so that the next start treats damage
        // anywhere in this log as damage, never as a torn write.
        if let Err(e) = self.wal.seal() {
            tracing::warn!(
                "shard {}: could not seal the log's manifest: {e}",
                self.state.shard_id
            );
        }
        if let Some(done) = self.stopping.take() {
            let _ = done.send(());
        }
    }

    /// Log what changed about the next segment (a full disk, or space again).
    fn note_rollover(&self, news: RolloverNews) {
        match news {
            RolloverNews::Unchanged => {}
            RolloverNews::Failed(f) => tracing::warn!(
                "shard {}: cannot create WAL segment {}: {}; writes that need it fail with \
                 WAL_IO_ERROR (reads and watches go on) until it can be made (tried again every {} ms)",
                self.state.shard_id,
                f.segment,
                f.error,
                crate::wal::rollover::ROLLOVER_RETRY_MS
            ),
            RolloverNews::Recovered => tracing::info!(
                "shard {}: the next WAL segment could be created again; writes resume",
                self.state.shard_id
            ),
        }
    }

    /// Promise by the clock: no later offset of this shard falls below
    /// now (a standalone shard, or a group's leader), and publish it.
    pub(super) fn raise_watermark(&mut self) {
        self.wal.clock_mut().begin_group();
        self.publish_requested = true;
    }

    pub(super) fn stats(&mut self) -> ShardStats {
        let mut stats = ShardStats {
            shard: self.state.shard_id,
            instances_active: self.state.active_instances,
            machines: self.state.machines.len() as u64,
            wal: self.wal.stats(),
            wal_segment_id: self.wal.segment_id(),
            next_offset: self.wal.clock().peek_next(),
            waiting_for_budget: self.waiting.len() as u64,
            rollover_failing: self.wal.rollover_failing(),
            group: self.group_status(),
            turn_commit_latency: self
                .member
                .as_ref()
                .map(|m| m.turn_commit_latency)
                .unwrap_or_default(),
            ..ShardStats::default()
        };
        self.fill_log_stats(&mut stats);
        stats
    }
}

impl Shard {
    /// Memory is ahead of the log after a failed write or sync: stop the
    /// process so that recovery rebuilds a state that matches what is on
    /// disk. Nothing in the failed group was acknowledged. (After a failed
    /// `fdatasync` the kernel may have dropped the data it covered: retrying
    /// it could report success for lost pages, so nothing it covered may
    /// ever be acknowledged — see docs/ARCHITECTURE.md, "Failed syncs".)
    pub(super) fn fail_stop(&self, what: &str, err: &dyn std::fmt::Display) -> ! {
        self.env.fail_stop(self.state.shard_id, what, err)
    }
}
