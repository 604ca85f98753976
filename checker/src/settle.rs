//! Settling unknown writes by the committed log, through idempotency keys.
//!
//! On a cluster an unknown write has no deadline: its entry may commit
//! long after the node that took it died or was cut off (a later leader
//! commits it with its first entry). With hundreds of such writes per
//! instance the search must try each at every step, and gives up. But
//! when every write carries a key unique to its request, the log says
//! exactly which unknown writes took effect, and what they did:
//!
//! * a write whose key the log holds took effect with the log's result:
//!   it becomes an answered operation — answered no later than the first
//!   answered operation on its instance that saw its offset (a GET whose
//!   `last_wal_offset` reaches it, a write with a higher offset), which
//!   bounds it in real time;
//! * a write whose key the log lacks never took effect (the log is read
//!   after every client stopped) and leaves the history;
//! * an unknown GET constrains nothing and leaves the history.
//!
//! The keys also check the log against the answers: every acknowledged
//! write must be logged under its key with the result it was answered
//! with, a write answered with a failure must not be logged, and a key
//! must be logged once, for the instance and call that sent it. The log
//! is thereby not trusted blindly — and the linearizability search then
//! checks the settled writes against everything the clients saw.

use std::collections::HashMap;

use crate::durability::{Change, Committed};
use crate::history::{Call, History, Op, Outcome, Reply};

/// What settling did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// Unknown writes the log shows took effect (now answered).
    pub took_effect: usize,
    /// Unknown writes the log does not hold (dropped).
    pub never_did: usize,
    /// Unknown reads (dropped).
    pub reads_dropped: usize,
    /// Unknown writes without a key (left unknown).
    pub unkeyed: usize,
}

/// What an acknowledged request for `entry` was answered with.
fn reply_of(entry: &Committed) -> Reply {
    match &entry.change {
        Change::Create { state } => Reply::Created {
            state: state.clone(),
            wal_offset: entry.offset,
        },
        Change::Apply {
            from_state,
            to_state,
            ..
        } => Reply::Applied {
            from_state: from_state.clone(),
            to_state: to_state.clone(),
            wal_offset: entry.offset,
        },
    }
}

/// Whether `entry` is what `op` asked for.
fn matches(op: &Op, entry: &Committed) -> bool {
    op.instance == entry.instance
        && match (&op.call, &entry.change) {
            (Call::Create, Change::Create { .. }) => true,
            (Call::Apply { event, .. }, Change::Apply { event: logged, .. }) => event == logged,
            _ => false,
        }
}

/// The highest offset an answered operation shows was applied before it
/// completed (`None`: it shows none).
fn offset_seen(op: &Op) -> Option<u64> {
    match &op.outcome {
        Outcome::Ok(Reply::Got {
            last_wal_offset, ..
        }) => Some(*last_wal_offset),
        Outcome::Ok(Reply::Applied { wal_offset, .. })
        | Outcome::Ok(Reply::Created { wal_offset, .. }) => wal_offset.checked_sub(1),
        _ => None,
    }
}

/// Per instance, for "which answered operation first saw offset X": the
/// offsets seen in increasing order, and for each the earliest completion
/// among the operations that saw it or more.
struct Observers {
    seen: Vec<u64>,
    earliest_from: Vec<u64>,
}

impl Observers {
    fn of(ops: &[&Op]) -> Observers {
        let mut pairs: Vec<(u64, u64)> = ops
            .iter()
            .filter_map(|op| offset_seen(op).map(|s| (s, op.complete_ns)))
            .collect();
        pairs.sort_unstable();
        let mut earliest_from = vec![u64::MAX; pairs.len()];
        let mut earliest = u64::MAX;
        for (i, (_, done)) in pairs.iter().enumerate().rev() {
            earliest = earliest.min(*done);
            earliest_from[i] = earliest;
        }
        Observers {
            seen: pairs.into_iter().map(|(s, _)| s).collect(),
            earliest_from,
        }
    }

    /// When the first operation that saw `offset` completed.
    fn first_seeing(&self, offset: u64) -> u64 {
        let at = self.seen.partition_point(|&s| s < offset);
        self.earliest_from.get(at).copied().unwrap_or(u64::MAX)
    }
}

impl History {
    /// Settle every unknown operation by `log` (the committed creates and
    /// applies of the instances under test, read after the load stopped),
    /// as the module says; an error lists where the log and the answers
    /// disagree.
    pub fn settle_unknowns_by_log(&mut self, log: &[Committed]) -> Result<Settled, String> {
        let mut problems = Vec::new();
        let mut by_key: HashMap<&str, &Committed> = HashMap::new();
        for entry in log {
            if let Some(key) = entry.key.as_deref() {
                if let Some(first) = by_key.insert(key, entry) {
                    problems.push(format!("key {key} logged twice: {first:?} and {entry:?}"));
                }
            }
        }
        let mut observers: HashMap<&str, Observers> = HashMap::new();
        for (instance, ops) in self.by_instance() {
            let answered: Vec<&Op> = ops
                .into_iter()
                .filter(|op| matches!(op.outcome, Outcome::Ok(_)))
                .collect();
            observers.insert(instance, Observers::of(&answered));
        }
        let mut settled = Settled::default();
        let mut kept = Vec::with_capacity(self.ops.len());
        for op in &self.ops {
            let logged = op.key.as_deref().and_then(|k| by_key.get(k).copied());
            if let Some(entry) = logged {
                if !matches(op, entry) {
                    problems.push(format!("{op}: its key is logged for {entry:?}"));
                }
            }
            match (&op.outcome, logged) {
                (Outcome::Ok(reply), Some(entry)) if *reply != reply_of(entry) => {
                    problems.push(format!("{op}: logged as {entry:?}"));
                }
                (Outcome::Ok(_), None) if op.key.is_some() => {
                    problems.push(format!("{op}: acknowledged, not in the log"));
                }
                (Outcome::Fail(_), Some(entry)) => {
                    problems.push(format!("{op}: answered a failure, logged as {entry:?}"));
                }
                _ => {}
            }
            if op.outcome != Outcome::Unknown {
                kept.push(op.clone());
                continue;
            }
            match (&op.call, &op.key, logged) {
                (Call::Get, _, _) => settled.reads_dropped += 1,
                (_, None, _) => {
                    settled.unkeyed += 1;
                    kept.push(op.clone());
                }
                (_, Some(_), None) => settled.never_did += 1,
                (_, Some(_), Some(entry)) => {
                    let seen_by = observers
                        .get(op.instance.as_str())
                        .map_or(u64::MAX, |o| o.first_seeing(entry.offset));
                    let mut op = op.clone();
                    op.outcome = Outcome::Ok(reply_of(entry));
                    // Seen before it was invoked: the search reports it.
                    op.complete_ns = seen_by.max(op.invoke_ns);
                    op.effect_by_ns = None;
                    kept.push(op);
                    settled.took_effect += 1;
                }
            }
        }
        self.ops = kept;
        if problems.is_empty() {
            Ok(settled)
        } else {
            Err(format!(
                "{} problem(s) between the log and the answers:\n  {}",
                problems.len(),
                problems.join("\n  ")
            ))
        }
    }
}
