//! Fuzz the connection's frame decoder (RCPX, RCP1, JSON lines): arbitrary
//! bytes fed whole and fed in arbitrary chunks must never panic, must never
//! point outside the input, and must find the same messages either way.
#![no_main]

use corestate::protocol::frame::{FrameDecoder, FrameError, DECODER_INPUT_MAX_BYTES};
use libfuzzer_sys::fuzz_target;

/// Stop after this many messages per input (bounds the work per run).
const MESSAGES_PER_INPUT_MAX: usize = 64;

type Outcome = Vec<Result<Vec<u8>, FrameError>>;

/// Decode `input` arriving in pieces of the given sizes (cycled); the
/// caller's buffer keeps unconsumed bytes, as a connection does.
fn run(input: &[u8], jsonl: bool, chunks: &[usize]) -> Outcome {
    let mut dec = FrameDecoder::new();
    dec.set_jsonl_input(jsonl);
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    let mut out = Vec::new();
    let mut chunk_i = 0;
    loop {
        match dec.decode(&buf) {
            Ok(Some(d)) => {
                assert!(d.consumed <= buf.len(), "consumed past the input");
                assert!(d.payload.start <= d.payload.end && d.payload.end <= d.consumed);
                out.push(Ok(buf[d.payload.clone()].to_vec()));
                buf.drain(..d.consumed);
                if out.len() >= MESSAGES_PER_INPUT_MAX {
                    return out;
                }
            }
            Ok(None) => {
                let hint = dec.bytes_needed_hint(&buf);
                assert!(
                    hint >= buf.len(),
                    "hint {hint} below the {} buffered bytes",
                    buf.len()
                );
                if buf.len() < DECODER_INPUT_MAX_BYTES {
                    assert!(
                        hint <= DECODER_INPUT_MAX_BYTES,
                        "hint {hint} above the input cap"
                    );
                }
                if fed == input.len() {
                    return out;
                }
                let n = chunks[chunk_i % chunks.len()].max(1).min(input.len() - fed);
                chunk_i += 1;
                buf.extend_from_slice(&input[fed..fed + n]);
                fed += n;
            }
            Err(e) => {
                out.push(Err(e));
                return out;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let jsonl = control & 1 == 1;
    let whole = run(input, jsonl, &[usize::MAX]);
    let chunks = [1 + (control as usize >> 1) % 7, 1, 13, 3];
    let chunked = run(input, jsonl, &chunks);
    assert_eq!(whole, chunked, "chunked input decoded differently");
});
