//! Fuzz the snapshot decoder. Arbitrary bytes rarely pass the checksums, so
//! half the inputs are instead XORed into the body of a real snapshot and
//! re-sealed (header and body checksums recomputed): that reaches the
//! structural checks behind the checksums. Never a panic.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use shards::instance::{CachedApply, Creation, Instance};
use shards::machine::definition::parse_definition;
use shards::snapshot::codec::{decode, decode_header, decode_state, encode, SNAPSHOT_HEADER_BYTES};
use shards::snapshot::SnapshotData;

/// A small but complete snapshot: two machines, an instance with every
/// optional part, a deleted one.
fn seed() -> &'static Vec<u8> {
    static SEED: OnceLock<Vec<u8>> = OnceLock::new();
    SEED.get_or_init(|| {
        let def = Arc::new(
            parse_definition(
                "order",
                1,
                &json!({"states":["new","paid"],"initial":"new","transitions":[
                    {"from":"new","event":"PAY","to":"paid","guard":"ctx.n > 1 && !ctx.hold"}],
                    "meta":{"k":[1,2.5,"x"]}}),
            )
            .expect("valid definition"),
        );
        let other = Arc::new(
            parse_definition(
                "door",
                3,
                &json!({"states":["o"],"initial":"o","transitions":[]}),
            )
            .expect("valid definition"),
        );
        let mut full = Instance {
            machine: def.clone(),
            state: "paid".into(),
            ctx: json!({"n": 5, "neg": -3, "f": 0.25, "s": "t", "a": [null, true, {"x": false}]}),
            last_event_id: Some("e1".into()),
            last_wal_offset: 130,
            created_at_ms: 1,
            updated_at_ms: 2,
            deleted_at_offset: None,
            creation: Some(Box::new(Creation {
                idempotency_key: "c".into(),
                initial_state: "new".into(),
                wal_offset: 66,
            })),
            applied_keys: None,
        };
        full.remember_apply(
            "k",
            CachedApply {
                from_state: "new".into(),
                to_state: "paid".into(),
                ctx_json: b"{\"n\":5}".to_vec(),
                wal_offset: 130,
            },
        );
        let deleted = Instance {
            machine: other.clone(),
            state: "o".into(),
            ctx: serde_json::Value::Null,
            last_event_id: None,
            last_wal_offset: 194,
            created_at_ms: 3,
            updated_at_ms: 4,
            deleted_at_offset: Some(194),
            creation: None,
            applied_keys: None,
        };
        encode(&SnapshotData {
            shard: 2,
            covered_offset: 194,
            last_tick: 3,
            entries: 5,
            machines: vec![def, other],
            instances: vec![("a".into(), full), ("b".into(), deleted)],
        })
    })
}

/// Recompute both checksums of a file image (layout: snapshot/codec/mod.rs).
fn reseal(image: &mut [u8]) {
    let body_crc = crc32c::crc32c(&image[SNAPSHOT_HEADER_BYTES..]);
    image[40..44].copy_from_slice(&body_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&image[12..SNAPSHOT_HEADER_BYTES]);
    image[8..12].copy_from_slice(&header_crc.to_le_bytes());
}

fn check(image: &[u8]) {
    let header = decode_header(image);
    if let Ok(data) = decode(image) {
        let header = header.expect("a decodable image has a valid header");
        assert_eq!(data.covered_offset, header.covered_offset);
        assert_eq!(data.instances.len() as u64, header.instances);
        // What decodes re-encodes to something that decodes again.
        let again = decode(&encode(&data)).expect("re-encoded snapshot decodes");
        assert_eq!(again.instances.len(), data.instances.len());
    }
    let _ = decode_state(image, false);
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    if control & 1 == 0 {
        check(rest);
        return;
    }
    let mut image = seed().clone();
    let body_len = image.len() - SNAPSHOT_HEADER_BYTES;
    for (i, &b) in rest.iter().enumerate() {
        image[SNAPSHOT_HEADER_BYTES + i % body_len] ^= b;
    }
    // Sometimes also cut or extend the body, keeping the header's length honest.
    if control & 2 != 0 && !rest.is_empty() {
        let new_len = SNAPSHOT_HEADER_BYTES + (rest[0] as usize * 7) % (body_len + 16);
        image.resize(new_len, rest[rest.len() - 1]);
        let body = (new_len - SNAPSHOT_HEADER_BYTES) as u64;
        image[32..40].copy_from_slice(&body.to_le_bytes());
    }
    if control & 4 != 0 && rest.len() >= 2 {
        // Let the header counts be fuzzed too.
        image[44] ^= rest[0] & 3;
        image[48] ^= rest[1] & 3;
    }
    reseal(&mut image);
    check(&image);
});
