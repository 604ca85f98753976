//! corestate's per-core engine. Everything a shard owns lives here: machine
//! definitions and guards, instances, the write-ahead log and its recovery,
//! and the shard's mailbox loop. This crate has no networking: the server
//! (`src/`) decodes requests and sends typed commands to a shard's mailbox.

pub mod coordinator;
pub mod env;
pub mod error;
pub mod instance;
pub mod instance_ctx;
pub mod instance_table;
pub mod json;
pub mod latency;
pub mod machine;
pub mod operator_ruling;
pub mod router;
pub mod shard;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod snapshot;
pub mod wal;

pub use error::{EngineError, EngineResult, ErrorCode};
