//! A running shard: what it acknowledged survives reopening it from its
//! log, across segments, snapshots, FLUSH_ALL and every fsync policy.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use super::*;
use crate::env::Env;
use crate::shard::{Shard, ShardConfig};
use crate::wal::{Frontier, FsyncPolicy};

/// Runs `body` on a glommio executor (the shard's I/O needs one).
fn on_executor<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    on_executor_value(body)
}

/// The same, returning what `body` returns.
fn on_executor_value<T, F, Fut>(body: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(body)
        .unwrap()
        .join()
        .unwrap()
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

/// GET_INSTANCE through the shard's mailbox; the instance must exist.
async fn get(tx: &flume::Sender<ShardMsg>, id: &str) -> Value {
    let cmd = Command::Get {
        instance_id: id.into(),
    };
    send_and_wait(tx, cmd).await.unwrap()
}

async fn send_and_wait(tx: &flume::Sender<ShardMsg>, cmd: Command) -> Result<Value, ErrorCode> {
    let (rtx, rrx) = flume::unbounded();
    tx.send(ShardMsg::Exec {
        cmd,
        reply: ReplyTo::internal(rtx, 7),
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
            Env::os(0),
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
    let segments =
        crate::wal::segment::list_segments(&crate::env::os::OsStorage, &path.join("wal")).unwrap();
    assert!(segments.len() > 2, "expected rotations, got {segments:?}");
    let p = path.clone();
    on_executor(move || async move {
        let (shard, report) = Shard::open(
            &config(&p, seg),
            Env::os(0),
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
        let got = get(&tx, "d299").await;
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
    let (shard, _) = Shard::open(
        cfg,
        Env::os(cfg.id),
        Frontier::new(),
        Arc::new(AtomicU64::new(0)),
    )
    .await
    .unwrap();
    let (tx, rx) = flume::unbounded();
    (tx, glommio::spawn_local(shard.run(rx, None)))
}

async fn compact(
    tx: &flume::Sender<ShardMsg>,
    force: bool,
) -> crate::shard::snapshotting::CompactReport {
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
            Env::os(0),
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
        let got = get(&tx, "d199").await;
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
    let snaps = crate::snapshot::list_snapshots(&crate::env::os::OsStorage, dir.path()).unwrap();
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
            Env::os(0),
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
            Env::os(0),
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
            let (shard, _) = Shard::open(
                &cfg(&p),
                Env::os(0),
                Frontier::new(),
                Arc::new(AtomicU64::new(0)),
            )
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
            crate::wal::segment::list_segments(&crate::env::os::OsStorage, &dir.path().join("wal"))
                .unwrap()
                .len()
                > 2
        );
        let p = dir.path().to_path_buf();
        on_executor(move || async move {
            let (_, report) = Shard::open(
                &cfg(&p),
                Env::os(0),
                Frontier::new(),
                Arc::new(AtomicU64::new(0)),
            )
            .await
            .unwrap();
            assert_eq!(report.instances_active, 300, "{policy}");
            assert!(report.scan.torn_tail.is_none());
        });
    }
}

/// Every entry the shard's log shows, read in pages of `page` records.
async fn read_all_entries(tx: &flume::Sender<ShardMsg>, page: usize) -> Vec<u64> {
    let (mut offsets, mut from) = (Vec::new(), 0);
    loop {
        let (dtx, drx) = flume::bounded(1);
        tx.send(ShardMsg::ReadLog {
            from_offset: from,
            max_records: page,
            max_bytes: 1 << 20,
            done: dtx,
        })
        .unwrap();
        let chunk = drx.recv_async().await.unwrap().unwrap();
        offsets.extend(chunk.entries.iter().map(|e| e.offset));
        if chunk.at_end {
            return offsets;
        }
        assert!(
            chunk.complete_upto > from,
            "a read made no progress at {from}"
        );
        from = chunk.complete_upto;
    }
}

#[test]
fn a_batch_decided_long_after_its_prepare_is_read_in_small_pages_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_path_buf();
    let others = 300;
    let before = on_executor_value(move || async move {
        let (tx, runner) = run_shard(&config(&p, 1 << 20)).await;
        start_door(&tx).await;
        let (vtx, vrx) = flume::bounded(1);
        tx.send(ShardMsg::Prepare {
            txid: 77,
            decider: 0,
            ops: vec![create_cmd("held")],
            done: vtx,
        })
        .unwrap();
        assert!(matches!(vrx.recv_async().await.unwrap(), BatchVote::Yes(_)));
        // Many records between the prepare and its decision.
        for i in 0..others {
            send_and_wait(&tx, create_cmd(&format!("o{i}")))
                .await
                .unwrap();
        }
        let (dtx, drx) = flume::bounded(1);
        tx.send(ShardMsg::Decide {
            txid: 77,
            commit: true,
            done: dtx,
        })
        .unwrap();
        drx.recv_async().await.unwrap();
        let entries = read_all_entries(&tx, 4).await;
        drop(tx);
        runner.await;
        entries
    });
    // The batch's create and the others, in offset order (the machine's
    // record on a shard other than 0 is a copy, not an entry).
    assert_eq!(before.len(), 1 + others);
    assert!(before.windows(2).all(|w| w[0] < w[1]));
    let p = dir.path().to_path_buf();
    let after = on_executor_value(move || async move {
        let (tx, runner) = run_shard(&config(&p, 1 << 20)).await;
        let entries = read_all_entries(&tx, 4).await;
        drop(tx);
        runner.await;
        entries
    });
    assert_eq!(after, before, "the decision must be known after recovery");
}

#[test]
fn a_standalone_shard_refuses_a_raft_members_log_naming_the_record() {
    use crate::wal::record::{append_record, RecordKind, RecordStamp};
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal");
    std::fs::create_dir_all(&wal).unwrap();
    let mut segment = Vec::new();
    let stamp = RecordStamp::new(RecordKind::RaftVote, 64, 1);
    append_record(&mut segment, &stamp, 0, |o| o.extend_from_slice(&[0; 17])).unwrap();
    segment.resize(64 * 1024, 0);
    std::fs::write(wal.join("0000000000000001.wal"), &segment).unwrap();
    let p = dir.path().to_path_buf();
    let err = on_executor_value(move || async move {
        Shard::open(
            &config(&p, 64 * 1024),
            Env::os(1),
            Frontier::new(),
            Arc::new(AtomicU64::new(0)),
        )
        .await
        .err()
        .expect("a Raft record refuses the start")
    });
    assert!(err.contains("RaftVote"), "{err}");
    assert!(err.contains("0000000000000001.wal"), "{err}");
}

/// A wake-up for waiting requests that finds none (a connection's mark
/// on this shard outlived the request that set it: it ran in the turn it
/// started waiting) leaves the shard idle. The flag stayed set, and the
/// loop turned without pause — a core at 100 % — until a request waited.
#[test]
fn a_wake_up_with_nothing_waiting_leaves_the_shard_idle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    on_executor(move || async move {
        let (mut shard, _) = Shard::open(
            &config(&path, 1 << 20),
            Env::os(1),
            Frontier::new(),
            Arc::new(AtomicU64::new(0)),
        )
        .await
        .unwrap();
        let mut deferred = Vec::new();
        shard.run_admitted(ShardMsg::Unpark, 0, &mut deferred);
        assert!(shard.wake_waiting);
        let turn_ends = shard.env.clock.monotonic() + std::time::Duration::from_secs(1);
        shard.run_waiting(0, &mut deferred, turn_ends);
        assert!(!shard.wake_waiting, "nothing waits: nothing to wake for");
        assert!(deferred.is_empty());
    });
}
