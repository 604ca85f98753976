//! Per-shard snapshots: a shard's whole state at one WAL offset, so recovery
//! replays only the log after it and compaction can delete segments it covers.
//!
//! * `data.rs` — the plain in-memory form (`SnapshotData`), taken from and
//!   turned back into a `ShardState`;
//! * `codec/` — the checksummed binary file format (layout in `mod.rs`,
//!   `encode.rs`, `decode.rs`);
//! * `store.rs` — the `snapshots/` directory of a shard: atomic writes,
//!   listing, loading the newest valid snapshot, retention.
//!
//! A snapshot says "every record with offset ≤ `covered_offset` is reflected
//! here". Recovery loads the newest valid one and replays records with a
//! larger offset. Because a damaged newest snapshot falls back to the
//! previous one, WAL segments may be deleted only when the *oldest retained*
//! snapshot covers them (see `store.rs`).

pub mod codec;
pub mod data;
pub mod store;

pub use codec::{
    decode, decode_header, decode_state, encode, LogPosition, SnapshotEncoder, SnapshotError,
    SnapshotHeader,
};
pub use data::SnapshotData;
pub use store::{
    list_snapshots, load_newest, write_snapshot, LoadedSnapshot, SnapshotFile, SnapshotLoadError,
    WrittenSnapshot, SNAPSHOTS_RETAINED,
};
