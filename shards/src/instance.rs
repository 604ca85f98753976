//! An instance of a state machine as its owner shard keeps it in memory, the
//! context merge rule, and the retained idempotency keys.

use std::collections::VecDeque;
use std::sync::Arc;

use hashbrown::HashMap;
use serde_json::Value;

use crate::instance_ctx::Ctx;
use crate::machine::definition::{MachineDef, StateName};

/// Idempotency keys of APPLY_EVENT remembered per instance; the oldest is
/// forgotten first. A retry with a forgotten key applies again.
pub const IDEMPOTENCY_KEYS_PER_INSTANCE_MAX: usize = 256;

/// Bytes of the outcomes remembered per instance (each its key, its two
/// state names and the context it answered with), at most; past it the
/// oldest are forgotten first, but the newest is always kept. The count
/// alone would let an instance with a large context hold 256 copies of it:
/// 4 GiB for one instance of 16 MiB.
pub const IDEMPOTENCY_OUTCOME_BYTES_PER_INSTANCE_MAX: usize = 1024 * 1024;

/// The stored outcome of an APPLY_EVENT made with an idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedApply {
    pub from_state: String,
    pub to_state: String,
    /// The context right after that apply, as canonical JSON.
    pub ctx_json: Vec<u8>,
    pub wal_offset: u64,
}

impl CachedApply {
    /// What it counts against `IDEMPOTENCY_OUTCOME_BYTES_PER_INSTANCE_MAX`
    /// with its key.
    fn bytes_with(&self, key: &str) -> usize {
        key.len() + self.from_state.len() + self.to_state.len() + self.ctx_json.len()
    }
}

/// Bounded map of idempotency key → outcome, oldest evicted first. What is
/// kept depends only on the order of the inserts, so a replay of the log or
/// of a snapshot (which lists the kept keys oldest first) keeps the same.
#[derive(Debug, Default, Clone)]
pub struct AppliedKeys {
    map: HashMap<String, CachedApply>,
    order: VecDeque<String>,
    /// `bytes_with` of every outcome kept.
    bytes: usize,
}

impl AppliedKeys {
    pub fn get(&self, key: &str) -> Option<&CachedApply> {
        self.map.get(key)
    }

    pub fn insert(&mut self, key: &str, outcome: CachedApply) {
        self.bytes += outcome.bytes_with(key);
        match self.map.insert(key.to_owned(), outcome) {
            Some(old) => self.bytes -= old.bytes_with(key),
            None => self.order.push_back(key.to_owned()),
        }
        while self.order.len() > IDEMPOTENCY_KEYS_PER_INSTANCE_MAX
            || (self.bytes > IDEMPOTENCY_OUTCOME_BYTES_PER_INSTANCE_MAX && self.order.len() > 1)
        {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(gone) = self.map.remove(&old) {
                self.bytes -= gone.bytes_with(&old);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Every retained key with its outcome, oldest first (the order `insert`
    /// replays them in to rebuild the same eviction order; used by snapshots).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &CachedApply)> {
        self.order
            .iter()
            .filter_map(|k| self.map.get(k).map(|v| (k.as_str(), v)))
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// How an instance was created, kept when the create carried an
/// idempotency key so a retry can be answered with the first result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creation {
    pub idempotency_key: String,
    pub initial_state: String,
    pub wal_offset: u64,
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub machine: Arc<MachineDef>,
    pub state: StateName,
    pub ctx: Ctx,
    pub last_event_id: Option<String>,
    pub last_wal_offset: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// Offset of the delete record once soft-deleted.
    pub deleted_at_offset: Option<u64>,
    pub creation: Option<Box<Creation>>,
    pub applied_keys: Option<Box<AppliedKeys>>,
}

impl Instance {
    pub fn is_active(&self) -> bool {
        self.deleted_at_offset.is_none()
    }

    pub fn remember_apply(&mut self, key: &str, outcome: CachedApply) {
        self.applied_keys
            .get_or_insert_with(Default::default)
            .insert(key, outcome);
    }

    pub fn cached_apply(&self, key: &str) -> Option<&CachedApply> {
        self.applied_keys.as_ref()?.get(key)
    }
}

/// Shallow merge (docs/PROTOCOL.md §7.2): only when both the context and the payload are
/// objects, every top-level payload key overwrites the context's. An apply
/// merges into a tree of its own (`ShardState::apply_event`), so a write
/// that cannot be logged leaves the instance's context as it was.
pub fn merge_payload(ctx: &mut Value, payload: &Value) {
    if let (Value::Object(ctx), Value::Object(payload)) = (ctx, payload) {
        for (k, v) in payload {
            ctx.insert(k.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_is_shallow_and_only_for_objects() {
        let mut ctx = json!({"a": 1, "n": {"x": 1, "y": 2}});
        merge_payload(&mut ctx, &json!({"b": 2, "n": {"x": 9}, "a": null}));
        assert_eq!(ctx, json!({"a": null, "b": 2, "n": {"x": 9}}));

        let mut arr = json!([1]);
        merge_payload(&mut arr, &json!({"a": 1}));
        assert_eq!(arr, json!([1]));

        let mut obj = json!({"a": 1});
        merge_payload(&mut obj, &json!([1, 2]));
        assert_eq!(obj, json!({"a": 1}));
    }

    #[test]
    fn idempotency_keys_are_bounded() {
        let mut keys = AppliedKeys::default();
        let outcome = CachedApply {
            from_state: "a".into(),
            to_state: "b".into(),
            ctx_json: b"{}".to_vec(),
            wal_offset: 1,
        };
        for i in 0..IDEMPOTENCY_KEYS_PER_INSTANCE_MAX + 10 {
            keys.insert(&format!("k{i}"), outcome.clone());
        }
        assert_eq!(keys.len(), IDEMPOTENCY_KEYS_PER_INSTANCE_MAX);
        assert!(keys.get("k0").is_none());
        assert!(keys
            .get(&format!("k{}", IDEMPOTENCY_KEYS_PER_INSTANCE_MAX + 9))
            .is_some());
    }

    #[test]
    fn idempotency_outcomes_are_bounded_in_bytes_keeping_the_newest() {
        let outcome = |ctx_bytes: usize| CachedApply {
            from_state: "a".into(),
            to_state: "b".into(),
            ctx_json: vec![b'1'; ctx_bytes],
            wal_offset: 1,
        };
        let quarter = IDEMPOTENCY_OUTCOME_BYTES_PER_INSTANCE_MAX / 4;
        let mut keys = AppliedKeys::default();
        for i in 0..10 {
            keys.insert(&format!("k{i}"), outcome(quarter));
        }
        // Three quarters' contexts and their keys and states fit; a fourth
        // does not.
        assert_eq!(keys.len(), 3);
        assert!(keys.get("k6").is_none());
        assert!(keys.get("k7").is_some() && keys.get("k9").is_some());
        assert!(keys.bytes <= IDEMPOTENCY_OUTCOME_BYTES_PER_INSTANCE_MAX);
        // One larger than the bound is kept alone: the newest always is.
        keys.insert(
            "big",
            outcome(2 * IDEMPOTENCY_OUTCOME_BYTES_PER_INSTANCE_MAX),
        );
        assert_eq!(keys.len(), 1);
        assert!(keys.get("big").is_some());
        // Small ones push it out, and the count stays right.
        keys.insert("small", outcome(10));
        assert_eq!(keys.len(), 1);
        assert_eq!(keys.bytes, outcome(10).bytes_with("small"));
        // Inserting the kept keys again in order (a snapshot's load) keeps
        // them all.
        let mut again = AppliedKeys::default();
        for (k, v) in keys.iter() {
            again.insert(k, v.clone());
        }
        assert_eq!(again.len(), keys.len());
        assert_eq!(again.bytes, keys.bytes);
    }
}
