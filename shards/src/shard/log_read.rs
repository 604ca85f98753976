//! Reading a shard's log as the sequence of *logical entries* it records,
//! from an offset: for WAL_READ, and for rebuilding watch events for
//! watchers that start from an old offset or fell behind the memory ring.
//!
//! Entries are the plain records (machine, create, apply, delete), the inner
//! records of `Batch` records, and the inner records of `Prepare` records
//! whose batch committed; decisions themselves are not entries. A `Prepare`
//! whose decision lies later in the log is resolved by reading on; one
//! still undecided (prepared right now, or in doubt) ends the chunk there:
//! its entries are not yet visible, and the shard's watermark stays below
//! them until they are.

use std::io;
use std::sync::Arc;

use hashbrown::HashMap;

use super::events::WatchEvent;
use crate::wal::entry::{self, Entry};
use crate::wal::reader::{LogReader, LogRecord};
use crate::wal::record::{decode_record, RecordKind};

/// Most records read while looking for a batch's decision.
pub const DECISION_SEARCH_RECORDS_MAX: usize = 65_536;

/// One logical entry: its offset, kind and entry JSON (as logged).
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub offset: u64,
    pub kind: RecordKind,
    pub payload: Vec<u8>,
}

/// Entries of one shard with offset ≥ some `from`, and how far they are
/// complete: every entry of this shard with offset < `complete_upto` is in
/// `entries` (or before `from`).
#[derive(Debug, Default)]
pub struct EntryChunk {
    pub entries: Vec<LogEntry>,
    pub complete_upto: u64,
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
                if let Some(ev) = WatchEvent::from_entry(e.offset, &entry) {
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

fn push_plain(out: &mut Vec<LogEntry>, offset: u64, kind: RecordKind, payload: &[u8], from: u64) {
    if offset >= from {
        out.push(LogEntry {
            offset,
            kind,
            payload: payload.to_vec(),
        });
    }
}

fn push_inner(out: &mut Vec<LogEntry>, inner: &[u8], from: u64) -> io::Result<()> {
    let mut pos = 0;
    while pos < inner.len() {
        let (h, p) = decode_record(&inner[pos..])
            .map_err(|d| io::Error::other(format!("damaged inner record: {d:?}")))?;
        push_plain(out, h.offset, h.kind, p, from);
        pos += h.total_len();
    }
    Ok(())
}

fn first_inner_offset(inner: &[u8]) -> Option<u64> {
    decode_record(inner).ok().map(|(h, _)| h.offset)
}

/// Read entries from `from` on. `undecided(txid)` tells whether a batch is
/// prepared-but-undecided on this shard right now; `watermark` is the
/// shard's current watermark (the bound when the log's end is reached).
pub fn read_entries(
    reader: &mut LogReader,
    from: u64,
    max_records: usize,
    max_bytes: usize,
    watermark: u64,
    undecided: &dyn Fn(u64) -> bool,
) -> io::Result<EntryChunk> {
    let mut window = max_records.max(1);
    loop {
        let batch = reader.read_from(from, window, max_bytes.max(1))?;
        let decisions: HashMap<u64, bool> = batch
            .records
            .iter()
            .filter_map(|r| match r.header.kind {
                RecordKind::Commit => entry::read_txid(&r.payload).ok().map(|t| (t, true)),
                RecordKind::Abort => entry::read_txid(&r.payload).ok().map(|t| (t, false)),
                _ => None,
            })
            .collect();
        let mut chunk = EntryChunk {
            oldest_offset: reader.oldest_offset(),
            ..EntryChunk::default()
        };
        let mut stopped_at = None;
        let mut retry_wider = false;
        for (i, rec) in batch.records.iter().enumerate() {
            let LogRecord { header, payload } = rec;
            match header.kind {
                RecordKind::PutMachine
                | RecordKind::CreateInstance
                | RecordKind::ApplyEvent
                | RecordKind::DeleteInstance => push_plain(
                    &mut chunk.entries,
                    header.offset,
                    header.kind,
                    payload,
                    from,
                ),
                RecordKind::Batch => push_inner(&mut chunk.entries, payload, from)?,
                RecordKind::Prepare => {
                    let (txid, _, inner) =
                        entry::read_prepare(payload).map_err(io::Error::other)?;
                    match decisions.get(&txid) {
                        Some(true) => push_inner(&mut chunk.entries, inner, from)?,
                        Some(false) => {}
                        None => {
                            let start = first_inner_offset(inner).unwrap_or(header.offset);
                            if !undecided(txid)
                                && i == 0
                                && !batch.reached_end
                                && window < DECISION_SEARCH_RECORDS_MAX
                            {
                                retry_wider = true;
                            }
                            stopped_at = Some(start.max(from));
                            break;
                        }
                    }
                }
                RecordKind::Commit | RecordKind::Abort | RecordKind::Flush => {}
            }
        }
        if retry_wider {
            window = (window * 4).min(DECISION_SEARCH_RECORDS_MAX);
            continue;
        }
        chunk.complete_upto = match stopped_at {
            Some(at) => at,
            None if batch.reached_end => watermark.max(from),
            None => batch.next_offset.unwrap_or(from),
        };
        return Ok(chunk);
    }
}
