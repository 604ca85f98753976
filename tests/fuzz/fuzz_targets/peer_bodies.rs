//! Fuzz the decoders of the peer bodies that are not JSON: an
//! AppendEntries request (`corestate_raft::net::append_wire`), and a
//! forwarded call's operations and answers
//! (`corestate_raft::shard_group::{forward_ops, forward_answers}`). The
//! first input byte picks the decoder. Never a panic; forwarded operations
//! that decode encode again to the same operations.
#![no_main]

use corestate_raft::net::append_wire::decode_append;
use corestate_raft::shard_group::{fuzz_entry, ShardGroup};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&control, body)) = data.split_first() else {
        return;
    };
    match control % 3 {
        0 => {
            let _ = decode_append::<ShardGroup>(body);
        }
        1 => fuzz_entry::forwarded_ops(body),
        _ => fuzz_entry::forwarded_answers(body),
    }
});
