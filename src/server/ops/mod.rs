//! One file per operation family; `dispatch.rs` maps op names to them.

pub mod cluster_ops;
pub mod instance_ops;
pub mod machine_ops;
pub mod session_ops;
pub mod storage_ops;
pub mod watch_ops;
