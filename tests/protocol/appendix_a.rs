//! The PING frames of Appendix A, byte for byte, both ways.

use crate::support::{rcpx_frame, Server};

fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
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
