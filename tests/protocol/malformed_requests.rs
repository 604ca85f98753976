//! A malformed request (bad JSON, bad envelope, invalid UTF-8) gets
//! BAD_REQUEST, and the connection stays usable.

use serde_json::{json, Value};

use crate::support::{assert_server_frame, rcpx_frame, RawClient, Server};

/// Send `payload` framed correctly; expect BAD_REQUEST echoing `id`.
fn assert_bad_request(client: &mut RawClient, payload: &[u8], id: Value) {
    client.send(&rcpx_frame(payload));
    let response = client.read_response();
    let shown = String::from_utf8_lossy(payload);
    assert_eq!(response["type"], "response", "for {shown}: {response}");
    assert_eq!(response["status"], "error", "for {shown}: {response}");
    assert_eq!(
        response["error"]["code"], "BAD_REQUEST",
        "for {shown}: {response}"
    );
    assert_eq!(
        response["error"]["retryable"], false,
        "for {shown}: {response}"
    );
    assert!(
        response["error"]["message"].is_string(),
        "for {shown}: {response}"
    );
    assert_eq!(response["id"], id, "id echo for {shown}: {response}");
    client.assert_alive();
}

#[test]
fn malformed_requests_get_bad_request_and_the_connection_stays_usable() {
    let server = Server::start(&[]);
    let mut client = server.raw();

    assert_bad_request(&mut client, b"this is not json", Value::Null);
    assert_bad_request(&mut client, b"", Value::Null);
    assert_bad_request(&mut client, b"[1,2,3]", Value::Null);
    assert_bad_request(&mut client, br#"{"type":"request","id":"m1"}"#, json!("m1"));
    assert_bad_request(
        &mut client,
        br#"{"type":"request","id":"m2","op":7}"#,
        json!("m2"),
    );
    assert_bad_request(
        &mut client,
        br#"{"type":"request","id":"u1","op":"FROBNICATE"}"#,
        json!("u1"),
    );
    assert_bad_request(
        &mut client,
        br#"{"type":"request","id":"u2","op":"ping"}"#,
        json!("u2"),
    );
    assert_bad_request(
        &mut client,
        br#"{"type":"request","id":42,"op":"NOPE"}"#,
        json!(42),
    );
    assert_bad_request(
        &mut client,
        br#"{"type":"request","id":"t1","op":"GET_INSTANCE","params":{"instance_id":5}}"#,
        json!("t1"),
    );
    assert_bad_request(
        &mut client,
        br#"{"type":"request","id":"t2","op":"GET_INSTANCE"}"#,
        json!("t2"),
    );
    assert_bad_request(
        &mut client,
        br#"{"type":"request","id":"t3","op":"PUT_MACHINE","params":{"machine":"m","version":"1","definition":{"states":["a"],"initial":"a","transitions":[]}}}"#,
        json!("t3"),
    );
    assert_bad_request(
        &mut client,
        br#"{"type":"request","id":"t4","op":"LIST_INSTANCES","params":{"limit":"ten"}}"#,
        json!("t4"),
    );
    assert_bad_request(
        &mut client,
        br#"{"type":"request","id":"t5","op":"APPLY_EVENT","params":{"instance_id":"i","event":"E","expected_wal_offset":"abc"}}"#,
        json!("t5"),
    );
    assert_bad_request(
        &mut client,
        br#"{"type":"request","id":"t6","op":"CREATE_INSTANCE","params":{"machine":"m","version":-1}}"#,
        json!("t6"),
    );
    assert_bad_request(
        &mut client,
        br#"{"type":"request","id":"t7","op":"HELLO","params":{"protocol_version":1,"wire_modes":null}}"#,
        json!("t7"),
    );
}

#[test]
fn invalid_utf8_payload_never_harms_the_server() {
    let server = Server::start(&[]);
    let mut client = server.raw();
    client.send(&rcpx_frame(
        b"{\"type\":\"request\",\"id\":\"\xff\xfe\",\"op\":\"PING\"}",
    ));
    // Either answered with BAD_REQUEST or closed; never a success, never a crash.
    if let Some(frame) = client.read_frame() {
        assert_server_frame(&frame);
        let response = frame.json();
        assert_eq!(response["error"]["code"], "BAD_REQUEST", "{response}");
        client.assert_alive();
    }
    server.raw().assert_alive();
}
