use proptest::prelude::*;
use serde_json::{json, Value};

use super::{decode_written, plain_run};
use crate::wal::entry::{
    write_apply_event, write_create_instance, ApplyFields, CreateFields, Entry,
};

/// serde's decoding of the entry (the path `decode_written` stands in for).
fn through_serde(payload: &[u8]) -> Result<Entry, String> {
    match kind_of(payload) {
        b"apply_event" => serde_json::from_slice(payload).map(Entry::ApplyEvent),
        _ => serde_json::from_slice(payload).map(Entry::CreateInstance),
    }
    .map_err(|e| e.to_string())
}

fn kind_of(payload: &[u8]) -> &'static [u8] {
    if payload.starts_with(br#"{"type":"apply_event""#) {
        b"apply_event"
    } else {
        b"create_instance"
    }
}

fn apply(ctx: &[u8], payload: &[u8], event_id: Option<&str>, key: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    write_apply_event(
        &mut out,
        &ApplyFields {
            instance_id: "order-1",
            machine: "m",
            version: 7,
            event: "PAY",
            from_state: "created",
            to_state: "paid",
            payload_json: payload,
            ctx_json: ctx,
            event_id,
            idempotency_key: key,
        },
    );
    out
}

#[test]
fn the_written_layout_decodes_as_serde_decodes_it() {
    let cases = [
        apply(
            br#"{"a":[1,2.5,-3e4,true,null],"b":"x\"y\u00e9"}"#,
            b"null",
            None,
            None,
        ),
        apply(b"{}", br#"{"amount": 10}"#, Some("e1"), Some("k1")),
        apply(br#""just text""#, b"[]", None, Some("k")),
    ];
    for payload in cases {
        let fast = decode_written(b"apply_event", &payload).expect("the written layout");
        assert_eq!(fast, through_serde(&payload).unwrap());
    }
    let Some(Entry::ApplyEvent(e)) =
        decode_written(b"apply_event", &apply(b"{}", b"null", None, None))
    else {
        panic!("an apply");
    };
    assert!(
        e.payload.is_none(),
        "a null payload is no payload, as serde has it"
    );
    let mut create = Vec::new();
    write_create_instance(
        &mut create,
        &CreateFields {
            instance_id: "i",
            machine: "m",
            version: 0,
            initial_state: "a",
            initial_ctx_json: br#"{"n":1}"#,
            idempotency_key: Some("k"),
        },
    );
    let fast = decode_written(b"create_instance", &create).expect("the written layout");
    assert_eq!(fast, through_serde(&create).unwrap());
}

#[test]
fn anything_off_the_written_layout_is_left_to_serde() {
    let base = apply(br#"{"n":1}"#, b"null", None, None);
    let text = String::from_utf8(base.clone()).unwrap();
    let off = [
        text.replace(
            r#""instance_id":"order-1""#,
            r#""instance_id":"ord\u0065r-1""#,
        ),
        text.replace(r#""version":7"#, r#""version":07"#),
        text.replace(r#""version":7"#, r#""version":7.0"#),
        text.replace(r#""ctx":{"n":1}"#, r#""ctx": {"n":1}"#),
        text.replace(r#""ctx":{"n":1}"#, r#""ctx":{"n":"\ud800"}"#),
        text.replace(r#""ctx":{"n":1}"#, r#""ctx":{"n":01}"#),
        text.replace(r#""ctx":{"n":1}"#, r#""ctx":{"n":1,}"#),
        format!("{text} "),
        text.replace(r#""to_state":"paid","#, ""),
    ];
    for payload in off {
        assert!(
            decode_written(b"apply_event", payload.as_bytes()).is_none(),
            "{payload}"
        );
    }
    let deep = format!("{}1{}", "[".repeat(120), "]".repeat(120));
    let payload = text.replace(r#""ctx":{"n":1}"#, &format!(r#""ctx":{deep}"#));
    assert!(decode_written(b"apply_event", payload.as_bytes()).is_none());
}

fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn name() -> impl Strategy<Value = String> {
    // Mostly plain names (the fast path's case), sometimes anything.
    prop_oneof![3 => "[a-zA-Z0-9_.:-]{0,12}", 1 => any::<String>()]
}

prop_compose! {
    fn any_entry()(
        create in any::<bool>(),
        id in name(), machine in name(), version in any::<u32>(),
        event in name(), from in name(), to in name(),
        ctx in any_value(), payload in any_value(), pretty in any::<bool>(),
        event_id in prop::option::of(name()), key in prop::option::of(name()),
    ) -> Vec<u8> {
        let ctx = crate::json::canonical::to_vec(&ctx);
        let payload = if pretty {
            serde_json::to_vec_pretty(&payload).unwrap()
        } else {
            serde_json::to_vec(&payload).unwrap()
        };
        let mut out = Vec::new();
        if create {
            write_create_instance(&mut out, &CreateFields {
                instance_id: &id, machine: &machine, version, initial_state: &from,
                initial_ctx_json: &ctx, idempotency_key: key.as_deref(),
            });
        } else {
            write_apply_event(&mut out, &ApplyFields {
                instance_id: &id, machine: &machine, version, event: &event,
                from_state: &from, to_state: &to, payload_json: &payload, ctx_json: &ctx,
                event_id: event_id.as_deref(), idempotency_key: key.as_deref(),
            });
        }
        out
    }
}

proptest! {
    #[test]
    fn the_word_at_a_time_run_stops_where_the_byte_at_a_time_one_does(
        b in prop::collection::vec(prop_oneof![4 => 0x20u8..0x7f, 1 => any::<u8>()], 0..40),
    ) {
        let naive = b.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20).unwrap_or(b.len());
        prop_assert_eq!(plain_run(&b), naive);
    }

    #[test]
    fn what_the_scan_accepts_serde_decodes_to_the_same_entry(payload in any_entry()) {
        let serde = through_serde(&payload);
        prop_assert!(serde.is_ok(), "{serde:?}");
        if let Some(fast) = decode_written(kind_of(&payload), &payload) {
            prop_assert_eq!(fast, serde.unwrap());
        }
    }

    #[test]
    fn a_mutated_entry_the_scan_accepts_serde_accepts_alike(
        payload in any_entry(),
        at in any::<prop::sample::Index>(),
        byte in prop::sample::select(b" \"\\{}[],:0123456789-+.eEtrufalsn\x01\xff".to_vec()),
        how in 0..3u8,
    ) {
        let mut m = payload.clone();
        let i = at.index(m.len());
        match how {
            0 => m[i] = byte,
            1 => m.insert(i, byte),
            _ => { m.remove(i); }
        }
        if let Some(fast) = decode_written(kind_of(&m), &m) {
            let serde = through_serde(&m);
            prop_assert!(serde.is_ok(), "scan accepted what serde refuses: {:?}", String::from_utf8_lossy(&m));
            prop_assert_eq!(fast, serde.unwrap());
        }
    }
}

#[test]
fn plain_generated_entries_take_the_scan() {
    // The property above must not pass by never taking the fast path.
    let mut taken = 0;
    for n in 0..50u32 {
        let ctx =
            serde_json::to_vec(&json!({"n": n, "s": format!("é{n}\n"), "l": [n, -1.5]})).unwrap();
        let payload = apply(&ctx, b"null", Some("e"), None);
        if let Some(fast) = decode_written(b"apply_event", &payload) {
            assert_eq!(fast, through_serde(&payload).unwrap());
            taken += 1;
        }
    }
    assert_eq!(taken, 50);
}
