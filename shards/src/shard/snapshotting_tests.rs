//! Unit tests of `snapshotting.rs`: a fuzzy snapshot taken while the shard
//! keeps changing, plus the log after its covered offset, recovers exactly
//! the live state.

use crate::env::SystemClock;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::machine::definition::parse_definition;
use crate::shard::command::{ApplyEvent, Command, CreateInstance, DeleteInstance};
use crate::shard::replay::{ReplayCounts, TxnLog};
use crate::shard::state::test_sink::MemorySink;
use crate::shard::txn::BufferSink;
use crate::snapshot::decode_state;
use crate::snapshot::LogPosition;
use crate::wal::record::{decode_record, RecordStamp};

fn position(covered: u64) -> LogPosition {
    LogPosition {
        covered_offset: covered,
        last_tick: covered >> 6,
        entries: 0,
    }
}

const NOW_MS: u64 = 1_700_000_000_000;

fn counter() -> Value {
    json!({"states":["idle","busy"],"initial":"idle","transitions":[
        {"from":"idle","event":"GO","to":"busy"},
        {"from":"busy","event":"STOP","to":"idle"}]})
}

fn create(state: &mut ShardState, log: &mut MemorySink, id: &str) {
    let cmd = CreateInstance {
        instance_id: id.into(),
        machine: "counter".into(),
        version: 1,
        initial_ctx: json!({"n": 0}),
        idempotency_key: Some(format!("c-{id}")),
    };
    state.create_instance(cmd, NOW_MS, log).unwrap();
}

fn apply(id: &str, event: &str, n: u64) -> ApplyEvent {
    ApplyEvent {
        instance_id: id.into(),
        event: event.into(),
        payload: json!({"n": n}),
        expected_state: None,
        expected_wal_offset: None,
        event_id: None,
        idempotency_key: Some(format!("a-{id}-{n}")),
    }
}

/// Toggle an instance between its two states.
fn toggle(state: &mut ShardState, log: &mut MemorySink, id: &str, n: u64) {
    let event = if state.instances[id].state == "idle" {
        "GO"
    } else {
        "STOP"
    };
    state.apply_event(apply(id, event, n), NOW_MS, log).unwrap();
}

/// A shard state with the counter machine and instances `i0`..`i{n-1}`,
/// and the log that made it.
fn shard_with(n: usize) -> (ShardState, MemorySink) {
    let mut state = ShardState::new(0, false);
    let mut log = MemorySink::default();
    let def = Arc::new(parse_definition("counter", 1, &counter()).unwrap());
    state
        .install_machine(def, &counter(), NOW_MS, &mut log)
        .unwrap();
    for i in 0..n {
        create(&mut state, &mut log, &format!("i{i}"));
    }
    (state, log)
}

/// Recovery as the shard does it: decode the image, replay the records
/// after the covered offset.
fn recover(image: &[u8], log: &MemorySink, covered: u64) -> ShardState {
    let (mut state, header) = decode_state(image, false).unwrap();
    assert_eq!(header.covered_offset, covered);
    let (mut counts, mut txns) = (ReplayCounts::default(), TxnLog::default());
    let mut rest = &log.bytes[..];
    while !rest.is_empty() {
        let (h, payload) = decode_record(rest).unwrap();
        if h.offset > covered {
            state
                .replay_any(&h, payload, &mut counts, &mut txns)
                .unwrap();
        }
        rest = &rest[h.total_len()..];
    }
    state
}

/// Everything a snapshot must carry of an instance, comparable.
fn facts(i: &Instance) -> String {
    let keys: Vec<_> = i.applied_keys.iter().flat_map(|k| k.iter()).collect();
    format!(
        "{} v{} {} {} {:?} {} {} {} {:?} {:?} {:?}",
        i.machine.machine,
        i.machine.version,
        i.state,
        i.ctx,
        i.last_event_id,
        i.last_wal_offset,
        i.created_at_ms,
        i.updated_at_ms,
        i.deleted_at_offset,
        i.creation,
        keys
    )
}

fn assert_same(recovered: &ShardState, live: &ShardState) {
    assert_eq!(recovered.instances.len(), live.instances.len());
    for (id, inst) in live.instances.iter() {
        let got = recovered.instances.get(id).map(facts);
        assert_eq!(got, Some(facts(inst)), "instance {id}");
    }
    assert_eq!(recovered.active_instances, live.active_instances);
}

#[test]
fn a_snapshot_taken_in_slices_while_instances_change_recovers_the_live_state() {
    let (mut state, mut log) = shard_with(300);
    let covered = log.next;
    let mut job = SnapshotJob::start(&state, position(covered), &SystemClock);
    let none = |_: &str| None;
    let mut slices = 0;
    let mut n = 0;
    loop {
        // A zero budget: the smallest slice, so the job takes many turns.
        let outcome = job.step(&state, &none, &SystemClock, Duration::ZERO);
        slices += 1;
        if outcome == SliceOutcome::Done {
            break;
        }
        assert_eq!(outcome, SliceOutcome::More);
        // Between slices the shard serves requests: change instances that
        // were encoded already, ones still ahead, delete some, add new ones.
        for id in [
            format!("i{}", (slices * 7) % 300),
            format!("i{}", 299 - slices),
        ] {
            n += 1;
            if state.instances[&id].is_active() {
                toggle(&mut state, &mut log, &id, n);
            }
        }
        if slices % 3 == 0 {
            let id = format!("i{}", slices * 11 % 300);
            if state.instances[&id].is_active() {
                let del = DeleteInstance {
                    instance_id: id,
                    idempotency_key: None,
                };
                state.delete_instance(del, NOW_MS, &mut log).unwrap();
            }
        }
        create(&mut state, &mut log, &format!("new{slices}"));
    }
    assert!(
        slices > 10,
        "the job should have run in many slices: {slices}"
    );
    let image = job.finish().seal();
    assert_same(&recover(&image, &log, covered), &state);
}

#[test]
fn an_instance_held_by_a_prepared_batch_is_encoded_as_before_the_batch() {
    let (mut state, log) = shard_with(40);
    let covered = log.next;
    let mut job = SnapshotJob::start(&state, position(covered), &SystemClock);
    // A cross-shard part is prepared on i39 (and creates "fresh") before
    // the job reaches them; its records are not in this log unless the
    // batch commits — here it aborts.
    let mut inner = Vec::new();
    let mut next = 1u64 << 40;
    let mut next_offset = |kind, time_ms| {
        next += 64;
        RecordStamp::new(kind, next, time_ms)
    };
    let mut sink = BufferSink {
        out: &mut inner,
        reserve: &mut next_offset,
    };
    let ops = vec![
        Command::Apply(apply("i39", "GO", 1)),
        Command::Create(CreateInstance {
            instance_id: "fresh".into(),
            machine: "counter".into(),
            version: 1,
            initial_ctx: json!({}),
            idempotency_key: None,
        }),
    ];
    let (_, undo) = state
        .run_atomic(ops, NOW_MS, &mut sink)
        .unwrap_or_else(|_| panic!("the batch stages"));
    assert_eq!(state.instances["i39"].state, "busy");
    let original = |id: &str| undo.original(id).map(|o| o.cloned());
    while job.step(&state, &original, &SystemClock, Duration::ZERO) == SliceOutcome::More {}
    let image = job.finish().seal();
    state.undo(undo);
    let recovered = recover(&image, &log, covered);
    assert_eq!(recovered.instances["i39"].state, "idle");
    assert!(!recovered.instances.contains_key("fresh"));
    assert_same(&recovered, &state);
}

#[test]
fn a_flush_during_the_job_makes_it_start_over() {
    let (mut state, log) = shard_with(100);
    let mut job = SnapshotJob::start(&state, position(log.next), &SystemClock);
    let none = |_: &str| None;
    assert_eq!(
        job.step(&state, &none, &SystemClock, Duration::ZERO),
        SliceOutcome::More
    );
    state.flush();
    assert_eq!(
        job.step(&state, &none, &SystemClock, Duration::ZERO),
        SliceOutcome::Restart
    );
}
