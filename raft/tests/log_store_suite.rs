//! openraft's own log-store suite (`openraft::testing::log::Suite`, 45
//! checks of the log, the vote, purge/truncate, the state machine and
//! snapshot transfer) against the in-memory test store, run inside a
//! glommio executor. It proves the storage traits work under the
//! `single-threaded` feature with `Rc` stores; the shard WAL will have to
//! pass the same suite.

#[path = "support/mem_store.rs"]
mod mem_store;
#[path = "support/memlock.rs"]
mod memlock;

use mem_store::{MemLogStore, MemStateMachine, TestConfig};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{AsyncRuntime, StorageError};

use corestate_raft::GlommioRuntime;

/// Builds a fresh, empty log and state machine for each check.
struct MemStoreBuilder;

impl StoreBuilder<TestConfig, MemLogStore, MemStateMachine> for MemStoreBuilder {
    async fn build(&self) -> Result<((), MemLogStore, MemStateMachine), StorageError<TestConfig>> {
        Ok(((), MemLogStore::default(), MemStateMachine::default()))
    }
}

#[test]
fn openraft_log_store_suite_passes_on_glommio() {
    memlock::raise_memlock_limit();
    let mut rt = GlommioRuntime::new(1);
    rt.block_on(Suite::test_all(MemStoreBuilder))
        .expect("openraft's log-store suite");
}
