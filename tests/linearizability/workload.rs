//! The clients: each thread issues random CREATE_INSTANCE, APPLY_EVENT and
//! GET_INSTANCE requests on a few shared instances, one at a time, and
//! records each in its `ClientLog` — ok, a definite failure, or unknown
//! when the connection breaks or times out (the server was killed). It
//! then reconnects to wherever the server runs now.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::thread;
use std::time::Duration;

use corestate_checker::{Call, ClientLog, Clock, Failure, Outcome, Reply};
use serde_json::{json, Value};

use crate::client::Client;

/// Pause between connection attempts while the server is down.
pub const RECONNECT_POLL: Duration = Duration::from_millis(20);
/// Pause after a retryable refusal (a cluster between leaders).
pub const RETRY_PAUSE: Duration = Duration::from_millis(25);

/// The machine every instance runs: a cycle (idle → busy → idle), a branch
/// out of busy (FINISH, FAIL, BOUNCE), a second cycle through failed, and
/// a side trip through paused.
pub const MACHINE: &str = "linjob";
pub const TRANSITIONS: &[(&str, &str, &str)] = &[
    ("idle", "START", "busy"),
    ("busy", "FINISH", "idle"),
    ("busy", "FAIL", "failed"),
    ("busy", "BOUNCE", "busy"),
    ("failed", "RETRY", "busy"),
    ("failed", "RESET", "idle"),
    ("idle", "PAUSE", "paused"),
    ("paused", "RESUME", "idle"),
];
pub const INITIAL: &str = "idle";
pub const STATES: &[&str] = &["idle", "busy", "failed", "paused"];

pub fn definition() -> Value {
    let transitions: Vec<Value> = TRANSITIONS
        .iter()
        .map(|(from, event, to)| json!({"from": from, "event": event, "to": to}))
        .collect();
    json!({"states": STATES, "initial": INITIAL, "transitions": transitions})
}

/// Where the server's nodes listen now (a restarted node's port
/// changes): one for a single server, one per node for a cluster. Each
/// client starts at a node of its own and moves to the next one when its
/// node stops answering.
pub struct Target {
    ports: Vec<AtomicU16>,
}

impl Target {
    pub fn new(ports: &[u16]) -> Target {
        Target {
            ports: ports.iter().map(|&p| AtomicU16::new(p)).collect(),
        }
    }

    /// Node `node` (counting from 0) listens on `port` now.
    pub fn set(&self, node: usize, port: u16) {
        self.ports[node].store(port, Ordering::SeqCst);
    }

    pub fn nodes(&self) -> usize {
        self.ports.len()
    }

    pub fn addr(&self, node: usize) -> SocketAddr {
        let port = self.ports[node % self.ports.len()].load(Ordering::SeqCst);
        SocketAddr::from(([127, 0, 0, 1], port))
    }
}

/// A connection to some node, trying them in turn from `*node` on (which
/// is left at the one that answered); `None` once `stop` is set.
pub fn connect(target: &Target, node: &mut usize, stop: &AtomicBool) -> Option<Client> {
    while !stop.load(Ordering::SeqCst) {
        for _ in 0..target.nodes() {
            if let Ok(client) = Client::connect(target.addr(*node)) {
                return Some(client);
            }
            *node = (*node + 1) % target.nodes();
        }
        thread::sleep(RECONNECT_POLL);
    }
    None
}

/// xorshift64*, seeded per client.
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

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// What one client did besides its history.
#[derive(Debug, Default)]
pub struct ClientStats {
    pub reconnects: usize,
    /// Retryable refusals (a cluster between leaders): left out of the
    /// history when the server says the request did not run
    /// (`details.outcome` "not_applied"), else recorded as unknown. The
    /// committed-log check catches a refusal that did run after all.
    pub retryable: usize,
    /// Error answers the model does not explain (recorded as unknown).
    pub unexpected: Vec<String>,
}

/// One client: random requests until `stop`.
pub fn run_client(
    client_no: usize,
    seed: u64,
    clock: Clock,
    instances: &[String],
    target: &Target,
    stop: &AtomicBool,
) -> (ClientLog, ClientStats) {
    let mut log = ClientLog::new(client_no, clock);
    let mut stats = ClientStats::default();
    let mut rng = Rng(seed ^ (client_no as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let events: Vec<&str> = TRANSITIONS.iter().map(|(_, e, _)| *e).collect();
    let mut node = client_no % target.nodes();
    let mut conn = connect(target, &mut node, stop);
    let mut writes_sent: u64 = 0;
    while let Some(client) = conn.as_mut() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let instance = rng.pick(instances).clone();
        let (call, op, mut params) = match rng.below(20) {
            0..=1 => (
                Call::Create,
                "CREATE_INSTANCE",
                json!({"machine": MACHINE, "version": 1, "instance_id": instance}),
            ),
            2..=7 => (Call::Get, "GET_INSTANCE", json!({"instance_id": instance})),
            roll => {
                let event = rng.pick(&events).to_string();
                let expected = (roll >= 16).then(|| rng.pick(STATES).to_string());
                let mut params = json!({"instance_id": instance, "event": event});
                if let Some(state) = &expected {
                    params["expected_state"] = json!(state);
                }
                (
                    Call::Apply {
                        event,
                        expected_state: expected,
                    },
                    "APPLY_EVENT",
                    params,
                )
            }
        };
        let mut pending = log.invoke(&instance, call.clone());
        if call != Call::Get {
            // Unique to this request: the log then says whether an
            // unanswered write took effect (`settle.rs` of the checker).
            writes_sent += 1;
            let key = format!("lin-{client_no}-{writes_sent}");
            params["idempotency_key"] = json!(key);
            pending = pending.with_key(key);
        }
        match client.call(op, params) {
            Ok(response) if response["error"]["retryable"] == true => {
                if response["error"]["details"]["outcome"] == "not_applied" {
                    // Refused before it ran: no effect, nothing learned.
                    drop(pending);
                } else {
                    log.unknown(pending);
                }
                stats.retryable += 1;
                // As a client should: wait a moment (an election takes a
                // few hundred ms), then try the next node, in case this
                // one is cut off.
                thread::sleep(RETRY_PAUSE);
                node = (node + 1) % target.nodes();
                conn = connect(target, &mut node, stop);
            }
            Ok(response) => {
                let outcome = outcome_of(&call, &response);
                if outcome == Outcome::Unknown {
                    stats
                        .unexpected
                        .push(format!("{op} {instance}: {response}"));
                }
                log.complete(pending, outcome);
            }
            Err(_) => {
                log.unknown(pending);
                stats.reconnects += 1;
                conn = connect(target, &mut node, stop);
            }
        }
    }
    (log, stats)
}

/// The `'…'`-quoted name after `marker` in an error message.
fn quoted_after(message: &str, marker: &str) -> Option<String> {
    let rest = &message[message.find(marker)? + marker.len()..];
    let rest = rest.strip_prefix('\'')?;
    Some(rest[..rest.find('\'')?].to_string())
}

/// The outcome a response envelope means; `Unknown` for an answer the
/// model does not explain.
pub fn outcome_of(call: &Call, response: &Value) -> Outcome {
    let result = &response["result"];
    let text = |key: &str| result[key].as_str().map(str::to_string);
    let offset = |key: &str| result[key].as_u64();
    if response["status"] == "ok" {
        let reply = match call {
            Call::Create => text("state")
                .zip(offset("wal_offset"))
                .map(|(state, wal_offset)| Reply::Created { state, wal_offset }),
            Call::Apply { .. } => text("from_state")
                .zip(text("to_state"))
                .zip(offset("wal_offset"))
                .map(|((from_state, to_state), wal_offset)| Reply::Applied {
                    from_state,
                    to_state,
                    wal_offset,
                }),
            Call::Get => {
                text("state")
                    .zip(offset("last_wal_offset"))
                    .map(|(state, last_wal_offset)| Reply::Got {
                        state,
                        last_wal_offset,
                    })
            }
        };
        return reply.map_or(Outcome::Unknown, Outcome::Ok);
    }
    let message = response["error"]["message"].as_str().unwrap_or_default();
    let failure = match response["error"]["code"].as_str().unwrap_or_default() {
        "INSTANCE_EXISTS" => Failure::InstanceExists,
        "INSTANCE_NOT_FOUND" => Failure::InstanceNotFound,
        // core error: state conflict: expected '{expected}', actual '{actual}'
        "CONFLICT" => Failure::Conflict {
            actual: quoted_after(message, "actual "),
        },
        // core error: invalid transition: cannot apply '{event}' in state '{state}'
        "INVALID_TRANSITION" => Failure::InvalidTransition {
            state: quoted_after(message, "in state "),
        },
        _ => return Outcome::Unknown,
    };
    Outcome::Fail(failure)
}
