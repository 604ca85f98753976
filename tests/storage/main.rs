//! Storage through the protocol and across real crashes: WAL_READ merged
//! across shards and its `sequence` numbers, WAL_STATS, COMPACT reclaiming
//! disk without losing anything, SNAPSHOT_INSTANCE, FLUSH_ALL that a restart
//! does not undo; SIGKILL under concurrent load loses no acknowledged write
//! and never leaves half of one; a torn WAL tail is repaired with a warning;
//! corruption in the middle of a log refuses start-up (naming the file)
//! unless `--salvage` is given.

#[path = "../support/mod.rs"]
mod support;

// What these tests share.
mod acked_load;
mod counter;
mod segments;

// One behaviour per file.
mod compaction;
mod deep_values;
mod flush_all;
mod log_corruption;
mod sigkill_under_load;
mod snapshot_instance;
mod torn_tail;
mod wal_read;
mod wal_sequence;
mod wal_stats;
