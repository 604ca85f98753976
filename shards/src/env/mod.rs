//! What a shard asks of the world outside its memory, behind three
//! interfaces — so that the same shard code runs on the real machine and,
//! deterministically, in the simulator (`crate::sim`):
//!
//! * `Storage` (`storage.rs`): every file and directory operation — log
//!   segments (asynchronous, io_uring through glommio in production),
//!   manifests, snapshots, retirement, recovery's reads and repairs;
//! * `Clock` (`clock.rs`): wall-clock time (timestamps, offset ticks) and
//!   monotonic time (intervals, timeouts);
//! * `Tasks` (`tasks.rs`): timers, background tasks on the shard's
//!   executor, blocking jobs off the loop, and fail-stop.
//!
//! Production: `os::OsStorage`, `clock::SystemClock`, `tasks::GlommioTasks`.

pub mod clock;
pub(crate) mod maintenance;
pub mod memory;
pub mod os;
pub mod storage;
pub mod tasks;

use std::rc::Rc;
use std::sync::Arc;

pub use clock::{Clock, SystemClock};
pub use storage::{FileMeta, ReadFile, SegmentFile, Storage, WriteFile};
pub use tasks::{GlommioTasks, Tasks};

/// A shard's environment. Cheap to clone; lives on the shard's executor
/// (the `Tasks` part is not `Send`).
#[derive(Clone)]
pub struct Env {
    pub storage: Arc<dyn Storage>,
    pub clock: Arc<dyn Clock>,
    pub tasks: Rc<dyn Tasks>,
}

impl Env {
    /// The real machine, for shard `shard`, on the calling glommio executor.
    pub fn os(shard: usize) -> Env {
        Env {
            storage: Arc::new(os::OsStorage),
            clock: Arc::new(SystemClock),
            tasks: Rc::new(GlommioTasks::new(shard)),
        }
    }

    /// Stop the process: memory can no longer be trusted to match the disk.
    pub fn fail_stop(&self, shard: usize, what: &str, err: &dyn std::fmt::Display) -> ! {
        let msg = format!(
            "fatal: shard {shard}: {what}: {err}; stopping the server so that recovery restores a consistent state"
        );
        self.tasks.fail_stop(&msg)
    }
}
