//! BATCH (docs/PROTOCOL.md §9; issue 3): best-effort batches report every op in order;
//! atomic batches are all-or-nothing across shards (two-phase commit),
//! isolated from concurrent readers, and atomic across a SIGKILL at any
//! moment. Only instance ops and machine/instance reads may appear inside;
//! a nested BATCH or a session op rejects the whole batch; at most 100 ops.
//!
//! Instances are placed by `crc32c(instance_id) % 2` (the harness runs two
//! shards); the cross-shard tests pick ids on both.

#[path = "../support/mod.rs"]
mod support;

// What the batch tests share.
mod elements;
mod instances;
mod rng;
mod watcher;

// One behaviour per file.
mod atomic;
mod atomic_failure;
mod best_effort;
mod isolation;
mod rejected;
mod sigkill;
