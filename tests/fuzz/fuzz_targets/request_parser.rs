//! Fuzz the request envelope parser: any payload bytes give a request or a
//! BAD_REQUEST envelope, never a panic.
#![no_main]

use corestate::protocol::request::parse_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // simd-json parses in place and needs a scratch copy.
    let mut payload = data.to_vec();
    let _ = parse_request(&mut payload);
});
