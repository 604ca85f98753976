//! Legacy RCP1 framing (docs/PROTOCOL.md §1.9): a minimal client's session is answered in
//! RCP1 frames; variant B's extension and CRC flag are honoured.

use serde_json::{json, Value};

use crate::support::{
    rcp1_frame, rcp1_variant_b, rcpx_frame, request, RawClient, Server, FLAG_CRC_PRESENT,
    RCP1_MAGIC,
};

#[test]
fn rcp1_minimal_client_session_is_answered_in_rcp1_frames() {
    let server = Server::start(&[]);
    let mut client = server.raw();
    let call = |client: &mut RawClient, doc: Value| -> Value {
        client.send(&rcp1_frame(doc.to_string().as_bytes()));
        let frame = client.read_rcp1_frame();
        assert_eq!(frame.magic, RCP1_MAGIC);
        assert_eq!(
            frame.header_word,
            [0, 1, 0, 0],
            "RCP1 response bytes 4-7 must be 00 01 00 00"
        );
        assert!(
            frame.crc_ok(),
            "RCP1 response CRC must be correct: {frame:?}"
        );
        let response = frame.json();
        assert_eq!(response["id"], doc["id"], "{response}");
        assert_eq!(response["status"], "ok", "request {doc} failed: {response}");
        response["result"].clone()
    };

    let put = call(
        &mut client,
        request(
            "1",
            "PUT_MACHINE",
            json!({"machine": "order", "version": 1, "definition": {
                "states": ["created", "paid"], "initial": "created",
                "transitions": [{"from": "created", "event": "PAY", "to": "paid"}]}}),
        ),
    );
    assert_eq!(put["created"], true, "{put}");

    let created = call(
        &mut client,
        request(
            "2",
            "CREATE_INSTANCE",
            json!({"machine": "order", "version": 1, "id": "legacy-1",
                   "context": {"customer": "ann"}}),
        ),
    );
    assert_eq!(
        created["instance_id"], "legacy-1",
        "`id` is the instance id: {created}"
    );
    assert_eq!(created["state"], "created");

    let got = call(
        &mut client,
        request("3", "GET_INSTANCE", json!({"id": "legacy-1"})),
    );
    assert_eq!(got["state"], "created", "{got}");
    assert_eq!(
        got["ctx"],
        json!({"customer": "ann"}),
        "`context` is initial_ctx: {got}"
    );
    assert_eq!(got["last_wal_offset"], created["wal_offset"], "{got}");

    let applied = call(
        &mut client,
        request(
            "4",
            "APPLY_EVENT",
            json!({"instance_id": "legacy-1", "event": "PAY", "payload": {"amount": 5}}),
        ),
    );
    assert_eq!(applied["to_state"], "paid", "{applied}");
    assert_eq!(applied["ctx"], json!({"customer": "ann", "amount": 5}));

    let pong = call(&mut client, request("5", "PING", Value::Null));
    assert_eq!(pong, json!({"pong": true}));
}

#[test]
fn rcp1_variant_b_extension_and_crc_flag() {
    let server = Server::start(&[]);
    let mut client = server.raw();
    let ping = |id: &str| request(id, "PING", Value::Null).to_string().into_bytes();

    // CRC flag set, a header extension, correct CRC.
    let payload = ping("b1");
    client.send(&rcp1_variant_b(
        FLAG_CRC_PRESENT,
        b"ext",
        &payload,
        crc32c::crc32c(&payload),
    ));
    let frame = client.read_rcp1_frame();
    assert!(frame.crc_ok());
    assert_eq!(frame.header_word, [0, 1, 0, 0]);
    assert_eq!(frame.json()["id"], "b1");

    // CRC flag clear: the CRC field is not checked.
    let payload = ping("b2");
    client.send(&rcp1_variant_b(0, &[], &payload, 0x1234_5678));
    let response = client.read_rcp1_frame().json();
    assert_eq!(response["id"], "b2", "{response}");
    assert_eq!(response["result"], json!({"pong": true}));

    // CRC flag set and wrong: close, nothing written.
    let payload = ping("b3");
    client.send(&rcp1_variant_b(
        FLAG_CRC_PRESENT,
        &[],
        &payload,
        0x1234_5678,
    ));
    client.expect_closed();

    // An RCPX frame on an RCP1 connection is a framing violation too.
    let mut client = server.raw();
    client.send(&rcp1_frame(&ping("b4")));
    assert_eq!(client.read_rcp1_frame().json()["id"], "b4");
    client.send(&rcpx_frame(&ping("b5")));
    client.expect_closed();
    server.raw().assert_alive();
}
