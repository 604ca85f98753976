//! Writing the snapshot format (see the module above for the layout).

use super::*;

pub(super) fn put_uv(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(super) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_uv(out, b.len() as u64);
    out.extend_from_slice(b);
}

pub(super) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

/// A context as format 2 stores it: its canonical JSON text.
fn put_ctx(out: &mut Vec<u8>, ctx: &Ctx) {
    match ctx.as_text() {
        Some(text) => put_bytes(out, text),
        None => {
            let mut text = Vec::new();
            ctx.write_json(&mut text);
            put_bytes(out, &text);
        }
    }
}

/// A tagged value, as format 1 stored contexts (tests build such files).
#[cfg(test)]
pub(super) fn put_value(out: &mut Vec<u8>, v: &Value) {
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
    at: LogPosition,
    /// Machine item index by definition address, for the common case that
    /// instances share the registry's `Arc`.
    by_ptr: HashMap<*const MachineDef, u32>,
    /// Machine item index by (name, version).
    by_name: HashMap<(String, u32), (u32, String)>,
    machines: u32,
    instances: u64,
}

impl SnapshotEncoder {
    pub fn new(shard: usize, at: LogPosition) -> Self {
        Self::with_capacity(shard, at, 0)
    }

    /// `capacity_bytes`: expected body size, to avoid regrowing.
    pub fn with_capacity(shard: usize, at: LogPosition, capacity_bytes: usize) -> Self {
        let mut out = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + capacity_bytes);
        out.resize(SNAPSHOT_HEADER_BYTES, 0);
        SnapshotEncoder {
            out,
            shard: shard as u32,
            at,
            by_ptr: HashMap::new(),
            by_name: HashMap::new(),
            machines: 0,
            instances: 0,
        }
    }

    /// An encoder for `state`'s snapshot with every machine definition
    /// already added and room for `instances` instances; the instances are
    /// the caller's to add (all at once, or in slices).
    pub fn for_state(state: &ShardState, at: LogPosition, instances: usize) -> Self {
        let mut enc = SnapshotEncoder::with_capacity(
            state.shard_id,
            at,
            instances * SNAPSHOT_BYTES_PER_INSTANCE_ESTIMATE,
        );
        for def in state.machines.iter() {
            enc.add_machine(def);
        }
        enc
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
        put_ctx(out, &inst.ctx);
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
            at: self.at,
            machines: self.machines,
            instances: self.instances,
        }
    }
}

/// A finished snapshot body whose header is not written yet.
pub struct UnsealedImage {
    out: Vec<u8>,
    shard: u32,
    at: LogPosition,
    machines: u32,
    instances: u64,
}

impl UnsealedImage {
    /// Write the header (with the body's CRC) and return the file image.
    pub fn seal(mut self) -> Vec<u8> {
        let body = &self.out[SNAPSHOT_HEADER_BYTES..];
        let header = SnapshotHeader {
            format_version: SNAPSHOT_FORMAT_VERSION,
            shard: self.shard,
            covered_offset: self.at.covered_offset,
            last_tick: self.at.last_tick,
            entries: self.at.entries,
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
    let mut enc = SnapshotEncoder::new(data.shard, data.position());
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
pub fn encode_state(state: &ShardState, at: LogPosition) -> Vec<u8> {
    let mut enc = SnapshotEncoder::for_state(state, at, state.instances.len());
    for (id, inst) in state.instances.iter() {
        enc.add_instance(id, inst);
    }
    enc.finish()
}
