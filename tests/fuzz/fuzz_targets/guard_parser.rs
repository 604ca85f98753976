//! Fuzz the guard language: parse arbitrary text; when it compiles,
//! evaluate it against an arbitrary context (the bytes after the first NUL,
//! as JSON when they parse) and a few fixed ones. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use shards::machine::guard;

fuzz_target!(|data: &[u8]| {
    let (text, ctx_bytes) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let Ok(g) = guard::parse(text) else {
        return;
    };
    let ctx: Value = serde_json::from_slice(ctx_bytes).unwrap_or(Value::Null);
    let _ = g.eval(&ctx);
    for fixed in [
        json!({}),
        json!({"a": 1, "b": "x", "c": true, "d": null, "e": 1.5, "f": [1], "g": {"h": -2}}),
        json!([1, 2]),
        json!("s"),
    ] {
        let _ = g.eval(&fixed);
    }
    assert_eq!(g.source(), text);
});
