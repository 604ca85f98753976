//! Reading the merged stream from the shards' logs: for a subscription that
//! starts at an old offset (`from_offset`) or fell behind the in-memory ring.
//!
//! Each shard returns its events from the cursor on and the offset up to
//! which its answer is complete; the merge keeps only events below the
//! smallest of those bounds, so the result is exactly the global stream
//! between the cursor and that bound, in offset order — no gap, no
//! duplicate — and the cursor moves to the bound.

use std::sync::Arc;

use shards::shard::events::WatchEvent;
use shards::shard::ShardMsg;
use shards::EngineError;

use crate::server::context::Router;

/// Records each shard reads per catch-up round.
pub const WATCH_CATCHUP_RECORDS_PER_SHARD_MAX: usize = 4096;
/// Bytes each shard reads per catch-up round.
pub const WATCH_CATCHUP_BYTES_PER_SHARD_MAX: usize = 1024 * 1024;

pub struct CatchUp {
    pub events: Vec<Arc<WatchEvent>>,
    /// Every event with offset in [from, next_cursor) is in `events`.
    pub next_cursor: u64,
}

/// The oldest offset every shard still holds in its log, if `from` is older.
pub fn too_old(oldest_per_shard: &[Option<u64>], from: u64) -> Option<u64> {
    let oldest = oldest_per_shard.iter().flatten().copied().max()?;
    (from < oldest).then_some(oldest)
}

pub async fn read_merged(router: &Router, from: u64) -> Result<CatchUp, EngineError> {
    let mut waits = Vec::with_capacity(router.shards());
    for mailbox in router.all() {
        let (tx, rx) = flume::bounded(1);
        mailbox
            .send(ShardMsg::ReadEvents {
                from_offset: from,
                max_records: WATCH_CATCHUP_RECORDS_PER_SHARD_MAX,
                max_bytes: WATCH_CATCHUP_BYTES_PER_SHARD_MAX,
                done: tx,
            })
            .map_err(|_| EngineError::internal("shard mailbox closed"))?;
        waits.push(rx);
    }
    let mut bound = u64::MAX;
    let mut events = Vec::new();
    for rx in waits {
        let chunk = rx
            .recv_async()
            .await
            .map_err(|_| EngineError::internal("shard stopped before answering"))?
            .map_err(|e| EngineError::wal_io(format!("reading the log: {e}")))?;
        bound = bound.min(chunk.complete_upto);
        events.extend(chunk.events);
    }
    events.retain(|e| e.offset >= from && e.offset < bound);
    events.sort_unstable_by_key(|e| e.offset);
    Ok(CatchUp {
        events,
        next_cursor: bound.max(from),
    })
}
