//! The snapshot of a shard group: what a lagging or new member installs
//! instead of replaying the log, and what a member builds before its log
//! is purged.
//!
//! ```text
//! 0   4  magic      "CSGS"
//! 4   4  version    1
//! 8   8  state_len  bytes of the shard snapshot that follows
//! 16  n  state      the shard snapshot, in the standalone file format
//!                   (`shards::snapshot::codec`, checksummed on its own)
//! ..  4  in_doubt   count, then per batch part: txid u64, decider u32,
//!                   len u32, the part's inner records
//! ..  4  committed  count, then per batch: txid u64 (batches this shard's
//!                   log records as committed)
//! ..  4  crc32c     CRC-32C of every byte before it
//! ```
//! Integers are little-endian. Prepared parts still in doubt are state a
//! standalone snapshot never holds (it is taken between batches), but a
//! Raft snapshot is taken at any applied index, so they travel with it.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use crate::net::SnapshotWire;
use shards::shard::committed_ids::CommittedIds;
use shards::shard::group_link::GroupImage;
use shards::shard::replay::{InDoubtPart, TxnLog};
use shards::shard::state::ShardState;
use shards::snapshot::{decode_state, encode, LogPosition, SnapshotData, SnapshotError};

/// The first bytes of a group snapshot.
pub const GROUP_SNAPSHOT_MAGIC: [u8; 4] = *b"CSGS";
/// The layout version this code writes. Version 2 added the horizon of the
/// committed batch ids (`shards::shard::committed_ids`); version 1 (every
/// committed id, sorted) is still read, as horizon 0.
pub const GROUP_SNAPSHOT_VERSION: u32 = 2;
/// The oldest layout version this code reads.
const GROUP_SNAPSHOT_VERSION_MIN: u32 = 1;

/// A group snapshot as openraft holds and sends it: the encoded bytes.
/// The peer transport sends them as they are (not as JSON). Shared, not
/// copied, when cloned: openraft clones the current snapshot each time it
/// hands it out, and a copy of a few hundred MB in a shard's executor
/// stopped it for a noticeable time.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupSnapshotBytes(pub Arc<Vec<u8>>);

impl GroupSnapshotBytes {
    pub fn new(bytes: Vec<u8>) -> GroupSnapshotBytes {
        GroupSnapshotBytes(Arc::new(bytes))
    }
}

impl fmt::Debug for GroupSnapshotBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupSnapshotBytes({} bytes)", self.0.len())
    }
}

impl SnapshotWire for GroupSnapshotBytes {
    fn to_wire(&self) -> std::io::Result<Cow<'_, [u8]>> {
        Ok(Cow::Borrowed(self.0.as_slice()))
    }

    fn from_wire(bytes: Vec<u8>) -> std::io::Result<Self> {
        Ok(GroupSnapshotBytes::new(bytes))
    }
}

/// A group snapshot, decoded.
pub struct GroupSnapshot {
    pub state: ShardState,
    /// Where the shard's log stood (offset, clock, entry count).
    pub position: LogPosition,
    pub txns: TxnLog,
}

/// Why bytes are not a group snapshot.
#[derive(Debug)]
pub enum GroupSnapshotError {
    BadMagic,
    UnsupportedVersion(u32),
    /// The bytes end before what a length announced (at this byte).
    Truncated(usize),
    ChecksumMismatch,
    /// Bytes left over after the checksum.
    TrailingBytes(usize),
    State(SnapshotError),
}

impl fmt::Display for GroupSnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupSnapshotError::BadMagic => write!(f, "not a group snapshot (bad magic)"),
            GroupSnapshotError::UnsupportedVersion(v) => {
                write!(f, "group snapshot version {v} is not supported")
            }
            GroupSnapshotError::Truncated(at) => {
                write!(f, "group snapshot truncated at byte {at}")
            }
            GroupSnapshotError::ChecksumMismatch => write!(f, "group snapshot checksum mismatch"),
            GroupSnapshotError::TrailingBytes(n) => {
                write!(f, "{n} bytes after the group snapshot's checksum")
            }
            GroupSnapshotError::State(e) => write!(f, "shard snapshot inside: {e}"),
        }
    }
}

impl std::error::Error for GroupSnapshotError {}

/// Encode the state of a group member.
pub fn encode_group(state: &ShardState, position: LogPosition, txns: &TxnLog) -> Vec<u8> {
    let (in_doubt, committed) = txns.sorted_copy();
    let inner = encode(&SnapshotData::from_state(state, position));
    wrap_group(&inner, &in_doubt, &committed)
}

/// Encode a snapshot a member's loop took (`shards::shard::member_snapshot`):
/// the same bytes as [`encode_group`] of that state, but for the order of
/// the instances.
pub fn encode_group_image(taken: GroupImage) -> Vec<u8> {
    wrap_group(&taken.image.seal(), &taken.in_doubt, &taken.committed)
}

/// The group snapshot around a shard's snapshot image `inner`: the parts
/// in doubt (sorted), the committed batch ids kept (oldest first) and
/// their horizon, then a checksum.
fn wrap_group(inner: &[u8], in_doubt: &[InDoubtPart], committed: &(Vec<u64>, u64)) -> Vec<u8> {
    let (committed, horizon) = committed;
    let mut out = Vec::with_capacity(inner.len() + 64);
    out.extend_from_slice(&GROUP_SNAPSHOT_MAGIC);
    out.extend_from_slice(&GROUP_SNAPSHOT_VERSION.to_le_bytes());
    out.extend_from_slice(&(inner.len() as u64).to_le_bytes());
    out.extend_from_slice(inner);
    out.extend_from_slice(&(in_doubt.len() as u32).to_le_bytes());
    for (txid, decider, records) in in_doubt {
        out.extend_from_slice(&txid.to_le_bytes());
        out.extend_from_slice(&decider.to_le_bytes());
        out.extend_from_slice(&(records.len() as u32).to_le_bytes());
        out.extend_from_slice(records);
    }
    out.extend_from_slice(&(committed.len() as u32).to_le_bytes());
    for txid in committed {
        out.extend_from_slice(&txid.to_le_bytes());
    }
    out.extend_from_slice(&horizon.to_le_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Reads fixed-size fields, failing (never panicking) past the end.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], GroupSnapshotError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(GroupSnapshotError::Truncated(self.at))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u32(&mut self) -> Result<u32, GroupSnapshotError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, GroupSnapshotError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
}

/// Decode a group snapshot. Counts and lengths are checked against the
/// bytes actually there before anything is allocated for them.
pub fn decode_group(
    bytes: &[u8],
    allow_instance_recreate: bool,
) -> Result<GroupSnapshot, GroupSnapshotError> {
    if bytes.len() < 4 || bytes[..4] != GROUP_SNAPSHOT_MAGIC {
        return Err(GroupSnapshotError::BadMagic);
    }
    let body_len = bytes
        .len()
        .checked_sub(4)
        .filter(|&n| n >= 8)
        .ok_or(GroupSnapshotError::Truncated(bytes.len()))?;
    let (body, crc) = bytes.split_at(body_len);
    if crc32c::crc32c(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err(GroupSnapshotError::ChecksumMismatch);
    }
    let mut c = Cursor { bytes: body, at: 4 };
    let version = c.u32()?;
    if !(GROUP_SNAPSHOT_VERSION_MIN..=GROUP_SNAPSHOT_VERSION).contains(&version) {
        return Err(GroupSnapshotError::UnsupportedVersion(version));
    }
    let state_len = usize::try_from(c.u64()?).map_err(|_| GroupSnapshotError::Truncated(c.at))?;
    let (state, header) = decode_state(c.take(state_len)?, allow_instance_recreate)
        .map_err(GroupSnapshotError::State)?;
    let mut txns = TxnLog::default();
    for _ in 0..c.u32()? {
        let txid = c.u64()?;
        let decider = c.u32()?;
        let len = c.u32()? as usize;
        txns.in_doubt.insert(txid, (decider, c.take(len)?.to_vec()));
    }
    let mut committed = Vec::new();
    for _ in 0..c.u32()? {
        committed.push(c.u64()?);
    }
    let horizon = if version >= 2 { c.u64()? } else { 0 };
    txns.committed = CommittedIds::restore(committed, horizon);
    if c.at != body.len() {
        return Err(GroupSnapshotError::TrailingBytes(body.len() - c.at));
    }
    Ok(GroupSnapshot {
        state,
        position: LogPosition {
            covered_offset: header.covered_offset,
            last_tick: header.last_tick,
            entries: header.entries,
        },
        txns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shards::shard::committed_ids::Verdict;

    fn encoded(committed: CommittedIds) -> Vec<u8> {
        let txns = TxnLog {
            committed,
            ..TxnLog::default()
        };
        let position = LogPosition {
            covered_offset: 64,
            last_tick: 1,
            entries: 1,
        };
        encode_group(&ShardState::new(0, false), position, &txns)
    }

    #[test]
    fn the_committed_ids_travel_in_order_with_their_horizon() {
        let mut kept = CommittedIds::keeping(2);
        for txid in [30, 10, 20] {
            kept.insert(txid);
        }
        let bytes = encoded(kept.clone());
        let back = decode_group(&bytes, false).expect("decode").txns.committed;
        assert_eq!(back.copy(), (vec![10, 20], 30));
        assert_eq!(back.verdict(25), Verdict::Forgotten);
        // Equal bookkeeping, equal bytes.
        assert_eq!(encoded(back), bytes);
    }

    #[test]
    fn a_version_1_snapshot_is_read_with_nothing_forgotten() {
        let v2 = encoded(CommittedIds::restore([7, 9], 0));
        // Version 1: the same layout without the horizon.
        let mut v1 = v2[..v2.len() - 12].to_vec();
        v1[4..8].copy_from_slice(&1u32.to_le_bytes());
        let crc = crc32c::crc32c(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        let back = decode_group(&v1, false).expect("decode").txns.committed;
        assert_eq!(back.copy(), (vec![7, 9], 0));
        assert_eq!(back.verdict(8), Verdict::Aborted);
        let mut v3 = v2.clone();
        v3[4..8].copy_from_slice(&3u32.to_le_bytes());
        let body = v3.len() - 4;
        let crc = crc32c::crc32c(&v3[..body]);
        v3[body..].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            decode_group(&v3, false),
            Err(GroupSnapshotError::UnsupportedVersion(3))
        ));
    }
}
