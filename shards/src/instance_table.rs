//! A shard's instances by id: the instances in a store that never moves
//! them, found through many small hash tables of (hash, slot) that grow at
//! staggered times — so that no insert ever stops the shard for long.
//!
//! One hash table of instances grows by doubling: the insert that crosses
//! its load limit allocates a table twice the size and moves every entry
//! before it returns. For a shard of a million instances that one insert
//! took 0.6–2 s on this machine (measured as the longest create latency
//! under a 16×16 create load, landing exactly where the instance count
//! crossed 458,752 and 917,504 — 7/8 of 2^19 and 2^20 buckets), long enough
//! for a cluster's followers to elect a new leader.
//!
//! * **The store.** Instances live in chunks of [`INSTANCE_CHUNK_ENTRIES`]
//!   slots; a chunk is allocated once and never grows or moves, and a
//!   removed instance's slot is reused. Adding instances only ever touches
//!   fresh memory once, where the instance is written.
//! * **The index.** What grows is only an index of 16-byte (hash, slot)
//!   pairs, split by hash over [`INSTANCE_TABLE_PARTITIONS`] tables, each
//!   growing early at its own fill level between half and all of its
//!   capacity (`grow_at`), so that the partitions' growth points spread
//!   over each doubling of the shard instead of coming in one burst. A
//!   partition grows by rehashing its pairs from the stored hash: no id is
//!   hashed again and no instance is touched.
//!
//! History, measured (bench-results/2026-12-05/instance-table-ab/): 256
//! staggered tables holding the instances themselves cut the longest create
//! from 1.4–1.9 s to 70–109 ms, but create p99 rose from 4 to 19 ms and
//! creates/s fell ~8 %: every growth copied instances into freshly zeroed
//! pages (the kernel's page clearing was 42 % of the profile). Keeping the
//! instances out of the tables removes those copies.
//!
//! The id is hashed once: its top bits pick the partition, and the hash
//! rotated right by as many bits is what the partition's table sees, so the
//! bits hashbrown uses inside a table (the low bits for the bucket, the top
//! seven for the control byte) do not repeat the partition's.

use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::instance::Instance;

/// log2 of the number of index tables one shard's instances are spread
/// over.
const INSTANCE_TABLE_PARTITION_BITS: u32 = 8;

/// How many index tables one shard's instances are spread over: the largest
/// single growth step rehashes this fraction of the shard's pairs.
pub const INSTANCE_TABLE_PARTITIONS: usize = 1 << INSTANCE_TABLE_PARTITION_BITS;

/// Instances per store chunk (a chunk of ~170-byte instances is ~0.7 MiB,
/// allocated whole and filled in place).
pub const INSTANCE_CHUNK_ENTRIES: usize = 4096;

type Entry = (String, Instance);

/// An index entry: the hash its partition's table sees, and where the
/// instance is in the store.
#[derive(Clone, Copy)]
struct Slot {
    hash: u64,
    at: usize,
}

/// Where instances live: chunks that never move, and the slots freed by
/// removals, reused first.
#[derive(Default)]
struct Store {
    chunks: Vec<Vec<Option<Entry>>>,
    free: Vec<usize>,
}

impl Store {
    fn get(&self, at: usize) -> Option<&Entry> {
        self.chunks
            .get(at / INSTANCE_CHUNK_ENTRIES)?
            .get(at % INSTANCE_CHUNK_ENTRIES)?
            .as_ref()
    }

    fn get_mut(&mut self, at: usize) -> Option<&mut Entry> {
        self.chunks
            .get_mut(at / INSTANCE_CHUNK_ENTRIES)?
            .get_mut(at % INSTANCE_CHUNK_ENTRIES)?
            .as_mut()
    }

    fn holds(&self, at: usize, id: &str) -> bool {
        self.get(at).is_some_and(|(k, _)| k == id)
    }

    /// Put `entry` in a free slot, or at the end; returns the slot.
    fn put(&mut self, entry: Entry) -> usize {
        if let Some(at) = self.free.pop() {
            self.chunks[at / INSTANCE_CHUNK_ENTRIES][at % INSTANCE_CHUNK_ENTRIES] = Some(entry);
            return at;
        }
        let full = self
            .chunks
            .last()
            .is_none_or(|c| c.len() == INSTANCE_CHUNK_ENTRIES);
        if full {
            // Capacity for the whole chunk now: it never reallocates (its
            // pages are touched only as slots are filled).
            self.chunks.push(Vec::with_capacity(INSTANCE_CHUNK_ENTRIES));
        }
        let last = self.chunks.len() - 1;
        let chunk = &mut self.chunks[last];
        chunk.push(Some(entry));
        last * INSTANCE_CHUNK_ENTRIES + chunk.len() - 1
    }

    fn take(&mut self, at: usize) -> Option<Entry> {
        let taken = self
            .chunks
            .get_mut(at / INSTANCE_CHUNK_ENTRIES)?
            .get_mut(at % INSTANCE_CHUNK_ENTRIES)?
            .take();
        if taken.is_some() {
            self.free.push(at);
        }
        taken
    }

    fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.chunks.iter().flatten().flatten()
    }

    /// Slots handed out so far, free or taken.
    fn slots(&self) -> usize {
        self.chunks.last().map_or(0, |c| {
            (self.chunks.len() - 1) * INSTANCE_CHUNK_ENTRIES + c.len()
        })
    }
}

/// Source of table generations: every table made or emptied takes a new
/// one, unique in the process.
static NEXT_TABLE_GENERATION: AtomicU64 = AtomicU64::new(1);

fn new_generation() -> u64 {
    NEXT_TABLE_GENERATION.fetch_add(1, Ordering::Relaxed)
}

pub struct InstanceTable {
    index: Box<[HashTable<Slot>]>,
    store: Store,
    hasher: DefaultHashBuilder,
    len: usize,
    /// Changes when the table is emptied; a new table has its own.
    generation: u64,
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

/// What a partition's table needs to place its pairs again when it grows.
fn rehash(slot: &Slot) -> u64 {
    slot.hash
}

/// What tells `id`'s pair from others its partition's table found under
/// the same control bits.
fn is_pair<'a>(store: &'a Store, seen: u64, id: &'a str) -> impl Fn(&Slot) -> bool + 'a {
    move |s| s.hash == seen && store.holds(s.at, id)
}

fn partition_of(hash: u64) -> usize {
    (hash >> (u64::BITS - INSTANCE_TABLE_PARTITION_BITS)) as usize
}

impl InstanceTable {
    pub fn new() -> Self {
        InstanceTable {
            index: (0..INSTANCE_TABLE_PARTITIONS)
                .map(|_| HashTable::new())
                .collect(),
            store: Store::default(),
            hasher: DefaultHashBuilder::default(),
            len: 0,
            generation: new_generation(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where `id`'s pair lives: its partition, and the hash that
    /// partition's table sees (the id is hashed once per operation).
    fn place(&self, id: &str) -> (usize, u64) {
        let hash = self.hasher.hash_one(id);
        (partition_of(hash), in_partition(hash))
    }

    /// The slot holding `id`, if any.
    fn slot_of(&self, id: &str) -> Option<usize> {
        let (part, seen) = self.place(id);
        self.index[part]
            .find(seen, is_pair(&self.store, seen, id))
            .map(|s| s.at)
    }

    pub fn get(&self, id: &str) -> Option<&Instance> {
        let at = self.slot_of(id)?;
        self.store.get(at).map(|(_, inst)| inst)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Instance> {
        let at = self.slot_of(id)?;
        self.store.get_mut(at).map(|(_, inst)| inst)
    }

    pub fn contains_key(&self, id: &str) -> bool {
        self.slot_of(id).is_some()
    }

    /// Insert or replace; returns the instance replaced.
    pub fn insert(&mut self, id: String, inst: Instance) -> Option<Instance> {
        let (index, seen) = self.place(&id);
        let found = self.index[index]
            .find(seen, is_pair(&self.store, seen, &id))
            .map(|s| s.at);
        if let Some((_, old)) = found.and_then(|at| self.store.get_mut(at)) {
            return Some(std::mem::replace(old, inst));
        }
        let part = &mut self.index[index];
        let capacity = part.capacity();
        if part.len() >= grow_at(index, capacity) {
            // Double now rather than when full (see the module's doc).
            part.reserve(capacity + 1 - part.len(), rehash);
        }
        let at = self.store.put((id, inst));
        part.insert_unique(seen, Slot { hash: seen, at }, rehash);
        self.len += 1;
        None
    }

    pub fn remove(&mut self, id: &str) -> Option<Instance> {
        let (part, seen) = self.place(id);
        let found = self.index[part]
            .find_entry(seen, is_pair(&self.store, seen, id))
            .ok()?;
        let (slot, _) = found.remove();
        let (_, inst) = self.store.take(slot.at)?;
        self.len -= 1;
        Some(inst)
    }

    /// Room for `additional` more instances spread evenly (what loading a
    /// snapshot of known size wants).
    pub fn reserve(&mut self, additional: usize) {
        let each = additional.div_ceil(INSTANCE_TABLE_PARTITIONS);
        for part in self.index.iter_mut() {
            part.reserve(each, rehash);
        }
    }

    pub fn clear(&mut self) {
        for part in self.index.iter_mut() {
            *part = HashTable::new();
        }
        self.store = Store::default();
        self.len = 0;
        self.generation = new_generation();
    }

    /// Positions `0..positions()` hold every instance in the table, each at
    /// a position it keeps for as long as it stays (`at_position`). A new
    /// instance takes a position at the end, or one a removed instance
    /// left. What a walk of the table in slices over many turns of the
    /// shard loop needs — the sliced snapshot (`shard::snapshotting`) —
    /// without a list of ids of its own.
    pub fn positions(&self) -> usize {
        self.store.slots()
    }

    /// The instance at `position`, with its id; `None` for a free one.
    pub fn at_position(&self, position: usize) -> Option<(&str, &Instance)> {
        self.store
            .get(position)
            .map(|(id, inst)| (id.as_str(), inst))
    }

    /// Unique to this table until it is emptied: positions walked in an
    /// earlier generation mean nothing in a later one.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The table's own invariants, for audits: every stored instance is
    /// found by its id at its position, and the count agrees.
    pub fn check(&self) -> Result<(), String> {
        let mut stored = 0;
        for position in 0..self.positions() {
            if let Some((id, _)) = self.at_position(position) {
                stored += 1;
                if self.slot_of(id) != Some(position) {
                    return Err(format!(
                        "instance {id} at position {position} is not found there"
                    ));
                }
            }
        }
        if stored != self.len {
            return Err(format!("{stored} instances stored, {} counted", self.len));
        }
        Ok(())
    }

    /// Every instance with its id, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Instance)> {
        self.store.iter().map(|(k, inst)| (k, inst))
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
            state: state.into(),
            ctx: serde_json::json!({}).into(),
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
                    table.remove(&id).map(|i| i.state.to_string()),
                    model.remove(&id),
                    "remove {id}"
                ),
                _ => assert_eq!(
                    table
                        .insert(id.clone(), instance(&state))
                        .map(|i| i.state.to_string()),
                    model.insert(id.clone(), state),
                    "insert {id}"
                ),
            }
            assert_eq!(table.len(), model.len());
            assert_eq!(
                table.get(&id).map(|i| &*i.state),
                model.get(&id).map(String::as_str),
                "get {id}"
            );
        }
        let walked: BTreeMap<String, String> = table
            .iter()
            .map(|(k, i)| (k.clone(), i.state.to_string()))
            .collect();
        assert_eq!(walked, model);
        let by_position: BTreeMap<String, String> = (0..table.positions())
            .filter_map(|at| table.at_position(at))
            .map(|(k, i)| (k.to_owned(), i.state.to_string()))
            .collect();
        assert_eq!(by_position, model);
        table.check().expect("consistent");
        assert!(table.index.iter().all(|p| !p.is_empty()));
        if let Some((id, _)) = model.iter().next() {
            table.get_mut(id).expect("present").state = "changed".into();
            assert_eq!(table.get(id).map(|i| &*i.state), Some("changed"));
        }
        let generation = table.generation();
        table.clear();
        assert!(table.is_empty());
        assert_eq!(table.iter().count(), 0);
        assert!(!table.contains_key("i-1"));
        assert_eq!(table.positions(), 0);
        assert_ne!(table.generation(), generation);
        assert_ne!(InstanceTable::new().generation(), table.generation());
    }

    #[test]
    fn an_instance_keeps_its_position_and_a_removed_one_leaves_it_to_a_later_insert() {
        let mut table = InstanceTable::new();
        for i in 0..(INSTANCE_CHUNK_ENTRIES + 3) {
            table.insert(format!("id-{i}"), instance("a"));
        }
        assert_eq!(table.positions(), INSTANCE_CHUNK_ENTRIES + 3);
        let at_of = |t: &InstanceTable, id: &str| {
            (0..t.positions()).find(|&at| t.at_position(at).is_some_and(|(k, _)| k == id))
        };
        assert_eq!(at_of(&table, "id-7"), Some(7));
        assert_eq!(
            at_of(&table, &format!("id-{}", INSTANCE_CHUNK_ENTRIES + 1)),
            Some(INSTANCE_CHUNK_ENTRIES + 1)
        );
        // A replacement stays where it was.
        table.insert("id-7".into(), instance("b"));
        assert_eq!(
            table.at_position(7).map(|(k, i)| (k, i.state.as_str())),
            Some(("id-7", "b"))
        );
        table.remove("id-7");
        assert!(table.at_position(7).is_none());
        assert_eq!(table.positions(), INSTANCE_CHUNK_ENTRIES + 3);
        table.insert("new".into(), instance("a"));
        assert_eq!(at_of(&table, "new"), Some(7));
        assert_eq!(table.positions(), INSTANCE_CHUNK_ENTRIES + 3);
        table.check().expect("consistent");
    }

    #[test]
    fn partitions_grow_at_different_times() {
        // Filled alike, the partitions would all double within a few percent
        // of each other; their growth points must instead spread over the
        // doubling interval. Record the insert at which each partition
        // reached each capacity and compare the spread with the interval.
        let mut table = InstanceTable::new();
        let mut reached: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        let mut capacities: Vec<usize> = table.index.iter().map(|p| p.capacity()).collect();
        for i in 0..(1usize << 17) {
            table.insert(format!("id-{i}"), instance("a"));
            for (p, cap) in table.index.iter().zip(capacities.iter_mut()) {
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
    fn instances_stay_where_they_are_while_the_table_grows() {
        // Growth rehashes only the index: an instance's address is the same
        // after the table grew many times over (what keeps a growth from
        // copying instances into fresh pages), and a removed instance's
        // slot is reused.
        let mut table = InstanceTable::new();
        table.insert("first".into(), instance("a"));
        let before: *const Instance = &table["first"];
        for i in 0..(8 * INSTANCE_CHUNK_ENTRIES) {
            table.insert(format!("id-{i}"), instance("a"));
        }
        assert!(std::ptr::eq(before, &table["first"]), "the instance moved");
        let chunks = table.store.chunks.len();
        table.remove("id-7").expect("present");
        table.insert("again".into(), instance("b"));
        assert_eq!(table.store.chunks.len(), chunks);
        assert!(table.store.free.is_empty(), "the freed slot was reused");
        assert_eq!(table.len(), 8 * INSTANCE_CHUNK_ENTRIES + 1);
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
        let largest = table.index.iter().map(|p| p.len()).max().unwrap_or(0);
        assert!(largest < 3 * 64, "largest partition holds {largest} of {n}");
    }
}
