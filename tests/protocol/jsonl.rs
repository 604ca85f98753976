//! JSONL wire mode (docs/PROTOCOL.md §1.8): lines answered as lines, frames still accepted,
//! bad lines answered and blank lines skipped.

use serde_json::{json, Value};

use crate::machines::counter_definition;
use crate::support::{json_line, rcpx_json, request, Server};

#[test]
fn jsonl_bad_lines_are_answered_and_blank_lines_skipped() {
    let server = Server::start(&[]);
    let mut client = server.raw();
    client.send_json(&request(
        "h",
        "HELLO",
        json!({"protocol_version": 1, "wire_modes": ["jsonl"]}),
    ));
    assert_eq!(client.read_line_json()["result"]["wire_mode"], "jsonl");

    client.send(b"{this is not json}\n");
    let bad = client.read_line_json();
    assert_eq!(bad["status"], "error", "{bad}");
    assert_eq!(bad["error"]["code"], "BAD_REQUEST", "{bad}");
    assert_eq!(bad["id"], Value::Null, "{bad}");

    client.send(b"{\"type\":\"request\",\"id\":\"u\",\"op\":\"NOPE\"}\n");
    let unknown = client.read_line_json();
    assert_eq!(unknown["id"], "u", "{unknown}");
    assert_eq!(unknown["error"]["code"], "BAD_REQUEST", "{unknown}");

    let mut wire = b"\n\r\n  \n".to_vec();
    wire.extend(json_line(&request("after-blank", "PING", Value::Null)));
    client.send(&wire);
    let pong = client.read_line_json();
    assert_eq!(pong["id"], "after-blank", "{pong}");
    assert_eq!(pong["result"], json!({"pong": true}));

    // A line split across writes is assembled.
    let line = json_line(&request("split", "PING", Value::Null));
    client.send(&line[..10]);
    std::thread::sleep(std::time::Duration::from_millis(50));
    client.send(&line[10..]);
    assert_eq!(client.read_line_json()["id"], "split");
}

#[test]
fn jsonl_mode_answers_lines_and_accepts_lines_and_frames() {
    let server = Server::start(&[]);

    // The singular key `wire_mode` is not a negotiation (PROTOCOL.md §1.8).
    let mut client = server.raw();
    let hello = client.ok(
        "HELLO",
        json!({"protocol_version": 1, "wire_mode": "jsonl"}),
    );
    assert_eq!(hello["wire_mode"], "binary_json", "{hello}");

    // Negotiate JSONL with a framed HELLO: its own response is already a line.
    client.send_json(&request(
        "h1",
        "HELLO",
        json!({"protocol_version": 1, "wire_modes": ["jsonl"]}),
    ));
    let hello = client.read_line_json();
    assert_eq!(hello["id"], "h1", "{hello}");
    assert_eq!(hello["status"], "ok", "{hello}");
    assert_eq!(hello["result"]["wire_mode"], "jsonl", "{hello}");
    assert_eq!(hello["result"]["protocol_version"], 1, "{hello}");

    // Line in, line out.
    client.send(&json_line(&request("l1", "PING", Value::Null)));
    let pong = client.read_line_json();
    assert_eq!(
        pong,
        json!({"type": "response", "id": "l1", "status": "ok", "result": {"pong": true}})
    );

    // Frame in, line out.
    client.send_json(&request("f1", "PING", Value::Null));
    let pong = client.read_line_json();
    assert_eq!(pong["id"], "f1", "{pong}");
    assert_eq!(pong["result"], json!({"pong": true}));

    // Several lines in one write, mixed with a frame; errors are lines too.
    let mut batch = json_line(&request(
        "l2",
        "PUT_MACHINE",
        json!({"machine": "m", "version": 1, "definition": counter_definition()}),
    ));
    batch.extend(rcpx_json(&request(
        "f2",
        "CREATE_INSTANCE",
        json!({"machine": "m", "version": 1, "instance_id": "j1"}),
    )));
    batch.extend(json_line(&request(
        "l3",
        "GET_INSTANCE",
        json!({"instance_id": "nope"}),
    )));
    client.send(&batch);
    let put = client.read_line_json();
    assert_eq!(put["id"], "l2");
    assert_eq!(put["status"], "ok", "{put}");
    let created = client.read_line_json();
    assert_eq!(created["id"], "f2");
    assert_eq!(created["result"]["instance_id"], "j1", "{created}");
    let missing = client.read_line_json();
    assert_eq!(missing["id"], "l3");
    assert_eq!(missing["error"]["code"], "INSTANCE_NOT_FOUND", "{missing}");

    // Back to binary: binary_json wins whenever it is listed; that HELLO's
    // response is already a frame.
    client.send(&json_line(&request(
        "h2",
        "HELLO",
        json!({"protocol_version": 1, "wire_modes": ["jsonl", "binary_json"]}),
    )));
    let hello = client.read_response();
    assert_eq!(hello["id"], "h2", "{hello}");
    assert_eq!(hello["result"]["wire_mode"], "binary_json", "{hello}");
    client.assert_alive();
}
