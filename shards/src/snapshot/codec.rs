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
//! 56  8  reserved         0
//!
//! body: items, each a tag byte, ended by the tag END
//! MACHINE  (1): name:str  version:uv  checksum:str  definition:bytes (JSON)
//! INSTANCE (2): id:str  machine:uv (index of an earlier MACHINE item)
//!               state:str  ctx:value  flags:u8
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
//! value null 0 | false 1 | true 2 | uint 3 uv | negative int 4 uv(!n)
//!       | float 5 f64 LE | string 6 str | array 7 uv count + values
//!       | object 8 uv count + (str key, value)… | number text 9 str
//! ```
//!
//! Why binary and not JSON: a shard of 1,000,000 instances must be written
//! and read back in seconds; tagged values decode without a text parser and
//! round-trip every `serde_json::Value` exactly (floats as their bits). The
//! machine definitions are the exception — they are few, and storing their
//! normal form lets `parse_definition` rebuild guards and indexes and the
//! stored checksum proves the rebuild is the same definition.
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
use crate::json::canonical;
use crate::machine::definition::{parse_definition, MachineDef};
use crate::shard::state::ShardState;

/// Size of the fixed header.
pub const SNAPSHOT_HEADER_BYTES: usize = 64;
/// The file magic.
pub const SNAPSHOT_MAGIC: [u8; 4] = *b"CSSN";
/// The body layout described above.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;
/// Deepest nesting of arrays/objects a stored context may have. Contexts
/// come from JSON that serde_json parsed (128 levels at most) and shallow
/// merges, so this is generous; it bounds the decoder's recursion.
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
/// Typical encoded size of an instance with a small context, to size the
/// output buffer up front.
const ENCODED_INSTANCE_BYTES_GUESS: usize = 96;

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

/// The decoded fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHeader {
    pub shard: u32,
    pub covered_offset: u64,
    pub last_tick: u64,
    pub body_len: u64,
    pub body_crc32c: u32,
    pub machines: u32,
    pub instances: u64,
}

impl SnapshotHeader {
    fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&SNAPSHOT_MAGIC);
        out[4..8].copy_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&self.shard.to_le_bytes());
        out[16..24].copy_from_slice(&self.covered_offset.to_le_bytes());
        out[24..32].copy_from_slice(&self.last_tick.to_le_bytes());
        out[32..40].copy_from_slice(&self.body_len.to_le_bytes());
        out[40..44].copy_from_slice(&self.body_crc32c.to_le_bytes());
        out[44..48].copy_from_slice(&self.machines.to_le_bytes());
        out[48..56].copy_from_slice(&self.instances.to_le_bytes());
        out[56..64].fill(0);
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
    if version != SNAPSHOT_FORMAT_VERSION {
        return Err(SnapshotError::UnsupportedVersion(version));
    }
    Ok(SnapshotHeader {
        shard: u32_at(12),
        covered_offset: u64_at(16),
        last_tick: u64_at(24),
        body_len: u64_at(32),
        body_crc32c: u32_at(40),
        machines: u32_at(44),
        instances: u64_at(48),
    })
}

// ---------------------------------------------------------------- encoding

fn put_uv(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_uv(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.push(V_NULL),
        Value::Bool(false) => out.push(V_FALSE),
        Value::Bool(true) => out.push(V_TRUE),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                out.push(V_UINT);
                put_uv(out, u);
            } else if let Some(i) = n.as_i64() {
                // Negative (non-negative ones are u64 above): !i = -i - 1 ≥ 0.
                out.push(V_NEG_INT);
                put_uv(out, !i as u64);
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite()) {
                out.push(V_FLOAT);
                out.extend_from_slice(&f.to_bits().to_le_bytes());
            } else {
                // Only reachable with serde_json's arbitrary_precision.
                out.push(V_NUMBER_TEXT);
                put_str(out, &n.to_string());
            }
        }
        Value::String(s) => {
            out.push(V_STRING);
            put_str(out, s);
        }
        Value::Array(items) => {
            out.push(V_ARRAY);
            put_uv(out, items.len() as u64);
            for item in items {
                put_value(out, item);
            }
        }
        Value::Object(map) => {
            out.push(V_OBJECT);
            put_uv(out, map.len() as u64);
            for (k, item) in map {
                put_str(out, k);
                put_value(out, item);
            }
        }
    }
}

/// Builds a snapshot file image item by item. Machines may be added up
/// front or are added on first use by an instance.
pub struct SnapshotEncoder {
    /// Header space followed by the body written so far.
    out: Vec<u8>,
    shard: u32,
    covered_offset: u64,
    last_tick: u64,
    /// Machine item index by definition address, for the common case that
    /// instances share the registry's `Arc`.
    by_ptr: HashMap<*const MachineDef, u32>,
    /// Machine item index by (name, version).
    by_name: HashMap<(String, u32), (u32, String)>,
    machines: u32,
    instances: u64,
}

impl SnapshotEncoder {
    pub fn new(shard: usize, covered_offset: u64, last_tick: u64) -> Self {
        Self::with_capacity(shard, covered_offset, last_tick, 0)
    }

    /// `capacity_bytes`: expected body size, to avoid regrowing.
    pub fn with_capacity(
        shard: usize,
        covered_offset: u64,
        last_tick: u64,
        capacity_bytes: usize,
    ) -> Self {
        let mut out = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + capacity_bytes);
        out.resize(SNAPSHOT_HEADER_BYTES, 0);
        SnapshotEncoder {
            out,
            shard: shard as u32,
            covered_offset,
            last_tick,
            by_ptr: HashMap::new(),
            by_name: HashMap::new(),
            machines: 0,
            instances: 0,
        }
    }

    /// Add a machine definition (once per name and version; repeats are
    /// ignored). Returns its item index.
    pub fn add_machine(&mut self, def: &Arc<MachineDef>) -> u32 {
        let ptr = Arc::as_ptr(def);
        if let Some(&i) = self.by_ptr.get(&ptr) {
            return i;
        }
        let key = (def.machine.clone(), def.version);
        if let Some((i, checksum)) = self.by_name.get(&key) {
            // Same name and version means the same definition (a version
            // is immutable once registered); debug builds check it.
            debug_assert_eq!(checksum, &def.checksum);
            let i = *i;
            self.by_ptr.insert(ptr, i);
            return i;
        }
        let i = self.machines;
        self.out.push(TAG_MACHINE);
        put_str(&mut self.out, &def.machine);
        put_uv(&mut self.out, def.version as u64);
        put_str(&mut self.out, &def.checksum);
        put_bytes(&mut self.out, &canonical::to_vec(&def.normalized_value()));
        self.machines += 1;
        self.by_ptr.insert(ptr, i);
        self.by_name.insert(key, (i, def.checksum.clone()));
        i
    }

    /// Add one instance (its machine is added first if needed).
    pub fn add_instance(&mut self, id: &str, inst: &Instance) {
        let machine = self.add_machine(&inst.machine);
        let out = &mut self.out;
        out.push(TAG_INSTANCE);
        put_str(out, id);
        put_uv(out, machine as u64);
        put_str(out, &inst.state);
        put_value(out, &inst.ctx);
        let keys = inst.applied_keys.as_deref().filter(|k| !k.is_empty());
        let mut flags = 0u8;
        if inst.last_event_id.is_some() {
            flags |= FLAG_LAST_EVENT_ID;
        }
        if inst.deleted_at_offset.is_some() {
            flags |= FLAG_DELETED;
        }
        if inst.creation.is_some() {
            flags |= FLAG_CREATION;
        }
        if keys.is_some() {
            flags |= FLAG_APPLIED_KEYS;
        }
        out.push(flags);
        put_uv(out, inst.last_wal_offset);
        put_uv(out, inst.created_at_ms);
        put_uv(out, inst.updated_at_ms);
        if let Some(e) = &inst.last_event_id {
            put_str(out, e);
        }
        if let Some(d) = inst.deleted_at_offset {
            put_uv(out, d);
        }
        if let Some(c) = &inst.creation {
            put_str(out, &c.idempotency_key);
            put_str(out, &c.initial_state);
            put_uv(out, c.wal_offset);
        }
        if let Some(keys) = keys {
            put_uv(out, keys.len() as u64);
            for (key, apply) in keys.iter() {
                put_str(out, key);
                put_str(out, &apply.from_state);
                put_str(out, &apply.to_state);
                put_bytes(out, &apply.ctx_json);
                put_uv(out, apply.wal_offset);
            }
        }
        self.instances += 1;
    }

    pub fn instances(&self) -> u64 {
        self.instances
    }

    /// Bytes encoded so far, header included.
    pub fn len_bytes(&self) -> usize {
        self.out.len()
    }

    /// The complete file image.
    pub fn finish(self) -> Vec<u8> {
        self.into_unsealed().seal()
    }

    /// The encoded image without its header checksum yet: `Send`, so the
    /// (size-proportional) sealing can run off the shard's thread.
    pub fn into_unsealed(mut self) -> UnsealedImage {
        self.out.push(TAG_END);
        UnsealedImage {
            out: self.out,
            shard: self.shard,
            covered_offset: self.covered_offset,
            last_tick: self.last_tick,
            machines: self.machines,
            instances: self.instances,
        }
    }
}

/// A finished snapshot body whose header is not written yet.
pub struct UnsealedImage {
    out: Vec<u8>,
    shard: u32,
    covered_offset: u64,
    last_tick: u64,
    machines: u32,
    instances: u64,
}

impl UnsealedImage {
    /// Write the header (with the body's CRC) and return the file image.
    pub fn seal(mut self) -> Vec<u8> {
        let body = &self.out[SNAPSHOT_HEADER_BYTES..];
        let header = SnapshotHeader {
            shard: self.shard,
            covered_offset: self.covered_offset,
            last_tick: self.last_tick,
            body_len: body.len() as u64,
            body_crc32c: crc32c::crc32c(body),
            machines: self.machines,
            instances: self.instances,
        };
        header.write(&mut self.out[..SNAPSHOT_HEADER_BYTES]);
        self.out
    }
}

/// Encode a `SnapshotData` into a file image.
pub fn encode(data: &SnapshotData) -> Vec<u8> {
    let mut enc = SnapshotEncoder::new(data.shard, data.covered_offset, data.last_tick);
    for def in &data.machines {
        enc.add_machine(def);
    }
    for (id, inst) in &data.instances {
        enc.add_instance(id, inst);
    }
    enc.finish()
}

/// Encode a live shard's state without copying it first (one pass; the
/// caller decides whether that pause is acceptable or slices the work with
/// `SnapshotEncoder`).
pub fn encode_state(state: &ShardState, covered_offset: u64, last_tick: u64) -> Vec<u8> {
    let mut enc = SnapshotEncoder::with_capacity(
        state.shard_id,
        covered_offset,
        last_tick,
        state.instances.len() * ENCODED_INSTANCE_BYTES_GUESS,
    );
    for def in state.machines.iter() {
        enc.add_machine(def);
    }
    for (id, inst) in &state.instances {
        enc.add_instance(id, inst);
    }
    enc.finish()
}

// ---------------------------------------------------------------- decoding

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

type Decoded<T> = Result<T, SnapshotError>;

impl<'a> Cursor<'a> {
    fn err<T>(&self, what: impl Into<String>) -> Decoded<T> {
        Err(SnapshotError::Malformed {
            position: SNAPSHOT_HEADER_BYTES + self.pos,
            what: what.into(),
        })
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn u8(&mut self) -> Decoded<u8> {
        match self.buf.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => self.err("unexpected end of body"),
        }
    }

    fn uv(&mut self) -> Decoded<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.u8()?;
            if i == 9 && b > 1 {
                return self.err("integer overflows 64 bits");
            }
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        self.err("integer longer than 10 bytes")
    }

    fn u32v(&mut self) -> Decoded<u32> {
        let v = self.uv()?;
        u32::try_from(v).or_else(|_| self.err("integer exceeds 32 bits"))
    }

    fn len(&mut self) -> Decoded<usize> {
        let n = self.uv()?;
        if n > self.remaining() as u64 {
            return self.err("length runs past the end of the body");
        }
        Ok(n as usize)
    }

    /// A count of items, each at least `min_item_bytes` long: bounded by the
    /// bytes left, so preallocating `count` is safe.
    fn count(&mut self, min_item_bytes: usize) -> Decoded<usize> {
        let n = self.uv()?;
        if n > (self.remaining() / min_item_bytes.max(1)) as u64 {
            return self.err("count larger than the bytes left could hold");
        }
        Ok(n as usize)
    }

    fn bytes(&mut self) -> Decoded<&'a [u8]> {
        let n = self.len()?;
        let b = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(b)
    }

    fn str(&mut self) -> Decoded<&'a str> {
        let at = self.pos;
        let b = self.bytes()?;
        std::str::from_utf8(b).map_err(|_| SnapshotError::Malformed {
            position: SNAPSHOT_HEADER_BYTES + at,
            what: "string is not UTF-8".into(),
        })
    }

    fn string(&mut self) -> Decoded<String> {
        self.str().map(str::to_owned)
    }

    fn value(&mut self, depth: usize) -> Decoded<Value> {
        let tag = self.u8()?;
        Ok(match tag {
            V_NULL => Value::Null,
            V_FALSE => Value::Bool(false),
            V_TRUE => Value::Bool(true),
            V_UINT => Value::Number(self.uv()?.into()),
            V_NEG_INT => {
                let raw = self.uv()?;
                if raw > i64::MAX as u64 {
                    return self.err("negative integer out of range");
                }
                Value::Number((!(raw as i64)).into())
            }
            V_FLOAT => {
                if self.remaining() < 8 {
                    return self.err("unexpected end of body");
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.buf[self.pos..self.pos + 8]);
                self.pos += 8;
                match Number::from_f64(f64::from_le_bytes(b)) {
                    Some(n) => Value::Number(n),
                    None => return self.err("float is not finite"),
                }
            }
            V_STRING => Value::String(self.string()?),
            V_ARRAY | V_OBJECT => {
                if depth >= SNAPSHOT_VALUE_DEPTH_MAX {
                    return self.err("value nested too deeply");
                }
                if tag == V_ARRAY {
                    let n = self.count(1)?;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.value(depth + 1)?);
                    }
                    Value::Array(items)
                } else {
                    let n = self.count(2)?;
                    let mut map = Map::new();
                    for _ in 0..n {
                        let k = self.string()?;
                        let v = self.value(depth + 1)?;
                        map.insert(k, v);
                    }
                    Value::Object(map)
                }
            }
            V_NUMBER_TEXT => {
                let at = self.pos;
                let text = self.str()?;
                match text.parse::<Number>() {
                    Ok(n) => Value::Number(n),
                    Err(_) => {
                        return Err(SnapshotError::Malformed {
                            position: SNAPSHOT_HEADER_BYTES + at,
                            what: "number text is not a JSON number".into(),
                        })
                    }
                }
            }
            other => return self.err(format!("unknown value tag {other}")),
        })
    }
}

fn decode_machine(c: &mut Cursor<'_>) -> Decoded<Arc<MachineDef>> {
    let at = c.pos;
    let name = c.str()?;
    let version = c.u32v()?;
    let checksum = c.str()?;
    let json = c.bytes()?;
    let fail = |what: String| SnapshotError::Malformed {
        position: SNAPSHOT_HEADER_BYTES + at,
        what,
    };
    let value: Value = serde_json::from_slice(json).map_err(|e| {
        fail(format!(
            "machine {name} v{version}: definition is not JSON: {e}"
        ))
    })?;
    let def = parse_definition(name, version, &value)
        .map_err(|e| fail(format!("machine {name} v{version}: {}", e.message)))?;
    if def.checksum != checksum {
        return Err(fail(format!(
            "machine {name} v{version}: checksum {} does not match the stored {checksum}",
            def.checksum
        )));
    }
    Ok(Arc::new(def))
}

fn decode_instance(
    c: &mut Cursor<'_>,
    machines: &[Arc<MachineDef>],
) -> Decoded<(String, Instance)> {
    let id = c.string()?;
    let machine_index = c.uv()?;
    let Some(machine) = usize::try_from(machine_index)
        .ok()
        .and_then(|i| machines.get(i))
        .cloned()
    else {
        return c.err(format!(
            "instance {id} names machine item {machine_index}, not yet defined"
        ));
    };
    let state = c.string()?;
    if !machine.has_state(&state) {
        return c.err(format!(
            "instance {id}: state {state:?} is not in its machine"
        ));
    }
    let ctx = c.value(0)?;
    let flags = c.u8()?;
    if flags & !FLAGS_KNOWN != 0 {
        return c.err(format!("instance {id}: unknown flags {flags:#x}"));
    }
    let last_wal_offset = c.uv()?;
    let created_at_ms = c.uv()?;
    let updated_at_ms = c.uv()?;
    let last_event_id = if flags & FLAG_LAST_EVENT_ID != 0 {
        Some(c.string()?)
    } else {
        None
    };
    let deleted_at_offset = if flags & FLAG_DELETED != 0 {
        Some(c.uv()?)
    } else {
        None
    };
    let creation = if flags & FLAG_CREATION != 0 {
        Some(Box::new(Creation {
            idempotency_key: c.string()?,
            initial_state: c.string()?,
            wal_offset: c.uv()?,
        }))
    } else {
        None
    };
    let applied_keys = if flags & FLAG_APPLIED_KEYS != 0 {
        let n = c.count(5)?;
        if n == 0 || n > IDEMPOTENCY_KEYS_PER_INSTANCE_MAX {
            return c.err(format!("instance {id}: {n} idempotency keys"));
        }
        let mut keys = AppliedKeys::default();
        for _ in 0..n {
            let key = c.str()?;
            let from_state = c.string()?;
            let to_state = c.string()?;
            let at = c.pos;
            let ctx_json = c.bytes()?;
            if serde_json::from_slice::<serde::de::IgnoredAny>(ctx_json).is_err() {
                return Err(SnapshotError::Malformed {
                    position: SNAPSHOT_HEADER_BYTES + at,
                    what: format!("instance {id}: cached context is not JSON"),
                });
            }
            keys.insert(
                key,
                CachedApply {
                    from_state,
                    to_state,
                    ctx_json: ctx_json.to_vec(),
                    wal_offset: c.uv()?,
                },
            );
        }
        Some(Box::new(keys))
    } else {
        None
    };
    Ok((
        id,
        Instance {
            machine,
            state,
            ctx,
            last_event_id,
            last_wal_offset,
            created_at_ms,
            updated_at_ms,
            deleted_at_offset,
            creation,
            applied_keys,
        },
    ))
}

/// Where `decode_items` puts instances.
trait InstanceSink {
    fn reserve(&mut self, additional: usize);
    fn put(&mut self, id: String, inst: Instance);
}

impl InstanceSink for Vec<(String, Instance)> {
    fn reserve(&mut self, additional: usize) {
        Vec::reserve(self, additional);
    }

    fn put(&mut self, id: String, inst: Instance) {
        self.push((id, inst));
    }
}

impl InstanceSink for HashMap<String, Instance> {
    fn reserve(&mut self, additional: usize) {
        HashMap::reserve(self, additional);
    }

    fn put(&mut self, id: String, inst: Instance) {
        // A repeated id (only possible in a hand-made file): the later wins.
        self.insert(id, inst);
    }
}

/// Check the framing and checksums, then decode every item: machines are
/// returned, instances go to `sink`.
fn decode_items(
    bytes: &[u8],
    sink: &mut impl InstanceSink,
) -> Result<(SnapshotHeader, Vec<Arc<MachineDef>>), SnapshotError> {
    let header = decode_header(bytes)?;
    let expected = (SNAPSHOT_HEADER_BYTES as u64).saturating_add(header.body_len);
    if expected != bytes.len() as u64 {
        return Err(SnapshotError::LengthMismatch {
            expected_bytes: expected,
            actual_bytes: bytes.len() as u64,
        });
    }
    let body = &bytes[SNAPSHOT_HEADER_BYTES..];
    if crc32c::crc32c(body) != header.body_crc32c {
        return Err(SnapshotError::BodyCrcMismatch);
    }
    let mut c = Cursor { buf: body, pos: 0 };
    let machines_cap = (header.machines as usize).min(body.len() / MACHINE_ITEM_BYTES_MIN);
    let instances_cap = header
        .instances
        .min((body.len() / INSTANCE_ITEM_BYTES_MIN) as u64);
    let mut machines: Vec<Arc<MachineDef>> = Vec::with_capacity(machines_cap);
    sink.reserve(instances_cap as usize);
    let mut instances = 0u64;
    let mut seen_machines: HashMap<(String, u32), ()> = HashMap::new();
    loop {
        match c.u8()? {
            TAG_END => break,
            TAG_MACHINE => {
                let def = decode_machine(&mut c)?;
                if machines.len() >= header.machines as usize {
                    return c.err("more machine items than the header announces");
                }
                let key = (def.machine.clone(), def.version);
                if seen_machines.insert(key, ()).is_some() {
                    return c.err(format!(
                        "machine {} v{} appears twice",
                        def.machine, def.version
                    ));
                }
                machines.push(def);
            }
            TAG_INSTANCE => {
                if instances >= header.instances {
                    return c.err("more instance items than the header announces");
                }
                let (id, inst) = decode_instance(&mut c, &machines)?;
                sink.put(id, inst);
                instances += 1;
            }
            other => return c.err(format!("unknown item tag {other}")),
        }
    }
    if c.pos != body.len() {
        return c.err("bytes after the end item");
    }
    if machines.len() != header.machines as usize || instances != header.instances {
        return c.err(format!(
            "header announces {} machines and {} instances, body has {} and {instances}",
            header.machines,
            header.instances,
            machines.len(),
        ));
    }
    Ok((header, machines))
}

/// Decode a complete file image. Never panics; any defect is an error.
pub fn decode(bytes: &[u8]) -> Result<SnapshotData, SnapshotError> {
    let mut instances = Vec::new();
    let (header, machines) = decode_items(bytes, &mut instances)?;
    Ok(SnapshotData {
        shard: header.shard as usize,
        covered_offset: header.covered_offset,
        last_tick: header.last_tick,
        machines,
        instances,
    })
}

/// Decode a file image straight into a shard's state (what recovery wants:
/// no intermediate list, so the peak memory is the state itself). The
/// header carries `covered_offset` and `last_tick`.
pub fn decode_state(
    bytes: &[u8],
    allow_instance_recreate: bool,
) -> Result<(ShardState, SnapshotHeader), SnapshotError> {
    let mut instances = HashMap::new();
    let (header, machines) = decode_items(bytes, &mut instances)?;
    let mut state = ShardState::new(header.shard as usize, allow_instance_recreate);
    for def in machines {
        state.machines.insert(def);
    }
    state.active_instances = instances.values().filter(|i| i.is_active()).count() as u64;
    state.instances = instances;
    state.rebuild_order();
    Ok((state, header))
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
