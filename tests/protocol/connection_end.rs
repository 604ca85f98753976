//! How a connection ends: BYE answers then closes; a half-closed connection
//! still gets its answers.

use serde_json::{json, Value};

use crate::support::{rcpx_json, request, Server};

#[test]
fn bye_answers_then_closes_and_drops_later_requests() {
    let server = Server::start(&[]);

    let mut client = server.raw();
    let goodbye = client.ok("BYE", Value::Null);
    assert_eq!(goodbye, json!({"goodbye": true}));
    client.expect_closed();

    // PING, BYE, PING in one write: the last PING is never answered.
    let mut client = server.raw();
    let mut wire = rcpx_json(&request("a", "PING", Value::Null));
    wire.extend(rcpx_json(&request("b", "BYE", json!({"ignored": true}))));
    wire.extend(rcpx_json(&request("c", "PING", Value::Null)));
    client.send(&wire);
    let first = client.read_response();
    assert_eq!(first["id"], "a");
    assert_eq!(first["result"], json!({"pong": true}));
    let second = client.read_response();
    assert_eq!(second["id"], "b");
    assert_eq!(second["result"], json!({"goodbye": true}));
    client.expect_closed();

    server.raw().assert_alive();
}

#[test]
fn half_closed_connection_still_gets_its_answers() {
    let server = Server::start(&[]);
    let mut client = server.raw();
    let mut wire = Vec::new();
    for i in 0..5 {
        wire.extend(rcpx_json(&request(&format!("h{i}"), "PING", Value::Null)));
    }
    client.send(&wire);
    client.shutdown_write();
    for i in 0..5 {
        let response = client.read_response();
        assert_eq!(response["id"], format!("h{i}"), "{response}");
    }
    assert!(
        client.read_frame().is_none(),
        "server closes after the last answer"
    );
}
