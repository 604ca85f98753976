//! Fuzz the WAL entry decoder, `Entry::decode`: on arbitrary bytes, and on
//! entries in the writer's own layout with the input XORed into them — the
//! ground of the hand scanner (`shards::wal::entry_scan`), which reads that
//! layout and hands anything else to serde. Never a panic; whatever the
//! decoder returns for an apply or a create, serde reads the same entry
//! from the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shards::wal::entry::{
    write_apply_event, write_create_instance, ApplyEventEntry, ApplyFields, CreateFields,
    CreateInstanceEntry, Entry,
};

/// Where the input's bytes start to be XORed into a written entry, from
/// the first byte: spread over an entry's length.
const XOR_START_STEP_BYTES: usize = 7;

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let payload = match control % 3 {
        0 => rest.to_vec(),
        kind => {
            let mut out = written(kind == 1, rest);
            let start = (control as usize / 3) * XOR_START_STEP_BYTES;
            for (i, b) in rest.iter().enumerate() {
                let at = (start + i) % out.len();
                out[at] ^= b;
            }
            out
        }
    };
    let Ok(entry) = Entry::decode(&payload) else {
        return;
    };
    match entry {
        Entry::ApplyEvent(apply) => {
            let serde: Result<ApplyEventEntry, _> = serde_json::from_slice(&payload);
            assert_eq!(serde.ok(), Some(apply), "an apply decoded unlike serde");
        }
        Entry::CreateInstance(create) => {
            let serde: Result<CreateInstanceEntry, _> = serde_json::from_slice(&payload);
            assert_eq!(serde.ok(), Some(create), "a create decoded unlike serde");
        }
        Entry::PutMachine(_) | Entry::DeleteInstance(_) => {}
    }
});

/// An apply (or a create) as the writer lays it out, its optional fields
/// present or not by the input's length.
fn written(apply: bool, rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let key = (rest.len() % 2 == 0).then_some("k-1");
    if apply {
        write_apply_event(
            &mut out,
            &ApplyFields {
                instance_id: "order-1",
                machine: "m",
                version: 3,
                event: "PAY",
                from_state: "created",
                to_state: "paid",
                payload_json: br#"{"amount":10,"tags":["a","b\"c"]}"#,
                ctx_json: br#"{"n":-1.5e3,"ok":true,"s":"\u00e9x","z":null}"#,
                event_id: (rest.len() % 3 == 0).then_some("e-9"),
                idempotency_key: key,
            },
        );
    } else {
        write_create_instance(
            &mut out,
            &CreateFields {
                instance_id: "order-1",
                machine: "m",
                version: 3,
                initial_state: "created",
                initial_ctx_json: br#"{"a":[1,2,{"b":""}]}"#,
                idempotency_key: key,
            },
        );
    }
    out
}
