//! Tests of start-up recovery (`recovery.rs`): torn tails, damage, salvage,
//! gaps, the seal and the segment ids.

use super::*;
use crate::wal::manifest::Seal;
use crate::wal::record::{append_record, RecordKind, RecordStamp};

/// A segment file with records `first..first+n` (each one entry, entry
/// count continuing from `first`) written as groups of `group` records.
fn write_segment_from(
    dir: &Path,
    id: u64,
    first: u64,
    n: usize,
    group: usize,
    size: usize,
) -> Vec<usize> {
    let mut data = Vec::new();
    let mut starts = Vec::new();
    let mut group_start = 0u32;
    for i in 0..n {
        if i % group == 0 {
            group_start = data.len() as u32;
        }
        starts.push(data.len());
        let k = first + i as u64;
        let stamp = RecordStamp {
            kind: RecordKind::ApplyEvent,
            offset: ((k + 1) << 6) | 1,
            time_ms: 0,
            entries_before: k,
        };
        append_record(&mut data, &stamp, group_start, |o| {
            o.extend_from_slice(format!("{{\"i\":{k}}}").as_bytes())
        })
        .unwrap();
    }
    starts.push(data.len());
    data.resize(size, 0);
    std::fs::write(segment_path(dir, id), &data).unwrap();
    starts
}

fn write_segment(dir: &Path, id: u64, n: usize, group: usize, size: usize) -> Vec<usize> {
    write_segment_from(dir, id, 0, n, group, size)
}

const OS: crate::env::os::OsStorage = crate::env::os::OsStorage;

fn count_with(dir: &Path, plan: ScanPlan) -> Result<(u64, ScanOutcome), RecoveryError> {
    let mut n = 0;
    let out = scan(&OS, dir, plan, |_, _| {
        n += 1;
        Ok(())
    })?;
    Ok((n, out))
}

fn count(dir: &Path, salvage: bool) -> Result<(u64, ScanOutcome), RecoveryError> {
    count_with(
        dir,
        ScanPlan {
            shard: 1,
            salvage,
            ..ScanPlan::default()
        },
    )
}

#[test]
fn clean_log_reads_everything() {
    let dir = tempfile::tempdir().unwrap();
    let starts = write_segment(dir.path(), 1, 10, 3, 8192);
    let (n, out) = count(dir.path(), false).unwrap();
    assert_eq!(n, 10);
    assert_eq!(out.active_end, *starts.last().unwrap() as u64);
    assert_eq!(out.last_tick, 10);
    assert_eq!(out.entries, 10);
    assert_eq!(
        out.segment_records,
        vec![SegmentTally {
            id: 1,
            records: 10,
            data_bytes: *starts.last().unwrap() as u64
        }]
    );
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
    write_segment_from(dir.path(), 2, 6, 3, 3, 8192);
    let path = segment_path(dir.path(), 1);
    let mut data = std::fs::read(&path).unwrap();
    data[starts[2] + 1] ^= 0x01;
    std::fs::write(&path, &data).unwrap();
    let (n, out) = count(dir.path(), true).unwrap();
    assert_eq!(n, 2);
    let report = out.salvage.unwrap();
    assert_eq!(report.records_dropped, 3 + 3);
    assert_eq!(report.segments_removed, 1);
    // The dropped records' offsets were handed out: the clock starts
    // above the highest of them (tick 9), not above what was kept (2).
    assert_eq!(out.last_tick, 9);
    // After salvage the log is clean and shorter.
    let (n2, out2) = count(dir.path(), false).unwrap();
    assert_eq!(n2, 2);
    assert!(out2.salvage.is_none() && out2.torn_tail.is_none());
}

#[test]
fn damage_followed_by_a_later_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let starts = write_segment(dir.path(), 1, 3, 3, 8192);
    write_segment_from(dir.path(), 2, 3, 2, 2, 8192);
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
    let starts = write_segment_from(dir.path(), 2, 3, 2, 1, 8192);
    let (n, out) = count(dir.path(), false).unwrap();
    assert_eq!(n, 5);
    assert_eq!(out.active_segment, 2);
    assert_eq!(out.active_end, starts[2] as u64);
    assert_eq!(out.entries, 5);
}

#[test]
fn an_emptied_middle_segment_is_a_gap_that_refuses_start() {
    let dir = tempfile::tempdir().unwrap();
    write_segment(dir.path(), 1, 3, 1, 8192);
    write_segment_from(dir.path(), 2, 3, 4, 1, 8192);
    write_segment_from(dir.path(), 3, 7, 2, 1, 8192);
    std::fs::write(segment_path(dir.path(), 2), vec![0u8; 8192]).unwrap();
    let err = count(dir.path(), false).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("0000000000000003.wal"), "{msg}");
    assert!(msg.contains("entries 4..=7 are missing"), "{msg}");
    // Salvage keeps the consistent prefix and says what it dropped.
    let (n, out) = count(dir.path(), true).unwrap();
    assert_eq!(n, 3);
    assert_eq!(out.salvage.unwrap().records_dropped, 2);
    assert_eq!(out.entries, 3);
    let (n2, out2) = count(dir.path(), false).unwrap();
    assert_eq!(n2, 3);
    assert!(out2.salvage.is_none());
}

#[test]
fn an_emptied_first_segment_is_a_gap_unless_a_snapshot_covers_it() {
    let dir = tempfile::tempdir().unwrap();
    write_segment(dir.path(), 1, 3, 1, 8192);
    write_segment_from(dir.path(), 2, 3, 2, 1, 8192);
    std::fs::write(segment_path(dir.path(), 1), vec![0u8; 8192]).unwrap();
    assert!(matches!(
        count(dir.path(), false),
        Err(RecoveryError::Corrupt { .. })
    ));
    // A snapshot covering the first three entries: nothing is missing.
    let plan = ScanPlan {
        shard: 1,
        covered: Some((3 << 6) | 1),
        entries_covered: 3,
        ..ScanPlan::default()
    };
    let (n, out) = count_with(dir.path(), plan).unwrap();
    assert_eq!((n, out.entries), (2, 5));
}

#[test]
fn a_missing_last_segment_named_by_the_manifest_refuses_start() {
    let dir = tempfile::tempdir().unwrap();
    write_segment(dir.path(), 1, 3, 1, 8192);
    write_segment_from(dir.path(), 2, 3, 2, 1, 8192);
    manifest::write(&OS, dir.path(), &Manifest::new(2, None)).unwrap();
    count(dir.path(), false).unwrap();
    std::fs::remove_file(segment_path(dir.path(), 2)).unwrap();
    let err = count(dir.path(), false).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("0000000000000002.wal"), "{msg}");
    assert!(msg.contains("reaches segment 2"), "{msg}");
    let (n, out) = count(dir.path(), true).unwrap();
    assert_eq!(n, 3);
    assert_eq!(out.salvage.unwrap().segments_removed, 1);
}

#[test]
fn damage_to_a_sealed_last_record_is_not_a_torn_write() {
    let dir = tempfile::tempdir().unwrap();
    let starts = write_segment(dir.path(), 1, 4, 1, 8192);
    let end = *starts.last().unwrap() as u64;
    let seal = Seal {
        segment: 1,
        end_bytes: end,
    };
    manifest::write(&OS, dir.path(), &Manifest::new(1, Some(seal))).unwrap();
    let path = segment_path(dir.path(), 1);
    let good = std::fs::read(&path).unwrap();
    let mut data = good.clone();
    data[starts[3] + 41] ^= 0x01;
    std::fs::write(&path, &data).unwrap();
    let err = count(dir.path(), false).unwrap_err();
    assert!(matches!(err, RecoveryError::Corrupt { .. }), "{err}");
    // Zeroing the sealed last record is damage too: the log must reach the seal.
    let mut data = good;
    data[starts[3]..starts[4]].fill(0);
    std::fs::write(&path, &data).unwrap();
    let err = count(dir.path(), false).unwrap_err();
    assert!(err.to_string().contains("synced it up to byte"), "{err}");
}

#[test]
fn a_hole_in_the_segment_ids_is_a_missing_file_even_at_a_clean_end() {
    let dir = tempfile::tempdir().unwrap();
    write_segment(dir.path(), 1, 3, 1, 8192);
    write_segment_from(dir.path(), 2, 3, 2, 1, 8192);
    // Segment 3 was prepared (empty) when segment 2 was deleted.
    std::fs::write(segment_path(dir.path(), 3), vec![0u8; 8192]).unwrap();
    std::fs::remove_file(segment_path(dir.path(), 2)).unwrap();
    let err = count(dir.path(), false).unwrap_err();
    assert!(matches!(err, RecoveryError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("0000000000000002.wal"), "{err}");
    let (n, _) = count(dir.path(), true).unwrap();
    assert_eq!(n, 3);
    assert!(!segment_path(dir.path(), 3).exists());
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

#[test]
fn a_log_that_names_its_head_skips_retired_leftovers_and_refuses_a_deleted_head() {
    let dir = tempfile::tempdir().unwrap();
    // Records that count no entries (a Raft member's): the entry count
    // cannot tell a retired prefix from a deleted one.
    for id in 1..=4 {
        write_segment_from(dir.path(), id, 0, 0, 1, 8192);
        let stamp = RecordStamp {
            kind: RecordKind::RaftVote,
            offset: ((id + 1) << 6) | 1,
            time_ms: 0,
            entries_before: 0,
        };
        let mut data = Vec::new();
        append_record(&mut data, &stamp, 0, |o| o.extend_from_slice(&[0; 17])).unwrap();
        data.resize(8192, 0);
        std::fs::write(segment_path(dir.path(), id), &data).unwrap();
    }
    let plan = |first| ScanPlan {
        first_segment: Some(first),
        ..ScanPlan::default()
    };
    // Retired up to 3, a crash left 1 and 2 behind: they are not read.
    let (n, out) = count_with(dir.path(), plan(3)).unwrap();
    assert_eq!((n, out.leftovers.clone()), (2, vec![1, 2]));
    assert_eq!(out.active_segment, 4);
    std::fs::remove_file(segment_path(dir.path(), 1)).unwrap();
    std::fs::remove_file(segment_path(dir.path(), 2)).unwrap();
    let (n, out) = count_with(dir.path(), plan(3)).unwrap();
    assert_eq!((n, out.leftovers.len()), (2, 0));
    // Without a head the log starts at segment 1: 1 and 2 are missing.
    let err = count_with(dir.path(), plan(1)).unwrap_err();
    assert!(matches!(err, RecoveryError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("0000000000000001.wal"), "{err}");
    // Segment 3 deleted though the head names it.
    std::fs::remove_file(segment_path(dir.path(), 3)).unwrap();
    let err = count_with(dir.path(), plan(3)).unwrap_err();
    assert!(err.to_string().contains("0000000000000003.wal"), "{err}");
    // A standalone plan (no head) is unchanged: no check of the first id.
    assert!(count_with(dir.path(), ScanPlan::default()).is_ok());
}
