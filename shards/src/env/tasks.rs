//! The tasks interface: how a shard waits (timers), runs work beside its
//! loop (tasks on its executor, blocking calls, background jobs), and stops
//! the process when memory can no longer be trusted.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::maintenance::{Job, Maintenance};

/// A task of the shard's executor.
pub type LocalTask = Pin<Box<dyn Future<Output = ()>>>;

pub trait Tasks {
    /// Complete after `duration` of (monotonic) time.
    fn sleep(&self, duration: Duration) -> LocalTask;
    /// Run `task` on the shard's executor beside the loop.
    fn spawn(&self, task: LocalTask);
    /// Let the executor's other tasks run — and its I/O be polled — before
    /// the caller goes on (a loop turn that ended with work left).
    fn yield_to_others(&self) -> LocalTask;
    /// Run blocking `job` without blocking the loop; completes when it did.
    fn blocking(&self, job: Job) -> LocalTask;
    /// Run `job` in the shard's background (the maintenance thread):
    /// large, blocking, never urgent work, one job after another.
    fn background(&self, job: Job);
    /// Stop the process: memory is ahead of (or disagrees with) the disk.
    fn fail_stop(&self, message: &str) -> !;
}

/// Run `job` in the background; its result arrives on the returned channel
/// (which disconnects without a value if the job could not run).
pub fn in_background<T: Send + 'static>(
    tasks: &dyn Tasks,
    job: impl FnOnce() -> T + Send + 'static,
) -> flume::Receiver<T> {
    let (tx, rx) = flume::bounded(1);
    tasks.background(Box::new(move || {
        let _ = tx.send(job());
    }));
    rx
}

/// Run blocking `job` off the loop and wait for its result.
pub async fn blocking<T: Send + 'static>(
    tasks: &dyn Tasks,
    job: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = flume::bounded(1);
    tasks
        .blocking(Box::new(move || {
            let _ = tx.send(job());
        }))
        .await;
    rx.try_recv().ok()
}

/// The real machine: glommio's timers, tasks and blocking pool on the
/// shard's executor, and the shard's maintenance thread.
pub struct GlommioTasks {
    maintenance: RefCell<Maintenance>,
}

impl GlommioTasks {
    pub fn new(shard: usize) -> Self {
        GlommioTasks {
            maintenance: RefCell::new(Maintenance::new(shard)),
        }
    }
}

impl Tasks for GlommioTasks {
    fn sleep(&self, duration: Duration) -> LocalTask {
        Box::pin(glommio::timer::sleep(duration))
    }

    fn spawn(&self, task: LocalTask) {
        glommio::spawn_local(task).detach();
    }

    /// Yields the whole task queue, not just the task: glommio keeps
    /// running a queue's tasks until it is empty or its time slice is over,
    /// so with a plain yield a shard that stays runnable starves the other
    /// tasks on its core (measured: readers of 2 MiB answers waited 20 s;
    /// tests/hardening/heavy_clients.rs). It does not make glommio poll
    /// its I/O: that happens only once no queue is runnable or the
    /// executor's preemption timer (100 ms) fired — a loop that must let
    /// I/O complete waits on a timer instead (`shard/replica.rs`).
    fn yield_to_others(&self) -> LocalTask {
        Box::pin(async { glommio::executor().yield_task_queue_now().await })
    }

    fn blocking(&self, job: Job) -> LocalTask {
        Box::pin(glommio::executor().spawn_blocking(job))
    }

    fn background(&self, job: Job) {
        self.maintenance.borrow_mut().run(job);
    }

    fn fail_stop(&self, message: &str) -> ! {
        tracing::error!("{message}");
        eprintln!("corestate: {message}");
        std::process::abort();
    }
}
