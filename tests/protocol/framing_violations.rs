//! A framing violation — bad magic, version, flags, CRC, a payload header
//! over 16 MiB — closes the connection without a reply.

use serde_json::Value;

use crate::support::{
    rcp1_frame, rcpx_frame, rcpx_frame_with, rcpx_json, request, Server, FLAG_CRC_PRESENT,
    MAX_PAYLOAD_BYTES,
};

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
