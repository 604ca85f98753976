//! What one shard owns in memory: its copy of the machine registry and its
//! instances, plus the `LogSink` through which every change is logged.
//!
//! Operations (`ops_*.rs`) change this state and stage a WAL record in the
//! same step; the shard loop answers only after the record's group commit,
//! so nothing here is visible before it is durable.

use std::sync::Arc;

use hashbrown::HashMap;

use crate::error::{EngineError, EngineResult, ErrorCode};
use crate::instance::Instance;
use crate::instance_table::InstanceTable;
use crate::machine::definition::MachineDef;
use crate::shard::command::Command;
use crate::shard::events::WatchEvent;
use crate::wal::entry;
use crate::wal::record::RecordKind;
use crate::wal::WalWriter;

/// Where operations stage their WAL records. The shard's `WalWriter` in
/// production; a plain buffer in unit tests.
pub trait LogSink {
    /// Stage a record whose payload `write` produces; returns its offset.
    fn append(
        &mut self,
        kind: RecordKind,
        time_ms: u64,
        write: &mut dyn FnMut(&mut Vec<u8>),
    ) -> EngineResult<u64>;

    /// The payload bytes a record staged now may take, or `None` when any
    /// fits. Only a group member's turn has a limit (its entry), so a
    /// write works out its record's size bound only when there is one. A
    /// write whose bound is over leaves everything as it was and hands its
    /// command back (`ShardState::not_run`): it runs first in the next turn.
    fn room_bytes(&self) -> Option<usize> {
        None
    }
}

impl LogSink for WalWriter {
    fn append(
        &mut self,
        kind: RecordKind,
        time_ms: u64,
        write: &mut dyn FnMut(&mut Vec<u8>),
    ) -> EngineResult<u64> {
        WalWriter::append(self, kind, time_ms, |out| write(out))
    }

    fn room_bytes(&self) -> Option<usize> {
        WalWriter::room_bytes(self)
    }
}

/// The shard's machines: name → version → definition.
#[derive(Default)]
pub struct MachineRegistry {
    by_name: HashMap<String, HashMap<u32, Arc<MachineDef>>>,
    count: usize,
}

impl MachineRegistry {
    pub fn get(&self, name: &str, version: u32) -> Option<&Arc<MachineDef>> {
        self.by_name.get(name)?.get(&version)
    }

    pub fn insert(&mut self, def: Arc<MachineDef>) {
        let versions = self.by_name.entry(def.machine.clone()).or_default();
        if versions.insert(def.version, def).is_none() {
            self.count += 1;
        }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<MachineDef>> {
        self.by_name.values().flat_map(|v| v.values())
    }
}

pub struct ShardState {
    pub shard_id: usize,
    pub machines: MachineRegistry,
    pub instances: InstanceTable,
    pub allow_instance_recreate: bool,
    pub active_instances: u64,
    /// Events of applies staged in the current group, published to watchers
    /// once the group is durable.
    pub events: Vec<Arc<WatchEvent>>,
    /// A write the log had no room for in this turn (`LogSink::room_bytes`),
    /// handed back untouched to run first in the next.
    pub not_run: Option<Command>,
}

impl ShardState {
    pub fn new(shard_id: usize, allow_instance_recreate: bool) -> Self {
        ShardState {
            shard_id,
            machines: MachineRegistry::default(),
            instances: InstanceTable::new(),
            allow_instance_recreate,
            active_instances: 0,
            events: Vec::new(),
            not_run: None,
        }
    }

    /// An active instance, or INSTANCE_NOT_FOUND.
    pub fn active(&self, id: &str) -> EngineResult<&Instance> {
        match self.instances.get(id) {
            Some(i) if i.is_active() => Ok(i),
            _ => Err(EngineError::instance_not_found(id)),
        }
    }

    /// Durably install a machine definition on this shard (PUT_MACHINE's
    /// per-shard step). Returns whether a record was written.
    pub fn install_machine(
        &mut self,
        def: Arc<MachineDef>,
        raw_definition: &serde_json::Value,
        now_ms: u64,
        log: &mut dyn LogSink,
    ) -> EngineResult<bool> {
        if let Some(existing) = self.machines.get(&def.machine, def.version) {
            if existing.checksum == def.checksum {
                return Ok(false);
            }
            return Err(EngineError::core(
                ErrorCode::MachineVersionExists,
                format_args!(
                    "machine version already exists: {} v{}",
                    def.machine, def.version
                ),
            ));
        }
        log.append(RecordKind::PutMachine, now_ms, &mut |out| {
            entry::write_put_machine(
                out,
                &def.machine,
                def.version,
                &def.checksum,
                raw_definition,
            )
        })?;
        self.machines.insert(def);
        Ok(true)
    }
}

impl ShardState {
    /// FLUSH_ALL on this shard: forget every machine and instance. Returns
    /// (instance records removed, machine versions removed).
    pub fn flush(&mut self) -> (u64, u64) {
        let removed = (self.instances.len() as u64, self.machines.len() as u64);
        self.instances.clear();
        self.machines = MachineRegistry::default();
        self.active_instances = 0;
        self.events.clear();
        removed
    }
}

/// Current Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A `LogSink` that keeps records in memory, for unit tests of operations.
#[cfg(test)]
pub mod test_sink {
    use super::*;
    use crate::wal::record::{append_record, RecordStamp};

    #[derive(Default)]
    pub struct MemorySink {
        pub bytes: Vec<u8>,
        pub next: u64,
        pub records: usize,
    }

    impl LogSink for MemorySink {
        fn append(
            &mut self,
            kind: RecordKind,
            time_ms: u64,
            write: &mut dyn FnMut(&mut Vec<u8>),
        ) -> EngineResult<u64> {
            self.next += 64;
            let stamp = RecordStamp {
                kind,
                offset: self.next,
                time_ms,
                entries_before: self.records as u64,
            };
            append_record(&mut self.bytes, &stamp, 0, |o| write(o))
                .map_err(|n| EngineError::record_too_large(kind, n))?;
            self.records += 1;
            Ok(self.next)
        }
    }
}
