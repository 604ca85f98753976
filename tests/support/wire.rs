//! Frames on the wire as the tests build and read them: request envelopes,
//! RCPX / RCP1 frames (well-formed or with any header field chosen), JSON
//! lines, and frames cut from received bytes with every header field kept
//! for assertions. The codec is the server's own
//! (`corestate::protocol::frame::client`).

use corestate::protocol::frame::client::{self as codec, FrameAt};
use serde_json::{json, Value};

pub use codec::{FLAG_CRC_PRESENT, RCP1_HEADER_BYTES, RCP1_MAGIC, RCPX_HEADER_BYTES, RCPX_MAGIC};

/// Largest payload the protocol allows (docs/PROTOCOL.md §1.2), stated here rather than
/// taken from the server so the tests check the server against the spec.
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024 * 1024;

/// A request envelope.
pub fn request(id: &str, op: &str, params: Value) -> Value {
    if params.is_null() {
        json!({"type": "request", "id": id, "op": op})
    } else {
        json!({"type": "request", "id": id, "op": op, "params": params})
    }
}

/// An RCPX frame with every header field chosen by the caller.
pub fn rcpx_frame_with(version: u16, flags: u16, ext: &[u8], payload: &[u8], crc: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(RCPX_HEADER_BYTES + ext.len() + payload.len());
    codec::encode_rcpx_with(&mut out, version, flags, ext, payload, crc);
    out
}

/// A well-formed RCPX frame (version 1, CRC present and correct).
pub fn rcpx_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RCPX_HEADER_BYTES + payload.len());
    codec::encode_rcpx(&mut out, payload);
    out
}

/// A well-formed RCPX frame carrying `doc`.
pub fn rcpx_json(doc: &Value) -> Vec<u8> {
    rcpx_frame(doc.to_string().as_bytes())
}

/// A legacy 16-byte RCP1 frame as the guide's minimal client writes it
/// (variant A: four zero flag bytes, length, CRC).
pub fn rcp1_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RCP1_HEADER_BYTES + payload.len());
    codec::encode_rcp1(&mut out, payload);
    out
}

/// An RCP1 frame in the older spec's layout (variant B): u16 flags, u16
/// header_len, then length and CRC.
pub fn rcp1_variant_b(flags: u16, ext: &[u8], payload: &[u8], crc: u32) -> Vec<u8> {
    let mut out = Vec::new();
    codec::encode_rcp1_variant_b(&mut out, flags, ext, payload, crc);
    out
}

/// One JSON document as a JSONL line.
pub fn json_line(doc: &Value) -> Vec<u8> {
    let mut out = doc.to_string().into_bytes();
    out.push(b'\n');
    out
}

/// A frame as received, header fields kept for assertions.
#[derive(Debug, Clone)]
pub struct Frame {
    pub magic: [u8; 4],
    /// Bytes 4..8 of the header (version+flags for RCPX, flags for RCP1).
    pub header_word: [u8; 4],
    pub version: u16,
    pub flags: u16,
    pub header_len: u16,
    pub crc: u32,
    pub payload: Vec<u8>,
    /// The complete frame bytes.
    pub raw: Vec<u8>,
}

impl Frame {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "frame payload is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.payload)
            )
        })
    }

    pub fn crc_ok(&self) -> bool {
        crc32c::crc32c(&self.payload) == self.crc
    }
}

/// The bytes of the frame `at` describes, cut off the front of `buf`, and
/// its payload.
fn cut<H>(buf: &mut Vec<u8>, at: &FrameAt<H>) -> (Vec<u8>, Vec<u8>) {
    let raw: Vec<u8> = buf.drain(..at.frame_bytes).collect();
    let payload = raw[at.payload.clone()].to_vec();
    (raw, payload)
}

/// Try to cut one RCPX frame off the front of `buf`. Only the magic is
/// checked here; [`assert_server_frame`] checks the rest.
pub fn take_rcpx_frame(buf: &mut Vec<u8>) -> Result<Option<Frame>, String> {
    let at = match codec::split_rcpx(buf) {
        Ok(Some(at)) => at,
        Ok(None) => return Ok(None),
        Err(_) => {
            return Err(format!(
                "expected an RCPX frame, got {:?} (first bytes {:?})",
                String::from_utf8_lossy(&buf[..4]),
                String::from_utf8_lossy(&buf[..buf.len().min(80)])
            ))
        }
    };
    let (raw, payload) = cut(buf, &at);
    Ok(Some(Frame {
        magic: RCPX_MAGIC,
        header_word: [raw[4], raw[5], raw[6], raw[7]],
        version: at.header.version,
        flags: at.header.flags,
        header_len: at.header.extension_bytes,
        crc: at.header.crc,
        payload,
        raw,
    }))
}

/// Try to cut one RCP1 frame (16-byte header, variant A/B) off `buf`.
pub fn take_rcp1_frame(buf: &mut Vec<u8>) -> Result<Option<Frame>, String> {
    let at = match codec::split_rcp1(buf) {
        Ok(Some(at)) => at,
        Ok(None) => return Ok(None),
        Err(_) => {
            return Err(format!(
                "expected an RCP1 frame, got {:?}",
                String::from_utf8_lossy(&buf[..buf.len().min(80)])
            ))
        }
    };
    let (raw, payload) = cut(buf, &at);
    Ok(Some(Frame {
        magic: RCP1_MAGIC,
        header_word: [raw[4], raw[5], raw[6], raw[7]],
        version: 0,
        flags: at.header.flags,
        header_len: at.header.extension_bytes,
        crc: at.header.crc,
        payload,
        raw,
    }))
}

/// Check what every RCPX frame the server sends must look like (PROTOCOL.md §1.6).
pub fn assert_server_frame(frame: &Frame) {
    assert_eq!(frame.version, 1, "server frame version: {frame:?}");
    assert_eq!(
        frame.flags, FLAG_CRC_PRESENT,
        "server frame flags must be exactly CRC_PRESENT: {frame:?}"
    );
    assert_eq!(frame.header_len, 0, "server never sends an extension");
    assert!(
        frame.crc_ok(),
        "server frame CRC {:#010x} does not match payload (expected {:#010x}): {:?}",
        frame.crc,
        crc32c::crc32c(&frame.payload),
        String::from_utf8_lossy(&frame.payload)
    );
}
