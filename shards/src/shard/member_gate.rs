//! Which messages a member shard runs itself, which need its group's
//! leader (run there, or forwarded to it), and how a message is answered
//! when it is not run (`replica.rs`).

use super::command::{BatchVote, ShardMsg};
use super::deferred::Deferred;
use super::runner::Shard;
use crate::error::EngineError;

/// Messages that read or change the state: only a leader runs them.
pub(super) fn needs_leader(msg: &ShardMsg) -> bool {
    matches!(
        msg,
        ShardMsg::Exec { .. }
            | ShardMsg::InstallMachine { .. }
            | ShardMsg::List { .. }
            | ShardMsg::Machines { .. }
            | ShardMsg::ChangeMembers { .. }
            | ShardMsg::AtomicBatch { .. }
            | ShardMsg::Prepare { .. }
            | ShardMsg::Decide { .. }
            | ShardMsg::Decision { .. }
            | ShardMsg::Flush { .. }
    )
}

/// The refusal of a cluster operation by a standalone shard.
pub(super) fn not_a_member() -> EngineError {
    EngineError::new(
        crate::error::ErrorCode::BadRequest,
        "this node is not a cluster member (no corestate.cluster section)",
    )
}

/// Answer `msg` with `error` without running it.
pub(super) fn refuse(msg: ShardMsg, error: EngineError, deferred: &mut Vec<Deferred>) {
    match msg {
        ShardMsg::Exec { reply, .. } => {
            let body = Err(error);
            let charge = reply.charge_for(&body);
            deferred.push(Deferred::Conn(reply, body, charge));
        }
        ShardMsg::InstallMachine { done, .. } => deferred.push(Deferred::Install(done, Err(error))),
        ShardMsg::Machines { done, .. } => deferred.push(Deferred::Machines(done, Err(error))),
        ShardMsg::AtomicBatch { done, .. } | ShardMsg::Prepare { done, .. } => {
            deferred.push(Deferred::Vote(done, BatchVote::Refused(error)))
        }
        ShardMsg::Flush { done } => deferred.push(Deferred::Flushed(done, Err(error))),
        ShardMsg::ChangeMembers { done, .. } => {
            let _ = done.send(Err(error));
        }
        ShardMsg::SnapshotInstance { done, .. } => {
            deferred.push(Deferred::Snapshot(done, Err(error)))
        }
        // List, Decide, Compact: no error to carry; the asker sees its
        // reply channel close (for Decide: the outcome is unknown). Other
        // messages are never refused.
        _ => {}
    }
}

impl Shard {
    /// Send an owed answer as `error` instead (the turn was not logged).
    pub(super) fn answer_refused(&mut self, d: Deferred, error: &EngineError) {
        match d {
            Deferred::Conn(to, _, charge) => to.deliver(Err(error.clone()), charge),
            Deferred::Install(done, _) => {
                let _ = done.send(Err(error.clone()));
            }
            Deferred::Machines(done, _) => {
                let _ = done.send(Err(error.clone()));
            }
            // The batch's part was staged with the turn the group did not
            // take: the whole batch gets the refusal.
            Deferred::Vote(done, _) => {
                let _ = done.send(BatchVote::Refused(error.clone()));
            }
            Deferred::Flushed(done, _) => {
                let _ = done.send(Err(error.clone()));
            }
            // No error to carry: the asker sees its reply channel close
            // (a decision's outcome is then unknown to it).
            Deferred::List(..) | Deferred::Verdict(..) => {}
            other => self.answer(other),
        }
    }
}
