//! A deterministic, single-threaded executor for the simulation. Tasks
//! belong to a group (one incarnation of the simulated server); the next
//! task to run is drawn at random from those that are ready, by the run's
//! seeded generator; when none is ready, time jumps to the earliest timer.
//! A crash drops every task of a group at once, wherever it was waiting —
//! inside a group commit, a snapshot write or a two-phase commit.
//!
//! A task that fail-stops (`FailStop`, raised by the simulated `Tasks`) is
//! dropped and reported to the driver, which crashes the server; any other
//! panic is a bug and is passed on.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use super::clock::SimClock;
use super::rng::Rng;

pub type Group = u32;
pub type LocalTask = Pin<Box<dyn Future<Output = ()>>>;

/// The payload of a simulated fail-stop.
#[derive(Debug, Clone)]
pub struct FailStop(pub String);

/// Timers of the simulation: shared with the simulated disk (latency), so
/// behind a lock, though only one thread ever touches it.
/// Wakers by (deadline in ns, registration number), and the next number.
type TimerTable = (BTreeMap<(u64, u64), Waker>, u64);

#[derive(Default)]
pub struct Timers {
    inner: Mutex<TimerTable>,
}

impl Timers {
    fn clear(&self) {
        self.inner.lock().expect("timers").0.clear();
    }

    fn register(&self, deadline_ns: u64, waker: Waker) {
        let mut t = self.inner.lock().expect("timers");
        let seq = t.1;
        t.1 += 1;
        t.0.insert((deadline_ns, seq), waker);
    }

    /// The earliest deadline, if any timer is set.
    fn earliest(&self) -> Option<u64> {
        let t = self.inner.lock().expect("timers");
        t.0.keys().next().map(|(d, _)| *d)
    }

    /// Wake every timer due at `now_ns`.
    fn fire(&self, now_ns: u64) {
        let due: Vec<Waker> = {
            let mut t = self.inner.lock().expect("timers");
            let later = t.0.split_off(&(now_ns + 1, 0));
            std::mem::replace(&mut t.0, later).into_values().collect()
        };
        for w in due {
            w.wake();
        }
    }
}

/// Completes once the simulated clock reaches `deadline_ns`.
pub struct Sleep {
    timers: Arc<Timers>,
    clock: Arc<SimClock>,
    deadline_ns: u64,
}

impl Sleep {
    pub fn new(timers: Arc<Timers>, clock: Arc<SimClock>, d: Duration) -> Sleep {
        let deadline_ns = clock.now_ns() + d.as_nanos() as u64;
        Sleep {
            timers,
            clock,
            deadline_ns,
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.clock.now_ns() >= self.deadline_ns {
            return Poll::Ready(());
        }
        self.timers.register(self.deadline_ns, cx.waker().clone());
        Poll::Pending
    }
}

struct TaskWake {
    id: usize,
    queued: Arc<AtomicBool>,
    woken: Arc<Mutex<Vec<usize>>>,
}

impl Wake for TaskWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::SeqCst) {
            self.woken.lock().expect("woken").push(self.id);
        }
    }
}

struct Task {
    group: Group,
    fut: Option<LocalTask>,
    queued: Arc<AtomicBool>,
    waker: Waker,
}

pub struct Executor {
    pub clock: Arc<SimClock>,
    pub timers: Arc<Timers>,
    woken: Arc<Mutex<Vec<usize>>>,
    tasks: RefCell<Vec<Option<Task>>>,
    ready: RefCell<Vec<usize>>,
    rng: RefCell<Rng>,
    fail_stops: RefCell<Vec<(Group, String)>>,
    /// Most simulated time one step may take (besides timer jumps).
    step_time_max_ns: u64,
}

/// How a `run_until` ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The condition holds.
    Done,
    /// Nothing can run and no timer is set.
    Quiet,
    /// A task fail-stopped.
    FailStop,
    /// The step budget ran out.
    Budget,
}

impl Executor {
    pub fn new(clock: Arc<SimClock>, rng: Rng) -> Executor {
        install_quiet_fail_stop_hook();
        Executor {
            clock,
            timers: Arc::new(Timers::default()),
            woken: Arc::new(Mutex::new(Vec::new())),
            tasks: RefCell::new(Vec::new()),
            ready: RefCell::new(Vec::new()),
            rng: RefCell::new(rng),
            fail_stops: RefCell::new(Vec::new()),
            step_time_max_ns: 20_000,
        }
    }

    pub fn spawn(&self, group: Group, fut: LocalTask) {
        let mut tasks = self.tasks.borrow_mut();
        let id = tasks.len();
        let queued = Arc::new(AtomicBool::new(true));
        let waker = Waker::from(Arc::new(TaskWake {
            id,
            queued: queued.clone(),
            woken: self.woken.clone(),
        }));
        tasks.push(Some(Task {
            group,
            fut: Some(fut),
            queued,
            waker,
        }));
        self.ready.borrow_mut().push(id);
    }

    /// Drop every task of `group`, wherever it waits.
    pub fn cancel_group(&self, group: Group) {
        let dropped: Vec<Task> = {
            let mut tasks = self.tasks.borrow_mut();
            tasks
                .iter_mut()
                .filter(|t| t.as_ref().is_some_and(|t| t.group == group))
                .filter_map(Option::take)
                .collect()
        };
        // Dropped outside the borrow: a task's destructor may spawn or wake.
        drop(dropped);
    }

    /// Drop every task (the end of a run: tasks hold the executor, so
    /// without this neither would ever be freed).
    pub fn cancel_all(&self) {
        let dropped: Vec<Task> = self.tasks.borrow_mut().drain(..).flatten().collect();
        drop(dropped);
        self.ready.borrow_mut().clear();
        self.timers.clear();
    }

    /// Fail-stops since the last call: (group, message).
    pub fn take_fail_stops(&self) -> Vec<(Group, String)> {
        std::mem::take(&mut self.fail_stops.borrow_mut())
    }

    fn collect_woken(&self) {
        let woken = std::mem::take(&mut *self.woken.lock().expect("woken"));
        let mut ready = self.ready.borrow_mut();
        ready.extend(woken);
    }

    /// Run one ready task once; `false` when none is ready.
    fn step(&self) -> bool {
        self.collect_woken();
        let id = {
            let mut ready = self.ready.borrow_mut();
            if ready.is_empty() {
                return false;
            }
            let i = self.rng.borrow_mut().index(ready.len());
            ready.swap_remove(i)
        };
        let taken = {
            let mut tasks = self.tasks.borrow_mut();
            tasks.get_mut(id).and_then(|slot| {
                let task = slot.as_mut()?;
                task.queued.store(false, Ordering::SeqCst);
                Some((task.group, task.fut.take()?, task.waker.clone()))
            })
        };
        let Some((group, mut fut, waker)) = taken else {
            return true;
        };
        let spent = self.rng.borrow_mut().below(self.step_time_max_ns);
        self.clock.advance_by(Duration::from_nanos(spent));
        let mut cx = Context::from_waker(&waker);
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.as_mut().poll(&mut cx)));
        let mut tasks = self.tasks.borrow_mut();
        match polled {
            Ok(Poll::Pending) => {
                if let Some(Some(task)) = tasks.get_mut(id) {
                    task.fut = Some(fut);
                }
            }
            Ok(Poll::Ready(())) => tasks[id] = None,
            Err(payload) => match payload.downcast::<FailStop>() {
                Ok(stop) => {
                    tasks[id] = None;
                    self.fail_stops.borrow_mut().push((group, stop.0));
                }
                Err(other) => {
                    drop(tasks);
                    std::panic::resume_unwind(other)
                }
            },
        }
        true
    }

    /// Jump to the earliest timer and wake what is due; `false` if none.
    fn fire_next_timer(&self) -> bool {
        match self.timers.earliest() {
            Some(deadline) => {
                self.clock.advance_to(deadline);
                self.timers.fire(self.clock.now_ns());
                true
            }
            None => false,
        }
    }

    /// Run until `done()` holds, nothing can run, a task fail-stops, or
    /// `max_steps` steps ran.
    pub fn run_until(&self, max_steps: u64, mut done: impl FnMut() -> bool) -> Stopped {
        for _ in 0..max_steps {
            if done() {
                return Stopped::Done;
            }
            if !self.fail_stops.borrow().is_empty() {
                return Stopped::FailStop;
            }
            if !self.step() && !self.fire_next_timer() {
                return if done() {
                    Stopped::Done
                } else {
                    Stopped::Quiet
                };
            }
        }
        Stopped::Budget
    }

    /// Run for `d` of simulated time (or until a fail-stop).
    pub fn run_for(&self, d: Duration, max_steps: u64) -> Stopped {
        let until = self.clock.now_ns() + d.as_nanos() as u64;
        // A timer at the end, so that time reaches it even when all is quiet.
        let (timers, clock) = (self.timers.clone(), self.clock.clone());
        self.spawn(Group::MAX, Box::pin(Sleep::new(timers, clock, d)));
        let clock = self.clock.clone();
        self.run_until(max_steps, || clock.now_ns() >= until)
    }
}

/// Fail-stops are expected in the simulation: keep them out of the test
/// output (every other panic is printed as usual).
fn install_quiet_fail_stop_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<FailStop>().is_none() {
                previous(info);
            }
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    fn exec(seed: u64) -> Executor {
        Executor::new(Arc::new(SimClock::new(0)), Rng::new(seed))
    }

    #[test]
    fn timers_move_time_and_order_is_replayed_by_the_seed() {
        let order = |seed| {
            let e = exec(seed);
            let log = Rc::new(RefCell::new(Vec::new()));
            for i in 0..5u64 {
                let (log, timers, clock) = (log.clone(), e.timers.clone(), e.clock.clone());
                e.spawn(
                    1,
                    Box::pin(async move {
                        Sleep::new(timers, clock, Duration::from_millis(10 * i)).await;
                        log.borrow_mut().push(i);
                    }),
                );
            }
            assert_eq!(e.run_until(1_000, || false), Stopped::Quiet);
            assert!(e.clock.now_ns() >= 40_000_000);
            let v = log.borrow().clone();
            v
        };
        assert_eq!(order(3), vec![0, 1, 2, 3, 4]);
        assert_eq!(order(3), order(3));
    }

    #[test]
    fn a_cancelled_group_stops_where_it_waits() {
        let e = exec(1);
        let reached = Rc::new(Cell::new(false));
        let (r, timers, clock) = (reached.clone(), e.timers.clone(), e.clock.clone());
        e.spawn(
            7,
            Box::pin(async move {
                Sleep::new(timers, clock, Duration::from_secs(1)).await;
                r.set(true);
            }),
        );
        // One step: the task is waiting for its timer.
        e.run_until(1, || false);
        e.cancel_group(7);
        e.run_until(1_000, || false);
        assert!(!reached.get());
    }

    #[test]
    fn a_fail_stop_is_reported_not_propagated() {
        let e = exec(1);
        e.spawn(
            3,
            Box::pin(async { std::panic::panic_any(FailStop("disk gone".into())) }),
        );
        assert_eq!(e.run_until(100, || false), Stopped::FailStop);
        assert_eq!(e.take_fail_stops(), vec![(3, "disk gone".to_string())]);
    }
}
