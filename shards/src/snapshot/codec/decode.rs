//! Reading the snapshot format back, trusting nothing (see the module
//! above for the layout and the limits).

use super::*;

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

    /// Bytes that must be one JSON value: kept as they are, not parsed into
    /// a tree, but checked (the body checksum already passed; this stops a
    /// hand-made file from putting anything but JSON into answers).
    /// `what` names them in the error.
    fn json(&mut self, what: impl FnOnce() -> String) -> Decoded<&'a [u8]> {
        let at = self.pos;
        let text = self.bytes()?;
        match serde_json::from_slice::<serde::de::IgnoredAny>(text) {
            Ok(_) => Ok(text),
            Err(_) => Err(SnapshotError::Malformed {
                position: SNAPSHOT_HEADER_BYTES + at,
                what: format!("{} is not JSON", what()),
            }),
        }
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
    format_version: u32,
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
    let ctx = if format_version == SNAPSHOT_FORMAT_VERSION_TAGGED_CTX {
        Ctx::from_canonical_text(canonical::to_vec(&c.value(0)?))
    } else {
        Ctx::from_canonical_text(c.json(|| format!("instance {id}: context"))?.to_vec())
    };
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
            let ctx_json = c.json(|| format!("instance {id}: cached context"))?;
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
            state: machine.interned_state(&state),
            machine,
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

impl InstanceSink for InstanceTable {
    fn reserve(&mut self, additional: usize) {
        InstanceTable::reserve(self, additional);
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
                let (id, inst) = decode_instance(&mut c, &machines, header.format_version)?;
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
        entries: header.entries,
        machines,
        instances,
    })
}

/// Decode a file image straight into a shard's state (what recovery wants:
/// no intermediate list, so the peak memory is the state itself). The
/// header says where in the log it stands.
pub fn decode_state(
    bytes: &[u8],
    allow_instance_recreate: bool,
) -> Result<(ShardState, SnapshotHeader), SnapshotError> {
    let mut instances = InstanceTable::new();
    let (header, machines) = decode_items(bytes, &mut instances)?;
    let mut state = ShardState::new(header.shard as usize, allow_instance_recreate);
    for def in machines {
        state.machines.insert(def);
    }
    state.active_instances = instances.values().filter(|i| i.is_active()).count() as u64;
    state.instances = instances;
    Ok((state, header))
}
