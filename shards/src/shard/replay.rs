//! Rebuilding a shard's state from its log at start-up: each recovered
//! record is applied as the operation that wrote it left things, without
//! re-checking transitions or guards (they were checked when it was written).

use std::sync::Arc;

use serde_json::Value;

use super::state::ShardState;
use crate::instance::{CachedApply, Creation, Instance};
use crate::json::canonical;
use crate::machine::definition::parse_definition;
use crate::wal::entry::Entry;
use crate::wal::record::RecordHeader;

/// What replay counted, for the start-up log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReplayCounts {
    pub records: u64,
    pub machines: u64,
    pub creates: u64,
    pub applies: u64,
    pub deletes: u64,
}

impl ShardState {
    pub fn replay_record(
        &mut self,
        header: &RecordHeader,
        payload: &[u8],
        counts: &mut ReplayCounts,
    ) -> Result<(), String> {
        let entry = Entry::decode(payload)?;
        counts.records += 1;
        let at = header.time_ms;
        let offset = header.offset;
        match entry {
            Entry::PutMachine {
                machine,
                version,
                definition,
                ..
            } => {
                let def = parse_definition(&machine, version, &definition)
                    .map_err(|e| format!("machine {machine} v{version}: {}", e.message))?;
                if self.machines.get(&machine, version).is_none() {
                    self.machines.insert(Arc::new(def));
                    counts.machines += 1;
                }
            }
            Entry::CreateInstance {
                instance_id,
                machine,
                version,
                initial_state,
                initial_ctx,
                idempotency_key,
            } => {
                let def = self
                    .machines
                    .get(&machine, version)
                    .cloned()
                    .ok_or_else(|| {
                        format!(
                            "create of {instance_id} names unknown machine {machine} v{version}"
                        )
                    })?;
                let was_active = self
                    .instances
                    .get(&instance_id)
                    .is_some_and(|i| i.is_active());
                let creation = idempotency_key.map(|key| {
                    Box::new(Creation {
                        idempotency_key: key,
                        initial_state: initial_state.clone(),
                        wal_offset: offset,
                    })
                });
                self.instances.insert(
                    instance_id,
                    Instance {
                        machine: def,
                        state: initial_state,
                        ctx: initial_ctx,
                        last_event_id: None,
                        last_wal_offset: offset,
                        created_at_ms: at,
                        updated_at_ms: at,
                        deleted_at_offset: None,
                        creation,
                        applied_keys: None,
                    },
                );
                if !was_active {
                    self.active_instances += 1;
                }
                counts.creates += 1;
            }
            Entry::ApplyEvent {
                instance_id,
                from_state,
                to_state,
                ctx,
                event_id,
                idempotency_key,
                ..
            } => {
                let inst = self
                    .instances
                    .get_mut(&instance_id)
                    .ok_or_else(|| format!("apply to unknown instance {instance_id}"))?;
                if let Some(key) = idempotency_key {
                    let mut ctx_json = Vec::new();
                    canonical::write_value(&mut ctx_json, &ctx);
                    inst.remember_apply(
                        &key,
                        CachedApply {
                            from_state,
                            to_state: to_state.clone(),
                            ctx_json,
                            wal_offset: offset,
                        },
                    );
                }
                inst.state = to_state;
                inst.ctx = ctx;
                inst.last_event_id = event_id;
                inst.last_wal_offset = offset;
                inst.updated_at_ms = at;
                counts.applies += 1;
            }
            Entry::DeleteInstance { instance_id, .. } => {
                let inst = self
                    .instances
                    .get_mut(&instance_id)
                    .ok_or_else(|| format!("delete of unknown instance {instance_id}"))?;
                if inst.deleted_at_offset.is_none() {
                    inst.deleted_at_offset = Some(offset);
                    inst.last_wal_offset = offset;
                    inst.updated_at_ms = at;
                    inst.ctx = Value::Null;
                    inst.applied_keys = None;
                    self.active_instances -= 1;
                }
                counts.deletes += 1;
            }
        }
        Ok(())
    }
}
