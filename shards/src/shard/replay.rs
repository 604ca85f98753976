//! Rebuilding a shard's state from its log at start-up: each recovered
//! record is applied as the operation that wrote it left things, without
//! re-checking transitions or guards (they were checked when it was written).

use std::sync::Arc;

use serde_json::Value;

use super::state::ShardState;
use crate::instance::{CachedApply, Creation, Instance};
use crate::instance_ctx::Ctx;
use crate::machine::definition::parse_definition;
use hashbrown::HashMap;

use super::committed_ids::CommittedIds;

use super::events::WatchEvent;
use crate::wal::entry::{self, CreateInstanceEntry, DeleteInstanceEntry, Entry, PutMachineEntry};
use crate::wal::record::{decode_record, RecordHeader, RecordKind};

/// What replay counted, for the start-up log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReplayCounts {
    pub records: u64,
    pub machines: u64,
    pub creates: u64,
    pub applies: u64,
    pub deletes: u64,
    pub batches: u64,
}

/// Replay bookkeeping for cross-shard batches: parts prepared but not yet
/// decided in this log, and the batches this log records as committed that
/// this shard decided (those records are the decisions; `committed_ids.rs`
/// says how many are kept). A commit whose decider is not known here (its
/// `Prepare` was not replayed) is kept too: keeping more is always safe.
#[derive(Debug, Default)]
pub struct TxnLog {
    /// txid → (decider shard, inner records).
    pub in_doubt: HashMap<u64, (u32, Vec<u8>)>,
    pub committed: CommittedIds,
}

/// Whether replay queues watch events for the transitions it applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    /// Recovery: what the log holds was published before the restart.
    No,
    /// A group member applying committed entries another member wrote.
    Events,
}

/// A batch part in doubt as a snapshot holds it: (txid, decider shard,
/// inner records).
pub type InDoubtPart = (u64, u32, Vec<u8>);

impl TxnLog {
    /// A copy for a snapshot: the parts in doubt sorted by txid, and the
    /// committed batch ids in the order they were committed with their
    /// horizon (equal logs give equal bytes).
    pub fn sorted_copy(&self) -> (Vec<InDoubtPart>, (Vec<u64>, u64)) {
        let mut in_doubt: Vec<InDoubtPart> = self
            .in_doubt
            .iter()
            .map(|(txid, (decider, records))| (*txid, *decider, records.clone()))
            .collect();
        in_doubt.sort_by_key(|(txid, _, _)| *txid);
        (in_doubt, self.committed.copy())
    }

    /// The part of `txid` was decided (its `Commit` or `Abort` is applied,
    /// `decider` the shard its `Prepare` named, if this log holds one):
    /// keep the id of a commit this shard (`shard`) decided.
    pub fn settled(&mut self, txid: u64, commit: bool, decider: Option<u32>, shard: usize) {
        if commit && decider.is_none_or(|d| d as usize == shard) {
            self.committed.insert(txid);
        }
    }
}

impl ShardState {
    /// Replay one record of any kind.
    pub fn replay_any(
        &mut self,
        header: &RecordHeader,
        payload: &[u8],
        counts: &mut ReplayCounts,
        txns: &mut TxnLog,
    ) -> Result<(), String> {
        self.replay_any_as(header, payload, counts, txns, Publish::No)
    }

    /// Replay one record of any kind, queueing the watch events of the
    /// transitions it applies when `publish` asks (a group member applying
    /// committed entries: each entry is decoded once for both).
    pub fn replay_any_as(
        &mut self,
        header: &RecordHeader,
        payload: &[u8],
        counts: &mut ReplayCounts,
        txns: &mut TxnLog,
        publish: Publish,
    ) -> Result<(), String> {
        match header.kind {
            RecordKind::Batch => {
                counts.batches += 1;
                self.replay_inner(payload, counts, publish)
            }
            RecordKind::Prepare => {
                let (txid, decider, inner) = entry::read_prepare(payload)?;
                txns.in_doubt.insert(txid, (decider, inner.to_vec()));
                Ok(())
            }
            RecordKind::Commit => {
                let txid = entry::read_txid(payload)?;
                let part = txns.in_doubt.remove(&txid);
                txns.settled(txid, true, part.as_ref().map(|p| p.0), self.shard_id);
                if let Some((_, inner)) = part {
                    counts.batches += 1;
                    self.replay_inner(&inner, counts, publish)?;
                }
                Ok(())
            }
            RecordKind::Abort => {
                txns.in_doubt.remove(&entry::read_txid(payload)?);
                Ok(())
            }
            RecordKind::Flush => {
                self.flush();
                Ok(())
            }
            _ => self.replay_record(header, payload, counts, publish),
        }
    }

    /// Replay the inner records of a Batch or committed Prepare.
    pub fn replay_inner(
        &mut self,
        inner: &[u8],
        counts: &mut ReplayCounts,
        publish: Publish,
    ) -> Result<(), String> {
        let mut pos = 0;
        while pos < inner.len() {
            let (h, p) = decode_record(&inner[pos..])
                .map_err(|d| format!("damaged record inside a batch: {d:?}"))?;
            self.replay_record(&h, p, counts, publish)?;
            pos += h.total_len();
        }
        Ok(())
    }

    pub fn replay_record(
        &mut self,
        header: &RecordHeader,
        payload: &[u8],
        counts: &mut ReplayCounts,
        publish: Publish,
    ) -> Result<(), String> {
        if header.kind.is_raft() {
            return Err(header.kind.standalone_refusal());
        }
        let entry = Entry::decode(payload)?;
        counts.records += 1;
        let at = header.time_ms;
        let offset = header.offset;
        match entry {
            Entry::PutMachine(PutMachineEntry {
                machine,
                version,
                definition,
                ..
            }) => {
                let def = parse_definition(&machine, version, &definition)
                    .map_err(|e| format!("machine {machine} v{version}: {}", e.message))?;
                if self.machines.get(&machine, version).is_none() {
                    self.machines.insert(Arc::new(def));
                    counts.machines += 1;
                }
            }
            Entry::CreateInstance(CreateInstanceEntry {
                instance_id,
                machine,
                version,
                initial_state,
                initial_ctx,
                idempotency_key,
            }) => {
                let def = self
                    .machines
                    .get(&machine, version)
                    .cloned()
                    .ok_or_else(|| {
                        format!(
                            "create of {instance_id} names unknown machine {machine} v{version}"
                        )
                    })?;
                let creation = idempotency_key.map(|key| {
                    Box::new(Creation {
                        idempotency_key: key,
                        initial_state: initial_state.clone(),
                        wal_offset: offset,
                    })
                });
                // One lookup: what the insert replaced tells whether the
                // id was active (a recreate after a delete replaces it).
                let replaced = self.instances.insert(
                    instance_id,
                    Instance {
                        state: def.interned_state(&initial_state),
                        machine: def,
                        ctx: Ctx::from_canonical_text(initial_ctx.into_bytes()),
                        last_event_id: None,
                        last_wal_offset: offset,
                        created_at_ms: at,
                        updated_at_ms: at,
                        deleted_at_offset: None,
                        creation,
                        applied_keys: None,
                    },
                );
                if !replaced.is_some_and(|i| i.is_active()) {
                    self.active_instances += 1;
                }
                counts.creates += 1;
            }
            Entry::ApplyEvent(mut apply) => {
                let inst = self
                    .instances
                    .get_mut(&apply.instance_id)
                    .ok_or_else(|| format!("apply to unknown instance {}", apply.instance_id))?;
                if let Some(key) = apply.idempotency_key.take() {
                    inst.remember_apply(
                        &key,
                        CachedApply {
                            from_state: apply.from_state.clone(),
                            to_state: apply.to_state.clone(),
                            ctx_json: apply.ctx.bytes().to_vec(),
                            wal_offset: offset,
                        },
                    );
                }
                inst.state = inst.machine.interned_state(&apply.to_state);
                // Kept as the entry's text: parsed only if this member
                // later needs the tree (`instance_ctx`).
                inst.ctx = Ctx::from_canonical_text(apply.ctx.bytes().to_vec());
                inst.last_event_id = apply.event_id.take();
                inst.last_wal_offset = offset;
                inst.updated_at_ms = at;
                counts.applies += 1;
                if publish == Publish::Events {
                    self.events
                        .push(Arc::new(WatchEvent::from_apply(offset, apply)));
                }
            }
            Entry::DeleteInstance(DeleteInstanceEntry { instance_id, .. }) => {
                let inst = self
                    .instances
                    .get_mut(&instance_id)
                    .ok_or_else(|| format!("delete of unknown instance {instance_id}"))?;
                if inst.deleted_at_offset.is_none() {
                    inst.deleted_at_offset = Some(offset);
                    inst.last_wal_offset = offset;
                    inst.updated_at_ms = at;
                    inst.ctx = Value::Null.into();
                    inst.applied_keys = None;
                    self.active_instances -= 1;
                }
                counts.deletes += 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::entry::{
        write_apply_event, write_create_instance, write_prepare, write_put_machine, ApplyFields,
        CreateFields,
    };
    use crate::wal::record::{append_record, RecordStamp};
    use serde_json::json;

    fn replay(state: &mut ShardState, txns: &mut TxnLog, kind: RecordKind, payload: &[u8]) {
        let mut buf = Vec::new();
        append_record(&mut buf, &RecordStamp::new(kind, 64, 1), 0, |out| {
            out.extend_from_slice(payload)
        })
        .unwrap();
        let (header, payload) = decode_record(&buf).unwrap();
        state
            .replay_any(&header, payload, &mut ReplayCounts::default(), txns)
            .unwrap();
    }

    #[test]
    fn a_replayed_apply_publishes_and_caches_the_json_its_entry_holds() {
        let mut state = ShardState::new(0, false);
        let mut txns = TxnLog::default();
        let mut entry = Vec::new();
        let definition = json!({"states": ["a", "b"], "initial": "a",
            "transitions": [{"from": "a", "event": "go", "to": "b"}]});
        write_put_machine(&mut entry, "m", 1, "h", &definition);
        replay(&mut state, &mut txns, RecordKind::PutMachine, &entry);
        entry.clear();
        let create = CreateFields {
            instance_id: "i",
            machine: "m",
            version: 1,
            initial_state: "a",
            initial_ctx_json: b"{}",
            idempotency_key: None,
        };
        write_create_instance(&mut entry, &create);
        replay(&mut state, &mut txns, RecordKind::CreateInstance, &entry);

        let ctx_json = br#"{"n":1.5,"s":"\u00e9\"","z":[null,{}]}"#;
        for (payload_json, key) in [(&br#"{"b":2,"a":1}"#[..], Some("k")), (b"null", None)] {
            entry.clear();
            write_apply_event(
                &mut entry,
                &ApplyFields {
                    instance_id: "i",
                    machine: "m",
                    version: 1,
                    event: "go",
                    from_state: "a",
                    to_state: "b",
                    payload_json,
                    ctx_json,
                    event_id: Some("e"),
                    idempotency_key: key,
                },
            );
            let mut buf = Vec::new();
            let stamp = RecordStamp::new(RecordKind::ApplyEvent, 9, 1);
            append_record(&mut buf, &stamp, 0, |out| out.extend_from_slice(&entry)).unwrap();
            let (header, payload) = decode_record(&buf).unwrap();
            state
                .replay_any_as(
                    &header,
                    payload,
                    &mut ReplayCounts::default(),
                    &mut txns,
                    Publish::Events,
                )
                .unwrap();
            // The event carries the entry's bytes as they are; so does
            // the instance, its context parsed only when first needed
            // (`instance_ctx`).
            let event = state.events.pop().unwrap();
            assert_eq!(event.payload_json, payload_json);
            assert_eq!(event.ctx_json, ctx_json);
            assert_eq!(
                (
                    event.offset,
                    event.to_state.as_str(),
                    event.machine.as_str()
                ),
                (9, "b", "m")
            );
            let inst = state.instances.get("i").unwrap();
            assert_eq!(inst.ctx.as_text(), Some(&ctx_json[..]));
            assert_eq!(inst.ctx, json!({"n": 1.5, "s": "é\"", "z": [null, {}]}));
            assert_eq!(
                (inst.state.as_str(), inst.last_event_id.as_deref()),
                ("b", Some("e"))
            );
            if let Some(key) = key {
                assert_eq!(inst.cached_apply(key).unwrap().ctx_json, ctx_json);
            }
        }
        assert!(state.events.is_empty());
    }

    #[test]
    fn a_shard_keeps_the_ids_of_the_commits_it_decided_and_of_those_it_cannot_place() {
        let mut state = ShardState::new(1, false);
        let mut txns = TxnLog::default();
        for (txid, decider) in [(5u64, 1u32), (6, 0)] {
            let mut prepare = Vec::new();
            write_prepare(&mut prepare, txid, decider, &[]);
            replay(&mut state, &mut txns, RecordKind::Prepare, &prepare);
        }
        for txid in [5u64, 6, 7] {
            replay(
                &mut state,
                &mut txns,
                RecordKind::Commit,
                &txid.to_le_bytes(),
            );
        }
        // 5: decided here. 6: shard 0 decided it, and answers for it. 7: its
        // Prepare is not in what was replayed (before a snapshot): kept.
        assert!(txns.committed.contains(5));
        assert!(!txns.committed.contains(6));
        assert!(txns.committed.contains(7));
        assert!(txns.in_doubt.is_empty());
    }
}
