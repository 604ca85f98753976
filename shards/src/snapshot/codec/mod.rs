//! The snapshot file format: a fixed, checksummed header and a compact
//! binary body.
//!
//! ```text
//! header (64 bytes, integers little-endian)
//! 0   4  magic            "CSSN"
//! 4   4  format_version   SNAPSHOT_FORMAT_VERSION
//! 8   4  header_crc32c    CRC-32C of bytes 12..64
//! 12  4  shard            shard id
//! 16  8  covered_offset   every record with offset ≤ this is reflected
//! 24  8  last_tick        the shard's offset clock when it was taken
//! 32  8  body_len         bytes after the header; the file ends there
//! 40  4  body_crc32c      CRC-32C of the body
//! 44  4  machines         machine items in the body
//! 48  8  instances        instance items in the body
//! 56  8  entries          log entries the shard had written (`wal/sequence.rs`)
//!
//! body: items, each a tag byte, ended by the tag END
//! MACHINE  (1): name:str  version:uv  checksum:str  definition:bytes (JSON)
//! INSTANCE (2): id:str  machine:uv (index of an earlier MACHINE item)
//!               state:str  ctx:bytes (canonical JSON)  flags:u8
//!               last_wal_offset:uv  created_at_ms:uv  updated_at_ms:uv
//!               [last_event_id:str]                        flags & 1
//!               [deleted_at_offset:uv]                     flags & 2
//!               [creation: key:str initial_state:str wal_offset:uv]  flags & 4
//!               [keys: count:uv, count × (key:str from:str to:str
//!                      ctx_json:bytes wal_offset:uv), oldest first] flags & 8
//! END      (0)
//!
//! uv    unsigned LEB128, at most 10 bytes
//! str   uv length + UTF-8 bytes;  bytes: uv length + bytes
//! ```
//!
//! Format 1 stored an instance's `ctx` as a tagged value instead of text:
//!
//! ```text
//! value null 0 | false 1 | true 2 | uint 3 uv | negative int 4 uv(!n)
//!       | float 5 f64 LE | string 6 str | array 7 uv count + values
//!       | object 8 uv count + (str key, value)… | number text 9 str
//! ```
//!
//! Format 1 files are still read (their contexts are turned into text as
//! they load); this build writes format 2 only, which a build that knows
//! only format 1 refuses (`UnsupportedVersion`) — in a cluster, upgrade
//! every node before one of them sends a snapshot.
//!
//! Why binary framing: a shard of 1,000,000 instances must be written and
//! read back in seconds, so the items are length-prefixed fields, not a
//! document a parser has to walk. Why a context is its canonical JSON text
//! (format 2): that is how a shard keeps it in memory (`instance_ctx`), so
//! writing it is a copy and loading it keeps the bytes — checked to be
//! JSON, not built into a tree. The machine definitions are stored as
//! their normal form too — they are few, `parse_definition` rebuilds
//! guards and indexes from it, and the stored checksum proves the rebuild
//! is the same definition.
//!
//! Items are a tagged stream rather than counted arrays so `SnapshotEncoder`
//! can add instances one at a time (a caller may encode in slices between
//! requests); the header counts are checked against the stream on decode.
//!
//! Decoding trusts nothing: every length is checked against the bytes left,
//! allocation is bounded by the input size, nesting by
//! `SNAPSHOT_VALUE_DEPTH_MAX`, and no byte pattern panics.

use std::fmt;
use std::sync::Arc;

use hashbrown::HashMap;
use serde_json::{Map, Number, Value};

use super::data::SnapshotData;
use crate::instance::IDEMPOTENCY_KEYS_PER_INSTANCE_MAX;
use crate::instance::{AppliedKeys, CachedApply, Creation, Instance};
use crate::instance_ctx::Ctx;
use crate::instance_table::InstanceTable;
use crate::json::canonical;
use crate::machine::definition::{parse_definition, MachineDef};
use crate::shard::state::ShardState;

/// Size of the fixed header.
pub const SNAPSHOT_HEADER_BYTES: usize = 64;
/// The file magic.
pub const SNAPSHOT_MAGIC: [u8; 4] = *b"CSSN";
/// The body layout described above, the one this build writes.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 2;
/// The first format (contexts as tagged values), still read.
pub const SNAPSHOT_FORMAT_VERSION_TAGGED_CTX: u32 = 1;
/// Deepest nesting of arrays/objects a stored context may have. Contexts
/// come from JSON that serde_json parsed (128 levels at most) and shallow
/// merges, so this is generous; it bounds the decoder's recursion over a
/// format 1 tagged value (format 2's text is checked by serde_json, whose
/// own limit is 128).
pub const SNAPSHOT_VALUE_DEPTH_MAX: usize = 256;

const TAG_END: u8 = 0;
const TAG_MACHINE: u8 = 1;
const TAG_INSTANCE: u8 = 2;

const FLAG_LAST_EVENT_ID: u8 = 1;
const FLAG_DELETED: u8 = 2;
const FLAG_CREATION: u8 = 4;
const FLAG_APPLIED_KEYS: u8 = 8;
const FLAGS_KNOWN: u8 = 15;

const V_NULL: u8 = 0;
const V_FALSE: u8 = 1;
const V_TRUE: u8 = 2;
const V_UINT: u8 = 3;
const V_NEG_INT: u8 = 4;
const V_FLOAT: u8 = 5;
const V_STRING: u8 = 6;
const V_ARRAY: u8 = 7;
const V_OBJECT: u8 = 8;
const V_NUMBER_TEXT: u8 = 9;

/// Fewest body bytes one instance item can take: tag, id, machine, state,
/// ctx, flags, three integers. Bounds preallocation on decode.
const INSTANCE_ITEM_BYTES_MIN: usize = 9;
const MACHINE_ITEM_BYTES_MIN: usize = 5;
/// Encoder buffer reserved per instance up front (measured average: 82
/// bytes), so the buffer does not regrow — copying tens of MiB inside one
/// slice of a sliced snapshot — while instances are added.
pub const SNAPSHOT_BYTES_PER_INSTANCE_ESTIMATE: usize = 112;

/// Why bytes are not a usable snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotError {
    /// Shorter than the header.
    TooShort {
        len_bytes: usize,
    },
    BadMagic,
    UnsupportedVersion(u32),
    HeaderCrcMismatch,
    /// The file is not exactly header + body_len bytes long.
    LengthMismatch {
        expected_bytes: u64,
        actual_bytes: u64,
    },
    BodyCrcMismatch,
    /// The checksums matched but the body does not follow the format.
    Malformed {
        position: usize,
        what: String,
    },
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::TooShort { len_bytes } => {
                write!(f, "only {len_bytes} bytes, shorter than a snapshot header")
            }
            SnapshotError::BadMagic => write!(f, "not a snapshot (bad magic)"),
            SnapshotError::UnsupportedVersion(v) => {
                write!(f, "unsupported snapshot format version {v}")
            }
            SnapshotError::HeaderCrcMismatch => write!(f, "header checksum mismatch"),
            SnapshotError::LengthMismatch {
                expected_bytes,
                actual_bytes,
            } => write!(
                f,
                "length mismatch: header announces {expected_bytes} bytes, file has {actual_bytes}"
            ),
            SnapshotError::BodyCrcMismatch => write!(f, "body checksum mismatch"),
            SnapshotError::Malformed { position, what } => {
                write!(f, "malformed body at byte {position}: {what}")
            }
        }
    }
}

impl std::error::Error for SnapshotError {}

/// Where in its shard's log a snapshot stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogPosition {
    /// Every record with offset ≤ this is reflected in the snapshot.
    pub covered_offset: u64,
    /// The shard's offset clock when it was taken.
    pub last_tick: u64,
    /// Log entries the shard had written by then (`wal/sequence.rs`): the
    /// first record after `covered_offset` continues this count.
    pub entries: u64,
}

/// The decoded fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// The body's layout: `SNAPSHOT_FORMAT_VERSION` or
    /// `SNAPSHOT_FORMAT_VERSION_TAGGED_CTX`.
    pub format_version: u32,
    pub shard: u32,
    pub covered_offset: u64,
    pub last_tick: u64,
    pub entries: u64,
    pub body_len: u64,
    pub body_crc32c: u32,
    pub machines: u32,
    pub instances: u64,
}

impl SnapshotHeader {
    fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&SNAPSHOT_MAGIC);
        out[4..8].copy_from_slice(&self.format_version.to_le_bytes());
        out[12..16].copy_from_slice(&self.shard.to_le_bytes());
        out[16..24].copy_from_slice(&self.covered_offset.to_le_bytes());
        out[24..32].copy_from_slice(&self.last_tick.to_le_bytes());
        out[32..40].copy_from_slice(&self.body_len.to_le_bytes());
        out[40..44].copy_from_slice(&self.body_crc32c.to_le_bytes());
        out[44..48].copy_from_slice(&self.machines.to_le_bytes());
        out[48..56].copy_from_slice(&self.instances.to_le_bytes());
        out[56..64].copy_from_slice(&self.entries.to_le_bytes());
        let crc = crc32c::crc32c(&out[12..SNAPSHOT_HEADER_BYTES]);
        out[8..12].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Check and decode the header only (listing, stats). Does not look at the
/// body.
pub fn decode_header(bytes: &[u8]) -> Result<SnapshotHeader, SnapshotError> {
    if bytes.len() < SNAPSHOT_HEADER_BYTES {
        return Err(SnapshotError::TooShort {
            len_bytes: bytes.len(),
        });
    }
    if bytes[0..4] != SNAPSHOT_MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let u32_at =
        |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[i..i + 8]);
        u64::from_le_bytes(b)
    };
    if crc32c::crc32c(&bytes[12..SNAPSHOT_HEADER_BYTES]) != u32_at(8) {
        return Err(SnapshotError::HeaderCrcMismatch);
    }
    let version = u32_at(4);
    if version != SNAPSHOT_FORMAT_VERSION && version != SNAPSHOT_FORMAT_VERSION_TAGGED_CTX {
        return Err(SnapshotError::UnsupportedVersion(version));
    }
    Ok(SnapshotHeader {
        format_version: version,
        shard: u32_at(12),
        covered_offset: u64_at(16),
        last_tick: u64_at(24),
        body_len: u64_at(32),
        body_crc32c: u32_at(40),
        machines: u32_at(44),
        instances: u64_at(48),
        entries: u64_at(56),
    })
}

impl SnapshotHeader {
    pub fn position(&self) -> LogPosition {
        LogPosition {
            covered_offset: self.covered_offset,
            last_tick: self.last_tick,
            entries: self.entries,
        }
    }
}

mod decode;
mod encode;

pub use decode::{decode, decode_state};
pub use encode::{encode, encode_state, SnapshotEncoder, UnsealedImage};

#[cfg(test)]
mod tests;
