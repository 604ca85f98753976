//! Targeted scenarios on the simulated disk: one situation the random runs
//! found (or might take long to find), set up on purpose and checked.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use serde_json::json;

use super::clock::SimClock;
use super::disk::{CrashKind, Faults, SimDisk};
use super::executor::{Executor, Stopped};
use super::rng::Rng;
use super::workload::{machine_definition, MACHINE};
use super::world::{World, WorldConfig};
use crate::machine::definition::parse_definition;
use crate::shard::{Command, CreateInstance, ReplyTo, ShardMsg};
use crate::wal::FsyncPolicy;

/// Steps a scenario phase may take at most.
const SCENARIO_STEPS_MAX: u64 = 2_000_000;

fn world(seed: u64, segment_size_bytes: u64) -> World {
    let mut rng = Rng::new(seed);
    let clock = Arc::new(SimClock::new(1_767_225_600_000_000));
    let exec = Rc::new(Executor::new(clock.clone(), rng.fork()));
    let disk = SimDisk::new(Faults::default(), rng.fork(), exec.timers.clone(), clock);
    World::new(
        exec,
        disk,
        WorldConfig {
            shards: 1,
            fsync: FsyncPolicy::EveryWrite,
            segment_size_bytes,
            auto_compaction: None,
        },
    )
}

/// Create `ids` at once (so they share group commits); the acknowledged ones.
fn create_all(world: &World, ids: Vec<String>) -> Vec<String> {
    let acked = Rc::new(RefCell::new(Vec::new()));
    let pending = Rc::new(RefCell::new(ids.len()));
    for id in ids {
        let (mailbox, acked, pending) =
            (world.mailboxes[0].clone(), acked.clone(), pending.clone());
        world.exec.spawn(
            world.incarnation,
            Box::pin(async move {
                let (tx, rx) = flume::bounded(1);
                let cmd = Command::Create(CreateInstance {
                    instance_id: id.clone(),
                    machine: MACHINE.into(),
                    version: 1,
                    initial_ctx: json!({"pad": "p".repeat(200)}),
                    idempotency_key: None,
                });
                let sent = mailbox.send(ShardMsg::Exec {
                    cmd,
                    reply: ReplyTo::internal(tx, 0),
                });
                if sent.is_ok() && matches!(rx.recv_async().await, Ok(r) if r.body.is_ok()) {
                    acked.borrow_mut().push(id);
                }
                *pending.borrow_mut() -= 1;
            }),
        );
    }
    let stopped = world
        .exec
        .run_until(SCENARIO_STEPS_MAX, || *pending.borrow() == 0);
    assert_eq!(stopped, Stopped::Done);
    acked.take()
}

fn install_machine(world: &World) {
    let def = Arc::new(parse_definition(MACHINE, 1, &machine_definition()).unwrap());
    let (tx, rx) = flume::bounded(1);
    world.mailboxes[0]
        .send(ShardMsg::InstallMachine {
            raw_definition: Arc::new(def.normalized_value()),
            def,
            done: tx,
        })
        .unwrap();
    let stopped = world.exec.run_until(SCENARIO_STEPS_MAX, || !rx.is_empty());
    assert_eq!(stopped, Stopped::Done);
    rx.try_recv().unwrap().unwrap();
}

/// Found by the campaign (seed 2122): a group commit whose records fill the
/// active segment and continue in the next one synced only the new segment
/// before answering, so a power loss dropped acknowledged records at the end
/// of the old one.
#[test]
fn a_group_that_spans_a_rollover_is_durable_in_both_segments() {
    for seed in 1..=8 {
        let mut w = world(seed, 64 * 1024);
        w.start(false).unwrap();
        install_machine(&w);
        let mut acked = Vec::new();
        // Bursts of creates until the log is well into its third segment,
        // so several groups cross a segment boundary.
        for burst in 0..60 {
            let ids = (0..12).map(|i| format!("s{seed}-b{burst}-{i}")).collect();
            acked.extend(create_all(&w, ids));
        }
        let mut rng = Rng::new(seed);
        w.crash(CrashKind::PowerLossUnsyncedGone, &mut rng);
        if let Err(e) = w.start(false) {
            panic!("seed {seed}: start-up after a power loss failed: {e:?}");
        }
        assert!(
            w.reports[0].scan.segments >= 3,
            "seed {seed}: {:?}",
            w.reports[0].scan
        );
        let active = w.reports[0].instances_active as usize;
        assert_eq!(
            active,
            acked.len(),
            "seed {seed}: acknowledged creates lost"
        );
    }
}
