//! corestate's Raft layer: each shard becomes a Raft group on openraft,
//! running on the shard's own glommio executor (docs/ARCHITECTURE.md,
//! "Not built yet"): the runtime adapter that lets openraft run there
//! (`runtime`, `channels`), the Raft log stored in the shard WAL's segments
//! (`log_store`), the shard group's state machine (`shard_group`) and the
//! peer transport (`net`); see
//! `README.md` beside this crate.

pub mod channels;
pub mod log_store;
pub mod net;
pub mod runtime;
pub mod shard_group;

pub use runtime::GlommioRuntime;
