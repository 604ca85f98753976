//! The deepest values a client may send survive the log and a restart.

use serde_json::{json, Value};

use crate::support::wire::request;
use crate::support::Server;

fn nested_object(depth: usize) -> Value {
    (1..depth).fold(json!({}), |inner, _| json!({ "d": inner }))
}

fn text_of(raw: &mut crate::support::RawClient, op: &str, params: Value) -> String {
    raw.send_json(&request("x", op, params));
    let frame = raw.read_frame().expect("an answer");
    String::from_utf8_lossy(&frame.payload).into_owned()
}

#[test]
fn the_deepest_context_and_payload_survive_a_restart() {
    let mut server = Server::start(&[]);
    let mut raw = server.raw();
    crate::counter::put_counter(&mut raw);
    let ctx = nested_object(126);
    let t = text_of(
        &mut raw,
        "CREATE_INSTANCE",
        json!({"machine": "ctr", "version": 1, "instance_id": "deep", "initial_ctx": ctx}),
    );
    assert!(
        t.contains("\"status\":\"ok\""),
        "{}",
        &t[..t.len().min(300)]
    );
    let payload = json!({"p": nested_object(125)});
    let t = text_of(
        &mut raw,
        "APPLY_EVENT",
        json!({"instance_id": "deep", "event": "TICK", "payload": payload}),
    );
    assert!(
        t.contains("\"status\":\"ok\""),
        "{}",
        &t[..t.len().min(300)]
    );
    let before = text_of(&mut raw, "GET_INSTANCE", json!({"instance_id": "deep"}));
    drop(raw);
    server.restart();
    let mut raw = server.raw();
    let after = text_of(&mut raw, "GET_INSTANCE", json!({"instance_id": "deep"}));
    assert!(
        after.contains("\"status\":\"ok\""),
        "{}",
        &after[..after.len().min(300)]
    );
    assert_eq!(before, after);
}
