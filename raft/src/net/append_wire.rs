//! An AppendEntries request on the peer transport, in binary.
//!
//! Every other request body is openraft's own type in JSON; this one is
//! not, because it carries the log. In JSON an entry's records travelled
//! as a base64 string that the leader encoded and then scanned for escapes
//! while serializing, and each follower scanned, checked as UTF-8 and
//! decoded back — all of it proportional to the bytes replicated. Measured
//! under a 16×16 apply load on a 3-node cluster: about 4 % of the leader's
//! CPU and 6–8 % of each follower's. Here an entry is the bytes the log
//! store writes for it (`log_store::codec::encode_entry`), so both ends do
//! a copy and no more.
//!
//! ```text
//! vote           term u64 | node id u64 | committed u8
//! prev_log_id    present u8 | log id (24 bytes) when present
//! leader_commit  present u8 | log id when present
//! entries        count u32, then per entry: length u32 | entry bytes
//! ```
//!
//! Integers are little-endian. Decoding checks every length against the
//! bytes that are there and the count against the body's size: a bad body
//! is an error, never a panic or an allocation it did not pay for.

use openraft::raft::AppendEntriesRequest;

use crate::log_store::codec::{
    decode_entry, decode_optional_log_id, encode_entry, encode_optional_log_id, encode_vote,
    read_vote, Cursor, LOG_ID_BYTES,
};
use shards::wal::record::RECORD_PAYLOAD_MAX_BYTES;

use super::frame::FRAME_BODY_MAX_BYTES;
use crate::log_store::{CodecError, WalTypes};

/// Bytes of the smallest encoded entry (a blank one: log id and kind), so
/// that a count the body cannot hold is refused before anything is
/// reserved for it.
const ENTRY_MIN_BYTES: usize = 4 + LOG_ID_BYTES + 1;

/// Room for everything before the first entry: vote, two optional log
/// ids and the count (a heartbeat's whole body).
const APPEND_BODY_START_BYTES: usize = 17 + 2 * (1 + LOG_ID_BYTES) + 4;

/// Bytes of entries one AppendEntries request carries at most (more when
/// its first entry alone is larger); the rest go in the next. A frame
/// holds up a link's other calls — heartbeats and votes of every group —
/// while it travels: 4 MiB is about 34 ms on a 1 Gbit/s link, inside the
/// 50 ms a heartbeat is given by default. Unbounded, a follower catching
/// up on large entries was sent them in one body past the frame limit,
/// and the leader stopped (tests/cluster/large_values.rs).
pub const APPEND_BODY_TARGET_BYTES: usize = 4 << 20;

// Any entry the log store holds travels alone in one frame: the store
// keeps an encoded entry within one WAL record (`log_store::append`).
const _: () = assert!(
    APPEND_BODY_START_BYTES + 4 + RECORD_PAYLOAD_MAX_BYTES <= FRAME_BODY_MAX_BYTES as usize,
    "a stored entry must fit in one AppendEntries frame"
);

/// The request's body, with every entry.
pub fn encode_append<C: WalTypes>(rpc: &AppendEntriesRequest<C>) -> Vec<u8> {
    encode_append_within(rpc, usize::MAX).0
}

/// The request's body with its first entries, in order, as many as keep
/// the body within `body_bytes_max` — but always the first, however large
/// — and how many that is. The rest wait for a later request: openraft
/// takes a partial success and sends them next (`network.rs`).
pub fn encode_append_within<C: WalTypes>(
    rpc: &AppendEntriesRequest<C>,
    body_bytes_max: usize,
) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(APPEND_BODY_START_BYTES);
    encode_vote(&rpc.vote, &mut out);
    encode_optional_log_id(rpc.prev_log_id.as_ref(), &mut out);
    encode_optional_log_id(rpc.leader_commit.as_ref(), &mut out);
    let count_at = out.len();
    out.extend_from_slice(&[0; 4]);
    let mut sent = 0;
    for entry in &rpc.entries {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        encode_entry(entry, &mut out);
        if sent > 0 && out.len() > body_bytes_max {
            out.truncate(at);
            break;
        }
        let len = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&len.to_le_bytes());
        sent += 1;
    }
    out[count_at..count_at + 4].copy_from_slice(&(sent as u32).to_le_bytes());
    (out, sent)
}

/// The request `body` holds.
pub fn decode_append<C: WalTypes>(body: &[u8]) -> Result<AppendEntriesRequest<C>, CodecError> {
    let mut c = Cursor::new(body);
    let vote = read_vote(&mut c)?;
    let prev_log_id = decode_optional_log_id(&mut c)?;
    let leader_commit = decode_optional_log_id(&mut c)?;
    let count = c.u32("entry count")? as usize;
    let left = c.remaining();
    if count > left / ENTRY_MIN_BYTES {
        return Err(CodecError(format!(
            "{count} entries cannot fit in the {left} bytes left"
        )));
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let len = c.u32("entry length")? as usize;
        entries.push(decode_entry(c.take(len, "entry")?)?);
    }
    c.finish("append entries")?;
    Ok(AppendEntriesRequest {
        vote,
        prev_log_id,
        entries,
        leader_commit,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::impls::{BasicNode, Entry, EntryPayload};
    use openraft::{LogId, Membership};

    use super::*;
    use crate::log_store::{WalLeaderId, WalLogId, WalVote};
    use crate::shard_group::{ShardGroup, TurnRecords};

    fn log_id(term: u64, index: u64) -> WalLogId {
        LogId::new(WalLeaderId { term, node_id: 2 }, index)
    }

    /// A request of term 5 with `entries` from index 11 on.
    fn rpc(
        entries: Vec<EntryPayload<TurnRecords, u64, BasicNode>>,
    ) -> AppendEntriesRequest<ShardGroup> {
        AppendEntriesRequest::<ShardGroup> {
            vote: WalVote {
                leader_id: WalLeaderId {
                    term: 5,
                    node_id: 2,
                },
                committed: true,
            },
            prev_log_id: Some(log_id(4, 10)),
            entries: entries
                .into_iter()
                .enumerate()
                .map(|(i, payload)| Entry {
                    log_id: log_id(5, 11 + i as u64),
                    payload,
                })
                .collect(),
            leader_commit: None,
        }
    }

    fn request(entries: Vec<EntryPayload<TurnRecords, u64, BasicNode>>) -> Vec<u8> {
        let rpc = rpc(entries);
        let body = encode_append(&rpc);
        let back = decode_append::<ShardGroup>(&body).unwrap();
        // openraft's types compare by their JSON: equal JSON, equal request.
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&rpc).unwrap()
        );
        body
    }

    #[test]
    fn a_heartbeat_and_entries_of_every_kind_round_trip() {
        let heartbeat = request(Vec::new());
        assert_eq!(heartbeat.len(), APPEND_BODY_START_BYTES - LOG_ID_BYTES);
        let nodes = BTreeMap::from([
            (1, BasicNode::new("127.0.0.1:7001")),
            (2, BasicNode::new("127.0.0.1:7002")),
        ]);
        let membership = Membership::new(vec![BTreeSet::from([1, 2])], nodes).unwrap();
        let records = vec![0xA5; 10_000];
        let body = request(vec![
            EntryPayload::Blank,
            EntryPayload::Normal(TurnRecords(records.clone())),
            EntryPayload::Membership(membership),
            EntryPayload::Normal(TurnRecords(Vec::new())),
        ]);
        // The records travel as they are: no base64, no escapes.
        assert!(body.windows(records.len()).any(|w| w == records));
        assert!(body.len() < records.len() + 512);
    }

    #[test]
    fn a_body_holds_the_entries_that_fit_and_always_the_first() {
        let records = |i: u8| EntryPayload::Normal(TurnRecords(vec![i; 3000]));
        let rpc = rpc(vec![records(0), records(1), records(2)]);
        let sent_within = |max: usize| {
            let (body, sent) = encode_append_within(&rpc, max);
            let back = decode_append::<ShardGroup>(&body).unwrap();
            assert_eq!(back.entries.len(), sent);
            for (got, want) in back.entries.iter().zip(&rpc.entries) {
                assert_eq!(got.log_id, want.log_id);
            }
            assert!(sent == 1 || body.len() <= max, "{} > {max}", body.len());
            sent
        };
        assert_eq!(sent_within(usize::MAX), 3);
        assert_eq!(sent_within(9_000), 2);
        assert_eq!(sent_within(6_500), 2);
        assert_eq!(sent_within(6_000), 1);
        // The first entry goes even when it alone is larger.
        assert_eq!(sent_within(100), 1);
    }

    #[test]
    fn a_damaged_or_hostile_body_is_an_error_not_a_panic() {
        let body = request(vec![
            EntryPayload::Normal(TurnRecords(b"records".to_vec())),
            EntryPayload::Blank,
        ]);
        // Every cut is refused.
        for len in 0..body.len() {
            assert!(
                decode_append::<ShardGroup>(&body[..len]).is_err(),
                "cut at {len}"
            );
        }
        // Bytes after the last entry are refused.
        let mut longer = body.clone();
        longer.push(0);
        assert!(decode_append::<ShardGroup>(&longer).is_err());
        // A count the body cannot hold is refused before anything is
        // reserved for it.
        let count_at = APPEND_BODY_START_BYTES - LOG_ID_BYTES - 4;
        let mut huge = body[..count_at + 4].to_vec();
        huge[count_at..].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = decode_append::<ShardGroup>(&huge).unwrap_err();
        assert!(err.0.contains("cannot fit"), "{err}");
        // Flags other than 0 and 1 are refused.
        let mut flag = body.clone();
        flag[16] = 2;
        assert!(decode_append::<ShardGroup>(&flag).is_err());
        let mut presence = body;
        presence[17] = 7;
        assert!(decode_append::<ShardGroup>(&presence).is_err());
    }
}
