//! CREATE_INSTANCE, APPLY_EVENT and DELETE_INSTANCE on the owner shard
//! (docs/PROTOCOL.md §4.5, §4.8, §7): checks in the spec's order, one staged WAL record
//! per change, and the result object as canonical JSON.

use std::sync::Arc;

use serde_json::Value;

use super::result::ResultWriter;
use super::state::{LogSink, ShardState};
use crate::error::{EngineError, EngineResult, ErrorCode};
use crate::instance::{merge_payload, CachedApply, Creation, Instance};
use crate::instance_ctx::Ctx;
use crate::json::canonical;
use crate::machine::definition::Selection;
use crate::shard::command::{ApplyEvent, Command, CreateInstance, DeleteInstance};
use crate::shard::events::WatchEvent;
use crate::wal::entry;
use crate::wal::record::RecordKind;

impl ShardState {
    pub fn create_instance(
        &mut self,
        cmd: CreateInstance,
        now_ms: u64,
        log: &mut dyn LogSink,
    ) -> EngineResult<Vec<u8>> {
        if let Some(existing) = self.instances.get(&cmd.instance_id) {
            let retried = existing.creation.as_deref().filter(|c| {
                cmd.idempotency_key
                    .as_deref()
                    .is_some_and(|key| c.idempotency_key == key)
            });
            if let Some(c) = retried {
                // A retry of the create that made this instance: the first result.
                let mut r = ResultWriter::new();
                r.bool("applied", false)
                    .str("instance_id", &cmd.instance_id)
                    .str("state", &c.initial_state)
                    .u64("wal_offset", c.wal_offset);
                return Ok(r.finish());
            }
            if existing.is_active() || !self.allow_instance_recreate {
                return Err(EngineError::core(
                    ErrorCode::InstanceExists,
                    format_args!("instance already exists: {}", cmd.instance_id),
                ));
            }
        }
        let machine = self
            .machines
            .get(&cmd.machine, cmd.version)
            .cloned()
            .ok_or_else(|| EngineError::machine_not_found(&cmd.machine, cmd.version))?;
        let ctx_json = canonical::to_vec(&cmd.initial_ctx);
        let fields = entry::CreateFields {
            instance_id: &cmd.instance_id,
            machine: &machine.machine,
            version: machine.version,
            initial_state: &machine.initial,
            initial_ctx_json: &ctx_json,
            idempotency_key: cmd.idempotency_key.as_deref(),
        };
        if lacks_room(log, || fields.payload_bytes_max()) {
            return Err(self.hand_back(Command::Create(cmd)));
        }
        let offset = log.append(RecordKind::CreateInstance, now_ms, &mut |out| {
            entry::write_create_instance(out, &fields)
        })?;
        let mut r = ResultWriter::new();
        r.str("instance_id", &cmd.instance_id)
            .str("state", &machine.initial)
            .u64("wal_offset", offset);
        let creation = cmd.idempotency_key.map(|key| {
            Box::new(Creation {
                idempotency_key: key,
                initial_state: machine.initial.clone(),
                wal_offset: offset,
            })
        });
        let instance = Instance {
            state: machine.interned_state(&machine.initial),
            machine,
            // Kept as its text, like every context at rest (`instance_ctx`).
            ctx: Ctx::from_canonical_text(ctx_json),
            last_event_id: None,
            last_wal_offset: offset,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            deleted_at_offset: None,
            creation,
            applied_keys: None,
        };
        self.instances.insert(cmd.instance_id, instance);
        self.active_instances += 1;
        Ok(r.finish())
    }

    pub fn apply_event(
        &mut self,
        cmd: ApplyEvent,
        now_ms: u64,
        log: &mut dyn LogSink,
    ) -> EngineResult<Vec<u8>> {
        let Some(inst) = self
            .instances
            .get_mut(&cmd.instance_id)
            .filter(|i| i.is_active())
        else {
            return Err(EngineError::instance_not_found(&cmd.instance_id));
        };
        if let Some(key) = cmd.idempotency_key.as_deref() {
            if let Some(cached) = inst.cached_apply(key) {
                return Ok(apply_result(
                    false,
                    &cached.ctx_json,
                    cmd.event_id.as_deref(),
                    &cached.from_state,
                    &cached.to_state,
                    cached.wal_offset,
                ));
            }
        }
        if let Some(expected) = cmd.expected_state.as_deref() {
            if expected != &*inst.state {
                return Err(EngineError::core(
                    ErrorCode::Conflict,
                    format_args!(
                        "state conflict: expected '{expected}', actual '{}'",
                        inst.state
                    ),
                ));
            }
        }
        if let Some(expected) = cmd.expected_wal_offset {
            if expected != inst.last_wal_offset {
                return Err(EngineError::core(
                    ErrorCode::Conflict,
                    format_args!(
                        "WAL offset conflict: expected {expected}, actual {}",
                        inst.last_wal_offset
                    ),
                ));
            }
        }
        let machine = inst.machine.clone();
        // At rest a context is its text (`instance_ctx`). A tree is built
        // only for a guard to read or a payload to merge into, and it is
        // this apply's own: the instance keeps its text until the write is
        // logged, so a failed write has nothing to undo.
        let merges = matches!(&cmd.payload, Value::Object(p) if !p.is_empty());
        let mut tree = if merges || machine.guarded(&inst.state, &cmd.event) {
            Some(inst.ctx.parsed()?)
        } else {
            None
        };
        // Without a tree no candidate has a guard: the context is not read.
        let read = tree.as_deref().unwrap_or(&Value::Null);
        let to_state = match machine.select(&inst.state, &cmd.event, read) {
            Selection::Fire(t) => t.to.as_str(),
            Selection::NoTransition => {
                return Err(EngineError::core(
                    ErrorCode::InvalidTransition,
                    format_args!(
                        "invalid transition: cannot apply '{}' in state '{}'",
                        cmd.event, inst.state
                    ),
                ))
            }
            Selection::GuardFailed(t) => {
                return Err(EngineError::core(
                    ErrorCode::GuardFailed,
                    format_args!(
                        "guard failed: guard failed for transition '{}' -> '{}' on event '{}'",
                        inst.state, t.to, cmd.event
                    ),
                ))
            }
        };
        let parsed = tree.is_some();
        let ctx_json = match tree.as_mut() {
            Some(ctx) => {
                if merges {
                    merge_payload(ctx.to_mut(), &cmd.payload);
                }
                canonical::to_vec(ctx)
            }
            None => {
                let mut json = Vec::new();
                inst.ctx.write_json(&mut json);
                json
            }
        };
        let payload_json = canonical::to_vec(&cmd.payload);
        let fields = entry::ApplyFields {
            instance_id: &cmd.instance_id,
            machine: &machine.machine,
            version: machine.version,
            event: &cmd.event,
            from_state: &inst.state,
            to_state,
            payload_json: &payload_json,
            ctx_json: &ctx_json,
            event_id: cmd.event_id.as_deref(),
            idempotency_key: cmd.idempotency_key.as_deref(),
        };
        if lacks_room(log, || fields.payload_bytes_max()) {
            return Err(self.hand_back(Command::Apply(cmd)));
        }
        let offset = log.append(RecordKind::ApplyEvent, now_ms, &mut |out| {
            entry::write_apply_event(out, &fields)
        })?;
        let from_state = std::mem::replace(&mut inst.state, inst.machine.interned_state(to_state));
        let result = apply_result(
            true,
            &ctx_json,
            cmd.event_id.as_deref(),
            &from_state,
            to_state,
            offset,
        );
        if let Some(key) = cmd.idempotency_key.as_deref() {
            let outcome = CachedApply {
                from_state: from_state.to_string(),
                to_state: to_state.to_owned(),
                ctx_json: ctx_json.clone(),
                wal_offset: offset,
            };
            inst.remember_apply(key, outcome);
        }
        if parsed {
            // At rest the context is its text again: the tree is dropped.
            inst.ctx = Ctx::from_canonical_text(ctx_json.clone());
        }
        inst.last_event_id = cmd.event_id;
        inst.last_wal_offset = offset;
        inst.updated_at_ms = now_ms;
        self.events.push(Arc::new(WatchEvent {
            offset,
            instance_id: cmd.instance_id,
            machine: machine.machine.clone(),
            version: machine.version,
            from_state: from_state.to_string(),
            to_state: to_state.to_owned(),
            event: cmd.event,
            payload_json,
            ctx_json,
            wire: Default::default(),
        }));
        Ok(result)
    }

    pub fn delete_instance(
        &mut self,
        cmd: DeleteInstance,
        now_ms: u64,
        log: &mut dyn LogSink,
    ) -> EngineResult<Vec<u8>> {
        let Some(inst) = self.instances.get_mut(&cmd.instance_id) else {
            return Err(EngineError::instance_not_found(&cmd.instance_id));
        };
        let offset = match inst.deleted_at_offset {
            // Naturally idempotent: the original delete's offset, nothing written.
            Some(offset) => offset,
            None => {
                let offset = log.append(RecordKind::DeleteInstance, now_ms, &mut |out| {
                    entry::write_delete_instance(
                        out,
                        &cmd.instance_id,
                        cmd.idempotency_key.as_deref(),
                    )
                })?;
                inst.deleted_at_offset = Some(offset);
                inst.last_wal_offset = offset;
                inst.updated_at_ms = now_ms;
                // Never visible again: free the context and cached outcomes.
                inst.ctx = Value::Null.into();
                inst.applied_keys = None;
                self.active_instances -= 1;
                offset
            }
        };
        let mut r = ResultWriter::new();
        r.bool("deleted", true)
            .str("instance_id", &cmd.instance_id)
            .u64("wal_offset", offset);
        Ok(r.finish())
    }
}

fn apply_result(
    applied: bool,
    ctx_json: &[u8],
    event_id: Option<&str>,
    from_state: &str,
    to_state: &str,
    offset: u64,
) -> Vec<u8> {
    let mut r = ResultWriter::with_capacity(96 + ctx_json.len());
    r.bool("applied", applied).raw("ctx", ctx_json);
    if let Some(id) = event_id {
        r.str("event_id", id);
    }
    r.str("from_state", from_state)
        .str("to_state", to_state)
        .u64("wal_offset", offset);
    r.finish()
}

/// Whether a record of at most `bound()` payload bytes has no room in the
/// log's turn (`LogSink::room_bytes`): the bound is worked out only when
/// the turn has a limit (a group member's, past its first message).
fn lacks_room(log: &dyn LogSink, bound: impl FnOnce() -> usize) -> bool {
    log.room_bytes().is_some_and(|room| bound() > room)
}

impl ShardState {
    /// Keep a write the turn had no room for, untouched, for the loop to
    /// take back (`not_run`); the error it returns is never a client's
    /// answer.
    fn hand_back(&mut self, cmd: Command) -> EngineError {
        self.not_run = Some(cmd);
        EngineError::internal("no room for this write in the turn's log entry")
    }
}
