//! corestate driven by the official Rust client, `rstmdb-client` 0.3.0:
//! machines, instances, events, guards, optimistic concurrency,
//! idempotency, error codes and authentication, as a real application
//! would use them — and every public method of the client called at least
//! once, its parsed result checked.

#[path = "../support/mod.rs"]
mod support;

// What these tests share.
mod setup;

// One behaviour per file.
mod apply_event;
mod auth;
mod deep_values;
mod error_codes;
mod guards;
mod idempotency;
mod instances;
mod machines;
mod optimistic_concurrency;
mod surface;
