//! The history a test records: every CREATE_INSTANCE, APPLY_EVENT and
//! GET_INSTANCE a client invoked, with the real-time instants of its
//! invocation and completion and its outcome — ok (with the result), a
//! definite failure, or unknown (timeout, connection lost, server killed).
//!
//! Nothing here knows how the requests travelled: each client thread or
//! task keeps a [`ClientLog`] stamped by one shared [`Clock`], and the logs
//! are merged into a [`History`] after the run.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Instant;

/// One time origin shared by every client of a run, so that instants
/// taken on different threads compare in real time (`Instant` is monotonic
/// and process-wide).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            origin: Instant::now(),
        }
    }

    /// Nanoseconds since the clock started.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// What the client asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Create,
    Apply {
        event: String,
        expected_state: Option<String>,
    },
    Get,
}

/// What an `ok` answer said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Created {
        state: String,
        wal_offset: u64,
    },
    Applied {
        from_state: String,
        to_state: String,
        wal_offset: u64,
    },
    Got {
        state: String,
        last_wal_offset: u64,
    },
}

/// A definite failure: the server answered with an error that the
/// sequential model explains (and that took no effect).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    InstanceExists,
    InstanceNotFound,
    /// `CONFLICT` on `expected_state`; `actual` is the current state the
    /// server named in its message, when the message could be read.
    Conflict {
        actual: Option<String>,
    },
    /// `INVALID_TRANSITION`; `state` is the state the server named.
    InvalidTransition {
        state: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok(Reply),
    Fail(Failure),
    /// No answer: the operation may take effect at any instant after its
    /// invocation, or never.
    Unknown,
}

/// One completed operation of the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Which client (thread, task, connection) issued it.
    pub client: usize,
    pub instance: String,
    pub call: Call,
    pub invoke_ns: u64,
    /// When the answer arrived, or when the client gave up on an unknown
    /// one (reported, but an unknown op's interval has no end).
    pub complete_ns: u64,
    pub outcome: Outcome,
    /// For an unknown op whose server process is known to have died at
    /// some instant (a SIGKILLed single node): it took effect by then or
    /// never. `None`: no such bound (the default; a cluster may still
    /// commit a request after the node that took it died).
    pub effect_by_ns: Option<u64>,
    /// The idempotency key a write was sent with (unique to the request),
    /// which the log records with its effect (`settle.rs`).
    pub key: Option<String>,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let call = match &self.call {
            Call::Create => "CREATE".to_string(),
            Call::Apply {
                event,
                expected_state: None,
            } => format!("APPLY {event}"),
            Call::Apply {
                event,
                expected_state: Some(s),
            } => format!("APPLY {event} (expected {s})"),
            Call::Get => "GET".to_string(),
        };
        let outcome = match &self.outcome {
            Outcome::Ok(Reply::Created { state, wal_offset }) => {
                format!("ok {state} @{wal_offset}")
            }
            Outcome::Ok(Reply::Applied {
                from_state,
                to_state,
                wal_offset,
            }) => format!("ok {from_state}->{to_state} @{wal_offset}"),
            Outcome::Ok(Reply::Got {
                state,
                last_wal_offset,
            }) => format!("ok {state} @{last_wal_offset}"),
            Outcome::Fail(failure) => format!("fail {failure:?}"),
            Outcome::Unknown => "unknown".to_string(),
        };
        write!(
            f,
            "[{:>12} ns .. {:>12} ns] client {:>3} {} {call} -> {outcome}",
            self.invoke_ns, self.complete_ns, self.client, self.instance
        )
    }
}

/// An invocation whose outcome is not recorded yet; hand it back to the
/// log exactly once.
#[must_use = "every invocation must be completed as ok, fail or unknown"]
#[derive(Debug)]
pub struct Pending {
    instance: String,
    call: Call,
    invoke_ns: u64,
    key: Option<String>,
}

impl Pending {
    /// The idempotency key the request carries.
    pub fn with_key(mut self, key: String) -> Pending {
        self.key = Some(key);
        self
    }
}

/// The operations of one client, in the order it issued them.
#[derive(Debug)]
pub struct ClientLog {
    client: usize,
    clock: Clock,
    ops: Vec<Op>,
}

impl ClientLog {
    pub fn new(client: usize, clock: Clock) -> ClientLog {
        ClientLog {
            client,
            clock,
            ops: Vec::new(),
        }
    }

    /// Stamp the invocation; call it right before the request is sent.
    pub fn invoke(&self, instance: &str, call: Call) -> Pending {
        Pending {
            instance: instance.to_string(),
            call,
            invoke_ns: self.clock.now_ns(),
            key: None,
        }
    }

    pub fn ok(&mut self, pending: Pending, reply: Reply) {
        self.complete(pending, Outcome::Ok(reply));
    }

    pub fn fail(&mut self, pending: Pending, failure: Failure) {
        self.complete(pending, Outcome::Fail(failure));
    }

    pub fn unknown(&mut self, pending: Pending) {
        self.complete(pending, Outcome::Unknown);
    }

    /// Stamp the completion; call it right after the answer arrived.
    pub fn complete(&mut self, pending: Pending, outcome: Outcome) {
        let complete_ns = self.clock.now_ns();
        self.ops.push(Op {
            client: self.client,
            instance: pending.instance,
            call: pending.call,
            invoke_ns: pending.invoke_ns,
            complete_ns,
            outcome,
            effect_by_ns: None,
            key: pending.key,
        });
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }
}

/// Every client's operations together.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub ops: Vec<Op>,
}

impl History {
    pub fn from_logs(logs: impl IntoIterator<Item = ClientLog>) -> History {
        let mut ops: Vec<Op> = logs.into_iter().flat_map(|log| log.ops).collect();
        ops.sort_by_key(|op| (op.invoke_ns, op.client));
        History { ops }
    }

    pub fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    /// Bound every unknown op by the first of `deaths_ns` (instants at
    /// which the one server process died) at or after its invocation: the
    /// process that had the request is gone, so the request took effect
    /// before then or never. Only for a single server process at a time.
    pub fn bound_unknowns_by_deaths(&mut self, deaths_ns: &[u64]) {
        for op in &mut self.ops {
            if op.outcome == Outcome::Unknown {
                op.effect_by_ns = deaths_ns
                    .iter()
                    .copied()
                    .filter(|d| *d >= op.invoke_ns)
                    .min();
            }
        }
    }

    /// The operations of each instance (instances are independent objects,
    /// so each is checked alone).
    pub fn by_instance(&self) -> BTreeMap<&str, Vec<&Op>> {
        let mut out: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
        for op in &self.ops {
            out.entry(op.instance.as_str()).or_default().push(op);
        }
        out
    }

    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for op in &self.ops {
            let kind = match op.call {
                Call::Create => 0,
                Call::Apply { .. } => 1,
                Call::Get => 2,
            };
            let outcome = match op.outcome {
                Outcome::Ok(_) => 0,
                Outcome::Fail(_) => 1,
                Outcome::Unknown => 2,
            };
            counts.by_kind_outcome[kind][outcome] += 1;
        }
        counts
    }
}

/// Operations by kind (CREATE, APPLY, GET) and outcome (ok, fail, unknown).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub by_kind_outcome: [[usize; 3]; 3],
}

impl Counts {
    pub fn total(&self) -> usize {
        self.by_kind_outcome.iter().flatten().sum()
    }

    pub fn unknown(&self) -> usize {
        self.by_kind_outcome.iter().map(|row| row[2]).sum()
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ops", self.total())?;
        for (name, [ok, fail, unknown]) in
            ["CREATE", "APPLY", "GET"].iter().zip(self.by_kind_outcome)
        {
            write!(f, "; {name} ok {ok} fail {fail} unknown {unknown}")?;
        }
        Ok(())
    }
}
