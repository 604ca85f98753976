//! [`ShardMachine`]: openraft's state machine over a shard's state.
//!
//! Applying a committed entry replays its records exactly as recovery
//! replays a standalone shard's log (`ShardState::replay_any`): records
//! are results, checked once by the leader that made them. Snapshots are
//! the shard's own snapshot format plus the batches in doubt
//! (`snapshot.rs`).
//!
//! Snapshots are kept on disk beside the member's log (`snapshot_file.rs`)
//! before openraft may purge the log they cover. Written on the executor
//! with blocking calls: fine for the sizes of the tests, to be moved off
//! the executor (as the standalone shard's snapshots are) before large
//! shards use it.
//!
//! This machine keeps the shard state itself (tests of a group alone); a
//! member whose shard loop keeps the state uses `LoopMachine`.

use std::cell::RefCell;
use std::io;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use futures_util::StreamExt;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta};
use shards::env::Storage;
use shards::shard::replay::{ReplayCounts, TxnLog};
use shards::shard::state::ShardState;
use shards::snapshot::LogPosition;
use shards::wal::offset::tick_of_offset;
use shards::wal::record::for_each_record;
use shards::wal::sequence::entries_in;

use super::snapshot::{decode_group, encode_group, GroupSnapshotBytes};
use super::snapshot_file;
use super::{GroupLogId, GroupMembership, ShardGroup, TurnApplied, TurnRecords};

type GroupSnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<ShardGroup>;
type GroupSnapshotOf = openraft::type_config::alias::SnapshotOf<ShardGroup, GroupSnapshotBytes>;

struct Applied {
    state: ShardState,
    txns: TxnLog,
    counts: ReplayCounts,
    /// The shard log's position after the last applied record.
    position: LogPosition,
    last_applied: Option<GroupLogId>,
    membership: GroupMembership,
    current_snapshot: Option<GroupSnapshotOf>,
    /// Where snapshots are kept on disk (`snapshot_file.rs`); `None` keeps
    /// them in memory only (tests of the state machine alone).
    store: Option<(Arc<dyn Storage>, PathBuf)>,
}

/// A shard's state as a Raft state machine. A clone is a handle to the same
/// state (openraft's snapshot builder is one); nothing here is `Send`: a
/// group runs on its shard's executor.
#[derive(Clone)]
pub struct ShardMachine(Rc<RefCell<Applied>>);

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl ShardMachine {
    /// An empty shard `shard_id`.
    pub fn new(shard_id: usize, allow_instance_recreate: bool) -> ShardMachine {
        ShardMachine(Rc::new(RefCell::new(Applied {
            state: ShardState::new(shard_id, allow_instance_recreate),
            txns: TxnLog::default(),
            counts: ReplayCounts::default(),
            position: LogPosition {
                covered_offset: 0,
                last_tick: 0,
                entries: 0,
            },
            last_applied: None,
            membership: GroupMembership::default(),
            current_snapshot: None,
            store: None,
        })))
    }

    /// A member's state machine whose snapshots live in `dir`: the newest
    /// one there becomes the current snapshot, which openraft installs at
    /// start when it is ahead of what was applied (then replays the log
    /// after it). A damaged newest snapshot is an error.
    pub fn open(
        shard_id: usize,
        allow_instance_recreate: bool,
        storage: Arc<dyn Storage>,
        dir: PathBuf,
    ) -> Result<ShardMachine, String> {
        let loaded = snapshot_file::load_newest(&*storage, &dir)?;
        let machine = ShardMachine::new(shard_id, allow_instance_recreate);
        {
            let mut a = machine.0.borrow_mut();
            a.current_snapshot = loaded.map(|(meta, snapshot)| Snapshot { meta, snapshot });
            a.store = Some((storage, dir));
        }
        Ok(machine)
    }

    /// Keep a snapshot on disk, if this machine keeps them there.
    fn persist(
        a: &Applied,
        meta: &GroupSnapshotMeta,
        bytes: &GroupSnapshotBytes,
    ) -> io::Result<()> {
        match &a.store {
            Some((storage, dir)) => snapshot_file::write(&**storage, dir, meta, bytes),
            None => Ok(()),
        }
    }

    /// Look at the applied state.
    pub fn with_state<T>(&self, f: impl FnOnce(&ShardState) -> T) -> T {
        f(&self.0.borrow().state)
    }

    /// Where the applied part of the shard's log ends.
    pub fn position(&self) -> LogPosition {
        self.0.borrow().position
    }

    /// Batch parts prepared and not decided, as applied.
    pub fn in_doubt(&self) -> Vec<u64> {
        let mut txids: Vec<u64> = self.0.borrow().txns.in_doubt.keys().copied().collect();
        txids.sort_unstable();
        txids
    }

    /// Replay one entry's records into the state.
    fn apply_turn(a: &mut Applied, turn: &TurnRecords) -> Result<TurnApplied, io::Error> {
        let mut done = TurnApplied::default();
        let shard = a.state.shard_id;
        for_each_record(&turn.0, |header, payload| {
            a.state
                .replay_any(header, payload, &mut a.counts, &mut a.txns)
                .map_err(|e| {
                    format!("record at offset {} cannot be applied: {e}", header.offset)
                })?;
            a.position.entries += entries_in(header.kind, shard);
            a.position.covered_offset = a.position.covered_offset.max(header.offset);
            a.position.last_tick = a.position.last_tick.max(tick_of_offset(header.offset));
            done.records += 1;
            done.last_offset = Some(header.offset);
            Ok(())
        })
        .map_err(|e| corrupt(format!("shard {shard}: a committed entry: {e}")))?;
        // Replay leaves watch events of standalone recovery behind; nobody
        // publishes them here (a member whose shard loop keeps the state
        // does: `LoopMachine`).
        a.state.events.clear();
        Ok(done)
    }
}

/// What applying `turn` does, told by its records' headers (each record
/// checked).
pub(super) fn summarize_turn(shard: usize, turn: &TurnRecords) -> Result<TurnApplied, io::Error> {
    let mut done = TurnApplied::default();
    for_each_record(&turn.0, |header, _| {
        done.records += 1;
        done.last_offset = Some(header.offset);
        Ok(())
    })
    .map_err(|e| corrupt(format!("shard {shard}: a committed entry: {e}")))?;
    Ok(done)
}

impl RaftSnapshotBuilder<ShardGroup> for ShardMachine {
    type SnapshotData = GroupSnapshotBytes;

    async fn build_snapshot(&mut self) -> Result<GroupSnapshotOf, io::Error> {
        let mut a = self.0.borrow_mut();
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                last_log_id: a.last_applied,
                last_membership: a.membership.clone(),
            },
            snapshot: GroupSnapshotBytes::new(encode_group(&a.state, a.position, &a.txns)),
        };
        // On disk before openraft may purge the log it covers.
        Self::persist(&a, &snapshot.meta, &snapshot.snapshot)?;
        a.current_snapshot = Some(snapshot.clone());
        Ok(snapshot)
    }
}

impl RaftStateMachine<ShardGroup> for ShardMachine {
    type SnapshotData = GroupSnapshotBytes;
    type SnapshotBuilder = ShardMachine;

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
            let answer = {
                let mut a = self.0.borrow_mut();
                let answer = match &entry.payload {
                    EntryPayload::Blank => TurnApplied::default(),
                    EntryPayload::Normal(turn) => Self::apply_turn(&mut a, turn)?,
                    EntryPayload::Membership(m) => {
                        a.membership = GroupMembership::new(Some(entry.log_id), m.clone());
                        TurnApplied::default()
                    }
                };
                a.last_applied = Some(entry.log_id);
                answer
            };
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
        let mut a = self.0.borrow_mut();
        let decoded = decode_group(&snapshot.0, a.state.allow_instance_recreate)
            .map_err(|e| corrupt(format!("shard {}: {e}", a.state.shard_id)))?;
        if decoded.state.shard_id != a.state.shard_id {
            return Err(corrupt(format!(
                "shard {}: offered the snapshot of shard {}",
                a.state.shard_id, decoded.state.shard_id
            )));
        }
        Self::persist(&a, meta, &snapshot)?;
        a.state = decoded.state;
        a.position = decoded.position;
        a.txns = decoded.txns;
        a.last_applied = meta.last_log_id;
        a.membership = meta.last_membership.clone();
        a.current_snapshot = Some(Snapshot {
            meta: meta.clone(),
            snapshot,
        });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<GroupSnapshotOf>, io::Error> {
        Ok(self.0.borrow().current_snapshot.clone())
    }
}
