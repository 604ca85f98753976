//! Property tests of the frame decoder: any input, fed in any chunks,
//! keeps the decoder's promises.

use super::*;
use proptest::prelude::*;

/// Feeds `input` in chunks the way a connection does, checking the
/// decoder's promises on every call.
fn feed_in_chunks(decoder: &mut FrameDecoder, input: &[u8], chunk_bytes: usize) -> Vec<Vec<u8>> {
    let mut buffer = Vec::new();
    let mut payloads = Vec::new();
    for chunk in input.chunks(chunk_bytes.max(1)) {
        buffer.extend_from_slice(chunk);
        loop {
            let hint = decoder.bytes_needed_hint(&buffer);
            assert!(hint <= DECODER_INPUT_MAX_BYTES.max(buffer.len() + 1));
            match decoder.decode(&buffer) {
                Ok(Some(decoded)) => {
                    assert!(decoded.consumed > 0);
                    assert!(decoded.consumed <= buffer.len());
                    assert!(decoded.payload.start <= decoded.payload.end);
                    assert!(decoded.payload.end <= decoded.consumed);
                    payloads.push(buffer[decoded.payload].to_vec());
                    buffer.drain(..decoded.consumed);
                }
                Ok(None) => {
                    assert!(hint > buffer.len());
                    break;
                }
                Err(_) => return payloads,
            }
        }
    }
    payloads
}

fn json_line_payload() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        any::<u8>().prop_filter("no newline", |b| *b != b'\n'),
        0..64,
    )
    .prop_map(|mut body| {
        body.insert(0, b'{');
        // A trailing "\r" would be stripped as part of CRLF.
        if body.last() == Some(&b'\r') {
            body.push(b'}');
        }
        body
    })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_or_overconsume(
        input in proptest::collection::vec(any::<u8>(), 0..512),
        prefix_with_ping in any::<bool>(),
        jsonl in any::<bool>(),
        chunk_bytes in 1usize..64,
    ) {
        let mut decoder = FrameDecoder::new();
        decoder.set_jsonl_input(jsonl);
        let stream = if prefix_with_ping {
            [PING_REQUEST_FRAME, &input].concat()
        } else {
            input
        };
        feed_in_chunks(&mut decoder, &stream, chunk_bytes);
    }

    #[test]
    fn single_call_on_arbitrary_bytes_stays_in_bounds(
        input in proptest::collection::vec(any::<u8>(), 0..256),
        jsonl in any::<bool>(),
    ) {
        let mut decoder = FrameDecoder::new();
        decoder.set_jsonl_input(jsonl);
        if let Ok(Some(decoded)) = decoder.decode(&input) {
            prop_assert!(decoded.consumed <= input.len());
            prop_assert!(decoded.payload.end <= decoded.consumed);
        }
    }

    #[test]
    fn encoded_messages_decode_back_whatever_the_read_sizes(
        payloads in proptest::collection::vec(json_line_payload(), 1..8),
        rcp1 in any::<bool>(),
        line_mask in any::<u8>(),
        chunk_bytes in 1usize..40,
    ) {
        let mode = if rcp1 { OutputMode::Rcp1 } else { OutputMode::Rcpx };
        let mut stream = Vec::new();
        encode_frame(&mut stream, mode, &payloads[0]).unwrap();
        for (index, payload) in payloads.iter().enumerate().skip(1) {
            let as_line = line_mask & (1 << (index % 8)) != 0;
            let mode = if as_line { OutputMode::Jsonl } else { mode };
            encode_frame(&mut stream, mode, payload).unwrap();
        }
        let mut decoder = FrameDecoder::new();
        decoder.set_jsonl_input(true);
        prop_assert_eq!(feed_in_chunks(&mut decoder, &stream, chunk_bytes), payloads);
    }

    #[test]
    fn corrupted_valid_streams_never_panic_or_overconsume(
        payloads in proptest::collection::vec(json_line_payload(), 1..6),
        rcp1 in any::<bool>(),
        jsonl in any::<bool>(),
        corruptions in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        chunk_bytes in 1usize..40,
    ) {
        // Valid magic keeps the decoder past the first check, so the
        // corruptions reach the header fields, lengths and CRC.
        let mode = if rcp1 { OutputMode::Rcp1 } else { OutputMode::Rcpx };
        let mut stream = Vec::new();
        for payload in &payloads {
            encode_frame(&mut stream, mode, payload).unwrap();
        }
        for (position, byte) in corruptions {
            let index = position % stream.len();
            stream[index] = byte;
        }
        let mut decoder = FrameDecoder::new();
        decoder.set_jsonl_input(jsonl);
        feed_in_chunks(&mut decoder, &stream, chunk_bytes);
    }

    #[test]
    fn find_newline_agrees_with_a_byte_scan(
        bytes in proptest::collection::vec(
            prop_oneof![Just(b'\n'), Just(0x0bu8), Just(0x09u8), Just(0x8au8), any::<u8>()],
            0..80,
        ),
    ) {
        prop_assert_eq!(find_newline(&bytes), bytes.iter().position(|&b| b == b'\n'));
    }
}
