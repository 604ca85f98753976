//! The log reader openraft's replication tasks share: entries from the
//! cache of recent ones, older ones read back from their WAL records
//! (checked: checksum, kind, log id), and the vote.

use std::fmt;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::rc::Rc;

use openraft::{OptionalSend, RaftLogReader};
use shards::env::{ReadFile, Storage};
use shards::wal::files::LogFiles;
use shards::wal::record::{
    decode_record, RecordKind, RECORD_HEADER_BYTES, RECORD_PAYLOAD_MAX_BYTES,
};
use shards::wal::segment::segment_path;
use shards::wal::{RecordPlace, WalStats};

use super::codec::{decode_entry, WalLogId, WalTypes};
use super::Shared;

/// Most entries one `limited_get_log_entries` call returns (what a
/// replication task sends in one go is bounded by openraft's own
/// settings; this bounds the memory of one read).
pub const READ_BATCH_ENTRIES_MAX: u64 = 4096;

/// Reads the log of one member; cheap to clone.
pub struct WalLogReader<C: WalTypes> {
    pub(super) shared: Rc<Shared<C>>,
}

impl<C: WalTypes> Clone for WalLogReader<C> {
    fn clone(&self) -> Self {
        WalLogReader {
            shared: self.shared.clone(),
        }
    }
}

/// `[start, end)` of a range of indexes.
fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

/// An open segment, kept between reads of the same one.
pub(super) struct OpenSegment {
    id: u64,
    file: Box<dyn ReadFile>,
}

impl OpenSegment {
    pub(super) fn segment(&self) -> u64 {
        self.id
    }
}

/// Read the entry record at `place` and check that it holds `expected`.
pub(super) fn read_entry<C: WalTypes>(
    storage: &dyn Storage,
    dir: &Path,
    open: &mut Option<OpenSegment>,
    place: RecordPlace,
    expected: &WalLogId,
) -> io::Result<C::Entry> {
    let path = segment_path(dir, place.segment);
    let bad = |what: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} at byte {}: {what} (reading back entry {expected})",
                path.display(),
                place.position
            ),
        )
    };
    if open.as_ref().is_none_or(|o| o.id != place.segment) {
        *open = Some(OpenSegment {
            id: place.segment,
            file: storage.open_read(&path)?,
        });
    }
    let Some(segment) = open.as_ref() else {
        return Err(bad("segment not open".into()));
    };
    let mut header = [0u8; RECORD_HEADER_BYTES];
    if segment.file.read_at(&mut header, place.position)? != header.len() {
        return Err(bad("the file ends inside the record's header".into()));
    }
    let payload_len = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
    if payload_len > RECORD_PAYLOAD_MAX_BYTES {
        return Err(bad(format!("impossible record length {payload_len}")));
    }
    let mut record = vec![0u8; RECORD_HEADER_BYTES + payload_len];
    if segment.file.read_at(&mut record, place.position)? != record.len() {
        return Err(bad("the file ends inside the record".into()));
    }
    let (h, payload) = decode_record(&record).map_err(|d| bad(format!("{d:?}")))?;
    if h.kind != RecordKind::RaftEntry {
        return Err(bad(format!("a {:?} record where an entry was", h.kind)));
    }
    let entry = decode_entry::<C::D>(payload).map_err(|e| bad(e.to_string()))?;
    if entry.log_id != *expected {
        return Err(bad(format!("the record holds entry {}", entry.log_id)));
    }
    Ok(entry)
}

impl<C: WalTypes> WalLogReader<C> {
    /// The log's WAL counters as of the last group written (syncs, groups).
    pub fn wal_stats(&self) -> WalStats {
        self.shared.core.borrow().stats
    }

    /// The log's segment files now and what they hold (WAL_STATS): listed
    /// from its directory, with what recovery found in each segment and
    /// what was written to each since.
    pub fn files(&self) -> io::Result<LogFiles> {
        let core = self.shared.core.borrow();
        core.recovered
            .list(&*self.shared.storage, &self.shared.dir, &core.written)
    }

    /// The first index of the log, when the log holds the entry `last`
    /// (same index, same term) and entries before it. By Raft's log
    /// matching, every log holding `last` holds the same entries up to it;
    /// so when `last` is committed (a snapshot's last entry), the entries
    /// `[first, last.index]` are the group's committed ones.
    pub fn kept_up_to(&self, last: &WalLogId) -> Option<u64> {
        let core = self.shared.core.borrow();
        let (first, _) = core.log.span();
        let slot = core.log.get(last.index)?;
        (slot.log_id == *last && first < last.index).then_some(first)
    }

    /// Entries `[start, end)` that are live, at most `max`.
    fn entries(&self, start: u64, end: u64, max: u64) -> io::Result<Vec<C::Entry>> {
        let mut core = self.shared.core.borrow_mut();
        let core = &mut *core;
        let (first, next) = core.log.span();
        let start = start.max(first);
        let end = end.min(next).min(start.saturating_add(max));
        let mut out = Vec::with_capacity(end.saturating_sub(start) as usize);
        for index in start..end {
            if let Some(entry) = core.cache.get(index) {
                out.push(entry.clone());
                continue;
            }
            let slot = core.log.get(index).copied();
            let Some((log_id, place)) = slot.and_then(|s| Some((s.log_id, s.place?))) else {
                return Err(io::Error::other(format!(
                    "entry {index} is neither in memory nor written (a store invariant is broken)"
                )));
            };
            out.push(read_entry::<C>(
                &*self.shared.storage,
                &self.shared.dir,
                &mut core.open_segment,
                place,
                &log_id,
            )?);
        }
        Ok(out)
    }
}

impl<C: WalTypes> RaftLogReader<C> for WalLogReader<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, io::Error> {
        let (start, end) = bounds(&range);
        self.entries(start, end, u64::MAX)
    }

    async fn read_vote(&mut self) -> Result<Option<C::Vote>, io::Error> {
        Ok(self.shared.core.borrow().vote)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<C::Entry>, io::Error> {
        self.entries(start, end, READ_BATCH_ENTRIES_MAX)
    }
}
