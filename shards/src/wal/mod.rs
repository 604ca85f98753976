//! The per-shard write-ahead log: record format, entries, segment files,
//! group-commit writer, recovery scan, and the offset scheme (`offset.rs`
//! explains how offsets stay unique across shards and mergeable by order).

pub mod entry;
mod entry_scan;
pub mod files;
pub mod head;
pub mod manifest;
pub mod offset;
pub mod policy;
pub mod reader;
pub mod record;
pub mod recovery;
pub mod resync;
pub mod retire;
pub mod rollover;
pub mod segment;
pub mod sequence;
pub mod writer;

pub use offset::{Frontier, OffsetClock};
pub use policy::FsyncPolicy;
pub use writer::{CommitIo, RecordPlace, RolloverNews, WalOpen, WalStats, WalWriter};
