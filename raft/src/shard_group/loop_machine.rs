//! [`LoopMachine`]: openraft's state machine for a shard whose state the
//! shard loop keeps (`shards::shard::replica`). It holds no shard state:
//! applying an entry delivers its records to the loop, installing a
//! snapshot delivers the decoded state, building one asks the loop to take
//! one in slices between its turns (`shards::shard::member_snapshot`).
//! What it keeps is openraft's bookkeeping — the last applied log id, the
//! membership, the current snapshot (on disk, `snapshot_file.rs`) — and a
//! reader of the member's log, from which the loop rebuilds after its
//! memory ran ahead of the log ([`MemberLink`]).
//!
//! Deliveries are queued, not handed over: openraft answers a proposal
//! only after applying its entry, and the leader's loop is waiting for
//! that answer (`deliver` says why a full queue cannot deadlock). A
//! snapshot is built in a task of openraft's own, so waiting there for the
//! loop's slices stalls nothing.
//!
//! A group snapshot also holds the member's cross-shard batch parts in
//! doubt and the committed batch ids (`snapshot.rs`).

use std::cell::RefCell;
use std::io;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use futures_util::StreamExt;
use openraft::storage::{EntryResponder, RaftLogReader, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta};
use shards::env::Storage;
use shards::shard::group_link::{Committed, Delivery, LoggedTurn, SnapshotPart};

use super::snapshot::{decode_group, encode_group_image, GroupSnapshotBytes};
use super::snapshot_pacing::{LogSinceSnapshot, SnapshotPacing};
use super::state_machine::summarize_turn;
use super::{snapshot_file, GroupLogId, GroupMembership, ShardGroup, TurnApplied};
use crate::log_store::{WalLogReader, WalLogStore};

type GroupSnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<ShardGroup>;
type GroupSnapshotOf = openraft::type_config::alias::SnapshotOf<ShardGroup, GroupSnapshotBytes>;

struct Inner {
    shard: usize,
    allow_instance_recreate: bool,
    deliveries: flume::Sender<Delivery>,
    last_applied: Option<GroupLogId>,
    membership: GroupMembership,
    current_snapshot: Option<CurrentSnapshot>,
    /// The current snapshot's bytes as read at open, until openraft has
    /// installed them (it asks for them twice as it starts): read once.
    loaded_bytes: Option<GroupSnapshotBytes>,
    storage: Arc<dyn Storage>,
    snapshot_dir: PathBuf,
    log: WalLogReader<ShardGroup>,
    /// Bytes of the entries applied since this machine opened, and what
    /// that count was at the state the current snapshot holds: the log
    /// since that snapshot, which paces the next one (`snapshot_pacing`).
    applied_bytes: u64,
    applied_bytes_at_snapshot: u64,
    pacer: Option<Pacer>,
}

/// The current snapshot as the machine keeps it: which one and its size.
/// Its bytes stay in its file (`snapshot_file`) and are read when openraft
/// asks for them (to send to a member that lags behind the log kept) or
/// the loop rebuilds from it. Kept in memory, they were 84 MB of a
/// member's ~480 at a million instances, for what is read seldom
/// (bench-results/2026-12-07/cluster-snapshot-memory/notes.md).
#[derive(Debug, Clone)]
struct CurrentSnapshot {
    meta: GroupSnapshotMeta,
    bytes: u64,
}

impl CurrentSnapshot {
    fn of(meta: GroupSnapshotMeta, snapshot: &GroupSnapshotBytes) -> CurrentSnapshot {
        CurrentSnapshot {
            meta,
            bytes: snapshot.0.len() as u64,
        }
    }
}

/// Who is told when a snapshot is due ([`LoopMachine::pace`]).
struct Pacer {
    pacing: SnapshotPacing,
    wake: flume::Sender<()>,
}

impl Inner {
    fn log_since_snapshot(&self) -> LogSinceSnapshot {
        let covered = self.current_snapshot.as_ref();
        let covered_index = covered.and_then(|s| s.meta.last_log_id).map(|l| l.index);
        let applied_index = self.last_applied.map(|l| l.index);
        LogSinceSnapshot {
            entries: match (applied_index, covered_index) {
                (Some(applied), Some(covered)) => applied.saturating_sub(covered),
                (Some(applied), None) => applied + 1,
                (None, _) => 0,
            },
            bytes: self.applied_bytes - self.applied_bytes_at_snapshot,
            snapshot_bytes: covered.map_or(0, |s| s.bytes),
        }
    }

    /// Wake the pacer if a snapshot is due (or, `always`, in any case). A
    /// wake already pending stands for this one.
    fn wake_pacer(&self, always: bool) {
        if let Some(p) = &self.pacer {
            if always || p.pacing.due(&self.log_since_snapshot()) {
                let _ = p.wake.try_send(());
            }
        }
    }
}

/// The state machine of a member whose shard loop keeps the state. A clone
/// is a handle to the same machine.
#[derive(Clone)]
pub struct LoopMachine(Rc<RefCell<Inner>>);

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn loop_gone(shard: usize) -> io::Error {
    io::Error::other(format!("shard {shard}: the shard loop stopped"))
}

impl LoopMachine {
    /// The machine of shard `shard`'s member whose log is `log` and whose
    /// snapshots live in `snapshot_dir` (the newest becomes the current
    /// snapshot, which openraft installs at start). Deliveries go to
    /// `deliveries`, read by the shard loop.
    pub fn open(
        shard: usize,
        allow_instance_recreate: bool,
        storage: Arc<dyn Storage>,
        snapshot_dir: PathBuf,
        log: &WalLogStore<ShardGroup>,
        deliveries: flume::Sender<Delivery>,
    ) -> Result<LoopMachine, String> {
        let loaded = snapshot_file::load_newest(&*storage, &snapshot_dir)?;
        Ok(LoopMachine(Rc::new(RefCell::new(Inner {
            shard,
            allow_instance_recreate,
            deliveries,
            last_applied: None,
            membership: GroupMembership::default(),
            // Read whole (a damaged one refuses the start); its bytes are
            // kept only until openraft installed them.
            current_snapshot: loaded
                .as_ref()
                .map(|(meta, snapshot)| CurrentSnapshot::of(meta.clone(), snapshot)),
            loaded_bytes: loaded.map(|(_, snapshot)| snapshot),
            storage,
            snapshot_dir,
            log: log.reader(),
            // Every entry applied from now on lies after the loaded
            // snapshot.
            applied_bytes: 0,
            applied_bytes_at_snapshot: 0,
            pacer: None,
        }))))
    }

    /// The last log index the current snapshot covers.
    pub fn snapshot_index(&self) -> Option<u64> {
        let a = self.0.borrow();
        a.current_snapshot
            .as_ref()?
            .meta
            .last_log_id
            .map(|l| l.index)
    }

    /// The log this member applied since its current snapshot.
    pub fn log_since_snapshot(&self) -> LogSinceSnapshot {
        self.0.borrow().log_since_snapshot()
    }

    /// Wake the returned receiver whenever `pacing` says a snapshot is due
    /// (checked as each entry is applied) and whenever a snapshot was
    /// built or installed (`snapshot_pacing::pace_snapshots`).
    pub fn pace(&self, pacing: SnapshotPacing) -> flume::Receiver<()> {
        let (wake, woken) = flume::bounded(1);
        self.0.borrow_mut().pacer = Some(Pacer { pacing, wake });
        woken
    }

    /// Decode `bytes`, the snapshot at log index `index`, on a thread of
    /// its own: an image is ~200 MB at a million instances
    /// (bench-results/2026-12-05/peer-silence/notes.md), and the executor
    /// a decode would stop runs this member's Raft core and peer links.
    async fn decode(&self, bytes: GroupSnapshotBytes, index: u64) -> io::Result<SnapshotPart> {
        let (shard, allow_recreate) = {
            let a = self.0.borrow();
            (a.shard, a.allow_instance_recreate)
        };
        on_snapshot_thread(shard, move || {
            decode_part(&bytes.0, index, shard, allow_recreate)
        })
        .await
    }

    /// The current snapshot, read back from its file on a thread of its own.
    async fn read_current(&self) -> io::Result<Option<GroupSnapshotOf>> {
        let (current, storage, dir, shard) = {
            let a = self.0.borrow();
            let Some(current) = a.current_snapshot.clone() else {
                return Ok(None);
            };
            if let Some(snapshot) = a.loaded_bytes.clone() {
                let meta = current.meta;
                return Ok(Some(Snapshot { meta, snapshot }));
            }
            (current, a.storage.clone(), a.snapshot_dir.clone(), a.shard)
        };
        let index = current.meta.last_log_id.map_or(0, |l| l.index);
        let (meta, snapshot) = on_snapshot_thread(shard, move || {
            snapshot_file::load(&*storage, &dir, index).map_err(corrupt)
        })
        .await?;
        if meta != current.meta {
            return Err(corrupt(format!(
                "shard {shard}: the snapshot file for index {index} holds another snapshot"
            )));
        }
        Ok(Some(Snapshot { meta, snapshot }))
    }

    /// Where this member's log behind the snapshot ending at `last`
    /// starts, when it holds the group's entries there
    /// (`SnapshotPart::log_kept_from`).
    fn kept_behind(&self, last: Option<GroupLogId>) -> Option<u64> {
        self.0.borrow().log.kept_up_to(&last?)
    }

    /// The member's log, to read its counters and files.
    pub fn log(&self) -> WalLogReader<ShardGroup> {
        self.0.borrow().log.clone()
    }

    /// The committed state the loop rebuilds from: the current snapshot
    /// and every applied entry after it, read back from the log.
    pub async fn committed(&self) -> Result<Committed, String> {
        let (last_applied, mut log) = {
            let a = self.0.borrow();
            (a.last_applied.map_or(0, |l| l.index), a.log.clone())
        };
        let snapshot = match self.read_current().await.map_err(|e| e.to_string())? {
            Some(s) => {
                let index = s.meta.last_log_id.map_or(0, |l| l.index);
                let mut part = self
                    .decode(s.snapshot, index)
                    .await
                    .map_err(|e| e.to_string())?;
                part.log_kept_from = self.kept_behind(s.meta.last_log_id);
                Some(part)
            }
            None => None,
        };
        let from = snapshot.as_ref().map_or(0, |s| s.index + 1);
        let mut entries = Vec::new();
        if from <= last_applied {
            let read = log
                .try_get_log_entries(from..=last_applied)
                .await
                .map_err(|e| format!("reading the committed log: {e}"))?;
            for entry in read {
                if let EntryPayload::Normal(turn) = entry.payload {
                    entries.push((entry.log_id.index, turn.0));
                }
            }
        }
        Ok(Committed { snapshot, entries })
    }

    /// The entries with records among log indexes `from..=to`, read back
    /// from the log; an error when `from` was purged already.
    pub async fn entries(&self, from: u64, to: u64) -> Result<Vec<LoggedTurn>, String> {
        let (shard, mut log) = {
            let a = self.0.borrow();
            (a.shard, a.log.clone())
        };
        if to < from {
            return Ok(Vec::new());
        }
        let read = log
            .try_get_log_entries(from..=to)
            .await
            .map_err(|e| format!("shard {shard}: reading the committed log: {e}"))?;
        // The store starts a read at its first entry: a later first index
        // means `from` is gone.
        match read.first().map(|e| e.log_id.index) {
            Some(first) if first == from => {}
            first => {
                return Err(format!(
                    "shard {shard}: log index {from} is no longer in the log (it starts at {})",
                    first.map_or_else(|| "a later index".to_string(), |f| f.to_string())
                ))
            }
        }
        Ok(read
            .into_iter()
            .filter_map(|entry| match entry.payload {
                EntryPayload::Normal(turn) => Some((entry.log_id.index, turn.0)),
                _ => None,
            })
            .collect())
    }

    /// Queue `d` for the loop; waits while the queue is full (a loop that
    /// fell behind). Never while the loop waits for this machine: a leader's
    /// loop takes every delivery before it proposes, and one proposal is
    /// answered after a handful of entries.
    async fn deliver(&self, d: Delivery) -> Result<(), io::Error> {
        let (deliveries, shard) = {
            let a = self.0.borrow();
            (a.deliveries.clone(), a.shard)
        };
        deliveries.send_async(d).await.map_err(|_| loop_gone(shard))
    }
}

impl RaftSnapshotBuilder<ShardGroup> for LoopMachine {
    type SnapshotData = GroupSnapshotBytes;

    async fn build_snapshot(&mut self) -> Result<GroupSnapshotOf, io::Error> {
        // The loop takes it in slices between its turns
        // (`shards::shard::member_snapshot`); sealing it and writing the
        // file run on a thread of their own. Either, done in the loop in
        // one go, stopped it for seconds once a shard held a million
        // instances — on every node at once.
        let started = std::time::Instant::now();
        let shard = self.0.borrow().shard;
        let (meta, applied_bytes, taken) = loop {
            let (answer, answered) = flume::bounded(1);
            // The look runs after every entry delivered so far: the state
            // it sees is the one `last_applied` names now.
            let (meta, applied_bytes) = {
                let a = self.0.borrow();
                let meta = SnapshotMeta {
                    last_log_id: a.last_applied,
                    last_membership: a.membership.clone(),
                };
                (meta, a.applied_bytes)
            };
            self.deliver(Delivery::Snapshot(answer)).await?;
            match answered.recv_async().await {
                Ok(taken) => break (meta, applied_bytes, taken),
                // The loop abandons a snapshot whose state was replaced
                // under it (rebuilt after a lost lead, FLUSH_ALL). Failing
                // the build is a storage error to openraft, which stops the
                // member's Raft for good: a leader under load did so, and
                // with one member down its group had no leader again. The
                // state as it is now is asked for instead.
                Err(_) => tracing::info!(
                    "shard {shard}: a group snapshot was abandoned (its state was replaced); \
                     taking it again"
                ),
            }
        };
        let imaged = started.elapsed();
        let (storage, dir) = {
            let a = self.0.borrow();
            (a.storage.clone(), a.snapshot_dir.clone())
        };
        let file_meta = meta.clone();
        let bytes = on_snapshot_thread(shard, move || {
            let bytes = GroupSnapshotBytes::new(encode_group_image(taken));
            // The image, as large as the shard's state, was just freed.
            shards::env::memory::release_freed_memory();
            // On disk before openraft may purge the log it covers.
            snapshot_file::write(&*storage, &dir, &file_meta, &bytes).map(|()| bytes)
        })
        .await?;
        tracing::info!(
            "shard {shard}: group snapshot at index {} taken: {} bytes, image in {} ms, \
             sealed and written in {} ms",
            meta.last_log_id.map_or(0, |l| l.index),
            bytes.0.len(),
            imaged.as_millis(),
            (started.elapsed() - imaged).as_millis()
        );
        let snapshot = Snapshot {
            meta: meta.clone(),
            snapshot: bytes,
        };
        let mut a = self.0.borrow_mut();
        a.current_snapshot = Some(CurrentSnapshot::of(meta, &snapshot.snapshot));
        a.loaded_bytes = None;
        a.applied_bytes_at_snapshot = applied_bytes;
        // Woken after this returns: openraft drops the snapshot's bytes
        // (it keeps the meta) before it yields.
        a.wake_pacer(true);
        Ok(snapshot)
    }
}

impl RaftStateMachine<ShardGroup> for LoopMachine {
    type SnapshotData = GroupSnapshotBytes;
    type SnapshotBuilder = LoopMachine;

    async fn applied_state(&mut self) -> Result<(Option<GroupLogId>, GroupMembership), io::Error> {
        let a = self.0.borrow();
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<ShardGroup>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let log_id = entry.log_id;
            let answer = match entry.payload {
                EntryPayload::Blank => TurnApplied::default(),
                EntryPayload::Normal(turn) => {
                    let shard = {
                        let mut a = self.0.borrow_mut();
                        a.applied_bytes += turn.0.len() as u64;
                        a.shard
                    };
                    let answer = summarize_turn(shard, &turn)?;
                    self.deliver(Delivery::Apply {
                        index: log_id.index,
                        records: turn.0,
                    })
                    .await?;
                    answer
                }
                EntryPayload::Membership(m) => {
                    self.0.borrow_mut().membership = GroupMembership::new(Some(log_id), m);
                    TurnApplied::default()
                }
            };
            let mut a = self.0.borrow_mut();
            a.last_applied = Some(log_id);
            a.wake_pacer(false);
            drop(a);
            if let Some(responder) = responder {
                responder.send(answer);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &GroupSnapshotMeta,
        snapshot: GroupSnapshotBytes,
    ) -> Result<(), io::Error> {
        let index = meta.last_log_id.map_or(0, |l| l.index);
        let (storage, dir, shard, allow_recreate) = {
            let a = self.0.borrow();
            let dir = a.snapshot_dir.clone();
            (a.storage.clone(), dir, a.shard, a.allow_instance_recreate)
        };
        let (file_meta, bytes) = (meta.clone(), snapshot.clone());
        // Decoded (refused if damaged) before it replaces the newest file.
        let part = on_snapshot_thread(shard, move || {
            let part = decode_part(&bytes.0, index, shard, allow_recreate)?;
            snapshot_file::write(&*storage, &dir, &file_meta, &bytes)?;
            Ok(part)
        })
        .await?;
        let part = SnapshotPart {
            log_kept_from: self.kept_behind(meta.last_log_id),
            ..part
        };
        self.deliver(Delivery::Install(Box::new(part))).await?;
        {
            let mut a = self.0.borrow_mut();
            a.last_applied = meta.last_log_id;
            a.membership = meta.last_membership.clone();
            a.applied_bytes_at_snapshot = a.applied_bytes;
            a.current_snapshot = Some(CurrentSnapshot::of(meta.clone(), &snapshot));
            a.loaded_bytes = None;
            a.wake_pacer(true);
        }
        // Its bytes, as large as the state, are on disk now.
        drop(snapshot);
        shards::env::memory::release_freed_memory();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<GroupSnapshotOf>, io::Error> {
        self.read_current().await
    }
}

/// A decoded group snapshot of shard `shard` at log index `index`.
fn decode_part(
    bytes: &[u8],
    index: u64,
    shard: usize,
    allow_recreate: bool,
) -> io::Result<SnapshotPart> {
    let decoded =
        decode_group(bytes, allow_recreate).map_err(|e| corrupt(format!("shard {shard}: {e}")))?;
    if decoded.state.shard_id != shard {
        return Err(corrupt(format!(
            "shard {shard}: offered the snapshot of shard {}",
            decoded.state.shard_id
        )));
    }
    Ok(SnapshotPart {
        index,
        state: decoded.state,
        position: decoded.position,
        txns: decoded.txns,
        log_kept_from: None,
    })
}

/// Run `job` (encoding or writing a snapshot of maybe hundreds of MB) on a
/// thread of its own and wait for it without blocking the executor.
async fn on_snapshot_thread<T: Send + 'static>(
    shard: usize,
    job: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let (done, finished) = flume::bounded(1);
    std::thread::Builder::new()
        .name(format!("snapshot-{shard}"))
        .spawn(move || {
            let _ = done.send(job());
        })?;
    finished
        .recv_async()
        .await
        .map_err(|_| io::Error::other(format!("shard {shard}: the snapshot thread died")))?
}
