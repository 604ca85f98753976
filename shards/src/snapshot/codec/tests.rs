//! Unit tests of the snapshot codec.

use super::*;
use proptest::prelude::*;
use serde_json::json;

use super::encode::{put_bytes, put_str, put_uv};

const ONE: LogPosition = LogPosition {
    covered_offset: 1,
    last_tick: 1,
    entries: 1,
};

fn machine(name: &str, version: u32) -> Arc<MachineDef> {
    Arc::new(
        parse_definition(
            name,
            version,
            &json!({"states":["new","paid","shipped"],"initial":"new","transitions":[
                    {"from":"new","event":"PAY","to":"paid","guard":"ctx.amount > 0 && ctx.ok"},
                    {"from":["paid","new"],"event":"SHIP","to":"shipped"}],
                    "meta":{"owner":"ops","n":1.5}}),
        )
        .unwrap(),
    )
}

fn instance(def: &Arc<MachineDef>, n: u64) -> Instance {
    Instance {
        machine: def.clone(),
        state: "paid".into(),
        ctx: json!({"amount": n, "neg": -5, "f": 0.1, "s": "é\"\n", "a": [null, true, false, {"x": []}]}).into(),
        last_event_id: Some(format!("ev-{n}")),
        last_wal_offset: n * 64 + 1,
        created_at_ms: 1_700_000_000_000,
        updated_at_ms: 1_700_000_000_500,
        deleted_at_offset: None,
        creation: Some(Box::new(Creation {
            idempotency_key: "ck".into(),
            initial_state: "new".into(),
            wal_offset: 65,
        })),
        applied_keys: None,
    }
}

fn sample() -> SnapshotData {
    let m1 = machine("order", 1);
    let m2 = machine("order", 2);
    let mut keyed = instance(&m1, 7);
    for k in 0..3 {
        keyed.remember_apply(
            &format!("key-{k}"),
            CachedApply {
                from_state: "new".into(),
                to_state: "paid".into(),
                ctx_json: format!("{{\"k\":{k}}}").into_bytes(),
                wal_offset: 1000 + k,
            },
        );
    }
    let mut deleted = instance(&m2, 9);
    deleted.deleted_at_offset = Some(4242);
    deleted.ctx = Value::Null.into();
    deleted.creation = None;
    deleted.last_event_id = None;
    SnapshotData {
        shard: 3,
        covered_offset: 123_456_789,
        last_tick: 99,
        entries: 4321,
        machines: vec![m1.clone(), m2],
        instances: vec![
            ("a".into(), instance(&m1, 1)),
            ("keyed".into(), keyed),
            ("gone".into(), deleted),
        ],
    }
}

fn assert_same_instance(a: &Instance, b: &Instance) {
    assert_eq!(a.machine.machine, b.machine.machine);
    assert_eq!(a.machine.version, b.machine.version);
    assert_eq!(a.machine.checksum, b.machine.checksum);
    assert_eq!(a.state, b.state);
    assert_eq!(a.ctx, b.ctx);
    assert_eq!(a.last_event_id, b.last_event_id);
    assert_eq!(a.last_wal_offset, b.last_wal_offset);
    assert_eq!(a.created_at_ms, b.created_at_ms);
    assert_eq!(a.updated_at_ms, b.updated_at_ms);
    assert_eq!(a.deleted_at_offset, b.deleted_at_offset);
    assert_eq!(a.creation, b.creation);
    let keys = |i: &Instance| -> Vec<(String, CachedApply)> {
        i.applied_keys
            .iter()
            .flat_map(|k| k.iter().map(|(k, v)| (k.to_owned(), v.clone())))
            .collect()
    };
    assert_eq!(keys(a), keys(b));
}

fn assert_same(a: &SnapshotData, b: &SnapshotData) {
    assert_eq!(a.shard, b.shard);
    assert_eq!(a.covered_offset, b.covered_offset);
    assert_eq!(a.last_tick, b.last_tick);
    assert_eq!(a.entries, b.entries);
    assert_eq!(a.machines.len(), b.machines.len());
    for (x, y) in a.machines.iter().zip(&b.machines) {
        assert_eq!(**x, **y);
    }
    assert_eq!(a.instances.len(), b.instances.len());
    for ((ia, x), (ib, y)) in a.instances.iter().zip(b.instances.iter()) {
        assert_eq!(ia, ib);
        assert_same_instance(x, y);
    }
}

#[test]
fn round_trip_keeps_everything() {
    let data = sample();
    let bytes = encode(&data);
    let back = decode(&bytes).unwrap();
    assert_same(&data, &back);
    // Decoded instances share the decoded machine's Arc.
    assert!(Arc::ptr_eq(&back.instances[0].1.machine, &back.machines[0]));
    // The definition is rebuilt completely: guards work.
    let def = &back.machines[0];
    assert!(matches!(
        def.select("new", "PAY", &json!({"amount": 3, "ok": true})),
        crate::machine::definition::Selection::Fire(_)
    ));
    let h = decode_header(&bytes).unwrap();
    assert_eq!((h.shard, h.machines, h.instances), (3, 2, 3));
    assert_eq!(h.covered_offset, 123_456_789);
}

#[test]
fn idempotency_keys_keep_their_eviction_order() {
    let data = sample();
    let back = decode(&encode(&data)).unwrap();
    let keys = back.instances[1].1.applied_keys.as_ref().unwrap();
    let order: Vec<&str> = keys.iter().map(|(k, _)| k).collect();
    assert_eq!(order, vec!["key-0", "key-1", "key-2"]);
}

#[test]
fn machines_are_added_on_first_use() {
    let m = machine("late", 4);
    let mut enc = SnapshotEncoder::new(0, ONE);
    enc.add_instance("x", &instance(&m, 1));
    enc.add_instance("y", &instance(&m, 2));
    // A separately parsed copy of the same version is the same item.
    enc.add_instance("z", &instance(&machine("late", 4), 3));
    let back = decode(&enc.finish()).unwrap();
    assert_eq!(back.machines.len(), 1);
    assert_eq!(back.instances.len(), 3);
}

#[test]
fn empty_state_round_trips() {
    let data = SnapshotData {
        shard: 0,
        covered_offset: 0,
        last_tick: 0,
        entries: 0,
        machines: vec![],
        instances: vec![],
    };
    let bytes = encode(&data);
    assert_eq!(bytes.len(), SNAPSHOT_HEADER_BYTES + 1);
    assert_same(&data, &decode(&bytes).unwrap());
}

#[test]
fn every_flipped_bit_is_detected() {
    let bytes = encode(&sample());
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = bytes.clone();
            bad[i] ^= bit;
            assert!(
                decode(&bad).is_err(),
                "flip {bit:#x} at byte {i} went unnoticed"
            );
        }
    }
}

#[test]
fn every_truncation_and_extension_is_detected() {
    let bytes = encode(&sample());
    for len in 0..bytes.len() {
        assert!(decode(&bytes[..len]).is_err(), "cut at {len}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        decode(&longer),
        Err(SnapshotError::LengthMismatch { .. })
    ));
}

/// Re-seal a hand-made body so the checksums pass and only the body
/// checks can catch it.
fn sealed(body: &[u8], machines: u32, instances: u64) -> Vec<u8> {
    sealed_as(SNAPSHOT_FORMAT_VERSION, body, machines, instances)
}

/// `sealed` for a format of `version`.
fn sealed_as(version: u32, body: &[u8], machines: u32, instances: u64) -> Vec<u8> {
    let mut out = vec![0u8; SNAPSHOT_HEADER_BYTES];
    out.extend_from_slice(body);
    SnapshotHeader {
        format_version: version,
        shard: 0,
        covered_offset: 1,
        last_tick: 1,
        entries: 1,
        body_len: body.len() as u64,
        body_crc32c: crc32c::crc32c(body),
        machines,
        instances,
    }
    .write(&mut out[..SNAPSHOT_HEADER_BYTES]);
    out
}

#[test]
fn well_sealed_nonsense_is_rejected_cleanly() {
    let cases: Vec<(Vec<u8>, u32, u64)> = vec![
        (vec![], 0, 0),                         // no END
        (vec![TAG_END, 0], 0, 0),               // trailing bytes
        (vec![9, TAG_END], 0, 0),               // unknown tag
        (vec![TAG_END], 1, 0),                  // count mismatch
        (vec![TAG_INSTANCE, 1, b'x', 0], 0, 1), // machine not defined
        (vec![TAG_INSTANCE, 0xff, 0xff, 0xff, 0xff, 0x0f], 0, 1),
        (
            vec![
                TAG_INSTANCE,
                0x80,
                0x80,
                0x80,
                0x80,
                0x80,
                0x80,
                0x80,
                0x80,
                0x80,
                0x02,
            ],
            0,
            1,
        ),
    ];
    for (body, m, i) in cases {
        assert!(
            matches!(
                decode(&sealed(&body, m, i)),
                Err(SnapshotError::Malformed { .. })
            ),
            "{body:?}"
        );
    }
    // A format 1 context nested deeper than the limit.
    let mut deep = machine_item("m");
    deep.extend_from_slice(&[TAG_INSTANCE, 1, b'i', 0, 3]);
    deep.extend_from_slice(b"new");
    for _ in 0..=SNAPSHOT_VALUE_DEPTH_MAX {
        deep.extend_from_slice(&[V_ARRAY, 1]);
    }
    deep.push(V_NULL);
    deep.extend_from_slice(&[0, 1, 1, 1, TAG_END]);
    let err = decode(&sealed_as(SNAPSHOT_FORMAT_VERSION_TAGGED_CTX, &deep, 1, 1)).unwrap_err();
    assert!(err.to_string().contains("nested too deeply"), "{err}");
}

/// A MACHINE item of `machine(name, 1)`.
fn machine_item(name: &str) -> Vec<u8> {
    let def = machine(name, 1);
    let mut out = vec![TAG_MACHINE];
    put_str(&mut out, name);
    put_uv(&mut out, 1);
    put_str(&mut out, &def.checksum);
    put_bytes(&mut out, &canonical::to_vec(&def.normalized_value()));
    out
}

/// A body of one machine and one instance "i" in state "new" whose
/// context field is `ctx` (a tagged value in format 1, text in 2).
fn one_instance_body(ctx: &[u8]) -> Vec<u8> {
    let mut body = machine_item("m");
    body.push(TAG_INSTANCE);
    put_str(&mut body, "i");
    put_uv(&mut body, 0);
    put_str(&mut body, "new");
    body.extend_from_slice(ctx);
    body.extend_from_slice(&[0, 1, 1, 1, TAG_END]);
    body
}

#[test]
fn a_format_1_file_loads_with_its_contexts_as_canonical_text() {
    let value = json!({"z": [1, -2, 0.5, "é"], "a": {"t": true, "n": null}});
    let mut tagged = Vec::new();
    super::encode::put_value(&mut tagged, &value);
    let v1 = sealed_as(
        SNAPSHOT_FORMAT_VERSION_TAGGED_CTX,
        &one_instance_body(&tagged),
        1,
        1,
    );
    let back = decode(&v1).unwrap();
    let ctx = &back.instances[0].1.ctx;
    assert_eq!(ctx.as_text(), Some(&canonical::to_vec(&value)[..]));
    assert_eq!(ctx, &value);
    // Written again, it is format 2 with the same context.
    let v2 = encode(&back);
    assert_eq!(
        decode_header(&v2).unwrap().format_version,
        SNAPSHOT_FORMAT_VERSION
    );
    assert_eq!(
        decode(&v2).unwrap().instances[0].1.ctx.as_text(),
        ctx.as_text()
    );
    // Format 1 bodies are not read as format 2, nor the reverse.
    assert!(decode(&sealed(&one_instance_body(&tagged), 1, 1)).is_err());
    let mut text = Vec::new();
    put_bytes(&mut text, br#"{"a":1}"#);
    assert!(decode(&sealed_as(1, &one_instance_body(&text), 1, 1)).is_err());
    // A format this build does not know is refused by the header.
    let v3 = sealed_as(3, &one_instance_body(&text), 1, 1);
    assert_eq!(
        decode(&v3).unwrap_err(),
        SnapshotError::UnsupportedVersion(3)
    );
}

#[test]
fn a_format_2_context_that_is_not_json_is_rejected() {
    for bad in [&b"{\"a\":"[..], b"", b"nul", b"{} {}", b"\xff"] {
        let mut ctx = Vec::new();
        put_bytes(&mut ctx, bad);
        let err = decode(&sealed(&one_instance_body(&ctx), 1, 1)).unwrap_err();
        assert!(
            err.to_string().contains("context is not JSON"),
            "{bad:?}: {err}"
        );
    }
    let mut ok = Vec::new();
    put_bytes(&mut ok, br#"{"a":[1,{"b":null}]}"#);
    assert!(decode(&sealed(&one_instance_body(&ok), 1, 1)).is_ok());
}

#[test]
fn a_machine_whose_checksum_disagrees_is_rejected() {
    let def = machine("m", 1);
    let mut body = vec![TAG_MACHINE];
    put_str(&mut body, "m");
    put_uv(&mut body, 1);
    put_str(&mut body, "00000000");
    put_bytes(&mut body, &canonical::to_vec(&def.normalized_value()));
    body.push(TAG_END);
    let err = decode(&sealed(&body, 1, 0)).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
}

/// CPU seconds this thread has used (load on the machine does not count).
fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn timed<T>(label: &str, f: impl FnOnce() -> T) -> T {
    let (wall, cpu) = (std::time::Instant::now(), thread_cpu_s());
    let out = f();
    println!(
        "  {label:<44} wall {:>6.3} s   cpu {:>6.3} s",
        wall.elapsed().as_secs_f64(),
        thread_cpu_s() - cpu
    );
    out
}

/// Run with `cargo test --release -p shards --lib snapshot::codec -- --ignored --nocapture`.
#[test]
#[ignore]
fn one_million_instances_encode_and_decode_in_seconds() {
    let m = machine("order", 1);
    let n = 1_000_000u64;
    let data = SnapshotData {
        shard: 0,
        covered_offset: 1,
        last_tick: 1,
        entries: 1,
        machines: vec![m.clone()],
        instances: (0..n)
            .map(|i| {
                let mut inst = instance(&m, i);
                inst.ctx =
                    json!({"amount": i, "customer": format!("c-{}", i % 977), "ok": true}).into();
                inst.creation = None;
                (format!("order-{i:08}"), inst)
            })
            .collect(),
    };
    println!("1,000,000 instances, ctx of 3 keys, last_event_id set:");
    let bytes = timed("encode (SnapshotData)", || encode(&data));
    // Recovery's path, into memory the process has not touched yet
    // (`data` is still alive), as at start-up.
    let (state, _) = timed("decode_state (straight into ShardState)", || {
        decode_state(&bytes, false).unwrap()
    });
    assert_eq!(state.instances.len() as u64, n);
    assert_eq!(state.active_instances, n);
    drop(state);
    let back = timed("decode (SnapshotData)", || decode(&bytes).unwrap());
    let state = timed("into_state", || back.into_state(false));
    assert_eq!(state.instances.len() as u64, n);
    let again = timed("encode_state (from the live ShardState)", || {
        encode_state(&state, ONE)
    });
    assert_eq!(again.len(), bytes.len());
    let from = timed("from_state (copy of the state)", || {
        SnapshotData::from_state(&state, ONE)
    });
    assert_eq!(from.instances.len() as u64, n);
    drop(from);
    let dir = tempfile::tempdir().unwrap();
    timed("write_snapshot (file + fsync + rename)", || {
        crate::snapshot::store::write_snapshot(&crate::env::os::OsStorage, dir.path(), &bytes)
            .unwrap()
    });
    let loaded = timed("load_newest (read + decode)", || {
        crate::snapshot::store::load_newest(&crate::env::os::OsStorage, dir.path()).unwrap()
    });
    assert_eq!(loaded.unwrap().0.data.instances.len() as u64, n);
    println!(
        "  file {} bytes, {:.1} bytes/instance",
        bytes.len(),
        bytes.len() as f64 / n as f64
    );
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<u64>().prop_map(|n| json!(n)),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

prop_compose! {
    fn arb_instance(defs: Vec<Arc<MachineDef>>)(
        which in 0..defs.len(),
        state in prop_oneof![Just("new"), Just("paid"), Just("shipped")],
        ctx in arb_value(),
        last_event_id in proptest::option::of(".{0,10}"),
        offsets in any::<(u64, u64, u64)>(),
        deleted in proptest::option::of(any::<u64>()),
        creation in proptest::option::of((".{0,8}", any::<u64>())),
        keys in proptest::collection::vec((".{0,6}", any::<u64>(), arb_value()), 0..5),
    ) -> Instance {
        let mut inst = Instance {
            machine: defs[which].clone(),
            state: state.into(),
            ctx: ctx.into(),
            last_event_id,
            last_wal_offset: offsets.0,
            created_at_ms: offsets.1,
            updated_at_ms: offsets.2,
            deleted_at_offset: deleted,
            creation: creation.map(|(k, o)| Box::new(Creation {
                idempotency_key: k,
                initial_state: "new".into(),
                wal_offset: o,
            })),
            applied_keys: None,
        };
        for (k, o, ctx) in keys {
            inst.remember_apply(&k, CachedApply {
                from_state: "new".into(),
                to_state: "paid".into(),
                ctx_json: canonical::to_vec(&ctx),
                wal_offset: o,
            });
        }
        inst
    }
}

proptest! {
    #[test]
    fn generated_states_round_trip(
        shard in 0usize..64,
        covered in any::<u64>(),
        tick in any::<u64>(),
        instances in proptest::collection::vec(
            (".{0,12}", arb_instance(vec![machine("a", 1), machine("b", 7)])), 0..12),
    ) {
        let machines: Vec<Arc<MachineDef>> = {
            let mut seen: Vec<Arc<MachineDef>> = Vec::new();
            for (_, i) in &instances {
                if !seen.iter().any(|m| Arc::ptr_eq(m, &i.machine)) {
                    seen.push(i.machine.clone());
                }
            }
            seen
        };
        let data = SnapshotData { shard, covered_offset: covered, last_tick: tick, entries: tick, machines, instances };
        let back = decode(&encode(&data)).unwrap();
        assert_same(&data, &back);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn arbitrary_sealed_bodies_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..400),
        machines in 0u32..4,
        instances in 0u64..4,
    ) {
        let _ = decode(&sealed(&body, machines, instances));
        let _ = decode(&sealed_as(SNAPSHOT_FORMAT_VERSION_TAGGED_CTX, &body, machines, instances));
    }

    #[test]
    fn mutated_snapshots_never_panic(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        // Mutate the body and re-seal it: only the structural checks stand.
        let bytes = encode(&sample());
        let mut body = bytes[SNAPSHOT_HEADER_BYTES..].to_vec();
        for (at, x) in flips {
            let i = at % body.len();
            body[i] ^= x;
        }
        let h = decode_header(&bytes).unwrap();
        let _ = decode(&sealed(&body, h.machines, h.instances));
    }
}
