//! Unit tests of `frame.rs` (kept apart so the module shows its code).

use super::*;

const PING_REQUEST: &[u8] = br#"{"type":"request","id":"1","op":"PING"}"#;
const PING_RESPONSE: &[u8] =
    br#"{"type":"response","id":"1","status":"ok","result":{"pong":true}}"#;
/// Appendix A, PING request frame.
const PING_REQUEST_FRAME: &[u8] = &[
    0x52, 0x43, 0x50, 0x58, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x27, 0x15, 0xf1,
    0x93, 0xb1, 0x7b, 0x22, 0x74, 0x79, 0x70, 0x65, 0x22, 0x3a, 0x22, 0x72, 0x65, 0x71, 0x75, 0x65,
    0x73, 0x74, 0x22, 0x2c, 0x22, 0x69, 0x64, 0x22, 0x3a, 0x22, 0x31, 0x22, 0x2c, 0x22, 0x6f, 0x70,
    0x22, 0x3a, 0x22, 0x50, 0x49, 0x4e, 0x47, 0x22, 0x7d,
];
/// Appendix A, PING response header.
const PING_RESPONSE_HEADER: [u8; RCPX_HEADER_BYTES] = [
    0x52, 0x43, 0x50, 0x58, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x41, 0x4b, 0x7b,
    0x43, 0x2f,
];

/// An RCPX frame built field by field, independent of the encoder.
fn rcpx_frame(version: u16, flags: u16, extension: &[u8], payload: &[u8], crc: u32) -> Vec<u8> {
    let mut frame = b"RCPX".to_vec();
    frame.extend_from_slice(&version.to_be_bytes());
    frame.extend_from_slice(&flags.to_be_bytes());
    frame.extend_from_slice(&(extension.len() as u16).to_be_bytes());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&crc.to_be_bytes());
    frame.extend_from_slice(extension);
    frame.extend_from_slice(payload);
    frame
}

fn rcpx_header(version: u16, flags: u16, payload_len: u32) -> Vec<u8> {
    let mut header = b"RCPX".to_vec();
    header.extend_from_slice(&version.to_be_bytes());
    header.extend_from_slice(&flags.to_be_bytes());
    header.extend_from_slice(&0u16.to_be_bytes());
    header.extend_from_slice(&payload_len.to_be_bytes());
    header.extend_from_slice(&0u32.to_be_bytes());
    header
}

fn rcp1_frame(flag_bytes: [u8; 4], payload: &[u8], crc: u32) -> Vec<u8> {
    let mut frame = b"RCP1".to_vec();
    frame.extend_from_slice(&flag_bytes);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&crc.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Decodes every complete message in `input` the way a connection does.
fn decode_all(
    decoder: &mut FrameDecoder,
    mut input: &[u8],
) -> (Vec<Vec<u8>>, Result<(), FrameError>) {
    let mut payloads = Vec::new();
    loop {
        match decoder.decode(input) {
            Ok(Some(decoded)) => {
                payloads.push(input[decoded.payload].to_vec());
                input = &input[decoded.consumed..];
            }
            Ok(None) => return (payloads, Ok(())),
            Err(error) => return (payloads, Err(error)),
        }
    }
}

fn decode_one(input: &[u8]) -> Result<Option<Decoded>, FrameError> {
    FrameDecoder::new().decode(input)
}

#[test]
fn crc32c_matches_the_spec_check_value() {
    assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
}

#[test]
fn appendix_a_ping_request_decodes_to_exact_payload() {
    let mut decoder = FrameDecoder::new();
    let decoded = decoder.decode(PING_REQUEST_FRAME).unwrap().unwrap();
    assert_eq!(&PING_REQUEST_FRAME[decoded.payload], PING_REQUEST);
    assert_eq!(decoded.consumed, PING_REQUEST_FRAME.len());
    assert_eq!(decoder.framing(), Some(Framing::Rcpx));
    assert_eq!(decoder.output_mode_for_binary(), OutputMode::Rcpx);
}

#[test]
fn appendix_a_ping_response_encodes_to_exact_header() {
    let mut out = Vec::new();
    encode_frame(&mut out, OutputMode::Rcpx, PING_RESPONSE).unwrap();
    assert_eq!(out[..RCPX_HEADER_BYTES], PING_RESPONSE_HEADER);
    assert_eq!(&out[RCPX_HEADER_BYTES..], PING_RESPONSE);
}

#[test]
fn begin_and_end_frame_write_the_header_in_place_after_earlier_output() {
    let mut out = b"earlier".to_vec();
    let mark = begin_frame(&mut out, OutputMode::Rcpx);
    out.extend_from_slice(PING_RESPONSE);
    end_frame(&mut out, mark).unwrap();
    assert_eq!(&out[..7], b"earlier");
    assert_eq!(out[7..7 + RCPX_HEADER_BYTES], PING_RESPONSE_HEADER);
}

#[test]
fn rcp1_output_header_is_flag_crc_present_without_extension() {
    let mut out = Vec::new();
    encode_frame(&mut out, OutputMode::Rcp1, PING_RESPONSE).unwrap();
    assert_eq!(&out[..8], b"RCP1\x00\x01\x00\x00");
    assert_eq!(&out[8..12], &(PING_RESPONSE.len() as u32).to_be_bytes());
    assert_eq!(&out[12..16], &0x4b7b_432fu32.to_be_bytes());
    assert_eq!(&out[RCP1_HEADER_BYTES..], PING_RESPONSE);
}

#[test]
fn jsonl_output_is_payload_and_newline() {
    let mut out = Vec::new();
    encode_frame(&mut out, OutputMode::Jsonl, PING_RESPONSE).unwrap();
    assert_eq!(&out[..out.len() - 1], PING_RESPONSE);
    assert_eq!(out.last(), Some(&b'\n'));
}

#[test]
fn output_payload_over_limit_is_refused_and_removed() {
    for mode in [OutputMode::Rcpx, OutputMode::Rcp1, OutputMode::Jsonl] {
        let mut out = b"earlier".to_vec();
        let mark = begin_frame(&mut out, mode);
        out.resize(out.len() + FRAME_PAYLOAD_MAX_BYTES + 1, b' ');
        assert_eq!(
            end_frame(&mut out, mark),
            Err(FrameError::PayloadTooLarge(
                FRAME_PAYLOAD_MAX_BYTES as u64 + 1
            ))
        );
        assert_eq!(out, b"earlier");
    }
}

#[test]
fn output_payload_of_exactly_the_limit_is_framed() {
    let mut out = Vec::new();
    let mark = begin_frame(&mut out, OutputMode::Rcpx);
    out.resize(RCPX_HEADER_BYTES + FRAME_PAYLOAD_MAX_BYTES, b' ');
    end_frame(&mut out, mark).unwrap();
    let decoded = decode_one(&out).unwrap().unwrap();
    assert_eq!(decoded.payload.len(), FRAME_PAYLOAD_MAX_BYTES);
}

#[test]
fn unknown_magic_closes() {
    assert_eq!(
        decode_one(b"GET / HTTP/1.1\r\n\r\n"),
        Err(FrameError::BadMagic)
    );
    // TLS ClientHello on a plaintext port, rejected from its first byte.
    assert_eq!(decode_one(&[0x16, 0x03, 0x01]), Err(FrameError::BadMagic));
    assert_eq!(decode_one(b"RCPY"), Err(FrameError::BadMagic));
}

#[test]
fn magic_prefix_waits_for_more_bytes() {
    for prefix in [&b""[..], b"R", b"RC", b"RCP"] {
        assert_eq!(decode_one(prefix), Ok(None));
    }
    let mut decoder = FrameDecoder::new();
    assert_eq!(decoder.decode(b"RCPX\x00"), Ok(None));
    assert_eq!(decoder.framing(), Some(Framing::Rcpx));
}

#[test]
fn json_line_without_jsonl_input_is_bad_magic_even_as_first_bytes() {
    let line = b"{\"type\":\"request\",\"id\":\"1\",\"op\":\"PING\"}\n";
    assert_eq!(decode_one(line), Err(FrameError::BadMagic));
    let mut decoder = FrameDecoder::new();
    let mut input = PING_REQUEST_FRAME.to_vec();
    input.extend_from_slice(line);
    let (payloads, result) = decode_all(&mut decoder, &input);
    assert_eq!(payloads, vec![PING_REQUEST.to_vec()]);
    assert_eq!(result, Err(FrameError::BadMagic));
}

#[test]
fn later_frame_must_carry_the_connections_magic() {
    let rcpx = rcpx_frame(1, 0, b"", b"{}", 0);
    let rcp1 = rcp1_frame([0; 4], b"{}", crc32c::crc32c(b"{}"));

    let mut decoder = FrameDecoder::new();
    let (payloads, result) = decode_all(&mut decoder, &[rcpx.clone(), rcp1.clone()].concat());
    assert_eq!(payloads.len(), 1);
    assert_eq!(result, Err(FrameError::BadMagic));

    let mut decoder = FrameDecoder::new();
    let (payloads, result) = decode_all(&mut decoder, &[rcp1, rcpx].concat());
    assert_eq!(payloads.len(), 1);
    assert_eq!(result, Err(FrameError::BadMagic));
}

#[test]
fn version_other_than_one_closes_from_header_alone() {
    for version in [0, 2, u16::MAX] {
        assert_eq!(
            decode_one(&rcpx_header(version, 1, 10)),
            Err(FrameError::UnsupportedVersion(version))
        );
    }
}

#[test]
fn each_reserved_flag_bit_closes_from_header_alone() {
    for bit in 4..16 {
        let flags = 1u16 << bit;
        assert_eq!(
            decode_one(&rcpx_header(1, flags, 10)),
            Err(FrameError::ReservedFlags(flags))
        );
    }
}

#[test]
fn compressed_stream_and_end_stream_flags_are_ignored() {
    for flags in [0x0002, 0x0004, 0x0008, 0x000E] {
        let frame = rcpx_frame(1, flags, b"", PING_REQUEST, 0xdead_beef);
        let decoded = decode_one(&frame).unwrap().unwrap();
        assert_eq!(&frame[decoded.payload], PING_REQUEST);
    }
}

#[test]
fn checks_fire_in_order_magic_version_flags_length() {
    let mut header = rcpx_header(2, 0xFFFF, u32::MAX);
    assert_eq!(decode_one(&header), Err(FrameError::UnsupportedVersion(2)));
    header[4..6].copy_from_slice(&1u16.to_be_bytes());
    assert_eq!(decode_one(&header), Err(FrameError::ReservedFlags(0xFFFF)));
    header[6..8].copy_from_slice(&1u16.to_be_bytes());
    assert_eq!(
        decode_one(&header),
        Err(FrameError::PayloadTooLarge(u64::from(u32::MAX)))
    );
}

#[test]
fn payload_one_byte_over_limit_closes_from_header_alone() {
    let header = rcpx_header(1, 1, FRAME_PAYLOAD_MAX_BYTES as u32 + 1);
    assert_eq!(
        decode_one(&header),
        Err(FrameError::PayloadTooLarge(16_777_217))
    );
    assert_eq!(FrameDecoder::new().bytes_needed_hint(&header), header.len());
}

#[test]
fn payload_of_exactly_the_limit_waits_for_the_payload() {
    let header = rcpx_header(1, 1, FRAME_PAYLOAD_MAX_BYTES as u32);
    let decoder = FrameDecoder::new();
    assert_eq!(
        decoder.bytes_needed_hint(&header),
        RCPX_HEADER_BYTES + 16_777_216
    );
    assert_eq!(decode_one(&header), Ok(None));
}

#[test]
fn crc_mismatch_closes_only_when_crc_present_is_set() {
    let good = crc32c::crc32c(PING_REQUEST);
    assert_eq!(
        decode_one(&rcpx_frame(1, 1, b"", PING_REQUEST, good ^ 1)),
        Err(FrameError::CrcMismatch {
            expected: good ^ 1,
            actual: good
        })
    );
    let frame = rcpx_frame(1, 0, b"", PING_REQUEST, good ^ 1);
    let decoded = decode_one(&frame).unwrap().unwrap();
    assert_eq!(&frame[decoded.payload], PING_REQUEST);
}

#[test]
fn header_extension_is_skipped_and_not_covered_by_crc() {
    let extension = b"opaque extension bytes";
    let frame = rcpx_frame(1, 1, extension, PING_REQUEST, crc32c::crc32c(PING_REQUEST));
    let decoder = FrameDecoder::new();
    assert_eq!(
        decoder.bytes_needed_hint(&frame[..RCPX_HEADER_BYTES]),
        frame.len()
    );
    let decoded = decode_one(&frame).unwrap().unwrap();
    assert_eq!(&frame[decoded.payload], PING_REQUEST);
    assert_eq!(decoded.consumed, frame.len());
}

#[test]
fn empty_payload_is_a_complete_frame() {
    let frame = rcpx_frame(1, 1, b"", b"", crc32c::crc32c(b""));
    assert_eq!(
        decode_one(&frame),
        Ok(Some(Decoded {
            payload: RCPX_HEADER_BYTES..RCPX_HEADER_BYTES,
            consumed: RCPX_HEADER_BYTES
        }))
    );
}

#[test]
fn two_frames_delivered_byte_by_byte_decode_in_order() {
    let second = br#"{"type":"request","id":"2","op":"INFO"}"#;
    let stream = [
        PING_REQUEST_FRAME.to_vec(),
        rcpx_frame(1, 1, b"x", second, crc32c::crc32c(second)),
    ]
    .concat();
    let mut decoder = FrameDecoder::new();
    let mut buffer = Vec::new();
    let mut payloads = Vec::new();
    for &byte in &stream {
        buffer.push(byte);
        while let Some(decoded) = decoder.decode(&buffer).unwrap() {
            payloads.push(buffer[decoded.payload].to_vec());
            buffer.drain(..decoded.consumed);
        }
    }
    assert_eq!(payloads, vec![PING_REQUEST.to_vec(), second.to_vec()]);
    assert!(buffer.is_empty());
}

#[test]
fn rcp1_variant_a_has_unflagged_crc_and_is_answered_in_rcp1() {
    let good = crc32c::crc32c(PING_REQUEST);
    let mut decoder = FrameDecoder::new();
    let frame = rcp1_frame([0; 4], PING_REQUEST, good);
    let decoded = decoder.decode(&frame).unwrap().unwrap();
    assert_eq!(&frame[decoded.payload], PING_REQUEST);
    assert_eq!(decoder.framing(), Some(Framing::Rcp1));
    assert_eq!(decoder.output_mode_for_binary(), OutputMode::Rcp1);
    // No flag says a CRC is present, so even a wrong one is ignored.
    let frame = rcp1_frame([0; 4], PING_REQUEST, good ^ 1);
    assert!(decoder.decode(&frame).unwrap().is_some());
}

#[test]
fn rcp1_variant_b_checks_flags_crc_and_skips_extension() {
    let good = crc32c::crc32c(PING_REQUEST);
    let mut frame = b"RCP1\x00\x01\x00\x03".to_vec();
    frame.extend_from_slice(&(PING_REQUEST.len() as u32).to_be_bytes());
    frame.extend_from_slice(&good.to_be_bytes());
    frame.extend_from_slice(b"ext");
    frame.extend_from_slice(PING_REQUEST);
    let decoded = decode_one(&frame).unwrap().unwrap();
    assert_eq!(&frame[decoded.payload], PING_REQUEST);
    assert_eq!(decoded.consumed, frame.len());

    frame[15] ^= 1;
    assert!(matches!(
        decode_one(&frame),
        Err(FrameError::CrcMismatch { .. })
    ));
    assert_eq!(
        decode_one(&rcp1_frame([0, 0x10, 0, 0], b"{}", 0)),
        Err(FrameError::ReservedFlags(0x0010))
    );
    let mut oversized_header = b"RCP1\x00\x01\x00\x00".to_vec();
    oversized_header.extend_from_slice(&(FRAME_PAYLOAD_MAX_BYTES as u32 + 1).to_be_bytes());
    oversized_header.extend_from_slice(&[0; 4]);
    assert_eq!(
        decode_one(&oversized_header),
        Err(FrameError::PayloadTooLarge(16_777_217))
    );
}

#[test]
fn rcp1_output_decodes_as_rcp1_input() {
    let mut out = Vec::new();
    encode_frame(&mut out, OutputMode::Rcp1, PING_RESPONSE).unwrap();
    let decoded = decode_one(&out).unwrap().unwrap();
    assert_eq!(&out[decoded.payload], PING_RESPONSE);
}

#[test]
fn jsonl_input_interleaves_lines_and_frames_with_crlf_and_blank_lines() {
    let mut decoder = FrameDecoder::new();
    let (payloads, result) = decode_all(&mut decoder, PING_REQUEST_FRAME);
    assert_eq!((payloads.len(), result), (1, Ok(())));
    decoder.set_jsonl_input(true);

    let stream = [
        &b"{\"id\":\"2\"}\n"[..],
        b"\n\r\n  \t{\"id\":\"3\"}\r\n",
        PING_REQUEST_FRAME,
        b"\n{\"id\":\"4\"}\n",
        b"\r\n",
        PING_REQUEST_FRAME,
        b"{\"id\":\"5\"}",
    ]
    .concat();
    let (payloads, result) = decode_all(&mut decoder, &stream);
    assert_eq!(result, Ok(()));
    assert_eq!(
        payloads,
        vec![
            br#"{"id":"2"}"#.to_vec(),
            br#"{"id":"3"}"#.to_vec(),
            PING_REQUEST.to_vec(),
            br#"{"id":"4"}"#.to_vec(),
            PING_REQUEST.to_vec(),
        ]
    );
}

#[test]
fn jsonl_input_still_requires_the_connections_magic_and_a_known_start() {
    let mut decoder = FrameDecoder::new();
    decoder.decode(PING_REQUEST_FRAME).unwrap().unwrap();
    decoder.set_jsonl_input(true);
    let rcp1 = rcp1_frame([0; 4], b"{}", 0);
    assert_eq!(decoder.decode(&rcp1), Err(FrameError::BadMagic));
    assert_eq!(decoder.decode(b"  [1]\n"), Err(FrameError::BadMagic));
    assert_eq!(decoder.decode(b"\n\n  "), Ok(None));
    decoder.set_jsonl_input(false);
    assert_eq!(decoder.decode(b"{}\n"), Err(FrameError::BadMagic));
}

#[test]
fn jsonl_input_before_any_frame_leaves_framing_to_the_first_frame() {
    let mut decoder = FrameDecoder::new();
    decoder.set_jsonl_input(true);
    let stream = [&b"{\"a\":1}\n"[..], &rcp1_frame([0; 4], b"{}", 0)].concat();
    let mut input = &stream[..];
    let decoded = decoder.decode(input).unwrap().unwrap();
    assert_eq!(&input[decoded.payload], b"{\"a\":1}");
    assert_eq!(decoder.framing(), None);
    assert_eq!(decoder.output_mode_for_binary(), OutputMode::Rcpx);
    input = &input[decoded.consumed..];
    let decoded = decoder.decode(input).unwrap().unwrap();
    assert_eq!(&input[decoded.payload], b"{}");
    assert_eq!(decoder.framing(), Some(Framing::Rcp1));
}

#[test]
fn jsonl_line_split_across_reads_is_found_once_complete() {
    let mut decoder = FrameDecoder::new();
    decoder.set_jsonl_input(true);
    let line = b"  {\"type\":\"request\",\"id\":\"77\",\"op\":\"PING\"}\r\n";
    for end in 0..line.len() {
        assert_eq!(decoder.decode(&line[..end]), Ok(None), "prefix {end}");
        assert!(decoder.bytes_needed_hint(&line[..end]) > end);
    }
    let decoded = decoder.decode(line).unwrap().unwrap();
    assert_eq!(decoded.payload, 2..line.len() - 2);
    assert_eq!(decoded.consumed, line.len());
}

#[test]
fn jsonl_line_of_exactly_the_limit_is_accepted_with_crlf() {
    let mut line = vec![b' '; JSONL_LINE_MAX_BYTES];
    line[0] = b'{';
    line[JSONL_LINE_MAX_BYTES - 1] = b'}';
    line.extend_from_slice(b"\r");
    let mut decoder = FrameDecoder::new();
    decoder.set_jsonl_input(true);
    // "\r" past the limit may still be the end of a maximal line.
    assert_eq!(decoder.decode(&line), Ok(None));
    line.push(b'\n');
    let decoded = decoder.decode(&line).unwrap().unwrap();
    assert_eq!(decoded.payload, 0..JSONL_LINE_MAX_BYTES);
    assert_eq!(decoded.consumed, line.len());
}

#[test]
fn jsonl_line_over_the_limit_closes_without_waiting_for_its_end() {
    let mut decoder = FrameDecoder::new();
    decoder.set_jsonl_input(true);
    let mut line = vec![b'{'];
    line.resize(JSONL_LINE_MAX_BYTES, b' ');
    assert_eq!(decoder.decode(&line), Ok(None));
    line.push(b' ');
    assert_eq!(decoder.decode(&line), Err(FrameError::LineTooLong));

    let mut decoder = FrameDecoder::new();
    decoder.set_jsonl_input(true);
    line.push(b'\n');
    assert_eq!(decoder.decode(&line), Err(FrameError::LineTooLong));
}

#[test]
fn endless_blank_lines_close_instead_of_growing_the_buffer() {
    let mut decoder = FrameDecoder::new();
    decoder.set_jsonl_input(true);
    let mut blanks = vec![b'\n'; JSONL_LEADING_WHITESPACE_MAX_BYTES];
    assert_eq!(decoder.decode(&blanks), Ok(None));
    blanks.push(b'\n');
    assert_eq!(decoder.decode(&blanks), Err(FrameError::LineTooLong));
}

#[test]
fn error_messages_are_short_and_name_the_problem() {
    assert_eq!(
        FrameError::ReservedFlags(0x0010).to_string(),
        "reserved frame flags set: 0x0010"
    );
    assert_eq!(
        FrameError::UnsupportedVersion(2).to_string(),
        "unsupported frame version 2"
    );
}

#[path = "frame_proptests.rs"]
mod proptests;
