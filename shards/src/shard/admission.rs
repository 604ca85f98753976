//! Which mailbox messages run now and which wait for their client: a
//! request whose client's answer budget is spent waits in that client's
//! queue — with every later request of the client on this shard, so the
//! client's order holds — until budget comes back (see `budget.rs`). The
//! shard looks at the waiting queues once per loop turn, and at once when a
//! connection sends `Unpark`. A queue whose connection has ended is dropped.

use std::collections::VecDeque;
use std::sync::Arc;

use hashbrown::HashMap;

use super::budget::ResponseBudget;
use super::command::ShardMsg;
use super::runner::{Deferred, Shard};

/// Requests waiting for their clients' budgets, by client.
#[derive(Default)]
pub struct Waiting {
    /// Keyed by the budget's address: one queue per client.
    queues: HashMap<usize, (Arc<ResponseBudget>, VecDeque<ShardMsg>)>,
    /// Where the next look starts in the clients' order: a look cut short
    /// by the turn's end must not always favour the same clients.
    rotation: usize,
}

impl Waiting {
    /// Requests waiting, all clients together.
    pub fn len(&self) -> usize {
        self.queues.values().map(|(_, q)| q.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// Every waiting request, each client's in order (a member that lost
    /// the lead refuses them).
    pub fn take_all(&mut self) -> Vec<ShardMsg> {
        self.queues.drain().flat_map(|(_, (_, q))| q).collect()
    }
}

fn key(budget: &Arc<ResponseBudget>) -> usize {
    Arc::as_ptr(budget) as usize
}

impl Shard {
    /// The message, if it may run now; otherwise it waits in its client's
    /// queue and `None` is returned.
    pub(super) fn admit(&mut self, msg: ShardMsg) -> Option<ShardMsg> {
        let Some((budget, seq)) = msg.budget() else {
            return Some(msg);
        };
        if budget.is_closed() {
            // Its connection is gone: dropped unanswered (`budget.rs`).
            return None;
        }
        let k = key(budget);
        let queued = self.waiting.queues.contains_key(&k);
        if !queued && budget.may_run(seq) {
            return Some(msg);
        }
        let budget = budget.clone();
        if !queued {
            // Marked before the queue exists: a connection that returns
            // budget from now on wakes this shard.
            budget.note_parked(self.state.shard_id, seq);
            self.wake_waiting = true;
        }
        self.waiting
            .queues
            .entry(k)
            .or_insert_with(|| (budget, VecDeque::new()))
            .1
            .push_back(msg);
        None
    }

    /// Run the waiting requests that their clients' budgets now allow, each
    /// client's in order, until the turn's end (`turn_ends`, on the shard's
    /// monotonic clock) or, in a member's turn, until one's record has no
    /// room in the turn's entry; what is left runs next turn
    /// (`wake_waiting` stays set).
    pub(super) fn run_waiting(
        &mut self,
        now: u64,
        deferred: &mut Vec<Deferred>,
        turn_ends: std::time::Duration,
    ) {
        // Cleared first: a wake-up that finds nothing waiting (a mark left
        // on this shard by a request that ran in the turn it started
        // waiting) would otherwise keep the loop turning without pause.
        self.wake_waiting = false;
        if self.waiting.is_empty() {
            return;
        }
        let mut keys: Vec<usize> = self.waiting.queues.keys().copied().collect();
        keys.sort_unstable();
        self.waiting.rotation = self.waiting.rotation.wrapping_add(1);
        let start = self.waiting.rotation % keys.len().max(1);
        keys.rotate_left(start);
        for k in keys {
            while let Some((budget, queue)) = self.waiting.queues.get_mut(&k) {
                let seq = queue.front().and_then(|m| m.budget()).map(|(_, s)| s);
                let Some(seq) = seq.filter(|_| !budget.is_closed()) else {
                    // Emptied, or its connection is gone: its requests are
                    // dropped unanswered (`budget.rs`).
                    self.waiting.queues.remove(&k);
                    break;
                };
                if !budget.may_run(seq) {
                    if budget.note_parked(self.state.shard_id, seq) {
                        // Budget came back, or the connection ended, while
                        // it was being marked: look again.
                        continue;
                    }
                    // Marked again: the next returned budget wakes us.
                    break;
                }
                if self.env.clock.monotonic() >= turn_ends {
                    self.wake_waiting = true;
                    return;
                }
                let Some(msg) = queue.pop_front() else {
                    break;
                };
                self.run_admitted(msg, now, deferred);
                if let Some(msg) = self.member.as_mut().and_then(|m| m.not_run.take()) {
                    // No room in this member's turn for its record: it stays
                    // first in its client's queue, and the rest wait behind
                    // it for the next turn.
                    if let Some((_, queue)) = self.waiting.queues.get_mut(&k) {
                        queue.push_front(msg);
                    }
                    self.wake_waiting = true;
                    return;
                }
            }
        }
    }
}
