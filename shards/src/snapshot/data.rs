//! The in-memory form of a snapshot: plain data, no I/O. Taken from a live
//! `ShardState` (a copy) and turned back into one at recovery.

use std::sync::Arc;

use hashbrown::HashMap;

use crate::instance::Instance;
use crate::machine::definition::MachineDef;
use crate::shard::state::ShardState;

/// A shard's full state as of `covered_offset`.
#[derive(Debug, Clone)]
pub struct SnapshotData {
    pub shard: usize,
    /// Every WAL record of this shard with offset ≤ this is reflected here.
    pub covered_offset: u64,
    /// The shard's offset clock reading when the snapshot was taken, so the
    /// clock never goes back even if the log after it is empty.
    pub last_tick: u64,
    /// Every machine definition the shard knows.
    pub machines: Vec<Arc<MachineDef>>,
    /// Every instance, active or soft-deleted. Each instance's `machine` is
    /// one of `machines` (the same `Arc` after decoding).
    pub instances: Vec<(String, Instance)>,
}

impl SnapshotData {
    /// Copy the state of a shard. `covered_offset` must be the offset of the
    /// last record reflected in `state`.
    pub fn from_state(state: &ShardState, covered_offset: u64, last_tick: u64) -> SnapshotData {
        SnapshotData {
            shard: state.shard_id,
            covered_offset,
            last_tick,
            machines: state.machines.iter().cloned().collect(),
            instances: state
                .instances
                .iter()
                .map(|(id, inst)| (id.clone(), inst.clone()))
                .collect(),
        }
    }

    /// Rebuild a shard's state. `active_instances` is recounted. Should an
    /// instance id appear twice, the later one wins.
    pub fn into_state(self, allow_instance_recreate: bool) -> ShardState {
        let mut state = ShardState::new(self.shard, allow_instance_recreate);
        for def in self.machines {
            state.machines.insert(def);
        }
        let mut instances = HashMap::with_capacity(self.instances.len());
        for (id, inst) in self.instances {
            instances.insert(id, inst);
        }
        state.active_instances = instances.values().filter(|i| i.is_active()).count() as u64;
        state.instances = instances;
        state
    }

    /// Instances not soft-deleted.
    pub fn active_instances(&self) -> u64 {
        self.instances.iter().filter(|(_, i)| i.is_active()).count() as u64
    }
}
