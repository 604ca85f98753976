//! The WAL log store across crashes, on shards' simulated disk: a power
//! loss keeps what was synced and drops, keeps or tears (at sector
//! granularity) each write since. After each crash the store is opened
//! again on what survived; what it promised must be there, what it
//! dropped must stay dropped, and it must go on appending.

#[allow(dead_code)]
#[path = "support/mem_store.rs"]
mod mem_store;
#[path = "support/memlock.rs"]
mod memlock;

use std::rc::Rc;
use std::sync::Arc;

use corestate_raft::log_store::{
    OpenReport, WalEntry, WalLeaderId, WalLogId, WalLogOptions, WalLogStore, WalVote,
    CACHED_ENTRIES_MAX, LAZY_RECORD_LINGER_MS,
};
use corestate_raft::GlommioRuntime;
use mem_store::{Put, TestConfig};
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use openraft::{AsyncRuntime, EntryPayload, LogId, RaftLogReader, Vote};
use shards::env::{Env, GlommioTasks, SystemClock};
use shards::sim::clock::SimClock;
use shards::sim::disk::{CrashKind, Faults, SimDisk, SimStorage};
use shards::sim::executor::Timers;
use shards::sim::rng::Rng;
use shards::wal::FsyncPolicy;

/// Small segments: a few dozen entries each, so logs span several.
const SEGMENT_SIZE_BYTES: u64 = 16 * 1024;
/// Crashes tried for the torn-write test, one seed each.
const TORN_WRITE_SEEDS: u64 = 40;

type Store = WalLogStore<TestConfig>;
type Entry = WalEntry<Put>;

fn new_disk(seed: u64) -> Arc<SimDisk> {
    SimDisk::new(
        Faults::default(),
        Rng::new(seed),
        Arc::new(Timers::default()),
        Arc::new(SimClock::new(0)),
    )
}

async fn open(disk: &Arc<SimDisk>, fsync: FsyncPolicy) -> (Store, OpenReport) {
    let env = Env {
        storage: Arc::new(SimStorage(disk.clone())),
        clock: Arc::new(SystemClock),
        tasks: Rc::new(GlommioTasks::new(0)),
    };
    let options = WalLogOptions {
        shard: 0,
        fsync,
        segment_size_bytes: SEGMENT_SIZE_BYTES,
        node_id: 1,
    };
    WalLogStore::open(env, std::path::Path::new("/sim/raft"), options)
        .await
        .unwrap_or_else(|e| panic!("reopen: {e}"))
}

fn log_id(term: u64, index: u64) -> WalLogId {
    LogId::new(WalLeaderId { term, node_id: 1 }, index)
}

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Put {
            key: format!("k{index}"),
            value: format!("v{index}-t{term}-{}", "x".repeat(40)),
        }),
    }
}

/// Append and wait for `IOFlushed`.
async fn append_flushed(store: &mut Store, entries: Vec<Entry>) {
    let (tx, rx) = TestConfig::oneshot();
    store
        .append(entries, IOFlushed::signal(tx))
        .await
        .expect("append");
    rx.await.expect("callback").expect("flushed");
}

async fn append_terms(store: &mut Store, term: u64, indexes: std::ops::RangeInclusive<u64>) {
    append_flushed(store, indexes.map(|i| entry(term, i)).collect()).await;
}

/// Crash the machine and drop the store (its flusher ends with it).
fn crash(store: Store, disk: &Arc<SimDisk>, kind: CrashKind, seed: u64) {
    drop(store);
    disk.crash(kind, &mut Rng::new(seed));
}

async fn all_entries(store: &mut Store) -> Vec<Entry> {
    let mut reader = store.get_log_reader().await;
    reader.try_get_log_entries(0..u64::MAX).await.expect("read")
}

fn run<T>(test: impl std::future::Future<Output = T> + 'static) -> T {
    memlock::raise_memlock_limit();
    GlommioRuntime::new(1).block_on(test)
}

#[test]
fn entries_whose_callback_fired_survive_a_power_loss() {
    run(async {
        let disk = new_disk(1);
        let (mut store, _) = open(&disk, FsyncPolicy::EveryWrite).await;
        for i in 1..=5 {
            append_terms(&mut store, 1, i..=i).await;
        }
        // Queued, callback not fired: may be lost, must not corrupt.
        store
            .append(vec![entry(1, 6), entry(1, 7)], IOFlushed::noop())
            .await
            .unwrap();
        crash(store, &disk, CrashKind::PowerLossUnsyncedGone, 1);
        let (mut store, report) = open(&disk, FsyncPolicy::EveryWrite).await;
        assert_eq!(report.last_log_id, Some(log_id(1, 5)));
        let expected: Vec<Entry> = (1..=5).map(|i| entry(1, i)).collect();
        assert_eq!(all_entries(&mut store).await, expected);
    });
}

#[test]
fn a_vote_returned_from_save_vote_survives_under_any_policy() {
    for fsync in [FsyncPolicy::EveryWrite, FsyncPolicy::EveryN(1_000_000)] {
        run(async move {
            let disk = new_disk(2);
            let (mut store, _) = open(&disk, fsync).await;
            // Under every_n these are written, not synced: the vote's sync,
            // ordered after them, makes them durable too.
            append_terms(&mut store, 1, 1..=3).await;
            let vote: WalVote = Vote::new(4, 2);
            store.save_vote(&vote).await.unwrap();
            crash(store, &disk, CrashKind::PowerLossUnsyncedGone, 2);
            let (mut store, report) = open(&disk, fsync).await;
            let mut reader = store.get_log_reader().await;
            assert_eq!(reader.read_vote().await.unwrap(), Some(vote), "{fsync:?}");
            assert_eq!(report.last_log_id, Some(log_id(1, 3)), "{fsync:?}");
        });
    }
}

#[test]
fn truncated_entries_never_come_back_though_they_were_synced() {
    run(async {
        let disk = new_disk(3);
        let (mut store, _) = open(&disk, FsyncPolicy::EveryWrite).await;
        append_terms(&mut store, 1, 1..=10).await;
        store.truncate_after(Some(log_id(1, 5))).await.unwrap();
        append_terms(&mut store, 2, 6..=7).await;
        crash(store, &disk, CrashKind::PowerLossUnsyncedGone, 3);
        let (mut store, report) = open(&disk, FsyncPolicy::EveryWrite).await;
        assert_eq!(report.last_log_id, Some(log_id(2, 7)));
        let expected: Vec<Entry> = (1..=5)
            .map(|i| entry(1, i))
            .chain((6..=7).map(|i| entry(2, i)))
            .collect();
        assert_eq!(all_entries(&mut store).await, expected);
        // A truncation followed by nothing but a durable vote.
        store.truncate_after(Some(log_id(1, 3))).await.unwrap();
        store.save_vote(&Vote::new(3, 1)).await.unwrap();
        crash(store, &disk, CrashKind::PowerLossUnsyncedGone, 4);
        let (mut store, report) = open(&disk, FsyncPolicy::EveryWrite).await;
        assert_eq!(report.last_log_id, Some(log_id(1, 3)));
        assert_eq!(all_entries(&mut store).await.len(), 3);
    });
}

#[test]
fn purged_entries_never_come_back() {
    run(async {
        let disk = new_disk(4);
        let (mut store, _) = open(&disk, FsyncPolicy::EveryWrite).await;
        append_terms(&mut store, 1, 1..=10).await;
        store.purge(log_id(1, 4)).await.unwrap();
        append_terms(&mut store, 1, 11..=11).await;
        crash(store, &disk, CrashKind::PowerLossUnsyncedGone, 5);
        let (mut store, report) = open(&disk, FsyncPolicy::EveryWrite).await;
        assert_eq!(report.last_purged, Some(log_id(1, 4)));
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 4)));
        assert_eq!(state.last_log_id, Some(log_id(1, 11)));
        let expected: Vec<Entry> = (5..=11).map(|i| entry(1, i)).collect();
        assert_eq!(all_entries(&mut store).await, expected);
        // Purged past the end: the log is empty and continues after it.
        store.purge(log_id(1, 20)).await.unwrap();
        append_terms(&mut store, 2, 21..=21).await;
        crash(store, &disk, CrashKind::PowerLossUnsyncedGone, 6);
        let (mut store, _) = open(&disk, FsyncPolicy::EveryWrite).await;
        assert_eq!(all_entries(&mut store).await, vec![entry(2, 21)]);
    });
}

#[test]
fn a_torn_last_write_recovers_to_a_prefix_and_the_log_goes_on() {
    let mut cut_inside_the_group = 0;
    for seed in 0..TORN_WRITE_SEEDS {
        let last = run(async move {
            let disk = new_disk(seed);
            // every_n with a large n: groups are written but not synced,
            // so the last one is in flight at the crash; the vote's sync
            // is the barrier before it.
            let fsync = FsyncPolicy::EveryN(1_000_000);
            let (mut store, _) = open(&disk, fsync).await;
            append_terms(&mut store, 1, 1..=10).await;
            store.save_vote(&Vote::new(1, 1)).await.unwrap();
            append_terms(&mut store, 1, 11..=30).await;
            crash(store, &disk, CrashKind::PowerLoss, seed);
            let (mut store, report) = open(&disk, fsync).await;
            let found = all_entries(&mut store).await;
            let last = found.len() as u64;
            assert!((10..=30).contains(&last), "seed {seed}: {last} entries");
            let expected: Vec<Entry> = (1..=last).map(|i| entry(1, i)).collect();
            assert_eq!(found, expected, "seed {seed}: not a prefix");
            assert_eq!(report.last_log_id, Some(log_id(1, last)));
            // Appends continue after the cut, and a restart finds them.
            append_terms(&mut store, 2, last + 1..=last + 5).await;
            store.save_vote(&Vote::new(2, 1)).await.unwrap();
            crash(store, &disk, CrashKind::PowerLossUnsyncedGone, seed);
            let (mut store, report) = open(&disk, fsync).await;
            assert_eq!(report.last_log_id, Some(log_id(2, last + 5)), "seed {seed}");
            assert_eq!(all_entries(&mut store).await.len() as u64, last + 5);
            last
        });
        cut_inside_the_group += u32::from(last > 10 && last < 30);
    }
    assert!(
        cut_inside_the_group > 0,
        "no seed tore the last group inside: the test proves nothing"
    );
}

#[test]
fn appends_between_flushes_share_one_sync() {
    run(async {
        let disk = new_disk(5);
        let (mut store, _) = open(&disk, FsyncPolicy::EveryWrite).await;
        append_terms(&mut store, 1, 1..=1).await;
        let before = store.wal_stats();
        // Ten appends before the flusher runs: one group, one sync.
        let mut waiting = Vec::new();
        for i in 2..=11 {
            let (tx, rx) = TestConfig::oneshot();
            store
                .append(vec![entry(1, i)], IOFlushed::signal(tx))
                .await
                .unwrap();
            waiting.push(rx);
        }
        for rx in waiting {
            rx.await.unwrap().unwrap();
        }
        let after = store.wal_stats();
        assert_eq!(after.syncs - before.syncs, 1);
        assert_eq!(after.group_commits - before.group_commits, 1);
        assert_eq!(after.records_appended - before.records_appended, 10);
        // One at a time, waiting for each: one sync each.
        for i in 12..=14 {
            append_terms(&mut store, 1, i..=i).await;
        }
        assert_eq!(store.wal_stats().syncs - after.syncs, 3);
    });
}

#[test]
fn old_entries_are_read_back_from_the_segments() {
    run(async {
        let disk = new_disk(6);
        let (mut store, _) = open(&disk, FsyncPolicy::EveryWrite).await;
        let total = CACHED_ENTRIES_MAX as u64 * 2;
        let mut next = 1;
        while next <= total {
            let last = (next + 99).min(total);
            append_terms(&mut store, 1, next..=last).await;
            next = last + 1;
        }
        assert!(store.cached_entries() <= CACHED_ENTRIES_MAX);
        assert!(store.wal_stats().segments_created > 2, "spans segments");
        let expected: Vec<Entry> = (1..=total).map(|i| entry(1, i)).collect();
        assert_eq!(all_entries(&mut store).await, expected);
        crash(store, &disk, CrashKind::ProcessKill, 6);
        let (mut store, _) = open(&disk, FsyncPolicy::EveryWrite).await;
        assert_eq!(store.cached_entries(), 0, "recovery caches nothing");
        assert_eq!(all_entries(&mut store).await, expected);
    });
}

#[test]
fn damage_to_a_synced_entry_refuses_the_start_naming_the_file() {
    run(async {
        let disk = new_disk(7);
        let (mut store, _) = open(&disk, FsyncPolicy::EveryWrite).await;
        append_terms(&mut store, 1, 1..=3).await;
        append_terms(&mut store, 1, 4..=6).await;
        crash(store, &disk, CrashKind::ProcessKill, 7);
        let segment = std::path::Path::new("/sim/raft/0000000000000001.wal");
        // Inside the first entry's payload; later groups were written after.
        disk.damage(segment, 50, 0x10).unwrap();
        let env = Env {
            storage: Arc::new(SimStorage(disk.clone())),
            clock: Arc::new(SystemClock),
            tasks: Rc::new(GlommioTasks::new(0)),
        };
        let options = WalLogOptions {
            shard: 0,
            fsync: FsyncPolicy::EveryWrite,
            segment_size_bytes: SEGMENT_SIZE_BYTES,
            node_id: 1,
        };
        let Err(err) = Store::open(env, std::path::Path::new("/sim/raft"), options).await else {
            panic!("a damaged acknowledged entry must refuse the start");
        };
        let message = err.to_string();
        assert!(message.contains("0000000000000001.wal"), "{message}");
        assert!(message.contains("byte 0"), "{message}");
    });
}

#[test]
fn a_committed_id_rides_with_the_next_write_and_is_written_alone_only_after_a_wait() {
    run(async {
        let disk = new_disk(7);
        let (mut store, _) = open(&disk, FsyncPolicy::EveryWrite).await;
        append_terms(&mut store, 1, 1..=1).await;
        let before = store.wal_stats();
        // The committed id, then an append right behind it: one group,
        // one sync, both records.
        store.save_committed(Some(log_id(1, 1))).await.unwrap();
        append_terms(&mut store, 1, 2..=2).await;
        let after = store.wal_stats();
        assert_eq!(after.syncs - before.syncs, 1, "no sync of its own");
        assert_eq!(after.records_appended - before.records_appended, 2);
        // Alone, it is written once the linger is over.
        store.save_committed(Some(log_id(1, 2))).await.unwrap();
        let linger = std::time::Duration::from_millis(LAZY_RECORD_LINGER_MS);
        glommio::timer::sleep(linger / 2).await;
        assert_eq!(store.wal_stats().records_appended, after.records_appended);
        glommio::timer::sleep(linger * 3).await;
        assert_eq!(
            store.wal_stats().records_appended,
            after.records_appended + 1
        );
        assert_eq!(store.wal_stats().syncs, after.syncs + 1);
        // And it is on disk: a restart reads it back.
        crash(store, &disk, CrashKind::PowerLossUnsyncedGone, 7);
        let (mut store, _) = open(&disk, FsyncPolicy::EveryWrite).await;
        assert_eq!(store.read_committed().await.unwrap(), Some(log_id(1, 2)));
    });
}
