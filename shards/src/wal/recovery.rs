//! Reading a shard's log back at start-up: every valid record in order, the
//! position to append at, and what to do with damage.
//!
//! # Torn write or damage?
//!
//! Records of one group commit are written by one write that starts at the
//! group's first record; every record carries that start (`group_start`).
//! Writes are issued one after another, each only after the previous one
//! completed. When the scan meets bytes that are not a valid record at
//! position `p`, it looks for a valid record anywhere after `p`:
//!
//! * none in this segment nor in any later one: the damage is the tail of
//!   the last write, which a crash interrupted — nothing in it was
//!   acknowledged under `every_write`. The tail is zeroed (with a warning)
//!   and appends continue at `p`.
//! * one whose `group_start ≤ p`: it belongs to the same interrupted write
//!   (its blocks reached the disk, earlier ones did not) — also a torn tail.
//! * one whose `group_start > p`, or any valid record in a later segment: a
//!   later write completed after the damaged bytes had been written, so an
//!   acknowledged record is damaged.
//!
//! Three more facts turn what would look like a clean end into damage:
//!
//! * **The seal** (`manifest.rs`): bytes a graceful shutdown synced cannot be
//!   a torn write. A bad record there, or a log that ends before the sealed
//!   end, is damage.
//! * **The entry count** (`sequence.rs`): every record says how many entries
//!   its shard wrote before it. A record that does not continue the count of
//!   the records before it means entries are missing in between — a deleted
//!   or emptied segment. Records a snapshot covers are not checked (their
//!   segments may have been compacted away); the first record after the
//!   snapshot must continue the snapshot's count.
//! * **The manifest's last segment**: a segment named by the manifest that
//!   is not there (the newest one deleted) is missing data.
//! * **Consecutive ids**: the writer names segments by consecutive ids and
//!   only ever removes a prefix (compaction) or an unwritten suffix (this
//!   repair), so a hole in the ids is a deleted file — even when the files
//!   around it look like a clean end.
//! * **The head** (`head.rs`, logs that name their first segment): segments
//!   below it were retired (not read, reported as leftovers); an oldest
//!   segment above it is a deleted file.
//!
//! Damage refuses start-up, naming the file and byte, unless salvage was
//! asked for: then the log is cut at the damage — everything from there on
//! is dropped, counted and reported — so the log is a consistent prefix of
//! what was written.
//!
//! Zeros after the last record of a segment followed by a later segment are
//! the normal gap left by rotation.
//!
//! Last, the unsealed tail of the log is written again and synced
//! (`resync.rs`): pages a failed sync dropped are readable but not on disk.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use super::head::split_at_head;
use super::manifest::{self, Manifest};
use super::offset::tick_of_offset;
use super::record::{decode_record, RecordDefect, RecordHeader, RECORD_MAGIC};
use super::resync::resync_tail;
use super::segment::{list_segments, segment_path, written_end};
use super::sequence::{ChainError, SequenceChain};
use super::writer::RecordPlace;
use crate::env::Storage;

/// What recovery knows besides the files themselves.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanPlan {
    pub shard: usize,
    /// Cut the log at damage instead of refusing to start.
    pub salvage: bool,
    /// Records with offset ≤ this are reflected in the snapshot recovery
    /// started from (their segments may be gone).
    pub covered: Option<u64>,
    /// Entries that snapshot counts: the first record after `covered` must
    /// say this many came before it.
    pub entries_covered: u64,
    /// The log's first segment, for a log that names it (`head.rs`).
    pub first_segment: Option<u64>,
}

/// What recovery found and did.
#[derive(Debug, Clone, Default)]
pub struct ScanOutcome {
    /// Segment to append to and the position of its end.
    pub active_segment: u64,
    pub active_end: u64,
    /// Highest tick of any record (for the offset clock).
    pub last_tick: u64,
    pub records: u64,
    pub segments: u64,
    pub bytes_scanned: u64,
    /// Entries the log holds in all (the next record's `entries_before`).
    pub entries: u64,
    pub torn_tail: Option<TailRepair>,
    pub salvage: Option<SalvageReport>,
    /// Per remaining segment: (segment id, valid records, bytes of records).
    pub segment_records: Vec<SegmentTally>,
    /// The manifest as found (before this start rewrites it).
    pub manifest: Option<Manifest>,
    /// Bytes of the log's tail written again and synced (`resync.rs`).
    pub bytes_resynced: u64,
    /// Segments below the log's first segment still on disk (`head.rs`).
    pub leftovers: Vec<u64>,
}

/// What one segment holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentTally {
    pub id: u64,
    pub records: u64,
    /// Bytes of log data (whole records) from the start of the segment.
    pub data_bytes: u64,
}

/// A torn last write that was cut off.
#[derive(Debug, Clone)]
pub struct TailRepair {
    pub path: PathBuf,
    pub position: u64,
    pub bytes_zeroed: u64,
}

/// What `--salvage` dropped.
#[derive(Debug, Clone)]
pub struct SalvageReport {
    pub path: PathBuf,
    pub position: u64,
    pub defect: String,
    pub records_dropped: u64,
    pub segments_removed: u64,
}

#[derive(Debug)]
pub enum RecoveryError {
    Io {
        path: PathBuf,
        error: io::Error,
    },
    /// Damage before the end of the acknowledged log.
    Corrupt {
        path: PathBuf,
        position: u64,
        defect: String,
        records_after: u64,
    },
    /// Segment files the manifest names are gone.
    Missing {
        path: PathBuf,
        detail: String,
    },
    /// A record with a valid checksum whose entry the engine cannot use.
    BadEntry {
        path: PathBuf,
        position: u64,
        message: String,
    },
}

impl fmt::Display for RecoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoveryError::Io { path, error } => write!(f, "{}: {error}", path.display()),
            RecoveryError::Corrupt {
                path,
                position,
                defect,
                records_after,
            } => write!(
                f,
                "damaged WAL in {} at byte {position} ({defect}); {records_after} valid \
                 record(s) follow it, and the bytes there had been written completely, so this is \
                 damage to acknowledged data, not a torn write. Refusing to start; run with \
                 --salvage to cut the log at that point and drop what follows",
                path.display()
            ),
            RecoveryError::Missing { path, detail } => write!(
                f,
                "WAL segment missing: {} ({detail}). Refusing to start; run with --salvage to \
                 start from the records that are there",
                path.display()
            ),
            RecoveryError::BadEntry {
                path,
                position,
                message,
            } => write!(
                f,
                "unreadable WAL entry in {} at byte {position}: {message}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for RecoveryError {}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RecoveryError + '_ {
    move |error| RecoveryError::Io {
        path: path.to_path_buf(),
        error,
    }
}

fn describe(defect: RecordDefect) -> String {
    match defect {
        RecordDefect::Zero => "zeroed bytes".into(),
        RecordDefect::Truncated => "truncated record".into(),
        RecordDefect::BadMagic => "bad magic".into(),
        RecordDefect::UnknownKind(k) => format!("unknown record kind {k}"),
        RecordDefect::TooLarge(n) => format!("impossible length {n}"),
        RecordDefect::CrcMismatch => "checksum mismatch".into(),
    }
}

/// The first valid record starting after `from`, if any.
fn next_valid_record(data: &[u8], from: usize) -> Option<(usize, RecordHeader)> {
    let mut pos = from;
    while pos + RECORD_MAGIC.len() <= data.len() {
        let found = data[pos..]
            .windows(RECORD_MAGIC.len())
            .position(|w| w == RECORD_MAGIC)?;
        let at = pos + found;
        if let Ok((h, _)) = decode_record(&data[at..]) {
            return Some((at, h));
        }
        pos = at + 1;
    }
    None
}

/// True when a valid record after `pos` was carried by a write that began
/// after `pos` — i.e. the bytes at `pos` had been written completely before.
fn later_written_record_after(data: &[u8], pos: usize) -> bool {
    let mut at = pos + 1;
    while let Some((found, h)) = next_valid_record(data, at) {
        if h.group_start as usize > pos {
            return true;
        }
        at = found + h.total_len();
    }
    false
}

/// Valid records from `from` on (each counted once, jumping over whole records).
/// Valid records from `from` on: how many, and the highest tick among them.
/// A cut drops them, but their offsets were handed out: the offset clock
/// must start above them so no offset is ever issued twice.
fn valid_records(data: &[u8], from: usize) -> (u64, u64) {
    let (mut count, mut last_tick) = (0, 0);
    let mut pos = from;
    while let Some((at, h)) = next_valid_record(data, pos) {
        count += 1;
        last_tick = last_tick.max(tick_of_offset(h.offset));
        pos = at + h.total_len();
    }
    (count, last_tick)
}

/// `valid_records` of whole segment files.
fn valid_records_in(
    storage: &dyn Storage,
    dir: &Path,
    ids: &[u64],
) -> Result<(u64, u64), RecoveryError> {
    let (mut count, mut last_tick) = (0, 0);
    for &id in ids {
        let p = segment_path(dir, id);
        let d = storage.read(&p).map_err(io_err(&p))?;
        let (n, tick) = valid_records(&d[..written_end(&d)], 0);
        count += n;
        last_tick = last_tick.max(tick);
    }
    Ok((count, last_tick))
}

fn zero_range(storage: &dyn Storage, path: &Path, from: u64, to: u64) -> io::Result<()> {
    if to <= from {
        return Ok(());
    }
    let file = storage.open_write(path, false)?;
    let zeros = vec![0u8; (to - from).min(1 << 20) as usize];
    let mut pos = from;
    while pos < to {
        let n = (to - pos).min(zeros.len() as u64) as usize;
        file.write_at(&zeros[..n], pos)?;
        pos += n as u64;
    }
    file.sync()
}

/// What stopped the scan of a segment before its end.
enum Damage {
    Defect(RecordDefect),
    /// Entries are missing before this record.
    Gap {
        expected: u64,
        found: u64,
    },
    /// The log ends before the sealed end.
    EndsBeforeSeal {
        sealed_end: u64,
    },
}

impl Damage {
    fn describe(&self) -> String {
        match self {
            Damage::Defect(d) => describe(*d),
            Damage::Gap { expected, found } => format!(
                "the record says this shard wrote {found} entries before it, the log before it \
                 holds {expected}: entries {}..={found} are missing (a segment file was deleted \
                 or emptied)",
                expected + 1
            ),
            Damage::EndsBeforeSeal { sealed_end } => format!(
                "the log ends here, but a graceful shutdown had synced it up to byte {sealed_end}"
            ),
        }
    }
}

/// Scan the log in `dir`, calling `visit` for every valid record in order.
pub fn scan(
    storage: &dyn Storage,
    dir: &Path,
    plan: ScanPlan,
    mut visit: impl FnMut(&RecordHeader, &[u8]) -> Result<(), String>,
) -> Result<ScanOutcome, RecoveryError> {
    scan_placed(storage, dir, plan, |_, header, payload| {
        visit(header, payload)
    })
}

/// `scan`, telling `visit` where each record is (for an index of records
/// that reads them back later, as the Raft log store keeps). Only records
/// the scan keeps are visited: a torn tail or a salvage cut comes after
/// every visited record.
pub fn scan_placed(
    storage: &dyn Storage,
    dir: &Path,
    plan: ScanPlan,
    mut visit: impl FnMut(RecordPlace, &RecordHeader, &[u8]) -> Result<(), String>,
) -> Result<ScanOutcome, RecoveryError> {
    let ids = list_segments(storage, dir).map_err(io_err(dir))?;
    let (ids, leftovers) = match plan.first_segment {
        Some(first) => split_at_head(dir, first, ids)?,
        None => (ids, Vec::new()),
    };
    let found_manifest =
        manifest::read(storage, dir).map_err(io_err(&manifest::manifest_path(dir)))?;
    let (ids, dropped_tick) = check_consecutive(storage, dir, plan, ids)?;
    let seal = found_manifest.and_then(|m| m.sealed);
    let mut out = ScanOutcome {
        active_segment: plan.first_segment.unwrap_or(1),
        leftovers,
        manifest: found_manifest,
        last_tick: dropped_tick,
        ..ScanOutcome::default()
    };
    let mut chain = SequenceChain::starting_at(plan.shard, plan.entries_covered);
    let covered = |offset: u64| plan.covered.is_some_and(|c| offset <= c);
    let mut idx = 0;
    while idx < ids.len() {
        let id = ids[idx];
        let path = segment_path(dir, id);
        let data = storage.read(&path).map_err(io_err(&path))?;
        out.segments += 1;
        out.bytes_scanned += data.len() as u64;
        out.active_segment = id;
        out.segment_records.push(SegmentTally {
            id,
            ..SegmentTally::default()
        });
        let mut pos = 0usize;
        let damage = loop {
            if pos >= data.len() {
                break None;
            }
            let (h, payload) = match decode_record(&data[pos..]) {
                Ok(record) => record,
                Err(d) => break Some(Damage::Defect(d)),
            };
            if !covered(h.offset) {
                match chain.check(&h, payload) {
                    Ok(()) => {}
                    Err(ChainError::Gap(g)) => {
                        break Some(Damage::Gap {
                            expected: g.expected,
                            found: g.found,
                        })
                    }
                    Err(ChainError::Unreadable(message)) => {
                        return Err(RecoveryError::BadEntry {
                            path,
                            position: pos as u64,
                            message,
                        })
                    }
                }
            }
            let place = RecordPlace {
                segment: id,
                position: pos as u64,
            };
            visit(place, &h, payload).map_err(|message| RecoveryError::BadEntry {
                path: path.clone(),
                position: pos as u64,
                message,
            })?;
            out.last_tick = out.last_tick.max(tick_of_offset(h.offset));
            out.records += 1;
            pos += h.total_len();
            if let Some(last) = out.segment_records.last_mut() {
                last.records += 1;
                last.data_bytes = pos as u64;
            }
        };
        out.active_end = pos as u64;
        let written = written_end(&data);
        let damage = match damage {
            Some(Damage::Defect(_)) if written <= pos => {
                // Nothing written beyond: the end of this segment's records,
                // unless the seal says more had been synced here.
                match seal {
                    Some(s) if s.segment == id && (pos as u64) < s.end_bytes => {
                        Some(Damage::EndsBeforeSeal {
                            sealed_end: s.end_bytes,
                        })
                    }
                    _ => None,
                }
            }
            other => other,
        };
        let Some(damage) = damage else {
            idx += 1;
            continue;
        };
        // Damage at `pos`: torn tail or damage to acknowledged data?
        let later_segments = &ids[idx + 1..];
        let (mut records_after, later_tick) = valid_records_in(storage, dir, later_segments)?;
        let written = &data[..written.max(pos)];
        let torn = match damage {
            Damage::Defect(_) => {
                records_after == 0
                    && !later_written_record_after(written, pos)
                    && !seal.is_some_and(|s| s.covers(id, pos as u64))
            }
            Damage::Gap { .. } | Damage::EndsBeforeSeal { .. } => false,
        };
        let end = written.len() as u64;
        if torn {
            zero_range(storage, &path, pos as u64, end).map_err(io_err(&path))?;
            // Later segments hold no valid record (checked above): drop them
            // so appends continue right here.
            remove_segments(storage, dir, later_segments)?;
            out.torn_tail = Some(TailRepair {
                path,
                position: pos as u64,
                bytes_zeroed: end.saturating_sub(pos as u64),
            });
            break;
        }
        let (in_segment, in_segment_tick) = valid_records(written, pos + 1);
        records_after += in_segment + u64::from(matches!(damage, Damage::Gap { .. }));
        if !plan.salvage {
            return Err(RecoveryError::Corrupt {
                path,
                position: pos as u64,
                defect: damage.describe(),
                records_after,
            });
        }
        out.last_tick = out.last_tick.max(later_tick).max(in_segment_tick);
        zero_range(storage, &path, pos as u64, end).map_err(io_err(&path))?;
        remove_segments(storage, dir, later_segments)?;
        out.salvage = Some(SalvageReport {
            path,
            position: pos as u64,
            defect: damage.describe(),
            records_dropped: records_after,
            segments_removed: later_segments.len() as u64,
        });
        break;
    }
    out.entries = chain.count();
    check_manifest_tail(dir, plan, &mut out)?;
    let present: Vec<u64> = out.segment_records.iter().map(|t| t.id).collect();
    let seal = match (&out.torn_tail, &out.salvage) {
        (None, None) => seal,
        _ => None,
    };
    out.bytes_resynced = resync_tail(storage, dir, &present, seal).map_err(io_err(dir))?;
    Ok(out)
}

/// Segment ids must follow each other: a hole is a deleted file. Refuse,
/// or — salvaging — keep the segments before the hole and drop the rest
/// (returning the highest tick they held).
fn check_consecutive(
    storage: &dyn Storage,
    dir: &Path,
    plan: ScanPlan,
    ids: Vec<u64>,
) -> Result<(Vec<u64>, u64), RecoveryError> {
    let Some(hole) = ids.windows(2).position(|w| w[1] != w[0] + 1) else {
        return Ok((ids, 0));
    };
    let (before, after) = (ids[hole], ids[hole + 1]);
    let detail = format!(
        "segments {} to {} are missing between {} and {}",
        before + 1,
        after - 1,
        super::segment::segment_file_name(before),
        super::segment::segment_file_name(after)
    );
    if !plan.salvage {
        return Err(RecoveryError::Missing {
            path: segment_path(dir, before + 1),
            detail,
        });
    }
    tracing::warn!("--salvage: {detail}; the segments after the hole are dropped");
    let (_, dropped_tick) = valid_records_in(storage, dir, &ids[hole + 1..])?;
    remove_segments(storage, dir, &ids[hole + 1..])?;
    Ok((ids[..=hole].to_vec(), dropped_tick))
}

/// A segment the manifest names beyond the last one present is missing:
/// refuse, or — salvaging — report it.
fn check_manifest_tail(
    dir: &Path,
    plan: ScanPlan,
    out: &mut ScanOutcome,
) -> Result<(), RecoveryError> {
    let Some(m) = out.manifest else {
        return Ok(());
    };
    if out.torn_tail.is_some() || out.salvage.is_some() {
        // The scan cut the log here; later segments were dropped on purpose.
        return Ok(());
    }
    let present = out.segment_records.last().map_or(0, |t| t.id);
    if m.last_segment <= present {
        return Ok(());
    }
    let first_missing = present + 1;
    let path = segment_path(dir, first_missing);
    let detail = format!(
        "the log's manifest says it reaches segment {}, the last segment file present is {}",
        m.last_segment,
        if present == 0 {
            "none".to_string()
        } else {
            present.to_string()
        }
    );
    if !plan.salvage {
        return Err(RecoveryError::Missing { path, detail });
    }
    out.salvage = Some(SalvageReport {
        path,
        position: 0,
        defect: detail,
        records_dropped: 0,
        segments_removed: m.last_segment - present,
    });
    Ok(())
}

fn remove_segments(storage: &dyn Storage, dir: &Path, ids: &[u64]) -> Result<(), RecoveryError> {
    if ids.is_empty() {
        return Ok(());
    }
    for &id in ids {
        let p = segment_path(dir, id);
        storage.remove_file(&p).map_err(io_err(&p))?;
    }
    storage.sync_dir(dir).map_err(io_err(dir))
}

#[cfg(test)]
#[path = "recovery_tests.rs"]
mod tests;
