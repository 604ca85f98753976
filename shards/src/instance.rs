//! An instance of a state machine as its owner shard keeps it in memory, the
//! context merge rule, and the retained idempotency keys.

use std::collections::VecDeque;
use std::sync::Arc;

use hashbrown::HashMap;
use serde_json::Value;

use crate::instance_ctx::Ctx;
use crate::machine::definition::MachineDef;

/// Idempotency keys of APPLY_EVENT remembered per instance; the oldest is
/// forgotten first. A retry with a forgotten key applies again.
pub const IDEMPOTENCY_KEYS_PER_INSTANCE_MAX: usize = 256;

/// The stored outcome of an APPLY_EVENT made with an idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedApply {
    pub from_state: String,
    pub to_state: String,
    /// The context right after that apply, as canonical JSON.
    pub ctx_json: Vec<u8>,
    pub wal_offset: u64,
}

/// Bounded map of idempotency key → outcome, oldest evicted first.
#[derive(Debug, Default, Clone)]
pub struct AppliedKeys {
    map: HashMap<String, CachedApply>,
    order: VecDeque<String>,
}

impl AppliedKeys {
    pub fn get(&self, key: &str) -> Option<&CachedApply> {
        self.map.get(key)
    }

    pub fn insert(&mut self, key: &str, outcome: CachedApply) {
        if self.map.insert(key.to_owned(), outcome).is_none() {
            self.order.push_back(key.to_owned());
            while self.order.len() > IDEMPOTENCY_KEYS_PER_INSTANCE_MAX {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
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
    pub state: String,
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
}
