//! Webhooks on transitions against the real binary (issue 15 item 6): a
//! local receiver (tiny_http) that accepts, fails, stalls and recovers;
//! delivery in offset order with valid signatures and delivery ids,
//! retries, pause and resume, filters, SIGKILL and restart, and the API's
//! validation and auth.

#[path = "../support/mod.rs"]
mod support;

// The HTTP API client of the HTTP suite.
#[allow(dead_code)]
#[path = "../http/client.rs"]
mod client;

// What these tests share.
mod hooks;
mod receiver;

// One behaviour per file.
mod api;
mod crash;
mod delivery;
mod failures;
mod filters;
