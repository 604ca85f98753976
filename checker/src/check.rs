//! Checking a whole history: each instance alone (instances are
//! independent objects, so the history is linearizable iff every
//! instance's sub-history is), with a readable account of any violation.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::history::{History, Op};
use crate::machine::Machine;
use crate::model::{resolve, InstanceState, Resolved};
use crate::wgl::{search, Interval, Search};

/// Search steps one instance may take before the check gives up (each
/// step is one attempt to place or take back one operation). Real
/// histories of a few thousand operations per instance need a few times
/// their length.
pub const SEARCH_STEPS_MAX: u64 = 50_000_000;

/// Operations quoted before the point where a violation was found.
pub const VIOLATION_CONTEXT_OPS: usize = 12;

/// The verdict on one instance.
#[derive(Debug)]
pub enum Verdict {
    Linearizable,
    /// No linearization exists; `account` tells where it broke.
    NotLinearizable {
        account: String,
    },
    /// The search ran out of steps.
    GaveUp {
        account: String,
    },
    /// The history itself is inconsistent (a reply that does not belong
    /// to its call, an answer before its invocation).
    Malformed {
        reason: String,
    },
}

#[derive(Debug)]
pub struct InstanceReport {
    pub instance: String,
    pub ops: usize,
    pub steps: u64,
    pub verdict: Verdict,
}

#[derive(Debug)]
pub struct Report {
    pub instances: Vec<InstanceReport>,
    pub elapsed: Duration,
}

impl Report {
    pub fn is_linearizable(&self) -> bool {
        self.instances
            .iter()
            .all(|r| matches!(r.verdict, Verdict::Linearizable))
    }

    /// Every instance that is not linearizable, with its account.
    pub fn failures(&self) -> String {
        let mut out = String::new();
        for r in &self.instances {
            let text = match &r.verdict {
                Verdict::Linearizable => continue,
                Verdict::NotLinearizable { account } => format!("NOT LINEARIZABLE\n{account}"),
                Verdict::GaveUp { account } => {
                    format!("gave up after {} steps\n{account}", r.steps)
                }
                Verdict::Malformed { reason } => format!("malformed history: {reason}"),
            };
            let _ = writeln!(out, "instance {} ({} ops): {text}", r.instance, r.ops);
        }
        out
    }

    pub fn steps(&self) -> u64 {
        self.instances.iter().map(|r| r.steps).sum()
    }
}

/// Check every instance of `history` against `machine`.
pub fn check_history(machine: &Machine, history: &History) -> Report {
    check_history_with(machine, history, SEARCH_STEPS_MAX)
}

pub fn check_history_with(machine: &Machine, history: &History, steps_max: u64) -> Report {
    let started = Instant::now();
    let instances = history
        .by_instance()
        .into_iter()
        .map(|(instance, ops)| check_instance(machine, instance, &ops, steps_max))
        .collect();
    Report {
        instances,
        elapsed: started.elapsed(),
    }
}

/// Check the operations of one instance.
pub fn check_instance(
    machine: &Machine,
    instance: &str,
    ops: &[&Op],
    steps_max: u64,
) -> InstanceReport {
    let mut kept: Vec<&Op> = Vec::with_capacity(ops.len());
    let mut resolved: Vec<Resolved> = Vec::with_capacity(ops.len());
    for op in ops {
        match resolve(machine, op) {
            Ok(Some(r)) => {
                kept.push(op);
                resolved.push(r);
            }
            Ok(None) => {}
            Err(reason) => {
                return InstanceReport {
                    instance: instance.to_string(),
                    ops: ops.len(),
                    steps: 0,
                    verdict: Verdict::Malformed { reason },
                }
            }
        }
    }
    let intervals: Vec<Interval> = kept
        .iter()
        .zip(&resolved)
        .map(|(op, r)| Interval {
            invoke: op.invoke_ns,
            answer: r.required().then_some(op.complete_ns),
            effect_by: op.effect_by_ns.filter(|_| !r.required()),
        })
        .collect();
    let start = InstanceState::ABSENT;
    let prefix = |depth: usize| match search(
        machine,
        &resolved,
        &intervals,
        start,
        steps_max,
        Some(depth),
    ) {
        Search::Reached { prefix } => prefix,
        _ => Vec::new(),
    };
    let (steps, verdict) = match search(machine, &resolved, &intervals, start, steps_max, None) {
        Search::Linearizable { steps } => (steps, Verdict::Linearizable),
        Search::Violation { deepest, steps } => (
            steps,
            Verdict::NotLinearizable {
                account: account(machine, &kept, &resolved, &prefix(deepest)),
            },
        ),
        Search::GaveUp { deepest, steps } => (
            steps,
            Verdict::GaveUp {
                account: account(machine, &kept, &resolved, &prefix(deepest)),
            },
        ),
        Search::Reached { .. } => unreachable!("no depth to stop at was given"),
    };
    InstanceReport {
        instance: instance.to_string(),
        ops: ops.len(),
        steps,
        verdict,
    }
}

/// Where the search got stuck: the end of the longest linearizable prefix,
/// the model state there, and the operations that could come next — none
/// of which the model accepts, or the search would have gone deeper.
fn account(machine: &Machine, ops: &[&Op], resolved: &[Resolved], deepest: &[usize]) -> String {
    let mut state = InstanceState::ABSENT;
    for &i in deepest {
        state = resolved[i]
            .step(machine, state)
            .expect("the prefix replays");
    }
    let mut placed = vec![false; ops.len()];
    for &i in deepest {
        placed[i] = true;
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "longest linearizable prefix: {} of {} ops; its last {}:",
        deepest.len(),
        ops.len(),
        deepest.len().min(VIOLATION_CONTEXT_OPS)
    );
    for &i in &deepest[deepest.len().saturating_sub(VIOLATION_CONTEXT_OPS)..] {
        let _ = writeln!(out, "  {}", ops[i]);
    }
    let _ = writeln!(out, "model state after it: {}", state.describe(machine));
    // The first answer among the unplaced operations bounds what may come
    // next: every unplaced operation invoked before it.
    let horizon = (0..ops.len())
        .filter(|&i| !placed[i] && resolved[i].required())
        .map(|i| ops[i].complete_ns)
        .min()
        .unwrap_or(u64::MAX);
    let _ = writeln!(
        out,
        "operations that could come next (invoked before {horizon} ns), none acceptable:"
    );
    for i in (0..ops.len()).filter(|&i| !placed[i] && ops[i].invoke_ns <= horizon) {
        let verdict = match resolved[i].step(machine, state) {
            Some(_) => "accepted alone, but no continuation",
            None => "rejected by the model",
        };
        let _ = writeln!(out, "  {}  <- {verdict}", ops[i]);
    }
    out
}
