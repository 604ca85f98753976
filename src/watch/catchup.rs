//! Reading the merged stream from the shards' logs: for a subscription that
//! starts at an old offset (`from_offset`) or fell behind the in-memory ring.
//! The merge itself (no gap, no duplicate) is `shards::shard::merged_read`;
//! here are the sizes a catch-up round reads.

use shards::shard::merged_read::{self, EventStretch};
use shards::EngineError;

use crate::server::context::Router;

/// Records each shard reads per catch-up round.
pub const WATCH_CATCHUP_RECORDS_PER_SHARD_MAX: usize = 4096;
/// Bytes each shard reads per catch-up round.
pub const WATCH_CATCHUP_BYTES_PER_SHARD_MAX: usize = 1024 * 1024;

/// The oldest offset every shard still holds in its log, if `from` is older.
pub fn too_old(oldest_per_shard: &[Option<u64>], from: u64) -> Option<u64> {
    let oldest = oldest_per_shard.iter().flatten().copied().max()?;
    (from < oldest).then_some(oldest)
}

pub async fn read_merged(router: &Router, from: u64) -> Result<EventStretch, EngineError> {
    merged_read::read_events(
        router.all(),
        from,
        WATCH_CATCHUP_RECORDS_PER_SHARD_MAX,
        WATCH_CATCHUP_BYTES_PER_SHARD_MAX,
    )
    .await
}
