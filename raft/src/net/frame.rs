//! The peer protocol's frame: a fixed 32-byte header and a checksummed
//! body, read and written over any `futures-io` stream (plain TCP today,
//! TLS later).
//!
//! ```text
//! offset size field
//!      0    4 magic            b"CSRP"
//!      4    1 version          PROTOCOL_VERSION
//!      5    1 kind             FrameKind
//!      6    2 reserved         0
//!      8    8 request id       u64 LE (0 for handshake frames)
//!     16    8 group id         u64 LE (the shard number; 0 for handshake)
//!     24    4 body length      u32 LE, ≤ the reader's limit
//!     28    4 body CRC-32C     u32 LE
//! ```
//!
//! The reader checks magic, version, kind and length from the header alone,
//! before it allocates the body, so a hostile or confused peer can make it
//! allocate at most the limit it passed in.

use std::fmt;
use std::io;

use futures_util::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The first four bytes of every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"CSRP";

/// The version of this protocol; a peer speaking another is refused.
/// Version 2: AppendEntries bodies are binary (`append_wire.rs`).
/// Version 3: error code `Timeout` (a forwarded operation the leader
/// answered without waiting for it, `forward.rs`).
/// Version 4: a batch decision is a `Verdict` (it may be `Forgotten`).
/// Version 5: a forwarded batch's operations are binary
/// (`shard_group/forward_ops.rs`).
/// Version 6: a follower's catalog asks for the machines it does not know,
/// and learns them a page at a time (`Forwarded::Machines`).
pub const PROTOCOL_VERSION: u8 = 6;

/// Size of the fixed header.
pub const FRAME_HEADER_BYTES: usize = 32;

/// The largest body a request frame may carry once the handshake is done:
/// room for any entry the log store holds, alone in an AppendEntries call
/// (which carries up to `APPEND_BODY_TARGET_BYTES` of them), and for a
/// snapshot chunk (`SNAPSHOT_CHUNK_MAX_BYTES`) with its header.
pub const FRAME_BODY_MAX_BYTES: u32 = 16 << 20;

/// The largest body of an answer frame: a forwarded batch's answers
/// (`shard_group::forward`) hold a client's answers, and one client answer
/// may take 16 MiB, the most a client connection sends — with a request
/// frame's limit, such an answer could not come back through a follower
/// (tests/cluster/large_values.rs).
pub const ANSWER_FRAME_BODY_MAX_BYTES: u32 = 32 << 20;

/// The largest body of a handshake frame (hello, welcome, refusal): the
/// limit that applies to a peer that has not yet proved it knows the token.
pub const HANDSHAKE_BODY_MAX_BYTES: u32 = 4 << 10;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Dialer → listener: cluster name, token, node id, version.
    Hello = 1,
    /// Listener → dialer: the handshake passed.
    Welcome = 2,
    /// A request for openraft's `append_entries` of one group.
    AppendEntries = 16,
    /// A request for `vote`.
    Vote = 17,
    /// A request for `pre_vote`.
    PreVote = 18,
    /// One chunk of a snapshot (see `snapshot.rs`).
    SnapshotChunk = 19,
    /// A request for `handle_transfer_leader`.
    TransferLeader = 20,
    /// A client operation forwarded to the group's leader
    /// (`shard_group::forward`).
    ShardCall = 21,
    /// The answer to the request with the same request id.
    Answer = 32,
    /// An error answer (or a handshake refusal): a JSON `ErrorBody`.
    Error = 33,
}

impl FrameKind {
    /// The largest body a frame of this kind may carry after the handshake.
    pub fn body_max_bytes(self) -> u32 {
        match self {
            FrameKind::Answer => ANSWER_FRAME_BODY_MAX_BYTES,
            _ => FRAME_BODY_MAX_BYTES,
        }
    }

    fn from_byte(byte: u8) -> Option<FrameKind> {
        Some(match byte {
            1 => FrameKind::Hello,
            2 => FrameKind::Welcome,
            16 => FrameKind::AppendEntries,
            17 => FrameKind::Vote,
            18 => FrameKind::PreVote,
            19 => FrameKind::SnapshotChunk,
            20 => FrameKind::TransferLeader,
            21 => FrameKind::ShardCall,
            32 => FrameKind::Answer,
            33 => FrameKind::Error,
            _ => return None,
        })
    }

    /// Whether a dialer may send this kind after the handshake.
    pub fn is_request(self) -> bool {
        matches!(
            self,
            FrameKind::AppendEntries
                | FrameKind::Vote
                | FrameKind::PreVote
                | FrameKind::SnapshotChunk
                | FrameKind::TransferLeader
                | FrameKind::ShardCall
        )
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub request_id: u64,
    pub group_id: u64,
    pub body: Vec<u8>,
}

/// Why a frame could not be read. Every variant but `Io` means the peer
/// does not speak this protocol (or the bytes were damaged): the
/// connection is closed, never resynchronised.
#[derive(Debug)]
pub enum FrameError {
    /// The stream ended cleanly between two frames.
    Closed,
    Io(io::Error),
    BadMagic([u8; 4]),
    BadVersion(u8),
    UnknownKind(u8),
    /// The header announced a body larger than the reader accepts.
    Oversize {
        body_bytes: u32,
        limit_bytes: u32,
    },
    BadChecksum {
        expected: u32,
        actual: u32,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Closed => write!(f, "the peer closed the connection"),
            FrameError::Io(err) => write!(f, "I/O error: {err}"),
            FrameError::BadMagic(magic) => write!(f, "bad frame magic {magic:02x?}"),
            FrameError::BadVersion(v) => {
                write!(f, "protocol version {v}, expected {PROTOCOL_VERSION}")
            }
            FrameError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            FrameError::Oversize {
                body_bytes,
                limit_bytes,
            } => write!(
                f,
                "frame body of {body_bytes} bytes exceeds the limit of {limit_bytes}"
            ),
            FrameError::BadChecksum { expected, actual } => write!(
                f,
                "frame body CRC-32C {actual:#010x}, header says {expected:#010x}"
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// A decoded header, before its body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub request_id: u64,
    pub group_id: u64,
    pub body_bytes: u32,
    pub body_crc32c: u32,
}

impl FrameHeader {
    /// Checks and decodes a header; `limit_bytes` bounds the body length.
    pub fn decode(
        raw: &[u8; FRAME_HEADER_BYTES],
        limit_bytes: u32,
    ) -> Result<FrameHeader, FrameError> {
        let magic: [u8; 4] = raw[0..4].try_into().expect("4 bytes");
        if magic != FRAME_MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        if raw[4] != PROTOCOL_VERSION {
            return Err(FrameError::BadVersion(raw[4]));
        }
        let kind = FrameKind::from_byte(raw[5]).ok_or(FrameError::UnknownKind(raw[5]))?;
        let u64_at = |at: usize| u64::from_le_bytes(raw[at..at + 8].try_into().expect("8 bytes"));
        let u32_at = |at: usize| u32::from_le_bytes(raw[at..at + 4].try_into().expect("4 bytes"));
        let body_bytes = u32_at(24);
        if body_bytes > limit_bytes {
            return Err(FrameError::Oversize {
                body_bytes,
                limit_bytes,
            });
        }
        Ok(FrameHeader {
            kind,
            request_id: u64_at(8),
            group_id: u64_at(16),
            body_bytes,
            body_crc32c: u32_at(28),
        })
    }
}

/// Encodes a whole frame (header and body) into one buffer, ready for one
/// `write_all`.
///
/// # Panics
/// If `body` exceeds its kind's limit ([`FrameKind::body_max_bytes`]):
/// senders size their bodies (batches, chunks, answers) below it, so a
/// larger one is a bug here, not input.
pub fn encode_frame(kind: FrameKind, request_id: u64, group_id: u64, body: &[u8]) -> Vec<u8> {
    assert!(
        body.len() <= kind.body_max_bytes() as usize,
        "a {kind:?} frame body of {} bytes exceeds its limit",
        body.len()
    );
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + body.len());
    out.extend_from_slice(&FRAME_MAGIC);
    out.push(PROTOCOL_VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&group_id.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    debug_assert_eq!(out.len(), FRAME_HEADER_BYTES);
    out.extend_from_slice(body);
    out
}

/// Reads one frame whose body is at most `limit_bytes`.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit_bytes: u32,
) -> Result<Frame, FrameError> {
    let mut raw = [0u8; FRAME_HEADER_BYTES];
    // A clean end of stream is only one that falls between frames.
    let first = reader.read(&mut raw).await.map_err(FrameError::Io)?;
    if first == 0 {
        return Err(FrameError::Closed);
    }
    reader
        .read_exact(&mut raw[first..])
        .await
        .map_err(FrameError::Io)?;
    let header = FrameHeader::decode(&raw, limit_bytes)?;
    let mut body = vec![0u8; header.body_bytes as usize];
    reader.read_exact(&mut body).await.map_err(FrameError::Io)?;
    let actual = crc32c::crc32c(&body);
    if actual != header.body_crc32c {
        return Err(FrameError::BadChecksum {
            expected: header.body_crc32c,
            actual,
        });
    }
    Ok(Frame {
        kind: header.kind,
        request_id: header.request_id,
        group_id: header.group_id,
        body,
    })
}

/// Writes an encoded frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, encoded: &[u8]) -> io::Result<()> {
    writer.write_all(encoded).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::io::Cursor;

    fn read_all(bytes: Vec<u8>, limit: u32) -> Result<Frame, FrameError> {
        futures_util::future::FutureExt::now_or_never(read_frame(&mut Cursor::new(bytes), limit))
            .expect("a cursor never blocks")
    }

    #[test]
    fn a_frame_reads_back_as_written() {
        let bytes = encode_frame(FrameKind::Vote, 7, 3, b"{\"x\":1}");
        let frame = read_all(bytes, FRAME_BODY_MAX_BYTES).expect("frame");
        assert_eq!(frame.kind, FrameKind::Vote);
        assert_eq!((frame.request_id, frame.group_id), (7, 3));
        assert_eq!(frame.body, b"{\"x\":1}");
    }

    #[test]
    fn an_oversize_length_is_refused_from_the_header_alone() {
        let mut bytes = encode_frame(FrameKind::Vote, 1, 0, b"");
        bytes[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
        // No body follows: the reader must fail before trying to read one.
        match read_all(bytes, FRAME_BODY_MAX_BYTES) {
            Err(FrameError::Oversize { body_bytes, .. }) => assert_eq!(body_bytes, u32::MAX),
            other => panic!("expected Oversize, got {other:?}"),
        }
    }

    #[test]
    fn a_damaged_body_fails_its_checksum() {
        let mut bytes = encode_frame(FrameKind::Answer, 1, 0, b"hello");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x20;
        assert!(matches!(
            read_all(bytes, FRAME_BODY_MAX_BYTES),
            Err(FrameError::BadChecksum { .. })
        ));
    }

    #[test]
    fn bad_magic_version_and_kind_are_refused() {
        let good = encode_frame(FrameKind::Answer, 1, 0, b"");
        let mut magic = good.clone();
        magic[0] = b'X';
        assert!(matches!(read_all(magic, 64), Err(FrameError::BadMagic(_))));
        let mut version = good.clone();
        version[4] = PROTOCOL_VERSION + 1;
        assert!(matches!(
            read_all(version, 64),
            Err(FrameError::BadVersion(_))
        ));
        let mut kind = good;
        kind[5] = 99;
        assert!(matches!(
            read_all(kind, 64),
            Err(FrameError::UnknownKind(99))
        ));
    }

    #[test]
    fn a_stream_cut_inside_a_frame_is_an_error_not_a_clean_close() {
        assert!(matches!(read_all(Vec::new(), 64), Err(FrameError::Closed)));
        let bytes = encode_frame(FrameKind::Answer, 1, 0, b"hello");
        assert!(matches!(
            read_all(bytes[..10].to_vec(), 64),
            Err(FrameError::Io(_))
        ));
        assert!(matches!(
            read_all(bytes[..FRAME_HEADER_BYTES + 2].to_vec(), 64),
            Err(FrameError::Io(_))
        ));
    }
}
