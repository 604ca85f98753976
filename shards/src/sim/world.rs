//! The server under simulation: its shards opened on the simulated disk,
//! their loops on the simulated executor, and what a crash does to them.
//! One incarnation of the server is one executor group: a crash drops the
//! whole group — shards, background jobs, in-flight client requests — as a
//! SIGKILL or a power loss drops a process.

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use super::clock::SimClock;
use super::disk::{CrashKind, SimDisk, SimStorage};
use super::executor::{Executor, Group, Stopped};
use super::rng::Rng;
use super::tasks::SimTasks;
use crate::coordinator::{resolve_in_doubt, Resolved};
use crate::env::Env;
use crate::shard::events::Publication;
use crate::shard::{AutoCompaction, OpenReport, Shard, ShardConfig, ShardMsg};
use crate::wal::{Frontier, FsyncPolicy};

/// Steps a start-up may take at most.
const START_STEPS_MAX: u64 = 2_000_000;

#[derive(Debug, Clone)]
pub struct WorldConfig {
    pub shards: usize,
    pub fsync: FsyncPolicy,
    pub segment_size_bytes: u64,
    pub auto_compaction: Option<AutoCompaction>,
}

pub struct World {
    pub exec: Rc<Executor>,
    pub disk: Arc<SimDisk>,
    pub clock: Arc<SimClock>,
    pub cfg: WorldConfig,
    /// The running incarnation's executor group (0: never started).
    pub incarnation: Group,
    pub mailboxes: Vec<flume::Sender<ShardMsg>>,
    pub publications: Option<flume::Receiver<Publication>>,
    pub reports: Vec<OpenReport>,
    pub resolved: Vec<Resolved>,
}

/// Why a start-up did not bring the server up.
#[derive(Debug)]
pub enum StartError {
    /// Recovery refused (damage, a missing file): its message.
    Refused(String),
    /// A shard fail-stopped during start-up.
    FailStop(String),
    /// Start-up did not finish.
    Stuck(Stopped),
}

pub fn shard_dir(id: usize) -> PathBuf {
    PathBuf::from(format!("/sim/data/shard-{id:03}"))
}

impl World {
    pub fn new(exec: Rc<Executor>, disk: Arc<SimDisk>, cfg: WorldConfig) -> World {
        World {
            clock: exec.clock.clone(),
            exec,
            disk,
            cfg,
            incarnation: 0,
            mailboxes: Vec::new(),
            publications: None,
            reports: Vec::new(),
            resolved: Vec::new(),
        }
    }

    pub fn env(&self, group: Group) -> Env {
        Env {
            storage: Arc::new(SimStorage(self.disk.clone())),
            clock: self.clock.clone(),
            tasks: Rc::new(SimTasks {
                exec: self.exec.clone(),
                group,
            }),
        }
    }

    fn shard_config(&self, id: usize, salvage: bool) -> ShardConfig {
        ShardConfig {
            id,
            auto_compaction: self.cfg.auto_compaction.clone(),
            dir: shard_dir(id),
            fsync: self.cfg.fsync,
            segment_size_bytes: self.cfg.segment_size_bytes,
            allow_instance_recreate: true,
            salvage,
        }
    }

    /// Open every shard (recovery), resolve batches left in doubt, and start
    /// the loops — as the server's start-up does.
    pub fn start(&mut self, salvage: bool) -> Result<(), StartError> {
        self.incarnation += 1;
        let group = self.incarnation;
        let frontier = Frontier::new();
        let (ready_tx, ready_rx) = flume::unbounded();
        let (publish_tx, publish_rx) = flume::unbounded();
        self.mailboxes.clear();
        for id in 0..self.cfg.shards {
            let (tx, rx) = flume::unbounded::<ShardMsg>();
            self.mailboxes.push(tx);
            let cfg = self.shard_config(id, salvage);
            let env = self.env(group);
            let (frontier, ready, publisher) =
                (frontier.clone(), ready_tx.clone(), publish_tx.clone());
            self.exec.spawn(
                group,
                Box::pin(async move {
                    let heartbeat = Arc::new(AtomicU64::new(0));
                    match Shard::open(&cfg, env, frontier, heartbeat).await {
                        Ok((shard, report)) => {
                            let _ = ready.send(Ok(report));
                            shard.run(rx, Some(publisher)).await;
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                        }
                    }
                }),
            );
        }
        drop(publish_tx);
        self.publications = Some(publish_rx);
        let shards = self.cfg.shards;
        let stopped = self
            .exec
            .run_until(START_STEPS_MAX, || ready_rx.len() == shards);
        if let Some((_, msg)) = self.exec.take_fail_stops().into_iter().next() {
            return Err(StartError::FailStop(msg));
        }
        if stopped != Stopped::Done {
            return Err(StartError::Stuck(stopped));
        }
        let mut reports = Vec::with_capacity(shards);
        for outcome in ready_rx.try_iter() {
            reports.push(outcome.map_err(StartError::Refused)?);
        }
        reports.sort_by_key(|r| r.shard);
        let (done_tx, done_rx) = flume::bounded(1);
        let (mailboxes, for_resolve) = (self.mailboxes.clone(), reports.clone());
        self.exec.spawn(
            group,
            Box::pin(async move {
                let _ = done_tx.send(resolve_in_doubt(&mailboxes, &for_resolve).await);
            }),
        );
        let stopped = self.exec.run_until(START_STEPS_MAX, || !done_rx.is_empty());
        if let Some((_, msg)) = self.exec.take_fail_stops().into_iter().next() {
            return Err(StartError::FailStop(msg));
        }
        match done_rx.try_recv() {
            Ok(Ok(resolved)) => self.resolved = resolved,
            Ok(Err(e)) => return Err(StartError::Refused(e.message)),
            Err(_) => return Err(StartError::Stuck(stopped)),
        }
        self.reports = reports;
        Ok(())
    }

    /// Take the server down, wherever its tasks were, and the machine with
    /// it for a power loss.
    pub fn crash(&mut self, kind: CrashKind, rng: &mut Rng) {
        self.exec.cancel_group(self.incarnation);
        self.mailboxes.clear();
        self.publications = None;
        self.disk.crash(kind, rng);
    }

    /// A graceful stop: every shard syncs, seals its log and leaves its loop.
    pub fn shut_down(&mut self) -> Stopped {
        let mut waits = Vec::new();
        for mailbox in &self.mailboxes {
            let (tx, rx) = flume::bounded(1);
            if mailbox.send(ShardMsg::Shutdown { done: tx }).is_ok() {
                waits.push(rx);
            }
        }
        let stopped = self
            .exec
            .run_until(START_STEPS_MAX, || waits.iter().all(|w| !w.is_empty()));
        self.exec.cancel_group(self.incarnation);
        self.mailboxes.clear();
        self.publications = None;
        stopped
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.mailboxes.clear();
        self.exec.cancel_all();
    }
}

/// The fsync policies the simulation runs under.
pub fn policy(rng: &mut Rng) -> FsyncPolicy {
    match rng.below(4) {
        0 => FsyncPolicy::EveryN(1 + rng.below(8)),
        1 => FsyncPolicy::EveryMs(1 + rng.below(20)),
        _ => FsyncPolicy::EveryWrite,
    }
}
