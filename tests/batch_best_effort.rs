//! A best-effort BATCH runs what rstmdb runs in one — PING, INFO, machine
//! and instance operations, listings, WAL reads — each element as the
//! request it would be on its own, in order, with one result per element,
//! up to the `max_batch_ops` that INFO reports.

mod support;

use serde_json::{json, Value};

use support::*;

fn op(name: &str, params: Value) -> Value {
    json!({"op": name, "params": params})
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
