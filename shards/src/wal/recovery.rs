//! Reading a shard's log back at start-up: every valid record in order, the
//! position to append at, and what to do with damage.
//!
//! # Torn write or corruption?
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
//!   acknowledged record is damaged. Start-up is refused with the file and
//!   byte position, unless salvage was asked for: then the log is cut at `p`
//!   and the dropped records are counted and reported.
//!
//! Zeros after the last record of a segment followed by a later segment are
//! the normal gap left by rotation.

use std::fmt;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::offset::tick_of_offset;
use super::record::{decode_record, RecordDefect, RecordHeader, RECORD_MAGIC};
use super::segment::{list_segments, segment_path};

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
    pub torn_tail: Option<TailRepair>,
    pub salvage: Option<SalvageReport>,
    /// Valid records per remaining segment: (segment id, records).
    pub segment_records: Vec<(u64, u64)>,
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
                "corrupt WAL record in {} at byte {position} ({defect}); {records_after} valid \
                 record(s) follow it, so this is damage to acknowledged data, not a torn write. \
                 Refusing to start; run with --salvage to cut the log at that point and drop them",
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
fn count_valid_records(data: &[u8], from: usize) -> u64 {
    let mut count = 0;
    let mut pos = from;
    while let Some((at, h)) = next_valid_record(data, pos) {
        count += 1;
        pos = at + h.total_len();
    }
    count
}

fn zero_range(path: &Path, from: u64, to: u64) -> io::Result<()> {
    if to <= from {
        return Ok(());
    }
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    let zeros = vec![0u8; (to - from).min(1 << 20) as usize];
    let mut pos = from;
    while pos < to {
        let n = (to - pos).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], pos)?;
        pos += n as u64;
    }
    file.sync_data()
}

/// Scan the log in `dir`, calling `visit` for every valid record in order.
pub fn scan(
    dir: &Path,
    salvage: bool,
    mut visit: impl FnMut(&RecordHeader, &[u8]) -> Result<(), String>,
) -> Result<ScanOutcome, RecoveryError> {
    let ids = list_segments(dir).map_err(io_err(dir))?;
    let mut out = ScanOutcome {
        active_segment: 1,
        ..ScanOutcome::default()
    };
    let mut idx = 0;
    while idx < ids.len() {
        let id = ids[idx];
        let path = segment_path(dir, id);
        let data = std::fs::read(&path).map_err(io_err(&path))?;
        out.segments += 1;
        out.bytes_scanned += data.len() as u64;
        out.active_segment = id;
        out.segment_records.push((id, 0));
        let mut pos = 0usize;
        let defect = loop {
            if pos >= data.len() {
                break None;
            }
            match decode_record(&data[pos..]) {
                Ok((h, payload)) => {
                    visit(&h, payload).map_err(|message| RecoveryError::BadEntry {
                        path: path.clone(),
                        position: pos as u64,
                        message,
                    })?;
                    out.last_tick = out.last_tick.max(tick_of_offset(h.offset));
                    out.records += 1;
                    if let Some(last) = out.segment_records.last_mut() {
                        last.1 += 1;
                    }
                    pos += h.total_len();
                }
                Err(d) => break Some(d),
            }
        };
        out.active_end = pos as u64;
        let Some(defect) = defect else {
            idx += 1;
            continue;
        };
        // Only the written part matters: segments are pre-zeroed, so the
        // search for later records stops at the last non-zero byte.
        let last_nonzero = data.iter().rposition(|&b| b != 0).map_or(pos, |i| i + 1);
        if last_nonzero <= pos {
            // End of this segment's records; a later segment may continue.
            idx += 1;
            continue;
        }
        let written = &data[..last_nonzero];
        // Damage at `pos`: torn tail or corruption?
        let later_segments = &ids[idx + 1..];
        let mut records_after = 0u64;
        let mut corrupt = later_written_record_after(written, pos);
        for &later in later_segments {
            let p = segment_path(dir, later);
            let d = std::fs::read(&p).map_err(io_err(&p))?;
            let end = d.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            records_after += count_valid_records(&d[..end], 0);
        }
        corrupt |= records_after > 0;
        if corrupt {
            records_after += count_valid_records(written, pos + 1);
            if !salvage {
                return Err(RecoveryError::Corrupt {
                    path,
                    position: pos as u64,
                    defect: describe(defect),
                    records_after,
                });
            }
            zero_range(&path, pos as u64, last_nonzero as u64).map_err(io_err(&path))?;
            for &later in later_segments {
                let p = segment_path(dir, later);
                std::fs::remove_file(&p).map_err(io_err(&p))?;
            }
            super::segment::sync_dir(dir).map_err(io_err(dir))?;
            out.salvage = Some(SalvageReport {
                path,
                position: pos as u64,
                defect: describe(defect),
                records_dropped: records_after,
                segments_removed: later_segments.len() as u64,
            });
        } else {
            zero_range(&path, pos as u64, last_nonzero as u64).map_err(io_err(&path))?;
            // Later segments hold no valid record (checked above): drop them
            // so appends continue right here.
            for &later in later_segments {
                let p = segment_path(dir, later);
                std::fs::remove_file(&p).map_err(io_err(&p))?;
            }
            out.torn_tail = Some(TailRepair {
                path,
                position: pos as u64,
                bytes_zeroed: (last_nonzero - pos) as u64,
            });
        }
        return Ok(out);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::record::{append_record, RecordKind};

    /// A segment file with `n` records written as groups of `group` records.
    fn write_segment(dir: &Path, id: u64, n: usize, group: usize, size: usize) -> Vec<usize> {
        let mut data = Vec::new();
        let mut starts = Vec::new();
        let mut group_start = 0u32;
        for i in 0..n {
            if i % group == 0 {
                group_start = data.len() as u32;
            }
            starts.push(data.len());
            append_record(
                &mut data,
                RecordKind::ApplyEvent,
                ((i as u64 + 1) << 6) | 1,
                0,
                group_start,
                |o| o.extend_from_slice(format!("{{\"i\":{i}}}").as_bytes()),
            )
            .unwrap();
        }
        starts.push(data.len());
        data.resize(size, 0);
        std::fs::write(segment_path(dir, id), &data).unwrap();
        starts
    }

    fn count(dir: &Path, salvage: bool) -> Result<(u64, ScanOutcome), RecoveryError> {
        let mut n = 0;
        let out = scan(dir, salvage, |_, _| {
            n += 1;
            Ok(())
        })?;
        Ok((n, out))
    }

    #[test]
    fn clean_log_reads_everything() {
        let dir = tempfile::tempdir().unwrap();
        let starts = write_segment(dir.path(), 1, 10, 3, 8192);
        let (n, out) = count(dir.path(), false).unwrap();
        assert_eq!(n, 10);
        assert_eq!(out.active_end, *starts.last().unwrap() as u64);
        assert_eq!(out.last_tick, 10);
        assert!(out.torn_tail.is_none());
    }

    #[test]
    fn empty_dir_starts_at_segment_one() {
        let dir = tempfile::tempdir().unwrap();
        let (n, out) = count(dir.path(), false).unwrap();
        assert_eq!((n, out.active_segment, out.active_end), (0, 1, 0));
    }

    #[test]
    fn torn_tail_at_every_byte_of_the_last_record_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let starts = write_segment(dir.path(), 1, 5, 1, 8192);
        let path = segment_path(dir.path(), 1);
        let full = std::fs::read(&path).unwrap();
        let (last_start, end) = (starts[4], starts[5]);
        for cut in last_start..end {
            let mut torn = full.clone();
            torn[cut..end].fill(0);
            std::fs::write(&path, &torn).unwrap();
            let (n, out) = count(dir.path(), false).unwrap();
            assert_eq!(n, 4, "cut at {cut}");
            assert_eq!(out.active_end, last_start as u64);
            assert_eq!(out.torn_tail.is_some(), cut > last_start);
            // The repair zeroed the tail: a second scan is clean.
            let (n2, out2) = count(dir.path(), false).unwrap();
            assert_eq!(n2, 4);
            assert!(out2.torn_tail.is_none());
        }
    }

    #[test]
    fn torn_write_whose_later_blocks_landed_is_still_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        // One group of 6 records: damage the first record of the group, keep the rest.
        let starts = write_segment(dir.path(), 1, 6, 6, 8192);
        let path = segment_path(dir.path(), 1);
        let mut data = std::fs::read(&path).unwrap();
        data[starts[0] + 2] ^= 0xff;
        std::fs::write(&path, &data).unwrap();
        let (n, out) = count(dir.path(), false).unwrap();
        assert_eq!(n, 0);
        assert_eq!(out.active_end, 0);
        assert!(out.torn_tail.is_some());
    }

    #[test]
    fn damage_before_a_later_write_refuses_start_naming_file_and_byte() {
        let dir = tempfile::tempdir().unwrap();
        let starts = write_segment(dir.path(), 1, 6, 2, 8192);
        let path = segment_path(dir.path(), 1);
        let mut data = std::fs::read(&path).unwrap();
        data[starts[1] + 45] ^= 0x01; // inside record 1's payload (group 0)
        std::fs::write(&path, &data).unwrap();
        let err = count(dir.path(), false).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("0000000000000001.wal"), "{msg}");
        assert!(msg.contains(&format!("at byte {}", starts[1])), "{msg}");
        assert!(msg.contains("--salvage"), "{msg}");
    }

    #[test]
    fn salvage_cuts_at_the_damage_and_reports_what_was_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let starts = write_segment(dir.path(), 1, 6, 2, 8192);
        write_segment(dir.path(), 2, 3, 3, 8192);
        let path = segment_path(dir.path(), 1);
        let mut data = std::fs::read(&path).unwrap();
        data[starts[2] + 1] ^= 0x01;
        std::fs::write(&path, &data).unwrap();
        let (n, out) = count(dir.path(), true).unwrap();
        assert_eq!(n, 2);
        let report = out.salvage.unwrap();
        assert_eq!(report.records_dropped, 3 + 3);
        assert_eq!(report.segments_removed, 1);
        // After salvage the log is clean and shorter.
        let (n2, out2) = count(dir.path(), false).unwrap();
        assert_eq!(n2, 2);
        assert!(out2.salvage.is_none() && out2.torn_tail.is_none());
    }

    #[test]
    fn damage_followed_by_a_later_segment_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let starts = write_segment(dir.path(), 1, 3, 3, 8192);
        write_segment(dir.path(), 2, 2, 2, 8192);
        let path = segment_path(dir.path(), 1);
        let mut data = std::fs::read(&path).unwrap();
        data[starts[2] + 1] ^= 0x01; // last record of segment 1
        std::fs::write(&path, &data).unwrap();
        assert!(matches!(
            count(dir.path(), false),
            Err(RecoveryError::Corrupt { .. })
        ));
    }

    #[test]
    fn rotation_gap_is_normal() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, 3, 1, 8192);
        let starts = write_segment(dir.path(), 2, 2, 1, 8192);
        let (n, out) = count(dir.path(), false).unwrap();
        assert_eq!(n, 5);
        assert_eq!(out.active_segment, 2);
        assert_eq!(out.active_end, starts[2] as u64);
    }

    #[test]
    fn random_garbage_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        let mut seed = 0x2545f4914f6cdd1du64;
        for _ in 0..50 {
            let mut data = vec![0u8; 4096];
            for b in data.iter_mut().take(600) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            data[0..4].copy_from_slice(&RECORD_MAGIC);
            std::fs::write(segment_path(dir.path(), 1), &data).unwrap();
            let _ = count(dir.path(), false);
            let _ = count(dir.path(), true);
        }
    }
}
