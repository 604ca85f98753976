//! Request envelopes (spec §2.1), parsed with simd-json in place.
//!
//! Unlike rstmdb 0.3, which closes the connection on any envelope problem, a
//! well-framed request with bad JSON, a missing or unknown `op` or a bad `id`
//! is answered with `BAD_REQUEST` (echoing the id when it can be read) and
//! the connection stays usable (spec §15 row 4).

use serde_json::Value;
use shards::json::canonical;
use shards::EngineError;

use super::op::Op;

/// Deepest JSON nesting accepted in a request; deeper documents are refused
/// before anything recursive (guards, canonical writer) touches them.
pub const REQUEST_JSON_DEPTH_MAX: usize = 128;

pub struct Request {
    /// The `id` as JSON, ready to be echoed verbatim.
    pub id_json: Vec<u8>,
    pub op: Op,
    pub params: Value,
}

/// A request that cannot be executed, with the id to answer it under.
pub struct BadEnvelope {
    pub id_json: Vec<u8>,
    pub error: EngineError,
}

const NULL_ID: &[u8] = b"null";

/// True when the JSON text nests arrays/objects deeper than `limit`. A
/// single pass that skips strings; run before parsing, because parsing into a
/// tree recurses once per level and a hostile document could exhaust the
/// stack.
fn nesting_exceeds(text: &[u8], limit: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in text {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Echo form of an id: strings and numbers verbatim, anything else unusable.
fn id_json(v: Option<&Value>) -> Option<Vec<u8>> {
    match v? {
        v @ (Value::String(_) | Value::Number(_)) => {
            let mut out = Vec::new();
            canonical::write_value(&mut out, v);
            Some(out)
        }
        _ => None,
    }
}

/// Parse one request payload. `payload` is scratch: simd-json parses in place.
pub fn parse_request(payload: &mut [u8]) -> Result<Request, BadEnvelope> {
    let bad = |id_json: Vec<u8>, detail: String| BadEnvelope {
        id_json,
        error: EngineError::bad_request(detail),
    };
    if nesting_exceeds(payload, REQUEST_JSON_DEPTH_MAX) {
        return Err(bad(
            NULL_ID.to_vec(),
            format!("JSON nesting deeper than {REQUEST_JSON_DEPTH_MAX} levels"),
        ));
    }
    let value: Value = match simd_json::serde::from_slice(payload) {
        Ok(v) => v,
        Err(e) => return Err(bad(NULL_ID.to_vec(), format!("malformed JSON: {e}"))),
    };
    let Value::Object(mut obj) = value else {
        return Err(bad(
            NULL_ID.to_vec(),
            "request must be a JSON object".into(),
        ));
    };
    let id = id_json(obj.get("id"));
    let echo = id.clone().unwrap_or_else(|| NULL_ID.to_vec());
    match obj.get("type") {
        Some(Value::String(_)) => {}
        Some(_) => {
            return Err(bad(
                echo,
                "invalid type for `type`, expected a string".into(),
            ))
        }
        None => return Err(bad(echo, "missing field `type`".into())),
    }
    let Some(id_json) = id else {
        let detail = if obj.contains_key("id") {
            "invalid type for `id`, expected a string"
        } else {
            "missing field `id`"
        };
        return Err(bad(NULL_ID.to_vec(), detail.into()));
    };
    let op = match obj.get("op") {
        Some(Value::String(name)) => match Op::from_name(name) {
            Some(op) => op,
            None => return Err(bad(id_json, format!("unknown op `{name}`"))),
        },
        Some(_) => {
            return Err(bad(
                id_json,
                "invalid type for `op`, expected a string".into(),
            ))
        }
        None => return Err(bad(id_json, "missing field `op`".into())),
    };
    let params = obj.remove("params").unwrap_or(Value::Null);
    Ok(Request {
        id_json,
        op,
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Request, BadEnvelope> {
        let mut bytes = s.as_bytes().to_vec();
        parse_request(&mut bytes)
    }

    #[test]
    fn parses_a_request() {
        let r = parse(
            r#"{"type":"request","id":"7","op":"GET_INSTANCE","params":{"instance_id":"o"}}"#,
        )
        .ok()
        .unwrap();
        assert_eq!(r.id_json, br#""7""#);
        assert_eq!(r.op, Op::GetInstance);
        assert_eq!(r.params["instance_id"], "o");
    }

    #[test]
    fn absent_params_are_null_and_type_value_is_not_checked() {
        let r = parse(r#"{"type":"foo","id":"","op":"PING"}"#).ok().unwrap();
        assert_eq!(r.params, Value::Null);
        assert_eq!(r.id_json, br#""""#);
    }

    #[test]
    fn problems_are_bad_requests_that_echo_the_id() {
        let e = parse(r#"{"type":"request","id":"9","op":"NOPE"}"#)
            .err()
            .unwrap();
        assert_eq!(e.id_json, br#""9""#);
        assert_eq!(e.error.code, shards::ErrorCode::BadRequest);
        assert!(e.error.message.contains("unknown op"));
        let e = parse(r#"{"type":"request","id":"9","op":"ping"}"#)
            .err()
            .unwrap();
        assert!(e.error.message.contains("unknown op"));
        let e = parse(r#"{"type":"request","id":5,"op":7}"#).err().unwrap();
        assert_eq!(e.id_json, b"5");
        let e = parse(r#"{"type":"request","id":"1","op":"PING"} x"#)
            .err()
            .unwrap();
        assert_eq!(e.id_json, b"null");
        let e = parse("not json").err().unwrap();
        assert_eq!(e.id_json, b"null");
        let e = parse(r#"{"id":"1","op":"PING"}"#).err().unwrap();
        assert!(e.error.message.contains("missing field `type`"));
    }

    #[test]
    fn nesting_scan_skips_strings() {
        assert!(!nesting_exceeds(br#"{"a":"[[[[[[","b":"\"[[["}"#, 2));
        assert!(nesting_exceeds(b"[[[", 2));
        assert!(!nesting_exceeds(b"[[]]", 2));
    }

    #[test]
    fn hostile_nesting_is_refused() {
        let deep = format!(
            r#"{{"type":"request","id":"1","op":"PING","params":{}{}}}"#,
            "[".repeat(200_000),
            "]".repeat(200_000)
        );
        assert!(parse(&deep).is_err());
    }
}
