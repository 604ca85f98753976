//! The shard's invariants, checked where they can break (docs/ARCHITECTURE.md,
//! "Invariants"): cheap ones after every loop turn in debug builds, the
//! whole-state recount on request (the simulation asks after every restart
//! and every load).

use super::runner::Shard;

impl Shard {
    /// After each turn, in debug builds: every locked instance belongs to a
    /// batch prepared here, and every prepared batch holds its instances.
    pub(super) fn debug_check_turn(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        for (id, txid) in &self.locked {
            debug_assert!(
                self.txns.get(txid).is_some_and(|p| p.locked.contains(id)),
                "shard {}: {id} is locked by batch {txid}, which is not prepared here",
                self.state.shard_id
            );
        }
        for (txid, part) in &self.txns {
            for id in &part.locked {
                debug_assert_eq!(
                    self.locked.get(id),
                    Some(txid),
                    "shard {}: batch {txid} does not hold {id}",
                    self.state.shard_id
                );
            }
        }
        debug_assert_eq!(
            self.wal.staged_records(),
            0,
            "shard {}: records staged after the turn's commit",
            self.state.shard_id
        );
    }

    /// Every invariant that needs a walk over the whole state; the first
    /// broken one, described.
    pub fn audit(&self) -> Result<(), String> {
        let shard = self.state.shard_id;
        let active = self
            .state
            .instances
            .values()
            .filter(|i| i.is_active())
            .count() as u64;
        if active != self.state.active_instances {
            return Err(format!(
                "shard {shard}: {} active instances counted, {active} in the table",
                self.state.active_instances
            ));
        }
        if let Some((id, txid)) = self
            .locked
            .iter()
            .find(|(id, txid)| !self.txns.get(*txid).is_some_and(|p| p.locked.contains(id)))
        {
            return Err(format!(
                "shard {shard}: {id} is locked by batch {txid}, which is not prepared here"
            ));
        }
        self.state
            .instances
            .check()
            .map_err(|e| format!("shard {shard}: instance table: {e}"))?;
        Ok(())
    }
}
