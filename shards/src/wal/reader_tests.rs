//! Unit tests of `reader.rs` (kept apart so the module shows its code).

use super::*;
use crate::wal::record::{append_record, RecordKind, RecordStamp};

const SEGMENT_BYTES: usize = 64 * 1024;

fn os() -> std::sync::Arc<dyn crate::env::Storage> {
    std::sync::Arc::new(crate::env::os::OsStorage)
}

fn offset_of(i: u64) -> u64 {
    // Gaps between offsets, as the real clock leaves them.
    ((i * 3 + 10) << 6) | 2
}

/// Write segment `id` holding records `range` (payload `{"i":N}`),
/// zero-padded to `size` bytes.
fn write_segment(dir: &Path, id: u64, range: std::ops::Range<u64>, size: usize) {
    let mut data = Vec::new();
    for i in range {
        let start = data.len() as u32;
        append_record(
            &mut data,
            &RecordStamp::new(RecordKind::ApplyEvent, offset_of(i), i),
            start,
            |o| o.extend_from_slice(format!("{{\"i\":{i}}}").as_bytes()),
        )
        .unwrap();
    }
    assert!(data.len() <= size, "test segment overflows");
    data.resize(size, 0);
    std::fs::write(segment_path(dir, id), &data).unwrap();
}

fn payload_index(r: &LogRecord) -> u64 {
    let text = std::str::from_utf8(&r.payload).unwrap();
    text.trim_start_matches("{\"i\":")
        .trim_end_matches('}')
        .parse()
        .unwrap()
}

fn indices(batch: &ReadBatch) -> Vec<u64> {
    batch.records.iter().map(payload_index).collect()
}

fn three_segments() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_segment(dir.path(), 1, 0..100, SEGMENT_BYTES);
    write_segment(dir.path(), 2, 100..250, SEGMENT_BYTES);
    write_segment(dir.path(), 3, 250..300, SEGMENT_BYTES);
    dir
}

#[test]
fn reads_everything_across_segments_in_order() {
    let dir = three_segments();
    let mut r = LogReader::open(os(), dir.path()).unwrap();
    let batch = r.read_from(0, usize::MAX, usize::MAX).unwrap();
    assert_eq!(indices(&batch), (0..300).collect::<Vec<_>>());
    assert!(batch.reached_end);
    assert_eq!(batch.next_offset, Some(offset_of(299) + 1));
    assert_eq!(r.oldest_offset(), Some(offset_of(0)));
    let segs = r.segments();
    assert_eq!(segs.len(), 3);
    assert!(segs.iter().all(|s| s.size_bytes == SEGMENT_BYTES as u64));
    assert_eq!(segs[1].first_offset, Some(offset_of(100)));
    assert_eq!(r.total_size_bytes(), 3 * SEGMENT_BYTES as u64);
}

#[test]
fn reads_from_the_middle_of_a_segment() {
    let dir = three_segments();
    let mut r = LogReader::open(os(), dir.path()).unwrap();
    let batch = r.read_from(offset_of(120), 10, usize::MAX).unwrap();
    assert_eq!(indices(&batch), (120..130).collect::<Vec<_>>());
    assert!(!batch.reached_end);
    // Resuming continues exactly after the last record.
    let next = r
        .read_from(batch.next_offset.unwrap(), 5, usize::MAX)
        .unwrap();
    assert_eq!(indices(&next), (130..135).collect::<Vec<_>>());
}

#[test]
fn an_offset_between_records_starts_at_the_next_record() {
    let dir = three_segments();
    let mut r = LogReader::open(os(), dir.path()).unwrap();
    // offset_of(i) + 1 lies in the gap before offset_of(i + 1).
    for i in [0u64, 99, 100, 180, 249, 250] {
        let batch = r.read_from(offset_of(i) + 1, 1, usize::MAX).unwrap();
        assert_eq!(indices(&batch), vec![i + 1], "after record {i}");
    }
}

#[test]
fn an_offset_before_the_oldest_reads_from_the_start() {
    let dir = three_segments();
    let mut r = LogReader::open(os(), dir.path()).unwrap();
    let batch = r.read_from(0, 3, usize::MAX).unwrap();
    assert_eq!(indices(&batch), vec![0, 1, 2]);
}

#[test]
fn an_offset_beyond_the_end_reads_nothing() {
    let dir = three_segments();
    let mut r = LogReader::open(os(), dir.path()).unwrap();
    let batch = r.read_from(offset_of(299) + 1, 10, usize::MAX).unwrap();
    assert!(batch.records.is_empty());
    assert!(batch.reached_end);
    assert_eq!(batch.next_offset, None);
    let batch = r.read_from(u64::MAX, 10, usize::MAX).unwrap();
    assert!(batch.records.is_empty() && batch.reached_end);
}

#[test]
fn max_bytes_bounds_a_read_but_one_record_always_comes() {
    let dir = three_segments();
    let mut r = LogReader::open(os(), dir.path()).unwrap();
    let one = r.read_from(0, 1, usize::MAX).unwrap().records[0].total_len();
    let batch = r.read_from(0, usize::MAX, one * 5 + one / 2).unwrap();
    assert_eq!(batch.records.len(), 5);
    assert!(!batch.reached_end);
    let tiny = r.read_from(0, usize::MAX, 1).unwrap();
    assert_eq!(indices(&tiny), vec![0]);
}

#[test]
fn empty_directory_and_empty_segment_read_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = LogReader::open(os(), dir.path()).unwrap();
    assert_eq!(r.oldest_offset(), None);
    let batch = r.read_from(0, 10, usize::MAX).unwrap();
    assert!(batch.records.is_empty() && batch.reached_end);

    std::fs::write(segment_path(dir.path(), 1), vec![0u8; 4096]).unwrap();
    let batch = r.read_from(0, 10, usize::MAX).unwrap();
    assert!(batch.records.is_empty() && batch.reached_end);
    assert_eq!(r.segments().len(), 1);
    assert_eq!(r.segments()[0].first_offset, None);
}

#[test]
fn sees_appends_and_new_segments_after_open() {
    let dir = tempfile::tempdir().unwrap();
    write_segment(dir.path(), 1, 0..10, SEGMENT_BYTES);
    // The writer prepares the next segment before rotating into it.
    std::fs::write(segment_path(dir.path(), 2), vec![0u8; SEGMENT_BYTES]).unwrap();
    let mut r = LogReader::open(os(), dir.path()).unwrap();
    let batch = r.read_from(0, 100, usize::MAX).unwrap();
    assert_eq!(indices(&batch), (0..10).collect::<Vec<_>>());
    assert!(batch.reached_end);

    write_segment(dir.path(), 1, 0..20, SEGMENT_BYTES);
    let batch = r
        .read_from(batch.next_offset.unwrap(), 100, usize::MAX)
        .unwrap();
    assert_eq!(indices(&batch), (10..20).collect::<Vec<_>>());

    write_segment(dir.path(), 2, 20..30, SEGMENT_BYTES);
    write_segment(dir.path(), 3, 30..35, SEGMENT_BYTES);
    let batch = r
        .read_from(batch.next_offset.unwrap(), 100, usize::MAX)
        .unwrap();
    assert_eq!(indices(&batch), (20..35).collect::<Vec<_>>());
    assert_eq!(r.segments().len(), 3);
}

#[test]
fn deleted_segments_are_forgotten() {
    let dir = three_segments();
    let mut r = LogReader::open(os(), dir.path()).unwrap();
    assert_eq!(r.oldest_offset(), Some(offset_of(0)));
    std::fs::remove_file(segment_path(dir.path(), 1)).unwrap();
    // A read that lands on the deleted file recovers by re-listing.
    let batch = r.read_from(offset_of(50), 3, usize::MAX).unwrap();
    assert_eq!(indices(&batch), vec![100, 101, 102]);
    assert_eq!(r.oldest_offset(), Some(offset_of(100)));
}

#[test]
fn the_sparse_index_agrees_with_a_full_scan() {
    let dir = tempfile::tempdir().unwrap();
    // ~1 MiB of records: scans cross several read-chunk boundaries.
    let n = READER_INDEX_STRIDE_RECORDS * 20 + 17;
    write_segment(dir.path(), 1, 0..n, 2 << 20);
    let mut r = LogReader::open(os(), dir.path()).unwrap();
    let all = r.read_from(0, usize::MAX, usize::MAX).unwrap();
    assert_eq!(all.records.len() as u64, n);
    assert_eq!(r.segments[0].sparse.len(), 21);
    for i in [0, 1, 1023, 1024, 1025, 2048, 3000, 5003, 12345, n - 1] {
        let batch = r.read_from(offset_of(i), 2, usize::MAX).unwrap();
        assert_eq!(payload_index(&batch.records[0]), i);
        let batch = r.read_from(offset_of(i) - 1, 1, usize::MAX).unwrap();
        assert_eq!(payload_index(&batch.records[0]), i);
    }
}

#[test]
fn records_larger_than_a_read_chunk_are_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = Vec::new();
    let big = vec![b'x'; READER_CHUNK_BYTES * 2 + 5];
    for i in 0..3u64 {
        let start = data.len() as u32;
        append_record(
            &mut data,
            &RecordStamp::new(RecordKind::PutMachine, offset_of(i), 0),
            start,
            |o| o.extend_from_slice(&big),
        )
        .unwrap();
    }
    data.resize(data.len() + 4096, 0);
    std::fs::write(segment_path(dir.path(), 1), &data).unwrap();
    let mut r = LogReader::open(os(), dir.path()).unwrap();
    let batch = r.read_from(offset_of(1), 10, usize::MAX).unwrap();
    assert_eq!(batch.records.len(), 2);
    assert!(batch.records.iter().all(|rec| rec.payload == big));
}

#[test]
fn a_damaged_or_torn_record_ends_the_readable_data() {
    let dir = tempfile::tempdir().unwrap();
    write_segment(dir.path(), 1, 0..10, SEGMENT_BYTES);
    let path = segment_path(dir.path(), 1);
    let mut data = std::fs::read(&path).unwrap();
    let mut r = LogReader::open(os(), dir.path()).unwrap();
    let len = r.read_from(0, 1, usize::MAX).unwrap().records[0].total_len();
    data[len * 6 + 20] ^= 0x10;
    std::fs::write(&path, &data).unwrap();
    let batch = r.read_from(0, 100, usize::MAX).unwrap();
    assert_eq!(indices(&batch), (0..6).collect::<Vec<_>>());
    assert!(batch.reached_end);
    // A file cut in the middle of a record, too.
    std::fs::write(&path, &data[..len * 3 + 7]).unwrap();
    let batch = r.read_from(0, 100, usize::MAX).unwrap();
    assert_eq!(indices(&batch), vec![0, 1, 2]);
}

#[test]
fn arbitrary_segment_bytes_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut seed = 0x9e3779b97f4a7c15u64;
    for round in 0..200 {
        let mut data = Vec::new();
        for i in 0..(round % 7) {
            let start = data.len() as u32;
            append_record(
                &mut data,
                &RecordStamp::new(RecordKind::ApplyEvent, offset_of(i), 0),
                start,
                |o| o.extend_from_slice(b"{}"),
            )
            .unwrap();
        }
        for _ in 0..(round * 3) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            data.push(seed as u8);
        }
        if round % 3 == 0 && data.len() > 4 {
            data[0..4].copy_from_slice(&RECORD_MAGIC);
        }
        std::fs::write(segment_path(dir.path(), 1), &data).unwrap();
        let mut r = LogReader::open(os(), dir.path()).unwrap();
        let _ = r.read_from(seed % 1000, 50, 1 << 20).unwrap();
    }
}
