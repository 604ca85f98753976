//! Work a member shard runs beside its loop, as tasks on its executor,
//! because the loop must go on turning meanwhile: a change of the group's
//! members (adding one waits until it has caught up, minutes for a large
//! shard) and COMPACT's group snapshot (which the loop takes in slices,
//! `member_snapshot.rs`).

use super::group_link::MemberChange;
use super::runner::Shard;
use super::snapshotting::CompactReport;
use crate::error::EngineResult;

impl Shard {
    /// Run a change of the group's members beside the loop (adding a
    /// member waits until it has caught up: minutes for a large shard);
    /// the answer names the shard and its voters after the change.
    pub(super) fn start_member_change(
        &self,
        change: MemberChange,
        done: flume::Sender<EngineResult<serde_json::Value>>,
    ) {
        let link = self.member().link.clone();
        let shard = self.state.shard_id;
        self.env.tasks.spawn(Box::pin(async move {
            let answer = link
                .change_members(change)
                .await
                .map(|voters| serde_json::json!({"shard": shard, "voters": voters}))
                .map_err(|e| e.to_engine_error());
            let _ = done.send(answer);
        }));
    }

    /// COMPACT on a member: the group member's snapshot, built beside the
    /// loop (it reads the state through the loop); the log behind it is
    /// purged and its segments retired in the background, so the answer
    /// counts no deleted segments.
    pub(super) fn start_group_snapshot(&self, done: flume::Sender<CompactReport>) {
        let link = self.member().link.clone();
        self.env.tasks.spawn(Box::pin(async move {
            let report = match link.snapshot_now().await {
                Ok(created) => CompactReport {
                    snapshots_created: u64::from(created),
                    total_snapshots: 1,
                    ..Default::default()
                },
                Err(e) => CompactReport {
                    error: Some(e),
                    ..Default::default()
                },
            };
            let _ = done.send(report);
        }));
    }
}
