//! Behaviour of the shard operations on its in-memory state (a running
//! shard, reopened from its log, is in `running.rs`).

use std::sync::Arc;

use serde_json::{json, Value};

use super::command::*;
use super::state::test_sink::MemorySink;
use super::state::ShardState;
use crate::error::ErrorCode;
use crate::machine::definition::parse_definition;

fn door() -> Value {
    json!({"states":["shut","open","locked"],"initial":"shut","transitions":[
        {"from":"shut","event":"OPEN","to":"open","guard":"ctx.unlocked"},
        {"from":"shut","event":"OPEN","to":"locked"},
        {"from":"open","event":"CLOSE","to":"shut"}]})
}

fn shard_with_door() -> (ShardState, MemorySink) {
    let mut s = ShardState::new(0, true);
    let mut log = MemorySink::default();
    let def = Arc::new(parse_definition("door", 1, &door()).unwrap());
    assert!(s
        .install_machine(def.clone(), &door(), 1, &mut log)
        .unwrap());
    assert!(!s.install_machine(def, &door(), 1, &mut log).unwrap());
    (s, log)
}

fn create(
    s: &mut ShardState,
    log: &mut MemorySink,
    id: &str,
    ctx: Value,
    key: Option<&str>,
) -> Result<Value, ErrorCode> {
    s.create_instance(
        CreateInstance {
            instance_id: id.into(),
            machine: "door".into(),
            version: 1,
            initial_ctx: ctx,
            idempotency_key: key.map(Into::into),
        },
        5,
        log,
    )
    .map(|b| serde_json::from_slice(&b).unwrap())
    .map_err(|e| e.code)
}

fn apply(
    s: &mut ShardState,
    log: &mut MemorySink,
    id: &str,
    event: &str,
    payload: Value,
    key: Option<&str>,
) -> Result<Value, (ErrorCode, String)> {
    s.apply_event(
        ApplyEvent {
            instance_id: id.into(),
            event: event.into(),
            payload,
            expected_state: None,
            expected_wal_offset: None,
            event_id: None,
            idempotency_key: key.map(Into::into),
        },
        6,
        log,
    )
    .map(|b| serde_json::from_slice(&b).unwrap())
    .map_err(|e| (e.code, e.message))
}

#[test]
fn first_passing_guard_wins_and_payload_merges_after_the_guard() {
    let (mut s, mut log) = shard_with_door();
    create(&mut s, &mut log, "d1", json!({"unlocked": false}), None).unwrap();
    // Guard sees the old ctx (unlocked=false): the second, unguarded transition fires.
    let r = apply(
        &mut s,
        &mut log,
        "d1",
        "OPEN",
        json!({"unlocked": true}),
        None,
    )
    .unwrap();
    assert_eq!(r["to_state"], "locked");
    assert_eq!(r["ctx"], json!({"unlocked": true}));
    assert_eq!(r["applied"], true);
}

#[test]
fn errors_follow_the_spec_order_and_texts() {
    let (mut s, mut log) = shard_with_door();
    assert_eq!(
        create(&mut s, &mut log, "d1", json!({}), None).unwrap()["state"],
        "shut"
    );
    assert_eq!(
        create(&mut s, &mut log, "d1", json!({}), None),
        Err(ErrorCode::InstanceExists)
    );
    let (code, msg) = apply(&mut s, &mut log, "d1", "CLOSE", Value::Null, None).unwrap_err();
    assert_eq!(code, ErrorCode::InvalidTransition);
    assert_eq!(
        msg,
        "core error: invalid transition: cannot apply 'CLOSE' in state 'shut'"
    );
    let (code, _) = apply(&mut s, &mut log, "nope", "OPEN", Value::Null, None).unwrap_err();
    assert_eq!(code, ErrorCode::InstanceNotFound);
    let err = s
        .apply_event(
            ApplyEvent {
                instance_id: "d1".into(),
                event: "OPEN".into(),
                payload: Value::Null,
                expected_state: Some("open".into()),
                expected_wal_offset: None,
                event_id: None,
                idempotency_key: None,
            },
            1,
            &mut log,
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Conflict);
    assert_eq!(
        err.message,
        "core error: state conflict: expected 'open', actual 'shut'"
    );
}

#[test]
fn guard_failed_when_no_alternative_passes() {
    let def = json!({"states":["a","b"],"initial":"a","transitions":[
        {"from":"a","event":"GO","to":"b","guard":"ctx.n > 1"}]});
    let mut s = ShardState::new(0, true);
    let mut log = MemorySink::default();
    s.install_machine(
        Arc::new(parse_definition("m", 1, &def).unwrap()),
        &def,
        1,
        &mut log,
    )
    .unwrap();
    s.create_instance(
        CreateInstance {
            instance_id: "x".into(),
            machine: "m".into(),
            version: 1,
            initial_ctx: json!({"n": 0}),
            idempotency_key: None,
        },
        1,
        &mut log,
    )
    .unwrap();
    let (code, msg) = apply(&mut s, &mut log, "x", "GO", Value::Null, None).unwrap_err();
    assert_eq!(code, ErrorCode::GuardFailed);
    assert_eq!(
        msg,
        "core error: guard failed: guard failed for transition 'a' -> 'b' on event 'GO'"
    );
}

#[test]
fn idempotent_replay_applies_nothing_and_returns_the_first_result() {
    let (mut s, mut log) = shard_with_door();
    create(&mut s, &mut log, "d1", json!({"unlocked": true}), None).unwrap();
    let first = apply(&mut s, &mut log, "d1", "OPEN", json!({"n": 1}), Some("k1")).unwrap();
    let records = log.records;
    let again = apply(&mut s, &mut log, "d1", "OPEN", json!({"n": 2}), Some("k1")).unwrap();
    assert_eq!(log.records, records, "a replay must not write");
    assert_eq!(again["applied"], false);
    assert_eq!(again["wal_offset"], first["wal_offset"]);
    assert_eq!(again["ctx"], first["ctx"]);
    assert_eq!(again["to_state"], "open");
}

#[test]
fn idempotent_create_retry_returns_the_first_result() {
    let (mut s, mut log) = shard_with_door();
    let first = create(&mut s, &mut log, "d1", json!({}), Some("c1")).unwrap();
    let again = create(&mut s, &mut log, "d1", json!({}), Some("c1")).unwrap();
    assert_eq!(again["wal_offset"], first["wal_offset"]);
    assert_eq!(again["applied"], false);
    assert_eq!(
        create(&mut s, &mut log, "d1", json!({}), Some("other")),
        Err(ErrorCode::InstanceExists)
    );
}

#[test]
fn delete_is_soft_and_idempotent() {
    let (mut s, mut log) = shard_with_door();
    create(&mut s, &mut log, "d1", json!({}), None).unwrap();
    let del = |s: &mut ShardState, log: &mut MemorySink| -> Value {
        serde_json::from_slice(
            &s.delete_instance(
                DeleteInstance {
                    instance_id: "d1".into(),
                    idempotency_key: None,
                },
                1,
                log,
            )
            .unwrap(),
        )
        .unwrap()
    };
    let first = del(&mut s, &mut log);
    let records = log.records;
    let second = del(&mut s, &mut log);
    assert_eq!(first, second);
    assert_eq!(log.records, records);
    assert_eq!(
        s.get_instance("d1").unwrap_err().code,
        ErrorCode::InstanceNotFound
    );
    assert_eq!(
        s.list_instances(&ListQuery {
            rows_max: 10,
            ..Default::default()
        })
        .total,
        0
    );
    // Re-create after delete is allowed by default.
    assert_eq!(
        create(&mut s, &mut log, "d1", json!({}), None).unwrap()["state"],
        "shut"
    );
}

#[test]
fn list_pages_are_sorted_by_id_and_filtered() {
    let (mut s, mut log) = shard_with_door();
    for id in ["c", "a", "e", "b", "d"] {
        create(&mut s, &mut log, id, json!({"unlocked": true}), None).unwrap();
    }
    apply(&mut s, &mut log, "b", "OPEN", Value::Null, None).unwrap();
    let page = s.list_instances(&ListQuery {
        rows_max: 3,
        ..Default::default()
    });
    assert_eq!(page.total, 5);
    let ids: Vec<_> = page.rows.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    let open = s.list_instances(&ListQuery {
        state: Some("open".into()),
        rows_max: 10,
        ..Default::default()
    });
    assert_eq!(open.total, 1);
    let row: Value = serde_json::from_slice(&open.rows[0].1).unwrap();
    assert_eq!(row["id"], "b");
    assert_eq!(row["state"], "open");
}

#[test]
fn a_failed_log_append_leaves_the_context_untouched() {
    let (mut s, mut log) = shard_with_door();
    create(
        &mut s,
        &mut log,
        "d1",
        json!({"unlocked": true, "keep": 1}),
        None,
    )
    .unwrap();
    let huge = "x".repeat(crate::wal::record::RECORD_PAYLOAD_MAX_BYTES);
    let (code, _) = apply(&mut s, &mut log, "d1", "OPEN", json!({"keep": huge}), None).unwrap_err();
    // Too large for the log: a request that will never succeed, not a
    // retryable I/O failure.
    assert_eq!(code, ErrorCode::BadRequest);
    let got: Value = serde_json::from_slice(&s.get_instance("d1").unwrap()).unwrap();
    assert_eq!(got["ctx"], json!({"unlocked": true, "keep": 1}));
    assert_eq!(got["state"], "shut");
}

mod running;

#[test]
fn contexts_rest_as_text_read_by_guards_and_merges_and_stored_as_such() {
    use crate::instance_ctx::Ctx;
    use crate::snapshot::codec::{decode, encode_state, LogPosition};

    let (mut s, mut log) = shard_with_door();
    create(
        &mut s,
        &mut log,
        "d1",
        json!({"unlocked": false, "b": [1]}),
        None,
    )
    .unwrap();
    // A create keeps the canonical text it logged.
    assert_eq!(
        s.instances["d1"].ctx.as_text(),
        Some(&br#"{"b":[1],"unlocked":false}"#[..])
    );
    // As a replayed apply leaves it (`replay.rs`): the entry's text.
    let text = br#"{"note":"x","unlocked":true}"#;
    s.instances.get_mut("d1").unwrap().ctx = Ctx::from_canonical_text(text.to_vec());

    let got = s.get_instance("d1").unwrap();
    let got: Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(got["ctx"], json!({"note": "x", "unlocked": true}));

    // A snapshot stores the text and loads it back as text.
    let image = encode_state(&s, LogPosition::default());
    assert!(image.windows(text.len()).any(|w| w == text));
    let back = decode(&image).unwrap();
    let (_, inst) = back.instances.iter().find(|(id, _)| id == "d1").unwrap();
    assert_eq!(inst.ctx.as_text(), Some(&text[..]));

    // The guard reads the text's value (unlocked: the guarded transition
    // fires) and the payload merges into it; the new context rests as text.
    let r = apply(&mut s, &mut log, "d1", "OPEN", json!({"n": 1}), None).unwrap();
    assert_eq!(r["to_state"], "open");
    assert_eq!(r["ctx"], json!({"n": 1, "note": "x", "unlocked": true}));
    assert_eq!(
        s.instances["d1"].ctx.as_text(),
        Some(&br#"{"n":1,"note":"x","unlocked":true}"#[..])
    );
}

#[test]
fn an_apply_with_no_guard_and_nothing_to_merge_does_not_parse_the_context() {
    use crate::instance_ctx::Ctx;

    let (mut s, mut log) = shard_with_door();
    create(&mut s, &mut log, "d1", json!({"unlocked": true}), None).unwrap();
    apply(&mut s, &mut log, "d1", "OPEN", json!({}), None).unwrap();
    // Text that would not parse (it cannot arise; it shows what is read):
    // CLOSE has no guard and the payload is empty, so the apply logs and
    // answers the text as it is.
    let odd = br#"{"k":tru"#;
    s.instances.get_mut("d1").unwrap().ctx = Ctx::from_canonical_text(odd.to_vec());
    assert!(!s.instances["d1"].machine.guarded("open", "CLOSE"));
    let close = ApplyEvent {
        instance_id: "d1".into(),
        event: "CLOSE".into(),
        payload: json!({}),
        expected_state: None,
        expected_wal_offset: None,
        event_id: None,
        idempotency_key: None,
    };
    let answer = s.apply_event(close, 7, &mut log).unwrap();
    assert!(answer.windows(odd.len()).any(|w| w == odd));
    assert_eq!(s.instances["d1"].state, "shut");
    assert_eq!(s.instances["d1"].ctx.as_text(), Some(&odd[..]));
    // OPEN from shut has a guard: that needs the tree, which fails cleanly
    // and changes nothing.
    assert!(s.instances["d1"].machine.guarded("shut", "OPEN"));
    let (code, _) = apply(&mut s, &mut log, "d1", "OPEN", json!({}), None).unwrap_err();
    assert_eq!(code, ErrorCode::InternalError);
    assert_eq!(s.instances["d1"].state, "shut");
    assert_eq!(s.instances["d1"].ctx.as_text(), Some(&odd[..]));
}
