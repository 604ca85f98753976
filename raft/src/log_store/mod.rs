//! The Raft log of a member, stored in a shard WAL: openraft's
//! `RaftLogStorage` and `RaftLogReader` over corestate's segments, record
//! framing, checksums, group commit and recovery (issue 14, "the shard
//! WAL is the Raft log"; the crate README says how each of its points is
//! met).
//!
//! * `codec.rs` — the payloads of the Raft records and the application
//!   data's codec (`AppDataCodec`);
//! * `index.rs` — the live entries (one slot each: log id, record place)
//!   and the bounded cache of recent entries, with the rules both the
//!   store and recovery follow;
//! * `recover.rs` — opening: the WAL scan, replaying the Raft records;
//! * `flusher.rs` — the task that owns the `WalWriter`: group commit and
//!   the callbacks;
//! * `reader.rs` — the log reader: cache, or read back from the segments;
//! * `retire.rs` — deleting the segments every live entry has left.
//!
//! Everything lives on the member's executor: the store, its readers and
//! the flusher share one `Rc`, and no `RefCell` borrow is held across an
//! `.await`.
//!
//! Purged entries are dropped at once logically (the index forgets them,
//! recovery honours the purge record) and then physically: the flusher
//! deletes the oldest segments once every entry in them is purged by a
//! written purge record, after writing the vote, committed id and purge
//! again in the active segment and naming the first segment kept in the
//! log's head file (`retire.rs` has the rule and the crash-safe order).
//! So a member's log on disk, and the scan at each start, stay about as
//! large as its un-purged entries.

pub mod codec;
mod flusher;
pub mod index;
mod reader;
mod recover;
mod retire;

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use futures_channel::oneshot;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend};
use shards::env::{Env, Storage};
use shards::wal::files::RecoveredTallies;
use shards::wal::record::{RecordKind, RECORD_PAYLOAD_MAX_BYTES};
use shards::wal::recovery::{RecoveryError, SegmentTally, TailRepair};
use shards::wal::{Frontier, FsyncPolicy, OffsetClock, WalOpen, WalStats, WalWriter};

pub use codec::{AppDataCodec, CodecError, WalEntry, WalLeaderId, WalLogId, WalTypes, WalVote};
pub use flusher::LAZY_RECORD_LINGER_MS;
pub use index::CACHED_ENTRIES_MAX;
pub use reader::{WalLogReader, READ_BATCH_ENTRIES_MAX};
pub use retire::RetireReport;

use flusher::Op;
use index::{LiveLog, RecentEntries};
use reader::OpenSegment;
use retire::{Retirement, Written};

/// How a member's log is kept.
#[derive(Debug, Clone, Copy)]
pub struct WalLogOptions {
    /// The shard whose group this member belongs to (its offsets carry it).
    pub shard: usize,
    /// When groups are synced; `every_write` is what makes an `IOFlushed`
    /// mean "on disk" — under the others it means "written", and a power
    /// loss may take entries this member acknowledged (Raft then relies on
    /// the other members).
    pub fsync: FsyncPolicy,
    pub segment_size_bytes: u64,
    /// This member's node id: while it follows another member's lead, its
    /// flusher writes and syncs with blocking calls (`flusher.rs`).
    pub node_id: u64,
}

/// What opening found.
#[derive(Debug, Clone)]
pub struct OpenReport {
    pub records: u64,
    pub live_entries: u64,
    pub last_log_id: Option<WalLogId>,
    pub last_purged: Option<WalLogId>,
    /// A torn last write that was cut off.
    pub torn_tail: Option<TailRepair>,
    /// The log's first segment (every one below it was retired).
    pub first_segment: u64,
    /// Segments below it that a crash left on disk (freed again first).
    pub retired_leftovers: u64,
}

/// Why a log could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// Damage, a missing segment, or a record that breaks the log's rules.
    Recovery(RecoveryError),
    Io {
        path: PathBuf,
        error: io::Error,
    },
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Recovery(e) => write!(f, "Raft log: {e}"),
            OpenError::Io { path, error } => write!(f, "Raft log: {}: {error}", path.display()),
        }
    }
}

impl std::error::Error for OpenError {}

/// What the store, its readers and the flusher share.
pub(crate) struct Shared<C: WalTypes> {
    core: RefCell<Core<C>>,
    /// Rung after queueing; the flusher ends when the last sender is gone.
    doorbell: flume::Sender<()>,
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    node_id: u64,
}

struct Core<C: WalTypes> {
    log: LiveLog,
    cache: RecentEntries<C::Entry>,
    vote: Option<WalVote>,
    committed: Option<WalLogId>,
    /// Writes for the flusher, in call order.
    queue: Vec<Op<C>>,
    /// A write failed: the store is stopped (fail-stop).
    failure: Option<String>,
    stats: WalStats,
    /// Per segment, what recovery found in it; and what the flusher's
    /// writer wrote to each since (as of its last group): WAL_STATS.
    recovered: RecoveredTallies,
    written: Vec<SegmentTally>,
    retire: RetireReport,
    open_segment: Option<OpenSegment>,
}

/// A member's Raft log on its WAL; cheap to clone (all clones are one log).
pub struct WalLogStore<C: WalTypes> {
    shared: Rc<Shared<C>>,
}

impl<C: WalTypes> Clone for WalLogStore<C> {
    fn clone(&self) -> Self {
        WalLogStore {
            shared: self.shared.clone(),
        }
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

impl<C: WalTypes> WalLogStore<C> {
    /// Open (or create) the log in `dir` and start its flusher on the
    /// calling glommio executor — the member's.
    pub async fn open(
        env: Env,
        dir: &Path,
        options: WalLogOptions,
    ) -> Result<(Self, OpenReport), OpenError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |error| OpenError::Io { path, error }
        };
        env.storage.create_dir_all(dir).map_err(io_err(dir))?;
        let mut recovered =
            recover::recover(&*env.storage, dir, options.shard).map_err(OpenError::Recovery)?;
        let scan = &recovered.scan;
        let report = OpenReport {
            records: scan.records,
            live_entries: recovered.log.len() as u64,
            last_log_id: recovered.log.last_log_id(),
            last_purged: recovered.log.last_purged(),
            torn_tail: scan.torn_tail.clone(),
            first_segment: recovered.first_segment,
            retired_leftovers: scan.leftovers.len() as u64,
        };
        let retirement = Retirement::new(
            dir,
            recovered.first_segment,
            &scan.leftovers,
            std::mem::take(&mut recovered.entry_index_max),
            Written {
                vote: recovered.vote,
                committed: recovered.committed,
                purged: recovered.log.last_purged(),
            },
        );
        let clock = OffsetClock::new(
            options.shard,
            scan.last_tick,
            Frontier::new(),
            env.clock.clone(),
        );
        let open = WalOpen {
            policy: options.fsync,
            segment_size_bytes: options.segment_size_bytes,
            segment_id: scan.active_segment,
            end: scan.active_end,
            entries: scan.entries,
            sealed: match (&scan.torn_tail, &scan.salvage) {
                (None, None) => scan.manifest.and_then(|m| m.sealed),
                _ => None,
            },
        };
        let writer = WalWriter::open(env.clone(), dir, open, clock)
            .await
            .map_err(io_err(dir))?;
        let (doorbell, rung) = flume::bounded(1);
        let shared = Rc::new(Shared {
            core: RefCell::new(Core {
                log: recovered.log,
                cache: RecentEntries::default(),
                vote: recovered.vote,
                committed: recovered.committed,
                queue: Vec::new(),
                failure: None,
                stats: writer.stats(),
                recovered: RecoveredTallies::new(&scan.segment_records),
                written: Vec::new(),
                retire: retirement.report().clone(),
                open_segment: None,
            }),
            doorbell,
            storage: env.storage.clone(),
            dir: dir.to_path_buf(),
            node_id: options.node_id,
        });
        let flusher = flusher::run(Rc::downgrade(&shared), env, writer, retirement, rung);
        glommio::spawn_local(flusher).detach();
        Ok((WalLogStore { shared }, report))
    }

    /// The WAL's counters as of the last group written (syncs, groups).
    pub fn wal_stats(&self) -> WalStats {
        self.reader().wal_stats()
    }

    /// A reader of this log (what `get_log_reader` gives openraft).
    pub fn reader(&self) -> WalLogReader<C> {
        WalLogReader {
            shared: self.shared.clone(),
        }
    }

    /// What retiring the segments every live entry has left did so far.
    pub fn retire_report(&self) -> RetireReport {
        self.shared.core.borrow().retire.clone()
    }

    /// Entries held in memory right now.
    pub fn cached_entries(&self) -> usize {
        self.shared.core.borrow().cache.len()
    }

    fn check_running(&self) -> io::Result<()> {
        match &self.shared.core.borrow().failure {
            None => Ok(()),
            Some(e) => Err(io::Error::other(format!(
                "the Raft log stopped after a failed write: {e}"
            ))),
        }
    }

    fn enqueue(&self, op: Op<C>) {
        self.shared.core.borrow_mut().queue.push(op);
        // Full: the flusher is already due to run.
        let _ = self.shared.doorbell.try_send(());
    }

    fn enqueue_record(&self, kind: RecordKind, payload: Vec<u8>) {
        self.enqueue(Op::Record {
            kind,
            payload,
            synced: None,
        });
    }
}

impl<C: WalTypes> RaftLogStorage<C> for WalLogStore<C> {
    type LogReader = WalLogReader<C>;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let core = self.shared.core.borrow();
        Ok(LogState {
            last_purged_log_id: core.log.last_purged(),
            last_log_id: core.log.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader()
    }

    /// Durable on return: the vote record goes into the queue behind every
    /// earlier write, and the group that carries it is synced under any
    /// fsync policy before this returns.
    async fn save_vote(&mut self, vote: &WalVote) -> Result<(), io::Error> {
        self.check_running()?;
        let mut payload = Vec::new();
        codec::encode_vote(vote, &mut payload);
        let (tx, rx) = oneshot::channel();
        self.shared.core.borrow_mut().vote = Some(*vote);
        self.enqueue(Op::Record {
            kind: RecordKind::RaftVote,
            payload,
            synced: Some(tx),
        });
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io::Error::other(format!("saving the vote: {e}"))),
            Err(_) => Err(io::Error::other(
                "saving the vote: the Raft log's flusher stopped",
            )),
        }
    }

    /// Written with the next group, not synced on its own: a committed log
    /// id lost in a crash only makes the member re-apply less on restart
    /// (up to its snapshot or an older committed id) until it hears the
    /// leader's commit again — never more than was committed.
    async fn save_committed(&mut self, committed: Option<WalLogId>) -> Result<(), io::Error> {
        self.check_running()?;
        self.shared.core.borrow_mut().committed = committed;
        self.enqueue_record(
            RecordKind::RaftCommitted,
            codec::encode_optional(committed.as_ref()),
        );
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<WalLogId>, io::Error> {
        Ok(self.shared.core.borrow().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.check_running()?;
        let entries: Vec<C::Entry> = entries.into_iter().collect();
        let mut records = Vec::with_capacity(entries.len());
        {
            let core = self.shared.core.borrow();
            let mut previous = None::<WalLogId>;
            for entry in &entries {
                match previous {
                    None => core.log.check_next(&entry.log_id).map_err(invalid)?,
                    Some(p) if entry.log_id.index != p.index + 1 => {
                        return Err(invalid(format!(
                            "entry {} does not follow entry {p} in one append",
                            entry.log_id
                        )))
                    }
                    Some(_) => {}
                }
                previous = Some(entry.log_id);
                let mut payload = Vec::new();
                codec::encode_entry(entry, &mut payload);
                if payload.len() > RECORD_PAYLOAD_MAX_BYTES {
                    return Err(invalid(format!(
                        "entry {} is {} bytes; a WAL record holds at most {RECORD_PAYLOAD_MAX_BYTES}",
                        entry.log_id,
                        payload.len()
                    )));
                }
                records.push((entry.log_id, payload));
            }
        }
        {
            let mut core = self.shared.core.borrow_mut();
            for entry in entries {
                core.log.push(entry.log_id, None).map_err(invalid)?;
                core.cache.push(entry.log_id.index, entry);
            }
        }
        self.enqueue(Op::Entries {
            records,
            flushed: callback,
        });
        Ok(())
    }

    /// At once in memory; the record is ordered before every later write,
    /// so it is durable no later than the next append's `IOFlushed`.
    async fn truncate_after(&mut self, last: Option<WalLogId>) -> Result<(), io::Error> {
        self.check_running()?;
        {
            let mut core = self.shared.core.borrow_mut();
            core.log.truncate_after(last.as_ref());
            core.cache.truncate_after(last.map(|l| l.index));
        }
        self.enqueue_record(
            RecordKind::RaftTruncate,
            codec::encode_optional(last.as_ref()),
        );
        Ok(())
    }

    /// At once the index forgets the entries and a purge record tells
    /// recovery to; once that record is written, the flusher deletes the
    /// segments it emptied of live entries (`retire.rs`). A purge lost in a
    /// crash is harmless: openraft purges again from its snapshot.
    async fn purge(&mut self, upto: WalLogId) -> Result<(), io::Error> {
        self.check_running()?;
        let changed = {
            let mut core = self.shared.core.borrow_mut();
            let changed = core.log.purge(&upto);
            if changed {
                core.cache.purge(upto.index);
            }
            changed
        };
        if changed {
            self.enqueue_record(RecordKind::RaftPurge, codec::encode_purge(&upto));
        }
        Ok(())
    }
}
