//! How long a three-node cluster takes to acknowledge writes again after
//! its leader is SIGKILLed: from the kill to the first write acknowledged
//! by another node, probing every live node in turn. The killed node is
//! restarted before the next kill, so every kill meets a full cluster.
//!
//! `CORESTATE_FAILOVER_KILLS` sets the number of kills (default
//! `FAILOVER_KILLS_DEFAULT`); `CORESTATE_FAILOVER_REPORT` names a file to
//! write the measurements to as JSON (bench-results/ keeps the published
//! run, with its command).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{Cluster, CLUSTER_SETTLE_TIMEOUT, NOT_LEADER_CODE};
use crate::support::flip_definition;

/// Kills in the README's test command (each takes about a second).
pub const FAILOVER_KILLS_DEFAULT: usize = 3;
/// The goal for one failover.
pub const FAILOVER_GOAL: Duration = Duration::from_secs(2);

fn kills() -> usize {
    std::env::var("CORESTATE_FAILOVER_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(FAILOVER_KILLS_DEFAULT)
}

/// Apply FLIP to `flipper` through the first node that takes it (any node
/// forwards to the leader; while there is none, each answers the failover
/// refusal).
fn write_somewhere(cluster: &mut Cluster, key: &str) {
    let started = Instant::now();
    loop {
        for server in cluster.nodes.values_mut() {
            if !server.is_running() {
                continue;
            }
            let response = server.raw().call(
                "APPLY_EVENT",
                json!({"instance_id": "flipper", "event": "FLIP", "idempotency_key": key}),
            );
            match response["status"].as_str() {
                Some("ok") => return,
                _ => assert_eq!(
                    response["error"]["code"], NOT_LEADER_CODE,
                    "only the failover refusal is expected: {response}"
                ),
            }
        }
        assert!(started.elapsed() < CLUSTER_SETTLE_TIMEOUT, "no write taken");
    }
}

#[test]
fn a_killed_leader_is_replaced_within_the_goal() {
    let mut cluster = Cluster::start(3);
    cluster.ok_anywhere(
        "PUT_MACHINE",
        json!({"machine": "flip", "version": 1, "definition": flip_definition()}),
    );
    cluster.ok_anywhere(
        "CREATE_INSTANCE",
        json!({"machine": "flip", "version": 1, "instance_id": "flipper"}),
    );
    let mut times = Vec::new();
    for kill in 0..kills() {
        write_somewhere(&mut cluster, &format!("before-{kill}"));
        let leader = cluster.leader();
        cluster.nodes.get_mut(&leader).unwrap().sigkill();
        let killed = Instant::now();
        write_somewhere(&mut cluster, &format!("after-{kill}"));
        times.push(killed.elapsed());
        cluster.nodes.get_mut(&leader).unwrap().restart();
    }
    let mut sorted = times.clone();
    sorted.sort();
    let p50 = sorted[sorted.len() / 2];
    let max = *sorted.last().unwrap();
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "failover over {} kills: p50 {:.0} ms, max {:.0} ms",
        times.len(),
        ms(&p50),
        ms(&max)
    );
    if let Ok(path) = std::env::var("CORESTATE_FAILOVER_REPORT") {
        let report = json!({
            "kills": times.len(),
            "failover_ms": times.iter().map(ms).collect::<Vec<_>>(),
            "p50_ms": ms(&p50),
            "max_ms": ms(&max),
            "goal_ms": ms(&FAILOVER_GOAL),
        });
        std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap())
            .expect("write the failover report");
    }
    assert!(max <= FAILOVER_GOAL * 2, "a failover took {max:?}");
}
