//! The client's side of the framing (docs/PROTOCOL.md §1.2, §1.6, §1.9), for the
//! integration tests, the bench harness and tools: requests framed as a
//! conforming client writes them — or with any header field chosen, for
//! edge-case tests — and frames cut from the start of a read buffer, either
//! as their header says (every field kept for assertions) or checked exactly
//! as the server checks its own input.
//!
//! Checking reuses the server's decoder ([`FrameDecoder`]), so the project
//! has one RCPX codec. Nothing here is on the server's path.

use std::ops::Range;

use super::{detect_framing, FrameDecoder, FrameError, Framing};

pub use super::{FRAME_PAYLOAD_MAX_BYTES, RCP1_HEADER_BYTES, RCPX_HEADER_BYTES};

/// ASCII `RCPX`, the first bytes of every RCPX frame.
pub const RCPX_MAGIC: [u8; 4] = *super::RCPX_MAGIC;
/// ASCII `RCP1`, the first bytes of every legacy frame.
pub const RCP1_MAGIC: [u8; 4] = *super::RCP1_MAGIC;
/// The only RCPX version.
pub const PROTOCOL_VERSION: u16 = super::PROTOCOL_VERSION;
/// Flag bit: the CRC field covers the payload.
pub const FLAG_CRC_PRESENT: u16 = super::FLAG_CRC_PRESENT;
/// Flag bits a version-1 frame may carry.
pub const FLAGS_VALID_MASK: u16 = super::FLAGS_VALID_MASK;

/// Every field of a fixed RCPX header, as it is (or will be) on the wire,
/// whether or not the values are valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RcpxHeader {
    pub version: u16,
    pub flags: u16,
    pub extension_bytes: u16,
    pub payload_bytes: u32,
    pub crc: u32,
}

impl RcpxHeader {
    /// What a conforming peer writes before `payload`: version 1,
    /// CRC_PRESENT with the payload's CRC, no extension.
    pub fn for_payload(payload: &[u8]) -> RcpxHeader {
        RcpxHeader {
            version: PROTOCOL_VERSION,
            flags: FLAG_CRC_PRESENT,
            extension_bytes: 0,
            payload_bytes: wire_length(payload.len()),
            crc: crc32c::crc32c(payload),
        }
    }

    pub fn to_bytes(&self) -> [u8; RCPX_HEADER_BYTES] {
        let mut h = [0u8; RCPX_HEADER_BYTES];
        h[0..4].copy_from_slice(&RCPX_MAGIC);
        h[4..6].copy_from_slice(&self.version.to_be_bytes());
        h[6..8].copy_from_slice(&self.flags.to_be_bytes());
        h[8..10].copy_from_slice(&self.extension_bytes.to_be_bytes());
        h[10..14].copy_from_slice(&self.payload_bytes.to_be_bytes());
        h[14..18].copy_from_slice(&self.crc.to_be_bytes());
        h
    }

    /// The fields of a buffered header; only the magic is checked.
    pub fn parse(h: &[u8; RCPX_HEADER_BYTES]) -> Result<RcpxHeader, FrameError> {
        if h[0..4] != RCPX_MAGIC {
            return Err(FrameError::BadMagic);
        }
        Ok(RcpxHeader {
            version: u16::from_be_bytes([h[4], h[5]]),
            flags: u16::from_be_bytes([h[6], h[7]]),
            extension_bytes: u16::from_be_bytes([h[8], h[9]]),
            payload_bytes: u32::from_be_bytes([h[10], h[11], h[12], h[13]]),
            crc: u32::from_be_bytes([h[14], h[15], h[16], h[17]]),
        })
    }
}

/// Every field of a fixed RCP1 header in the older spec's layout (variant
/// B, §1.9). Variant A — four zero bytes, then length and CRC — is flags 0
/// and no extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rcp1Header {
    pub flags: u16,
    pub extension_bytes: u16,
    pub payload_bytes: u32,
    pub crc: u32,
}

impl Rcp1Header {
    /// What the guide's minimal client writes before `payload` (variant A).
    pub fn variant_a(payload: &[u8]) -> Rcp1Header {
        Rcp1Header {
            flags: 0,
            extension_bytes: 0,
            payload_bytes: wire_length(payload.len()),
            crc: crc32c::crc32c(payload),
        }
    }

    pub fn to_bytes(&self) -> [u8; RCP1_HEADER_BYTES] {
        let mut h = [0u8; RCP1_HEADER_BYTES];
        h[0..4].copy_from_slice(&RCP1_MAGIC);
        h[4..6].copy_from_slice(&self.flags.to_be_bytes());
        h[6..8].copy_from_slice(&self.extension_bytes.to_be_bytes());
        h[8..12].copy_from_slice(&self.payload_bytes.to_be_bytes());
        h[12..16].copy_from_slice(&self.crc.to_be_bytes());
        h
    }

    /// The fields of a buffered header; only the magic is checked.
    pub fn parse(h: &[u8; RCP1_HEADER_BYTES]) -> Result<Rcp1Header, FrameError> {
        if h[0..4] != RCP1_MAGIC {
            return Err(FrameError::BadMagic);
        }
        Ok(Rcp1Header {
            flags: u16::from_be_bytes([h[4], h[5]]),
            extension_bytes: u16::from_be_bytes([h[6], h[7]]),
            payload_bytes: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
            crc: u32::from_be_bytes([h[12], h[13], h[14], h[15]]),
        })
    }
}

/// A length as the header's u32 field. Only a caller's own payload gets
/// here, and none comes near 4 GiB.
fn wire_length(len: usize) -> u32 {
    u32::try_from(len).expect("a frame payload is shorter than 4 GiB")
}

/// Appends one RCPX frame carrying `payload`, as a conforming client sends it.
pub fn encode_rcpx(out: &mut Vec<u8>, payload: &[u8]) {
    let at = begin_rcpx(out);
    out.extend_from_slice(payload);
    finish_rcpx(&mut out[at..]);
}

/// Appends an RCPX frame with version, flags, extension and CRC chosen by
/// the caller (the lengths are the real ones).
pub fn encode_rcpx_with(
    out: &mut Vec<u8>,
    version: u16,
    flags: u16,
    extension: &[u8],
    payload: &[u8],
    crc: u32,
) {
    let header = RcpxHeader {
        version,
        flags,
        extension_bytes: u16::try_from(extension.len()).expect("an extension fits in u16"),
        payload_bytes: wire_length(payload.len()),
        crc,
    };
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(extension);
    out.extend_from_slice(payload);
}

/// Starts an RCPX frame at the end of `out` by reserving its header and
/// returns where it starts; append the payload, then call [`finish_rcpx`]
/// on the frame's bytes. The payload is written in place, never copied.
pub fn begin_rcpx(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.resize(at + RCPX_HEADER_BYTES, 0);
    at
}

/// Writes the header of `frame` — its reserved header, then its payload up
/// to the end of the slice — as a conforming client does.
pub fn finish_rcpx(frame: &mut [u8]) {
    let (header, payload) = frame.split_at_mut(RCPX_HEADER_BYTES);
    debug_assert!(payload.len() <= FRAME_PAYLOAD_MAX_BYTES);
    header.copy_from_slice(&RcpxHeader::for_payload(payload).to_bytes());
}

/// Appends one legacy RCP1 frame as the guide's minimal client writes it
/// (variant A).
pub fn encode_rcp1(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&Rcp1Header::variant_a(payload).to_bytes());
    out.extend_from_slice(payload);
}

/// Appends an RCP1 frame in variant B's layout with flags, extension and
/// CRC chosen by the caller (the lengths are the real ones).
pub fn encode_rcp1_variant_b(
    out: &mut Vec<u8>,
    flags: u16,
    extension: &[u8],
    payload: &[u8],
    crc: u32,
) {
    let header = Rcp1Header {
        flags,
        extension_bytes: u16::try_from(extension.len()).expect("an extension fits in u16"),
        payload_bytes: wire_length(payload.len()),
        crc,
    };
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(extension);
    out.extend_from_slice(payload);
}

/// A complete frame at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameAt<H> {
    pub header: H,
    /// Where the payload lies, relative to the buffer given.
    pub payload: Range<usize>,
    /// Bytes of the whole frame: header, extension and payload.
    pub frame_bytes: usize,
}

/// Cuts the RCPX frame at the start of `buf` as its header says, checking
/// nothing but the magic, so a test can assert on every field itself.
/// `Ok(None)` until the whole frame is buffered.
pub fn split_rcpx(buf: &[u8]) -> Result<Option<FrameAt<RcpxHeader>>, FrameError> {
    let Some(h) = buf.first_chunk::<RCPX_HEADER_BYTES>() else {
        return Ok(None);
    };
    let header = RcpxHeader::parse(h)?;
    let payload_start = RCPX_HEADER_BYTES + usize::from(header.extension_bytes);
    Ok(frame_at(buf, header, payload_start, header.payload_bytes))
}

/// Cuts the RCP1 frame at the start of `buf` as its (variant B) header
/// says, checking nothing but the magic. `Ok(None)` until it is buffered.
pub fn split_rcp1(buf: &[u8]) -> Result<Option<FrameAt<Rcp1Header>>, FrameError> {
    let Some(h) = buf.first_chunk::<RCP1_HEADER_BYTES>() else {
        return Ok(None);
    };
    let header = Rcp1Header::parse(h)?;
    let payload_start = RCP1_HEADER_BYTES + usize::from(header.extension_bytes);
    Ok(frame_at(buf, header, payload_start, header.payload_bytes))
}

fn frame_at<H>(
    buf: &[u8],
    header: H,
    payload_start: usize,
    payload_bytes: u32,
) -> Option<FrameAt<H>> {
    let payload_bytes = usize::try_from(payload_bytes).ok()?;
    let frame_bytes = payload_start.checked_add(payload_bytes)?;
    (buf.len() >= frame_bytes).then_some(FrameAt {
        header,
        payload: payload_start..frame_bytes,
        frame_bytes,
    })
}

/// Decodes the RCPX frame at the start of `buf` with the server's own
/// checks — magic, version, flags and payload length as soon as the header
/// is there, then the CRC when it is flagged. `Ok(None)` until the whole
/// frame is buffered; an RCP1 frame is a bad magic here.
pub fn decode_rcpx(buf: &[u8]) -> Result<Option<FrameAt<RcpxHeader>>, FrameError> {
    if detect_framing(buf)? == Some(Framing::Rcp1) {
        return Err(FrameError::BadMagic);
    }
    match FrameDecoder::new().decode(buf)? {
        Some(_) => split_rcpx(buf),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PING_REQUEST: &[u8] = br#"{"type":"request","id":"1","op":"PING"}"#;
    /// Appendix A, the PING request's header.
    const PING_REQUEST_HEADER: [u8; RCPX_HEADER_BYTES] = [
        0x52, 0x43, 0x50, 0x58, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x27, 0x15,
        0xf1, 0x93, 0xb1,
    ];

    #[test]
    fn a_request_is_framed_as_in_appendix_a() {
        let mut out = b"earlier".to_vec();
        encode_rcpx(&mut out, PING_REQUEST);
        assert_eq!(&out[7..7 + RCPX_HEADER_BYTES], &PING_REQUEST_HEADER);
        assert_eq!(&out[7 + RCPX_HEADER_BYTES..], PING_REQUEST);
        let mut with = Vec::new();
        encode_rcpx_with(
            &mut with,
            1,
            FLAG_CRC_PRESENT,
            &[],
            PING_REQUEST,
            0x15f1_93b1,
        );
        assert_eq!(with, out[7..]);
    }

    #[test]
    fn the_server_decoder_reads_what_the_client_side_writes() {
        let mut out = Vec::new();
        encode_rcpx(&mut out, PING_REQUEST);
        encode_rcp1(&mut out, PING_REQUEST);
        let mut decoder = FrameDecoder::new();
        let first = decoder.decode(&out).unwrap().unwrap();
        assert_eq!(&out[first.payload.clone()], PING_REQUEST);
        let rest = &out[first.consumed..];
        // A connection keeps the framing of its first frame: RCP1 after
        // RCPX is a violation, and a fresh connection takes it.
        assert_eq!(decoder.decode(rest), Err(FrameError::BadMagic));
        let legacy = FrameDecoder::new().decode(rest).unwrap().unwrap();
        assert_eq!(&rest[legacy.payload], PING_REQUEST);
    }

    #[test]
    fn split_keeps_every_field_and_waits_for_the_whole_frame() {
        let mut out = Vec::new();
        encode_rcpx_with(&mut out, 7, 0x0100, b"ext", b"{}", 0xdead_beef);
        for cut in 0..out.len() {
            assert_eq!(split_rcpx(&out[..cut]), Ok(None), "cut at {cut}");
        }
        let frame = split_rcpx(&out).unwrap().unwrap();
        assert_eq!(
            frame.header,
            RcpxHeader {
                version: 7,
                flags: 0x0100,
                extension_bytes: 3,
                payload_bytes: 2,
                crc: 0xdead_beef
            }
        );
        assert_eq!(&out[frame.payload], b"{}");
        assert_eq!(frame.frame_bytes, out.len());
        assert_eq!(decode_rcpx(&out), Err(FrameError::UnsupportedVersion(7)));
    }

    #[test]
    fn variant_b_rcp1_frames_split_with_their_extension() {
        let mut out = Vec::new();
        encode_rcp1_variant_b(&mut out, FLAG_CRC_PRESENT, b"x", b"{}", 1);
        let frame = split_rcp1(&out).unwrap().unwrap();
        assert_eq!(frame.header.flags, FLAG_CRC_PRESENT);
        assert_eq!(&out[frame.payload], b"{}");
        assert_eq!(split_rcpx(&out), Err(FrameError::BadMagic));
    }

    #[test]
    fn decode_checks_as_the_server_does() {
        let mut ok = Vec::new();
        encode_rcpx(&mut ok, b"{}");
        assert_eq!(decode_rcpx(&ok).unwrap().unwrap().payload, 18..20);
        let mut bad_crc = ok.clone();
        bad_crc[19] ^= 1;
        assert!(matches!(
            decode_rcpx(&bad_crc),
            Err(FrameError::CrcMismatch { .. })
        ));
        let mut too_long = RcpxHeader::for_payload(b"").to_bytes().to_vec();
        too_long[10..14].copy_from_slice(&(FRAME_PAYLOAD_MAX_BYTES as u32 + 1).to_be_bytes());
        assert!(matches!(
            decode_rcpx(&too_long),
            Err(FrameError::PayloadTooLarge(_))
        ));
        let mut legacy = Vec::new();
        encode_rcp1(&mut legacy, b"{}");
        assert_eq!(decode_rcpx(&legacy), Err(FrameError::BadMagic));
    }

    #[test]
    fn a_frame_built_in_place_equals_one_encoded_whole() {
        let mut in_place = b"x".to_vec();
        let at = begin_rcpx(&mut in_place);
        in_place.extend_from_slice(PING_REQUEST);
        finish_rcpx(&mut in_place[at..]);
        let mut whole = b"x".to_vec();
        encode_rcpx(&mut whole, PING_REQUEST);
        assert_eq!(in_place, whole);
    }
}
