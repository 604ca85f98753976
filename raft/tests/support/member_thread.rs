//! A cluster member on a thread of its own (and its own glommio executor,
//! started by the body), driven by the test thread through commands: the
//! plumbing `peer_member.rs` and `group_node.rs` share.

#![allow(dead_code)]

use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long any one step may take before the test fails.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct MemberThread<C: Send + 'static> {
    commands: flume::Sender<C>,
    stop: fn() -> C,
    thread: Option<JoinHandle<()>>,
}

impl<C: Send + 'static> MemberThread<C> {
    /// Run `body` on a new thread named `name`; it serves the commands it
    /// receives until `stop()`'s command arrives.
    pub fn spawn(
        name: String,
        stop: fn() -> C,
        body: impl FnOnce(flume::Receiver<C>) + Send + 'static,
    ) -> MemberThread<C> {
        let (commands, inbox) = flume::unbounded();
        let thread = thread::Builder::new()
            .name(name)
            .spawn(move || body(inbox))
            .expect("spawn member thread");
        MemberThread {
            commands,
            stop,
            thread: Some(thread),
        }
    }

    /// Send a command made around a reply channel; its answer.
    pub fn ask<T>(&self, make: impl FnOnce(flume::Sender<T>) -> C) -> T {
        let (tx, rx) = flume::bounded(1);
        self.commands.send(make(tx)).expect("the member runs");
        rx.recv_timeout(STEP_TIMEOUT).expect("the member answers")
    }

    /// Send the stop command and join the thread.
    pub fn stop(&mut self) {
        let _ = self.commands.send((self.stop)());
        if let Some(thread) = self.thread.take() {
            thread.join().expect("member thread ends cleanly");
        }
    }
}

impl<C: Send + 'static> Drop for MemberThread<C> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `cond` every few milliseconds until it holds or `STEP_TIMEOUT`
/// passes; returns how long it took.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < STEP_TIMEOUT,
            "timed out after {STEP_TIMEOUT:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}
