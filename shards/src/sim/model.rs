//! The reference model: what the simulated clients were told, and what a
//! recovered server must therefore hold.
//!
//! Every instance is written by one client at a time, so its writes form a
//! chain in the order they were issued. Each write stamps its id into the
//! instance's context (`ctx.w`), so a read tells exactly which write of the
//! chain the instance is at. A write is `Acked` (its success was answered),
//! `Unknown` (sent, no answer: the server went down) or removed from the
//! chain when it was answered with an error. What a client *observed* — an
//! acknowledgement or a read — must never be undone by a crash: that is
//! "nothing acknowledged is lost" and "nothing visible before it is
//! durable" in one rule. Writes of one atomic batch carry the batch's id:
//! after a crash they are all in or all out.

use std::collections::BTreeMap;

use serde_json::Value;

/// A write's effect on its instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The instance now exists in `state` with counter `n`.
    Exists {
        state: String,
        n: u64,
    },
    Deleted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pending,
    Acked,
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Write {
    /// Stamped into `ctx.w`; unique in the run.
    pub wid: u64,
    pub effect: Effect,
    pub outcome: Outcome,
    /// The atomic batch it belongs to.
    pub batch: Option<u64>,
    /// Its offset, once known.
    pub offset: Option<u64>,
    /// It is an APPLY_EVENT (it has a watch event).
    pub is_apply: bool,
}

#[derive(Debug, Clone, Default)]
pub struct InstanceModel {
    pub chain: Vec<Write>,
    /// Length of the chain prefix some client observed (ack or read).
    pub observed: usize,
    /// A write is outstanding: no other client may write now.
    pub busy: bool,
}

impl InstanceModel {
    /// The effect of the last write known to be in place (acked or observed).
    pub fn known(&self) -> Option<&Write> {
        self.observed.checked_sub(1).map(|i| &self.chain[i])
    }

    /// Index (in the chain) of the write that stamped `wid`.
    pub fn position(&self, wid: u64) -> Option<usize> {
        self.chain.iter().position(|w| w.wid == wid)
    }
}

/// What a read of an instance found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    NotFound,
    Found {
        state: String,
        wid: u64,
        n: u64,
        offset: u64,
    },
}

impl Read {
    /// A GET_INSTANCE result.
    pub fn from_get(result: &Value) -> Read {
        Read::Found {
            state: result["state"].as_str().unwrap_or_default().to_string(),
            wid: result["ctx"]["w"].as_u64().unwrap_or(u64::MAX),
            n: result["ctx"]["n"].as_u64().unwrap_or(u64::MAX),
            offset: result["last_wal_offset"].as_u64().unwrap_or(0),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    Pending,
    Committed,
    Failed,
    Unknown,
}

#[derive(Default)]
pub struct Model {
    pub instances: BTreeMap<String, InstanceModel>,
    pub batches: BTreeMap<u64, BatchOutcome>,
    next_wid: u64,
    next_txid: u64,
    /// Acknowledged applies with an idempotency key: (instance, key) →
    /// (wal_offset, to_state).
    pub keyed: BTreeMap<(String, String), (u64, String)>,
}

impl Model {
    pub fn wid(&mut self) -> u64 {
        self.next_wid += 1;
        self.next_wid
    }

    pub fn txid(&mut self) -> u64 {
        self.next_txid += 1;
        self.next_txid
    }

    /// Record a write about to be sent.
    pub fn issue(&mut self, id: &str, write: Write) {
        let inst = self.instances.entry(id.to_string()).or_default();
        debug_assert!(!inst.busy, "{id}: two writes outstanding");
        inst.busy = true;
        inst.chain.push(write);
    }

    /// The outstanding write of `id` (the last of its chain) succeeded.
    pub fn ack(&mut self, id: &str, offset: u64) -> Result<(), String> {
        let inst = self
            .instances
            .get_mut(id)
            .ok_or("ack of an unknown instance")?;
        let w = inst.chain.last_mut().ok_or("ack with no write")?;
        w.outcome = Outcome::Acked;
        w.offset = Some(offset);
        inst.busy = false;
        inst.observed = inst.chain.len();
        Ok(())
    }

    /// The outstanding write of `id` was answered with an error: it never
    /// happened.
    pub fn refuse(&mut self, id: &str) {
        if let Some(inst) = self.instances.get_mut(id) {
            inst.chain.pop();
            inst.busy = false;
            inst.observed = inst.observed.min(inst.chain.len());
        }
    }

    /// What was observed of `id` when a read of it is sent: the read must
    /// show at least that.
    pub fn floor(&self, id: &str) -> usize {
        self.instances.get(id).map_or(0, |i| i.observed)
    }

    /// A read of `id` sent when `floor` was observed found `read`. Checks it
    /// against the chain and records what was observed.
    pub fn observe(&mut self, id: &str, floor: usize, read: &Read) -> Result<(), String> {
        let Some(inst) = self.instances.get_mut(id) else {
            return match read {
                Read::NotFound => Ok(()),
                found => Err(format!("{id}: read {found:?} of an instance never created")),
            };
        };
        let at = locate(id, inst, read)?;
        if at < floor {
            return Err(format!(
                "{id}: read {read:?} is older than what was observed before it was sent \
                 (write {floor} of {:?})",
                inst.chain.iter().map(|w| w.wid).collect::<Vec<_>>()
            ));
        }
        inst.observed = inst.observed.max(at);
        Ok(())
    }

    /// After a crash: every write still pending is of unknown outcome.
    pub fn crashed(&mut self) {
        for inst in self.instances.values_mut() {
            for w in &mut inst.chain {
                if w.outcome == Outcome::Pending {
                    w.outcome = Outcome::Unknown;
                }
            }
            inst.busy = false;
        }
        for outcome in self.batches.values_mut() {
            if *outcome == BatchOutcome::Pending {
                *outcome = BatchOutcome::Unknown;
            }
        }
    }

    /// After a restart: the recovered `read` of every instance must keep
    /// what was observed; the chain is cut to what recovery kept.
    pub fn recovered(&mut self, id: &str, read: &Read) -> Result<(), String> {
        let Some(inst) = self.instances.get_mut(id) else {
            return Ok(());
        };
        let at = locate(id, inst, read)?;
        if at < inst.observed {
            return Err(format!(
                "{id}: LOST after recovery: it reads {read:?}, but a client had seen write {} \
                 (chain {:?})",
                inst.observed,
                inst.chain
                    .iter()
                    .map(|w| (w.wid, w.outcome))
                    .collect::<Vec<_>>()
            ));
        }
        if inst.chain[at..].iter().any(|w| w.outcome == Outcome::Acked) {
            return Err(format!(
                "{id}: an acknowledged write after {at} is not in place"
            ));
        }
        if let Read::Found { offset, .. } = read {
            if at > 0 && inst.chain[at - 1].offset.is_none() {
                inst.chain[at - 1].offset = Some(*offset);
            }
        }
        inst.chain.truncate(at);
        for w in &mut inst.chain {
            w.outcome = Outcome::Acked;
        }
        inst.observed = at;
        inst.busy = false;
        Ok(())
    }

    /// After a restart: every batch of unknown outcome was applied on all of
    /// its instances or on none. `applied(txid)` per instance comes from the
    /// recovered chains, so this runs after `recovered` for every instance
    /// and before the chains are cut... it is given the kept positions.
    pub fn check_batches(
        &mut self,
        before_cut: &BTreeMap<String, Vec<(u64, Option<u64>)>>,
    ) -> Result<(), String> {
        let mut seen: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
        for (id, writes) in before_cut {
            let kept = self.instances.get(id).map_or(0, |i| i.chain.len());
            for (pos, (_, batch)) in writes.iter().enumerate() {
                if let Some(b) = batch {
                    let e = seen.entry(*b).or_default();
                    if pos < kept {
                        e.0 += 1;
                    } else {
                        e.1 += 1;
                    }
                }
            }
        }
        let mut first_error = None;
        for (b, (applied, dropped)) in seen {
            let outcome = self.batches.get(&b).copied();
            if applied > 0 && dropped > 0 {
                first_error.get_or_insert(format!(
                    "atomic batch {b} is HALF applied after recovery: {applied} write(s) in, {dropped} out"
                ));
            } else if outcome == Some(BatchOutcome::Committed) && dropped > 0 {
                first_error
                    .get_or_insert(format!("acknowledged batch {b} lost {dropped} write(s)"));
            }
            self.batches.insert(
                b,
                if applied > 0 {
                    BatchOutcome::Committed
                } else {
                    BatchOutcome::Failed
                },
            );
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The (wid, batch) of every instance's chain, before recovery cuts it.
    pub fn chains(&self) -> BTreeMap<String, Vec<(u64, Option<u64>)>> {
        self.instances
            .iter()
            .map(|(id, i)| {
                (
                    id.clone(),
                    i.chain.iter().map(|w| (w.wid, w.batch)).collect(),
                )
            })
            .collect()
    }
}

/// The length of the chain prefix that `read` shows in place.
fn locate(id: &str, inst: &InstanceModel, read: &Read) -> Result<usize, String> {
    match read {
        Read::Found { state, wid, n, .. } => {
            let pos = inst.position(*wid).ok_or_else(|| {
                format!(
                    "{id}: reads write {wid}, which is not in its chain {:?}",
                    inst.chain.iter().map(|w| w.wid).collect::<Vec<_>>()
                )
            })?;
            let expected = Effect::Exists {
                state: state.clone(),
                n: *n,
            };
            if inst.chain[pos].effect != expected {
                return Err(format!(
                    "{id}: write {wid} should have left {:?}, the read shows {expected:?}",
                    inst.chain[pos].effect
                ));
            }
            Ok(pos + 1)
        }
        Read::NotFound => {
            // Not created yet, or deleted by the write of the chain that did.
            match inst.chain.iter().rposition(|w| w.effect == Effect::Deleted) {
                Some(pos) if pos + 1 >= inst.observed => Ok(pos + 1),
                _ => Ok(0),
            }
        }
    }
}
