//! The simulated `Tasks`: timers on the simulated clock, tasks and
//! background jobs on the simulation's executor (in the group of the server
//! incarnation that spawned them), blocking calls run in place, and a
//! fail-stop that drops the task and tells the driver instead of aborting.

use std::rc::Rc;
use std::time::Duration;

use super::executor::{Executor, FailStop, Group, Sleep};
use crate::env::maintenance::Job;
use crate::env::tasks::{LocalTask, Tasks};

pub struct SimTasks {
    pub exec: Rc<Executor>,
    pub group: Group,
}

impl Tasks for SimTasks {
    fn sleep(&self, duration: Duration) -> LocalTask {
        Box::pin(Sleep::new(
            self.exec.timers.clone(),
            self.exec.clock.clone(),
            duration,
        ))
    }

    fn spawn(&self, task: LocalTask) {
        self.exec.spawn(self.group, task);
    }

    fn yield_to_others(&self) -> LocalTask {
        Box::pin(futures_lite::future::yield_now())
    }

    fn blocking(&self, job: Job) -> LocalTask {
        job();
        Box::pin(async {})
    }

    fn background(&self, job: Job) {
        // A task of its own: it runs at a step the seed chooses, between
        // the loop's turns, as the maintenance thread would.
        self.exec.spawn(self.group, Box::pin(async move { job() }));
    }

    fn fail_stop(&self, message: &str) -> ! {
        std::panic::panic_any(FailStop(message.to_string()))
    }
}
