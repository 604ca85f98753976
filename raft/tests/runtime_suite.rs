//! openraft's own conformance suite for runtimes, run against the glommio
//! adapter: every primitive openraft uses (spawn, timers, timeouts, select,
//! the MPSC/watch/oneshot channels, the mutex, task locals, the
//! deterministic-RNG wrapper) checked on real glommio executors.

#[path = "support/memlock.rs"]
mod memlock;

use corestate_raft::GlommioRuntime;
use openraft::testing::runtime::Suite;
use openraft::AsyncRuntime;

/// The whole suite: it builds its own executors with `GlommioRuntime::new`
/// (several, one after another on this thread) and runs each check inside
/// one with `block_on`.
#[test]
fn openraft_runtime_suite_passes_on_glommio() {
    memlock::raise_memlock_limit();
    Suite::<GlommioRuntime>::test_all();
}

/// The same checks on an executor the caller owns, as a shard does.
#[test]
fn openraft_runtime_suite_passes_on_a_callers_executor() {
    memlock::raise_memlock_limit();
    let mut rt = GlommioRuntime::new(1);
    Suite::<GlommioRuntime>::test_all_on(&mut rt);
}
