//! The wire protocol byte by byte (spec §1–§3, Appendix A), with raw
//! sockets: exact frames, legacy RCP1 framing, JSONL, framing violations,
//! malformed requests, pipelining and BYE.

mod support;

use std::io::Write;
use std::net::TcpStream;

use serde_json::{json, Value};

use support::*;

fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

/// A machine with one state and a self-transition, for pipelined applies.
fn counter_definition() -> Value {
    json!({
        "states": ["s"],
        "initial": "s",
        "transitions": [{"from": "s", "event": "INC", "to": "s"}]
    })
}

#[test]
fn ping_frame_round_trips_byte_exact_as_in_appendix_a() {
    let server = Server::start(&[]);
    let request = hex("52 43 50 58 00 01 00 01 00 00 00 00 00 27 15 f1 93 b1 \
         7b 22 74 79 70 65 22 3a 22 72 65 71 75 65 73 74 22 2c 22 69 64 22 3a 22 31 \
         22 2c 22 6f 70 22 3a 22 50 49 4e 47 22 7d");
    assert_eq!(
        request,
        rcpx_frame(br#"{"type":"request","id":"1","op":"PING"}"#)
    );
    let mut expected = hex("52 43 50 58 00 01 00 01 00 00 00 00 00 41 4b 7b 43 2f");
    expected
        .extend_from_slice(br#"{"type":"response","id":"1","status":"ok","result":{"pong":true}}"#);

    let mut client = server.raw();
    client.send(&request);
    let frame = client.read_frame().expect("a PING response");
    assert_eq!(
        frame.raw,
        expected,
        "response bytes differ:\n got {:?}\nwant {:?}",
        String::from_utf8_lossy(&frame.raw),
        String::from_utf8_lossy(&expected)
    );
}

#[test]
fn hello_negotiates_binary_and_info_reports_limits() {
    let server = Server::start(&[]);
    let mut client = server.raw();
    let hello = client.ok(
        "HELLO",
        json!({"protocol_version": 1, "client_name": "raw", "wire_modes": ["binary_json"],
               "features": ["idempotency", "batch"]}),
    );
    assert_eq!(hello["protocol_version"], 1, "{hello}");
    assert_eq!(hello["wire_mode"], "binary_json", "{hello}");
    assert!(hello["features"].is_array(), "{hello}");
    assert!(hello["server_name"].is_string(), "{hello}");
    assert!(hello["server_version"].is_string(), "{hello}");

    let bad = client.err_code("HELLO", json!({"protocol_version": 2}), "BAD_REQUEST");
    assert_eq!(bad["retryable"], false, "{bad}");

    let info = client.ok("INFO", Value::Null);
    assert_eq!(info["protocol_version"], 1, "{info}");
    assert_eq!(info["max_frame_bytes"], MAX_PAYLOAD_BYTES, "{info}");
    assert_eq!(info["max_payload_bytes"], MAX_PAYLOAD_BYTES, "{info}");
    assert_eq!(info["auth_required"], false, "{info}");
    assert_eq!(info["shards"], 2, "{info}");
    assert!(info["max_batch_ops"].is_u64(), "{info}");
    assert!(info["features"].is_array(), "{info}");
    assert!(info["server_name"].is_string(), "{info}");
    assert!(info["server_version"].is_string(), "{info}");
    client.assert_alive();
}

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

    // The singular key `wire_mode` is not a negotiation (spec §1.8).
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

/// Send `bad` on a fresh connection (optionally after a good PING) and
/// require a silent close; then a fresh connection must still work.
fn assert_framing_violation_closes(server: &Server, what: &str, bad: &[u8], ping_first: bool) {
    let mut client = server.raw();
    if ping_first {
        client.assert_alive();
    }
    // A valid request queued behind the bad frame must not be answered.
    let mut bytes = bad.to_vec();
    bytes.extend(rcpx_json(&request("after", "PING", Value::Null)));
    client.send(&bytes);
    let how = client.expect_closed();
    eprintln!("{what}: connection closed ({how:?})");
    let mut fresh = server.raw();
    fresh.assert_alive();
}

#[test]
fn framing_violations_close_the_connection_without_a_reply() {
    let server = Server::start(&[]);
    let ping = br#"{"type":"request","id":"x","op":"PING"}"#;
    let crc = crc32c::crc32c(ping);

    let mut bad_magic = rcpx_frame(ping);
    bad_magic[..4].copy_from_slice(b"RCPZ");
    assert_framing_violation_closes(&server, "bad magic", &bad_magic, false);
    assert_framing_violation_closes(&server, "bad magic mid-stream", &bad_magic, true);

    for version in [0u16, 2, 0x0100] {
        let frame = rcpx_frame_with(version, FLAG_CRC_PRESENT, &[], ping, crc);
        assert_framing_violation_closes(&server, &format!("version {version}"), &frame, false);
    }
    for flags in [0x0010u16, 0x0011, 0x8000, 0xFFFF] {
        let frame = rcpx_frame_with(1, flags, &[], ping, crc);
        assert_framing_violation_closes(&server, &format!("flags {flags:#06x}"), &frame, true);
    }

    let mut wrong_crc = rcpx_frame_with(1, FLAG_CRC_PRESENT, &[], ping, crc ^ 1);
    assert_framing_violation_closes(&server, "crc mismatch", &wrong_crc, true);
    // CRC flag set with a zero CRC field is a mismatch too.
    wrong_crc = rcpx_frame_with(1, FLAG_CRC_PRESENT, &[], ping, 0);
    assert_framing_violation_closes(&server, "crc zero with flag", &wrong_crc, false);

    // An RCP1 frame on a connection that started as RCPX.
    assert_framing_violation_closes(&server, "RCP1 after RCPX", &rcp1_frame(ping), true);
}

#[test]
fn oversized_payload_header_closes_immediately() {
    let server = Server::start(&[]);
    // Only the header: the server must close on seeing the length, without
    // waiting for 16 MiB + 1 bytes of payload.
    let mut header = rcpx_frame_with(1, FLAG_CRC_PRESENT, &[], &[], 0);
    header[10..14].copy_from_slice(&((MAX_PAYLOAD_BYTES as u32) + 1).to_be_bytes());
    let mut client = server.raw();
    client.assert_alive();
    client.send(&header);
    client.expect_closed();

    let mut header = rcpx_frame_with(1, 0, &[], &[], 0);
    header[10..14].copy_from_slice(&u32::MAX.to_be_bytes());
    let mut client = server.raw();
    client.send(&header);
    client.expect_closed();

    server.raw().assert_alive();
}

#[test]
fn payload_of_exactly_16_mib_is_accepted() {
    let server = Server::start(&[]);
    let head = r#"{"type":"request","id":"big","op":"PING","params":{"pad":""#;
    let tail = r#""}}"#;
    let pad = MAX_PAYLOAD_BYTES - head.len() - tail.len();
    let mut payload = Vec::with_capacity(MAX_PAYLOAD_BYTES);
    payload.extend_from_slice(head.as_bytes());
    payload.resize(head.len() + pad, b'x');
    payload.extend_from_slice(tail.as_bytes());
    assert_eq!(payload.len(), MAX_PAYLOAD_BYTES);

    let mut client = server.raw();
    client.send(&rcpx_frame(&payload));
    let response = client.read_response();
    assert_eq!(response["id"], "big", "{response}");
    assert_eq!(response["result"], json!({"pong": true}), "{response}");
    client.assert_alive();
}

#[test]
fn header_extension_is_skipped_and_optional_flags_are_accepted() {
    let server = Server::start(&[]);
    let mut client = server.raw();

    // Extension bytes are opaque, even when they look like a frame.
    let payload = br#"{"type":"request","id":"ext","op":"PING"}"#;
    let ext = b"RCPX\x00\xff\x7b\x0a";
    client.send(&rcpx_frame_with(
        1,
        FLAG_CRC_PRESENT,
        ext,
        payload,
        crc32c::crc32c(payload),
    ));
    let response = client.read_response();
    assert_eq!(response["id"], "ext");
    assert_eq!(response["result"], json!({"pong": true}));

    // CRC flag clear: the CRC field is ignored entirely.
    let payload = br#"{"type":"request","id":"nocrc","op":"PING"}"#;
    client.send(&rcpx_frame_with(1, 0, &[], payload, 0xDEAD_BEEF));
    let response = client.read_response();
    assert_eq!(response["id"], "nocrc");
    assert_eq!(response["result"], json!({"pong": true}));

    // COMPRESSED, STREAM and END_STREAM are accepted and ignored.
    let payload = br#"{"type":"request","id":"flags","op":"PING"}"#;
    client.send(&rcpx_frame_with(
        1,
        0x000F,
        b"zz",
        payload,
        crc32c::crc32c(payload),
    ));
    let response = client.read_response();
    assert_eq!(response["id"], "flags");
    assert_eq!(response["result"], json!({"pong": true}));

    // A frame delivered one byte at a time.
    let frame = rcpx_json(&request("slow", "PING", Value::Null));
    for byte in &frame {
        client.stream.write_all(std::slice::from_ref(byte)).unwrap();
    }
    let response = client.read_response();
    assert_eq!(response["id"], "slow");
}

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

/// The ops still being built answer `BAD_REQUEST` "not supported yet"; once
/// an op is built it must answer with its 0.3 result keys (spec §4).
#[test]
fn every_late_operation_answers_its_result_or_not_supported_yet() {
    let server = Server::start(&[]);
    let mut client = server.raw();
    client.ok(
        "PUT_MACHINE",
        json!({"machine": "m", "version": 1, "definition": counter_definition()}),
    );
    client.ok(
        "CREATE_INSTANCE",
        json!({"machine": "m", "version": 1, "instance_id": "i1"}),
    );
    let cases: [(&str, Value, &[&str]); 8] = [
        (
            "WATCH_INSTANCE",
            json!({"instance_id": "i1"}),
            &[
                "current_state",
                "current_wal_offset",
                "instance_id",
                "subscription_id",
            ],
        ),
        ("WATCH_ALL", json!({}), &["subscription_id", "wal_offset"]),
        (
            "UNWATCH",
            json!({"subscription_id": "sub-x"}),
            &["removed", "subscription_id"],
        ),
        (
            "BATCH",
            json!({"mode": "atomic",
                   "ops": [{"op": "GET_INSTANCE", "params": {"instance_id": "i1"}}]}),
            &["results"],
        ),
        (
            "SNAPSHOT_INSTANCE",
            json!({"instance_id": "i1"}),
            &[
                "checksum",
                "instance_id",
                "size_bytes",
                "snapshot_id",
                "wal_offset",
            ],
        ),
        (
            "WAL_READ",
            json!({"from_offset": 0, "limit": 1}),
            &["next_offset", "records"],
        ),
        (
            "WAL_STATS",
            Value::Null,
            &[
                "entry_count",
                "io_stats",
                "latest_offset",
                "segment_count",
                "total_size_bytes",
            ],
        ),
        (
            "COMPACT",
            json!({"force_snapshot": false}),
            &[
                "bytes_reclaimed",
                "segments_deleted",
                "snapshots_created",
                "total_snapshots",
                "wal_segments",
            ],
        ),
    ];
    let mut built = Vec::new();
    for (op, params, keys) in cases {
        let response = client.call(op, params);
        if response["status"] == "ok" {
            let result = &response["result"];
            for key in keys {
                assert!(
                    result.get(key).is_some(),
                    "{op} result lacks `{key}`: {response}"
                );
            }
            built.push(op);
            continue;
        }
        let error = &response["error"];
        assert_eq!(error["code"], "BAD_REQUEST", "{op}: {response}");
        assert_eq!(error["retryable"], false, "{op}: {response}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("not supported yet"),
            "{op}: an unbuilt op says 'not supported yet': {response}"
        );
    }
    eprintln!("built: {built:?}");
    // FLUSH_ALL is disabled by default (0.3) or not built: BAD_REQUEST either way.
    client.err_code("FLUSH_ALL", Value::Null, "BAD_REQUEST");
    for op in ["REPLICATE", "REPLICATE_ACK"] {
        client.err_code(op, json!({}), "BAD_REQUEST");
    }
    client.assert_alive();
    let got = client.ok("GET_INSTANCE", json!({"instance_id": "i1"}));
    assert_eq!(got["state"], "s", "{got}");
}

#[test]
fn list_instances_pages_in_ascending_id_order() {
    let server = Server::start(&[]);
    let mut client = server.raw();
    client.ok(
        "PUT_MACHINE",
        json!({"machine": "m", "version": 1, "definition": counter_definition()}),
    );
    let mut ids: Vec<String> = (0..25)
        .map(|i| format!("inst-{:03}", (i * 7) % 25))
        .collect();
    for id in &ids {
        client.ok(
            "CREATE_INSTANCE",
            json!({"machine": "m", "version": 1, "instance_id": id}),
        );
    }
    ids.sort();

    let all = client.ok("LIST_INSTANCES", Value::Null);
    assert_eq!(all["total"], 25, "{all}");
    assert_eq!(all["has_more"], false, "{all}");
    let listed: Vec<&str> = all["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids, "ascending by id");

    let page = client.ok("LIST_INSTANCES", json!({"limit": 10, "offset": 10}));
    assert_eq!(page["total"], 25, "{page}");
    assert_eq!(page["has_more"], true, "{page}");
    let listed: Vec<&str> = page["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids[10..20].to_vec());
    let summary = &page["instances"][0];
    for key in [
        "created_at",
        "id",
        "last_wal_offset",
        "machine",
        "state",
        "updated_at",
        "version",
    ] {
        assert!(summary.get(key).is_some(), "summary lacks {key}: {summary}");
    }

    let last = client.ok("LIST_INSTANCES", json!({"limit": 10, "offset": 20}));
    assert_eq!(last["instances"].as_array().unwrap().len(), 5, "{last}");
    assert_eq!(last["has_more"], false, "{last}");
    let none = client.ok("LIST_INSTANCES", json!({"limit": 0}));
    assert_eq!(none["instances"], json!([]), "{none}");
    assert_eq!(none["total"], 25, "{none}");
}

#[test]
fn expected_wal_offset_is_checked_against_last_wal_offset() {
    let server = Server::start(&[]);
    let mut client = server.raw();
    client.ok(
        "PUT_MACHINE",
        json!({"machine": "m", "version": 1, "definition": counter_definition()}),
    );
    let created = client.ok(
        "CREATE_INSTANCE",
        json!({"machine": "m", "version": 1, "instance_id": "occ"}),
    );
    let offset = created["wal_offset"].as_u64().expect("wal_offset is a u64");

    let error = client.err_code(
        "APPLY_EVENT",
        json!({"instance_id": "occ", "event": "INC", "expected_wal_offset": offset + 1}),
        "CONFLICT",
    );
    assert_eq!(error["retryable"], false, "{error}");

    let applied = client.ok(
        "APPLY_EVENT",
        json!({"instance_id": "occ", "event": "INC", "expected_wal_offset": offset}),
    );
    let next = applied["wal_offset"].as_u64().unwrap();
    assert!(
        next > offset,
        "offsets increase per instance: {offset} then {next}"
    );
    let got = client.ok("GET_INSTANCE", json!({"instance_id": "occ"}));
    assert_eq!(got["last_wal_offset"], next, "{got}");

    // The old offset is stale now.
    client.err_code(
        "APPLY_EVENT",
        json!({"instance_id": "occ", "event": "INC", "expected_wal_offset": offset}),
        "CONFLICT",
    );
    client.ok(
        "APPLY_EVENT",
        json!({"instance_id": "occ", "event": "INC", "expected_wal_offset": next,
               "expected_state": "s"}),
    );
}

#[test]
fn racing_compare_and_set_applies_are_linearizable() {
    const RACERS: usize = 6;
    const ATTEMPTS: usize = 25;
    let server = Server::start(&[]);
    let mut setup = server.raw();
    setup.ok(
        "PUT_MACHINE",
        json!({"machine": "counter", "version": 1, "definition": counter_definition()}),
    );
    let created = setup.ok(
        "CREATE_INSTANCE",
        json!({"machine": "counter", "version": 1, "instance_id": "cas"}),
    );
    let first_offset = created["wal_offset"].as_u64().unwrap();

    // Each racer: read the offset, apply with expected_wal_offset; record
    // (expected, resulting) of every success.
    let addr = server.addr();
    let racers: Vec<_> = (0..RACERS)
        .map(|r| {
            std::thread::spawn(move || {
                let mut client = RawClient::connect(addr);
                let mut wins = Vec::new();
                let mut conflicts = 0;
                for a in 0..ATTEMPTS {
                    let got = client.ok("GET_INSTANCE", json!({"instance_id": "cas"}));
                    let expected = got["last_wal_offset"].as_u64().unwrap();
                    let response = client.call(
                        "APPLY_EVENT",
                        json!({"instance_id": "cas", "event": "INC",
                               "expected_wal_offset": expected,
                               "payload": {"by": r, "attempt": a}}),
                    );
                    if response["status"] == "ok" {
                        let offset = response["result"]["wal_offset"].as_u64().unwrap();
                        wins.push((expected, offset, response["result"]["ctx"].clone()));
                    } else {
                        assert_eq!(response["error"]["code"], "CONFLICT", "{response}");
                        conflicts += 1;
                    }
                }
                (wins, conflicts)
            })
        })
        .collect();
    let mut wins = Vec::new();
    let mut conflicts = 0;
    for racer in racers {
        let (w, c) = racer.join().expect("racer thread");
        wins.extend(w);
        conflicts += c;
    }
    wins.sort_by_key(|(_, offset, _)| *offset);
    assert!(!wins.is_empty());
    eprintln!("{} wins, {conflicts} conflicts", wins.len());

    // The successes form one chain: each expected the offset the previous
    // success produced, starting at the create.
    let mut previous = first_offset;
    for (expected, offset, _) in &wins {
        assert_eq!(
            *expected, previous,
            "a success expected {expected} but the instance was at {previous}: {wins:?}"
        );
        previous = *offset;
    }
    let got = setup.ok("GET_INSTANCE", json!({"instance_id": "cas"}));
    assert_eq!(got["last_wal_offset"], previous, "{got}");
    assert_eq!(got["ctx"], wins.last().unwrap().2, "{got}");
}

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
