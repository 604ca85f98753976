//! Behaviour of the shard operations and of a shard reopened from its log.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use serde_json::{json, Value};

use super::command::*;
use super::state::test_sink::MemorySink;
use super::state::ShardState;
use super::{Shard, ShardConfig};
use crate::error::ErrorCode;
use crate::machine::definition::parse_definition;
use crate::wal::{Frontier, FsyncPolicy};

fn door() -> Value {
    json!({"states":["shut","open","locked"],"initial":"shut","transitions":[
        {"from":"shut","event":"OPEN","to":"open","guard":"ctx.unlocked"},
        {"from":"shut","event":"OPEN","to":"locked"},
        {"from":"open","event":"CLOSE","to":"shut"}]})
}

fn shard_with_door() -> (ShardState, MemorySink) {
    let mut s = ShardState::new(0, true);
    let mut log = MemorySink::default();
    let def = Arc::new(parse_definition("door", 1, &door()).unwrap());
    assert!(s
        .install_machine(def.clone(), &door(), 1, &mut log)
        .unwrap());
    assert!(!s.install_machine(def, &door(), 1, &mut log).unwrap());
    (s, log)
}

fn create(
    s: &mut ShardState,
    log: &mut MemorySink,
    id: &str,
    ctx: Value,
    key: Option<&str>,
) -> Result<Value, ErrorCode> {
    s.create_instance(
        CreateInstance {
            instance_id: id.into(),
            machine: "door".into(),
            version: 1,
            initial_ctx: ctx,
            idempotency_key: key.map(Into::into),
        },
        5,
        log,
    )
    .map(|b| serde_json::from_slice(&b).unwrap())
    .map_err(|e| e.code)
}

fn apply(
    s: &mut ShardState,
    log: &mut MemorySink,
    id: &str,
    event: &str,
    payload: Value,
    key: Option<&str>,
) -> Result<Value, (ErrorCode, String)> {
    s.apply_event(
        ApplyEvent {
            instance_id: id.into(),
            event: event.into(),
            payload,
            expected_state: None,
            expected_wal_offset: None,
            event_id: None,
            idempotency_key: key.map(Into::into),
        },
        6,
        log,
    )
    .map(|b| serde_json::from_slice(&b).unwrap())
    .map_err(|e| (e.code, e.message))
}

#[test]
fn first_passing_guard_wins_and_payload_merges_after_the_guard() {
    let (mut s, mut log) = shard_with_door();
    create(&mut s, &mut log, "d1", json!({"unlocked": false}), None).unwrap();
    // Guard sees the old ctx (unlocked=false): the second, unguarded transition fires.
    let r = apply(
        &mut s,
        &mut log,
        "d1",
        "OPEN",
        json!({"unlocked": true}),
        None,
    )
    .unwrap();
    assert_eq!(r["to_state"], "locked");
    assert_eq!(r["ctx"], json!({"unlocked": true}));
    assert_eq!(r["applied"], true);
}

#[test]
fn errors_follow_the_spec_order_and_texts() {
    let (mut s, mut log) = shard_with_door();
    assert_eq!(
        create(&mut s, &mut log, "d1", json!({}), None).unwrap()["state"],
        "shut"
    );
    assert_eq!(
        create(&mut s, &mut log, "d1", json!({}), None),
        Err(ErrorCode::InstanceExists)
    );
    let (code, msg) = apply(&mut s, &mut log, "d1", "CLOSE", Value::Null, None).unwrap_err();
    assert_eq!(code, ErrorCode::InvalidTransition);
    assert_eq!(
        msg,
        "core error: invalid transition: cannot apply 'CLOSE' in state 'shut'"
    );
    let (code, _) = apply(&mut s, &mut log, "nope", "OPEN", Value::Null, None).unwrap_err();
    assert_eq!(code, ErrorCode::InstanceNotFound);
    let err = s
        .apply_event(
            ApplyEvent {
                instance_id: "d1".into(),
                event: "OPEN".into(),
                payload: Value::Null,
                expected_state: Some("open".into()),
                expected_wal_offset: None,
                event_id: None,
                idempotency_key: None,
            },
            1,
            &mut log,
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Conflict);
    assert_eq!(
        err.message,
        "core error: state conflict: expected 'open', actual 'shut'"
    );
}

#[test]
fn guard_failed_when_no_alternative_passes() {
    let def = json!({"states":["a","b"],"initial":"a","transitions":[
        {"from":"a","event":"GO","to":"b","guard":"ctx.n > 1"}]});
    let mut s = ShardState::new(0, true);
    let mut log = MemorySink::default();
    s.install_machine(
        Arc::new(parse_definition("m", 1, &def).unwrap()),
        &def,
        1,
        &mut log,
    )
    .unwrap();
    s.create_instance(
        CreateInstance {
            instance_id: "x".into(),
            machine: "m".into(),
            version: 1,
            initial_ctx: json!({"n": 0}),
            idempotency_key: None,
        },
        1,
        &mut log,
    )
    .unwrap();
    let (code, msg) = apply(&mut s, &mut log, "x", "GO", Value::Null, None).unwrap_err();
    assert_eq!(code, ErrorCode::GuardFailed);
    assert_eq!(
        msg,
        "core error: guard failed: guard failed for transition 'a' -> 'b' on event 'GO'"
    );
}

#[test]
fn idempotent_replay_applies_nothing_and_returns_the_first_result() {
    let (mut s, mut log) = shard_with_door();
    create(&mut s, &mut log, "d1", json!({"unlocked": true}), None).unwrap();
    let first = apply(&mut s, &mut log, "d1", "OPEN", json!({"n": 1}), Some("k1")).unwrap();
    let records = log.records;
    let again = apply(&mut s, &mut log, "d1", "OPEN", json!({"n": 2}), Some("k1")).unwrap();
    assert_eq!(log.records, records, "a replay must not write");
    assert_eq!(again["applied"], false);
    assert_eq!(again["wal_offset"], first["wal_offset"]);
    assert_eq!(again["ctx"], first["ctx"]);
    assert_eq!(again["to_state"], "open");
}

#[test]
fn idempotent_create_retry_returns_the_first_result() {
    let (mut s, mut log) = shard_with_door();
    let first = create(&mut s, &mut log, "d1", json!({}), Some("c1")).unwrap();
    let again = create(&mut s, &mut log, "d1", json!({}), Some("c1")).unwrap();
    assert_eq!(again["wal_offset"], first["wal_offset"]);
    assert_eq!(again["applied"], false);
    assert_eq!(
        create(&mut s, &mut log, "d1", json!({}), Some("other")),
        Err(ErrorCode::InstanceExists)
    );
}

#[test]
fn delete_is_soft_and_idempotent() {
    let (mut s, mut log) = shard_with_door();
    create(&mut s, &mut log, "d1", json!({}), None).unwrap();
    let del = |s: &mut ShardState, log: &mut MemorySink| -> Value {
        serde_json::from_slice(
            &s.delete_instance(
                DeleteInstance {
                    instance_id: "d1".into(),
                    idempotency_key: None,
                },
                1,
                log,
            )
            .unwrap(),
        )
        .unwrap()
    };
    let first = del(&mut s, &mut log);
    let records = log.records;
    let second = del(&mut s, &mut log);
    assert_eq!(first, second);
    assert_eq!(log.records, records);
    assert_eq!(
        s.get_instance("d1").unwrap_err().code,
        ErrorCode::InstanceNotFound
    );
    assert_eq!(
        s.list_instances(&ListQuery {
            rows_max: 10,
            ..Default::default()
        })
        .total,
        0
    );
    // Re-create after delete is allowed by default.
    assert_eq!(
        create(&mut s, &mut log, "d1", json!({}), None).unwrap()["state"],
        "shut"
    );
}

#[test]
fn list_pages_are_sorted_by_id_and_filtered() {
    let (mut s, mut log) = shard_with_door();
    for id in ["c", "a", "e", "b", "d"] {
        create(&mut s, &mut log, id, json!({"unlocked": true}), None).unwrap();
    }
    apply(&mut s, &mut log, "b", "OPEN", Value::Null, None).unwrap();
    let page = s.list_instances(&ListQuery {
        rows_max: 3,
        ..Default::default()
    });
    assert_eq!(page.total, 5);
    let ids: Vec<_> = page.rows.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    let open = s.list_instances(&ListQuery {
        state: Some("open".into()),
        rows_max: 10,
        ..Default::default()
    });
    assert_eq!(open.total, 1);
    let row: Value = serde_json::from_slice(&open.rows[0].1).unwrap();
    assert_eq!(row["id"], "b");
    assert_eq!(row["state"], "open");
}

#[test]
fn a_failed_log_append_leaves_the_context_untouched() {
    let (mut s, mut log) = shard_with_door();
    create(
        &mut s,
        &mut log,
        "d1",
        json!({"unlocked": true, "keep": 1}),
        None,
    )
    .unwrap();
    let huge = "x".repeat(crate::wal::record::RECORD_PAYLOAD_MAX_BYTES);
    let (code, _) = apply(&mut s, &mut log, "d1", "OPEN", json!({"keep": huge}), None).unwrap_err();
    assert_eq!(code, ErrorCode::WalIoError);
    let got: Value = serde_json::from_slice(&s.get_instance("d1").unwrap()).unwrap();
    assert_eq!(got["ctx"], json!({"unlocked": true, "keep": 1}));
    assert_eq!(got["state"], "shut");
}

/// Runs `body` on a glommio executor (the shard's I/O needs one).
fn on_executor<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(body)
        .unwrap()
        .join()
        .unwrap();
}

fn config(dir: &std::path::Path, segment_size_bytes: u64) -> ShardConfig {
    ShardConfig {
        id: 1,
        auto_compaction: None,
        dir: dir.to_path_buf(),
        fsync: FsyncPolicy::EveryWrite,
        segment_size_bytes,
        allow_instance_recreate: true,
        salvage: false,
    }
}

async fn send_and_wait(tx: &flume::Sender<ShardMsg>, cmd: Command) -> Result<Value, ErrorCode> {
    let (rtx, rrx) = flume::unbounded();
    tx.send(ShardMsg::Exec {
        cmd,
        reply: ReplyTo { tx: rtx, seq: 7 },
    })
    .unwrap();
    let reply = rrx.recv_async().await.unwrap();
    assert_eq!(reply.seq, 7);
    reply
        .body
        .map(|b| serde_json::from_slice(&b).unwrap())
        .map_err(|e| e.code)
}

#[test]
fn a_reopened_shard_has_everything_it_acknowledged_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    // Tiny segments force rotations.
    let seg = 64 * 1024;
    let p = path.clone();
    on_executor(move || async move {
        let (shard, report) = Shard::open(
            &config(&p, seg),
            Frontier::new(),
            Arc::new(AtomicU64::new(0)),
        )
        .await
        .unwrap();
        assert_eq!(report.counts.records, 0);
        let (tx, rx) = flume::unbounded();
        let runner = glommio::spawn_local(shard.run(rx, None));
        let def = Arc::new(parse_definition("door", 1, &door()).unwrap());
        let (dtx, drx) = flume::bounded(1);
        tx.send(ShardMsg::InstallMachine {
            def,
            raw_definition: Arc::new(door()),
            done: dtx,
        })
        .unwrap();
        assert_eq!(drx.recv_async().await.unwrap(), Ok(true));
        let mut last = 0u64;
        for i in 0..300 {
            let id = format!("d{i}");
            let c = send_and_wait(
                &tx,
                Command::Create(CreateInstance {
                    instance_id: id.clone(),
                    machine: "door".into(),
                    version: 1,
                    initial_ctx: json!({"unlocked": true, "pad": "y".repeat(200)}),
                    idempotency_key: None,
                }),
            )
            .await
            .unwrap();
            let off = c["wal_offset"].as_u64().unwrap();
            assert!(off > last, "offsets increase in commit order");
            last = off;
            send_and_wait(
                &tx,
                Command::Apply(ApplyEvent {
                    instance_id: id,
                    event: "OPEN".into(),
                    payload: json!({"i": i}),
                    expected_state: None,
                    expected_wal_offset: None,
                    event_id: Some(format!("e{i}")),
                    idempotency_key: Some("k".into()),
                }),
            )
            .await
            .unwrap();
        }
        drop(tx);
        runner.await;
    });
    let segments = crate::wal::segment::list_segments(&path.join("wal")).unwrap();
    assert!(segments.len() > 2, "expected rotations, got {segments:?}");
    let p = path.clone();
    on_executor(move || async move {
        let (shard, report) = Shard::open(
            &config(&p, seg),
            Frontier::new(),
            Arc::new(AtomicU64::new(0)),
        )
        .await
        .unwrap();
        assert_eq!(report.counts.records, 1 + 600);
        assert_eq!(report.instances_active, 300);
        assert!(report.scan.torn_tail.is_none());
        let (tx, rx) = flume::unbounded();
        let runner = glommio::spawn_local(shard.run(rx, None));
        let got = send_and_wait(
            &tx,
            Command::Get {
                instance_id: "d299".into(),
            },
        )
        .await
        .unwrap();
        assert_eq!(got["state"], "open");
        assert_eq!(got["ctx"]["i"], 299);
        assert_eq!(got["last_event_id"], "e299");
        // The idempotency key survived the restart.
        let again = send_and_wait(
            &tx,
            Command::Apply(ApplyEvent {
                instance_id: "d5".into(),
                event: "CLOSE".into(),
                payload: Value::Null,
                expected_state: None,
                expected_wal_offset: None,
                event_id: None,
                idempotency_key: Some("k".into()),
            }),
        )
        .await
        .unwrap();
        assert_eq!(again["applied"], false);
        assert_eq!(again["to_state"], "open");
        drop(tx);
        runner.await;
    });
}

/// Open (recover) a shard and run its loop; drop the sender and await the
/// task to stop it.
async fn run_shard(cfg: &ShardConfig) -> (flume::Sender<ShardMsg>, glommio::Task<()>) {
    let (shard, _) = Shard::open(cfg, Frontier::new(), Arc::new(AtomicU64::new(0)))
        .await
        .unwrap();
    let (tx, rx) = flume::unbounded();
    (tx, glommio::spawn_local(shard.run(rx, None)))
}

async fn compact(tx: &flume::Sender<ShardMsg>, force: bool) -> super::snapshotting::CompactReport {
    let (dtx, drx) = flume::bounded(1);
    tx.send(ShardMsg::Compact {
        force_snapshot: force,
        done: dtx,
    })
    .unwrap();
    drx.recv_async().await.unwrap()
}

async fn start_door(tx: &flume::Sender<ShardMsg>) {
    let def = Arc::new(parse_definition("door", 1, &door()).unwrap());
    let (dtx, drx) = flume::bounded(1);
    tx.send(ShardMsg::InstallMachine {
        def,
        raw_definition: Arc::new(door()),
        done: dtx,
    })
    .unwrap();
    drx.recv_async().await.unwrap().unwrap();
}

fn create_cmd(id: &str) -> Command {
    Command::Create(CreateInstance {
        instance_id: id.into(),
        machine: "door".into(),
        version: 1,
        initial_ctx: json!({"unlocked": true, "pad": "z".repeat(300)}),
        idempotency_key: None,
    })
}

fn open_cmd(id: &str, i: u64) -> Command {
    Command::Apply(ApplyEvent {
        instance_id: id.into(),
        event: "OPEN".into(),
        payload: json!({"i": i}),
        expected_state: None,
        expected_wal_offset: None,
        event_id: None,
        idempotency_key: Some(format!("k{i}")),
    })
}

#[test]
fn recovery_starts_from_the_snapshot_and_replays_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_path_buf();
    on_executor(move || async move {
        let (tx, runner) = run_shard(&config(&p, 64 * 1024)).await;
        start_door(&tx).await;
        for i in 0..200 {
            send_and_wait(&tx, create_cmd(&format!("d{i}")))
                .await
                .unwrap();
        }
        let report = compact(&tx, true).await;
        assert_eq!(report.snapshots_created, 1, "{report:?}");
        assert!(report.error.is_none(), "{report:?}");
        // Writes after the snapshot: the tail recovery must replay.
        for i in 0..200 {
            send_and_wait(&tx, open_cmd(&format!("d{i}"), i))
                .await
                .unwrap();
        }
        send_and_wait(&tx, create_cmd("late")).await.unwrap();
        drop(tx);
        runner.await;
    });
    let p = dir.path().to_path_buf();
    on_executor(move || async move {
        let (shard, report) = Shard::open(
            &config(&p, 64 * 1024),
            Frontier::new(),
            Arc::new(AtomicU64::new(0)),
        )
        .await
        .unwrap();
        assert!(
            report.snapshot_covered.is_some(),
            "recovery must start from the snapshot"
        );
        assert_eq!(report.instances_active, 201);
        // Only the tail was replayed: 200 applies + 1 create.
        assert_eq!(report.counts.applies, 200);
        assert_eq!(report.counts.creates, 1);
        let (tx, rx) = flume::unbounded();
        let runner = glommio::spawn_local(shard.run(rx, None));
        let got = send_and_wait(
            &tx,
            Command::Get {
                instance_id: "d199".into(),
            },
        )
        .await
        .unwrap();
        assert_eq!(got["state"], "open");
        assert_eq!(got["ctx"]["i"], 199);
        // An idempotency key from after the snapshot still answers.
        let again = send_and_wait(&tx, open_cmd("d7", 7)).await.unwrap();
        assert_eq!(again["applied"], false);
        drop(tx);
        runner.await;
    });
}

#[test]
fn a_damaged_newest_snapshot_falls_back_to_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_path_buf();
    on_executor(move || async move {
        let (tx, runner) = run_shard(&config(&p, 64 * 1024)).await;
        start_door(&tx).await;
        send_and_wait(&tx, create_cmd("a")).await.unwrap();
        assert_eq!(compact(&tx, true).await.snapshots_created, 1);
        send_and_wait(&tx, create_cmd("b")).await.unwrap();
        assert_eq!(compact(&tx, true).await.snapshots_created, 1);
        send_and_wait(&tx, create_cmd("c")).await.unwrap();
        drop(tx);
        runner.await;
    });
    let snaps = crate::snapshot::list_snapshots(dir.path()).unwrap();
    assert_eq!(snaps.len(), 2);
    let newest = &snaps[0].path;
    let mut bytes = std::fs::read(newest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(newest, &bytes).unwrap();
    let p = dir.path().to_path_buf();
    on_executor(move || async move {
        let (_, report) = Shard::open(
            &config(&p, 64 * 1024),
            Frontier::new(),
            Arc::new(AtomicU64::new(0)),
        )
        .await
        .unwrap();
        assert_eq!(
            report.instances_active, 3,
            "all data present after the fallback"
        );
        assert_eq!(
            report.counts.creates, 2,
            "the older snapshot needs a longer replay"
        );
    });
}

#[test]
fn flush_all_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_path_buf();
    on_executor(move || async move {
        let (tx, runner) = run_shard(&config(&p, 64 * 1024)).await;
        start_door(&tx).await;
        send_and_wait(&tx, create_cmd("a")).await.unwrap();
        send_and_wait(&tx, create_cmd("b")).await.unwrap();
        let (dtx, drx) = flume::bounded(1);
        tx.send(ShardMsg::Flush { done: dtx }).unwrap();
        assert_eq!(drx.recv_async().await.unwrap().unwrap(), (2, 1));
        drop(tx);
        runner.await;
    });
    let p = dir.path().to_path_buf();
    on_executor(move || async move {
        let (_, report) = Shard::open(
            &config(&p, 64 * 1024),
            Frontier::new(),
            Arc::new(AtomicU64::new(0)),
        )
        .await
        .unwrap();
        assert_eq!(report.instances_active, 0);
        assert!(report.machines.is_empty());
    });
}

#[test]
fn page_cache_policies_write_and_recover_across_segments() {
    for policy in [
        FsyncPolicy::Never,
        FsyncPolicy::EveryN(7),
        FsyncPolicy::EveryMs(5),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().to_path_buf();
        let cfg = move |p: &std::path::Path| ShardConfig {
            fsync: policy,
            ..config(p, 64 * 1024)
        };
        on_executor(move || async move {
            let (shard, _) = Shard::open(&cfg(&p), Frontier::new(), Arc::new(AtomicU64::new(0)))
                .await
                .unwrap();
            let (tx, rx) = flume::unbounded();
            let runner = glommio::spawn_local(shard.run(rx, None));
            start_door(&tx).await;
            for i in 0..300 {
                send_and_wait(&tx, create_cmd(&format!("d{i}")))
                    .await
                    .unwrap();
            }
            drop(tx);
            runner.await;
        });
        assert!(
            crate::wal::segment::list_segments(&dir.path().join("wal"))
                .unwrap()
                .len()
                > 2
        );
        let p = dir.path().to_path_buf();
        on_executor(move || async move {
            let (_, report) = Shard::open(&cfg(&p), Frontier::new(), Arc::new(AtomicU64::new(0)))
                .await
                .unwrap();
            assert_eq!(report.instances_active, 300, "{policy}");
            assert!(report.scan.torn_tail.is_none());
        });
    }
}
