//! Pipelined requests are answered in order, also when one write carries
//! dependent requests.

use std::io::Write;
use std::net::TcpStream;

use serde_json::{json, Value};

use crate::machines::counter_definition;
use crate::support::{rcpx_json, request, Server};

#[test]
fn thousand_pipelined_requests_are_answered_in_order() {
    const REQUESTS: usize = 1000;
    const INSTANCES: usize = 4;
    let server = Server::start(&[]);
    let mut client = server.raw();
    client.ok(
        "PUT_MACHINE",
        json!({"machine": "counter", "version": 1, "definition": counter_definition()}),
    );
    // Expected per instance: last applied seq and last wal offset.
    let mut last_seq = [-1i64; INSTANCES];
    let mut last_offset = [0u64; INSTANCES];
    for (i, offset) in last_offset.iter_mut().enumerate() {
        let created = client.ok(
            "CREATE_INSTANCE",
            json!({"machine": "counter", "version": 1, "instance_id": format!("pipe-{i}"),
                   "initial_ctx": {"seq": -1}}),
        );
        *offset = created["wal_offset"].as_u64().unwrap();
    }

    let mut wire = Vec::new();
    let mut plan = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS {
        let instance = (i / 3) % INSTANCES;
        let id = format!("p{i}");
        let (op, params) = match i % 3 {
            0 => ("PING", Value::Null),
            1 => (
                "APPLY_EVENT",
                json!({"instance_id": format!("pipe-{instance}"), "event": "INC",
                       "payload": {"seq": i}}),
            ),
            _ => (
                "GET_INSTANCE",
                json!({"instance_id": format!("pipe-{instance}")}),
            ),
        };
        wire.extend(rcpx_json(&request(&id, op, params)));
        plan.push((id, op, instance));
    }

    // One write from another thread, so neither side can block the other.
    let mut writer: TcpStream = client.stream.try_clone().unwrap();
    let write = std::thread::spawn(move || writer.write_all(&wire));

    for (i, (id, op, instance)) in plan.iter().enumerate() {
        let response = client.read_response();
        assert_eq!(
            response["id"],
            id.as_str(),
            "response #{i} out of order: {response}"
        );
        assert_eq!(response["status"], "ok", "#{i} {op}: {response}");
        let result = &response["result"];
        match *op {
            "PING" => assert_eq!(result, &json!({"pong": true})),
            "APPLY_EVENT" => {
                assert_eq!(result["ctx"]["seq"], i, "#{i}: {result}");
                assert_eq!(result["from_state"], "s");
                assert_eq!(result["to_state"], "s");
                let offset = result["wal_offset"].as_u64().unwrap();
                assert!(
                    offset > last_offset[*instance],
                    "#{i}: offset {offset} not above previous {} on pipe-{instance}",
                    last_offset[*instance]
                );
                last_offset[*instance] = offset;
                last_seq[*instance] = i as i64;
            }
            _ => {
                assert_eq!(
                    result["ctx"]["seq"], last_seq[*instance],
                    "#{i}: GET must see every earlier apply on pipe-{instance}: {result}"
                );
                assert_eq!(
                    result["last_wal_offset"], last_offset[*instance],
                    "#{i}: {result}"
                );
            }
        }
    }
    write.join().unwrap().expect("pipelined write");
    client.assert_alive();
}

#[test]
fn one_write_of_create_apply_get_delete_is_applied_in_order() {
    let server = Server::start(&[]);
    let mut client = server.raw();
    client.ok(
        "PUT_MACHINE",
        json!({"machine": "counter", "version": 1, "definition": counter_definition()}),
    );
    let steps = [
        (
            "CREATE_INSTANCE",
            json!({"machine": "counter", "version": 1, "instance_id": "w",
                                   "initial_ctx": {"k": 0}}),
        ),
        (
            "APPLY_EVENT",
            json!({"instance_id": "w", "event": "INC", "payload": {"k": 1}}),
        ),
        ("GET_INSTANCE", json!({"instance_id": "w"})),
        ("DELETE_INSTANCE", json!({"instance_id": "w"})),
        ("GET_INSTANCE", json!({"instance_id": "w"})),
        ("APPLY_EVENT", json!({"instance_id": "w", "event": "INC"})),
        (
            "CREATE_INSTANCE",
            json!({"machine": "counter", "version": 1, "instance_id": "w"}),
        ),
        ("GET_INSTANCE", json!({"instance_id": "w"})),
    ];
    let mut wire = Vec::new();
    for (i, (op, params)) in steps.iter().enumerate() {
        wire.extend(rcpx_json(&request(&format!("w{i}"), op, params.clone())));
    }
    client.send(&wire);
    let responses: Vec<Value> = (0..steps.len()).map(|_| client.read_response()).collect();
    for (i, response) in responses.iter().enumerate() {
        assert_eq!(response["id"], format!("w{i}"), "{response}");
    }
    assert_eq!(responses[0]["status"], "ok", "{}", responses[0]);
    assert_eq!(
        responses[1]["result"]["ctx"],
        json!({"k": 1}),
        "{}",
        responses[1]
    );
    assert_eq!(
        responses[2]["result"]["ctx"],
        json!({"k": 1}),
        "{}",
        responses[2]
    );
    assert_eq!(
        responses[2]["result"]["last_wal_offset"], responses[1]["result"]["wal_offset"],
        "{}",
        responses[2]
    );
    assert_eq!(responses[3]["result"]["deleted"], true, "{}", responses[3]);
    assert_eq!(
        responses[4]["error"]["code"], "INSTANCE_NOT_FOUND",
        "{}",
        responses[4]
    );
    assert_eq!(
        responses[5]["error"]["code"], "INSTANCE_NOT_FOUND",
        "{}",
        responses[5]
    );
    assert_eq!(responses[6]["status"], "ok", "{}", responses[6]);
    assert_eq!(responses[7]["result"]["ctx"], json!({}), "{}", responses[7]);
    assert_eq!(
        responses[7]["result"]["last_wal_offset"], responses[6]["result"]["wal_offset"],
        "{}",
        responses[7]
    );
}
