//! TLS and mTLS against the real binary (docs/PROTOCOL.md §13.4), with the official
//! Rust client's own TLS support and certificates generated per test
//! (rcgen): the client verifies the server against a test CA; with a client
//! CA configured, a client without a certificate signed by it is refused.
//! Plain TCP on a TLS port fails cleanly and disturbs nobody; a stalled
//! handshake does not hold up other connections; unusable certificate files
//! stop the start with exit status 2 and the file's name.

#[path = "../support/mod.rs"]
mod support;

// What these tests share.
mod pki;

// One behaviour per file.
mod bad_certificates;
mod connection_limit;
mod handshake;
mod mtls;
