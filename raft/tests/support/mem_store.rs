//! A minimal in-memory Raft log and key-value state machine, for tests
//! only: just enough to run openraft's log-store suite and a cluster in one
//! executor. The real log is the shard WAL (a later step of issue 14).
//!
//! Both are `Rc<RefCell<..>>` handles: under openraft's `single-threaded`
//! feature nothing needs to be `Send`, and a clone given to openraft (the
//! log reader, the snapshot builder) sees the same data as the test's own
//! clone. No borrow is held across an `.await`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::ops::RangeBounds;
use std::rc::Rc;

use corestate_raft::log_store::{AppDataCodec, CodecError};
use corestate_raft::GlommioRuntime;
use futures_util::StreamExt;
use openraft::storage::{EntryResponder, IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    EntryPayload, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StoredMembership,
};

/// A client command: set `key` to `value`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Put {
    pub key: String,
    pub value: String,
}

impl fmt::Display for Put {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "put {}={}", self.key, self.value)
    }
}

/// In the WAL log store: key length (u32), key, value (UTF-8 both).
impl AppDataCodec for Put {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.key.len() as u32).to_le_bytes());
        out.extend_from_slice(self.key.as_bytes());
        out.extend_from_slice(self.value.as_bytes());
    }

    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let bad = |what: &str| CodecError(format!("put: {what}"));
        let len_bytes = bytes.get(..4).ok_or_else(|| bad("no key length"))?;
        let key_len = u32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        let rest = &bytes[4..];
        let key = rest
            .get(..key_len as usize)
            .ok_or_else(|| bad("key longer than the record"))?;
        let value = &rest[key.len()..];
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| bad("not UTF-8"));
        Ok(Put {
            key: text(key)?,
            value: text(value)?,
        })
    }
}

openraft::declare_raft_types!(
    /// Test types: `Put` commands, answered with the key's previous value,
    /// on the glommio runtime.
    pub TestConfig:
        D = Put,
        R = Option<String>,
        AsyncRuntime = GlommioRuntime,
);

type Entry = <TestConfig as openraft::RaftTypeConfig>::Entry;
type TestLogId = openraft::type_config::alias::LogIdOf<TestConfig>;

/// The id of entry `index` of a log written in term 1 by node 1 (for the
/// tests that build a log by hand).
#[allow(dead_code)]
pub fn term_one_log_id(index: u64) -> TestLogId {
    openraft::LogId::new(
        corestate_raft::log_store::WalLeaderId {
            term: 1,
            node_id: 1,
        },
        index,
    )
}
type TestVote = openraft::type_config::alias::VoteOf<TestConfig>;
type TestMembership = openraft::type_config::alias::StoredMembershipOf<TestConfig>;
type TestSnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TestConfig>;
type TestSnapshot = openraft::type_config::alias::SnapshotOf<TestConfig, KvSnapshot>;

/// What a snapshot of [`MemStateMachine`] carries: the whole key space.
pub type KvSnapshot = BTreeMap<String, String>;

#[derive(Default)]
struct LogData {
    vote: Option<TestVote>,
    committed: Option<TestLogId>,
    last_purged: Option<TestLogId>,
    entries: BTreeMap<u64, Entry>,
}

/// The Raft log and the vote, in memory.
#[derive(Clone, Default)]
pub struct MemLogStore(Rc<RefCell<LogData>>);

impl RaftLogReader<TestConfig> for MemLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let data = self.0.borrow();
        Ok(data.entries.range(range).map(|(_, e)| e.clone()).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<TestVote>, io::Error> {
        Ok(self.0.borrow().vote)
    }
}

impl RaftLogStorage<TestConfig> for MemLogStore {
    type LogReader = MemLogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TestConfig>, io::Error> {
        let data = self.0.borrow();
        let last_in_log = data.entries.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: data.last_purged,
            last_log_id: last_in_log.or(data.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &TestVote) -> Result<(), io::Error> {
        self.0.borrow_mut().vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<TestLogId>) -> Result<(), io::Error> {
        self.0.borrow_mut().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<TestLogId>, io::Error> {
        Ok(self.0.borrow().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TestConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut data = self.0.borrow_mut();
            for entry in entries {
                data.entries.insert(entry.log_id.index, entry);
            }
        }
        // Memory is "durable" at once; a disk log calls this after its sync.
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<TestLogId>) -> Result<(), io::Error> {
        let mut data = self.0.borrow_mut();
        let first_removed = last_log_id.map_or(0, |id| id.index + 1);
        data.entries.split_off(&first_removed);
        Ok(())
    }

    async fn purge(&mut self, log_id: TestLogId) -> Result<(), io::Error> {
        let mut data = self.0.borrow_mut();
        debug_assert!(data.last_purged.is_none_or(|p| p <= log_id));
        data.entries = data.entries.split_off(&(log_id.index + 1));
        data.last_purged = Some(log_id);
        Ok(())
    }
}

#[derive(Default)]
struct SmData {
    last_applied: Option<TestLogId>,
    membership: TestMembership,
    kv: KvSnapshot,
    current_snapshot: Option<TestSnapshot>,
}

/// A key-value state machine, in memory.
#[derive(Clone, Default)]
pub struct MemStateMachine(Rc<RefCell<SmData>>);

// Each test binary includes this module; not every one reads the state.
#[allow(dead_code)]
impl MemStateMachine {
    /// The value of `key`, as applied so far.
    pub fn get(&self, key: &str) -> Option<String> {
        self.0.borrow().kv.get(key).cloned()
    }

    /// Every key and value, as applied so far.
    pub fn contents(&self) -> KvSnapshot {
        self.0.borrow().kv.clone()
    }
}

impl RaftSnapshotBuilder<TestConfig> for MemStateMachine {
    type SnapshotData = KvSnapshot;

    async fn build_snapshot(&mut self) -> Result<TestSnapshot, io::Error> {
        let mut data = self.0.borrow_mut();
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                last_log_id: data.last_applied,
                last_membership: data.membership.clone(),
            },
            snapshot: data.kv.clone(),
        };
        data.current_snapshot = Some(snapshot.clone());
        Ok(snapshot)
    }
}

impl RaftStateMachine<TestConfig> for MemStateMachine {
    type SnapshotData = KvSnapshot;
    type SnapshotBuilder = MemStateMachine;

    async fn applied_state(&mut self) -> Result<(Option<TestLogId>, TestMembership), io::Error> {
        let data = self.0.borrow();
        Ok((data.last_applied, data.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<TestConfig>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let answer = {
                let mut data = self.0.borrow_mut();
                data.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => None,
                    EntryPayload::Normal(put) => data.kv.insert(put.key, put.value),
                    EntryPayload::Membership(membership) => {
                        data.membership = StoredMembership::new(Some(entry.log_id), membership);
                        None
                    }
                }
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
        meta: &TestSnapshotMeta,
        snapshot: KvSnapshot,
    ) -> Result<(), io::Error> {
        let mut data = self.0.borrow_mut();
        data.last_applied = meta.last_log_id;
        data.membership = meta.last_membership.clone();
        data.kv = snapshot.clone();
        data.current_snapshot = Some(Snapshot {
            meta: meta.clone(),
            snapshot,
        });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<TestSnapshot>, io::Error> {
        Ok(self.0.borrow().current_snapshot.clone())
    }
}
