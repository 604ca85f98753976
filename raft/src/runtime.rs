//! openraft's `AsyncRuntime` on glommio: what lets a Raft group run on the
//! shard executor that owns its data (invariant 1 of docs/ARCHITECTURE.md).
//!
//! openraft is built with its `single-threaded` feature, which turns its
//! `OptionalSend`/`OptionalSync` bounds into empty traits: the Raft core,
//! the log store, the state machine and the network may then hold `Rc`,
//! `RefCell` and glommio file handles, and every task openraft spawns is a
//! glommio task on the calling executor. Nothing here starts a thread or
//! crosses a core.
//!
//! Choices that are not obvious:
//!
//! * **Spawn = `glommio::spawn_local(..).detach()`.** openraft treats a join
//!   handle like tokio's: dropping it lets the task run on. A glommio `Task`
//!   cancels its future when dropped, so every task is detached and the
//!   detached handle is what openraft awaits. It must be called on a glommio
//!   executor (glommio panics otherwise) — always true for a shard.
//! * **Join errors are only cancellations.** A panic inside a glommio task
//!   unwinds the executor's thread (corestate's panic hook then aborts the
//!   process, invariant 8), so a handle never reports a panic; it reports
//!   `None` only when the task was cancelled or the executor went away, and
//!   that is [`TaskCancelled`]. [`GlommioRuntime::is_panic`] is therefore
//!   always `false`.
//! * **Time is `std::time::Instant` and glommio timers.** glommio's timers
//!   are themselves keyed by `std::time::Instant`, so a deadline computed by
//!   openraft and the timer that fires for it read the same clock. `sleep`
//!   and `timeout` are thin futures over `glommio::timer::Timer` (a timer
//!   entry in the executor's reactor, no allocation beyond glommio's own);
//!   `timeout` polls the inner future first, so a future that is ready at
//!   its deadline still wins, as with tokio.
//! * **Channels and the mutex are executor-agnostic crates** (see
//!   `channels.rs`), because openraft's contracts (bounded MPSC with exact
//!   capacity and weak senders, a tokio-style watch) are richer than
//!   glommio's local channels.
//! * **`new`/`block_on` build a private `LocalExecutor`.** openraft never
//!   calls them itself; they exist for tests (its runtime suite creates
//!   several runtimes in a row on one thread). In production the shard's
//!   executor already runs and openraft is started inside it.
//! * **Randomness is the thread's RNG** (`rand::rng()`): openraft uses it
//!   only to spread election timeouts and the first tick of its timer.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use glommio::timer::Timer;
use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};
use openraft::{AsyncRuntime, OptionalSend};
use pin_project_lite::pin_project;

use crate::channels::{FlumeMpsc, FuturesOneshot, LocalMutex, TokioWatch};

/// Memory glommio reserves for I/O buffers in an executor made by
/// [`AsyncRuntime::new`] (tests only: such an executor does no file I/O of
/// its own, and the process's locked-memory limit is small).
pub const TEST_EXECUTOR_IO_MEMORY_BYTES: usize = 256 << 10;

/// openraft's runtime on the calling glommio executor.
///
/// The value itself is only needed for [`AsyncRuntime::block_on`]; the
/// Raft code uses the associated functions, which act on the executor of
/// the calling thread.
pub struct GlommioRuntime {
    executor: LocalExecutor,
}

impl fmt::Debug for GlommioRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GlommioRuntime")
            .field("executor_id", &self.executor.id())
            .finish()
    }
}

/// Why a [`GlommioJoinHandle`] has no output: the task was cancelled, or its
/// executor stopped before the task finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskCancelled;

impl fmt::Display for TaskCancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("glommio task cancelled before it finished")
    }
}

impl std::error::Error for TaskCancelled {}

/// The handle of a detached glommio task; dropping it does not stop the task.
pub struct GlommioJoinHandle<T>(glommio::task::JoinHandle<T>);

impl<T> Future for GlommioJoinHandle<T> {
    type Output = Result<T, TaskCancelled>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|output| output.ok_or(TaskCancelled))
    }
}

/// A sleep on the executor's timer wheel.
pub struct GlommioSleep(Timer);

impl GlommioSleep {
    fn until(deadline: Instant) -> Self {
        GlommioSleep(Timer::new(
            deadline.saturating_duration_since(Instant::now()),
        ))
    }
}

impl Future for GlommioSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_fired_at| ())
    }
}

/// A deadline passed before the future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl std::error::Error for Elapsed {}

pin_project! {
    /// `future` bounded by a deadline; dropping it drops `future`.
    pub struct GlommioTimeout<F> {
        #[pin]
        future: F,
        deadline: GlommioSleep,
    }
}

impl<F: Future> Future for GlommioTimeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        Pin::new(this.deadline).poll(cx).map(|()| Err(Elapsed))
    }
}

impl AsyncRuntime for GlommioRuntime {
    type JoinError = TaskCancelled;
    type JoinHandle<T: OptionalSend + 'static> = GlommioJoinHandle<T>;
    type Sleep = GlommioSleep;
    type Instant = Instant;
    type TimeoutError = Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = GlommioTimeout<T>;
    type ThreadLocalRng = rand::rngs::ThreadRng;

    #[track_caller]
    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        GlommioJoinHandle(glommio::spawn_local(future).detach())
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        GlommioSleep(Timer::new(duration))
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        GlommioSleep::until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        GlommioTimeout {
            future,
            deadline: Self::sleep(duration),
        }
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        GlommioTimeout {
            future,
            deadline: GlommioSleep::until(deadline),
        }
    }

    fn is_panic(_join_error: &Self::JoinError) -> bool {
        // See the module comment: a panic never reaches a join handle.
        false
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        rand::rng()
    }

    type Mpsc = FlumeMpsc;
    type Watch = TokioWatch;
    type Oneshot = FuturesOneshot;
    type Mutex<T: OptionalSend + 'static> = LocalMutex<T>;

    /// A new executor on the calling thread, for tests; `_threads` is
    /// ignored (a glommio executor is one thread).
    ///
    /// # Panics
    /// If glommio cannot create an executor (io_uring unavailable, or too
    /// little locked memory): a test cannot go on without one.
    fn new(_threads: usize) -> Self {
        let executor = LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(TEST_EXECUTOR_IO_MEMORY_BYTES)
            .make()
            .unwrap_or_else(|err| panic!("cannot create a glommio executor: {err}"));
        GlommioRuntime { executor }
    }

    /// # Panics
    /// When called on a thread that is already running a glommio executor
    /// (glommio does not nest executors).
    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.executor.run(future)
    }
}
