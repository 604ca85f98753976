//! openraft's log-store suite (`openraft::testing::log::Suite`) on the WAL
//! log store over real segment files in a temporary directory (through
//! io_uring, as in production), with the in-memory test state machine. A
//! fresh directory for every check.

// Only the state machine and the type config are used here.
#[allow(dead_code)]
#[path = "support/mem_store.rs"]
mod mem_store;
#[path = "support/memlock.rs"]
mod memlock;

use corestate_raft::log_store::{WalLogOptions, WalLogStore};
use corestate_raft::GlommioRuntime;
use mem_store::{MemStateMachine, TestConfig};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{AsyncRuntime, StorageError};
use shards::env::Env;
use shards::wal::FsyncPolicy;

/// Small segments, so the suite's logs roll over a few times.
const SEGMENT_SIZE_BYTES: u64 = 64 * 1024;

struct WalStoreBuilder;

impl StoreBuilder<TestConfig, WalLogStore<TestConfig>, MemStateMachine, tempfile::TempDir>
    for WalStoreBuilder
{
    async fn build(
        &self,
    ) -> Result<
        (tempfile::TempDir, WalLogStore<TestConfig>, MemStateMachine),
        StorageError<TestConfig>,
    > {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = WalLogOptions {
            shard: 0,
            fsync: FsyncPolicy::EveryWrite,
            segment_size_bytes: SEGMENT_SIZE_BYTES,
            node_id: 1,
        };
        let (store, _) = WalLogStore::open(Env::os(0), &dir.path().join("raft"), options)
            .await
            .expect("open the WAL log store");
        Ok((dir, store, MemStateMachine::default()))
    }
}

#[test]
fn openraft_log_store_suite_passes_on_the_wal_store() {
    memlock::raise_memlock_limit();
    let mut rt = GlommioRuntime::new(1);
    rt.block_on(Suite::test_all(WalStoreBuilder))
        .expect("openraft's log-store suite on the WAL store");
}
