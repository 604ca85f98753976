//! The sequential model of one instance: what CREATE, APPLY_EVENT and GET
//! may answer in a given state, and the state each leaves behind.
//!
//! Besides the machine state the model tracks what is known of the
//! instance's `last_wal_offset`: exactly (after an answered write or a
//! read), only a lower bound (after an unknown write that took effect), or
//! nothing (never created). Offsets of one instance must strictly increase
//! in linearization order, and a GET must report the offset of the write
//! it read — so a read that returns the right state name but an older
//! write (a cycle a→b→a read as the first `a`) is still caught.

use crate::history::{Call, Failure, Op, Outcome, Reply};
use crate::machine::{EventId, Machine, StateId};

/// What the model knows of `last_wal_offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Offset {
    /// The instance was never written.
    Nothing,
    Exactly(u64),
    /// Some offset strictly above this one (an unknown write took effect).
    Above(u64),
}

impl Offset {
    /// The largest offset known to be at or below the current one.
    fn floor(self) -> u64 {
        match self {
            Offset::Nothing => 0,
            Offset::Exactly(o) | Offset::Above(o) => o,
        }
    }

    /// Could a write made now have been given `offset`?
    fn next_may_be(self, offset: u64) -> bool {
        match self {
            Offset::Nothing => true,
            Offset::Exactly(o) | Offset::Above(o) => offset > o,
        }
    }
}

/// The model's state of one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InstanceState {
    /// `None` until created.
    pub state: Option<StateId>,
    pub offset: Offset,
}

impl InstanceState {
    pub const ABSENT: InstanceState = InstanceState {
        state: None,
        offset: Offset::Nothing,
    };

    pub fn describe(&self, machine: &Machine) -> String {
        match self.state {
            None => "absent".to_string(),
            Some(s) => format!("{} {:?}", machine.state_name(s), self.offset),
        }
    }
}

/// A state name as the model knows it: `None` for a name the machine does
/// not have (it then matches no state, so any claim about it fails).
type Named = Option<StateId>;

/// An operation with its names resolved against the machine.
#[derive(Clone, Debug)]
pub(crate) enum Resolved {
    CreateOk {
        state: Named,
        offset: u64,
    },
    CreateExists,
    CreateUnknown,
    ApplyOk {
        call: ApplyCall,
        from: Named,
        to: Named,
        offset: u64,
    },
    ApplyNotFound,
    ApplyConflict {
        call: ApplyCall,
        actual: Option<Named>,
    },
    ApplyInvalid {
        call: ApplyCall,
        state: Option<Named>,
    },
    ApplyUnknown {
        call: ApplyCall,
    },
    GetOk {
        state: Named,
        offset: u64,
    },
    GetNotFound,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct ApplyCall {
    event: Option<EventId>,
    /// `None`: no expected_state sent.
    expected: Option<Named>,
}

impl ApplyCall {
    fn expectation_holds(&self, current: StateId) -> bool {
        self.expected.is_none_or(|e| e == Some(current))
    }
}

/// Resolve `op` against `machine`. `Ok(None)`: the op constrains nothing
/// (an unknown GET). `Err`: the reply does not belong to the call.
pub(crate) fn resolve(machine: &Machine, op: &Op) -> Result<Option<Resolved>, String> {
    let named = |s: &str| machine.state_id(s);
    let resolved = match (&op.call, &op.outcome) {
        (Call::Create, Outcome::Ok(Reply::Created { state, wal_offset })) => Resolved::CreateOk {
            state: named(state),
            offset: *wal_offset,
        },
        (Call::Create, Outcome::Fail(Failure::InstanceExists)) => Resolved::CreateExists,
        (Call::Create, Outcome::Unknown) => Resolved::CreateUnknown,
        (
            Call::Apply {
                event,
                expected_state,
            },
            outcome,
        ) => {
            let call = ApplyCall {
                event: machine.event_id(event),
                expected: expected_state.as_deref().map(named),
            };
            match outcome {
                Outcome::Ok(Reply::Applied {
                    from_state,
                    to_state,
                    wal_offset,
                }) => Resolved::ApplyOk {
                    call,
                    from: named(from_state),
                    to: named(to_state),
                    offset: *wal_offset,
                },
                Outcome::Fail(Failure::InstanceNotFound) => Resolved::ApplyNotFound,
                Outcome::Fail(Failure::Conflict { actual }) if call.expected.is_some() => {
                    Resolved::ApplyConflict {
                        call,
                        actual: actual.as_deref().map(named),
                    }
                }
                Outcome::Fail(Failure::InvalidTransition { state }) => Resolved::ApplyInvalid {
                    call,
                    state: state.as_deref().map(named),
                },
                Outcome::Unknown => Resolved::ApplyUnknown { call },
                other => return Err(format!("APPLY cannot end as {other:?}: {op}")),
            }
        }
        (
            Call::Get,
            Outcome::Ok(Reply::Got {
                state,
                last_wal_offset,
            }),
        ) => Resolved::GetOk {
            state: named(state),
            offset: *last_wal_offset,
        },
        (Call::Get, Outcome::Fail(Failure::InstanceNotFound)) => Resolved::GetNotFound,
        (Call::Get, Outcome::Unknown) => return Ok(None),
        (call, outcome) => return Err(format!("{call:?} cannot end as {outcome:?}: {op}")),
    };
    if op.complete_ns < op.invoke_ns {
        return Err(format!("completed before it was invoked: {op}"));
    }
    Ok(Some(resolved))
}

impl Resolved {
    /// Unknown operations need not take effect.
    pub(crate) fn required(&self) -> bool {
        !matches!(
            self,
            Resolved::CreateUnknown | Resolved::ApplyUnknown { .. }
        )
    }

    /// The state after this operation takes effect in state `s`, or `None`
    /// when the model cannot give this answer in `s`. An unknown operation
    /// is offered only with an effect: without one it is the same as not
    /// linearizing it at all.
    pub(crate) fn step(&self, machine: &Machine, s: InstanceState) -> Option<InstanceState> {
        let current = s.state;
        match *self {
            Resolved::CreateOk { state, offset } => (current.is_none()
                && state == Some(machine.initial())
                && s.offset.next_may_be(offset))
            .then_some(InstanceState {
                state,
                offset: Offset::Exactly(offset),
            }),
            Resolved::CreateExists => current.is_some().then_some(s),
            Resolved::CreateUnknown => current.is_none().then_some(InstanceState {
                state: Some(machine.initial()),
                offset: Offset::Above(s.offset.floor()),
            }),
            Resolved::ApplyOk {
                call,
                from,
                to,
                offset,
            } => {
                let cur = current?;
                let target = machine.target(cur, call.event?)?;
                (call.expectation_holds(cur)
                    && from == Some(cur)
                    && to == Some(target)
                    && s.offset.next_may_be(offset))
                .then_some(InstanceState {
                    state: Some(target),
                    offset: Offset::Exactly(offset),
                })
            }
            Resolved::ApplyNotFound | Resolved::GetNotFound => current.is_none().then_some(s),
            Resolved::ApplyConflict { call, actual } => {
                let cur = current?;
                (!call.expectation_holds(cur) && actual.is_none_or(|a| a == Some(cur))).then_some(s)
            }
            Resolved::ApplyInvalid { call, state } => {
                let cur = current?;
                let no_transition = call.event.and_then(|e| machine.target(cur, e)).is_none();
                (call.expectation_holds(cur)
                    && no_transition
                    && state.is_none_or(|named| named == Some(cur)))
                .then_some(s)
            }
            Resolved::ApplyUnknown { call } => {
                let cur = current?;
                let target = machine.target(cur, call.event?)?;
                call.expectation_holds(cur).then_some(InstanceState {
                    state: Some(target),
                    offset: Offset::Above(s.offset.floor()),
                })
            }
            Resolved::GetOk { state, offset } => {
                let cur = current?;
                let offset_matches = match s.offset {
                    Offset::Nothing => false,
                    Offset::Exactly(o) => offset == o,
                    Offset::Above(o) => offset > o,
                };
                (state == Some(cur) && offset_matches).then_some(InstanceState {
                    state: current,
                    offset: Offset::Exactly(offset),
                })
            }
        }
    }
}
