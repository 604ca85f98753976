//! Frames at the edge of legal are served: a payload of exactly 16 MiB, a
//! header extension, the optional flags.

use std::io::Write;

use serde_json::{json, Value};

use crate::support::{
    rcpx_frame, rcpx_frame_with, rcpx_json, request, Server, FLAG_CRC_PRESENT, MAX_PAYLOAD_BYTES,
};

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
