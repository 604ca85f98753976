//! A failing atomic batch leaves no trace on any shard — no state, no
//! event, nothing a later request or a restart could see — and says which
//! element failed and why.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use crate::elements::{apply_op, op};
use crate::instances::{create, get, order_definition};
use crate::support::{ids_on_shard, put_machine, RawClient, Server};
use crate::watcher::{Watcher, QUIET_PERIOD};

/// Everything observable about an instance.
fn snapshot(c: &mut RawClient, id: &str) -> Option<Value> {
    get(c, id)
}

/// Run `ops` atomically; it must fail at `index` (`op_name`, `code`).
fn expect_atomic_failure(
    c: &mut RawClient,
    ops: &[Value],
    index: usize,
    op_name: &str,
    code: &str,
) -> Value {
    let e = c.err_code(
        "BATCH",
        json!({"mode": "atomic", "ops": ops}),
        "BAD_REQUEST",
    );
    let message = e["message"].as_str().unwrap_or_default();
    let prefix = format!(
        "invalid request: atomic batch failed: op {index} ({op_name}) failed with {code}: "
    );
    assert!(
        message.starts_with(&prefix),
        "message {message:?} should start with {prefix:?}"
    );
    let details = &e["details"];
    assert_eq!(details["failed_op_index"], index, "{e}");
    assert_eq!(details["failed_op"], op_name, "{e}");
    assert_eq!(details["failed_code"], code, "{e}");
    assert_eq!(details["applied"], false, "{e}");
    let failed_message = details["failed_message"].as_str().expect("failed_message");
    assert!(
        !failed_message.is_empty() && message.contains(failed_message),
        "{e}"
    );
    assert_eq!(e["retryable"], false, "{e}");
    e
}

#[test]
fn a_failing_atomic_batch_leaves_no_trace_on_any_shard() {
    let mut server = Server::start(&[]);
    let mut c = server.raw();
    put_machine(&mut c, "order", order_definition());
    let a = ids_on_shard("fail", 0, 2);
    let b = ids_on_shard("fail", 1, 2);
    for id in a.iter().chain(&b) {
        create(&mut c, "order", id, json!({"v": 0}));
    }
    let mut watcher = Watcher::subscribe(server.addr(), json!({}));
    let pay = c.ok(
        "APPLY_EVENT",
        json!({"instance_id": a[0], "event": "PAY", "payload": {"v": 1}}),
    );
    let e = watcher
        .expect_events(1, "the PAY before the batches", &server)
        .remove(0);
    assert_eq!(e["wal_offset"], pay["wal_offset"], "{e}");
    let ids: Vec<String> = a.iter().chain(&b).cloned().collect();
    let new_a = ids_on_shard("fresh", 0, 1).remove(0);
    let new_b = ids_on_shard("fresh", 1, 1).remove(0);
    let missing_a = ids_on_shard("missing", 0, 1).remove(0);
    let before: BTreeMap<String, Option<Value>> = ids
        .iter()
        .map(|id| (id.clone(), snapshot(&mut c, id)))
        .collect();

    let poisoned = json!({"v": 666, "poison": true});
    let cases: Vec<(&str, Vec<Value>, usize, &str, &str)> = vec![
        (
            // Shard 0 prepares (and holds) its part; shard 1 fails at its last op.
            "fails on the second shard after the first prepared",
            vec![
                apply_op(&a[0], "SHIP", poisoned.clone()),
                op(
                    "CREATE_INSTANCE",
                    json!({"machine": "order", "version": 1,
                                             "instance_id": new_a}),
                ),
                op(
                    "APPLY_EVENT",
                    json!({"instance_id": b[0], "event": "PAY",
                                         "payload": poisoned, "idempotency_key": "k-pay"}),
                ),
                op(
                    "CREATE_INSTANCE",
                    json!({"machine": "order", "version": 1,
                                             "instance_id": new_b}),
                ),
                op("DELETE_INSTANCE", json!({"instance_id": b[1]})),
                apply_op(&b[0], "PAY", Value::Null),
            ],
            5,
            "APPLY_EVENT",
            "INVALID_TRANSITION",
        ),
        (
            "fails on the first shard, in the middle of its ops",
            vec![
                apply_op(&b[0], "CANCEL", poisoned.clone()),
                apply_op(&a[1], "PAY", poisoned.clone()),
                apply_op(&missing_a, "PAY", Value::Null),
                apply_op(&a[0], "SHIP", poisoned.clone()),
            ],
            2,
            "APPLY_EVENT",
            "INSTANCE_NOT_FOUND",
        ),
        (
            "single shard (fast path)",
            vec![
                apply_op(&a[1], "PAY", poisoned.clone()),
                op("DELETE_INSTANCE", json!({"instance_id": a[0]})),
                op(
                    "CREATE_INSTANCE",
                    json!({"machine": "order", "version": 1,
                                             "instance_id": new_a}),
                ),
                op(
                    "CREATE_INSTANCE",
                    json!({"machine": "order", "version": 1,
                                             "instance_id": a[1]}),
                ),
            ],
            3,
            "CREATE_INSTANCE",
            "INSTANCE_EXISTS",
        ),
        (
            "a machine read fails",
            vec![
                apply_op(&a[1], "PAY", poisoned.clone()),
                apply_op(&b[1], "PAY", poisoned.clone()),
                op("GET_MACHINE", json!({"machine": "nope", "version": 1})),
            ],
            2,
            "GET_MACHINE",
            "MACHINE_NOT_FOUND",
        ),
        (
            "an op with bad params",
            vec![
                apply_op(&a[1], "PAY", poisoned.clone()),
                apply_op(&b[1], "PAY", poisoned.clone()),
                op("APPLY_EVENT", json!({"instance_id": b[1]})),
            ],
            2,
            "APPLY_EVENT",
            "BAD_REQUEST",
        ),
        (
            "optimistic concurrency fails on the second shard",
            vec![
                apply_op(&a[1], "PAY", poisoned.clone()),
                op(
                    "APPLY_EVENT",
                    json!({"instance_id": b[1], "event": "PAY",
                                         "expected_wal_offset": 1}),
                ),
            ],
            1,
            "APPLY_EVENT",
            "CONFLICT",
        ),
    ];
    for (what, ops, index, op_name, code) in &cases {
        eprintln!("atomic failure case: {what}");
        expect_atomic_failure(&mut c, ops, *index, op_name, code);
        for id in &ids {
            assert_eq!(
                snapshot(&mut c, id),
                before[id],
                "{what}: instance {id} changed\n{}",
                server.stderr_tail()
            );
        }
        assert!(snapshot(&mut c, &new_a).is_none(), "{what}: {new_a} exists");
        assert!(snapshot(&mut c, &new_b).is_none(), "{what}: {new_b} exists");
    }
    // Watchers were told nothing.
    if let Some(e) = watcher.next_event(QUIET_PERIOD) {
        panic!("a watcher received an event of a failed atomic batch: {e}");
    }

    // Later operations behave as if the batches never ran: the creates
    // succeed, the idempotency key is fresh, the offset check passes
    // against the pre-batch offset.
    let fresh = c.ok(
        "APPLY_EVENT",
        json!({"instance_id": b[0], "event": "PAY", "idempotency_key": "k-pay",
               "payload": {"v": 2}}),
    );
    assert_eq!(
        fresh["applied"], true,
        "key of a failed batch must be unused: {fresh}"
    );
    assert_eq!(fresh["ctx"], json!({"v": 2}), "{fresh}");
    let ship = c.ok(
        "APPLY_EVENT",
        json!({"instance_id": a[0], "event": "SHIP",
               "expected_wal_offset": pay["wal_offset"]}),
    );
    assert_eq!(ship["ctx"], json!({"v": 1}), "{ship}");
    create(&mut c, "order", &new_a, json!({}));
    create(&mut c, "order", &new_b, json!({}));
    let got = watcher.expect_events(2, "the later applies only", &server);
    let got_offsets: BTreeSet<u64> = got
        .iter()
        .map(|e| e["wal_offset"].as_u64().unwrap())
        .collect();
    let want: BTreeSet<u64> = [&fresh, &ship]
        .iter()
        .map(|r| r["wal_offset"].as_u64().unwrap())
        .collect();
    assert_eq!(got_offsets, want);
    for e in &got {
        assert!(e["ctx"].get("poison").is_none(), "{e}");
    }

    // A restart replays the logs: still no trace (aborted prepares stay aborted).
    let now: BTreeMap<String, Option<Value>> = ids
        .iter()
        .chain([&new_a, &new_b])
        .map(|id| (id.clone(), snapshot(&mut c, id)))
        .collect();
    server.restart();
    let mut c = server.raw();
    for (id, want) in &now {
        assert_eq!(
            &snapshot(&mut c, id),
            want,
            "after restart: {id}\n{}",
            server.stderr_tail()
        );
    }
    let listed = c.ok("LIST_INSTANCES", json!({"limit": 100}));
    assert_eq!(
        listed["total"],
        now.values().filter(|v| v.is_some()).count(),
        "{listed}"
    );
}
