//! Leaders spread over the nodes: each group's lead moves to its preferred
//! node (its voters in id order, position `shard mod voters`), and comes
//! back to it after that node was killed and restarted.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::Cluster;

/// How long leaders may take to settle: a leader hands its group over
/// after leading one term for 5 s (`LEADER_BALANCE_SETTLE_MS`), checked
/// every second, plus elections.
const BALANCE_TIMEOUT: Duration = Duration::from_secs(30);

/// Each shard's leader as node `via` reports it.
fn leaders(cluster: &mut Cluster, via: u64) -> Vec<Option<u64>> {
    let status = cluster.ok_on(via, "REPLICATION_STATUS", json!({}));
    status["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .map(|s| s["leader"].as_u64())
        .collect()
}

/// Wait until node `via` reports `expected` as the shards' leaders.
fn settle(cluster: &mut Cluster, via: u64, expected: &[Option<u64>]) {
    let started = Instant::now();
    loop {
        let seen = leaders(cluster, via);
        if seen == expected {
            return;
        }
        assert!(
            started.elapsed() < BALANCE_TIMEOUT,
            "leaders {seen:?}, expected {expected:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn each_node_leads_its_share_of_the_groups_again_after_a_restart() {
    let mut cluster = Cluster::start_sharded(3, 3);
    let spread = [Some(1), Some(2), Some(3)];
    settle(&mut cluster, 3, &spread);
    // Node 1 dies: its group is led elsewhere meanwhile...
    cluster.nodes.get_mut(&1).unwrap().sigkill();
    let started = Instant::now();
    loop {
        let seen = leaders(&mut cluster, 3);
        if seen[0].is_some_and(|l| l != 1) {
            break;
        }
        assert!(started.elapsed() < BALANCE_TIMEOUT, "{seen:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // ...and returns to it once it is back and caught up.
    cluster.nodes.get_mut(&1).unwrap().restart();
    settle(&mut cluster, 2, &spread);
    settle(&mut cluster, 1, &spread);
}
