//! Simulated clients: random requests against the shards' mailboxes — the
//! same messages the server's connections and batch coordinator send —
//! each answer checked against the model as it arrives.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use serde_json::{json, Value};

use super::model::{BatchOutcome, Effect, Model, Outcome, Read, Write};
use super::rng::Rng;
use crate::coordinator::{run_atomic, BatchFailure};
use crate::error::ErrorCode;
use crate::machine::definition::{parse_definition, MachineDef};
use crate::shard::{
    shard_for_instance, ApplyEvent, Command, CreateInstance, DeleteInstance, ReplyTo, ShardMsg,
};

pub const MACHINE: &str = "sim";

/// The machine every instance runs: `next` cycles a → b → c → a; `jump`
/// goes a → c when the counter reached 3.
pub fn machine_definition() -> Value {
    json!({"states": ["a", "b", "c"], "initial": "a", "transitions": [
        {"from": "a", "event": "next", "to": "b"},
        {"from": "b", "event": "next", "to": "c"},
        {"from": "c", "event": "next", "to": "a"},
        {"from": "a", "event": "jump", "to": "c", "guard": "ctx.n >= 3"}
    ]})
}

/// What the clients of one incarnation share.
pub struct Clients {
    pub model: Rc<RefCell<Model>>,
    pub mailboxes: Vec<flume::Sender<ShardMsg>>,
    /// Everything that contradicted the model.
    pub failures: Rc<RefCell<Vec<String>>>,
    /// Requests answered, for the report.
    pub answered: Rc<RefCell<u64>>,
    pub next_instance: Rc<RefCell<u64>>,
    /// What the clients did, for a failure's report.
    pub trace: Rc<RefCell<Vec<String>>>,
}

impl Clients {
    /// Send a create or delete; an answer is acknowledged in the model.
    async fn write(&self, id: &str, cmd: Command) {
        match self.exec(id, cmd).await {
            None => {}
            Some(Ok(v)) => {
                let offset = v["wal_offset"].as_u64().unwrap_or(0);
                if let Err(e) = self.model.borrow_mut().ack(id, offset) {
                    self.fail(e);
                }
            }
            Some(Err((code, msg))) => self.refused(id, code, msg, &[]),
        }
    }

    fn fail(&self, msg: String) {
        self.failures.borrow_mut().push(msg);
    }

    fn shard_of(&self, id: &str) -> usize {
        shard_for_instance(id, self.mailboxes.len())
    }

    pub fn note(&self, what: String) {
        let mut t = self.trace.borrow_mut();
        if t.len() > 4_000 {
            t.drain(..2_000);
        }
        t.push(what);
    }

    async fn exec(&self, id: &str, cmd: Command) -> Option<Result<Value, (ErrorCode, String)>> {
        let what = describe(&cmd);
        self.note(format!("-> {id} {what}"));
        let answer = self.exec_quiet(id, cmd).await;
        match &answer {
            Some(Ok(v)) => self.note(format!("<- {id} {what}: {v}")),
            Some(Err((code, msg))) => self.note(format!("<- {id} {what}: {code:?} {msg}")),
            None => {}
        }
        answer
    }

    async fn exec_quiet(
        &self,
        id: &str,
        cmd: Command,
    ) -> Option<Result<Value, (ErrorCode, String)>> {
        let (tx, rx) = flume::bounded(1);
        let mailbox = &self.mailboxes[self.shard_of(id)];
        mailbox
            .send(ShardMsg::Exec {
                cmd,
                reply: ReplyTo::internal(tx, 0),
            })
            .ok()?;
        let reply = rx.recv_async().await.ok()?;
        *self.answered.borrow_mut() += 1;
        Some(match reply.body {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(v) => Ok(v),
                Err(e) => Err((ErrorCode::InternalError, format!("unparsable result: {e}"))),
            },
            Err(e) => Err((e.code, e.message)),
        })
    }

    /// Install the machine on every shard (PUT_MACHINE's per-shard step).
    pub async fn put_machine(&self) -> bool {
        let def: Arc<MachineDef> = match parse_definition(MACHINE, 1, &machine_definition()) {
            Ok(d) => Arc::new(d),
            Err(e) => {
                self.fail(format!(
                    "the simulation's machine is invalid: {}",
                    e.message
                ));
                return false;
            }
        };
        let raw = Arc::new(def.normalized_value());
        for mailbox in &self.mailboxes {
            let (tx, rx) = flume::bounded(1);
            let msg = ShardMsg::InstallMachine {
                def: def.clone(),
                raw_definition: raw.clone(),
                done: tx,
            };
            if mailbox.send(msg).is_err() {
                return false;
            }
            match rx.recv_async().await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) if e.code == ErrorCode::WalIoError => return false,
                Ok(Err(e)) => {
                    self.fail(format!("installing the machine: {}", e.message));
                    return false;
                }
                Err(_) => return false,
            }
        }
        true
    }

    /// An instance nobody is writing, that exists (or any, for reads).
    fn pick(&self, rng: &mut Rng, writable: bool) -> Option<String> {
        let model = self.model.borrow();
        let ids: Vec<&String> = model
            .instances
            .iter()
            .filter(|(_, i)| {
                !writable
                    || (!i.busy
                        && matches!(i.known().map(|w| &w.effect), Some(Effect::Exists { .. })))
            })
            .map(|(id, _)| id)
            .collect();
        (!ids.is_empty()).then(|| ids[rng.index(ids.len())].clone())
    }

    pub async fn create(&self, rng: &mut Rng) {
        let id = {
            let mut n = self.next_instance.borrow_mut();
            *n += 1;
            format!("i{}", *n)
        };
        let wid = self.model.borrow_mut().wid();
        let key = rng.chance(200).then(|| format!("c{wid}"));
        self.model.borrow_mut().issue(
            &id,
            Write {
                wid,
                effect: Effect::Exists {
                    state: "a".into(),
                    n: 0,
                },
                outcome: Outcome::Pending,
                batch: None,
                offset: None,
                is_apply: false,
            },
        );
        let cmd = Command::Create(CreateInstance {
            instance_id: id.clone(),
            machine: MACHINE.into(),
            version: 1,
            initial_ctx: json!({"w": wid, "n": 0}),
            idempotency_key: key,
        });
        self.write(&id, cmd).await;
    }

    /// A write answered with an error: expected (`expected`), or a clean
    /// refusal of a full or failing disk; anything else is a failure.
    fn refused(&self, id: &str, code: ErrorCode, msg: String, expected: &[ErrorCode]) {
        if !expected.contains(&code) && code != ErrorCode::WalIoError {
            self.fail(format!("{id}: unexpected {code:?}: {msg}"));
        }
        self.model.borrow_mut().refuse(id);
    }

    /// What `event` does to an instance in `state` with counter `n`.
    fn predict(event: &str, state: &str, n: u64) -> Result<String, ErrorCode> {
        match (event, state) {
            ("next", "a") => Ok("b".into()),
            ("next", "b") => Ok("c".into()),
            ("next", "c") => Ok("a".into()),
            ("jump", "a") if n >= 3 => Ok("c".into()),
            ("jump", "a") => Err(ErrorCode::GuardFailed),
            _ => Err(ErrorCode::InvalidTransition),
        }
    }

    pub async fn apply(&self, rng: &mut Rng) {
        let Some(id) = self.pick(rng, true) else {
            return self.create(rng).await;
        };
        let (state, n, last_offset) = {
            let model = self.model.borrow();
            let inst = &model.instances[&id];
            match inst.known() {
                Some(Write {
                    effect: Effect::Exists { state, n },
                    offset,
                    ..
                }) => (state.clone(), *n, *offset),
                _ => return,
            }
        };
        let event = if rng.chance(250) { "jump" } else { "next" };
        let wrong_state = rng.chance(40);
        let expected_state = match rng.below(5) {
            0 if wrong_state => Some("nope".to_string()),
            0 => Some(state.clone()),
            _ => None,
        };
        let expected_wal_offset = match (rng.below(6), last_offset) {
            (0, Some(o)) => Some(o),
            _ => None,
        };
        let predicted = if expected_state.as_deref() == Some("nope") {
            Err(ErrorCode::Conflict)
        } else {
            Self::predict(event, &state, n)
        };
        let wid = self.model.borrow_mut().wid();
        let key = rng.chance(200).then(|| format!("k{wid}"));
        let after = match &predicted {
            Ok(to) => Effect::Exists {
                state: to.clone(),
                n: n + 1,
            },
            Err(_) => Effect::Exists {
                state: state.clone(),
                n,
            },
        };
        self.model.borrow_mut().issue(
            &id,
            Write {
                wid,
                effect: after,
                outcome: Outcome::Pending,
                batch: None,
                offset: None,
                is_apply: true,
            },
        );
        let cmd = Command::Apply(ApplyEvent {
            instance_id: id.clone(),
            event: event.into(),
            payload: json!({"w": wid, "n": n + 1}),
            expected_state,
            expected_wal_offset,
            event_id: None,
            idempotency_key: key.clone(),
        });
        match (self.exec(&id, cmd).await, predicted) {
            (None, _) => {}
            (Some(Ok(v)), Ok(to)) => {
                if v["to_state"] != to.as_str() || v["applied"] != true {
                    self.fail(format!("{id}: apply {event} from {state} answered {v}"));
                }
                let offset = v["wal_offset"].as_u64().unwrap_or(0);
                if let Some(k) = key {
                    self.model
                        .borrow_mut()
                        .keyed
                        .insert((id.clone(), k), (offset, to));
                }
                if let Err(e) = self.model.borrow_mut().ack(&id, offset) {
                    self.fail(e);
                }
            }
            (Some(Ok(v)), Err(code)) => {
                self.fail(format!(
                    "{id}: apply {event} from {state} should fail with {code:?}, answered {v}"
                ));
                // It happened: keep the model honest about it.
                let offset = v["wal_offset"].as_u64().unwrap_or(0);
                let _ = self.model.borrow_mut().ack(&id, offset);
            }
            (Some(Err((code, msg))), predicted) => {
                let expected = predicted.err().into_iter().collect::<Vec<_>>();
                self.refused(&id, code, msg, &expected);
            }
        }
    }

    /// Apply again with the key of an acknowledged keyed apply: the first
    /// result comes back and nothing is written.
    pub async fn retry_keyed(&self, rng: &mut Rng) {
        let pick = {
            let model = self.model.borrow();
            let keys: Vec<_> = model
                .keyed
                .iter()
                .filter(|((id, _), _)| {
                    model.instances.get(id).is_some_and(|i| {
                        !i.busy && i.known().is_some_and(|w| w.effect != Effect::Deleted)
                    })
                })
                .collect();
            (!keys.is_empty()).then(|| {
                let ((id, key), v) = keys[rng.index(keys.len())];
                (id.clone(), key.clone(), v.clone())
            })
        };
        let Some((id, key, (offset, to))) = pick else {
            return;
        };
        let cmd = Command::Apply(ApplyEvent {
            instance_id: id.clone(),
            event: "next".into(),
            payload: json!({"w": 0, "n": 0}),
            expected_state: None,
            expected_wal_offset: None,
            event_id: None,
            idempotency_key: Some(key.clone()),
        });
        match self.exec(&id, cmd).await {
            None => {}
            Some(Ok(v))
                if v["applied"] != false
                    || v["wal_offset"] != offset
                    || v["to_state"] != to.as_str() =>
            {
                self.fail(format!(
                    "{id}: retry of key {key} should replay offset {offset} to {to}, answered {v}"
                ));
            }
            Some(Ok(_)) => {}
            Some(Err((code, msg))) => {
                self.fail(format!("{id}: retry of key {key} failed: {code:?} {msg}"));
            }
        }
    }

    pub async fn delete(&self, rng: &mut Rng) {
        let Some(id) = self.pick(rng, true) else {
            return;
        };
        let wid = self.model.borrow_mut().wid();
        self.model.borrow_mut().issue(
            &id,
            Write {
                wid,
                effect: Effect::Deleted,
                outcome: Outcome::Pending,
                batch: None,
                offset: None,
                is_apply: false,
            },
        );
        let cmd = Command::Delete(DeleteInstance {
            instance_id: id.clone(),
            idempotency_key: None,
        });
        self.write(&id, cmd).await;
    }

    pub async fn get(&self, rng: &mut Rng) {
        let Some(id) = self.pick(rng, false) else {
            return;
        };
        let cmd = Command::Get {
            instance_id: id.clone(),
        };
        let floor = self.model.borrow().floor(&id);
        let read = match self.exec(&id, cmd).await {
            None => return,
            Some(Ok(v)) => Read::from_get(&v),
            Some(Err((ErrorCode::InstanceNotFound, _))) => Read::NotFound,
            Some(Err((code, msg))) => return self.fail(format!("{id}: GET: {code:?} {msg}")),
        };
        if let Err(e) = self.model.borrow_mut().observe(&id, floor, &read) {
            self.fail(e);
        }
    }

    /// An atomic batch of `next` on two or three instances (often on
    /// different shards: a two-phase commit).
    pub async fn atomic_batch(&self, rng: &mut Rng) {
        let mut ids: Vec<String> = Vec::new();
        for _ in 0..2 + rng.below(2) {
            if let Some(id) = self.pick(rng, true) {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        if ids.len() < 2 {
            return;
        }
        let fail_one = rng.chance(150);
        let txid = self.model.borrow_mut().txid();
        let mut parts: BTreeMap<usize, Vec<(usize, Command)>> = BTreeMap::new();
        for (i, id) in ids.iter().enumerate() {
            let (state, n) = match self.model.borrow().instances[id].known() {
                Some(Write {
                    effect: Effect::Exists { state, n },
                    ..
                }) => (state.clone(), *n),
                _ => return,
            };
            let wid = self.model.borrow_mut().wid();
            let event = if fail_one && i == ids.len() - 1 {
                "nope"
            } else {
                "next"
            };
            let to = Self::predict(event, &state, n).unwrap_or(state.clone());
            self.model.borrow_mut().issue(
                id,
                Write {
                    wid,
                    effect: Effect::Exists {
                        state: to,
                        n: n + 1,
                    },
                    outcome: Outcome::Pending,
                    batch: Some(txid),
                    offset: None,
                    is_apply: true,
                },
            );
            parts.entry(self.shard_of(id)).or_default().push((
                i,
                Command::Apply(ApplyEvent {
                    instance_id: id.clone(),
                    event: event.into(),
                    payload: json!({"w": wid, "n": n + 1}),
                    expected_state: None,
                    expected_wal_offset: None,
                    event_id: None,
                    idempotency_key: None,
                }),
            ));
        }
        self.model
            .borrow_mut()
            .batches
            .insert(txid, BatchOutcome::Pending);
        self.note(format!("-> batch {txid} on {ids:?}"));
        let outcome = run_atomic(&self.mailboxes, parts, txid).await;
        self.note(format!(
            "<- batch {txid}: {}",
            if outcome.is_ok() {
                "committed"
            } else {
                "failed"
            }
        ));
        *self.answered.borrow_mut() += 1;
        let mut model = self.model.borrow_mut();
        match outcome {
            Ok(results) => {
                if fail_one {
                    self.fail(format!("batch {txid} with an invalid event committed"));
                }
                model.batches.insert(txid, BatchOutcome::Committed);
                for (i, bytes) in results {
                    let offset = serde_json::from_slice::<Value>(&bytes)
                        .ok()
                        .and_then(|v| v["wal_offset"].as_u64())
                        .unwrap_or(0);
                    if let Err(e) = model.ack(&ids[i], offset) {
                        self.fail(e);
                    }
                }
            }
            Err(BatchFailure::Op(_, e)) => {
                if !fail_one && e.code != ErrorCode::WalIoError {
                    self.fail(format!("batch {txid} failed: {}", e.message));
                }
                model.batches.insert(txid, BatchOutcome::Failed);
                for id in &ids {
                    model.refuse(id);
                }
            }
            // A shard went away under it: the server is going down.
            Err(BatchFailure::Internal(_)) => {}
            // Only a replicated shard refuses a part as a whole.
            Err(BatchFailure::Refused(e)) => {
                self.fail(format!(
                    "batch {txid} refused by a standalone shard: {}",
                    e.message
                ));
            }
        }
    }

    /// COMPACT on one shard: a snapshot, then what it covers leaves the log.
    pub async fn compact(&self, rng: &mut Rng) {
        let shard = rng.index(self.mailboxes.len());
        let (tx, rx) = flume::bounded(1);
        let msg = ShardMsg::Compact {
            force_snapshot: rng.chance(500),
            done: tx,
        };
        if self.mailboxes[shard].send(msg).is_ok() {
            let _ = rx.recv_async().await;
        }
    }
}

fn describe(cmd: &Command) -> String {
    match cmd {
        Command::Create(c) => format!("CREATE ctx={}", c.initial_ctx),
        Command::Apply(c) => format!(
            "APPLY {} payload={} expect={:?}/{:?} key={:?}",
            c.event, c.payload, c.expected_state, c.expected_wal_offset, c.idempotency_key
        ),
        Command::Delete(_) => "DELETE".into(),
        Command::Get { .. } => "GET".into(),
    }
}

/// One client: `ops` random requests, one at a time.
pub async fn client(clients: Rc<Clients>, mut rng: Rng, ops: u64) {
    for _ in 0..ops {
        match rng.below(100) {
            0..=14 => clients.create(&mut rng).await,
            15..=54 => clients.apply(&mut rng).await,
            55..=69 => clients.get(&mut rng).await,
            70..=74 => clients.delete(&mut rng).await,
            75..=86 => clients.atomic_batch(&mut rng).await,
            87..=94 => clients.retry_keyed(&mut rng).await,
            _ => clients.compact(&mut rng).await,
        }
    }
}
