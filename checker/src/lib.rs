//! Jepsen-style checking of what clients saw (issue 14, item 14).
//!
//! Clients record per-instance histories of CREATE_INSTANCE, APPLY_EVENT
//! and GET_INSTANCE — each an invocation and an outcome: ok (with the
//! result), a definite failure, or unknown — with real-time instants
//! ([`history`]). Each instance's history is checked for linearizability
//! against the machine's sequential model ([`model`], [`check`]), and the
//! committed log is checked separately for lost and phantom writes and
//! against watch streams ([`durability`]).
//!
//! The checker knows nothing of sockets or processes: the single-node test
//! (`tests/linearizability/`) feeds it today, the cluster harness later.
//!
//! # Why our own Wing–Gong–Lowe search
//!
//! The crates looked at do not fit this model:
//! * `stateright` 0.31's `LinearizabilityTester` allows one operation in
//!   flight per thread and serializes by plain backtracking without
//!   memoization, re-cloning its per-thread maps at every level of a
//!   recursion as deep as the history — exponential when it must reject,
//!   and thousands of frames deep on a few seconds of load. It also brings
//!   an HTTP explorer, `dashmap` and `rand` into the test build.
//! * `todc-utils` 0.1 (a WGL checker) takes its specification as static
//!   functions (`init()`, `apply(op, state)`) with no place for the machine
//!   definition, and requires every operation to have a response, so an
//!   unknown write cannot be "took effect, or never did".
//!
//! [`wgl`] is a compact WGL search (Lowe's memoization of visited
//! (linearized set, state) pairs), written here, in which unknown
//! operations have no end and are optional, and the model state carries
//! what is known of the instance's `wal_offset`.

pub mod check;
pub mod durability;
pub mod history;
pub mod machine;
mod model;
pub mod settle;
mod wgl;

pub use check::{
    check_history, check_history_with, check_instance, InstanceReport, Report, Verdict,
    SEARCH_STEPS_MAX,
};
pub use durability::{
    check_committed_log, check_watch_stream, Change, Committed, DurabilityStats, FinalRead,
    StreamEvent,
};
pub use history::{Call, ClientLog, Clock, Counts, Failure, History, Op, Outcome, Pending, Reply};
pub use machine::Machine;
pub use model::{InstanceState, Offset};
pub use settle::Settled;
