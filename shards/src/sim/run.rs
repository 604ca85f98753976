//! One simulation run: a seed picks the server's shape (1–4 shards, fsync
//! policy, segment size, automatic compaction), the disk's faults and the
//! schedule; simulated clients load the server; it is crashed (power loss
//! or kill) or stopped at random instants — inside group commits, snapshot
//! writes, two-phase commits — and restarted; after every restart the
//! recovered server is checked against the model:
//!
//! * nothing acknowledged or observed is lost, nothing never acknowledged
//!   appears out of nowhere (`Model::recovered`);
//! * every atomic batch is all-or-nothing (`Model::check_batches`);
//! * each shard's offsets strictly increase, all are unique and carry the
//!   shard's id;
//! * a watch replay from the oldest retained offset has exactly the applies
//!   the recovered instances went through, in offset order, once each;
//! * damage planted in a synced record refuses start-up naming the file,
//!   and `--salvage` then starts, saying what it dropped.
//!
//! A failure is returned with the seed and a trace; the same seed replays
//! it exactly.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::clock::SimClock;
use super::disk::{CrashKind, Faults, SimDisk};
use super::executor::{Executor, Stopped};
use super::model::Model;
use super::rng::Rng;
use super::workload::{client, Clients};
use super::world::{policy, StartError, World, WorldConfig};
use crate::shard::AutoCompaction;
use crate::wal::FsyncPolicy;

/// Steps one phase of a run may take at most.
const PHASE_STEPS_MAX: u64 = 3_000_000;

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    pub seed: u64,
    pub shards: usize,
    pub policy: String,
    pub crashes: u64,
    pub power_losses: u64,
    pub kills: u64,
    pub graceful_stops: u64,
    pub fail_stops: u64,
    /// Start-ups that refused on an injected disk fault (and were retried).
    pub start_refusals: u64,
    pub damage_refusals: u64,
    pub salvages: u64,
    pub requests_answered: u64,
    pub instances: u64,
    pub batches_committed: u64,
    pub in_doubt_resolved: u64,
    pub disk: super::disk::DiskStats,
}

/// A run's shape, drawn from the seed.
struct Shape {
    cfg: WorldConfig,
    faults: Faults,
    rounds: u64,
}

fn shape(rng: &mut Rng) -> Shape {
    let shards = 1 + rng.index(4);
    let fsync = policy(rng);
    let segment_size_bytes = [64 * 1024, 256 * 1024, 1024 * 1024][rng.index(3)];
    let auto_compaction = rng.chance(500).then(|| AutoCompaction {
        events_threshold: 50 + rng.below(200),
        size_threshold_bytes: 0,
        min_interval: Duration::from_millis(rng.below(50)),
    });
    let faulty = rng.chance(300);
    let faults = Faults {
        write_eio_per_million: if faulty { rng.below(3_000) } else { 0 },
        sync_eio_per_million: if faulty { rng.below(3_000) } else { 0 },
        short_write_per_million: if faulty { rng.below(2_000) } else { 0 },
        latency_max_us: rng.below(300),
        // A disk that fills: room for every shard's first segment and a
        // little more, so rollovers and snapshots run out of space.
        capacity_bytes: if rng.chance(100) {
            shards as u64 * segment_size_bytes + rng.below(2 * segment_size_bytes)
        } else {
            0
        },
    };
    Shape {
        cfg: WorldConfig {
            shards,
            fsync,
            segment_size_bytes,
            auto_compaction,
        },
        faults,
        rounds: 2 + rng.below(4),
    }
}

pub(super) struct Run {
    pub(super) seed: u64,
    pub(super) rng: Rng,
    pub(super) world: World,
    pub(super) model: Rc<RefCell<Model>>,
    pub(super) next_instance: Rc<RefCell<u64>>,
    pub(super) report: RunReport,
    pub(super) trace: Rc<RefCell<Vec<String>>>,
    /// Per shard, the offset from which its log must hold every write in
    /// place: a salvage moves it past what it cut.
    pub(super) floors: Vec<u64>,
}

impl Run {
    pub(super) fn note(&mut self, what: String) {
        let now = self.world.clock.now_ns() / 1000;
        if std::env::var("CORESTATE_SIM_DEBUG").is_ok() {
            eprintln!("NOTE [t={now}us] {what}");
        }
        self.trace.borrow_mut().push(format!("[t={now}us] {what}"));
    }

    pub(super) fn fail(&self, what: impl std::fmt::Display) -> String {
        let lines = if std::env::var("CORESTATE_SIM_SEED").is_ok() {
            400
        } else {
            40
        };
        let trace = self.trace.borrow();
        let tail: Vec<&str> = trace
            .iter()
            .rev()
            .take(lines)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!(
            "simulation seed {} failed: {what}\nreplay: CORESTATE_SIM_SEED={} cargo test -p shards --lib sim::tests::replay -- --nocapture\nlast events:\n  {}",
            self.seed,
            self.seed,
            tail.join("\n  ")
        )
    }

    pub(super) fn clients(&self) -> Rc<Clients> {
        Rc::new(Clients {
            model: self.model.clone(),
            mailboxes: self.world.mailboxes.clone(),
            failures: Rc::new(RefCell::new(Vec::new())),
            answered: Rc::new(RefCell::new(0)),
            next_instance: self.next_instance.clone(),
            trace: self.trace.clone(),
        })
    }

    /// Run a task of the current incarnation to its end (or a fail-stop).
    pub(super) fn drive<F: std::future::Future<Output = ()> + 'static>(
        &mut self,
        fut: F,
    ) -> Stopped {
        let done = Rc::new(RefCell::new(false));
        let flag = done.clone();
        self.world.exec.spawn(
            self.world.incarnation,
            Box::pin(async move {
                fut.await;
                *flag.borrow_mut() = true;
            }),
        );
        self.world
            .exec
            .run_until(PHASE_STEPS_MAX, || *done.borrow())
    }

    pub(super) fn start(&mut self) -> Result<(), String> {
        for attempt in 1.. {
            match self.world.start(false) {
                Ok(()) => break,
                // A fault hit recovery's own I/O: the server stopped (or
                // refused to start); it is started again, as an operator
                // would — and from the third attempt on, on a healthy disk.
                Err(StartError::FailStop(msg)) => {
                    self.report.fail_stops += 1;
                    self.note(format!("fail-stop during start-up: {msg}"));
                }
                Err(StartError::Refused(msg)) if msg.contains("simulated") => {
                    self.report.start_refusals += 1;
                    self.note(format!("start-up refused on a disk fault: {msg}"));
                }
                Err(e) => return Err(self.fail(format!("start-up failed: {e:?}"))),
            }
            self.world.crash(CrashKind::ProcessKill, &mut self.rng);
            if attempt >= 2 {
                self.world.disk.set_faults(Faults::default());
            }
        }
        self.report.in_doubt_resolved += self.world.resolved.len() as u64;
        let scans: Vec<String> = self
            .world
            .reports
            .iter()
            .map(|r| {
                format!(
                    "shard {}: {} records, end {}:{}, torn {:?}, salvage {:?}",
                    r.shard,
                    r.scan.records,
                    r.scan.active_segment,
                    r.scan.active_end,
                    r.scan
                        .torn_tail
                        .as_ref()
                        .map(|t| (t.position, t.bytes_zeroed)),
                    r.scan
                        .salvage
                        .as_ref()
                        .map(|s| (s.position, s.records_dropped))
                )
            })
            .collect();
        self.note(format!("recovered: {}", scans.join("; ")));
        self.note(format!(
            "started incarnation {} ({} batch part(s) resolved)",
            self.world.incarnation,
            self.world.resolved.len()
        ));
        Ok(())
    }

    pub(super) fn load(&mut self) -> Result<(), String> {
        let clients = self.clients();
        let count = 1 + self.rng.below(4);
        let ops = 20 + self.rng.below(120);
        for _ in 0..count {
            let (c, r) = (clients.clone(), self.rng.fork());
            self.world
                .exec
                .spawn(self.world.incarnation, Box::pin(client(c, r, ops)));
        }
        // Crash at a random instant of the load (or let it finish).
        let window = Duration::from_micros(200 + self.rng.below(60_000));
        let stopped = self.world.exec.run_for(window, PHASE_STEPS_MAX);
        self.report.requests_answered += *clients.answered.borrow();
        if let Some(f) = clients.failures.borrow().first() {
            return Err(self.fail(f));
        }
        if stopped == Stopped::FailStop {
            for (_, msg) in self.world.exec.take_fail_stops() {
                self.report.fail_stops += 1;
                self.note(format!("fail-stop: {msg}"));
            }
        }
        Ok(())
    }

    pub(super) fn down(&mut self) {
        self.report.crashes += 1;
        let every_write = self.world.cfg.fsync == FsyncPolicy::EveryWrite;
        match self.rng.below(10) {
            0 => {
                self.report.graceful_stops += 1;
                self.note("graceful stop".into());
                self.world.shut_down();
                for (_, msg) in self.world.exec.take_fail_stops() {
                    self.note(format!("fail-stop while stopping: {msg}"));
                }
            }
            // Other policies acknowledge before the sync: only a process
            // kill keeps their promise.
            n if n < 6 && every_write => {
                self.report.power_losses += 1;
                self.note("power loss".into());
                self.world.crash(CrashKind::PowerLoss, &mut self.rng);
            }
            _ => {
                self.report.kills += 1;
                self.note("process killed".into());
                self.world.crash(CrashKind::ProcessKill, &mut self.rng);
            }
        }
        self.model.borrow_mut().crashed();
    }
}

/// Run one seed; `Err` describes the first violation.
pub fn run(seed: u64) -> Result<RunReport, String> {
    let mut rng = Rng::new(seed);
    let shape = shape(&mut rng);
    let clock = Arc::new(SimClock::new(1_767_225_600_000_000 + rng.below(1 << 40)));
    let exec = Rc::new(Executor::new(clock.clone(), rng.fork()));
    let disk = SimDisk::new(Faults::default(), rng.fork(), exec.timers.clone(), clock);
    let world = World::new(exec, disk, shape.cfg.clone());
    let mut run = Run {
        seed,
        rng,
        world,
        model: Rc::new(RefCell::new(Model::default())),
        next_instance: Rc::new(RefCell::new(0)),
        report: RunReport {
            seed,
            shards: shape.cfg.shards,
            policy: shape.cfg.fsync.to_string(),
            ..RunReport::default()
        },
        trace: Rc::new(RefCell::new(Vec::new())),
        floors: vec![0; shape.cfg.shards],
    };
    run.note(format!(
        "{} shard(s), fsync {}, {}-byte segments, compaction {:?}, faults {:?}",
        shape.cfg.shards,
        shape.cfg.fsync,
        shape.cfg.segment_size_bytes,
        shape.cfg.auto_compaction,
        shape.faults
    ));
    run.start()?;
    let clients = run.clients();
    if run.drive(async move {
        clients.put_machine().await;
    }) != Stopped::Done
    {
        return Err(run.fail("installing the machine did not finish"));
    }
    // Faults from here on: start-up and the machine are in place.
    run.world.disk.set_faults(shape.faults);
    for round in 0..shape.rounds {
        run.note(format!("round {round}"));
        run.load()?;
        run.audit()?;
        run.down();
        // Recovery's own writes meet the faults too, on some seeds.
        if !run.rng.chance(500) {
            run.world.disk.set_faults(Faults::default());
        }
        run.start()?;
        run.audit()?;
        run.check_instances(false)?;
        run.check_logs()?;
        if run.rng.chance(120) {
            // On a healthy disk: what is checked here is the refusal and
            // the salvage.
            run.world.disk.set_faults(Faults::default());
            run.world.shut_down();
            for (_, msg) in run.world.exec.take_fail_stops() {
                run.note(format!("fail-stop while stopping: {msg}"));
            }
            run.damage_and_salvage()?;
            run.check_instances(true)?;
        }
        run.world.disk.set_faults(shape.faults);
    }
    run.report.batches_committed = run
        .model
        .borrow()
        .batches
        .values()
        .filter(|b| **b == super::model::BatchOutcome::Committed)
        .count() as u64;
    run.report.disk = run.world.disk.stats();
    Ok(run.report)
}
