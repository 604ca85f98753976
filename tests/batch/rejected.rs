//! A nested BATCH, a session operation or a malformed element: an atomic
//! batch is refused whole before anything runs, a best-effort one answers
//! that element with its error and runs the rest; more than
//! `max_batch_ops` elements are refused before anything runs.

use serde_json::{json, Value};

use crate::elements::{op, MAX_BATCH_OPS};
use crate::instances::{get, order_definition, pair};
use crate::support::{put_machine, shard_of, Server};

#[test]
fn nested_batches_session_ops_and_oversized_batches_are_rejected_whole() {
    let server = Server::start(&[]);
    let mut c = server.raw();
    put_machine(&mut c, "order", order_definition());
    let (x, y) = pair("reject");
    let create = |id: &str| {
        op(
            "CREATE_INSTANCE",
            json!({"machine": "order", "version": 1, "instance_id": id}),
        )
    };
    // Elements that cannot run in a batch: the session/connection operations
    // and batches inside batches, and malformed elements.
    let refused = [
        op("BATCH", json!({"ops": [create(&y)]})),
        op("HELLO", json!({"protocol_version": 1})),
        op("AUTH", json!({"method": "bearer", "token": "t"})),
        op("BYE", Value::Null),
        op("WATCH_ALL", json!({})),
        op("WATCH_INSTANCE", json!({"instance_id": x})),
        op("UNWATCH", json!({"subscription_id": "sub-x"})),
        json!({"params": {}}),
        json!({"op": 5}),
        json!({"op": "NOT_AN_OP"}),
    ];
    // Atomic: refused whole, before anything runs, naming the element.
    let atomic_only = [
        op("INFO", Value::Null),
        op(
            "PUT_MACHINE",
            json!({"machine": "m", "version": 1, "definition": order_definition()}),
        ),
        op("LIST_INSTANCES", json!({})),
    ];
    for bad in refused.iter().chain(atomic_only.iter()) {
        let ops = json!([create(&x), bad, create(&y)]);
        let e = c.err_code(
            "BATCH",
            json!({"mode": "atomic", "ops": ops}),
            "BAD_REQUEST",
        );
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .starts_with("invalid request: "),
            "{e}"
        );
        assert_eq!(e["details"]["failed_op_index"], 1, "{bad}: {e}");
        assert_eq!(e["details"]["applied"], false, "{e}");
        assert!(get(&mut c, &x).is_none(), "atomic {bad}: {x} exists");
        assert!(get(&mut c, &y).is_none(), "atomic {bad}: {y} exists");
    }
    // Best effort: the element that cannot run gets its own error; the
    // others run.
    for (i, bad) in refused.iter().enumerate() {
        let (x, y) = (format!("{x}-{i}"), format!("{y}-{i}"));
        let ops = json!([create(&x), bad, create(&y)]);
        let r = c.ok("BATCH", json!({"mode": "best_effort", "ops": ops}));
        let results = r["results"].as_array().unwrap();
        assert_eq!(results.len(), 3, "{r}");
        assert_eq!(results[0]["status"], "ok", "{r}");
        assert_eq!(results[1]["status"], "error", "{bad}: {r}");
        assert_eq!(results[1]["error"]["code"], "BAD_REQUEST", "{r}");
        assert_eq!(results[2]["status"], "ok", "{r}");
        assert!(get(&mut c, &x).is_some() && get(&mut c, &y).is_some());
    }
    // The connection is still open and usable (the BYE inside did nothing).
    c.assert_alive();

    // Size limit: 100 ops run, 101 are refused before anything runs.
    for mode in ["atomic", "best_effort"] {
        let ids: Vec<String> = (0..=MAX_BATCH_OPS)
            .map(|i| format!("size-{mode}-{i}"))
            .collect();
        let ops: Vec<Value> = ids
            .iter()
            .map(|id| {
                op(
                    "CREATE_INSTANCE",
                    json!({"machine": "order", "version": 1, "instance_id": id}),
                )
            })
            .collect();
        let e = c.err_code("BATCH", json!({"mode": mode, "ops": ops}), "BAD_REQUEST");
        assert_eq!(
            e["message"],
            format!(
                "invalid request: batch size {} exceeds limit {MAX_BATCH_OPS}",
                MAX_BATCH_OPS + 1
            ),
            "{e}"
        );
        assert!(
            ids.iter().all(|id| get(&mut c, id).is_none()),
            "{mode}: 101 ops ran partly"
        );
        let r = c.ok("BATCH", json!({"mode": mode, "ops": ops[..MAX_BATCH_OPS]}));
        let results = r["results"].as_array().unwrap();
        assert_eq!(results.len(), MAX_BATCH_OPS);
        assert!(results.iter().all(|e| e["status"] == "ok"), "{mode}: {r}");
        let on_shard_0 = ids[..MAX_BATCH_OPS]
            .iter()
            .filter(|id| shard_of(id) == 0)
            .count();
        assert!(
            on_shard_0 > 0 && on_shard_0 < MAX_BATCH_OPS,
            "the 100 creates span both shards"
        );
    }
}
