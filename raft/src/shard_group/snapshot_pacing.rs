//! When a member snapshots its group's state (issue 14, item 2: the
//! shard's snapshots are the group's, and each lets the log before it be
//! purged).
//!
//! A snapshot is the whole shard state: its cost grows with the state, not
//! with the writes since the last one. Counted in entries alone (openraft's
//! `SnapshotPolicy::LogsSinceLast`, which the member used before), a large
//! state was snapshotted again and again under a steady write load: with a
//! million instances each snapshot took ~0.6 s of CPU on every node (a
//! 109 MB image, `shard 0: group snapshot ... taken` in the log), and at
//! one write per entry (one client) 10,000 entries come every few seconds —
//! at ten million instances a node would do little else. So a member
//! snapshots once both hold:
//!
//! * at least `every_entries` entries were applied since its snapshot (what
//!   keeps a small state from being snapshotted every few entries), and
//! * those entries take at least `log_growth_percent` % of that snapshot's
//!   size in the log — the rule of Redis's AOF rewrite, and why its cost
//!   per write stays bounded: a snapshot is written once per as many log
//!   bytes as it holds (at 100 %), whatever the state's size. A restart
//!   then replays at most about that much log after its snapshot, and the
//!   log on disk holds at most that much more than the state.
//!
//! `log_growth_percent` 0 is the entry count alone. The first snapshot
//! (none yet: size 0) comes after `every_entries` entries.
//!
//! Each member decides for itself, as openraft's own policy did: a
//! follower's snapshot lets it purge its own log. The check runs as each
//! entry is applied, on the member's executor; openraft ignores a request
//! while a build is running.

use openraft::rt::watch::WatchReceiver;
use openraft::ServerState;

use super::member::GroupRaft;
use super::LoopMachine;

/// When a member snapshots (the module's doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPacing {
    pub every_entries: u64,
    pub log_growth_percent: u64,
}

/// The log a member applied since its current snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSinceSnapshot {
    pub entries: u64,
    /// The bytes those entries' records take.
    pub bytes: u64,
    /// The current snapshot's size (0: none yet).
    pub snapshot_bytes: u64,
}

impl SnapshotPacing {
    pub fn due(&self, since: &LogSinceSnapshot) -> bool {
        // Nothing new: nothing to snapshot, whatever the settings.
        since.entries > 0
            && since.entries >= self.every_entries
            && u128::from(since.bytes) * 100
                >= u128::from(since.snapshot_bytes) * u128::from(self.log_growth_percent)
    }
}

/// Snapshot shard `shard`'s group whenever `pacing` says it is due. The
/// machine wakes this task as it applies an entry that makes one due (so
/// a snapshot covers the entry that made it due, as openraft's own policy
/// did) and after each snapshot built or installed, when the bytes of the
/// snapshot it handed openraft were just dropped on this thread: they are
/// given back to the system then. Ends when the member's Raft stopped.
pub async fn pace_snapshots(
    raft: GroupRaft<LoopMachine>,
    machine: LoopMachine,
    pacing: SnapshotPacing,
    shard: usize,
) {
    let woken = machine.pace(pacing);
    let mut seen = machine.snapshot_index();
    while woken.recv_async().await.is_ok() {
        if raft.metrics().borrow_watched().state == ServerState::Shutdown {
            return;
        }
        let now = machine.snapshot_index();
        if now != seen {
            seen = now;
            shards::env::memory::release_freed_memory();
        }
        if !pacing.due(&machine.log_since_snapshot()) {
            continue;
        }
        // Ignored by openraft while a build runs; the entries applied
        // meanwhile count towards the next one.
        if let Err(e) = raft.trigger().snapshot().await {
            tracing::warn!("shard {shard}: cannot start a group snapshot: {e}");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn since(entries: u64, bytes: u64, snapshot_bytes: u64) -> LogSinceSnapshot {
        LogSinceSnapshot {
            entries,
            bytes,
            snapshot_bytes,
        }
    }

    #[test]
    fn a_snapshot_waits_for_enough_entries_and_for_a_log_as_large_as_the_share_asked() {
        let pacing = SnapshotPacing {
            every_entries: 100,
            log_growth_percent: 100,
        };
        // No snapshot yet: the entry count alone.
        assert!(!pacing.due(&since(99, 1 << 30, 0)));
        assert!(pacing.due(&since(100, 1, 0)));
        // A large state: entries are not enough, the log must match it.
        assert!(!pacing.due(&since(50_000, 999_999, 1_000_000)));
        assert!(pacing.due(&since(50_000, 1_000_000, 1_000_000)));
        // A small state: the entry count decides.
        assert!(!pacing.due(&since(99, 1_000_000, 1_000)));

        let half = SnapshotPacing {
            log_growth_percent: 50,
            ..pacing
        };
        assert!(half.due(&since(100, 500, 1_000)));
        assert!(!half.due(&since(100, 499, 1_000)));

        let entries_only = SnapshotPacing {
            log_growth_percent: 0,
            ..pacing
        };
        assert!(entries_only.due(&since(100, 0, u64::MAX)));

        let huge = SnapshotPacing {
            every_entries: 0,
            log_growth_percent: u64::MAX,
        };
        assert!(!huge.due(&since(1, u64::MAX, u64::MAX)));
        assert!(huge.due(&since(1, 0, 0)));
        assert!(!huge.due(&since(0, 0, 0)), "nothing applied since");
    }
}
