//! Deleting the segments every live entry has left. After a purge the
//! oldest segments hold only purged entries and old votes, committed ids,
//! truncations and purges; once the newest vote, committed id and purge
//! are written again further on, recovery needs none of it. The flusher
//! does this between groups, one small step per turn, so a group waits for
//! at most one step.
//!
//! # The rule
//!
//! Segment `g` goes when it is below the active segment, every segment
//! below it goes too, and each of its entry records has an index at or
//! below the last purge *written to the log* — not the store's memory,
//! which runs ahead of the log by the queue. Those entries are dead
//! whatever else the log holds: a purge drops every entry at or below it,
//! and no entry at or below it is appended after it. Truncated entries
//! above the purge keep their segment until a purge passes them.
//!
//! # The order (a crash at any point recovers the same log)
//!
//! 1. **Checkpoint.** The vote, committed log id and last purge as the log
//!    holds them are appended again (one group, synced under any policy).
//!    They only repeat what the log says: a crash here changes nothing. A
//!    checkpoint that rolled over is written again whole in the new segment
//!    (under `never` the old segment's part may not be synced).
//! 2. **Head.** `log.head` names the first segment kept
//!    (`shards::wal::head`, written and synced with its directory). Before
//!    it lands, recovery reads every segment; after, none below it — and
//!    the segments it keeps begin before the checkpoint, so recovery
//!    rebuilds the same vote, committed id, last purge and live entries
//!    (the index replays a log with a retired head by its one extra rule).
//! 3. **Free.** Each segment below the head is shrunk by
//!    `RETIRE_STEP_BYTES` per step, `RETIRE_STEP_PAUSE_MS` apart, then
//!    unlinked — as a standalone shard frees its segments
//!    (`shards::wal::retire`: one unlink of a whole segment stalls the next
//!    sync). A crash leaves segments below the head, maybe shortened, maybe
//!    brought back by a power loss (unlinks are not synced): recovery does
//!    not read them and reports them, and the store frees them first.
//!
//! Steps 2 and 3 run as blocking jobs off the executor
//! (`Tasks::blocking`). A failure there stops retiring until the next
//! start — the log stays correct, only larger, and `RetireReport::stopped`
//! says why; a failure to write the checkpoint is a failed WAL write and
//! stops the store, as any other.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shards::env::tasks::blocking;
use shards::env::{Env, Storage};
use shards::wal::head::{head_path, write_first_segment};
use shards::wal::record::{RecordKind, RECORD_HEADER_BYTES};
use shards::wal::retire::{RETIRE_STEP_BYTES, RETIRE_STEP_PAUSE_MS};
use shards::wal::segment::segment_path;
use shards::wal::{FsyncPolicy, WalWriter};

use super::codec::{self, CodecError, WalLogId, WalVote};

/// What retirement did so far (the store reports it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetireReport {
    /// The log's first segment: every one below it is retired.
    pub first_segment: u64,
    /// Segments below the head freed (unlinked) since the log was opened.
    pub segments_freed: u64,
    /// Segments below the head still on disk, waiting to be freed.
    pub segments_waiting: u64,
    /// A retirement's checkpoint or head is being written.
    pub under_way: bool,
    /// Why retiring stopped (until the next start), if it did.
    pub stopped: Option<String>,
}

/// What the log holds as of the records staged so far: recovery would
/// rebuild these from it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Written {
    pub vote: Option<WalVote>,
    pub committed: Option<WalLogId>,
    pub purged: Option<WalLogId>,
}

impl Written {
    /// The checkpoint: records that say all of it again.
    fn records(&self) -> Vec<(RecordKind, Vec<u8>)> {
        let mut out = Vec::new();
        if let Some(vote) = &self.vote {
            let mut payload = Vec::new();
            codec::encode_vote(vote, &mut payload);
            out.push((RecordKind::RaftVote, payload));
        }
        if let Some(committed) = &self.committed {
            out.push((
                RecordKind::RaftCommitted,
                codec::encode_optional(Some(committed)),
            ));
        }
        if let Some(purged) = &self.purged {
            out.push((RecordKind::RaftPurge, codec::encode_purge(purged)));
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a purge to free a segment.
    Watching,
    /// Segments below `cut` may go: write the checkpoint first.
    Checkpoint { cut: u64 },
    /// The checkpoint is durable: name `cut` the first segment.
    Head { cut: u64 },
}

/// The flusher's retirement state.
pub struct Retirement {
    dir: PathBuf,
    /// Per segment from the head on: the highest index of an entry record.
    entry_index_max: BTreeMap<u64, u64>,
    written: Written,
    phase: Phase,
    /// Segments below the head still on disk, oldest first.
    doomed: VecDeque<u64>,
    /// Monotonic time before which no freeing step runs.
    next_free_at: Duration,
    /// (last purged index, active segment) the cut was last computed for.
    checked: Option<(Option<u64>, u64)>,
    report: RetireReport,
}

impl Retirement {
    /// As recovery left the log: its head, the segments below it still on
    /// disk, the highest entry index per segment, what the log holds.
    pub fn new(
        dir: &Path,
        first_segment: u64,
        leftovers: &[u64],
        entry_index_max: BTreeMap<u64, u64>,
        written: Written,
    ) -> Self {
        Retirement {
            dir: dir.to_path_buf(),
            entry_index_max,
            written,
            phase: Phase::Watching,
            doomed: leftovers.iter().copied().collect(),
            next_free_at: Duration::ZERO,
            checked: None,
            report: RetireReport {
                first_segment,
                segments_waiting: leftovers.len() as u64,
                ..RetireReport::default()
            },
        }
    }

    pub fn report(&self) -> &RetireReport {
        &self.report
    }

    /// An entry record staged at `segment`.
    pub fn note_entry(&mut self, segment: u64, index: u64) {
        let max = self.entry_index_max.entry(segment).or_insert(index);
        *max = (*max).max(index);
    }

    /// A vote, committed, truncation or purge record staged.
    pub fn note_record(&mut self, kind: RecordKind, payload: &[u8]) -> Result<(), CodecError> {
        match kind {
            RecordKind::RaftVote => self.written.vote = Some(codec::decode_vote(payload)?),
            RecordKind::RaftCommitted => {
                self.written.committed = codec::decode_optional(payload, "committed log id")?
            }
            RecordKind::RaftPurge => {
                let purged = codec::decode_purge(payload)?;
                if self.written.purged.is_none_or(|p| purged.index > p.index) {
                    self.written.purged = Some(purged);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// How long until `step` has work, if it has any.
    pub fn due_in(&self, now: Duration) -> Option<Duration> {
        if self.report.stopped.is_some() {
            return None;
        }
        match self.phase {
            Phase::Checkpoint { .. } | Phase::Head { .. } => Some(Duration::ZERO),
            Phase::Watching if self.doomed.is_empty() => None,
            Phase::Watching => Some(self.next_free_at.saturating_sub(now)),
        }
    }

    /// The first segment to keep: the oldest (from the head, below the
    /// active one) with an entry above the last purge written.
    fn cut(&self, active: u64) -> u64 {
        let purged = self.written.purged.map(|p| p.index);
        let first = self.report.first_segment;
        if first >= active {
            return first;
        }
        self.entry_index_max
            .range(first..active)
            .find(|(_, &max)| purged.is_none_or(|p| max > p))
            .map_or(active, |(&segment, _)| segment)
    }

    /// Start a retirement if the last purge written (or the log's growth
    /// to segment `active`) left segments without a live entry: the report
    /// says it is under way from here on, before `step` does its I/O.
    pub fn begin(&mut self, active: u64) {
        if self.report.stopped.is_some() || self.phase != Phase::Watching {
            return;
        }
        let key = (self.written.purged.map(|p| p.index), active);
        if self.checked != Some(key) {
            self.checked = Some(key);
            let cut = self.cut(active);
            if cut > self.report.first_segment {
                self.phase = Phase::Checkpoint { cut };
                self.report.under_way = true;
            }
        }
    }

    /// One small step, between two groups. `Err` is a failed WAL write
    /// (the checkpoint): the store must stop.
    pub async fn step(&mut self, env: &Env, writer: &mut WalWriter) -> Result<(), String> {
        if self.report.stopped.is_some() {
            return Ok(());
        }
        self.begin(writer.segment_id());
        match self.phase {
            Phase::Watching => {
                if !self.doomed.is_empty() && env.clock.monotonic() >= self.next_free_at {
                    self.free_one(env).await;
                }
                Ok(())
            }
            Phase::Checkpoint { cut } => self.checkpoint(env, writer, cut).await,
            Phase::Head { cut } => {
                self.write_head(env, cut).await;
                Ok(())
            }
        }
    }

    async fn checkpoint(
        &mut self,
        env: &Env,
        writer: &mut WalWriter,
        cut: u64,
    ) -> Result<(), String> {
        let records = self.written.records();
        if !records.is_empty() {
            let segment = writer.segment_id();
            let bytes = records
                .iter()
                .map(|(_, p)| RECORD_HEADER_BYTES + p.len())
                .sum();
            writer.before_turn(bytes).await;
            let now_ms = env.clock.now_ms();
            for (kind, payload) in &records {
                writer
                    .append(*kind, now_ms, |out| out.extend_from_slice(payload))
                    .map_err(|e| format!("staging the retirement checkpoint: {}", e.message))?;
            }
            writer
                .commit()
                .await
                .map_err(|e| format!("WAL write failed (retirement checkpoint): {e}"))?;
            if writer.policy() != FsyncPolicy::EveryWrite {
                writer
                    .sync()
                    .await
                    .map_err(|e| format!("WAL sync failed (retirement checkpoint): {e}"))?;
            }
            if writer.segment_id() != segment {
                // Part of it may sit unsynced in the segment left behind:
                // write it again, whole, in this one.
                return Ok(());
            }
        }
        self.phase = Phase::Head { cut };
        Ok(())
    }

    async fn write_head(&mut self, env: &Env, cut: u64) {
        let (storage, dir) = (env.storage.clone(), self.dir.clone());
        let done = blocking(&*env.tasks, move || {
            write_first_segment(&*storage, &dir, cut)
        })
        .await;
        match done {
            Some(Ok(())) => {
                self.doomed.extend(self.report.first_segment..cut);
                self.report.first_segment = cut;
                self.report.segments_waiting = self.doomed.len() as u64;
                self.entry_index_max = self.entry_index_max.split_off(&cut);
                self.phase = Phase::Watching;
                self.report.under_way = false;
            }
            Some(Err(e)) => self.stop(format!("{}: {e}", head_path(&self.dir).display())),
            None => self.stop("the head's write did not run".into()),
        }
    }

    async fn free_one(&mut self, env: &Env) {
        let Some(&id) = self.doomed.front() else {
            return;
        };
        let path = segment_path(&self.dir, id);
        let (storage, at) = (env.storage.clone(), path.clone());
        let done = blocking(&*env.tasks, move || shrink_or_remove(&*storage, &at)).await;
        self.next_free_at = env.clock.monotonic() + Duration::from_millis(RETIRE_STEP_PAUSE_MS);
        match done {
            Some(Ok(true)) => {
                self.doomed.pop_front();
                self.report.segments_freed += 1;
                self.report.segments_waiting = self.doomed.len() as u64;
            }
            Some(Ok(false)) => {}
            Some(Err(e)) => self.stop(format!("freeing {}: {e}", path.display())),
            None => self.stop(format!("freeing {}: the job did not run", path.display())),
        }
    }

    fn stop(&mut self, why: String) {
        self.report.under_way = false;
        self.report.stopped = Some(format!(
            "retiring segments stopped until the next start: {why}"
        ));
    }
}

/// One step of freeing a segment below the head: shrink it by
/// `RETIRE_STEP_BYTES`, or unlink it once no larger. Returns whether it
/// is gone.
fn shrink_or_remove(storage: &dyn Storage, path: &Path) -> io::Result<bool> {
    let len = match storage.metadata(path) {
        Ok(meta) => meta.len_bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    if len > RETIRE_STEP_BYTES {
        storage
            .open_write(path, false)?
            .set_len(len - RETIRE_STEP_BYTES)?;
        return Ok(false);
    }
    match storage.remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_store::codec::WalLeaderId;
    use openraft::LogId;

    fn id(index: u64) -> WalLogId {
        LogId::new(
            WalLeaderId {
                term: 1,
                node_id: 1,
            },
            index,
        )
    }

    fn retirement(max: &[(u64, u64)], purged: Option<u64>) -> Retirement {
        let written = Written {
            purged: purged.map(id),
            ..Written::default()
        };
        Retirement::new(
            Path::new("/wal"),
            1,
            &[],
            max.iter().copied().collect(),
            written,
        )
    }

    #[test]
    fn the_cut_is_the_oldest_segment_with_an_entry_above_the_purge() {
        let r = retirement(&[(1, 10), (2, 20), (3, 30)], Some(15));
        assert_eq!(r.cut(4), 2);
        let r = retirement(&[(1, 10), (2, 20), (3, 30)], Some(30));
        assert_eq!(r.cut(4), 4, "all purged: up to the active segment");
        assert_eq!(r.cut(3), 3, "never the active segment");
        let r = retirement(&[(1, 10), (2, 20)], None);
        assert_eq!(r.cut(3), 1, "nothing purged: nothing goes");
        // Segment 2 holds no entry (votes only): it goes with segment 1.
        let r = retirement(&[(1, 10), (3, 30)], Some(12));
        assert_eq!(r.cut(4), 3);
    }

    #[test]
    fn purges_only_move_forward_and_the_checkpoint_repeats_the_log() {
        let mut r = retirement(&[], None);
        r.note_record(RecordKind::RaftPurge, &codec::encode_purge(&id(9)))
            .unwrap();
        r.note_record(RecordKind::RaftPurge, &codec::encode_purge(&id(4)))
            .unwrap();
        assert_eq!(r.written.purged, Some(id(9)));
        r.note_record(
            RecordKind::RaftCommitted,
            &codec::encode_optional(Some(&id(7))),
        )
        .unwrap();
        let kinds: Vec<_> = r.written.records().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            kinds,
            vec![RecordKind::RaftCommitted, RecordKind::RaftPurge]
        );
        assert!(r.note_record(RecordKind::RaftVote, b"short").is_err());
    }
}
