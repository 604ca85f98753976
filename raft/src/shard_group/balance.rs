//! Spreading the groups' leaders over the nodes (issue 14, item 1).
//!
//! Each group elects its own leader, and elections are a race: left alone,
//! the leaders of all groups tend to gather on one node (the first to
//! start, or the survivor of a failure), which then does every group's
//! leader work while the others only follow. Each group therefore has a
//! *preferred* leader: among its voters in id order, the one at position
//! `shard mod voters` — so with as many shards as nodes, each node is
//! preferred by one group, and with more, by an equal share.
//!
//! The leader of a group checks every `LEADER_BALANCE_INTERVAL_MS`: when
//! another voter is preferred, has held everything in this leader's log
//! for two checks in a row, and this leader has led the same term for at
//! least `LEADER_BALANCE_SETTLE_MS`, it hands the lead to it (openraft's
//! leader transfer: the target starts an election at once and wins it, the
//! others do not stand in its way). A preferred node that is down or
//! behind is left alone; once it is back and caught up, its group returns
//! to it. The settle time keeps a group from moving right after a
//! failover or a graceful hand-over, when the preferred node may be the one
//! that is going away.
//!
//! A transfer costs the group one election (a few milliseconds on a LAN):
//! requests caught in it get the retryable failover error, as in any
//! leader change.

use std::time::{Duration, Instant};

use openraft::rt::watch::WatchReceiver;
use openraft::ServerState;

use super::admin::status_of;
use super::member::{GroupRaft, MemberMachine};

/// How often a leader looks whether its group should move.
pub const LEADER_BALANCE_INTERVAL_MS: u64 = 1_000;
/// How long a leader leads one term before it hands its group to the
/// preferred node.
pub const LEADER_BALANCE_SETTLE_MS: u64 = 5_000;

/// The voter preferred to lead shard `shard`'s group.
pub fn preferred_leader(shard: usize, voters: &[u64]) -> Option<u64> {
    let mut sorted = voters.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    (!sorted.is_empty()).then(|| sorted[shard % sorted.len()])
}

/// Keep moving shard `shard`'s group to its preferred leader while this
/// member leads it; returns when the member's Raft stops.
pub async fn spread_leaders<M: MemberMachine>(raft: GroupRaft<M>, shard: usize) {
    let every = Duration::from_millis(LEADER_BALANCE_INTERVAL_MS);
    let settle = Duration::from_millis(LEADER_BALANCE_SETTLE_MS);
    // (term, since when this member has led it), and the target that was
    // caught up at the last check.
    let mut leading: Option<(u64, Instant)> = None;
    let mut ready: Option<u64> = None;
    loop {
        glommio::timer::sleep(every).await;
        let metrics = raft.metrics().borrow_watched().clone();
        match metrics.state {
            ServerState::Shutdown => return,
            ServerState::Leader => {}
            _ => {
                (leading, ready) = (None, None);
                continue;
            }
        }
        let since = match leading {
            Some((term, since)) if term == metrics.current_term => since,
            _ => {
                leading = Some((metrics.current_term, Instant::now()));
                ready = None;
                continue;
            }
        };
        let status = status_of(&raft);
        let voters: Vec<u64> = status.voters.iter().copied().collect();
        let Some(preferred) = preferred_leader(shard, &voters) else {
            continue;
        };
        let caught_up = preferred != metrics.id
            && status
                .replicas
                .iter()
                .any(|r| r.node == preferred && r.lag_entries == 0 && r.matched_index.is_some());
        if !caught_up {
            ready = None;
            continue;
        }
        if ready == Some(preferred) && since.elapsed() >= settle {
            tracing::info!(
                "shard {shard}: handing the group's lead to node {preferred}, its preferred leader"
            );
            if let Err(e) = raft.trigger().transfer_leader(preferred).await {
                tracing::warn!("shard {shard}: leader transfer to node {preferred} failed: {e}");
            }
            (leading, ready) = (None, None);
        } else {
            ready = Some(preferred);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_is_preferred_by_an_equal_share_of_the_groups() {
        let voters = [3, 1, 2];
        let picks: Vec<u64> = (0..6)
            .map(|s| preferred_leader(s, &voters).unwrap())
            .collect();
        assert_eq!(picks, [1, 2, 3, 1, 2, 3]);
        assert_eq!(preferred_leader(4, &[7]), Some(7));
        assert_eq!(preferred_leader(0, &[]), None);
    }
}
