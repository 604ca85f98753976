//! The checks beside linearizability, against the committed log as the
//! server reports it after the run (WAL_READ today; any replica's log in a
//! cluster):
//!
//! * the log is a valid execution of the machine, instance by instance;
//! * no acknowledged write is lost: every `ok` CREATE / APPLY is in the log
//!   at the offset it was acknowledged with, with the same transition;
//! * no phantom write: every logged write that nobody saw acknowledged is
//!   matched by an unknown operation that could have made it;
//! * the final read of each instance equals the end of its log;
//! * a watch stream equals the log's transitions: no gap, no duplicate, no
//!   reordering, nothing invented.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::history::{Call, History, Outcome, Reply};
use crate::machine::Machine;

/// Problems quoted in one failure message (the count is always given).
pub const PROBLEMS_QUOTED_MAX: usize = 20;

/// One write in the committed log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub offset: u64,
    pub instance: String,
    pub change: Change,
    /// The idempotency key the write was requested with, if any.
    pub key: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Create {
        state: String,
    },
    Apply {
        event: String,
        from_state: String,
        to_state: String,
    },
}

/// One transition as a watch stream delivered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEvent {
    pub offset: u64,
    pub instance: String,
    pub event: String,
    pub from_state: String,
    pub to_state: String,
}

/// The state and offset a final GET found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalRead {
    pub state: String,
    pub last_wal_offset: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DurabilityStats {
    pub committed_writes: usize,
    pub acknowledged_writes: usize,
    /// Logged writes that were never acknowledged (their request's answer
    /// was lost with the server): allowed, each matched by an unknown op.
    pub unacknowledged_committed: usize,
}

fn fail(mut problems: Vec<String>) -> Result<(), String> {
    if problems.is_empty() {
        return Ok(());
    }
    let count = problems.len();
    problems.truncate(PROBLEMS_QUOTED_MAX);
    Err(format!("{count} problem(s):\n  {}", problems.join("\n  ")))
}

/// Check `committed` (the whole log, in log order) against the history and
/// against `final_reads` (a GET of every instance after the run).
pub fn check_committed_log(
    machine: &Machine,
    history: &History,
    committed: &[Committed],
    final_reads: &BTreeMap<String, FinalRead>,
) -> Result<DurabilityStats, String> {
    let mut problems = Vec::new();
    let mut stats = DurabilityStats {
        committed_writes: committed.len(),
        ..DurabilityStats::default()
    };
    for pair in committed.windows(2) {
        if pair[1].offset <= pair[0].offset {
            problems.push(format!(
                "log offsets do not increase: {:?} then {:?}",
                pair[0], pair[1]
            ));
        }
    }
    // Replay the log through the machine.
    let mut end: BTreeMap<&str, (String, u64)> = BTreeMap::new();
    for entry in committed {
        let current = end.get(entry.instance.as_str());
        match (&entry.change, current) {
            (Change::Create { state }, None) => {
                if machine.state_id(state) != Some(machine.initial()) {
                    problems.push(format!("created in a non-initial state: {entry:?}"));
                }
            }
            (
                Change::Apply {
                    event,
                    from_state,
                    to_state,
                },
                Some((current, _)),
            ) => {
                let target = machine
                    .state_id(current)
                    .zip(machine.event_id(event))
                    .and_then(|(s, e)| machine.target(s, e))
                    .map(|t| machine.state_name(t));
                if from_state != current || target != Some(to_state.as_str()) {
                    problems.push(format!(
                        "log applies {event} {from_state}->{to_state} to an instance in \
                         {current} (machine says {target:?}): {entry:?}"
                    ));
                }
            }
            (_, current) => problems.push(format!(
                "log entry does not fit the instance's log so far ({current:?}): {entry:?}"
            )),
        }
        let state = match &entry.change {
            Change::Create { state } => state,
            Change::Apply { to_state, .. } => to_state,
        };
        end.insert(entry.instance.as_str(), (state.clone(), entry.offset));
    }
    // Every acknowledged write is in the log, whole.
    let by_offset: HashMap<u64, &Committed> = committed.iter().map(|c| (c.offset, c)).collect();
    let mut matched: HashSet<u64> = HashSet::new();
    // Unknown writes per (instance, what they would log), for phantoms.
    let mut unknown: HashMap<(&str, Option<&str>), usize> = HashMap::new();
    for op in &history.ops {
        let expected = match (&op.call, &op.outcome) {
            (Call::Create, Outcome::Ok(Reply::Created { state, wal_offset })) => Some((
                *wal_offset,
                Change::Create {
                    state: state.clone(),
                },
            )),
            (
                Call::Apply { event, .. },
                Outcome::Ok(Reply::Applied {
                    from_state,
                    to_state,
                    wal_offset,
                }),
            ) => Some((
                *wal_offset,
                Change::Apply {
                    event: event.clone(),
                    from_state: from_state.clone(),
                    to_state: to_state.clone(),
                },
            )),
            (Call::Create, Outcome::Unknown) => {
                *unknown.entry((op.instance.as_str(), None)).or_default() += 1;
                None
            }
            (Call::Apply { event, .. }, Outcome::Unknown) => {
                *unknown
                    .entry((op.instance.as_str(), Some(event.as_str())))
                    .or_default() += 1;
                None
            }
            _ => None,
        };
        let Some((offset, change)) = expected else {
            continue;
        };
        stats.acknowledged_writes += 1;
        match by_offset.get(&offset) {
            Some(c) if c.instance == op.instance && c.change == change => {
                if !matched.insert(offset) {
                    problems.push(format!(
                        "two acknowledgements of the write at {offset}: {op}"
                    ));
                }
            }
            Some(c) => problems.push(format!(
                "acknowledged write differs from the log at its offset: {op}; log has {c:?}"
            )),
            None => problems.push(format!("LOST acknowledged write: {op}")),
        }
    }
    for c in committed.iter().filter(|c| !matched.contains(&c.offset)) {
        stats.unacknowledged_committed += 1;
        let key = match &c.change {
            Change::Create { .. } => (c.instance.as_str(), None),
            Change::Apply { event, .. } => (c.instance.as_str(), Some(event.as_str())),
        };
        match unknown.get_mut(&key) {
            Some(n) if *n > 0 => *n -= 1,
            _ => problems.push(format!(
                "PHANTOM write: logged, never acknowledged, no unknown request could have \
                 made it: {c:?}"
            )),
        }
    }
    // The final reads show the end of each instance's log.
    for (instance, read) in final_reads {
        match end.get(instance.as_str()) {
            Some((state, offset)) if *state == read.state && *offset == read.last_wal_offset => {}
            other => problems.push(format!(
                "final GET of {instance} found {read:?}; the log ends with {other:?}"
            )),
        }
    }
    for instance in end.keys() {
        if !final_reads.contains_key(*instance) {
            problems.push(format!("no final GET of logged instance {instance}"));
        }
    }
    fail(problems).map(|()| stats)
}

/// Check that `received` (one watch stream from its first offset on,
/// resumed across restarts) is exactly the log's transitions at or above
/// `from_offset`, in order. Returns the number of events compared.
pub fn check_watch_stream(
    received: &[StreamEvent],
    committed: &[Committed],
    from_offset: u64,
) -> Result<usize, String> {
    let expected: Vec<StreamEvent> = committed
        .iter()
        .filter(|c| c.offset >= from_offset)
        .filter_map(|c| match &c.change {
            Change::Apply {
                event,
                from_state,
                to_state,
            } => Some(StreamEvent {
                offset: c.offset,
                instance: c.instance.clone(),
                event: event.clone(),
                from_state: from_state.clone(),
                to_state: to_state.clone(),
            }),
            Change::Create { .. } => None,
        })
        .collect();
    let mut problems = Vec::new();
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for (i, event) in received.iter().enumerate() {
        if let Some(first) = seen.insert(event.offset, i) {
            problems.push(format!(
                "DUPLICATE: event at {} delivered at positions {first} and {i}",
                event.offset
            ));
        }
    }
    for pair in received.windows(2) {
        if pair[1].offset <= pair[0].offset {
            problems.push(format!(
                "out of order: {} after {}",
                pair[1].offset, pair[0].offset
            ));
        }
    }
    let logged: HashMap<u64, &StreamEvent> = expected.iter().map(|e| (e.offset, e)).collect();
    for event in received {
        match logged.get(&event.offset) {
            Some(e) if *e == event => {}
            Some(e) => problems.push(format!("event differs from the log: {event:?} vs {e:?}")),
            None => problems.push(format!("event not in the log: {event:?}")),
        }
    }
    for e in expected.iter().filter(|e| !seen.contains_key(&e.offset)) {
        problems.push(format!("GAP: logged transition never delivered: {e:?}"));
    }
    fail(problems).map(|()| received.len())
}
