//! The wire protocol byte by byte (docs/PROTOCOL.md §1–§3, Appendix A), with raw
//! sockets: exact frames, legacy RCP1 framing, JSONL, framing violations,
//! malformed requests, pipelining and BYE.

#[path = "../support/mod.rs"]
mod support;

// What these tests share.
mod machines;

// One behaviour per file.
mod appendix_a;
mod compare_and_set;
mod connection_end;
mod frame_edges;
mod framing_violations;
mod handshake;
mod jsonl;
mod late_operations;
mod malformed_requests;
mod pipelining;
mod rcp1;
