//! The HTTP/JSON API against the real binary (issue 15): every route's
//! happy path, the RCP error code → HTTP status table, bearer tokens, TLS
//! with the server's certificate, the limits, and writes seen across HTTP
//! and RCP — with a real HTTP client (ureq) and raw sockets where the
//! test needs to misbehave.

#[path = "../support/mod.rs"]
mod support;

// The test PKI of the TLS suite.
#[allow(dead_code)]
#[path = "../tls/pki.rs"]
mod pki;

// What these tests share.
mod browser;
mod client;
mod ws_client;

// One behaviour per file.
mod auth;
mod cross_protocol;
mod deep_values;
mod errors;
mod limits;
mod page;
mod routes;
mod shutdown;
mod tls;
mod ws;
