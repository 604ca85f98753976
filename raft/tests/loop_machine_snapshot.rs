//! A group snapshot whose state the shard loop replaced while taking it
//! (the loop rebuilt after a lost lead, installed a snapshot, or ran
//! FLUSH_ALL) is abandoned by the loop: it drops the answer's sender. The
//! machine's builder must then ask for the state as it is now. Failing the
//! build instead is a storage error to openraft, which stops the member's
//! Raft for good: a loaded leader did, and with a follower down its group
//! never had a leader again (bench-results/2026-12-07/snapshot-catch-up).
//!
//! Here the test plays the shard loop: it reads the machine's deliveries,
//! drops the first snapshot request and answers the second.

#[path = "support/memlock.rs"]
mod memlock;

use corestate_raft::log_store::{WalLogOptions, WalLogStore};
use corestate_raft::shard_group::{decode_group, snapshot_file, LoopMachine, ShardGroup};
use corestate_raft::GlommioRuntime;
use futures_util::future::{select, Either};
use openraft::storage::RaftStateMachine;
use openraft::{AsyncRuntime, RaftSnapshotBuilder};
use shards::env::Env;
use shards::shard::group_link::{Delivery, GroupImage};
use shards::snapshot::{LogPosition, SnapshotEncoder};
use shards::wal::FsyncPolicy;

const SHARD: usize = 0;

/// The image the fake loop answers the second request with: an empty
/// shard whose position and batch bookkeeping are recognisable.
fn image_taken_again() -> GroupImage {
    let at = LogPosition {
        covered_offset: 4096,
        last_tick: 7,
        entries: 3,
    };
    GroupImage {
        image: SnapshotEncoder::new(SHARD, at).into_unsealed(),
        in_doubt: Vec::new(),
        committed: (vec![10, 20], 30),
    }
}

/// Play the shard loop until it has answered a snapshot request: drop the
/// first (abandoned), answer the next. Returns how many were asked.
async fn loop_abandoning_the_first(deliveries: flume::Receiver<Delivery>) -> usize {
    let mut asked = 0;
    while let Ok(delivery) = deliveries.recv_async().await {
        if let Delivery::Snapshot(done) = delivery {
            asked += 1;
            if asked == 1 {
                drop(done);
            } else {
                done.send(image_taken_again()).expect("the builder waits");
                return asked;
            }
        }
    }
    panic!("the machine dropped its deliveries after {asked} snapshot requests");
}

#[test]
fn a_snapshot_the_loop_abandoned_is_taken_again_not_failed() {
    memlock::raise_memlock_limit();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rt = GlommioRuntime::new(1);
    rt.block_on(async {
        let env = Env::os(SHARD);
        let storage = env.storage.clone();
        let options = WalLogOptions {
            shard: SHARD,
            fsync: FsyncPolicy::EveryWrite,
            segment_size_bytes: 64 * 1024,
            node_id: 1,
        };
        let (log, _) = WalLogStore::<ShardGroup>::open(env, &dir.path().join("raft"), options)
            .await
            .expect("open the member's log");
        let snapshot_dir = dir.path().join("snapshots");
        let (deliver, deliveries) = flume::bounded(16);
        let mut machine = LoopMachine::open(
            SHARD,
            false,
            storage.clone(),
            snapshot_dir.clone(),
            &log,
            deliver,
        )
        .expect("open the machine");
        let mut builder = machine.get_snapshot_builder().await;

        let build = Box::pin(builder.build_snapshot());
        let fake_loop = Box::pin(loop_abandoning_the_first(deliveries));
        let snapshot = match select(build, fake_loop).await {
            Either::Left((built, _)) => panic!(
                "the build ended before it asked again: {:?}",
                built.map(|s| s.meta)
            ),
            Either::Right((asked, build)) => {
                assert_eq!(asked, 2, "one abandoned request, one answered");
                build.await.expect("the snapshot taken again")
            }
        };

        // What was built is the image the second request returned, and
        // it is on disk and the machine's current snapshot.
        let decoded = decode_group(&snapshot.snapshot.0, false).expect("a group snapshot");
        assert_eq!(decoded.position.covered_offset, 4096);
        assert_eq!(decoded.position.entries, 3);
        assert_eq!(decoded.txns.committed.copy(), (vec![10, 20], 30));
        let (meta, bytes) = snapshot_file::load_newest(&*storage, &snapshot_dir)
            .expect("read the snapshot directory")
            .expect("the snapshot was written");
        assert_eq!(meta, snapshot.meta);
        assert_eq!(bytes.0, snapshot.snapshot.0);
        let current = machine
            .get_current_snapshot()
            .await
            .expect("read the current snapshot")
            .expect("a current snapshot");
        assert_eq!(current.meta, snapshot.meta);
    });
}
