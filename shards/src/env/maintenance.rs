//! The shard's maintenance thread (production `Tasks::background`): storage
//! work that is large, blocking and never urgent — sealing and writing a
//! snapshot file, deleting compacted segments — runs here, so that the
//! shard's loop keeps answering requests.
//!
//! The thread is a plain OS thread, started on first use, that may run on
//! any CPU and runs at a lower priority (`MAINTENANCE_NICE`): when the
//! machine is busy the scheduler prefers the shard loops, and the work is
//! done in their idle time. (glommio's own blocking pool would not do: it is
//! pinned to the shard's CPU at normal priority, so a 100 ms file write
//! there takes turns with the loop and every request waits milliseconds.)
//! The priority is lowered only moderately, so that the work still finishes
//! on a saturated machine and cannot hold a file-system lock for long.
//!
//! Priority is not enough on its own: a kernel built without preemption
//! (`PREEMPT_NONE`, as on the machines we measure on) does not preempt a
//! thread inside a system call, so a job must not make long ones — the snapshot
//! writer and the segment retirer work in small steps for that reason.
//!
//! A job's result comes back on a channel that the loop polls between group
//! commits. When the shard drops its handle the thread finishes the job it
//! has (a snapshot written halfway is only a temporary file) and ends;
//! nobody waits for it.

/// Nice value of maintenance threads (shard loops run at 0).
pub const MAINTENANCE_NICE: i32 = 10;

pub type Job = Box<dyn FnOnce() + Send>;

pub struct Maintenance {
    shard: usize,
    /// Jobs for the thread, once started.
    worker: Option<flume::Sender<Job>>,
}

impl Maintenance {
    pub fn new(shard: usize) -> Self {
        Maintenance {
            shard,
            worker: None,
        }
    }

    /// Run `job` on the maintenance thread (dropped unrun if the thread
    /// cannot be started, which the job's owner sees as a closed channel).
    pub fn run(&mut self, job: Job) {
        if self.worker.is_none() {
            if let Err(e) = self.start() {
                tracing::error!(
                    "shard {}: cannot start the maintenance thread: {e}",
                    self.shard
                );
                return;
            }
        }
        if let Some(jobs) = &self.worker {
            let _ = jobs.send(job);
        }
    }

    fn start(&mut self) -> std::io::Result<()> {
        let (tx, jobs) = flume::unbounded::<Job>();
        let shard = self.shard;
        std::thread::Builder::new()
            .name(format!("cs-maint-{shard}"))
            .spawn(move || {
                lower_priority(shard);
                for job in jobs.iter() {
                    // A panicking job only loses its own result (and the
                    // server's panic hook stops the process anyway).
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })?;
        self.worker = Some(tx);
        Ok(())
    }
}

/// Let the calling thread run on every CPU (a thread inherits the pinning
/// of the shard thread that started it) at `MAINTENANCE_NICE`.
fn lower_priority(shard: usize) {
    // SAFETY: plain system calls on the calling thread with a zeroed,
    // fully initialised cpu_set_t.
    unsafe {
        let mut all: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..libc::CPU_SETSIZE as usize {
            libc::CPU_SET(cpu, &mut all);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &all) != 0 {
            tracing::debug!(
                "shard {shard}: maintenance thread stays pinned: {}",
                std::io::Error::last_os_error()
            );
        }
        let tid = libc::gettid() as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS as _, tid, MAINTENANCE_NICE) != 0 {
            tracing::debug!(
                "shard {shard}: maintenance thread keeps its priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice_of_current_thread() -> i32 {
        // SAFETY: reads the calling thread's priority.
        unsafe { libc::getpriority(libc::PRIO_PROCESS as _, libc::gettid() as libc::id_t) }
    }

    fn run<T: Send + 'static>(
        m: &mut Maintenance,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> flume::Receiver<T> {
        let (tx, rx) = flume::bounded(1);
        m.run(Box::new(move || {
            let _ = tx.send(job());
        }));
        rx
    }

    #[test]
    fn jobs_run_in_order_on_a_lower_priority_thread() {
        let mut m = Maintenance::new(7);
        let first = run(&mut m, || {
            (
                nice_of_current_thread(),
                std::thread::current().name().map(String::from),
            )
        });
        let second = run(&mut m, || 2 + 2);
        let (nice, name) = first.recv().unwrap();
        assert_eq!(nice, MAINTENANCE_NICE);
        assert_eq!(name.as_deref(), Some("cs-maint-7"));
        assert_eq!(second.recv().unwrap(), 4);
    }

    #[test]
    fn a_panicking_job_disconnects_and_the_next_job_still_runs() {
        let mut m = Maintenance::new(0);
        let failed = run(&mut m, || -> u32 { panic!("job failed on purpose") });
        assert!(failed.recv().is_err());
        assert_eq!(run(&mut m, || 5).recv().unwrap(), 5);
    }
}
