//! The peer transport (issue 14, "Peers"): how the members of a Raft group
//! on different nodes reach each other.
//!
//! ```text
//!  group's executor                      listener's executor     group's executor
//!  Raft ─ PeerNetworkFactory ─ PeerPool ─ TCP ─▶ PeerServer ─ GroupDirectory ─▶ serve_group ─ Raft
//!         (network.rs)         (client.rs)       (server.rs)   (directory.rs: the hop)
//! ```
//!
//! * `frame.rs` — the 32-byte header, CRC-32C, size limits.
//! * `wire.rs` — bodies: handshake, errors, snapshot chunks, `SnapshotWire`.
//! * `handshake.rs` — cluster name, token (SHA-256, constant time), node id.
//! * `client.rs` — one multiplexed connection per peer node, redial, backoff.
//! * `network.rs` — openraft's `RaftNetworkFactory`/`RaftNetworkV2`.
//! * `append_pipeline.rs` — several AppendEntries to a peer on their way
//!   at once, answers in order.
//! * `snapshot.rs` — chunk size, snapshot size bound, reassembly.
//! * `directory.rs` — group id → mailbox on the group's executor.
//! * `server.rs` — the listener and its connections.
//! * `tls.rs` — optional TLS / mTLS on every link: configs from PEM files,
//!   the per-connection TLS handshake; the cluster handshake runs inside.
//!
//! See `README.md` beside this crate ("Peer transport") for the limits and
//! what is not done yet.

pub mod append_pipeline;
pub mod append_wire;
pub mod client;
pub mod directory;
pub mod frame;
pub mod handshake;
pub mod network;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod wire;

pub use client::{CallError, PeerClient, PEER_REQUESTS_IN_FLIGHT_MAX};
pub use directory::{
    group_mailbox, serve_group, serve_group_with, GroupDirectory, GroupInbox, GroupMailbox,
    ShardCalls,
};
pub use handshake::ClusterCredentials;
pub use network::{PeerLink, PeerNetworkFactory, PeerPool};
pub use server::PeerServer;
pub use tls::{PeerServerName, PeerTls, PeerTlsError, PeerTlsFiles};
pub use wire::SnapshotWire;
