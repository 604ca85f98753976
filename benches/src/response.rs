//! Verification of every response: it answers the oldest outstanding
//! request (same id), its status is ok, and its result is sane for the
//! operation. A byte-level fast path handles the rstmdb envelope layout
//! (docs/PROTOCOL.md §1.10: `type`, `id`, `status`, `result`, result keys sorted); anything
//! it does not recognise falls through to a full JSON parse, which alone
//! decides failures — so the fast path can only skip work, never hide a
//! fault.

use memchr::memmem;
use serde_json::Value;

use crate::frame;
use crate::workload::{Expect, Templates, MACHINE_NAME, STATE_NAMES};

/// Bytes of a bad payload quoted in error messages.
pub const PREVIEW_BYTES_MAX: usize = 300;

const ENVELOPE_PREFIX: &[u8] = br#"{"type":"response","id":""#;
const ENVELOPE_OK: &[u8] = br#"","status":"ok","result":"#;

/// Why a response failed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The server answered with an error (counted by code).
    Server { code: String, message: String },
    /// Status ok, but the result does not fit the request.
    BadResult(String),
    /// Not the response to the oldest outstanding request, or not a
    /// response at all: the stream is out of step, the connection stops.
    Protocol(String),
}

impl Failure {
    /// The key under which the failure is counted.
    pub fn code(&self) -> &str {
        match self {
            Failure::Server { code, .. } => code,
            Failure::BadResult(_) => "BAD_RESULT",
            Failure::Protocol(_) => "PROTOCOL_VIOLATION",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Failure::Server { code, message } => format!("{code}: {message}"),
            Failure::BadResult(m) => format!("bad result: {m}"),
            Failure::Protocol(m) => format!("protocol violation: {m}"),
        }
    }
}

/// Checks responses for one connection; owns its scratch buffers.
pub struct Checker {
    full_parse: bool,
    id_digits: Vec<u8>,
    needle: Vec<u8>,
    /// Responses that needed the slow path (for the report).
    pub slow_path_count: u64,
}

impl Checker {
    pub fn new(full_parse: bool) -> Checker {
        Checker {
            full_parse,
            id_digits: Vec::with_capacity(20),
            needle: Vec::with_capacity(128),
            slow_path_count: 0,
        }
    }

    /// Verifies `payload` as the answer to request `id`.
    pub fn check(
        &mut self,
        payload: &[u8],
        id: u64,
        expect: Expect,
        templates: &Templates,
        create_prefix: &[u8],
    ) -> Result<(), Failure> {
        self.id_digits.clear();
        frame::push_decimal(&mut self.id_digits, id);
        if !self.full_parse && self.fast_ok(payload, expect, templates, create_prefix) {
            return Ok(());
        }
        self.slow_path_count += 1;
        let expected_id = std::str::from_utf8(&self.id_digits).unwrap_or_default();
        slow_check(payload, expected_id, expect, templates, create_prefix)
    }

    fn fast_ok(
        &mut self,
        payload: &[u8],
        expect: Expect,
        templates: &Templates,
        create_prefix: &[u8],
    ) -> bool {
        let Some(rest) = payload.strip_prefix(ENVELOPE_PREFIX) else {
            return false;
        };
        let Some(rest) = rest.strip_prefix(self.id_digits.as_slice()) else {
            return false;
        };
        let Some(result) = rest.strip_prefix(ENVELOPE_OK) else {
            return false;
        };
        let needle = &mut self.needle;
        let contains = |hay: &[u8], needle: &[u8]| memmem::find(hay, needle).is_some();
        match expect {
            Expect::CreatedListed(_) | Expect::CreatedUnique => {
                needle.clear();
                needle.extend_from_slice(br#""instance_id":""#);
                match expect {
                    Expect::CreatedListed(k) => {
                        needle.extend_from_slice(&templates.instance_ids[k as usize])
                    }
                    _ => {
                        needle.extend_from_slice(create_prefix);
                        needle.extend_from_slice(&self.id_digits);
                    }
                }
                needle.push(b'"');
                contains(result, needle) && contains(result, br#""state":"a""#)
            }
            Expect::Applied(state) => {
                needle.clear();
                needle.extend_from_slice(br#""to_state":""#);
                if let Some(s) = state {
                    needle.extend_from_slice(STATE_NAMES[s as usize].as_bytes());
                    needle.push(b'"');
                }
                result.starts_with(br#"{"applied":true,"#) && contains(result, needle)
            }
            Expect::Got(state) => {
                needle.clear();
                needle.extend_from_slice(br#""state":""#);
                if let Some(s) = state {
                    needle.extend_from_slice(STATE_NAMES[s as usize].as_bytes());
                    needle.push(b'"');
                }
                contains(result, needle) && contains(result, br#""machine":"corestate-bench""#)
            }
            Expect::Batched { ops, to_states } => fast_batch_ok(result, ops, to_states),
        }
    }
}

/// The rstmdb layout of a successful batch (`result` runs to the end of the
/// envelope): `{"results":[` then, per op,
/// `{"error":null,"result":{"applied":true,…,"to_state":"X",…},"status":"ok"}`.
/// Payloads are the harness's own (`{"d":"xxx"}`), so key names cannot
/// appear inside values.
fn fast_batch_ok(result: &[u8], ops: u8, to_states: Option<u128>) -> bool {
    const ELEMENT: &[u8] = br#"{"error":null,"result":{"applied":true,"#;
    const TO_STATE: &[u8] = br#""to_state":""#;
    const STATUS_OK: &[u8] = br#""status":"ok"}"#;
    let Some(mut rest) = result.strip_prefix(br#"{"results":["#.as_slice()) else {
        return false;
    };
    for i in 0..ops as usize {
        let Some(body) = rest.strip_prefix(ELEMENT) else {
            return false;
        };
        let Some(at) = memmem::find(body, TO_STATE) else {
            return false;
        };
        let state = &body[at + TO_STATE.len()..];
        let matches = match to_states {
            Some(bits) => {
                let name = STATE_NAMES[((bits >> i) & 1) as usize].as_bytes();
                state.starts_with(name) && state.get(name.len()) == Some(&b'"')
            }
            None => STATE_NAMES
                .iter()
                .any(|n| state.starts_with(n.as_bytes()) && state.get(n.len()) == Some(&b'"')),
        };
        let Some(end) = memmem::find(state, STATUS_OK) else {
            return false;
        };
        // The element's own status: no other element starts before it.
        if !matches || memmem::find(&state[..end], ELEMENT).is_some() {
            return false;
        }
        rest = &state[end + STATUS_OK.len()..];
        if i + 1 < ops as usize {
            let Some(next) = rest.strip_prefix(b",") else {
                return false;
            };
            rest = next;
        }
    }
    // The results array, the result object, the envelope.
    rest == b"]}}"
}

fn preview(payload: &[u8]) -> String {
    let cut = payload.len().min(PREVIEW_BYTES_MAX);
    let mut text = String::from_utf8_lossy(&payload[..cut]).into_owned();
    if cut < payload.len() {
        text.push_str("...");
    }
    text
}

fn slow_check(
    payload: &[u8],
    expected_id: &str,
    expect: Expect,
    templates: &Templates,
    create_prefix: &[u8],
) -> Result<(), Failure> {
    let v: Value = serde_json::from_slice(payload).map_err(|e| {
        Failure::Protocol(format!("response is not JSON ({e}): {}", preview(payload)))
    })?;
    match v.get("type").and_then(Value::as_str) {
        Some("response") => {}
        Some("event") => {
            return Err(Failure::Protocol(format!(
                "unexpected event on a connection without subscriptions: {}",
                preview(payload)
            )))
        }
        _ => {
            return Err(Failure::Protocol(format!(
                "not a response: {}",
                preview(payload)
            )))
        }
    }
    match v.get("id").and_then(Value::as_str) {
        Some(id) if id == expected_id => {}
        other => {
            return Err(Failure::Protocol(format!(
                "response id {other:?} does not match the oldest outstanding request id \
                 {expected_id:?}: {}",
                preview(payload)
            )))
        }
    }
    match v.get("status").and_then(Value::as_str) {
        Some("ok") => {}
        Some("error") => {
            let error = v.get("error");
            let field = |k: &str| {
                error
                    .and_then(|e| e.get(k))
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string()
            };
            return Err(Failure::Server {
                code: field("code"),
                message: field("message"),
            });
        }
        other => {
            return Err(Failure::Protocol(format!(
                "status {other:?}: {}",
                preview(payload)
            )))
        }
    }
    let result = v
        .get("result")
        .filter(|r| r.is_object())
        .ok_or_else(|| Failure::BadResult(format!("no result object: {}", preview(payload))))?;
    let text = |k: &str| result.get(k).and_then(Value::as_str);
    let bad = |what: String| Err(Failure::BadResult(format!("{what}: {}", preview(payload))));
    let state_ok = |actual: Option<&str>, expected: Option<u8>| match (actual, expected) {
        (Some(a), Some(e)) => a == STATE_NAMES[e as usize],
        (Some(a), None) => STATE_NAMES.contains(&a),
        (None, _) => false,
    };
    match expect {
        Expect::CreatedListed(_) | Expect::CreatedUnique => {
            let wanted = match expect {
                Expect::CreatedListed(k) => {
                    String::from_utf8_lossy(&templates.instance_ids[k as usize]).into_owned()
                }
                _ => format!("{}{expected_id}", String::from_utf8_lossy(create_prefix)),
            };
            if text("instance_id") != Some(wanted.as_str()) {
                return bad(format!("create: instance_id is not {wanted:?}"));
            }
            if text("state") != Some(STATE_NAMES[0]) {
                return bad("create: state is not the initial state".into());
            }
        }
        Expect::Applied(state) => {
            if !state_ok(text("to_state"), state) {
                let wanted = state.map(|s| STATE_NAMES[s as usize]);
                return bad(format!("apply: to_state is not {wanted:?}"));
            }
        }
        Expect::Got(state) => {
            if text("machine") != Some(MACHINE_NAME) {
                return bad(format!("get: machine is not {MACHINE_NAME:?}"));
            }
            if !state_ok(text("state"), state) {
                let wanted = state.map(|s| STATE_NAMES[s as usize]);
                return bad(format!("get: state is not {wanted:?}"));
            }
        }
        Expect::Batched { ops, to_states } => {
            let Some(items) = result.get("results").and_then(Value::as_array) else {
                return bad("batch: no results array".into());
            };
            if items.len() != ops as usize {
                return bad(format!("batch: {} results for {ops} ops", items.len()));
            }
            for (i, item) in items.iter().enumerate() {
                if item.get("status").and_then(Value::as_str) != Some("ok") {
                    let code = item
                        .pointer("/error/code")
                        .and_then(Value::as_str)
                        .unwrap_or("?");
                    return bad(format!(
                        "batch: op {i} has status {:?} ({code})",
                        item.get("status")
                    ));
                }
                let expected = to_states.map(|bits| ((bits >> i) & 1) as u8);
                let to_state = item.pointer("/result/to_state").and_then(Value::as_str);
                if !state_ok(to_state, expected) {
                    let wanted = expected.map(|s| STATE_NAMES[s as usize]);
                    return bad(format!("batch: op {i} to_state is not {wanted:?}"));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn templates() -> Templates {
        Templates::new("t", 3, 0)
    }

    #[test]
    fn rstmdb_layout_takes_the_fast_path() {
        let t = templates();
        let mut c = Checker::new(false);
        let ok = br#"{"type":"response","id":"12","status":"ok","result":{"applied":true,"ctx":{},"from_state":"a","to_state":"b","wal_offset":5}}"#;
        assert_eq!(c.check(ok, 12, Expect::Applied(Some(1)), &t, b"p-"), Ok(()));
        assert_eq!(c.slow_path_count, 0);
        let created = br#"{"type":"response","id":"3","status":"ok","result":{"instance_id":"p-3","state":"a","wal_offset":9}}"#;
        assert_eq!(
            c.check(created, 3, Expect::CreatedUnique, &t, b"p-"),
            Ok(())
        );
        let got = br#"{"type":"response","id":"4","status":"ok","result":{"ctx":{},"last_wal_offset":1,"machine":"corestate-bench","state":"a","version":1}}"#;
        assert_eq!(c.check(got, 4, Expect::Got(Some(0)), &t, b"p-"), Ok(()));
        assert_eq!(c.slow_path_count, 0);
    }

    #[test]
    fn other_key_orders_pass_through_the_slow_path() {
        let t = templates();
        let mut c = Checker::new(false);
        let ok = br#"{"id":"12","type":"response","result":{"to_state":"b","applied":true},"status":"ok"}"#;
        assert_eq!(c.check(ok, 12, Expect::Applied(Some(1)), &t, b""), Ok(()));
        assert_eq!(c.slow_path_count, 1);
    }

    #[test]
    fn wrong_state_wrong_id_and_errors_are_failures() {
        let t = templates();
        let mut c = Checker::new(false);
        let ok = br#"{"type":"response","id":"12","status":"ok","result":{"applied":true,"ctx":{},"from_state":"b","to_state":"a","wal_offset":5}}"#;
        assert!(matches!(
            c.check(ok, 12, Expect::Applied(Some(1)), &t, b""),
            Err(Failure::BadResult(_))
        ));
        assert!(matches!(
            c.check(ok, 13, Expect::Applied(Some(0)), &t, b""),
            Err(Failure::Protocol(_))
        ));
        let err = br#"{"type":"response","id":"1","status":"error","error":{"code":"INSTANCE_NOT_FOUND","message":"m","retryable":false}}"#;
        let failure = c.check(err, 1, Expect::Got(None), &t, b"").unwrap_err();
        assert_eq!(failure.code(), "INSTANCE_NOT_FOUND");
    }

    fn batch_response(id: u64, to_states: &[&str], status_of_second: &str) -> Vec<u8> {
        let items: Vec<String> = to_states
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if i == 1 && status_of_second == "error" {
                    r#"{"error":{"code":"GUARD_FAILED","message":"m","retryable":false},"result":null,"status":"error"}"#.to_string()
                } else {
                    format!(
                        r#"{{"error":null,"result":{{"applied":true,"ctx":{{"d":"x"}},"from_state":"a","to_state":"{s}","wal_offset":{i}}},"status":"ok"}}"#
                    )
                }
            })
            .collect();
        format!(
            r#"{{"type":"response","id":"{id}","status":"ok","result":{{"results":[{}]}}}}"#,
            items.join(",")
        )
        .into_bytes()
    }

    #[test]
    fn a_batch_is_verified_op_by_op() {
        let t = templates();
        let mut c = Checker::new(false);
        let expect = Expect::Batched {
            ops: 3,
            to_states: Some(0b101),
        };
        let ok = batch_response(7, &["b", "a", "b"], "ok");
        assert_eq!(c.check(&ok, 7, expect, &t, b""), Ok(()));
        assert_eq!(
            c.slow_path_count, 0,
            "the rstmdb layout takes the fast path"
        );
        let wrong_state = batch_response(7, &["b", "b", "b"], "ok");
        assert!(matches!(
            c.check(&wrong_state, 7, expect, &t, b""),
            Err(Failure::BadResult(_))
        ));
        let short = batch_response(7, &["b", "a"], "ok");
        assert!(matches!(
            c.check(&short, 7, expect, &t, b""),
            Err(Failure::BadResult(_))
        ));
        let failed_op = batch_response(7, &["b", "a", "b"], "error");
        assert!(matches!(
            c.check(&failed_op, 7, expect, &t, b""),
            Err(Failure::BadResult(_))
        ));
        let mut full = Checker::new(true);
        assert_eq!(full.check(&ok, 7, expect, &t, b""), Ok(()));
    }
}
