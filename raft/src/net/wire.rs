//! What frame bodies hold: the handshake messages, the error answer, the
//! snapshot chunk layout, and the trait a snapshot's data implements to
//! travel. RPC bodies are openraft's own request and response types,
//! serialized with serde_json (openraft's `serde` feature).

use std::borrow::Cow;
use std::fmt;
use std::io;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Dialer → listener, the first frame on a connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub cluster_name: String,
    /// Sent as is: without TLS, anyone on the path can read it.
    pub cluster_token: String,
    pub node_id: u64,
    pub protocol_version: u8,
}

/// Listener → dialer when the handshake passes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Welcome {
    pub node_id: u64,
}

/// Why a request (or a handshake) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Wrong cluster name, token or protocol version; the listener closes.
    HandshakeRefused,
    /// No group with this id is registered on the listening node.
    UnknownGroup,
    /// The group's Raft has stopped (shut down or fatal).
    GroupStopped,
    /// The body did not decode, or a snapshot chunk was out of order or
    /// over the size bound.
    BadRequest,
    /// Not answered in time (a forwarded operation still waiting when the
    /// leader answered its batch).
    Timeout,
}

/// The body of an `Error` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

/// The JSON of a value the transport itself built (a handshake message,
/// an openraft request): serializing these cannot fail, so a failure is a
/// bug and panics with its cause.
pub fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("transport messages always serialize")
}

/// Decodes a body that came from the network.
pub fn from_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(body)
}

/// How a state machine's snapshot data travels to a lagging member: the
/// bound `RaftNetworkV2::SnapshotData` needs in this transport. Types that
/// implement serde get it through JSON; a snapshot kept in a file (the
/// shard's) implements it by reading and writing the file's bytes.
pub trait SnapshotWire: Sized + 'static {
    /// The snapshot as bytes; the transport sends them in chunks. Borrowed
    /// where the snapshot already is its bytes: a copy of a few hundred MB
    /// in the leader's executor at every transfer held it up, and doubled
    /// what the transfer held in memory.
    fn to_wire(&self) -> io::Result<Cow<'_, [u8]>>;
    /// Rebuilds the snapshot from the reassembled bytes.
    fn from_wire(bytes: Vec<u8>) -> io::Result<Self>;
}

impl<T: Serialize + DeserializeOwned + 'static> SnapshotWire for T {
    fn to_wire(&self) -> io::Result<Cow<'_, [u8]>> {
        serde_json::to_vec(self)
            .map(Cow::Owned)
            .map_err(io::Error::other)
    }

    fn from_wire(bytes: Vec<u8>) -> io::Result<Self> {
        serde_json::from_slice(&bytes)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
    }
}

/// The JSON part of a snapshot chunk. A chunk's body is
/// `[u32 LE: header length][header JSON][raw snapshot bytes]`, so snapshot
/// bytes are not inflated by JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkHeader<V, M> {
    /// Chosen by the sender; all chunks of one transfer carry it.
    pub transfer_id: u64,
    /// Where this chunk's bytes start in the snapshot.
    pub offset_bytes: u64,
    /// The size of the whole snapshot, announced by every chunk.
    pub total_bytes: u64,
    /// The leader's vote and the snapshot's meta; openraft needs both to
    /// install it, so they travel with the last chunk (and every chunk, to
    /// keep the layout flat — they are small).
    pub vote: V,
    pub meta: M,
}

/// Builds a chunk body.
pub fn encode_chunk<V: Serialize, M: Serialize>(
    header: &ChunkHeader<V, M>,
    data: &[u8],
) -> Vec<u8> {
    let json = to_json(header);
    let mut body = Vec::with_capacity(4 + json.len() + data.len());
    body.extend_from_slice(&(json.len() as u32).to_le_bytes());
    body.extend_from_slice(&json);
    body.extend_from_slice(data);
    body
}

/// Splits a chunk body into its header and its data.
pub fn decode_chunk<V: DeserializeOwned, M: DeserializeOwned>(
    body: &[u8],
) -> Result<(ChunkHeader<V, M>, &[u8]), String> {
    let Some((len, rest)) = body.split_first_chunk::<4>() else {
        return Err("a snapshot chunk shorter than its length prefix".to_string());
    };
    let json_len = u32::from_le_bytes(*len) as usize;
    if json_len > rest.len() {
        return Err(format!(
            "a snapshot chunk header of {json_len} bytes in a body of {}",
            body.len()
        ));
    }
    let (json, data) = rest.split_at(json_len);
    let header = from_json(json).map_err(|err| format!("bad snapshot chunk header: {err}"))?;
    Ok((header, data))
}

/// The answer to a snapshot chunk: an acknowledgement, or for the last
/// chunk openraft's answer to the install.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ChunkAnswer<R> {
    Received,
    Installed(R),
}
