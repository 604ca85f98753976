//! A forwarded batch's operations as they travel to the leader
//! (`forward_batch.rs` builds the body, `forward_serve.rs` reads it): one
//! body for the whole batch, one operation after another in the batch's
//! order.
//!
//! ```text
//! count u32
//! per operation: kind u8 | length u32 | bytes
//!   kind 0  an instance command (`Forwarded::Exec`), in binary:
//!           tag u8 (0 create, 1 apply, 2 delete, 3 get), then its fields
//!           in the order `WireCommand` declares them
//!   kind 1  any other operation: the JSON of `Forwarded`
//!
//! string      length u32 | UTF-8 bytes
//! JSON value  length u32 | JSON text
//! optional    present u8 (0 or 1) | the value when present
//! ```
//!
//! Integers are little-endian. Instance commands used to travel as JSON
//! too: the follower escaped every string of each command and the leader
//! matched field names, unescaped, UTF-8-checked and copied them back —
//! measured with `perf --call-graph dwarf` under a 16×16 apply load
//! driven through a follower, 11 % of the leader's CPU and 5 % of the
//! follower's. In binary a string is a length and a copy; only a
//! command's payload and initial context still go through JSON, as the
//! `Value`s the shard takes. The rarer operations (batch parts,
//! membership, listings) keep their JSON, where speed does not matter.
//!
//! Binary also keeps a command's depth: wrapped in the JSON array and
//! enum tags, the deepest context or payload a client may send (125
//! levels inside its request's 127) came to 129, past the 127 levels
//! serde_json parses — the leader refused the whole call and every client
//! in it was told "outcome unknown", again at each retry
//! (tests/cluster/forwarding.rs). A JSON value here is parsed on its own,
//! at its own depth; inside the operations that keep their JSON, a
//! client's values travel as text for the same reason (`forward_wire.rs`).

use serde_json::Value;

use super::forward::Forwarded;
use super::forward_wire::WireCommand;
use crate::log_store::codec::Cursor;
use crate::log_store::CodecError;
use crate::net::wire::{from_json, to_json};

const KIND_COMMAND: u8 = 0;
const KIND_JSON: u8 = 1;
/// Bytes before each operation's own: kind and length.
const OP_HEAD_BYTES: usize = 5;
/// Bytes before the first operation: the count.
pub(super) const OPS_HEAD_BYTES: usize = 4;

const TAG_CREATE: u8 = 0;
const TAG_APPLY: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_GET: u8 = 3;

/// An empty batch body; operations are appended with [`encode_op`] and
/// the count set with [`seal_ops`].
pub(super) fn start_ops() -> Vec<u8> {
    vec![0; OPS_HEAD_BYTES]
}

/// Write the count of operations `body` holds into its head.
pub(super) fn seal_ops(body: &mut [u8], count: usize) {
    body[..OPS_HEAD_BYTES].copy_from_slice(&(count as u32).to_le_bytes());
}

/// `op` as it travels in a batch, kind and length included.
pub(super) fn encode_op(op: &Forwarded) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&[0; OP_HEAD_BYTES]);
    out[0] = match op {
        Forwarded::Exec(cmd) => {
            put_command(cmd, &mut out);
            KIND_COMMAND
        }
        other => {
            out.extend_from_slice(&to_json(other));
            KIND_JSON
        }
    };
    let len = (out.len() - OP_HEAD_BYTES) as u32;
    out[1..OP_HEAD_BYTES].copy_from_slice(&len.to_le_bytes());
    out
}

/// A whole batch body holding `ops` (the follower builds its batches an
/// operation at a time: `forward_batch.rs`).
fn encode_ops(ops: &[Forwarded]) -> Vec<u8> {
    let mut body = start_ops();
    for op in ops {
        body.extend_from_slice(&encode_op(op));
    }
    seal_ops(&mut body, ops.len());
    body
}

/// Operations as comparable values: equal JSON, equal operations.
fn as_json(ops: &[Forwarded]) -> Vec<Value> {
    ops.iter()
        .map(|op| serde_json::to_value(op).expect("an operation serializes"))
        .collect()
}

/// For the fuzz target: decode `body`; what decodes must encode again to
/// the same operations. Panics if not, for the fuzzer to report.
pub fn fuzz_round_trip(body: &[u8]) {
    let Ok(ops) = decode_ops(body) else {
        return;
    };
    let back = decode_ops(&encode_ops(&ops)).expect("re-encoded operations decode");
    assert_eq!(
        as_json(&back),
        as_json(&ops),
        "operations changed on a round trip"
    );
}

/// The operations `body` holds, or why it does not hold operations.
pub(super) fn decode_ops(body: &[u8]) -> Result<Vec<Forwarded>, CodecError> {
    let mut c = Cursor::new(body);
    let count = c.u32("operation count")? as usize;
    // Each operation takes its head at least: a count the body cannot hold
    // is refused before anything is reserved for it.
    if count > c.remaining() / OP_HEAD_BYTES {
        return Err(CodecError(format!(
            "{count} operations in {} bytes",
            body.len()
        )));
    }
    let mut ops = Vec::with_capacity(count);
    for _ in 0..count {
        let kind = c.u8("operation kind")?;
        let len = c.u32("operation length")? as usize;
        let bytes = c.take(len, "operation")?;
        ops.push(match kind {
            KIND_COMMAND => {
                let mut op = Cursor::new(bytes);
                let cmd = read_command(&mut op)?;
                op.finish("instance command")?;
                Forwarded::Exec(cmd)
            }
            KIND_JSON => from_json(bytes).map_err(|e| CodecError(format!("an operation: {e}")))?,
            other => return Err(CodecError(format!("operation kind {other}"))),
        });
    }
    c.finish("operations")?;
    Ok(ops)
}

fn put_command(cmd: &WireCommand, out: &mut Vec<u8>) {
    match cmd {
        WireCommand::Create {
            instance_id,
            machine,
            version,
            initial_ctx,
            idempotency_key,
        } => {
            out.push(TAG_CREATE);
            put_str(out, instance_id);
            put_str(out, machine);
            out.extend_from_slice(&version.to_le_bytes());
            put_json(out, initial_ctx);
            put_opt_str(out, idempotency_key.as_deref());
        }
        WireCommand::Apply {
            instance_id,
            event,
            payload,
            expected_state,
            expected_wal_offset,
            event_id,
            idempotency_key,
        } => {
            out.push(TAG_APPLY);
            put_str(out, instance_id);
            put_str(out, event);
            put_json(out, payload);
            put_opt_str(out, expected_state.as_deref());
            match expected_wal_offset {
                Some(offset) => {
                    out.push(1);
                    out.extend_from_slice(&offset.to_le_bytes());
                }
                None => out.push(0),
            }
            put_opt_str(out, event_id.as_deref());
            put_opt_str(out, idempotency_key.as_deref());
        }
        WireCommand::Delete {
            instance_id,
            idempotency_key,
        } => {
            out.push(TAG_DELETE);
            put_str(out, instance_id);
            put_opt_str(out, idempotency_key.as_deref());
        }
        WireCommand::Get { instance_id } => {
            out.push(TAG_GET);
            put_str(out, instance_id);
        }
    }
}

fn read_command(c: &mut Cursor<'_>) -> Result<WireCommand, CodecError> {
    Ok(match c.u8("command tag")? {
        TAG_CREATE => WireCommand::Create {
            instance_id: read_str(c, "instance id")?,
            machine: read_str(c, "machine")?,
            version: c.u32("version")?,
            initial_ctx: read_json(c, "initial context")?,
            idempotency_key: read_opt_str(c, "idempotency key")?,
        },
        TAG_APPLY => WireCommand::Apply {
            instance_id: read_str(c, "instance id")?,
            event: read_str(c, "event")?,
            payload: read_json(c, "payload")?,
            expected_state: read_opt_str(c, "expected state")?,
            expected_wal_offset: match read_present(c, "expected offset")? {
                true => Some(c.u64("expected offset")?),
                false => None,
            },
            event_id: read_opt_str(c, "event id")?,
            idempotency_key: read_opt_str(c, "idempotency key")?,
        },
        TAG_DELETE => WireCommand::Delete {
            instance_id: read_str(c, "instance id")?,
            idempotency_key: read_opt_str(c, "idempotency key")?,
        },
        TAG_GET => WireCommand::Get {
            instance_id: read_str(c, "instance id")?,
        },
        other => return Err(CodecError(format!("command tag {other}"))),
    })
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
        None => out.push(0),
    }
}

/// A value's JSON text, written in place after a length filled in last.
fn put_json(out: &mut Vec<u8>, value: &Value) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    serde_json::to_writer(&mut *out, value).expect("a JSON value always serializes");
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

fn read_bytes<'a>(c: &mut Cursor<'a>, what: &str) -> Result<&'a [u8], CodecError> {
    let len = c.u32(what)? as usize;
    c.take(len, what)
}

fn read_str(c: &mut Cursor<'_>, what: &str) -> Result<String, CodecError> {
    let bytes = read_bytes(c, what)?;
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|e| CodecError(format!("{what}: {e}")))
}

fn read_present(c: &mut Cursor<'_>, what: &str) -> Result<bool, CodecError> {
    match c.u8(what)? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(CodecError(format!("{what}: presence byte {other}"))),
    }
}

fn read_opt_str(c: &mut Cursor<'_>, what: &str) -> Result<Option<String>, CodecError> {
    match read_present(c, what)? {
        true => read_str(c, what).map(Some),
        false => Ok(None),
    }
}

fn read_json(c: &mut Cursor<'_>, what: &str) -> Result<Value, CodecError> {
    let bytes = read_bytes(c, what)?;
    from_json(bytes).map_err(|e| CodecError(format!("{what}: {e}")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn commands() -> Vec<WireCommand> {
        vec![
            WireCommand::Create {
                instance_id: "order-\"1\"".into(),
                machine: "orders".into(),
                version: 7,
                initial_ctx: json!({"n": 1, "tags": ["a", "é"], "deep": {"x": null}}),
                idempotency_key: Some("k1".into()),
            },
            WireCommand::Apply {
                instance_id: "order-1".into(),
                event: "PAY".into(),
                payload: json!({"amount": 12.5, "note": "a \"quoted\" word\n"}),
                expected_state: Some("created".into()),
                expected_wal_offset: Some(u64::MAX),
                event_id: None,
                idempotency_key: Some(String::new()),
            },
            WireCommand::Apply {
                instance_id: "order-2".into(),
                event: "PAY".into(),
                payload: Value::Null,
                expected_state: None,
                expected_wal_offset: None,
                event_id: Some("e".into()),
                idempotency_key: None,
            },
            WireCommand::Delete {
                instance_id: "order-3".into(),
                idempotency_key: None,
            },
            WireCommand::Get {
                instance_id: String::new(),
            },
        ]
    }

    #[test]
    fn every_command_and_other_operations_round_trip_in_order() {
        let mut ops: Vec<Forwarded> = commands().into_iter().map(Forwarded::Exec).collect();
        ops.insert(
            2,
            Forwarded::Decide {
                txid: 9,
                commit: true,
            },
        );
        ops.push(Forwarded::AtomicBatch(commands()));
        let encoded = encode_ops(&ops);
        let back = decode_ops(&encoded).expect("operations");
        assert_eq!(as_json(&back), as_json(&ops));
    }

    /// A value `depth` levels deep.
    fn nested(depth: usize) -> Value {
        (1..depth).fold(json!({}), |inner, _| json!({ "d": inner }))
    }

    /// Contexts and payloads a level deeper than a client may send (125
    /// levels: its request's 127 less the envelope and `params`) come
    /// through whatever an operation nests them in.
    #[test]
    fn the_deepest_values_a_client_may_send_come_through() {
        let deep = nested(126);
        let cmds = || {
            vec![
                WireCommand::Create {
                    instance_id: "i".into(),
                    machine: "m".into(),
                    version: 1,
                    initial_ctx: deep.clone(),
                    idempotency_key: None,
                },
                WireCommand::Apply {
                    instance_id: "i".into(),
                    event: "e".into(),
                    payload: deep.clone(),
                    expected_state: None,
                    expected_wal_offset: None,
                    event_id: None,
                    idempotency_key: None,
                },
            ]
        };
        let mut ops: Vec<Forwarded> = cmds().into_iter().map(Forwarded::Exec).collect();
        ops.push(Forwarded::AtomicBatch(cmds()));
        ops.push(Forwarded::Prepare {
            txid: 1,
            decider: 0,
            ops: cmds(),
        });
        ops.push(Forwarded::InstallMachine {
            machine: "m".into(),
            version: 1,
            definition: json!({"states": ["a"], "meta": nested(125)}),
        });
        let back = decode_ops(&encode_ops(&ops)).expect("operations");
        assert_eq!(as_json(&back), as_json(&ops));
    }

    #[test]
    fn strings_travel_unescaped() {
        let ops = [Forwarded::Exec(WireCommand::Get {
            instance_id: "a \"quoted\" id".into(),
        })];
        let encoded = encode_ops(&ops);
        let raw = b"a \"quoted\" id";
        assert!(encoded.windows(raw.len()).any(|w| w == raw));
    }

    #[test]
    fn a_damaged_body_is_an_error_not_a_panic() {
        let ops: Vec<Forwarded> = commands().into_iter().map(Forwarded::Exec).collect();
        let encoded = encode_ops(&ops);
        for len in 0..encoded.len() {
            assert!(decode_ops(&encoded[..len]).is_err(), "cut at {len}");
        }
        let mut longer = encoded.clone();
        longer.push(0);
        assert!(decode_ops(&longer).is_err());
        let mut count = encoded.clone();
        count[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_ops(&count).is_err());
        // Every single byte changed: an error or some operations, never a
        // panic.
        for at in 0..encoded.len() {
            for flip in [0x01, 0x80, 0xFF] {
                let mut bad = encoded.clone();
                bad[at] ^= flip;
                let _ = decode_ops(&bad);
            }
        }
        let mut kind = encoded.clone();
        kind[4] = 9;
        assert!(decode_ops(&kind).is_err());
        let mut tag = encoded;
        tag[9] = 42;
        assert!(decode_ops(&tag).is_err());
    }

    #[test]
    fn a_string_that_is_not_utf8_is_refused() {
        let ops = [Forwarded::Exec(WireCommand::Get {
            instance_id: "ab".into(),
        })];
        let mut encoded = encode_ops(&ops);
        let last = encoded.len() - 1;
        encoded[last] = 0xFF;
        assert!(decode_ops(&encoded).is_err());
    }
}
