//! Reading a shard's log as the sequence of *logical entries* it records,
//! from an offset: for WAL_READ, and for rebuilding watch events for
//! watchers that start from an old offset or fell behind the memory ring.
//!
//! Entries are the plain records (machine, create, apply, delete), the inner
//! records of `Batch` records, and the inner records of `Prepare` records
//! whose batch committed; decisions themselves are not entries, and neither
//! are the copies of machine definitions on shards other than 0 (see
//! `wal/sequence.rs`). A `Prepare` whose decision is logged, however far
//! after it, is resolved through the shard's `Decisions`; one still
//! undecided (prepared right now, or in doubt) ends the chunk there: its
//! entries are not yet visible, and the shard's watermark stays below them
//! until they are.
//!
//! A chunk also says how this shard's entries are numbered: how many it
//! wrote below `from` and which offsets in the chunk are entries nobody will
//! see (an aborted batch's, which kept their numbers), so the server can
//! number the merged log.

use std::io;
use std::sync::Arc;

use super::events::WatchEvent;
use super::runner::Shard;
use crate::wal::entry::{self, Entry};
use crate::wal::reader::{LogReader, LogRecord, ReadBatch};
use crate::wal::record::{decode_record, RecordHeader, RecordKind};
use crate::wal::sequence::entries_in;

/// One logical entry: its offset, kind and entry JSON (as logged).
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub offset: u64,
    pub kind: RecordKind,
    pub payload: Vec<u8>,
}

/// Entries of one shard with offset ≥ some `from`, and how far they are
/// complete: every entry of this shard with offset < `complete_upto` is in
/// `entries` (or before `from`, or in `unseen`).
#[derive(Debug, Default)]
pub struct EntryChunk {
    pub entries: Vec<LogEntry>,
    /// Offsets (≥ `from`) of entries that are counted but never shown: those
    /// of aborted cross-shard batches.
    pub unseen: Vec<u64>,
    /// Entries this shard wrote with an offset below `from`.
    pub entries_before_from: u64,
    pub complete_upto: u64,
    /// True when the read reached the end of what the log holds.
    pub at_end: bool,
    pub oldest_offset: Option<u64>,
}

/// The same, as watch events (apply entries only).
#[derive(Debug, Default)]
pub struct EventChunk {
    pub events: Vec<Arc<WatchEvent>>,
    pub complete_upto: u64,
    pub oldest_offset: Option<u64>,
}

impl EntryChunk {
    pub fn into_events(self) -> io::Result<EventChunk> {
        let mut events = Vec::new();
        for e in self.entries {
            if e.kind == RecordKind::ApplyEvent {
                let entry = Entry::decode(&e.payload).map_err(io::Error::other)?;
                if let Some(ev) = WatchEvent::from_entry(e.offset, entry) {
                    events.push(Arc::new(ev));
                }
            }
        }
        Ok(EventChunk {
            events,
            complete_upto: self.complete_upto,
            oldest_offset: self.oldest_offset,
        })
    }
}

/// Fills a chunk from records read in log order.
struct ChunkBuilder {
    chunk: EntryChunk,
    shard: usize,
    from: u64,
    /// Whether `entries_before_from` is known yet (from the first record,
    /// inner record or outer record at or after `from`).
    based: bool,
}

impl ChunkBuilder {
    /// Note where the count stands at a record of `offset`, if it is the
    /// first one at or after `from`.
    fn mark(&mut self, offset: u64, entries_before: u64) {
        if !self.based && offset >= self.from {
            self.chunk.entries_before_from = entries_before;
            self.based = true;
        }
    }

    fn plain(&mut self, header: &RecordHeader, payload: &[u8], seen: bool) {
        self.mark(header.offset, header.entries_before);
        if header.offset < self.from || entries_in(header.kind, self.shard) == 0 {
            return;
        }
        if seen {
            self.chunk.entries.push(LogEntry {
                offset: header.offset,
                kind: header.kind,
                payload: payload.to_vec(),
            });
        } else {
            self.chunk.unseen.push(header.offset);
        }
    }

    /// The inner records of a Batch or decided Prepare, then the outer record.
    fn inner(&mut self, outer: &RecordHeader, inner: &[u8], seen: bool) -> io::Result<()> {
        let mut pos = 0;
        while pos < inner.len() {
            let (h, p) = decode_record(&inner[pos..])
                .map_err(|d| io::Error::other(format!("damaged inner record: {d:?}")))?;
            self.plain(&h, p, seen);
            pos += h.total_len();
        }
        self.mark(outer.offset, outer.entries_before);
        Ok(())
    }
}

fn first_inner_offset(inner: &[u8]) -> Option<u64> {
    decode_record(inner).ok().map(|(h, _)| h.offset)
}

/// What a shard knows when it reads its log.
pub struct ReadContext<'a> {
    pub shard: usize,
    /// The shard's current watermark (the bound when the log's end is reached).
    pub watermark: u64,
    /// Entries in the log files (every entry below the watermark is).
    pub entries_written: u64,
    /// Whether a batch is prepared-but-undecided on this shard right now.
    pub undecided: &'a dyn Fn(u64) -> bool,
    /// The decision the log holds for a batch (`decisions.rs`).
    pub decision: &'a dyn Fn(u64) -> Option<bool>,
}

/// Read entries from `from` on, from the shard's own log files.
pub fn read_entries(
    reader: &mut LogReader,
    from: u64,
    max_records: usize,
    max_bytes: usize,
    cx: &ReadContext<'_>,
) -> io::Result<EntryChunk> {
    let batch = reader.read_from(from, max_records.max(1), max_bytes.max(1))?;
    entries_of(&batch, reader.oldest_offset(), from, cx)
}

/// The logical entries among `batch`'s records (read from `from` on, in
/// log order, wherever the log is kept: segments or a group's entries);
/// `oldest_offset` is the oldest offset the log still holds.
pub fn entries_of(
    batch: &ReadBatch,
    oldest_offset: Option<u64>,
    from: u64,
    cx: &ReadContext<'_>,
) -> io::Result<EntryChunk> {
    let mut b = ChunkBuilder {
        chunk: EntryChunk {
            oldest_offset,
            ..EntryChunk::default()
        },
        shard: cx.shard,
        from,
        based: false,
    };
    let mut stopped_at = None;
    for LogRecord { header, payload } in &batch.records {
        match header.kind {
            RecordKind::PutMachine
            | RecordKind::CreateInstance
            | RecordKind::ApplyEvent
            | RecordKind::DeleteInstance
            | RecordKind::Commit
            | RecordKind::Abort
            | RecordKind::Flush => b.plain(header, payload, true),
            RecordKind::Batch => b.inner(header, payload, true)?,
            RecordKind::RaftEntry
            | RecordKind::RaftVote
            | RecordKind::RaftTruncate
            | RecordKind::RaftPurge
            | RecordKind::RaftCommitted => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "at offset {}: {}",
                        header.offset,
                        header.kind.standalone_refusal()
                    ),
                ))
            }
            RecordKind::Prepare => {
                let (txid, _, inner) = entry::read_prepare(payload).map_err(io::Error::other)?;
                match (cx.decision)(txid) {
                    Some(committed) => b.inner(header, inner, committed)?,
                    // Prepared right now or in doubt: visible once decided.
                    None if (cx.undecided)(txid) => {
                        // The count below the undecided part is known.
                        if let Ok((h, _)) = decode_record(inner) {
                            b.mark(h.offset, h.entries_before);
                        }
                        let start = first_inner_offset(inner).unwrap_or(header.offset);
                        stopped_at = Some(start.max(from));
                        break;
                    }
                    // Neither decided in the log nor waiting for a decision:
                    // a `--salvage` cut dropped the decision (the snapshot
                    // the shard started from reflects the batch's outcome).
                    // Its entries keep their numbers, shown to nobody.
                    None => b.inner(header, inner, false)?,
                }
            }
        }
    }
    let mut chunk = b.chunk;
    if !b.based {
        // Nothing at or after `from` in the log: every entry is below it.
        chunk.entries_before_from = cx.entries_written;
    }
    chunk.at_end = stopped_at.is_none() && batch.reached_end;
    chunk.complete_upto = match stopped_at {
        Some(at) => at,
        None if batch.reached_end => cx.watermark.max(from),
        None => batch.next_offset.unwrap_or(from),
    };
    Ok(chunk)
}

impl Shard {
    /// Watch events from the log from `from` on (catch-up).
    pub(super) fn read_events(
        &mut self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> std::io::Result<EventChunk> {
        self.read_entries(from, max_records, max_bytes)?
            .into_events()
    }

    /// Log entries from `from` on (WAL_READ), complete up to the bound
    /// the chunk names.
    pub(super) fn read_entries(
        &mut self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> std::io::Result<EntryChunk> {
        if from < self.storage.retained_from() {
            return Err(std::io::Error::other(format!(
                "offset {from} is older than the oldest offset still in the log of shard {} ({}); \
                 the records before it were compacted away",
                self.state.shard_id,
                self.storage.retained_from()
            )));
        }
        if self.reader.is_none() {
            self.reader = Some(LogReader::open(self.env.storage.clone(), &self.wal_dir)?);
        }
        // Raise this shard's floor to the frontier first: an idle shard would
        // otherwise answer with a bound below every other shard's records,
        // and the merged read would hold back what those shards wrote.
        self.wal.clock_mut().begin_group();
        self.publish_requested = true;
        let (txns, in_doubt, decisions) = (&self.txns, &self.txn_log.in_doubt, &self.decisions);
        let undecided = |txid: u64| txns.contains_key(&txid) || in_doubt.contains_key(&txid);
        let decision = |txid: u64| decisions.get(txid);
        let cx = ReadContext {
            shard: self.state.shard_id,
            watermark: self.watermark(),
            entries_written: self.wal.entries_committed(),
            undecided: &undecided,
            decision: &decision,
        };
        let reader = self
            .reader
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no reader"))?;
        read_entries(reader, from, max_records, max_bytes, &cx)
    }
}
