//! What each connection sends. `mix` holds the operations and the order a
//! connection issues them in, `templates` the byte fragments and instance
//! ids every connection shares (spread over the server's shards for
//! batches), `generator` one connection's request renderer and what each
//! answer must show. Requests are assembled from pre-rendered byte
//! fragments (instance ids, payload) and patched request ids — no
//! per-request formatting or allocation.
//!
//! This file holds the machine the harness installs and the limits.

mod generator;
mod mix;
mod templates;

pub use generator::{unix_nanos, Expect, Generator};
pub use mix::{Mix, OpKind, MIX_SCHEDULE_LEN_MAX, OP_KINDS};
pub use templates::{shard_of, spread_instance_ids, Templates, PAYLOAD_BYTES_MAX};

/// Name of the machine the harness installs.
pub const MACHINE_NAME: &str = "corestate-bench";
/// Version of the machine the harness installs.
pub const MACHINE_VERSION: u32 = 1;
/// Two states and one event that flips between them: every APPLY_EVENT is
/// valid in any state, and the expected `to_state` proves per-instance
/// ordering (an instance is driven by one connection only).
pub const MACHINE_DEFINITION: &str = r#"{"states":["a","b"],"initial":"a","transitions":[{"from":"a","event":"go","to":"b"},{"from":"b","event":"go","to":"a"}]}"#;
/// The event every apply sends.
pub const EVENT_NAME: &str = "go";
/// State names by index (0 = initial).
pub const STATE_NAMES: [&str; 2] = ["a", "b"];
/// Most APPLY_EVENT ops in one BATCH (the RCP limit, docs/PROTOCOL.md §9).
pub const BATCH_OPS_MAX: usize = 100;
