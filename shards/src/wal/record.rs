//! The WAL record format: a fixed 40-byte header and a JSON entry payload.
//!
//! ```text
//! 0   4  magic         "CSWL"
//! 4   4  crc32c        CRC-32C of bytes 8..40 of the header followed by the payload
//! 8   4  payload_len   u32, ≤ RECORD_PAYLOAD_MAX_BYTES (a shard's own
//!                      records: ≤ SHARD_RECORD_PAYLOAD_MAX_BYTES)
//! 12  1  kind          RecordKind
//! 13  1  flags         0
//! 14  2  entries_hi    bits 32..48 of entries_before
//! 16  8  offset        the record's wal_offset (see `offset.rs`)
//! 24  8  time_ms       Unix milliseconds when the record was made
//! 32  4  group_start   byte position in the segment where the write that
//!                      carried this record began (its first new record)
//! 36  4  entries_lo    bits 0..32 of entries_before
//! 40  n  payload       compact JSON entry (`entry.rs`)
//! ```
//! Integers are little-endian. Four zero bytes where a magic is expected mean
//! "end of the written log" (segments are pre-zeroed). `group_start` lets
//! recovery tell a torn last write from corruption of an acknowledged record
//! (see `recovery.rs`).
//!
//! `entries_before` (48 bits, split around `offset` so the header keeps its
//! size) counts the log entries this shard wrote before the record — the
//! entries WAL_READ shows (see `sequence.rs`). Consecutive records must
//! continue the count, so recovery notices records that are missing from the
//! middle of a log (a deleted or emptied segment), and WAL_READ numbers
//! records without reading the log from its start.

/// Size of the fixed header.
pub const RECORD_HEADER_BYTES: usize = 40;
/// Largest `entries_before` a header can hold (48 bits).
pub const RECORD_ENTRIES_MAX: u64 = (1 << 48) - 1;
/// Largest entry payload (16 MiB − 64 KiB, as rstmdb): what the format
/// and every reader take.
pub const RECORD_PAYLOAD_MAX_BYTES: usize = 16 * 1024 * 1024 - 64 * 1024;
/// Bytes kept free below `RECORD_PAYLOAD_MAX_BYTES` in a shard's own
/// records (every kind but a Raft member's). On a cluster a turn's records
/// travel in one Raft entry, which the member's log keeps as one record:
/// the entry's head (its log id and kind; corestate-raft asserts that its
/// head fits in `ENTRY_HEAD_RESERVE_BYTES`) and the shard record's own
/// header come around the shard record's payload.
pub const ENTRY_HEAD_RESERVE_BYTES: usize = 64;
/// Largest payload of a shard's own record: a record of this size, alone
/// in a turn, fits one Raft entry, so a cluster takes every write a
/// standalone shard takes.
pub const SHARD_RECORD_PAYLOAD_MAX_BYTES: usize =
    RECORD_PAYLOAD_MAX_BYTES - ENTRY_HEAD_RESERVE_BYTES - RECORD_HEADER_BYTES;
/// The record magic.
pub const RECORD_MAGIC: [u8; 4] = *b"CSWL";

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    PutMachine = 1,
    CreateInstance = 2,
    ApplyEvent = 3,
    DeleteInstance = 4,
    /// Several records applied atomically on one shard: the payload is the
    /// inner records, back to back, each a complete record of its own.
    Batch = 5,
    /// A shard's part of a cross-shard atomic batch, staged but undecided:
    /// txid (u64), decider shard (u32), then the inner records.
    Prepare = 6,
    /// The batch `txid` (u64 payload) committed. On the decider shard this
    /// record *is* the decision.
    Commit = 7,
    /// The batch `txid` (u64 payload) was abandoned.
    Abort = 8,
    /// FLUSH_ALL: everything before this record is forgotten (empty payload).
    Flush = 9,
    /// Kinds 10..=14 belong to a log that is a Raft member's log
    /// (corestate-raft's `log_store`, which defines their payloads). A
    /// standalone shard never writes them and refuses a log that holds one.
    ///
    /// One Raft log entry: its log id (term, leader node id, index) and its
    /// payload (blank, application data, or a membership).
    RaftEntry = 10,
    /// The member's vote (term, node id, committed flag).
    RaftVote = 11,
    /// Every Raft entry after a log id (or all of them) is dropped.
    RaftTruncate = 12,
    /// Every Raft entry up to a log id is logically dropped (purged).
    RaftPurge = 13,
    /// The last log id known to be committed.
    RaftCommitted = 14,
}

impl RecordKind {
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => RecordKind::PutMachine,
            2 => RecordKind::CreateInstance,
            3 => RecordKind::ApplyEvent,
            4 => RecordKind::DeleteInstance,
            5 => RecordKind::Batch,
            6 => RecordKind::Prepare,
            7 => RecordKind::Commit,
            8 => RecordKind::Abort,
            9 => RecordKind::Flush,
            10 => RecordKind::RaftEntry,
            11 => RecordKind::RaftVote,
            12 => RecordKind::RaftTruncate,
            13 => RecordKind::RaftPurge,
            14 => RecordKind::RaftCommitted,
            _ => return None,
        })
    }

    /// Whether the record belongs to a Raft member's log (kinds 10..=14).
    pub fn is_raft(self) -> bool {
        matches!(
            self,
            RecordKind::RaftEntry
                | RecordKind::RaftVote
                | RecordKind::RaftTruncate
                | RecordKind::RaftPurge
                | RecordKind::RaftCommitted
        )
    }

    /// The most payload bytes a record of this kind may be written with: a
    /// Raft member's records (an entry wraps a turn's shard records) up to
    /// the format's limit, a shard's own records less (see
    /// `SHARD_RECORD_PAYLOAD_MAX_BYTES`). Readers take either up to the
    /// format's limit (logs written before the shard limit included).
    pub fn payload_max_bytes(self) -> usize {
        if self.is_raft() {
            RECORD_PAYLOAD_MAX_BYTES
        } else {
            SHARD_RECORD_PAYLOAD_MAX_BYTES
        }
    }

    /// The error a standalone shard gives for a Raft record in its log: it
    /// names the kind, so an operator sees whose log this is.
    pub fn standalone_refusal(self) -> String {
        format!(
            "a Raft record ({self:?}, kind {}) in a standalone shard's log: this log belongs to \
             a Raft member, which a standalone shard cannot replay or serve",
            self as u8
        )
    }
}

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    pub payload_len: u32,
    pub offset: u64,
    pub time_ms: u64,
    pub group_start: u32,
    /// Log entries this shard wrote before this record.
    pub entries_before: u64,
}

impl RecordHeader {
    pub fn total_len(&self) -> usize {
        RECORD_HEADER_BYTES + self.payload_len as usize
    }
}

/// Why the bytes at a position are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordDefect {
    /// Four zero bytes: nothing was written here.
    Zero,
    /// Fewer bytes left than a header or the announced payload.
    Truncated,
    BadMagic,
    UnknownKind(u8),
    TooLarge(u32),
    CrcMismatch,
}

/// What a record's header says besides the payload's length and checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordStamp {
    pub kind: RecordKind,
    pub offset: u64,
    pub time_ms: u64,
    pub entries_before: u64,
}

impl RecordStamp {
    /// A stamp with no entries before it (tests, tools).
    pub fn new(kind: RecordKind, offset: u64, time_ms: u64) -> Self {
        RecordStamp {
            kind,
            offset,
            time_ms,
            entries_before: 0,
        }
    }
}

/// Append a complete record to `out`. `write_payload` writes the entry JSON.
/// Returns the record's length, or the payload's length when it is more
/// than the kind's `payload_max_bytes` (nothing appended). The CRC is
/// computed after the payload is in place, so the payload is written once,
/// directly into the log buffer.
pub fn append_record(
    out: &mut Vec<u8>,
    stamp: &RecordStamp,
    group_start: u32,
    write_payload: impl FnOnce(&mut Vec<u8>),
) -> Result<usize, u32> {
    debug_assert!(stamp.entries_before <= RECORD_ENTRIES_MAX);
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_BYTES]);
    write_payload(out);
    let payload_len = out.len() - start - RECORD_HEADER_BYTES;
    if payload_len > stamp.kind.payload_max_bytes() {
        out.truncate(start);
        return Err(payload_len.min(u32::MAX as usize) as u32);
    }
    let h = &mut out[start..start + RECORD_HEADER_BYTES];
    h[0..4].copy_from_slice(&RECORD_MAGIC);
    h[8..12].copy_from_slice(&(payload_len as u32).to_le_bytes());
    h[12] = stamp.kind as u8;
    h[14..16].copy_from_slice(&((stamp.entries_before >> 32) as u16).to_le_bytes());
    h[16..24].copy_from_slice(&stamp.offset.to_le_bytes());
    h[24..32].copy_from_slice(&stamp.time_ms.to_le_bytes());
    h[32..36].copy_from_slice(&group_start.to_le_bytes());
    h[36..40].copy_from_slice(&(stamp.entries_before as u32).to_le_bytes());
    seal_record(&mut out[start..]);
    Ok(out.len() - start)
}

/// Recompute the CRC of a complete record in place (after `group_start` was
/// patched, for example).
pub fn seal_record(record: &mut [u8]) {
    let crc = crc32c::crc32c(&record[8..]);
    record[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Overwrite the `group_start` field of a complete record and reseal it.
pub fn set_group_start(record: &mut [u8], group_start: u32) {
    record[32..36].copy_from_slice(&group_start.to_le_bytes());
    seal_record(record);
}

/// Walk records laid back to back (a replicated group's entry holds one
/// turn's records so), checking each; the error names the byte of the
/// first damaged one or says what `visit` refused.
pub fn for_each_record(
    records: &[u8],
    mut visit: impl FnMut(&RecordHeader, &[u8]) -> Result<(), String>,
) -> Result<(), String> {
    let mut pos = 0;
    while pos < records.len() {
        let (header, payload) = decode_record(&records[pos..])
            .map_err(|d| format!("damaged record at byte {pos}: {d:?}"))?;
        visit(&header, payload)?;
        pos += header.total_len();
    }
    Ok(())
}

/// Decode the record starting at `buf[0]`; on success returns the header and
/// the payload slice.
pub fn decode_record(buf: &[u8]) -> Result<(RecordHeader, &[u8]), RecordDefect> {
    if buf.len() < 4 {
        return Err(if buf.iter().all(|&b| b == 0) {
            RecordDefect::Zero
        } else {
            RecordDefect::Truncated
        });
    }
    if buf[0..4] == [0, 0, 0, 0] {
        return Err(RecordDefect::Zero);
    }
    if buf[0..4] != RECORD_MAGIC {
        return Err(RecordDefect::BadMagic);
    }
    if buf.len() < RECORD_HEADER_BYTES {
        return Err(RecordDefect::Truncated);
    }
    let u32_at = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let payload_len = u32_at(8);
    if payload_len as usize > RECORD_PAYLOAD_MAX_BYTES {
        return Err(RecordDefect::TooLarge(payload_len));
    }
    let total = RECORD_HEADER_BYTES + payload_len as usize;
    if buf.len() < total {
        return Err(RecordDefect::Truncated);
    }
    if crc32c::crc32c(&buf[8..total]) != u32_at(4) {
        return Err(RecordDefect::CrcMismatch);
    }
    let kind = RecordKind::from_u8(buf[12]).ok_or(RecordDefect::UnknownKind(buf[12]))?;
    Ok((
        RecordHeader {
            kind,
            payload_len,
            offset: u64_at(16),
            time_ms: u64_at(24),
            group_start: u32_at(32),
            entries_before: (u16::from_le_bytes([buf[14], buf[15]]) as u64) << 32
                | u32_at(36) as u64,
        },
        &buf[RECORD_HEADER_BYTES..total],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stamp(kind: RecordKind, offset: u64, time_ms: u64, entries_before: u64) -> RecordStamp {
        RecordStamp {
            kind,
            offset,
            time_ms,
            entries_before,
        }
    }

    fn record(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let st = stamp(RecordKind::ApplyEvent, 4242, 7, (9 << 32) | 77);
        append_record(&mut out, &st, 96, |o| o.extend_from_slice(payload)).unwrap();
        out
    }

    #[test]
    fn round_trip() {
        let r = record(br#"{"type":"apply_event"}"#);
        let (h, p) = decode_record(&r).unwrap();
        assert_eq!(h.kind, RecordKind::ApplyEvent);
        assert_eq!(h.offset, 4242);
        assert_eq!(h.time_ms, 7);
        assert_eq!(h.group_start, 96);
        assert_eq!(h.entries_before, (9 << 32) | 77);
        assert_eq!(p, br#"{"type":"apply_event"}"#);
        assert_eq!(h.total_len(), r.len());
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let r = record(b"{\"a\":1}");
        for i in 0..r.len() {
            let mut bad = r.clone();
            bad[i] ^= 0x40;
            assert!(decode_record(&bad).is_err(), "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let r = record(b"{\"a\":1}");
        for len in 0..r.len() {
            assert!(decode_record(&r[..len]).is_err());
        }
    }

    #[test]
    fn raft_kinds_follow_flush_and_round_trip() {
        for b in 10..=14u8 {
            let kind = RecordKind::from_u8(b).unwrap();
            assert!(kind.is_raft());
            assert_eq!(kind as u8, b);
        }
        for b in 1..=9u8 {
            assert!(!RecordKind::from_u8(b).unwrap().is_raft());
        }
        assert_eq!(RecordKind::from_u8(15), None);
    }

    #[test]
    fn zeros_mean_end_of_log() {
        assert_eq!(decode_record(&[0u8; 64]), Err(RecordDefect::Zero));
    }

    #[test]
    fn oversize_payload_is_refused_on_append() {
        let mut out = vec![1, 2, 3];
        let st = stamp(RecordKind::PutMachine, 1, 1, 0);
        let err = append_record(&mut out, &st, 0, |o| {
            o.resize(o.len() + RECORD_PAYLOAD_MAX_BYTES + 1, b' ')
        });
        assert!(err.is_err());
        assert_eq!(out, vec![1, 2, 3]);
    }

    /// A shard's own record stops short of the format's limit by what a
    /// Raft entry wraps it in; a Raft entry may fill the format, and a
    /// reader takes a shard record up to the format's limit.
    #[test]
    fn a_shard_record_keeps_room_for_an_entry_around_it() {
        // The record (or the refused payload's length), never printed whole.
        let at = |kind, n: usize| {
            let mut out = Vec::new();
            let len = append_record(&mut out, &stamp(kind, 1, 1, 0), 0, |o| {
                o.resize(o.len() + n, b' ')
            });
            len.map(|_| out)
        };
        let refused = |kind, n| at(kind, n).err();
        assert_eq!(
            refused(RecordKind::CreateInstance, SHARD_RECORD_PAYLOAD_MAX_BYTES),
            None
        );
        assert_eq!(
            refused(RecordKind::Batch, SHARD_RECORD_PAYLOAD_MAX_BYTES + 1),
            Some(SHARD_RECORD_PAYLOAD_MAX_BYTES as u32 + 1)
        );
        assert_eq!(
            refused(RecordKind::RaftEntry, RECORD_PAYLOAD_MAX_BYTES),
            None
        );
        assert!(refused(RecordKind::RaftEntry, RECORD_PAYLOAD_MAX_BYTES + 1).is_some());
        // A reader takes a shard record up to the format's limit.
        let mut full = at(RecordKind::RaftEntry, RECORD_PAYLOAD_MAX_BYTES).unwrap_or_default();
        full[12] = RecordKind::ApplyEvent as u8;
        seal_record(&mut full);
        let decoded = decode_record(&full).map(|(h, p)| (h.kind, p.len()));
        assert_eq!(
            decoded,
            Ok((RecordKind::ApplyEvent, RECORD_PAYLOAD_MAX_BYTES))
        );
    }

    #[test]
    fn group_start_patch_keeps_record_valid() {
        let mut r = record(b"{}");
        set_group_start(&mut r, 12345);
        assert_eq!(decode_record(&r).unwrap().0.group_start, 12345);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_record(&bytes);
        }

        #[test]
        fn any_payload_round_trips(payload in proptest::collection::vec(any::<u8>(), 0..300), off in any::<u64>(), n in 0..=RECORD_ENTRIES_MAX) {
            let mut out = Vec::new();
            append_record(&mut out, &stamp(RecordKind::CreateInstance, off, 1, n), 0, |o| o.extend_from_slice(&payload)).unwrap();
            let (h, p) = decode_record(&out).unwrap();
            prop_assert_eq!(h.offset, off);
            prop_assert_eq!(h.entries_before, n);
            prop_assert_eq!(p, &payload[..]);
        }
    }
}
