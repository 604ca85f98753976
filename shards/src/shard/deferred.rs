//! The answers a loop turn owes: collected while the turn handles its
//! messages and sent only after the turn's group commit, so that nobody —
//! reads included — learns of a change before it is durable (invariant 2
//! of `docs/ARCHITECTURE.md`).

use super::budget::Charge;
use super::command::{BatchVote, ListPage, MachinesPage, ReplyTo, ShardStats};
use super::committed_ids::Verdict;
use super::log_read::{EntryChunk, EventChunk};
use super::runner::Shard;
use crate::error::EngineResult;

/// One answer owed, with where it goes.
pub(super) enum Deferred {
    Conn(ReplyTo, EngineResult<Vec<u8>>, Option<Charge>),
    Install(flume::Sender<EngineResult<bool>>, EngineResult<bool>),
    Machines(
        flume::Sender<EngineResult<MachinesPage>>,
        EngineResult<MachinesPage>,
    ),
    List(flume::Sender<ListPage>, ListPage),
    Stats(flume::Sender<ShardStats>),
    Vote(flume::Sender<BatchVote>, BatchVote),
    /// A batch's decision (`ShardMsg::Decide`, `ShardMsg::Decision`).
    Verdict(flume::Sender<Verdict>, Verdict),
    Events(
        flume::Sender<std::io::Result<EventChunk>>,
        std::io::Result<EventChunk>,
    ),
    Entries(
        flume::Sender<std::io::Result<EntryChunk>>,
        std::io::Result<EntryChunk>,
    ),
    Snapshot(flume::Sender<EngineResult<Vec<u8>>>, EngineResult<Vec<u8>>),
    Flushed(
        flume::Sender<EngineResult<(u64, u64)>>,
        EngineResult<(u64, u64)>,
    ),
}

impl Shard {
    /// Send one owed answer (after the group commit).
    pub(super) fn answer(&mut self, d: Deferred) {
        // A send fails only when the asker is gone (connection closed): the
        // change is durable regardless, and there is nobody left to tell.
        match d {
            Deferred::Conn(to, body, charge) => to.deliver(body, charge),
            Deferred::Install(done, r) => {
                let _ = done.send(r);
            }
            Deferred::Machines(done, r) => {
                let _ = done.send(r);
            }
            Deferred::List(done, page) => {
                let _ = done.send(page);
            }
            Deferred::Stats(done) => {
                let _ = done.send(self.stats());
            }
            Deferred::Vote(done, vote) => {
                let _ = done.send(vote);
            }
            Deferred::Verdict(done, verdict) => {
                let _ = done.send(verdict);
            }
            Deferred::Events(done, chunk) => {
                let _ = done.send(chunk);
            }
            Deferred::Entries(done, chunk) => {
                let _ = done.send(chunk);
            }
            Deferred::Snapshot(done, result) => {
                let _ = done.send(result);
            }
            Deferred::Flushed(done, result) => {
                let _ = done.send(result);
            }
        }
    }
}
