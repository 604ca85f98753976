//! Reading a shard's log by offset (WAL_READ, watch catch-up, WAL_STATS).
//!
//! Offsets are not byte positions (`offset.rs`): they only grow along one
//! shard's log, with gaps. So the reader keeps a small index instead of
//! computing positions:
//!
//! * per segment, the offset of its first record — a binary search over these
//!   finds the segment that holds a wanted offset;
//! * per segment, a sparse index: the byte position and offset of every
//!   `READER_INDEX_STRIDE_RECORDS`-th record, filled in as scans pass by, so a
//!   repeated read near the end of a large segment skips most of it.
//!
//! The index is refreshed lazily: the directory is listed again only when a
//! read runs past the newest known segment, or a segment file vanished
//! (compaction deleted it).
//!
//! The reader runs on the shard's own thread, between the writer's group
//! commits, so a record in the active segment is either completely written
//! with a valid checksum or not there yet. The first invalid or zero record
//! ends a segment's readable data; it is never reported as corruption here
//! (start-up recovery is the judge of damage).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::record::{
    decode_record, RecordDefect, RecordHeader, RECORD_HEADER_BYTES, RECORD_MAGIC,
    RECORD_PAYLOAD_MAX_BYTES,
};
use super::segment::{list_segments, segment_path};
use crate::env::{ReadFile, Storage};

/// Every this many records of a segment, the sparse index remembers the
/// record's position and offset.
pub const READER_INDEX_STRIDE_RECORDS: u64 = 1024;

/// Bytes read from a segment per positional read while scanning. A record
/// larger than this is read with one read of its own size.
pub const READER_CHUNK_BYTES: usize = 256 * 1024;

/// One record as stored: its header and its payload (the entry JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub header: RecordHeader,
    pub payload: Vec<u8>,
}

impl LogRecord {
    pub fn offset(&self) -> u64 {
        self.header.offset
    }

    /// Bytes the record occupies in the log (header + payload).
    pub fn total_len(&self) -> usize {
        self.header.total_len()
    }
}

/// The answer to one `read_from`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadBatch {
    /// Records with offset ≥ the requested offset, in log order.
    pub records: Vec<LogRecord>,
    /// Where the next read should start: one past the last returned offset.
    /// `None` when no record was returned.
    pub next_offset: Option<u64>,
    /// True when the read stopped because no more data is written (rather
    /// than because of `max_records` or `max_bytes`).
    pub reached_end: bool,
}

/// Reads from the log files, for WAL_STATS: read passes and bytes read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Read passes: one per `read_from` (and one for a start-up recovery).
    pub reads: u64,
    pub bytes_read: u64,
}

impl ReadStats {
    pub fn plus(self, other: ReadStats) -> ReadStats {
        ReadStats {
            reads: self.reads + other.reads,
            bytes_read: self.bytes_read + other.bytes_read,
        }
    }
}

/// One segment file as WAL_STATS reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    pub id: u64,
    /// Size of the file on disk (segments are pre-allocated, so this is the
    /// full segment size, written or not).
    pub size_bytes: u64,
    /// Offset of its first record; `None` while it holds no record yet.
    pub first_offset: Option<u64>,
}

/// What the reader knows about one segment.
#[derive(Debug)]
struct Segment {
    id: u64,
    size_bytes: u64,
    first_offset: Option<u64>,
    /// `(offset, position)` of records number 0, STRIDE, 2·STRIDE, … in this
    /// segment, contiguous from the first record.
    sparse: Vec<(u64, u64)>,
}

impl Segment {
    /// Where to start scanning for `offset`: the last indexed record at or
    /// before it, with its ordinal in the segment.
    fn start_for(&self, offset: u64) -> (u64, u64) {
        let i = self.sparse.partition_point(|&(o, _)| o <= offset);
        if i == 0 {
            (0, 0)
        } else {
            (
                self.sparse[i - 1].1,
                (i as u64 - 1) * READER_INDEX_STRIDE_RECORDS,
            )
        }
    }

    /// Remember record number `ordinal` if it is the next stride point.
    fn note(&mut self, ordinal: u64, offset: u64, position: u64) {
        if ordinal == self.sparse.len() as u64 * READER_INDEX_STRIDE_RECORDS {
            self.sparse.push((offset, position));
        }
    }
}

/// A read-only view of one shard's WAL directory.
pub struct LogReader {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    /// Known segments, ascending by id.
    segments: Vec<Segment>,
    stats: ReadStats,
}

/// Why a scan of one segment stopped.
enum SegmentEnd {
    /// No more valid records in this segment.
    Exhausted,
    /// `max_records` or `max_bytes` reached.
    Limit,
    /// The file is gone (deleted by compaction while we read).
    Vanished,
}

impl LogReader {
    /// Index the segments in `dir` (reads each segment's first record).
    pub fn open(storage: Arc<dyn Storage>, dir: &Path) -> io::Result<LogReader> {
        let mut reader = LogReader {
            storage,
            dir: dir.to_path_buf(),
            segments: Vec::new(),
            stats: ReadStats::default(),
        };
        reader.refresh()?;
        Ok(reader)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-list the directory: drop segments that were deleted, add new ones,
    /// learn first offsets of segments that were still empty. Segments whose
    /// first offset is known are only `stat`ed.
    pub fn refresh(&mut self) -> io::Result<()> {
        let ids = list_segments(&*self.storage, &self.dir)?;
        let mut old = std::mem::take(&mut self.segments).into_iter().peekable();
        let mut fresh = Vec::with_capacity(ids.len());
        for id in ids {
            while old.peek().is_some_and(|s| s.id < id) {
                old.next();
            }
            let known = match old.peek() {
                Some(s) if s.id == id => old.next(),
                _ => None,
            };
            let path = segment_path(&self.dir, id);
            let probed = match known {
                Some(mut seg) if seg.first_offset.is_some() => {
                    self.storage.metadata(&path).map(|m| {
                        seg.size_bytes = m.len_bytes;
                        seg
                    })
                }
                _ => probe_segment(&*self.storage, &path, &mut self.stats).map(
                    |(size_bytes, first_offset)| Segment {
                        id,
                        size_bytes,
                        first_offset,
                        sparse: first_offset.map(|o| vec![(o, 0)]).unwrap_or_default(),
                    },
                ),
            };
            match probed {
                Ok(seg) => fresh.push(seg),
                // Deleted between listing and opening.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.segments = fresh;
        Ok(())
    }

    /// Offset of the first record of the oldest segment that holds one.
    pub fn oldest_offset(&self) -> Option<u64> {
        self.segments.iter().find_map(|s| s.first_offset)
    }

    /// The segments known at the last refresh, ascending by id.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.segments
            .iter()
            .map(|s| SegmentInfo {
                id: s.id,
                size_bytes: s.size_bytes,
                first_offset: s.first_offset,
            })
            .collect()
    }

    /// Bytes on disk of all known segments.
    pub fn total_size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size_bytes).sum()
    }

    /// What this reader has read from the files so far.
    pub fn stats(&self) -> ReadStats {
        self.stats
    }

    /// Records with offset ≥ `from_offset`, in log order, up to `max_records`
    /// records and `max_bytes` bytes (header + payload) — but always at least
    /// one record when one is there, so a record larger than `max_bytes`
    /// cannot stall a reader.
    pub fn read_from(
        &mut self,
        from_offset: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> io::Result<ReadBatch> {
        let mut batch = ReadBatch::default();
        if max_records == 0 {
            return Ok(batch);
        }
        self.stats.reads += 1;
        if self.segments.is_empty() {
            self.refresh()?;
        }
        let mut bytes = 0usize;
        let mut idx = self.segment_for(from_offset);
        let mut retried_after_vanish = false;
        loop {
            let Some(i) = idx else {
                batch.reached_end = true;
                break;
            };
            let want = batch.next_offset.unwrap_or(from_offset);
            match self.scan_segment(i, want, max_records, max_bytes, &mut bytes, &mut batch)? {
                SegmentEnd::Limit => break,
                SegmentEnd::Exhausted => {
                    if i + 1 < self.segments.len() {
                        idx = Some(i + 1);
                        continue;
                    }
                    // The newest known segment is exhausted. The writer names
                    // segments by consecutive ids, so one `stat` tells whether
                    // a rotation added another since the last listing.
                    let id = self.segments[i].id;
                    if !segment_path(&self.dir, id + 1).exists() {
                        batch.reached_end = true;
                        break;
                    }
                    self.refresh()?;
                    idx = self.segments.iter().position(|s| s.id > id);
                    if idx.is_none() {
                        batch.reached_end = true;
                        break;
                    }
                }
                SegmentEnd::Vanished => {
                    // Compaction removed it: everything in it is below the
                    // oldest retained offset now. Start over from the listing.
                    if retried_after_vanish {
                        return Err(io::Error::new(
                            io::ErrorKind::NotFound,
                            "WAL segments keep vanishing while reading",
                        ));
                    }
                    retried_after_vanish = true;
                    self.refresh()?;
                    idx = self.segment_for(want);
                }
            }
        }
        Ok(batch)
    }

    /// Index of the segment where records ≥ `offset` begin: the last segment
    /// whose first offset is ≤ `offset`, or the first segment.
    fn segment_for(&self, offset: u64) -> Option<usize> {
        if self.segments.is_empty() {
            return None;
        }
        // First offsets grow with the id; segments without records yet (the
        // freshly prepared tail) sort as "after everything".
        let starts_at_or_before = |s: &Segment| s.first_offset.is_some_and(|o| o <= offset);
        let mut i = self
            .segments
            .partition_point(starts_at_or_before)
            .saturating_sub(1);
        // Starting early is always correct (older records are skipped), so
        // step back over any segment that does not qualify.
        while i > 0 && !starts_at_or_before(&self.segments[i]) {
            i -= 1;
        }
        Some(i)
    }

    fn scan_segment(
        &mut self,
        i: usize,
        from_offset: u64,
        max_records: usize,
        max_bytes: usize,
        bytes: &mut usize,
        batch: &mut ReadBatch,
    ) -> io::Result<SegmentEnd> {
        let path = segment_path(&self.dir, self.segments[i].id);
        let file = match self.storage.open_read(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(SegmentEnd::Vanished),
            Err(e) => return Err(e),
        };
        let file_len = file.len_bytes()?;
        let seg = &mut self.segments[i];
        let (mut pos, mut ordinal) = seg.start_for(from_offset);
        let mut window = Window::default();
        loop {
            let Some(record) = window.record_at(&*file, file_len, pos, &mut self.stats)? else {
                return Ok(SegmentEnd::Exhausted);
            };
            let (header, payload) = record;
            if seg.first_offset.is_none() && ordinal == 0 {
                seg.first_offset = Some(header.offset);
            }
            seg.note(ordinal, header.offset, pos);
            let len = header.total_len();
            if header.offset >= from_offset {
                let full = batch.records.len() >= max_records
                    || (!batch.records.is_empty() && *bytes + len > max_bytes);
                if full {
                    return Ok(SegmentEnd::Limit);
                }
                *bytes += len;
                batch.next_offset = Some(header.offset.saturating_add(1));
                batch.records.push(LogRecord {
                    header,
                    payload: payload.to_vec(),
                });
                if batch.records.len() >= max_records || *bytes >= max_bytes {
                    return Ok(SegmentEnd::Limit);
                }
            }
            pos += len as u64;
            ordinal += 1;
        }
    }
}

/// Size of the segment file and the offset of its first record, if any.
fn probe_segment(
    storage: &dyn Storage,
    path: &Path,
    stats: &mut ReadStats,
) -> io::Result<(u64, Option<u64>)> {
    let file = storage.open_read(path)?;
    let size = file.len_bytes()?;
    let mut window = Window::default();
    let first = window
        .record_at(&*file, size, 0, stats)?
        .map(|(h, _)| h.offset);
    Ok((size, first))
}

/// A buffered stretch of one segment file.
#[derive(Default)]
struct Window {
    start: u64,
    data: Vec<u8>,
}

impl Window {
    /// The valid record at byte `pos` of the file, or `None` when there is
    /// none (zeros, end of file, or bytes that are not a complete record).
    fn record_at(
        &mut self,
        file: &dyn ReadFile,
        file_len: u64,
        pos: u64,
        stats: &mut ReadStats,
    ) -> io::Result<Option<(RecordHeader, &[u8])>> {
        if pos + 4 > file_len {
            return Ok(None);
        }
        let mut need = RECORD_HEADER_BYTES;
        loop {
            if !self.covers(pos, need as u64, file_len) {
                stats.bytes_read += self.fill(file, file_len, pos, need)? as u64;
            }
            let local = (pos - self.start) as usize;
            let buf = &self.data[local..];
            match decode_record(buf) {
                Ok(_) => break,
                Err(RecordDefect::Truncated) => {
                    if self.start + self.data.len() as u64 >= file_len {
                        // The file itself ends inside this record.
                        return Ok(None);
                    }
                    // The window ends inside it: read again, large enough.
                    let total = announced_len(buf).unwrap_or(RECORD_HEADER_BYTES);
                    if total <= buf.len() {
                        return Ok(None);
                    }
                    need = total;
                }
                Err(_) => return Ok(None),
            }
        }
        let local = (pos - self.start) as usize;
        Ok(decode_record(&self.data[local..]).ok())
    }

    /// Whether the window holds `[pos, pos + len)`, or everything from `pos`
    /// to the end of the file.
    fn covers(&self, pos: u64, len: u64, file_len: u64) -> bool {
        let end = self.start + self.data.len() as u64;
        pos >= self.start && (pos + len <= end || end == file_len) && pos < end
    }

    /// Read the window at `pos`; returns the bytes read.
    fn fill(
        &mut self,
        file: &dyn ReadFile,
        file_len: u64,
        pos: u64,
        need: usize,
    ) -> io::Result<usize> {
        let len = need.max(READER_CHUNK_BYTES) as u64;
        let len = len.min(file_len - pos) as usize;
        self.data.resize(len, 0);
        let mut done = 0;
        while done < len {
            match file.read_at(&mut self.data[done..], pos + done as u64)? {
                0 => break,
                n => done += n,
            }
        }
        self.data.truncate(done);
        self.start = pos;
        Ok(done)
    }
}

/// The full length a record header announces, when the header is there and
/// plausible.
fn announced_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < RECORD_HEADER_BYTES || buf[0..4] != RECORD_MAGIC {
        return None;
    }
    let payload_len = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
    (payload_len <= RECORD_PAYLOAD_MAX_BYTES).then_some(RECORD_HEADER_BYTES + payload_len)
}

#[cfg(test)]
#[path = "reader_tests.rs"]
mod tests;
