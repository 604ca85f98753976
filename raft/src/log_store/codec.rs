//! The payloads of the Raft records in a shard WAL (kinds 10..=14 of
//! `shards::wal::record::RecordKind`), and the codec the application data
//! implements. The record header (magic, checksum, length, kind) is the
//! WAL's own; this file owns only what comes after it.
//!
//! ```text
//! log id     term u64 | leader node id u64 | index u64          (24 bytes)
//! RaftEntry  log id | payload kind u8 | payload bytes
//!              kind 0 blank: nothing
//!              kind 1 normal: the application data (`AppDataCodec`)
//!              kind 2 membership: config count u32, then per config
//!                     voter count u32 + voter ids u64; node count u32,
//!                     then per node id u64 + address length u32 + UTF-8
//! RaftVote   term u64 | node id u64 | committed u8 (0 or 1)
//! RaftTruncate  present u8 | log id when present (keep up to it; absent:
//!               drop every entry)
//! RaftPurge  log id (drop every entry up to it)
//! RaftCommitted present u8 | log id when present
//! ```
//! Integers are little-endian, like the WAL header. Decoding checks every
//! length against the bytes that are there: bad data is an error, never a
//! panic; the caller adds the file and position.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use openraft::impls::leader_id_adv::LeaderId;
use openraft::impls::{BasicNode, Entry, EntryPayload, Vote};
use openraft::{LogId, Membership, RaftTypeConfig};

/// A leader id of the store's logs: term and node id (openraft's default,
/// "advanced" leader id, which is also the committed leader id in a log id).
pub type WalLeaderId = LeaderId<u64, u64>;
/// A log id: leader id and index.
pub type WalLogId = LogId<WalLeaderId>;
/// A vote: leader id and whether a quorum granted it.
pub type WalVote = Vote<WalLeaderId>;
/// A log entry carrying application data `D`.
pub type WalEntry<D> = Entry<WalLeaderId, EntryPayload<D, u64, BasicNode>>;

/// The Raft type configurations the WAL log store serves: openraft's
/// default log id, vote and entry types with u64 terms and node ids and
/// `BasicNode` addresses, and application data with a byte codec.
pub trait WalTypes:
    RaftTypeConfig<
    D: AppDataCodec + Clone,
    NodeId = u64,
    Term = u64,
    Node = BasicNode,
    LeaderId = WalLeaderId,
    Vote = WalVote,
    Payload = EntryPayload<<Self as RaftTypeConfig>::D, u64, BasicNode>,
    Entry = WalEntry<<Self as RaftTypeConfig>::D>,
>
{
}

impl<C> WalTypes for C where
    C: RaftTypeConfig<
        D: AppDataCodec + Clone,
        NodeId = u64,
        Term = u64,
        Node = BasicNode,
        LeaderId = WalLeaderId,
        Vote = WalVote,
        Payload = EntryPayload<<C as RaftTypeConfig>::D, u64, BasicNode>,
        Entry = WalEntry<<C as RaftTypeConfig>::D>,
    >
{
}

/// How the application data of a normal entry becomes bytes in the WAL
/// and back.
pub trait AppDataCodec: Sized {
    /// Append the encoded value to `out`.
    fn encode(&self, out: &mut Vec<u8>);
    /// The value `bytes` (exactly what `encode` wrote) hold.
    fn decode(bytes: &[u8]) -> Result<Self, CodecError>;
}

/// Bytes that do not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError(pub String);

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CodecError {}

/// Bytes of an encoded log id.
pub const LOG_ID_BYTES: usize = 24;
/// Bytes of a normal entry before its application data: log id and kind.
pub const NORMAL_ENTRY_HEAD_BYTES: usize = LOG_ID_BYTES + 1;
/// Most configs in one membership (a joint config has two).
pub const MEMBERSHIP_CONFIGS_MAX: u32 = 16;
/// Most voters in one config, and most nodes in one membership.
pub const MEMBERSHIP_NODES_MAX: u32 = 4096;
/// Longest node address, in bytes.
pub const NODE_ADDRESS_MAX_BYTES: u32 = 4096;

const PAYLOAD_BLANK: u8 = 0;
const PAYLOAD_NORMAL: u8 = 1;
const PAYLOAD_MEMBERSHIP: u8 = 2;

/// Reads a payload front to back, checking each length first.
pub struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }

    pub fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], CodecError> {
        let left = self.bytes.len() - self.pos;
        if n > left {
            return Err(CodecError(format!(
                "{what} needs {n} bytes at payload byte {}, {left} left",
                self.pos
            )));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub fn u8(&mut self, what: &str) -> Result<u8, CodecError> {
        Ok(self.take(1, what)?[0])
    }

    pub fn u32(&mut self, what: &str) -> Result<u32, CodecError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4, what)?);
        Ok(u32::from_le_bytes(b))
    }

    pub fn u64(&mut self, what: &str) -> Result<u64, CodecError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(b))
    }

    /// How many bytes are not read yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.bytes[self.pos..];
        self.pos = self.bytes.len();
        out
    }

    /// The payload must end here.
    pub fn finish(&self, what: &str) -> Result<(), CodecError> {
        match self.bytes.len() - self.pos {
            0 => Ok(()),
            n => Err(CodecError(format!("{n} stray bytes after the {what}"))),
        }
    }
}

pub fn encode_log_id(id: &WalLogId, out: &mut Vec<u8>) {
    out.extend_from_slice(&id.leader_id.term.to_le_bytes());
    out.extend_from_slice(&id.leader_id.node_id.to_le_bytes());
    out.extend_from_slice(&id.index.to_le_bytes());
}

pub fn decode_log_id(c: &mut Cursor<'_>) -> Result<WalLogId, CodecError> {
    let term = c.u64("log id term")?;
    let node_id = c.u64("log id leader node")?;
    let index = c.u64("log id index")?;
    Ok(LogId::new(WalLeaderId { term, node_id }, index))
}

pub fn encode_optional_log_id(id: Option<&WalLogId>, out: &mut Vec<u8>) {
    match id {
        None => out.push(0),
        Some(id) => {
            out.push(1);
            encode_log_id(id, out);
        }
    }
}

pub fn decode_optional_log_id(c: &mut Cursor<'_>) -> Result<Option<WalLogId>, CodecError> {
    match c.u8("log id presence")? {
        0 => Ok(None),
        1 => Ok(Some(decode_log_id(c)?)),
        b => Err(CodecError(format!("log id presence byte {b} (0 or 1)"))),
    }
}

/// A `RaftEntry` record's payload.
pub fn encode_entry<D>(
    entry: &Entry<WalLeaderId, EntryPayload<D, u64, BasicNode>>,
    out: &mut Vec<u8>,
) where
    D: AppDataCodec + openraft::AppData,
{
    encode_log_id(&entry.log_id, out);
    match &entry.payload {
        EntryPayload::Blank => out.push(PAYLOAD_BLANK),
        EntryPayload::Normal(data) => {
            out.push(PAYLOAD_NORMAL);
            data.encode(out);
        }
        EntryPayload::Membership(m) => {
            out.push(PAYLOAD_MEMBERSHIP);
            encode_membership(m, out);
        }
    }
}

/// Only the log id of a `RaftEntry` payload (recovery needs no more).
pub fn decode_entry_log_id(payload: &[u8]) -> Result<WalLogId, CodecError> {
    decode_log_id(&mut Cursor::new(payload))
}

pub fn decode_entry<D>(
    payload: &[u8],
) -> Result<Entry<WalLeaderId, EntryPayload<D, u64, BasicNode>>, CodecError>
where
    D: AppDataCodec + openraft::AppData,
{
    let mut c = Cursor::new(payload);
    let log_id = decode_log_id(&mut c)?;
    let payload = match c.u8("entry payload kind")? {
        PAYLOAD_BLANK => {
            c.finish("blank entry")?;
            EntryPayload::Blank
        }
        PAYLOAD_NORMAL => EntryPayload::Normal(D::decode(c.rest())?),
        PAYLOAD_MEMBERSHIP => {
            let m = decode_membership(&mut c)?;
            c.finish("membership")?;
            EntryPayload::Membership(m)
        }
        k => return Err(CodecError(format!("unknown entry payload kind {k}"))),
    };
    Ok(Entry { log_id, payload })
}

fn encode_membership(m: &Membership<u64, BasicNode>, out: &mut Vec<u8>) {
    let configs = m.get_joint_config();
    out.extend_from_slice(&(configs.len() as u32).to_le_bytes());
    for config in configs {
        out.extend_from_slice(&(config.len() as u32).to_le_bytes());
        for id in config {
            out.extend_from_slice(&id.to_le_bytes());
        }
    }
    let nodes: Vec<(&u64, &BasicNode)> = m.nodes().collect();
    out.extend_from_slice(&(nodes.len() as u32).to_le_bytes());
    for (id, node) in nodes {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&(node.addr.len() as u32).to_le_bytes());
        out.extend_from_slice(node.addr.as_bytes());
    }
}

fn bounded_count(c: &mut Cursor<'_>, what: &str, max: u32) -> Result<u32, CodecError> {
    let n = c.u32(what)?;
    if n > max {
        return Err(CodecError(format!("{what} {n} is above the limit {max}")));
    }
    Ok(n)
}

fn decode_membership(c: &mut Cursor<'_>) -> Result<Membership<u64, BasicNode>, CodecError> {
    let config_count = bounded_count(c, "membership config count", MEMBERSHIP_CONFIGS_MAX)?;
    let mut configs = Vec::with_capacity(config_count as usize);
    for _ in 0..config_count {
        let voters = bounded_count(c, "voter count", MEMBERSHIP_NODES_MAX)?;
        let mut config = BTreeSet::new();
        for _ in 0..voters {
            config.insert(c.u64("voter id")?);
        }
        configs.push(config);
    }
    let node_count = bounded_count(c, "node count", MEMBERSHIP_NODES_MAX)?;
    let mut nodes = BTreeMap::new();
    for _ in 0..node_count {
        let id = c.u64("node id")?;
        let len = bounded_count(c, "node address length", NODE_ADDRESS_MAX_BYTES)?;
        let addr = std::str::from_utf8(c.take(len as usize, "node address")?)
            .map_err(|e| CodecError(format!("node {id}'s address is not UTF-8: {e}")))?;
        nodes.insert(id, BasicNode::new(addr));
    }
    Membership::new(configs, nodes)
        .map_err(|e| CodecError(format!("membership does not hold together: {e}")))
}

pub fn encode_vote(vote: &WalVote, out: &mut Vec<u8>) {
    out.extend_from_slice(&vote.leader_id.term.to_le_bytes());
    out.extend_from_slice(&vote.leader_id.node_id.to_le_bytes());
    out.push(u8::from(vote.committed));
}

pub fn decode_vote(payload: &[u8]) -> Result<WalVote, CodecError> {
    let mut c = Cursor::new(payload);
    let vote = read_vote(&mut c)?;
    c.finish("vote")?;
    Ok(vote)
}

/// A vote as `encode_vote` wrote it, at the cursor.
pub fn read_vote(c: &mut Cursor<'_>) -> Result<WalVote, CodecError> {
    let term = c.u64("vote term")?;
    let node_id = c.u64("vote node id")?;
    let committed = match c.u8("vote committed flag")? {
        0 => false,
        1 => true,
        b => return Err(CodecError(format!("vote committed flag {b} (0 or 1)"))),
    };
    Ok(Vote {
        leader_id: WalLeaderId { term, node_id },
        committed,
    })
}

/// `RaftTruncate` and `RaftCommitted` payloads: an optional log id.
pub fn encode_optional(id: Option<&WalLogId>) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + LOG_ID_BYTES);
    encode_optional_log_id(id, &mut out);
    out
}

pub fn decode_optional(payload: &[u8], what: &str) -> Result<Option<WalLogId>, CodecError> {
    let mut c = Cursor::new(payload);
    let id = decode_optional_log_id(&mut c)?;
    c.finish(what)?;
    Ok(id)
}

/// A `RaftPurge` payload.
pub fn encode_purge(id: &WalLogId) -> Vec<u8> {
    let mut out = Vec::with_capacity(LOG_ID_BYTES);
    encode_log_id(id, &mut out);
    out
}

pub fn decode_purge(payload: &[u8]) -> Result<WalLogId, CodecError> {
    let mut c = Cursor::new(payload);
    let id = decode_log_id(&mut c)?;
    c.finish("purge")?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Bytes(Vec<u8>);

    impl fmt::Display for Bytes {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{} bytes", self.0.len())
        }
    }

    impl AppDataCodec for Bytes {
        fn encode(&self, out: &mut Vec<u8>) {
            out.extend_from_slice(&self.0);
        }
        fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
            Ok(Bytes(bytes.to_vec()))
        }
    }

    fn log_id(term: u64, node: u64, index: u64) -> WalLogId {
        LogId::new(
            WalLeaderId {
                term,
                node_id: node,
            },
            index,
        )
    }

    fn round_trip(payload: EntryPayload<Bytes, u64, BasicNode>) {
        let entry = Entry {
            log_id: log_id(3, 7, 42),
            payload,
        };
        let mut out = Vec::new();
        encode_entry(&entry, &mut out);
        assert_eq!(decode_entry::<Bytes>(&out).unwrap(), entry);
        assert_eq!(decode_entry_log_id(&out).unwrap(), entry.log_id);
        // Every shorter payload is an error, never a panic.
        for len in 0..out.len() {
            let _ = decode_entry::<Bytes>(&out[..len]);
        }
    }

    #[test]
    fn entries_of_every_kind_round_trip() {
        round_trip(EntryPayload::Blank);
        round_trip(EntryPayload::Normal(Bytes(b"put a=1".to_vec())));
        let nodes = BTreeMap::from([
            (1, BasicNode::new("10.0.0.1:7000")),
            (2, BasicNode::new("10.0.0.2:7000")),
            (9, BasicNode::new("learner")),
        ]);
        let m = Membership::new(vec![BTreeSet::from([1, 2])], nodes).unwrap();
        round_trip(EntryPayload::Membership(m));
    }

    #[test]
    fn a_normal_entry_is_its_data_and_head() {
        let entry = Entry {
            log_id: log_id(3, 7, 42),
            payload: EntryPayload::Normal(Bytes(vec![7; 1000])),
        };
        let mut out = Vec::new();
        encode_entry(&entry, &mut out);
        assert_eq!(out.len(), 1000 + NORMAL_ENTRY_HEAD_BYTES);
    }

    #[test]
    fn votes_and_optional_ids_round_trip() {
        for committed in [false, true] {
            let vote = Vote {
                leader_id: WalLeaderId {
                    term: 9,
                    node_id: 2,
                },
                committed,
            };
            let mut out = Vec::new();
            encode_vote(&vote, &mut out);
            assert_eq!(decode_vote(&out).unwrap(), vote);
        }
        let id = log_id(1, 2, 3);
        assert_eq!(
            decode_optional(&encode_optional(Some(&id)), "t").unwrap(),
            Some(id)
        );
        assert_eq!(decode_optional(&encode_optional(None), "t").unwrap(), None);
        assert_eq!(decode_purge(&encode_purge(&id)).unwrap(), id);
    }

    #[test]
    fn bad_bytes_are_errors() {
        assert!(decode_vote(&[0; 17]).is_ok());
        assert!(decode_vote(&[0; 16]).is_err(), "too short");
        assert!(decode_vote(&[0; 18]).is_err(), "a stray byte");
        let mut vote = vec![0; 16];
        vote.push(7);
        assert!(decode_vote(&vote).is_err());
        assert!(decode_optional(&[2], "t").is_err());
        let mut blank_with_tail = Vec::new();
        encode_log_id(&log_id(1, 1, 1), &mut blank_with_tail);
        blank_with_tail.extend_from_slice(&[PAYLOAD_BLANK, 5]);
        assert!(decode_entry::<Bytes>(&blank_with_tail).is_err());
        let mut huge_membership = Vec::new();
        encode_log_id(&log_id(1, 1, 1), &mut huge_membership);
        huge_membership.push(PAYLOAD_MEMBERSHIP);
        huge_membership.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_entry::<Bytes>(&huge_membership).is_err());
    }
}
