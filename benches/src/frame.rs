//! RCPX framing (PROTOCOL.md §1.2–§1.6): requests are encoded in place at
//! the end of a connection's write buffer; responses are decoded from the
//! read buffer without copying.

/// ASCII `RCPX`.
pub const MAGIC: [u8; 4] = *b"RCPX";
/// The only protocol version.
pub const VERSION: u16 = 1;
/// Flag bit: the CRC field is valid.
pub const FLAG_CRC_PRESENT: u16 = 0x0001;
/// Flag bits a version-1 frame may carry.
pub const FLAGS_VALID_MASK: u16 = 0x000F;
/// Fixed header length.
pub const HEADER_BYTES: usize = 18;
/// Largest payload the protocol allows (exactly 16 MiB is legal).
pub const PAYLOAD_BYTES_MAX: usize = 16 * 1024 * 1024;

/// A frame the server sent that breaks §1.6.
#[derive(Debug)]
pub struct FrameError(pub String);

/// Reserves a fixed header at the end of `buf`; the payload is appended
/// next, then [`finish`] fills in length and CRC.
pub fn begin(buf: &mut Vec<u8>) -> usize {
    let header_at = buf.len();
    buf.extend_from_slice(&[0u8; HEADER_BYTES]);
    header_at
}

/// Completes the frame started at `header_at` (everything after the header
/// is its payload).
pub fn finish(buf: &mut [u8], header_at: usize) {
    let payload = &buf[header_at + HEADER_BYTES..];
    debug_assert!(payload.len() <= PAYLOAD_BYTES_MAX);
    let filled = header(payload.len() as u32, crc32c::crc32c(payload));
    buf[header_at..header_at + HEADER_BYTES].copy_from_slice(&filled);
}

/// The header of a frame announcing `payload_len` bytes with CRC `crc`
/// (hostile clients announce payloads they never send).
pub fn header(payload_len: u32, crc: u32) -> [u8; HEADER_BYTES] {
    let mut header = [0u8; HEADER_BYTES];
    header[0..4].copy_from_slice(&MAGIC);
    header[4..6].copy_from_slice(&VERSION.to_be_bytes());
    header[6..8].copy_from_slice(&FLAG_CRC_PRESENT.to_be_bytes());
    header[8..10].copy_from_slice(&0u16.to_be_bytes());
    header[10..14].copy_from_slice(&payload_len.to_be_bytes());
    header[14..18].copy_from_slice(&crc.to_be_bytes());
    header
}

/// Appends one complete frame carrying `payload`.
pub fn encode(buf: &mut Vec<u8>, payload: &[u8]) {
    let at = begin(buf);
    buf.extend_from_slice(payload);
    finish(buf, at);
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
    if buf.len() < HEADER_BYTES {
        return Ok(None);
    }
    if buf[0..4] != MAGIC {
        return Err(FrameError(format!(
            "bad magic {:02x?} (a JSONL or non-RCPX reply?)",
            &buf[0..4]
        )));
    }
    let version = u16::from_be_bytes([buf[4], buf[5]]);
    if version != VERSION {
        return Err(FrameError(format!("bad version {version}")));
    }
    let flags = u16::from_be_bytes([buf[6], buf[7]]);
    if flags & !FLAGS_VALID_MASK != 0 {
        return Err(FrameError(format!("reserved flag bits set: {flags:#06x}")));
    }
    let header_len = u16::from_be_bytes([buf[8], buf[9]]) as usize;
    let payload_len = u32::from_be_bytes([buf[10], buf[11], buf[12], buf[13]]) as usize;
    if payload_len > PAYLOAD_BYTES_MAX {
        return Err(FrameError(format!("payload of {payload_len} bytes")));
    }
    let payload_start = HEADER_BYTES + header_len;
    let payload_end = payload_start + payload_len;
    if buf.len() < payload_end {
        return Ok(None);
    }
    if flags & FLAG_CRC_PRESENT != 0 {
        let crc = u32::from_be_bytes([buf[14], buf[15], buf[16], buf[17]]);
        let actual = crc32c::crc32c(&buf[payload_start..payload_end]);
        if crc != actual {
            return Err(FrameError(format!(
                "CRC mismatch: header {crc:#010x}, payload {actual:#010x}"
            )));
        }
    }
    Ok(Some(Decoded {
        payload_start,
        payload_end,
    }))
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
