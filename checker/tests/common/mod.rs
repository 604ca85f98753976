//! Building synthetic histories: a machine with a cycle and a branch, ops
//! written out by hand, and random histories that are linearizable by
//! construction (each op takes effect at an instant inside its interval).

#![allow(dead_code)]

use corestate_checker::{Call, Failure, History, Machine, Op, Outcome, Reply};

/// idle -GO-> busy -DONE-> idle; busy -FAIL-> failed -RETRY-> idle.
pub fn job() -> Machine {
    Machine::new(
        "idle",
        &[
            ("idle", "GO", "busy"),
            ("busy", "DONE", "idle"),
            ("busy", "FAIL", "failed"),
            ("failed", "RETRY", "idle"),
        ],
    )
}

pub fn op(client: usize, invoke_ns: u64, complete_ns: u64, call: Call, outcome: Outcome) -> Op {
    Op {
        client,
        instance: "i".into(),
        call,
        invoke_ns,
        complete_ns,
        outcome,
        effect_by_ns: None,
        key: None,
    }
}

pub fn apply(event: &str) -> Call {
    Call::Apply {
        event: event.into(),
        expected_state: None,
    }
}

pub fn apply_expecting(event: &str, state: &str) -> Call {
    Call::Apply {
        event: event.into(),
        expected_state: Some(state.into()),
    }
}

pub fn created(offset: u64) -> Outcome {
    Outcome::Ok(Reply::Created {
        state: "idle".into(),
        wal_offset: offset,
    })
}

pub fn applied(from: &str, to: &str, offset: u64) -> Outcome {
    Outcome::Ok(Reply::Applied {
        from_state: from.into(),
        to_state: to.into(),
        wal_offset: offset,
    })
}

pub fn got(state: &str, offset: u64) -> Outcome {
    Outcome::Ok(Reply::Got {
        state: state.into(),
        last_wal_offset: offset,
    })
}

pub fn invalid(state: &str) -> Outcome {
    Outcome::Fail(Failure::InvalidTransition {
        state: Some(state.into()),
    })
}

pub fn history(ops: Vec<Op>) -> History {
    History { ops }
}

/// xorshift64*: small, seeded, good enough to pick ops.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random history of `clients` clients doing `ops_per_client` ops each on
/// `instances` instances of [`job`], linearizable by construction: every
/// op takes effect at a random instant inside its interval, in that order,
/// and about one in `unknown_one_in` writes loses its answer (taking effect
/// or not, at random).
pub fn random_linearizable(
    seed: u64,
    clients: usize,
    ops_per_client: usize,
    instances: usize,
    unknown_one_in: u64,
) -> History {
    let machine = job();
    let mut rng = Rng(seed | 1);
    // (linearization instant, op, takes effect if unknown)
    let mut planned: Vec<(u64, Op, bool)> = Vec::new();
    for client in 0..clients {
        let mut t = rng.below(100);
        for _ in 0..ops_per_client {
            let instance = format!("i{}", rng.below(instances as u64));
            let call = match rng.below(10) {
                0 => Call::Create,
                1..=3 => Call::Get,
                4 => {
                    let state = ["idle", "busy", "failed"][rng.below(3) as usize];
                    let event = ["GO", "DONE", "FAIL", "RETRY"][rng.below(4) as usize];
                    apply_expecting(event, state)
                }
                _ => apply(["GO", "DONE", "FAIL", "RETRY"][rng.below(4) as usize]),
            };
            let invoke = t + 1 + rng.below(50);
            let point = invoke + rng.below(200);
            let complete = point + rng.below(200);
            let op = Op {
                client,
                instance,
                call,
                invoke_ns: invoke,
                complete_ns: complete,
                outcome: Outcome::Unknown,
                effect_by_ns: None,
                key: None,
            };
            planned.push((point, op, rng.below(2) == 0));
            t = complete;
        }
    }
    planned.sort_by_key(|(point, op, _)| (*point, op.client));
    let mut states: std::collections::HashMap<String, (String, u64)> = Default::default();
    let mut next_offset = 1000u64;
    let mut ops = Vec::new();
    for (_, mut op, effect_if_unknown) in planned {
        let lose_answer = !matches!(op.call, Call::Get)
            && rng.below(unknown_one_in.max(1)) == 0
            && unknown_one_in > 0;
        if lose_answer && !effect_if_unknown {
            op.effect_by_ns = (rng.below(2) == 0).then_some(op.complete_ns);
            ops.push(op);
            continue;
        }
        let current = states.get(&op.instance).cloned();
        let outcome = match (&op.call, current) {
            (Call::Create, None) => {
                next_offset += 1 + rng.below(5);
                states.insert(op.instance.clone(), ("idle".into(), next_offset));
                created(next_offset)
            }
            (Call::Create, Some(_)) => Outcome::Fail(Failure::InstanceExists),
            (Call::Get, None) | (Call::Apply { .. }, None) => {
                Outcome::Fail(Failure::InstanceNotFound)
            }
            (Call::Get, Some((state, offset))) => got(&state, offset),
            (
                Call::Apply {
                    event,
                    expected_state,
                },
                Some((state, _)),
            ) => {
                let target = machine
                    .event_id(event)
                    .and_then(|e| machine.target(machine.state_id(&state)?, e))
                    .map(|t| machine.state_name(t).to_string());
                match (expected_state, target) {
                    (Some(e), _) if *e != state => Outcome::Fail(Failure::Conflict {
                        actual: Some(state.clone()),
                    }),
                    (_, None) => invalid(&state),
                    (_, Some(to)) => {
                        next_offset += 1 + rng.below(5);
                        states.insert(op.instance.clone(), (to.clone(), next_offset));
                        applied(&state, &to, next_offset)
                    }
                }
            }
        };
        op.outcome = if lose_answer {
            Outcome::Unknown
        } else {
            outcome
        };
        if lose_answer && rng.below(2) == 0 {
            // Half of the lost answers come from a server known to have
            // died when the client gave up.
            op.effect_by_ns = Some(op.complete_ns);
        }
        ops.push(op);
    }
    ops.sort_by_key(|op| op.invoke_ns);
    History { ops }
}
