//! Reading the server's log as one stream in offset order, from the
//! shards' logs: for WAL_READ and for watchers that start from an old offset
//! or fell behind the in-memory ring.
//!
//! Each shard answers with its entries (or events) from `from` on and the
//! offset up to which its answer is complete; only what lies below the
//! smallest of those bounds is kept, so the result is exactly the merged log
//! between `from` and that bound — no gap, no duplicate — and the next read
//! starts at the bound.

use std::sync::Arc;

use super::command::ShardMsg;
use super::events::WatchEvent;
use super::log_read::LogEntry;
use crate::error::{EngineError, EngineResult};
use crate::router::ask_all;

/// Events from the shards' logs: every event with offset in
/// `[from, next_cursor)` is in `events`, in offset order.
pub struct EventStretch {
    pub events: Vec<Arc<WatchEvent>>,
    pub next_cursor: u64,
}

/// Watch events from `from` on, each shard reading at most `max_records`
/// records and `max_bytes` bytes.
pub async fn read_events(
    mailboxes: &[flume::Sender<ShardMsg>],
    from: u64,
    max_records: usize,
    max_bytes: usize,
) -> EngineResult<EventStretch> {
    let chunks = ask_all(mailboxes, |done| ShardMsg::ReadEvents {
        from_offset: from,
        max_records,
        max_bytes,
        done,
    })
    .await?;
    let mut bound = u64::MAX;
    let mut events = Vec::new();
    for chunk in chunks {
        let chunk = chunk.map_err(|e| EngineError::wal_io(format!("reading the log: {e}")))?;
        bound = bound.min(chunk.complete_upto);
        events.extend(chunk.events);
    }
    events.retain(|e| e.offset >= from && e.offset < bound);
    events.sort_unstable_by_key(|e| e.offset);
    Ok(EventStretch {
        events,
        next_cursor: bound.max(from),
    })
}

/// One merged read of the log's entries.
pub struct EntryPage {
    /// Entries in offset order with their sequence numbers (an entry's
    /// position in the server's whole log, from 1; see `wal/sequence.rs`).
    pub records: Vec<(u64, LogEntry)>,
    /// Every entry at or after `from` and below this was considered.
    pub bound: u64,
    /// Every shard read to the end of its log.
    pub at_end: bool,
}

/// Up to `limit` entries from `from` on, numbered: the entries every shard
/// wrote below `from`, plus each entry's place among those from `from` on
/// (counting the ones an aborted batch left unseen).
pub async fn read_entries(
    mailboxes: &[flume::Sender<ShardMsg>],
    from: u64,
    limit: usize,
    max_bytes_per_shard: usize,
) -> EngineResult<EntryPage> {
    let chunks = ask_all(mailboxes, |done| ShardMsg::ReadLog {
        from_offset: from,
        max_records: limit.max(1),
        max_bytes: max_bytes_per_shard,
        done,
    })
    .await?;
    let (mut bound, mut base, mut at_end) = (u64::MAX, 0u64, true);
    let mut numbered: Vec<(u64, Option<LogEntry>)> = Vec::new();
    for chunk in chunks {
        let chunk = chunk.map_err(|e| EngineError::bad_request(e.to_string()))?;
        bound = bound.min(chunk.complete_upto);
        base += chunk.entries_before_from;
        at_end &= chunk.at_end;
        numbered.extend(chunk.entries.into_iter().map(|e| (e.offset, Some(e))));
        numbered.extend(chunk.unseen.into_iter().map(|o| (o, None)));
    }
    numbered.retain(|(o, _)| *o >= from && *o < bound);
    numbered.sort_unstable_by_key(|(o, _)| *o);
    let records = numbered
        .into_iter()
        .enumerate()
        .filter_map(|(i, (_, e))| e.map(|e| (base + i as u64 + 1, e)))
        .take(limit)
        .collect();
    Ok(EntryPage {
        records,
        bound,
        at_end,
    })
}
