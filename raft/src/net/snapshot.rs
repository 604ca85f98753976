//! Snapshots in chunks. openraft 0.10 hands the transport a whole snapshot
//! (`full_snapshot`) and takes a whole one on the receiving side
//! (`install_full_snapshot`); between the two the transport sends it as a
//! sequence of chunk requests, each acknowledged, and the receiving group
//! reassembles them under a size bound before installing.

use std::time::Duration;

use super::wire::ChunkHeader;

/// The largest chunk sent, whatever openraft's `snapshot_max_chunk_size`
/// asks for (its default is 3 MiB); far below `FRAME_BODY_MAX_BYTES`.
pub const SNAPSHOT_CHUNK_MAX_BYTES: usize = 1 << 20;

/// The largest snapshot a group accepts (and a sender sends). A chunk
/// announcing a larger total is refused before anything is buffered; below
/// it, the receiver holds only the bytes that arrived. It bounds a garbled
/// total, not a real state: a snapshot is held in memory whole at both
/// ends, as the state it holds is, so the machine's memory binds first.
/// (It was 1 GiB — a group of a few million instances with contexts of a
/// few hundred bytes — past which a new or lagging member could never be
/// caught up, and the leader's attempt was a storage error, which stops
/// openraft's Raft.)
pub const SNAPSHOT_SIZE_MAX_BYTES: u64 = 64 << 30;

/// How long one chunk may take to be sent and acknowledged: a full chunk
/// over a link of 100 KiB/s. openraft's `install_snapshot_timeout` (200 ms
/// by default) was the bound, so a link slower than 5 MiB/s could never
/// finish a transfer: each timed-out chunk starts it over.
pub const SNAPSHOT_CHUNK_TIMEOUT_MS: u64 = 10_000;

/// How long the last chunk may take beyond a chunk's time, whatever the
/// snapshot's size: the receiver answers it only once it has installed
/// the snapshot (decoded it, written and synced its file, rebuilt the
/// shard's state from it).
pub const SNAPSHOT_INSTALL_BASE_TIMEOUT_MS: u64 = 30_000;

/// And one millisecond more for each this many bytes of the snapshot
/// (4 MiB/s, against the ~110 MB/s at which a member of the test VM
/// installed 270 MB: room for slower disks and larger states). Unrelated
/// to the snapshot's size, this was 200 ms: the leader gave up on every
/// install that took longer and sent the whole snapshot again — 3 to 8
/// times for those million-instance installs, each read anew.
pub const SNAPSHOT_INSTALL_BYTES_PER_MS: u64 = 4 << 10;

/// The time a chunk of a transfer of `total_bytes` may take: a chunk's,
/// and for the `last` one the install's too; never less than what
/// openraft `asked`.
pub fn chunk_timeout(asked: Duration, last: bool, total_bytes: u64) -> Duration {
    let mut ms = SNAPSHOT_CHUNK_TIMEOUT_MS;
    if last {
        ms += SNAPSHOT_INSTALL_BASE_TIMEOUT_MS + total_bytes / SNAPSHOT_INSTALL_BYTES_PER_MS;
    }
    asked.max(Duration::from_millis(ms))
}

/// How often a transfer whose member is unreachable tries its link again
/// before it sends anything. It waits (until openraft cancels it) rather
/// than fail: openraft would retry about once a second, reading the
/// snapshot file whole each time — 13 to 15 reads of 160–280 MB in 15 s
/// while a follower was down in the catch-up bench.
pub const SNAPSHOT_PEER_RETRY_MS: u64 = 500;

/// The chunk size to use for one transfer: what openraft asks, capped.
pub fn chunk_size_bytes(asked: Option<usize>) -> usize {
    asked
        .unwrap_or(SNAPSHOT_CHUNK_MAX_BYTES)
        .clamp(1, SNAPSHOT_CHUNK_MAX_BYTES)
}

/// A snapshot being received.
struct Assembly {
    from_node: u64,
    transfer_id: u64,
    total_bytes: u64,
    bytes: Vec<u8>,
}

/// What one chunk completed.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkOutcome<V, M> {
    /// More chunks are expected.
    Partial,
    /// The last chunk arrived: the whole snapshot, ready to install.
    Complete { vote: V, meta: M, bytes: Vec<u8> },
}

/// The receiving side of one group: at most one snapshot in assembly (only
/// the leader sends snapshots; a new transfer replaces an unfinished one).
#[derive(Default)]
pub struct SnapshotReassembler {
    current: Option<Assembly>,
}

impl SnapshotReassembler {
    /// Adds a chunk from `from_node`. Any inconsistency (a chunk out of
    /// order, from another transfer, past the announced total, or a total
    /// over [`SNAPSHOT_SIZE_MAX_BYTES`]) drops the assembly and is an
    /// error; the sender starts over.
    pub fn accept<V, M>(
        &mut self,
        from_node: u64,
        header: ChunkHeader<V, M>,
        data: &[u8],
    ) -> Result<ChunkOutcome<V, M>, String> {
        if header.total_bytes > SNAPSHOT_SIZE_MAX_BYTES {
            self.current = None;
            return Err(format!(
                "a snapshot of {} bytes exceeds SNAPSHOT_SIZE_MAX_BYTES ({SNAPSHOT_SIZE_MAX_BYTES})",
                header.total_bytes
            ));
        }
        if header.offset_bytes == 0 {
            self.current = Some(Assembly {
                from_node,
                transfer_id: header.transfer_id,
                total_bytes: header.total_bytes,
                bytes: Vec::new(),
            });
        }
        let Some(assembly) = self.current.as_mut() else {
            return Err(format!(
                "a chunk at offset {} of no transfer in progress",
                header.offset_bytes
            ));
        };
        let continues = assembly.from_node == from_node
            && assembly.transfer_id == header.transfer_id
            && assembly.total_bytes == header.total_bytes
            && assembly.bytes.len() as u64 == header.offset_bytes;
        let received = header.offset_bytes + data.len() as u64;
        if !continues || received > assembly.total_bytes {
            self.current = None;
            return Err(format!(
                "chunk of transfer {} from node {from_node} at offset {} ({} bytes) does not continue the transfer in progress",
                header.transfer_id,
                header.offset_bytes,
                data.len()
            ));
        }
        assembly.bytes.extend_from_slice(data);
        if received < assembly.total_bytes {
            return Ok(ChunkOutcome::Partial);
        }
        let assembly = self.current.take().expect("checked above");
        Ok(ChunkOutcome::Complete {
            vote: header.vote,
            meta: header.meta,
            bytes: assembly.bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(transfer_id: u64, offset_bytes: u64, total_bytes: u64) -> ChunkHeader<(), ()> {
        ChunkHeader {
            transfer_id,
            offset_bytes,
            total_bytes,
            vote: (),
            meta: (),
        }
    }

    #[test]
    fn a_last_chunk_waits_for_an_install_that_grows_with_the_snapshot() {
        let asked = Duration::from_millis(200);
        let chunk = Duration::from_millis(SNAPSHOT_CHUNK_TIMEOUT_MS);
        assert_eq!(chunk_timeout(asked, false, 1 << 30), chunk);
        let empty = chunk_timeout(asked, true, 0);
        assert_eq!(
            empty,
            chunk + Duration::from_millis(SNAPSHOT_INSTALL_BASE_TIMEOUT_MS)
        );
        // 1 GiB, a millisecond per 4 KiB: 2^18 ms more than an empty one.
        assert_eq!(
            chunk_timeout(asked, true, 1 << 30) - empty,
            Duration::from_millis(1 << 18)
        );
        // openraft's own setting, when larger, wins.
        let long = Duration::from_secs(3_600);
        assert_eq!(chunk_timeout(long, true, 1 << 20), long);
    }

    #[test]
    fn chunks_in_order_reassemble_the_snapshot() {
        let mut r = SnapshotReassembler::default();
        assert_eq!(
            r.accept(1, header(9, 0, 5), b"ab"),
            Ok(ChunkOutcome::Partial)
        );
        assert_eq!(
            r.accept(1, header(9, 2, 5), b"cd"),
            Ok(ChunkOutcome::Partial)
        );
        assert_eq!(
            r.accept(1, header(9, 4, 5), b"e"),
            Ok(ChunkOutcome::Complete {
                vote: (),
                meta: (),
                bytes: b"abcde".to_vec()
            })
        );
    }

    #[test]
    fn an_empty_snapshot_is_one_chunk() {
        let mut r = SnapshotReassembler::default();
        assert!(matches!(
            r.accept(1, header(1, 0, 0), b""),
            Ok(ChunkOutcome::Complete { .. })
        ));
    }

    #[test]
    fn gaps_strangers_overruns_and_huge_totals_are_refused() {
        let mut r = SnapshotReassembler::default();
        r.accept(1, header(9, 0, 5), b"ab").expect("first chunk");
        assert!(r.accept(1, header(9, 3, 5), b"d").is_err(), "a gap");
        assert!(
            r.accept(1, header(9, 2, 5), b"c").is_err(),
            "the assembly was dropped"
        );

        r.accept(1, header(9, 0, 5), b"ab").expect("restart");
        assert!(r.accept(2, header(9, 2, 5), b"cd").is_err(), "another node");

        r.accept(1, header(9, 0, 5), b"ab").expect("restart");
        assert!(
            r.accept(1, header(9, 2, 5), b"cdefg").is_err(),
            "past the total"
        );

        assert!(r
            .accept(1, header(9, 0, SNAPSHOT_SIZE_MAX_BYTES + 1), b"")
            .is_err());
    }
}
