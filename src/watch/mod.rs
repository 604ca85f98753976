//! Watch streams (docs/PROTOCOL.md §10): shards publish their durable events with a
//! watermark; `merge` turns the shards' streams into one stream ordered by
//! `wal_offset`; each subscription is a cursor over that stream
//! (`subscription`), served from a bounded in-memory ring while it keeps up
//! and from the shards' logs (`catchup`) when it falls behind or asks for
//! history with `from_offset`.

pub mod catchup;
pub mod deliver;
pub mod demand;
pub mod merge;
pub mod merge_task;
pub mod subscription;
