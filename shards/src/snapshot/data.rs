//! The in-memory form of a snapshot: plain data, no I/O. Taken from a live
//! `ShardState` (a copy) and turned back into one at recovery.

use std::sync::Arc;

use super::codec::LogPosition;
use crate::instance::Instance;
use crate::instance_table::InstanceTable;
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
    /// Log entries the shard had written (see `wal/sequence.rs`).
    pub entries: u64,
    /// Every machine definition the shard knows.
    pub machines: Vec<Arc<MachineDef>>,
    /// Every instance, active or soft-deleted. Each instance's `machine` is
    /// one of `machines` (the same `Arc` after decoding).
    pub instances: Vec<(String, Instance)>,
}

impl SnapshotData {
    /// Where in the log this snapshot stands.
    pub fn position(&self) -> LogPosition {
        LogPosition {
            covered_offset: self.covered_offset,
            last_tick: self.last_tick,
            entries: self.entries,
        }
    }

    /// Copy the state of a shard. `at.covered_offset` must be the offset of the
    /// last record reflected in `state`.
    pub fn from_state(state: &ShardState, at: LogPosition) -> SnapshotData {
        SnapshotData {
            shard: state.shard_id,
            covered_offset: at.covered_offset,
            last_tick: at.last_tick,
            entries: at.entries,
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
        let mut instances = InstanceTable::new();
        instances.reserve(self.instances.len());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::definition::parse_definition;
    use crate::snapshot::codec::{decode, decode_state, encode, encode_state};
    use serde_json::json;

    fn position(n: u64) -> LogPosition {
        LogPosition {
            covered_offset: n,
            last_tick: n,
            entries: n,
        }
    }

    fn state_with_instances() -> ShardState {
        let mut state = ShardState::new(5, false);
        let def = Arc::new(
            parse_definition(
                "door",
                2,
                &json!({"states":["open","shut"],"initial":"open","transitions":[
                    {"from":"open","event":"CLOSE","to":"shut"}]}),
            )
            .unwrap(),
        );
        state.machines.insert(def.clone());
        for (id, deleted) in [("a", false), ("b", true), ("c", false)] {
            state.instances.insert(
                id.into(),
                Instance {
                    machine: def.clone(),
                    state: "shut".into(),
                    ctx: json!({"id": id}).into(),
                    last_event_id: None,
                    last_wal_offset: 7,
                    created_at_ms: 1,
                    updated_at_ms: 2,
                    deleted_at_offset: deleted.then_some(7),
                    creation: None,
                    applied_keys: None,
                },
            );
        }
        state.active_instances = 2;
        state
    }

    #[test]
    fn state_survives_copy_encode_decode_and_rebuild() {
        let state = state_with_instances();
        let at = LogPosition {
            covered_offset: 0x4005,
            last_tick: 0x100,
            entries: 77,
        };
        let data = SnapshotData::from_state(&state, at);
        assert_eq!(data.active_instances(), 2);
        let image = encode(&data);
        // Encoding the live state directly gives the same file.
        let direct = encode_state(&state, at);
        assert_eq!(decode(&direct).unwrap().instances.len(), 3);
        assert_eq!(image.len(), direct.len());

        let rebuilt = decode(&image).unwrap().into_state(true);
        let (direct_state, header) = decode_state(&direct, true).unwrap();
        for s in [&rebuilt, &direct_state] {
            assert_eq!(s.shard_id, 5);
            assert!(s.allow_instance_recreate);
            assert_eq!(s.active_instances, 2);
            assert_eq!(s.machines.len(), 1);
            assert!(s.machines.get("door", 2).is_some());
            assert!(!s.instances["b"].is_active());
            assert_eq!(s.instances["c"].ctx, json!({"id": "c"}));
            // Instances point at the registry's definition.
            assert!(Arc::ptr_eq(
                &s.instances["a"].machine,
                s.machines.get("door", 2).unwrap()
            ));
        }
        assert_eq!(header.position(), at);
    }

    #[test]
    fn a_repeated_instance_id_keeps_the_later_one_and_counts_right() {
        let state = state_with_instances();
        let mut data = SnapshotData::from_state(&state, position(1));
        let mut revived = data.instances[0].1.clone();
        revived.deleted_at_offset = None;
        let mut dead = revived.clone();
        dead.deleted_at_offset = Some(9);
        data.instances.push(("x".into(), revived));
        data.instances.push(("x".into(), dead));
        let rebuilt = data.into_state(false);
        assert_eq!(rebuilt.instances.len(), 4);
        assert!(!rebuilt.instances["x"].is_active());
        assert_eq!(rebuilt.active_instances, 2);
    }
}
