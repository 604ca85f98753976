//! WAL entry payloads: what each record says happened, as JSON tagged by
//! `type` with the field names of docs/PROTOCOL.md §11.4 (so WAL_READ can return them
//! as they are).
//!
//! Encoding is hand-written on top of the canonical JSON writer: the hot path
//! (APPLY_EVENT) writes the new context once into a scratch buffer and splices
//! those bytes into both the record and the response. Decoding (recovery,
//! WAL_READ) reads the hot entries laid out as this crate writes them by
//! hand (`entry_scan`) and everything else through serde; an apply's
//! payload and context and a create's initial context stay the JSON text
//! the entry holds (`RawJson`), and a replaying member keeps a context as
//! that text until it needs its tree (`instance_ctx`).

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::json::canonical::{write_str, write_u64, write_value};

/// A decoded entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    PutMachine(PutMachineEntry),
    CreateInstance(CreateInstanceEntry),
    ApplyEvent(ApplyEventEntry),
    DeleteInstance(DeleteInstanceEntry),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PutMachineEntry {
    pub machine: String,
    pub version: u32,
    pub definition_hash: String,
    pub definition: Value,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CreateInstanceEntry {
    pub instance_id: String,
    pub machine: String,
    pub version: u32,
    pub initial_state: String,
    /// Kept as the entry's text, like an apply's context.
    pub initial_ctx: RawJson,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// A JSON value kept as the text an entry holds, not parsed into a tree.
///
/// An apply's payload and new context are written as the canonical JSON
/// the leader published and answered with (`write_apply_event` splices
/// those bytes in), so a member replaying the entry publishes the same
/// bytes by copying them, and parses only the context, into the instance.
/// Measured: building, re-encoding and dropping the payload's and
/// context's trees was a third of decoding an apply on a cluster follower.
///
/// Holds text whose syntax was checked: by serde, or by `entry_scan`.
#[derive(Debug, Clone)]
pub struct RawJson(Box<str>);

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(d).map(|raw| RawJson(raw.into()))
    }
}

impl RawJson {
    /// `text` is one JSON value, its syntax already checked.
    pub(super) fn from_checked_text(text: &str) -> RawJson {
        RawJson(text.into())
    }

    /// The JSON text, as the entry holds it.
    pub fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The JSON text, moved out.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0.into_string().into_bytes()
    }

    /// The value as a tree.
    pub fn parse(&self) -> Result<Value, String> {
        serde_json::from_str(&self.0).map_err(|e| e.to_string())
    }
}

/// Equal texts (entries are canonical JSON: equal values, equal texts).
impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ApplyEventEntry {
    pub instance_id: String,
    /// The instance's machine (not in rstmdb's entry; lets a watch event
    /// be rebuilt from the log alone).
    #[serde(default)]
    pub machine: Option<String>,
    #[serde(default)]
    pub version: Option<u32>,
    pub event: String,
    pub from_state: String,
    pub to_state: String,
    /// The event's payload (`None`: null or absent).
    #[serde(default)]
    pub payload: Option<RawJson>,
    /// The instance's context after the transition.
    pub ctx: RawJson,
    #[serde(default)]
    pub event_id: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DeleteInstanceEntry {
    pub instance_id: String,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// How every entry this crate writes begins: the type comes first.
const TYPE_OPENING: &[u8] = br#"{"type":""#;

/// The `type` of each kind of entry.
const ENTRY_TYPES: [&[u8]; 4] = [
    b"apply_event",
    b"create_instance",
    b"delete_instance",
    b"put_machine",
];

impl Entry {
    /// Decode an entry payload.
    ///
    /// Entries written here name their type first, so the type is read
    /// from the opening bytes and the variant's fields are decoded straight
    /// into their struct (its "type" key is skipped as unknown). serde's
    /// tagged-enum path would first buffer the whole entry in an
    /// intermediate tree to find the tag anywhere (measured at about half
    /// of a decode, when decoding was a fifth of a cluster follower's CPU
    /// under a 16×16 apply load), and cannot keep a value's text
    /// (`RawJson`); an entry that does not open with its type is rewritten
    /// with the type first (`decode_reordered`).
    pub fn decode(payload: &[u8]) -> Result<Entry, String> {
        let typed = payload.strip_prefix(TYPE_OPENING).and_then(|rest| {
            let end = rest.iter().position(|&b| b == b'"')?;
            Some(&rest[..end])
        });
        match typed {
            Some(kind) if ENTRY_TYPES.contains(&kind) => {
                match super::entry_scan::decode_written(kind, payload) {
                    Some(entry) => Ok(entry),
                    None => Entry::decode_as(kind, payload),
                }
            }
            _ => Entry::decode_reordered(payload),
        }
    }

    /// Decode an entry whose type is `kind`.
    fn decode_as(kind: &[u8], payload: &[u8]) -> Result<Entry, String> {
        let decoded = match kind {
            b"apply_event" => serde_json::from_slice(payload).map(Entry::ApplyEvent),
            b"create_instance" => serde_json::from_slice(payload).map(Entry::CreateInstance),
            b"delete_instance" => serde_json::from_slice(payload).map(Entry::DeleteInstance),
            b"put_machine" => serde_json::from_slice(payload).map(Entry::PutMachine),
            _ => {
                return Err(format!(
                    "unknown entry type `{}`",
                    String::from_utf8_lossy(kind)
                ))
            }
        };
        decoded.map_err(|e| e.to_string())
    }

    /// An entry that does not open with its type (none this crate writes,
    /// or a type spelled with escapes): its fields are written again, the
    /// type first, and decoded as any other.
    fn decode_reordered(payload: &[u8]) -> Result<Entry, String> {
        let mut fields: serde_json::Map<String, Value> =
            serde_json::from_slice(payload).map_err(|e| e.to_string())?;
        let kind = match fields.remove("type") {
            Some(Value::String(kind)) => kind,
            Some(_) => return Err("an entry's `type` must be a string".into()),
            None => return Err("missing field `type`".into()),
        };
        let mut typed_first = Vec::with_capacity(payload.len());
        typed_first.extend_from_slice(br#"{"type":"#);
        write_str(&mut typed_first, &kind);
        for (name, value) in &fields {
            key(&mut typed_first, false, name);
            write_value(&mut typed_first, value);
        }
        typed_first.push(b'}');
        Entry::decode_as(kind.as_bytes(), &typed_first)
    }

    /// The instance an instance entry writes (none for a machine).
    pub fn instance_id(&self) -> Option<&str> {
        match self {
            Entry::PutMachine(_) => None,
            Entry::CreateInstance(e) => Some(&e.instance_id),
            Entry::ApplyEvent(e) => Some(&e.instance_id),
            Entry::DeleteInstance(e) => Some(&e.instance_id),
        }
    }
}

fn key(out: &mut Vec<u8>, first: bool, name: &str) {
    if !first {
        out.push(b',');
    }
    write_str(out, name);
    out.push(b':');
}

/// The opening of an instance entry: its type, then which instance of
/// which machine version.
fn instance_entry_head(out: &mut Vec<u8>, open: &[u8], id: &str, machine: &str, version: u32) {
    out.extend_from_slice(open);
    key(out, true, "instance_id");
    write_str(out, id);
    key(out, false, "machine");
    write_str(out, machine);
    key(out, false, "version");
    write_u64(out, u64::from(version));
}

fn opt_str(out: &mut Vec<u8>, name: &str, v: Option<&str>) {
    if let Some(v) = v {
        key(out, false, name);
        write_str(out, v);
    }
}

pub fn write_put_machine(
    out: &mut Vec<u8>,
    machine: &str,
    version: u32,
    definition_hash: &str,
    definition: &Value,
) {
    out.extend_from_slice(br#"{"type":"put_machine","#);
    key(out, true, "machine");
    write_str(out, machine);
    key(out, false, "version");
    write_u64(out, u64::from(version));
    key(out, false, "definition_hash");
    write_str(out, definition_hash);
    key(out, false, "definition");
    write_value(out, definition);
    out.push(b'}');
}

pub struct CreateFields<'a> {
    pub instance_id: &'a str,
    pub machine: &'a str,
    pub version: u32,
    pub initial_state: &'a str,
    /// The initial context, already encoded as canonical JSON.
    pub initial_ctx_json: &'a [u8],
    pub idempotency_key: Option<&'a str>,
}

/// The most bytes a string takes written as JSON: every byte escaped as
/// `\u00XX` (control characters), plus its quotes.
fn quoted_bytes_max(s: &str) -> usize {
    s.len() * JSON_ESCAPED_BYTES_PER_BYTE_MAX + 2
}

/// The most a byte of a string takes once escaped for JSON (`\u00XX`).
const JSON_ESCAPED_BYTES_PER_BYTE_MAX: usize = 6;

/// Room enough for an instance entry's type, key names, punctuation and
/// version number — everything but its strings and embedded JSON.
const INSTANCE_ENTRY_FRAME_BYTES_MAX: usize = 256;

impl CreateFields<'_> {
    /// At least the bytes `write_create_instance` writes for these fields,
    /// known before writing them (`LogSink::room_bytes`).
    pub fn payload_bytes_max(&self) -> usize {
        INSTANCE_ENTRY_FRAME_BYTES_MAX
            + quoted_bytes_max(self.instance_id)
            + quoted_bytes_max(self.machine)
            + quoted_bytes_max(self.initial_state)
            + self.initial_ctx_json.len()
            + self.idempotency_key.map_or(0, quoted_bytes_max)
    }
}

pub fn write_create_instance(out: &mut Vec<u8>, f: &CreateFields<'_>) {
    instance_entry_head(
        out,
        br#"{"type":"create_instance","#,
        f.instance_id,
        f.machine,
        f.version,
    );
    key(out, false, "initial_state");
    write_str(out, f.initial_state);
    key(out, false, "initial_ctx");
    out.extend_from_slice(f.initial_ctx_json);
    opt_str(out, "idempotency_key", f.idempotency_key);
    out.push(b'}');
}

pub struct ApplyFields<'a> {
    pub instance_id: &'a str,
    pub machine: &'a str,
    pub version: u32,
    pub event: &'a str,
    pub from_state: &'a str,
    pub to_state: &'a str,
    /// The payload as sent, already encoded as JSON.
    pub payload_json: &'a [u8],
    /// The new context, already encoded as JSON.
    pub ctx_json: &'a [u8],
    pub event_id: Option<&'a str>,
    pub idempotency_key: Option<&'a str>,
}

impl ApplyFields<'_> {
    /// At least the bytes `write_apply_event` writes for these fields,
    /// known before writing them (`LogSink::room_bytes`).
    pub fn payload_bytes_max(&self) -> usize {
        INSTANCE_ENTRY_FRAME_BYTES_MAX
            + [
                self.instance_id,
                self.machine,
                self.event,
                self.from_state,
                self.to_state,
            ]
            .into_iter()
            .map(quoted_bytes_max)
            .sum::<usize>()
            + self.payload_json.len()
            + self.ctx_json.len()
            + self.event_id.map_or(0, quoted_bytes_max)
            + self.idempotency_key.map_or(0, quoted_bytes_max)
    }
}

pub fn write_apply_event(out: &mut Vec<u8>, f: &ApplyFields<'_>) {
    instance_entry_head(
        out,
        br#"{"type":"apply_event","#,
        f.instance_id,
        f.machine,
        f.version,
    );
    key(out, false, "event");
    write_str(out, f.event);
    key(out, false, "from_state");
    write_str(out, f.from_state);
    key(out, false, "to_state");
    write_str(out, f.to_state);
    key(out, false, "payload");
    out.extend_from_slice(f.payload_json);
    key(out, false, "ctx");
    out.extend_from_slice(f.ctx_json);
    opt_str(out, "event_id", f.event_id);
    opt_str(out, "idempotency_key", f.idempotency_key);
    out.push(b'}');
}

pub fn write_delete_instance(out: &mut Vec<u8>, instance_id: &str, idempotency_key: Option<&str>) {
    out.extend_from_slice(br#"{"type":"delete_instance","#);
    key(out, true, "instance_id");
    write_str(out, instance_id);
    opt_str(out, "idempotency_key", idempotency_key);
    out.push(b'}');
}

/// Payload of a `Prepare` record: txid, decider shard, inner records.
pub fn write_prepare(out: &mut Vec<u8>, txid: u64, decider: u32, inner: &[u8]) {
    out.extend_from_slice(&txid.to_le_bytes());
    out.extend_from_slice(&decider.to_le_bytes());
    out.extend_from_slice(inner);
}

/// Split a `Prepare` payload into (txid, decider, inner records).
pub fn read_prepare(payload: &[u8]) -> Result<(u64, u32, &[u8]), String> {
    if payload.len() < 12 {
        return Err("prepare record too short".into());
    }
    let mut txid = [0u8; 8];
    txid.copy_from_slice(&payload[..8]);
    let mut decider = [0u8; 4];
    decider.copy_from_slice(&payload[8..12]);
    Ok((
        u64::from_le_bytes(txid),
        u32::from_le_bytes(decider),
        &payload[12..],
    ))
}

/// Payload of `Commit` / `Abort` records.
pub fn read_txid(payload: &[u8]) -> Result<u64, String> {
    let bytes: [u8; 8] = payload
        .try_into()
        .map_err(|_| "transaction record must hold exactly a txid".to_string())?;
    Ok(u64::from_le_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_payload_bounds_hold_for_strings_that_escape_most() {
        let worst = "\u{1}\"\\\n".repeat(50);
        for (text, ctx) in [("o-1", &b"{}"[..]), (worst.as_str(), &b"{\"a\":[1,2]}"[..])] {
            let create = CreateFields {
                instance_id: text,
                machine: text,
                version: u32::MAX,
                initial_state: text,
                initial_ctx_json: ctx,
                idempotency_key: Some(text),
            };
            let mut out = Vec::new();
            write_create_instance(&mut out, &create);
            assert!(out.len() <= create.payload_bytes_max(), "{}", out.len());
            let apply = ApplyFields {
                instance_id: text,
                machine: text,
                version: u32::MAX,
                event: text,
                from_state: text,
                to_state: text,
                payload_json: ctx,
                ctx_json: ctx,
                event_id: Some(text),
                idempotency_key: Some(text),
            };
            out.clear();
            write_apply_event(&mut out, &apply);
            assert!(out.len() <= apply.payload_bytes_max(), "{}", out.len());
        }
    }

    #[test]
    fn every_entry_round_trips() {
        let def = json!({"states":["a"],"initial":"a","transitions":[]});
        let mut out = Vec::new();
        write_put_machine(&mut out, "m", 3, "6b16bc3e", &def);
        assert_eq!(
            Entry::decode(&out).unwrap(),
            Entry::PutMachine(PutMachineEntry {
                machine: "m".into(),
                version: 3,
                definition_hash: "6b16bc3e".into(),
                definition: def
            })
        );

        let ctx = json!({"n": 1});
        out.clear();
        write_create_instance(
            &mut out,
            &CreateFields {
                instance_id: "i\"1",
                machine: "m",
                version: 3,
                initial_state: "a",
                initial_ctx_json: &crate::json::canonical::to_vec(&ctx),
                idempotency_key: Some("k"),
            },
        );
        match Entry::decode(&out).unwrap() {
            Entry::CreateInstance(CreateInstanceEntry {
                instance_id,
                idempotency_key,
                initial_ctx,
                ..
            }) => {
                assert_eq!(instance_id, "i\"1");
                assert_eq!(idempotency_key.as_deref(), Some("k"));
                assert_eq!(initial_ctx.bytes(), br#"{"n":1}"#);
                assert_eq!(initial_ctx.parse().unwrap(), ctx);
            }
            other => panic!("{other:?}"),
        }

        out.clear();
        write_apply_event(
            &mut out,
            &ApplyFields {
                instance_id: "i",
                machine: "m",
                version: 2,
                event: "GO",
                from_state: "a",
                to_state: "b",
                payload_json: b"null",
                ctx_json: br#"{"n":2}"#,
                event_id: None,
                idempotency_key: None,
            },
        );
        match Entry::decode(&out).unwrap() {
            Entry::ApplyEvent(ApplyEventEntry {
                ctx,
                payload,
                event_id,
                machine,
                version,
                ..
            }) => {
                assert_eq!((machine.as_deref(), version), (Some("m"), Some(2)));
                assert_eq!(ctx.parse().unwrap(), json!({"n": 2}));
                assert_eq!(ctx.bytes(), br#"{"n":2}"#);
                assert_eq!(payload, None);
                assert_eq!(event_id, None);
            }
            other => panic!("{other:?}"),
        }

        out.clear();
        write_delete_instance(&mut out, "i", None);
        assert_eq!(
            Entry::decode(&out).unwrap(),
            Entry::DeleteInstance(DeleteInstanceEntry {
                instance_id: "i".into(),
                idempotency_key: None
            })
        );
    }

    #[test]
    fn an_entry_whose_type_is_not_first_decodes_the_same_and_bad_ones_are_refused() {
        let ctx = json!({"n": 2, "tags": ["a", "b"]});
        let mut written = Vec::new();
        write_apply_event(
            &mut written,
            &ApplyFields {
                instance_id: "i",
                machine: "m",
                version: 2,
                event: "GO",
                from_state: "a",
                to_state: "b",
                payload_json: br#"{"p":true}"#,
                ctx_json: ctx.to_string().as_bytes(),
                event_id: Some("e1"),
                idempotency_key: Some("k1"),
            },
        );
        assert!(written.starts_with(TYPE_OPENING), "the fast path is taken");
        // The same fields with the type last: serde's tagged path.
        let mut fields: serde_json::Map<String, Value> = serde_json::from_slice(&written).unwrap();
        let kind = fields.remove("type").unwrap();
        fields.insert("type".into(), kind);
        let reordered = serde_json::to_vec(&fields).unwrap();
        assert!(!reordered.starts_with(TYPE_OPENING));
        assert_eq!(
            Entry::decode(&written).unwrap(),
            Entry::decode(&reordered).unwrap()
        );
        assert_eq!(Entry::decode(&written).unwrap().instance_id(), Some("i"));

        // Neither path accepts an unknown type, a missing field or a
        // wrong type.
        for bad in [
            &br#"{"type":"rename_instance","instance_id":"i"}"#[..],
            br#"{"type":"apply_event","instance_id":"i"}"#,
            br#"{"type":"delete_instance","instance_id":7}"#,
            br#"{"instance_id":"i"}"#,
            br#"{"type":"delete_instance""#,
            b"",
        ] {
            assert!(
                Entry::decode(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
