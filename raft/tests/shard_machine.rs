//! The shard group's state machine on its own: committed entries of real
//! WAL records (as a leader's turn stages them) replay into a shard's
//! state; a snapshot built on one member and installed on another gives the
//! same state, batches in doubt included; damaged entries and snapshots are
//! errors, never panics.

#[path = "support/memlock.rs"]
mod memlock;
#[path = "support/turns.rs"]
mod turns;

use corestate_raft::shard_group::{GroupSnapshotBytes, ShardGroup, ShardMachine, TurnRecords};
use openraft::entry::RaftEntry;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::log_id;
use openraft::type_config::alias::EntryOf;
use serde_json::{json, Value};
use shards::wal::entry::{write_apply_event, write_prepare};
use shards::wal::record::{append_record, RecordKind, RecordStamp};

use turns::{pay_fields, Turn, SHARD};

fn normal(index: u64, turn: TurnRecords) -> EntryOf<ShardGroup> {
    EntryOf::<ShardGroup>::new_normal(log_id::<ShardGroup>(1, 1, index), turn)
}

async fn apply(m: &mut ShardMachine, entries: Vec<EntryOf<ShardGroup>>) -> std::io::Result<()> {
    let items = entries.into_iter().map(|e| Ok((e, None)));
    m.apply(futures_util::stream::iter(items)).await
}

fn state_of(m: &ShardMachine, id: &str) -> Option<(String, Value)> {
    m.with_state(|s| {
        s.instances
            .get(id)
            .map(|i| (i.state.to_string(), i.ctx.parsed().unwrap().into_owned()))
    })
}

fn run<F: std::future::Future<Output = ()> + 'static>(test: impl FnOnce() -> F + Send + 'static) {
    memlock::raise_memlock_limit();
    glommio::LocalExecutorBuilder::default()
        .spawn(test)
        .expect("executor")
        .join()
        .expect("test body");
}

#[test]
fn committed_turns_replay_into_the_shard_state() {
    run(|| async {
        let mut m = ShardMachine::new(SHARD, false);
        let mut turn = Turn::new(100);
        let first = turn.put_machine().create("o-1").create("o-2").take();
        let second = turn.pay("o-1").take();
        apply(&mut m, vec![normal(1, first), normal(2, second)])
            .await
            .expect("apply");
        assert_eq!(
            state_of(&m, "o-1"),
            Some(("paid".to_string(), json!({"amount": 10})))
        );
        assert_eq!(state_of(&m, "o-2").unwrap().0, "created");
        let position = m.position();
        assert_eq!(position.covered_offset, (103 << 6) | SHARD as u64);
        assert_eq!(position.last_tick, 103);
        // The put counts only on shard 0; creates and applies count one each.
        assert_eq!(position.entries, 3);
        let (applied, _) = m.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(2));
    });
}

#[test]
fn a_snapshot_installed_elsewhere_gives_the_same_state_batches_in_doubt_included() {
    run(|| async {
        let mut leader = ShardMachine::new(SHARD, false);
        let mut turn = Turn::new(1);
        let setup = turn.put_machine().create("o-1").create("o-2").take();
        // A cross-shard batch part, prepared and not decided.
        let mut inner = Vec::new();
        append_record(
            &mut inner,
            &RecordStamp::new(RecordKind::ApplyEvent, (50 << 6) | SHARD as u64, 1),
            0,
            |out| write_apply_event(out, &pay_fields("o-2")),
        )
        .unwrap();
        let prepared = turn
            .record(RecordKind::Prepare, |out| write_prepare(out, 77, 0, &inner))
            .take();
        apply(
            &mut leader,
            vec![
                normal(1, setup),
                normal(2, turn.pay("o-1").take()),
                normal(3, prepared),
            ],
        )
        .await
        .unwrap();
        assert_eq!(leader.in_doubt(), vec![77]);
        let snapshot = leader.build_snapshot().await.expect("snapshot");
        assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(3));

        let mut follower = ShardMachine::new(SHARD, false);
        follower
            .install_snapshot(&snapshot.meta, snapshot.snapshot.clone())
            .await
            .expect("install");
        for id in ["o-1", "o-2"] {
            assert_eq!(state_of(&follower, id), state_of(&leader, id), "{id}");
        }
        assert_eq!(follower.position(), leader.position());
        assert_eq!(follower.in_doubt(), vec![77]);
        let (applied, _) = follower.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(3));
        // The batch commits after the snapshot: the follower applies it from
        // the part the snapshot carried.
        let commit = turn
            .record(RecordKind::Commit, |out| {
                out.extend_from_slice(&77u64.to_le_bytes())
            })
            .take();
        apply(&mut follower, vec![normal(4, commit)]).await.unwrap();
        assert_eq!(state_of(&follower, "o-2").unwrap().0, "paid");
        assert!(follower.in_doubt().is_empty());
    });
}

#[test]
fn a_damaged_committed_entry_is_an_error_not_a_panic() {
    run(|| async {
        let mut m = ShardMachine::new(SHARD, false);
        let mut turn = Turn::new(1);
        let mut bytes = turn.put_machine().create("o-1").take().0;
        let last = bytes.len() - 2;
        bytes[last] ^= 0x40;
        let err = apply(&mut m, vec![normal(1, TurnRecords(bytes))])
            .await
            .expect_err("damaged");
        assert!(err.to_string().contains("damaged record"), "{err}");
        // A create of a machine this shard never saw.
        let mut m = ShardMachine::new(SHARD, false);
        let err = apply(&mut m, vec![normal(1, Turn::new(1).create("x").take())])
            .await
            .expect_err("unknown machine");
        assert!(err.to_string().contains("cannot be applied"), "{err}");
    });
}

#[test]
fn damaged_snapshots_are_refused_whole() {
    run(|| async {
        let mut leader = ShardMachine::new(SHARD, false);
        let mut turn = Turn::new(1);
        apply(
            &mut leader,
            vec![normal(
                1,
                turn.put_machine().create("o-1").pay("o-1").take(),
            )],
        )
        .await
        .unwrap();
        let snapshot = leader.build_snapshot().await.unwrap();
        let bytes = snapshot.snapshot.0.to_vec();
        let mut follower = ShardMachine::new(SHARD, false);
        // Every truncation, and a flipped bit in every byte.
        for cut in 0..bytes.len() {
            let r = follower
                .install_snapshot(
                    &snapshot.meta,
                    GroupSnapshotBytes::new(bytes[..cut].to_vec()),
                )
                .await;
            assert!(r.is_err(), "truncated at {cut} accepted");
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            let r = follower
                .install_snapshot(&snapshot.meta, GroupSnapshotBytes::new(bad))
                .await;
            assert!(r.is_err(), "bit flip in byte {i} accepted");
        }
        assert!(state_of(&follower, "o-1").is_none(), "nothing installed");
        // Another shard's snapshot is refused.
        let mut other = ShardMachine::new(SHARD + 1, false);
        let err = other
            .install_snapshot(&snapshot.meta, GroupSnapshotBytes::new(bytes))
            .await
            .expect_err("wrong shard");
        assert!(err.to_string().contains("snapshot of shard"), "{err}");
    });
}

#[test]
fn snapshots_on_disk_keep_the_newest_two_and_a_damaged_newest_refuses_the_start() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = dir.path().join("snapshots");
        let storage = shards::env::Env::os(SHARD).storage;
        let open = || ShardMachine::open(SHARD, false, storage.clone(), snapshots.clone());
        let mut m = open().expect("no snapshot yet");
        let mut turn = Turn::new(1);
        apply(
            &mut m,
            vec![normal(1, turn.put_machine().create("o-1").take())],
        )
        .await
        .unwrap();
        m.build_snapshot().await.unwrap();
        for index in 2..=4 {
            apply(
                &mut m,
                vec![normal(index, turn.create(&format!("o-{index}")).take())],
            )
            .await
            .unwrap();
            m.build_snapshot().await.unwrap();
        }
        let mut files: Vec<_> = std::fs::read_dir(&snapshots)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        assert_eq!(
            files,
            vec![
                "group-00000000000000000003.snap",
                "group-00000000000000000004.snap"
            ]
        );
        // A new machine on the directory starts from the newest.
        let mut again = open().expect("reopen");
        let current = again.get_current_snapshot().await.unwrap().expect("loaded");
        assert_eq!(current.meta.last_log_id.map(|l| l.index), Some(4));
        again
            .install_snapshot(&current.meta, current.snapshot)
            .await
            .unwrap();
        assert_eq!(state_of(&again, "o-4").unwrap().0, "created");
        // One flipped byte in the newest: the start is refused, naming it.
        let newest = snapshots.join(&files[1]);
        let mut bytes = std::fs::read(&newest).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        std::fs::write(&newest, bytes).unwrap();
        let err = open().err().expect("damaged snapshot refused");
        assert!(err.contains(&files[1]) && err.contains("checksum"), "{err}");
    });
}
