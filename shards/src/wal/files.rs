//! What a log's segment files hold now (WAL_STATS, metrics): the same
//! reckoning for a standalone shard's log and a group member's log.
//!
//! Records and bytes of records per segment come from two places: what
//! recovery found in each segment at start, and what the writer wrote to
//! each since (`WalWriter::written_per_segment`). Only segments still on
//! disk count: compaction and retirement delete files.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use super::recovery::SegmentTally;
use super::segment::{list_segments, segment_path};
use crate::env::Storage;

/// A log's segment files as they are now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogFiles {
    pub segments: u64,
    /// Bytes the files take (segments are pre-allocated).
    pub bytes_allocated: u64,
    /// Records the files hold.
    pub records: u64,
    /// Bytes of those records.
    pub data_bytes: u64,
}

/// Per segment, what recovery found in it at start.
#[derive(Debug, Clone, Default)]
pub struct RecoveredTallies(BTreeMap<u64, SegmentTally>);

impl RecoveredTallies {
    pub fn new(scanned: &[SegmentTally]) -> Self {
        RecoveredTallies(scanned.iter().map(|t| (t.id, *t)).collect())
    }

    /// Segment `id` was deleted.
    pub fn forget(&mut self, id: u64) {
        self.0.remove(&id);
    }

    /// Records and bytes of records in the segments `present`: what
    /// recovery found plus what `written` (since start) added.
    pub fn held(&self, present: &[u64], written: &[SegmentTally]) -> (u64, u64) {
        let mut per_segment = self.0.clone();
        for t in written {
            let seen = per_segment.entry(t.id).or_insert(SegmentTally {
                id: t.id,
                ..SegmentTally::default()
            });
            seen.records += t.records;
            seen.data_bytes = seen.data_bytes.max(t.data_bytes);
        }
        per_segment
            .values()
            .filter(|t| present.contains(&t.id))
            .fold((0, 0), |(records, bytes), t| {
                (records + t.records, bytes + t.data_bytes)
            })
    }

    /// List the segment files in `dir` and reckon what they hold.
    pub fn list(
        &self,
        storage: &dyn Storage,
        dir: &Path,
        written: &[SegmentTally],
    ) -> io::Result<LogFiles> {
        let present = list_segments(storage, dir)?;
        let mut bytes_allocated = 0;
        for &id in &present {
            match storage.metadata(&segment_path(dir, id)) {
                Ok(meta) => bytes_allocated += meta.len_bytes,
                // Retired between the listing and now.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let (records, data_bytes) = self.held(&present, written);
        Ok(LogFiles {
            segments: present.len() as u64,
            bytes_allocated,
            records,
            data_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(id: u64, records: u64, data_bytes: u64) -> SegmentTally {
        SegmentTally {
            id,
            records,
            data_bytes,
        }
    }

    #[test]
    fn held_adds_writes_since_start_to_what_recovery_found_on_present_segments() {
        let recovered = RecoveredTallies::new(&[tally(1, 10, 1_000), tally(2, 4, 400)]);
        // Segment 2 grew since start, 3 is new; 1 was deleted.
        let written = [tally(2, 3, 700), tally(3, 5, 500)];
        assert_eq!(recovered.held(&[2, 3], &written), (4 + 3 + 5, 700 + 500));
        let mut recovered = recovered;
        recovered.forget(2);
        assert_eq!(recovered.held(&[2, 3], &written), (3 + 5, 700 + 500));
        assert_eq!(RecoveredTallies::default().held(&[], &written), (0, 0));
    }
}
