//! RCPX framing (docs/PROTOCOL.md §1.2–§1.6) for the harness, on corestate's
//! client-side codec (`corestate::protocol::frame::client`): requests are
//! encoded in place at the end of a connection's write buffer; responses
//! are decoded from the read buffer without copying, with the server's own
//! checks.

use corestate::protocol::frame::client as codec;

/// ASCII `RCPX`.
pub const MAGIC: [u8; 4] = codec::RCPX_MAGIC;
/// The only protocol version.
pub const VERSION: u16 = codec::PROTOCOL_VERSION;
/// Flag bit: the CRC field is valid.
pub const FLAG_CRC_PRESENT: u16 = codec::FLAG_CRC_PRESENT;
/// Flag bits a version-1 frame may carry.
pub const FLAGS_VALID_MASK: u16 = codec::FLAGS_VALID_MASK;
/// Fixed header length.
pub const HEADER_BYTES: usize = codec::RCPX_HEADER_BYTES;
/// Largest payload the protocol allows (exactly 16 MiB is legal).
pub const PAYLOAD_BYTES_MAX: usize = codec::FRAME_PAYLOAD_MAX_BYTES;

/// A frame the server sent that breaks §1.6.
#[derive(Debug)]
pub struct FrameError(pub String);

/// Reserves a fixed header at the end of `buf`; the payload is appended
/// next, then [`finish`] fills in length and CRC.
pub fn begin(buf: &mut Vec<u8>) -> usize {
    codec::begin_rcpx(buf)
}

/// Completes the frame started at `header_at` (everything after the header
/// is its payload).
pub fn finish(buf: &mut [u8], header_at: usize) {
    codec::finish_rcpx(&mut buf[header_at..]);
}

/// The header of a frame announcing `payload_len` bytes with CRC `crc`
/// (hostile clients announce payloads they never send).
pub fn header(payload_len: u32, crc: u32) -> [u8; HEADER_BYTES] {
    codec::RcpxHeader {
        version: VERSION,
        flags: FLAG_CRC_PRESENT,
        extension_bytes: 0,
        payload_bytes: payload_len,
        crc,
    }
    .to_bytes()
}

/// Appends one complete frame carrying `payload`.
pub fn encode(buf: &mut Vec<u8>, payload: &[u8]) {
    codec::encode_rcpx(buf, payload);
}

/// A complete frame found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// Payload start, relative to the buffer given to [`decode`].
    pub payload_start: usize,
    /// Payload end (exclusive).
    pub payload_end: usize,
}

/// Decodes the frame at the start of `buf`: `Ok(None)` when more bytes are
/// needed. Verifies magic, version, flags, length and CRC.
pub fn decode(buf: &[u8]) -> Result<Option<Decoded>, FrameError> {
    match codec::decode_rcpx(buf) {
        Ok(Some(frame)) => Ok(Some(Decoded {
            payload_start: frame.payload.start,
            payload_end: frame.payload.end,
        })),
        Ok(None) => Ok(None),
        Err(e) => Err(FrameError(e.to_string())),
    }
}

/// Appends the decimal digits of `n` (no allocation).
pub fn push_decimal(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_frame_matches_the_spec_test_vector() {
        let mut buf = Vec::new();
        encode(&mut buf, br#"{"type":"request","id":"1","op":"PING"}"#);
        assert_eq!(
            &buf[..HEADER_BYTES],
            &[
                0x52, 0x43, 0x50, 0x58, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x27,
                0x15, 0xf1, 0x93, 0xb1
            ]
        );
        let decoded = decode(&buf).unwrap().unwrap();
        assert_eq!(decoded.payload_end, buf.len());
    }

    #[test]
    fn partial_frames_need_more_bytes() {
        let mut buf = Vec::new();
        encode(&mut buf, b"{}");
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut]).unwrap().is_none());
        }
    }

    #[test]
    fn corrupt_crc_is_an_error() {
        let mut buf = Vec::new();
        encode(&mut buf, b"{}");
        let last = buf.len() - 1;
        buf[last] ^= 1;
        assert!(decode(&buf).is_err());
    }

    #[test]
    fn decimal_digits() {
        for n in [0u64, 7, 10, 12345, u64::MAX] {
            let mut buf = Vec::new();
            push_decimal(&mut buf, n);
            assert_eq!(buf, n.to_string().into_bytes());
        }
    }
}
