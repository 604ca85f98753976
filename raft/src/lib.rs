//! corestate's Raft layer: each shard becomes a Raft group on openraft,
//! running on the shard's own glommio executor (docs/ARCHITECTURE.md,
//! "Beyond one machine"). This first step holds the runtime adapter that
//! lets openraft run there; see `README.md` beside this crate for what the
//! log store, state machine and network must provide.

pub mod channels;
pub mod net;
pub mod runtime;

pub use runtime::GlommioRuntime;
