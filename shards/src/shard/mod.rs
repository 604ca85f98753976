//! One shard: the state it owns, the operations on it, recovery, and the
//! mailbox loop that runs it on its own pinned executor.

mod admission;
mod audit;
pub mod budget;
pub mod command;
pub mod committed_ids;
mod decisions;
mod deferred;
mod dispatch;
pub mod events;
pub mod group_link;
pub mod log_read;
mod member_apply;
mod member_gate;
pub mod member_read;
mod member_read_back;
mod member_side;
mod member_snapshot;
mod member_tasks;
mod member_txn;
pub mod member_watermark;
pub mod merged_read;
mod ops_read;
mod ops_write;
mod participant;
mod publishing;
pub mod replay;
mod replica;
pub mod result;
pub mod runner;
pub mod snapshotting;
pub mod state;
mod storage;
pub mod txn;

pub use command::{
    AnswerLease, ApplyEvent, BatchVote, Command, CreateInstance, DeleteInstance, LeaseWrite,
    ListPage, ListQuery, MachinesPage, Reply, ReplyTo, ShardMsg, ShardStats,
};
pub use committed_ids::Verdict;
pub use runner::{OpenReport, Shard, ShardConfig};
pub use state::ShardState;
pub use storage::AutoCompaction;

/// The shard that owns `instance_id` among `shards`: CRC-32C of the id, so
/// the mapping is the same on every run and every machine.
pub fn shard_for_instance(instance_id: &str, shards: usize) -> usize {
    (crc32c::crc32c(instance_id.as_bytes()) as usize) % shards.max(1)
}

#[cfg(test)]
mod tests;
