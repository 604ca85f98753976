//! The canonical JSON writer: the one place that turns a `serde_json::Value`
//! into the bytes the server emits (docs/PROTOCOL.md §1.10) and the bytes a machine
//! checksum covers (§5.5).
//!
//! Canonical means: compact, every object's keys sorted ascending by byte
//! value at write time, the 0.3 string escapes, and the 0.3 float layout.
//! Sorting happens here rather than being trusted to `serde_json::Map`,
//! because another crate in the build may switch on serde_json's
//! `preserve_order` feature and silently turn the map into insertion order.
//!
//! Nesting depth is whatever the `Value` has: callers bound it when they
//! parse input (serde_json's parser stops at 128 levels).

use serde_json::{Map, Number, Value};

/// Serialise `v` canonically into a fresh buffer.
pub fn to_vec(v: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write_value(&mut out, v);
    out
}

/// Append the canonical serialisation of `v` to `out`.
pub fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(out, map),
    }
}

/// Objects come out sorted by key bytes. Without `preserve_order` the map is a
/// `BTreeMap<String, _>`, whose order is already byte order, so the common
/// case is one pass of comparisons and no allocation.
fn write_object(out: &mut Vec<u8>, map: &Map<String, Value>) {
    out.push(b'{');
    if keys_are_sorted(map) {
        for (i, (key, value)) in map.iter().enumerate() {
            write_member(out, i, key, value);
        }
    } else {
        let mut members: Vec<(&String, &Value)> = map.iter().collect();
        // Keys of one map are unique, so an unstable sort is deterministic.
        members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (i, (key, value)) in members.into_iter().enumerate() {
            write_member(out, i, key, value);
        }
    }
    out.push(b'}');
}

fn keys_are_sorted(map: &Map<String, Value>) -> bool {
    let mut keys = map.keys();
    let Some(mut previous) = keys.next() else {
        return true;
    };
    for key in keys {
        if previous.as_bytes() > key.as_bytes() {
            return false;
        }
        previous = key;
    }
    true
}

fn write_member(out: &mut Vec<u8>, index: usize, key: &str, value: &Value) {
    if index > 0 {
        out.push(b',');
    }
    write_str(out, key);
    out.push(b':');
    write_value(out, value);
}

/// What each byte becomes inside a string literal: `0` = copied as is,
/// `b'u'` = `\u00xx`, anything else = a backslash followed by that byte.
/// Bytes ≥ 0x80 are parts of UTF-8 sequences and are written raw.
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0A] = b'n';
    table[0x0C] = b'f';
    table[0x0D] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";

/// Append `s` as a quoted JSON string with the §1.10 escapes. Runs of bytes
/// that need no escaping are copied in one go.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut run_start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        let escape = ESCAPE[byte as usize];
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[run_start..i]);
        run_start = i + 1;
        if escape == b'u' {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX_LOWER[(byte >> 4) as usize],
                HEX_LOWER[(byte & 0x0F) as usize],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', escape]);
        }
    }
    out.extend_from_slice(&bytes[run_start..]);
    out.push(b'"');
}

fn write_number(out: &mut Vec<u8>, n: &Number) {
    // Integers first: serde_json keeps every integer that fits u64 or i64 as
    // an integer, and only those must be written without a fraction.
    if let Some(u) = n.as_u64() {
        write_u64(out, u);
    } else if let Some(i) = n.as_i64() {
        // as_u64 failed, so i is negative.
        out.push(b'-');
        write_u64(out, i.unsigned_abs());
    } else if let Some(x) = n.as_f64() {
        write_f64(out, x);
    } else {
        // Unreachable with serde_json's number kinds; null keeps output valid.
        out.extend_from_slice(b"null");
    }
}

/// Append `u` in decimal, with no allocation (it is on every answer's path).
pub fn write_u64(out: &mut Vec<u8>, mut u: u64) {
    // u64::MAX has 20 decimal digits.
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (u % 10) as u8;
        u /= 10;
        if u == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// Append a float in the §1.10 layout: shortest round-trip digits, plain
/// decimal for 1e-5 ≤ |x| < 1e16 (integral values keep `.0`), exponent form
/// with an explicit sign otherwise (`1e+16`, `1.5e-7`), `-0.0` kept.
///
/// Ryū's own layout uses exactly these thresholds; the only difference from
/// 0.3 is that Ryū omits the `+` of a positive exponent, so it is added here.
/// Non-finite values cannot be represented in JSON and are written as `null`.
pub fn write_f64(out: &mut Vec<u8>, x: f64) {
    if !x.is_finite() {
        out.extend_from_slice(b"null");
        return;
    }
    let mut buffer = ryu::Buffer::new();
    let text = buffer.format_finite(x).as_bytes();
    match text.iter().position(|&b| b == b'e') {
        Some(e) if text.get(e + 1) != Some(&b'-') => {
            out.extend_from_slice(&text[..=e]);
            out.push(b'+');
            out.extend_from_slice(&text[e + 1..]);
        }
        _ => out.extend_from_slice(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn str_bytes(s: &str) -> String {
        let mut out = Vec::new();
        write_str(&mut out, s);
        String::from_utf8(out).expect("writer emits UTF-8")
    }

    fn float_text(x: f64) -> String {
        let mut out = Vec::new();
        write_f64(&mut out, x);
        String::from_utf8(out).expect("writer emits UTF-8")
    }

    fn canonical(v: &Value) -> String {
        String::from_utf8(to_vec(v)).expect("writer emits UTF-8")
    }

    #[test]
    fn strings_use_the_short_escapes() {
        assert_eq!(str_bytes("\""), r#""\"""#);
        assert_eq!(str_bytes("\\"), r#""\\""#);
        assert_eq!(str_bytes("\n"), r#""\n""#);
        assert_eq!(str_bytes("\r"), r#""\r""#);
        assert_eq!(str_bytes("\t"), r#""\t""#);
        assert_eq!(str_bytes("\u{8}"), r#""\b""#);
        assert_eq!(str_bytes("\u{c}"), r#""\f""#);
    }

    #[test]
    fn other_control_characters_use_lower_case_unicode_escapes() {
        assert_eq!(str_bytes("\u{0}"), r#""\u0000""#);
        assert_eq!(str_bytes("\u{1}"), r#""\u0001""#);
        assert_eq!(str_bytes("\u{1b}"), r#""\u001b""#);
        assert_eq!(str_bytes("\u{1f}"), r#""\u001f""#);
        // DEL is not a JSON control character.
        assert_eq!(str_bytes("\u{7f}"), "\"\u{7f}\"");
    }

    #[test]
    fn slash_and_non_ascii_are_written_raw() {
        assert_eq!(str_bytes("a/b"), r#""a/b""#);
        assert_eq!(str_bytes("é€😀"), "\"é€😀\"");
        assert_eq!(str_bytes(""), r#""""#);
        assert_eq!(str_bytes("ab\ncd\"ef"), r#""ab\ncd\"ef""#);
    }

    #[test]
    fn object_keys_are_sorted_by_byte_value_at_every_level() {
        let mut inner = Map::new();
        inner.insert("z".into(), json!(1));
        inner.insert("B".into(), json!(2));
        inner.insert("a".into(), json!(3));
        let mut outer = Map::new();
        outer.insert("é".into(), json!(null));
        outer.insert("b".into(), Value::Array(vec![Value::Object(inner)]));
        outer.insert("a".into(), json!({}));
        assert_eq!(
            canonical(&Value::Object(outer)),
            r#"{"a":{},"b":[{"B":2,"a":3,"z":1}],"é":null}"#
        );
    }

    #[test]
    fn scalars_and_containers_are_compact() {
        assert_eq!(canonical(&json!(null)), "null");
        assert_eq!(canonical(&json!(true)), "true");
        assert_eq!(canonical(&json!(false)), "false");
        assert_eq!(canonical(&json!([])), "[]");
        assert_eq!(canonical(&json!([1, "x", [null]])), r#"[1,"x",[null]]"#);
    }

    #[test]
    fn integers_stay_integers_over_the_full_u64_and_i64_range() {
        assert_eq!(canonical(&json!(0)), "0");
        assert_eq!(canonical(&json!(u64::MAX)), "18446744073709551615");
        assert_eq!(canonical(&json!(i64::MIN)), "-9223372036854775808");
        assert_eq!(canonical(&json!(-1)), "-1");
    }

    #[test]
    fn floats_follow_the_0_3_layout() {
        let table: &[(f64, &str)] = &[
            (100.0, "100.0"),
            (1.0, "1.0"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.5, "1.5"),
            (-2.25, "-2.25"),
            (0.1, "0.1"),
            (1e15, "1000000000000000.0"),
            (9999999999999998.0, "9999999999999998.0"),
            (1e16, "1e+16"),
            (-1e16, "-1e+16"),
            (1e20, "1e+20"),
            (1.5e300, "1.5e+300"),
            (1e-5, "0.00001"),
            (1.5e-5, "0.000015"),
            (9.99e-6, "9.99e-6"),
            (1e-6, "1e-6"),
            (1.5e-7, "1.5e-7"),
            (-1.5e-7, "-1.5e-7"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
        ];
        for &(x, expected) in table {
            assert_eq!(float_text(x), expected, "formatting {x:e}");
        }
    }

    #[test]
    fn shortest_digits_round_trip_where_serde_json_rounds_off() {
        // serde_json without `float_roundtrip` reads this text 1 ulp off; the
        // digits we write are still the exact shortest representation.
        let x = f64::from_bits(15494449318868066051);
        assert_eq!(
            float_text(x).parse::<f64>().map(f64::to_bits),
            Ok(x.to_bits())
        );
    }

    #[test]
    fn non_finite_floats_become_null() {
        assert_eq!(float_text(f64::NAN), "null");
        assert_eq!(float_text(f64::INFINITY), "null");
        assert_eq!(float_text(f64::NEG_INFINITY), "null");
    }

    #[test]
    fn appendix_a_meta_vector() {
        let input = r#"{"b":"é/\n\"\u0001","a":1e20,"c":1.5e-7,"d":100.0,"e":-0.0,"f":12345678901234567890}"#;
        let v: Value = serde_json::from_str(input).expect("vector parses");
        assert_eq!(
            canonical(&v),
            r#"{"a":1e+20,"b":"é/\n\"\u0001","c":1.5e-7,"d":100.0,"e":-0.0,"f":12345678901234567890}"#
        );
    }

    #[test]
    fn output_parses_back_to_the_same_value() {
        let v = json!({"k": [1.25, -3, "x\u{2}y", {"b": false, "a": 1e-9}], "e": 1e300});
        let back: Value = serde_json::from_slice(&to_vec(&v)).expect("canonical output is JSON");
        assert_eq!(back, v);
    }

    proptest::proptest! {
        #[test]
        fn every_finite_float_round_trips(bits in proptest::num::u64::ANY) {
            let x = f64::from_bits(bits);
            proptest::prop_assume!(x.is_finite());
            let text = float_text(x);
            let back: f64 = text.parse().expect("float text parses");
            proptest::prop_assert_eq!(back.to_bits(), x.to_bits(), "{}", text);
            // Only std's parser is checked for exactness: serde_json without
            // its `float_roundtrip` feature may read the last digit 1 ulp off.
            let as_json: Result<Value, _> = serde_json::from_str(&text);
            proptest::prop_assert!(as_json.is_ok(), "{} is not JSON", text);
        }

        #[test]
        fn every_string_round_trips(s in proptest::prelude::any::<String>()) {
            let text = str_bytes(&s);
            let back: String = serde_json::from_str(&text).expect("string text is JSON");
            proptest::prop_assert_eq!(back, s);
        }
    }
}
