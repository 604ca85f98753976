//! A shard's instances by id, spread over many small hash tables so that no
//! insert ever stops the shard for long.
//!
//! One hash table grows by doubling: the insert that crosses its load limit
//! allocates a table twice the size and moves every entry before it returns.
//! For a shard of a million instances that one insert took 0.6–2 s on this
//! machine (measured as the longest create latency under a 16×16 create
//! load, landing exactly where the instance count crossed 458,752 and
//! 917,504 — 7/8 of 2^19 and 2^20 buckets), long enough for a cluster's
//! followers to elect a new leader. Here the ids are split by hash over
//! `INSTANCE_TABLE_PARTITIONS` tables; each grows on its own, so a growth
//! step moves 1/256 of the instances.
//!
//! Split alone is not enough: ids spread evenly, so every partition would
//! reach its limit within the same few thousand inserts and the growth work
//! would come in one burst (measured: the longest create fell to 84–225 ms,
//! but p99 rose from 4 to 11–14 ms). So each partition grows early, at its
//! own fill level between half and all of its capacity
//! (`grow_at`): the partitions' growth points spread evenly over each
//! doubling of the shard. Measured with it: longest create 70–109 ms, but
//! p99 19 ms and ~8 % fewer creates per second than one table — the many
//! medium growths keep the kernel zeroing fresh pages
//! (bench-results/2026-12-05/instance-table-ab/notes.md); still open.
//!
//! The id is hashed once: its top bits pick the partition, and the hash
//! rotated right by as many bits is what the partition's table sees, so the
//! bits hashbrown uses inside a table (the low bits for the bucket, the top
//! seven for the control byte) do not repeat the partition's.

use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::BuildHasher;

use crate::instance::Instance;

/// log2 of the number of hash tables one shard's instances are spread over.
const INSTANCE_TABLE_PARTITION_BITS: u32 = 8;

/// How many hash tables one shard's instances are spread over: the largest
/// single growth step moves this fraction of the shard's instances.
pub const INSTANCE_TABLE_PARTITIONS: usize = 1 << INSTANCE_TABLE_PARTITION_BITS;

type Entry = (String, Instance);

pub struct InstanceTable {
    parts: Box<[HashTable<Entry>]>,
    hasher: DefaultHashBuilder,
    len: usize,
}

impl Default for InstanceTable {
    fn default() -> Self {
        InstanceTable::new()
    }
}

impl std::fmt::Debug for InstanceTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceTable")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// The hash a partition's table sees for an id hashed to `hash`.
fn in_partition(hash: u64) -> u64 {
    hash.rotate_right(INSTANCE_TABLE_PARTITION_BITS)
}

/// The fill at which partition `index` of `capacity` doubles: from half of
/// its capacity for partition 0 to all of it for the last, so partitions
/// filled alike grow at different times.
fn grow_at(index: usize, capacity: usize) -> usize {
    capacity / 2 + capacity * index / (2 * INSTANCE_TABLE_PARTITIONS)
}

/// What a partition's table needs to place its entries again when it grows.
fn rehash(hasher: &DefaultHashBuilder) -> impl Fn(&Entry) -> u64 + '_ {
    move |(k, _)| in_partition(hasher.hash_one(k.as_str()))
}

fn partition_of(hash: u64) -> usize {
    (hash >> (u64::BITS - INSTANCE_TABLE_PARTITION_BITS)) as usize
}

impl InstanceTable {
    pub fn new() -> Self {
        InstanceTable {
            parts: (0..INSTANCE_TABLE_PARTITIONS)
                .map(|_| HashTable::new())
                .collect(),
            hasher: DefaultHashBuilder::default(),
            len: 0,
        }
    }

    fn hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, id: &str) -> Option<&Instance> {
        let hash = self.hash(id);
        self.parts[partition_of(hash)]
            .find(in_partition(hash), |(k, _)| k == id)
            .map(|(_, inst)| inst)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Instance> {
        let hash = self.hash(id);
        self.parts[partition_of(hash)]
            .find_mut(in_partition(hash), |(k, _)| k == id)
            .map(|(_, inst)| inst)
    }

    pub fn contains_key(&self, id: &str) -> bool {
        self.get(id).is_some()
    }

    /// Insert or replace; returns the instance replaced.
    pub fn insert(&mut self, id: String, inst: Instance) -> Option<Instance> {
        let hash = self.hash(&id);
        let index = partition_of(hash);
        let hasher = &self.hasher;
        let part = &mut self.parts[index];
        let capacity = part.capacity();
        if part.len() >= grow_at(index, capacity) {
            // Double now rather than when full (see the module's doc).
            part.reserve(capacity + 1 - part.len(), rehash(hasher));
        }
        match part.entry(in_partition(hash), |(k, _)| *k == id, rehash(hasher)) {
            hashbrown::hash_table::Entry::Occupied(mut slot) => {
                Some(std::mem::replace(&mut slot.get_mut().1, inst))
            }
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert((id, inst));
                self.len += 1;
                None
            }
        }
    }

    pub fn remove(&mut self, id: &str) -> Option<Instance> {
        let hash = self.hash(id);
        let found = self.parts[partition_of(hash)]
            .find_entry(in_partition(hash), |(k, _)| k == id)
            .ok()?;
        let ((_, inst), _) = found.remove();
        self.len -= 1;
        Some(inst)
    }

    /// Room for `additional` more instances spread evenly (what loading a
    /// snapshot of known size wants).
    pub fn reserve(&mut self, additional: usize) {
        let each = additional.div_ceil(INSTANCE_TABLE_PARTITIONS);
        let hasher = &self.hasher;
        for part in self.parts.iter_mut() {
            part.reserve(each, rehash(hasher));
        }
    }

    pub fn clear(&mut self) {
        for part in self.parts.iter_mut() {
            *part = HashTable::new();
        }
        self.len = 0;
    }

    /// Every instance with its id, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Instance)> {
        self.parts
            .iter()
            .flat_map(|part| part.iter().map(|(k, inst)| (k, inst)))
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &Instance> {
        self.iter().map(|(_, inst)| inst)
    }
}

/// `table[id]`, for tests and callers that know the id is there.
impl<K: AsRef<str> + ?Sized> std::ops::Index<&K> for InstanceTable {
    type Output = Instance;

    fn index(&self, id: &K) -> &Instance {
        let id = id.as_ref();
        self.get(id)
            .unwrap_or_else(|| panic!("instance {id} is not in the table"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn instance(state: &str) -> Instance {
        let def = crate::machine::definition::parse_definition(
            "m",
            1,
            &serde_json::json!({"states": ["a", "b"], "initial": "a", "transitions": []}),
        )
        .expect("machine");
        Instance {
            machine: Arc::new(def),
            state: state.to_owned(),
            ctx: serde_json::json!({}),
            last_event_id: None,
            last_wal_offset: 0,
            created_at_ms: 0,
            updated_at_ms: 0,
            deleted_at_offset: None,
            creation: None,
            applied_keys: None,
        }
    }

    #[test]
    fn behaves_as_a_map_against_a_model() {
        // Inserts, replacements and removals over enough ids that every
        // partition grows several times; the table must agree with a model
        // map after each step and when walked at the end.
        let mut table = InstanceTable::new();
        let mut model: BTreeMap<String, String> = BTreeMap::new();
        let ids = 20_000u32;
        for step in 0..3 * ids {
            let id = format!("i-{}", step.wrapping_mul(2_654_435_761) % ids);
            let state = format!("s{step}");
            match step % 5 {
                4 => assert_eq!(
                    table.remove(&id).map(|i| i.state),
                    model.remove(&id),
                    "remove {id}"
                ),
                _ => assert_eq!(
                    table.insert(id.clone(), instance(&state)).map(|i| i.state),
                    model.insert(id.clone(), state),
                    "insert {id}"
                ),
            }
            assert_eq!(table.len(), model.len());
            assert_eq!(table.get(&id).map(|i| &i.state), model.get(&id), "get {id}");
        }
        let walked: BTreeMap<String, String> = table
            .iter()
            .map(|(k, i)| (k.clone(), i.state.clone()))
            .collect();
        assert_eq!(walked, model);
        assert!(table.parts.iter().all(|p| !p.is_empty()));
        if let Some((id, _)) = model.iter().next() {
            table.get_mut(id).expect("present").state = "changed".into();
            assert_eq!(table.get(id).map(|i| i.state.as_str()), Some("changed"));
        }
        table.clear();
        assert!(table.is_empty());
        assert_eq!(table.iter().count(), 0);
        assert!(!table.contains_key("i-1"));
    }

    #[test]
    fn partitions_grow_at_different_times() {
        // Filled alike, the partitions would all double within a few percent
        // of each other; their growth points must instead spread over the
        // doubling interval. Record the insert at which each partition
        // reached each capacity and compare the spread with the interval.
        let mut table = InstanceTable::new();
        let mut reached: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        let mut capacities: Vec<usize> = table.parts.iter().map(|p| p.capacity()).collect();
        for i in 0..(1usize << 17) {
            table.insert(format!("id-{i}"), instance("a"));
            for (p, cap) in table.parts.iter().zip(capacities.iter_mut()) {
                if p.capacity() != *cap {
                    *cap = p.capacity();
                    reached.entry(*cap).or_default().push(i);
                }
            }
        }
        let mut checked = 0;
        for (cap, at) in &reached {
            if *cap < 224 || at.len() < INSTANCE_TABLE_PARTITIONS {
                continue;
            }
            let (first, last) = (at[0], at[at.len() - 1]);
            assert!(
                last - first > first * 3 / 4,
                "partitions reached capacity {cap} between inserts {first} and {last}"
            );
            checked += 1;
        }
        assert!(checked >= 2, "growth levels seen: {:?}", reached.keys());
    }

    #[test]
    fn no_partition_is_left_holding_most_ids() {
        // The partition bits and the in-table bits come from one hash; check
        // the spread is even enough that the largest growth step stays near
        // 1/INSTANCE_TABLE_PARTITIONS of the shard.
        let mut table = InstanceTable::new();
        let n = 64 * INSTANCE_TABLE_PARTITIONS;
        for i in 0..n {
            table.insert(format!("order-{i}"), instance("a"));
        }
        let largest = table.parts.iter().map(|p| p.len()).max().unwrap_or(0);
        assert!(largest < 3 * 64, "largest partition holds {largest} of {n}");
    }
}
