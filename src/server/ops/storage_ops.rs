//! SNAPSHOT_INSTANCE, WAL_READ, WAL_STATS, COMPACT, FLUSH_ALL (docs/PROTOCOL.md §4.11–4.14,
//! §11), fanned out to the shards and merged.
//!
//! WAL_READ merges the shards' logs by offset the same way watch catch-up
//! does: each shard answers with its entries from `from_offset` and the bound
//! up to which that answer is complete; only entries below the smallest bound
//! are returned, so consecutive reads (`next_offset`) see every entry exactly
//! once, in offset order. Machine definitions are logged on every shard;
//! WAL_READ shows shard 0's copy only (the other shards leave theirs out).
//! `sequence` is an entry's position in the server's whole log, from 1
//! (see `shards::wal::sequence`).

use serde_json::Value;
use shards::json::canonical;
use shards::shard::merged_read;
use shards::shard::result::ResultWriter;
use shards::shard::{ShardMsg, ShardStats};
use shards::{EngineError, EngineResult, ErrorCode};

use crate::protocol::op::Op;
use crate::protocol::params::{Params, WAL_OFFSET_MAX};
use crate::server::context::{Router, ServerCtx};

/// WAL_READ's `limit` when none is given.
pub const WAL_READ_LIMIT_DEFAULT: usize = 100;
/// Largest `limit` WAL_READ serves (a larger one is served as this).
pub const WAL_READ_LIMIT_MAX: usize = 1000;
/// Bytes each shard reads for one WAL_READ.
pub const WAL_READ_BYTES_PER_SHARD_MAX: usize = 4 * 1024 * 1024;
/// Further rounds one WAL_READ reads when a round found no entry to show
/// (only batch decisions) but did not reach the end of the log.
pub const WAL_READ_EMPTY_ROUNDS_MAX: usize = 16;

pub async fn handle(ctx: &ServerCtx, op: Op, params: &Value) -> EngineResult<Vec<u8>> {
    match op {
        Op::WalRead => wal_read(ctx, params).await,
        Op::WalStats => wal_stats(&ctx.router).await,
        Op::Compact => compact(&ctx.router, params).await,
        Op::SnapshotInstance => snapshot_instance(ctx, params).await,
        Op::FlushAll => flush_all(ctx).await,
        _ => Err(EngineError::internal("not a storage operation")),
    }
}

/// `from_offset`: an integer offset. Its alias `fromOffset` may also be a
/// string of digits, because the Node client sends it that way (PROTOCOL.md §15
/// row 40); `from_offset` itself is never coerced.
fn from_offset_param(p: &Params<'_>) -> EngineResult<u64> {
    if let Some(from) = p.opt_offset("from_offset")? {
        return Ok(from);
    }
    match p.get("fromOffset") {
        Some(Value::String(s)) => s
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|&o| o <= WAL_OFFSET_MAX)
            .ok_or_else(|| {
                EngineError::bad_request(format_args!(
                    "invalid value: string {s:?}, expected a WAL offset (at most 2^53-1)"
                ))
            }),
        Some(Value::Null) | None => Err(EngineError::bad_request("missing from_offset")),
        Some(_) => p
            .opt_offset("fromOffset")?
            .ok_or_else(|| EngineError::bad_request("missing from_offset")),
    }
}

/// WAL_READ's `limit`: an integer; absent or `null` means the default, and
/// a larger one is served as `WAL_READ_LIMIT_MAX`.
fn limit_param(p: &Params<'_>) -> EngineResult<usize> {
    let limit = p.opt_u64("limit")?.map_or(WAL_READ_LIMIT_DEFAULT, |l| {
        l.min(WAL_READ_LIMIT_MAX as u64) as usize
    });
    Ok(limit)
}

async fn wal_read(ctx: &ServerCtx, params: &Value) -> EngineResult<Vec<u8>> {
    let p = Params::loose(params);
    let mut from = from_offset_param(&p)?;
    let limit = limit_param(&p)?;
    let read = |from| {
        merged_read::read_entries(ctx.router.all(), from, limit, WAL_READ_BYTES_PER_SHARD_MAX)
    };
    let mut page = read(from).await?;
    // A stretch of the log may hold nothing to show (batch decisions only):
    // read on rather than answer an empty page that looks like the end.
    for _ in 0..WAL_READ_EMPTY_ROUNDS_MAX {
        if !page.records.is_empty() || page.at_end || page.bound <= from || limit == 0 {
            break;
        }
        from = page.bound;
        page = read(from).await?;
    }
    let mut records = b"[".to_vec();
    for (i, (sequence, e)) in page.records.iter().enumerate() {
        if i > 0 {
            records.push(b',');
        }
        let entry: Value = serde_json::from_slice(&e.payload).map_err(|err| {
            EngineError::new(
                ErrorCode::WalIoError,
                format!("unreadable entry at offset {}: {err}", e.offset),
            )
        })?;
        let mut r = ResultWriter::new();
        r.raw("entry", &canonical::to_vec(&entry))
            .u64("offset", e.offset)
            .u64("sequence", *sequence);
        records.extend_from_slice(&r.finish());
    }
    records.push(b']');
    let mut r = ResultWriter::new();
    match page.records.last() {
        Some((_, last)) => r.u64("next_offset", last.offset + 1),
        // Nothing to show yet, but not the end: where to go on from.
        None if !page.at_end && page.bound > from && limit > 0 => r.u64("next_offset", page.bound),
        None => r.raw("next_offset", b"null"),
    };
    r.raw("records", &records);
    Ok(r.finish())
}

pub async fn shard_stats(router: &Router) -> EngineResult<Vec<ShardStats>> {
    let depths: Vec<u64> = router.all().iter().map(|m| m.len() as u64).collect();
    let mut stats = router.ask_all(|done| ShardMsg::Stats { done }).await?;
    for (s, depth) in stats.iter_mut().zip(depths) {
        s.mailbox_depth = depth;
    }
    Ok(stats)
}

/// WAL_STATS (PROTOCOL.md §11.8) with real numbers: `oldest_offset` is where a
/// WAL_READ or watch can start from (per shard: its oldest record), `entry_count` is the number of
/// entries the server has written (the sequence of the newest, as WAL_READ
/// numbers them; not reduced by compaction), `total_size_bytes` the bytes of
/// records the log files hold (`allocated_size_bytes`: what the
/// pre-allocated files take on disk), `io_stats` counts since start-up
/// (reads: start-up recovery, WAL_READ and watch catch-up), and `shards`
/// the same per shard.
async fn wal_stats(router: &Router) -> EngineResult<Vec<u8>> {
    let stats = shard_stats(router).await?;
    let sum = |f: &dyn Fn(&ShardStats) -> u64| stats.iter().map(f).sum::<u64>();
    let mut per_shard = b"[".to_vec();
    for (i, s) in stats.iter().enumerate() {
        if i > 0 {
            per_shard.push(b',');
        }
        let mut r = ResultWriter::new();
        r.u64("allocated_size_bytes", s.log_bytes_allocated)
            .u64("bytes_read", s.reads.bytes_read)
            .u64("entry_count", s.entries)
            .u64("fsyncs", s.wal.syncs)
            .u64("group_commits", s.wal.group_commits)
            .u64("latest_offset", s.next_offset);
        match s.oldest_offset {
            Some(o) => r.u64("oldest_offset", o),
            None => r.raw("oldest_offset", b"null"),
        };
        r.u64("reads", s.reads.reads)
            .u64("records", s.log_records)
            .u64("records_appended", s.wal.records_appended)
            .u64("retained_from", s.retained_from)
            .u64("segment_count", s.log_segments)
            .u64("shard", s.shard as u64)
            .u64("snapshots", s.snapshots)
            .u64("total_size_bytes", s.log_data_bytes);
        per_shard.extend_from_slice(&r.finish());
    }
    per_shard.push(b']');
    let mut io = ResultWriter::new();
    io.u64("bytes_read", sum(&|s| s.reads.bytes_read))
        .u64("bytes_written", sum(&|s| s.wal.bytes_appended))
        .u64("fsyncs", sum(&|s| s.wal.syncs))
        .u64("group_commits", sum(&|s| s.wal.group_commits))
        .u64("reads", sum(&|s| s.reads.reads))
        .u64("writes", sum(&|s| s.wal.writes));
    // Where a read of the merged log can start: at or after every shard's
    // compaction point, and no earlier than the oldest record there is.
    let readable_from = stats.iter().map(|s| s.retained_from).max().unwrap_or(0);
    let oldest = stats
        .iter()
        .filter_map(|s| s.oldest_offset)
        .min()
        .map(|o| o.max(readable_from));
    let mut r = ResultWriter::new();
    r.u64("allocated_size_bytes", sum(&|s| s.log_bytes_allocated))
        .u64("entry_count", sum(&|s| s.entries))
        .raw("io_stats", &io.finish())
        .u64(
            "latest_offset",
            stats.iter().map(|s| s.next_offset).max().unwrap_or(0),
        );
    match oldest {
        Some(o) => r.u64("oldest_offset", o),
        None => r.raw("oldest_offset", b"null"),
    };
    r.u64("records", sum(&|s| s.log_records))
        .u64("segment_count", sum(&|s| s.log_segments))
        .raw("shards", &per_shard)
        .u64("total_size_bytes", sum(&|s| s.log_data_bytes));
    Ok(r.finish())
}

async fn compact(router: &Router, params: &Value) -> EngineResult<Vec<u8>> {
    let force = matches!(
        Params::loose(params).get("force_snapshot"),
        Some(Value::Bool(true))
    );
    let reports = router
        .ask_all(|done| ShardMsg::Compact {
            force_snapshot: force,
            done,
        })
        .await?;
    let (mut created, mut deleted, mut reclaimed, mut total, mut segments) = (0, 0, 0, 0, 0);
    for r in reports {
        if let Some(e) = r.error {
            return Err(EngineError::internal(e));
        }
        created += r.snapshots_created;
        deleted += r.segments_deleted;
        reclaimed += r.bytes_reclaimed;
        total += r.total_snapshots;
        segments += r.wal_segments;
    }
    let mut r = ResultWriter::new();
    r.u64("bytes_reclaimed", reclaimed)
        .u64("segments_deleted", deleted)
        .u64("snapshots_created", created)
        .u64("total_snapshots", total)
        .u64("wal_segments", segments);
    Ok(r.finish())
}

async fn snapshot_instance(ctx: &ServerCtx, params: &Value) -> EngineResult<Vec<u8>> {
    let p = Params::loose(params);
    let Some(Value::String(id)) = p.any(&["instance_id", "id"]) else {
        return Err(EngineError::bad_request("missing instance_id"));
    };
    ctx.router
        .ask(ctx.router.owner_of(id), |done| ShardMsg::SnapshotInstance {
            instance_id: id.clone(),
            done,
        })
        .await?
}

/// FLUSH_ALL (PROTOCOL.md §4.14, made durable): every shard logs a `Flush` record
/// before forgetting its data, so a restart does not bring anything back;
/// then the catalog forgets every machine.
async fn flush_all(ctx: &ServerCtx) -> EngineResult<Vec<u8>> {
    if !ctx.limits.allow_flush_all {
        return Err(EngineError::bad_request(
            "FLUSH_ALL is disabled. Set storage.allow_flush_all=true in config to enable.",
        ));
    }
    let mut instances = 0u64;
    for flushed in ctx.router.ask_all(|done| ShardMsg::Flush { done }).await? {
        instances += flushed?.0;
    }
    let machines = ctx.catalog.clear() as u64;
    let mut r = ResultWriter::new();
    r.bool("flushed", true)
        .u64("instances_removed", instances)
        .u64("machines_removed", machines);
    Ok(r.finish())
}
