//! GET_INSTANCE and this shard's part of LIST_INSTANCES (docs/PROTOCOL.md §4.6, §4.7).

use super::result::ResultWriter;
use super::state::ShardState;
use crate::error::EngineResult;
use crate::instance::Instance;
use crate::shard::command::{ListPage, ListQuery};

impl ShardState {
    pub fn get_instance(&self, id: &str) -> EngineResult<Vec<u8>> {
        let inst = self.active(id)?;
        let mut r = ResultWriter::new();
        r.ctx("ctx", &inst.ctx);
        if let Some(event_id) = inst.last_event_id.as_deref() {
            r.str("last_event_id", event_id);
        }
        r.u64("last_wal_offset", inst.last_wal_offset)
            .str("machine", &inst.machine.machine)
            .str("state", &inst.state)
            .u64("version", inst.machine.version as u64);
        Ok(r.finish())
    }

    /// Matching active instances, the `rows_max` smallest ids in ascending
    /// order, plus the total count. Selecting before sorting keeps a small
    /// page cheap on a large shard.
    pub fn list_instances(&self, q: &ListQuery) -> ListPage {
        let matches = |i: &Instance| {
            i.is_active()
                && q.machine.as_deref().is_none_or(|m| m == i.machine.machine)
                && q.state.as_deref().is_none_or(|s| s == &*i.state)
        };
        let mut ids: Vec<&String> = self
            .instances
            .iter()
            .filter(|(_, i)| matches(i))
            .map(|(id, _)| id)
            .collect();
        let total = ids.len() as u64;
        if ids.len() > q.rows_max {
            if q.rows_max == 0 {
                ids.clear();
            } else {
                ids.select_nth_unstable(q.rows_max - 1);
                ids.truncate(q.rows_max);
            }
        }
        ids.sort_unstable();
        let rows = ids
            .into_iter()
            .filter_map(|id| {
                let inst = self.instances.get(id)?;
                Some((id.clone(), summary(id, inst)))
            })
            .collect();
        ListPage {
            total,
            rows,
            charge: None,
        }
    }
}

fn summary(id: &str, inst: &Instance) -> Vec<u8> {
    let mut r = ResultWriter::new();
    r.u64("created_at", inst.created_at_ms)
        .str("id", id)
        .u64("last_wal_offset", inst.last_wal_offset)
        .str("machine", &inst.machine.machine)
        .str("state", &inst.state)
        .u64("updated_at", inst.updated_at_ms)
        .u64("version", inst.machine.version as u64);
    r.finish()
}
