//! The deterministic simulation of a corestate server — 1 to 4 shards and
//! the batch coordinator — on a simulated disk and clock, driven by one
//! seed (test support; see `run.rs` for what a run does and checks).
//!
//! * `rng.rs` — the seeded generator every choice comes from;
//! * `clock.rs`, `executor.rs`, `tasks.rs` — simulated time, a single-
//!   threaded executor that picks the next ready task by the seed, and the
//!   shards' `Tasks` on it;
//! * `disk.rs` — a disk that keeps only what POSIX promises (synced data,
//!   synced directory entries), tears and drops the rest at a power loss,
//!   and injects EIO, short writes, a full disk and latency;
//! * `world.rs` — the server under test: open, run, crash and reopen its
//!   shards on that disk;
//! * `model.rs` — what was acknowledged and observed, and the checks a
//!   recovered server must pass;
//! * `workload.rs` — simulated clients;
//! * `run.rs` — one seed, end to end; `checks.rs` — what is checked after
//!   every restart; `salvage.rs` — planted damage, refusal and `--salvage`;
//!   `scenarios.rs` — situations set up on purpose.

// The `sim` feature exposes the disk and what it needs (clock, timers,
// seeded generator) to other crates' tests; the server simulation itself
// is this crate's tests only.
#[cfg(test)]
pub mod checks;
pub mod clock;
pub mod disk;
pub mod executor;
#[cfg(test)]
pub mod model;
pub mod rng;
#[cfg(test)]
pub mod run;
#[cfg(test)]
pub mod salvage;
#[cfg(test)]
mod scenarios;
#[cfg(test)]
pub mod tasks;
#[cfg(test)]
pub mod workload;
#[cfg(test)]
pub mod world;

#[cfg(test)]
mod tests;
