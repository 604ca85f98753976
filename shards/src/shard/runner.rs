//! The shard's mailbox loop: open (recover) the shard, then forever take a
//! batch of messages, apply them in memory while staging their WAL records,
//! make the whole batch durable with one group commit, and only then answer.
//!
//! Answers of a batch — reads included — leave after its commit, so no
//! client can observe a change before it is on disk (DESIGN invariant 2).
//! Messages from one sender are handled in the order sent (flume is FIFO),
//! which gives per-connection, per-instance ordering (invariant 3).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future;

use super::command::{ListPage, Reply, ReplyTo, ShardMsg, ShardStats};
use super::replay::ReplayCounts;
use super::state::{now_ms, ShardState};
use crate::error::EngineResult;
use crate::shard::command::Command;
use crate::wal::recovery::{self, RecoveryError, ScanOutcome};
use crate::wal::{Frontier, FsyncPolicy, OffsetClock, WalWriter};

/// Most messages handled in one group commit.
pub const GROUP_COMMIT_MESSAGES_MAX: usize = 4096;
/// A group commit closes once this many record bytes are staged.
pub const GROUP_COMMIT_BYTES_MAX: usize = 8 * 1024 * 1024;
/// How often an idle shard wakes up to heartbeat (and run timers).
pub const SHARD_TICK_INTERVAL_MS: u64 = 250;

pub struct ShardConfig {
    pub id: usize,
    /// This shard's own directory (its WAL lives in `wal/` below it).
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
    pub segment_size_bytes: u64,
    pub allow_instance_recreate: bool,
    pub salvage: bool,
}

/// What opening a shard found, for the start-up log line.
#[derive(Debug, Clone)]
pub struct OpenReport {
    pub shard: usize,
    pub counts: ReplayCounts,
    pub scan: ScanOutcome,
    pub instances_active: u64,
    pub machines: Vec<Arc<crate::machine::definition::MachineDef>>,
}

pub struct Shard {
    state: ShardState,
    wal: WalWriter,
    heartbeat_ms: Arc<AtomicU64>,
}

enum Deferred {
    Conn(ReplyTo, EngineResult<Vec<u8>>),
    Install(flume::Sender<EngineResult<bool>>, EngineResult<bool>),
    List(flume::Sender<ListPage>, ListPage),
    Stats(flume::Sender<ShardStats>),
}

impl Shard {
    /// Recover the shard from its log and open it for appends.
    pub async fn open(
        cfg: &ShardConfig,
        frontier: Frontier,
        heartbeat_ms: Arc<AtomicU64>,
    ) -> Result<(Shard, OpenReport), String> {
        let wal_dir = cfg.dir.join("wal");
        std::fs::create_dir_all(&wal_dir)
            .map_err(|e| format!("cannot create {}: {e}", wal_dir.display()))?;
        let mut state = ShardState::new(cfg.id, cfg.allow_instance_recreate);
        let mut counts = ReplayCounts::default();
        let scan = recovery::scan(&wal_dir, cfg.salvage, |header, payload| {
            state.replay_record(header, payload, &mut counts)
        })
        .map_err(|e: RecoveryError| format!("shard {}: {e}", cfg.id))?;
        let clock = OffsetClock::new(cfg.id, scan.last_tick, frontier);
        let wal = WalWriter::open(
            &wal_dir,
            cfg.fsync,
            cfg.segment_size_bytes,
            scan.active_segment,
            scan.active_end,
            clock,
        )
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
        };
        heartbeat_ms.store(now_ms(), Ordering::Relaxed);
        Ok((
            Shard {
                state,
                wal,
                heartbeat_ms,
            },
            report,
        ))
    }

    /// Serve the mailbox until every sender is gone, then sync and return.
    pub async fn run(mut self, mailbox: flume::Receiver<ShardMsg>) {
        let mut deferred: Vec<Deferred> = Vec::with_capacity(256);
        let tick = Duration::from_millis(SHARD_TICK_INTERVAL_MS);
        loop {
            let wait = self.wal.sync_due_in().map_or(tick, |d| d.min(tick));
            let first = future::or(async { mailbox.recv_async().await.map(Some) }, async {
                glommio::timer::sleep(wait).await;
                Ok(None)
            })
            .await;
            match first {
                Err(_) => break,
                Ok(None) => {}
                Ok(Some(msg)) => {
                    let now = now_ms();
                    self.handle(msg, now, &mut deferred);
                    let mut handled = 1;
                    while handled < GROUP_COMMIT_MESSAGES_MAX
                        && self.wal.staged_bytes() < GROUP_COMMIT_BYTES_MAX
                    {
                        match mailbox.try_recv() {
                            Ok(msg) => self.handle(msg, now, &mut deferred),
                            Err(_) => break,
                        }
                        handled += 1;
                    }
                }
            }
            if self.wal.staged_records() > 0 {
                if let Err(e) = self.wal.commit().await {
                    fail_stop(self.state.shard_id, "WAL write failed", &e);
                }
            }
            for d in deferred.drain(..) {
                self.answer(d);
            }
            if let Err(e) = self.wal.sync_if_due().await {
                fail_stop(self.state.shard_id, "WAL sync failed", &e);
            }
            self.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
        }
        if let Err(e) = self.wal.sync().await {
            fail_stop(self.state.shard_id, "final WAL sync failed", &e);
        }
    }

    fn handle(&mut self, msg: ShardMsg, now: u64, deferred: &mut Vec<Deferred>) {
        let wal = &mut self.wal;
        match msg {
            ShardMsg::Exec { cmd, reply } => {
                let result = match cmd {
                    Command::Create(c) => self.state.create_instance(c, now, wal),
                    Command::Apply(c) => self.state.apply_event(c, now, wal),
                    Command::Delete(c) => self.state.delete_instance(c, now, wal),
                    Command::Get { instance_id } => self.state.get_instance(&instance_id),
                };
                deferred.push(Deferred::Conn(reply, result));
            }
            ShardMsg::InstallMachine {
                def,
                raw_definition,
                done,
            } => {
                let result = self.state.install_machine(def, &raw_definition, now, wal);
                deferred.push(Deferred::Install(done, result));
            }
            ShardMsg::List { query, done } => {
                let page = self.state.list_instances(&query);
                deferred.push(Deferred::List(done, page));
            }
            ShardMsg::Stats { done } => deferred.push(Deferred::Stats(done)),
        }
    }

    fn answer(&self, d: Deferred) {
        // A send fails only when the asker is gone (connection closed): the
        // change is durable regardless, and there is nobody left to tell.
        match d {
            Deferred::Conn(to, body) => {
                let _ = to.tx.send(Reply { seq: to.seq, body });
            }
            Deferred::Install(done, r) => {
                let _ = done.send(r);
            }
            Deferred::List(done, page) => {
                let _ = done.send(page);
            }
            Deferred::Stats(done) => {
                let _ = done.send(self.stats());
            }
        }
    }

    fn stats(&self) -> ShardStats {
        ShardStats {
            shard: self.state.shard_id,
            instances_active: self.state.active_instances,
            machines: self.state.machines.len() as u64,
            wal: self.wal.stats(),
            wal_segment_id: self.wal.segment_id(),
        }
    }
}

/// Memory is ahead of the log after a failed write: stop the process so that
/// recovery rebuilds a state that matches what is on disk. Nothing in the
/// failed group was acknowledged.
fn fail_stop(shard: usize, what: &str, err: &dyn std::fmt::Display) -> ! {
    let msg = format!("fatal: shard {shard}: {what}: {err}; stopping the server so that recovery restores a consistent state");
    tracing::error!("{msg}");
    eprintln!("corestate: {msg}");
    std::process::abort();
}
