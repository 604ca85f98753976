//! A best-effort BATCH runs each element as the request it would be on its
//! own — PING, INFO, machine and instance operations, listings, WAL reads —
//! in order, one result per element, failures included, up to the
//! `max_batch_ops` that INFO reports.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::elements::{apply_op, assert_error_entry, assert_ok_entry, get_op, keys, op};
use crate::instances::{create, get, order_definition, pair};
use crate::support::{put_machine, Server};

#[test]
fn best_effort_reports_every_op_in_order() {
    let server = Server::start(&[]);
    let mut c = server.raw();
    put_machine(&mut c, "order", order_definition());
    let (x, y) = pair("be");
    create(&mut c, "order", &y, json!({"n": 1}));

    let ops = vec![
        op(
            "CREATE_INSTANCE",
            json!({"machine": "order", "version": 1, "instance_id": x}),
        ),
        apply_op(&x, "PAY", json!({"amount": 7})),
        apply_op("be-missing", "PAY", Value::Null),
        get_op(&x),
        op("GET_MACHINE", json!({"machine": "order", "version": 1})),
        apply_op(&y, "SHIP", Value::Null),
        op("LIST_MACHINES", Value::Null),
        op("GET_MACHINE", json!({"machine": "nope", "version": 1})),
        apply_op(&y, "CANCEL", json!({"why": "test"})),
        op("DELETE_INSTANCE", json!({"instance_id": "be-missing"})),
        op(
            "CREATE_INSTANCE",
            json!({"machine": "order", "version": 1, "instance_id": y}),
        ),
        op("APPLY_EVENT", json!({"instance_id": x})),
        get_op(&y),
    ];
    for params in [
        json!({"ops": ops}),
        json!({"mode": "best_effort", "ops": ops}),
    ] {
        // Run twice: the second time on the state the first left behind.
        let first_run = params.get("mode").is_none();
        let r = c.ok("BATCH", params);
        assert_eq!(keys(&r), BTreeSet::from(["results".into()]), "{r}");
        let results = r["results"].as_array().expect("results array");
        assert_eq!(results.len(), ops.len(), "{r}");
        if first_run {
            let created = assert_ok_entry(&results[0], "create x");
            assert_eq!(created["instance_id"], x.as_str());
            let paid = assert_ok_entry(&results[1], "pay x");
            assert_eq!(paid["to_state"], "paid");
            assert!(paid["wal_offset"].as_u64().unwrap() > created["wal_offset"].as_u64().unwrap());
            let got = assert_ok_entry(&results[3], "get x after the pay in the same batch");
            assert_eq!(got["state"], "paid", "{got}");
            assert_eq!(got["ctx"], json!({"amount": 7}));
            assert_error_entry(&results[5], "INVALID_TRANSITION", "ship y from created");
            let cancelled = assert_ok_entry(&results[8], "cancel y");
            assert_eq!(cancelled["ctx"], json!({"n": 1, "why": "test"}));
            let got = assert_ok_entry(&results[12], "get y");
            assert_eq!(got["state"], "cancelled", "{got}");
        } else {
            assert_error_entry(&results[0], "INSTANCE_EXISTS", "create x again");
            assert_error_entry(&results[1], "INVALID_TRANSITION", "pay x again");
            assert_ok_entry(&results[3], "get x");
            assert_error_entry(&results[5], "INVALID_TRANSITION", "ship y");
            assert_error_entry(&results[8], "INVALID_TRANSITION", "cancel y again");
            assert_ok_entry(&results[12], "get y");
        }
        assert_error_entry(
            &results[2],
            "INSTANCE_NOT_FOUND",
            "apply on a missing instance",
        );
        let m = assert_ok_entry(&results[4], "get machine");
        assert!(m["definition"].is_object(), "{m}");
        let list = assert_ok_entry(&results[6], "list machines");
        assert_eq!(
            list["items"],
            json!([{"machine": "order", "versions": [1]}])
        );
        assert_error_entry(&results[7], "MACHINE_NOT_FOUND", "get unknown machine");
        assert_error_entry(&results[9], "INSTANCE_NOT_FOUND", "delete missing");
        assert_error_entry(&results[10], "INSTANCE_EXISTS", "create y");
        assert_error_entry(&results[11], "BAD_REQUEST", "apply without event");
    }
    // What succeeded stays applied.
    assert_eq!(get(&mut c, &x).unwrap()["state"], "paid");
    assert_eq!(get(&mut c, &y).unwrap()["state"], "cancelled");

    // Empty ops, and the `operations` alias.
    assert_eq!(c.ok("BATCH", json!({"ops": []})), json!({"results": []}));
    let r = c.ok("BATCH", json!({"operations": [get_op(&x), get_op(&y)]}));
    assert_eq!(r["results"].as_array().map(Vec::len), Some(2), "{r}");
    assert_eq!(r["results"][0]["result"]["state"], "paid", "{r}");
    let r = c.ok(
        "BATCH",
        json!({"mode": "atomic", "operations": [apply_op(&x, "SHIP", json!({"via": "alias"}))]}),
    );
    assert_eq!(r["results"][0]["result"]["to_state"], "shipped", "{r}");
    let e = c.err_code("BATCH", json!({"mode": "atomic"}), "BAD_REQUEST");
    assert_eq!(e["message"], "invalid request: missing ops array", "{e}");
}

#[test]
fn a_best_effort_batch_runs_ping_info_puts_lists_and_wal_reads_in_order() {
    let server = Server::start(&[]);
    let mut c = server.raw();
    let definition = json!({"states": ["a", "b"], "initial": "a",
                            "transitions": [{"from": "a", "event": "GO", "to": "b"}]});
    let r = c.ok(
        "BATCH",
        json!({"mode": "best_effort", "ops": [
            op("PING", Value::Null),
            op("INFO", Value::Null),
            op("PUT_MACHINE", json!({"machine": "m", "version": 1, "definition": definition})),
            op("CREATE_INSTANCE", json!({"machine": "m", "version": 1, "instance_id": "b1"})),
            op("APPLY_EVENT", json!({"instance_id": "b1", "event": "GO"})),
            op("LIST_INSTANCES", json!({})),
            op("LIST_MACHINES", Value::Null),
            op("WAL_STATS", Value::Null),
            op("WAL_READ", json!({"from_offset": 0})),
            op("REPLICATION_STATUS", Value::Null),
            op("GET_INSTANCE", json!({"instance_id": "nope"})),
        ]}),
    );
    let results = r["results"].as_array().unwrap();
    assert_eq!(results.len(), 11, "{r}");
    let result = |i: usize| &results[i]["result"];
    assert_eq!(result(0)["pong"], true);
    assert_eq!(result(1)["server_name"], "corestate");
    assert_eq!(result(2)["created"], true);
    assert_eq!(result(3)["state"], "a");
    assert_eq!(result(4)["to_state"], "b");
    // Later elements see earlier ones.
    assert_eq!(result(5)["total"], 1);
    assert_eq!(result(5)["instances"][0]["state"], "b");
    assert_eq!(result(6)["items"][0]["machine"], "m");
    assert_eq!(result(7)["entry_count"], 3);
    assert_eq!(result(8)["records"].as_array().unwrap().len(), 3);
    assert_eq!(result(9)["role"], "standalone");
    assert_eq!(results[10]["status"], "error");
    assert_eq!(results[10]["error"]["code"], "INSTANCE_NOT_FOUND");
    for (i, element) in results.iter().take(10).enumerate() {
        assert_eq!(element["status"], "ok", "element {i}: {element}");
    }
}

#[test]
fn a_batch_of_max_batch_ops_pings_is_answered_one_result_each() {
    let server = Server::start(&[]);
    let mut c = server.raw();
    let max = c.ok("INFO", Value::Null)["max_batch_ops"].as_u64().unwrap() as usize;
    let pings: Vec<Value> = (0..max).map(|_| op("PING", Value::Null)).collect();
    for mode in ["best_effort", "atomic"] {
        let r = c.ok("BATCH", json!({"mode": mode, "ops": pings}));
        let results = r["results"].as_array().unwrap();
        assert_eq!(results.len(), max, "{mode}");
        assert!(
            results.iter().all(|x| x["result"]["pong"] == true),
            "{mode}: {r}"
        );
    }
}
