//! Per-shard latency histograms, and each replicated shard's group as this
//! node sees it (`corestate.cluster`): role, term, elections, log indexes,
//! each follower's lag (on the leader), forwarding and the time a turn
//! takes to commit. The group series come from the same status
//! REPLICATION_STATUS answers with, so the two always agree; a standalone
//! server has no group series.

use serde_json::Value;
use shards::latency::{LatencyHistogram, LATENCY_BUCKETS_US};
use shards::shard::ShardStats;

use super::Exposition;

/// Render one histogram series per shard: `name_bucket`, `_sum`, `_count`.
pub fn render_latency<'a>(
    out: &mut Exposition,
    name: &str,
    help: &str,
    series: impl Iterator<Item = (usize, &'a LatencyHistogram)>,
) {
    out.header(name, "histogram", help);
    for (shard, h) in series {
        let shard = shard.to_string();
        let mut cumulative = 0u64;
        for (bound_us, n) in LATENCY_BUCKETS_US.iter().zip(h.buckets) {
            cumulative += n;
            let le = format!("{}", *bound_us as f64 / 1e6);
            out.sample(
                &format!("{name}_bucket"),
                &[("shard", &shard), ("le", &le)],
                cumulative as f64,
            );
        }
        let labels = [("shard", shard.as_str())];
        out.sample(
            &format!("{name}_bucket"),
            &[("shard", &shard), ("le", "+Inf")],
            h.count as f64,
        );
        out.sample(&format!("{name}_sum"), &labels, h.sum_us as f64 / 1e6);
        out.sample(&format!("{name}_count"), &labels, h.count as f64);
    }
}

/// A group gauge or counter: name, type, help, and the status field (a
/// number; absent or null reads as 0).
const GROUP_SERIES: [(&str, &str, &str, &str); 9] = [
    (
        "corestate_group_term",
        "gauge",
        "Raft term of the shard's group as this member knows it.",
        "term",
    ),
    (
        "corestate_group_elections_total",
        "counter",
        "Elections begun in the group since this process started (terms the group advanced through).",
        "elections_seen",
    ),
    (
        "corestate_group_leader",
        "gauge",
        "Node id of the group's leader as this member knows it (0: none known).",
        "leader",
    ),
    (
        "corestate_group_last_log_index",
        "gauge",
        "Last index in this member's log.",
        "last_log_index",
    ),
    (
        "corestate_group_commit_index",
        "gauge",
        "Last index this member knows committed on a majority.",
        "commit_index",
    ),
    (
        "corestate_group_applied_index",
        "gauge",
        "Last index this member applied.",
        "applied_index",
    ),
    (
        "corestate_group_forwarded_ops_total",
        "counter",
        "Requests this member forwarded to its group's leader.",
        "forwarded_ops",
    ),
    (
        "corestate_group_forwarded_batches_total",
        "counter",
        "Forwarding batches (one per turn per leader) this member sent.",
        "forwarded_batches",
    ),
    (
        "corestate_group_batch_parts_in_doubt",
        "gauge",
        "Cross-shard batch parts prepared in this group and not yet decided.",
        "batch_parts_in_doubt",
    ),
];

/// The group series of every replicated shard among `stats`.
pub fn render_groups(out: &mut Exposition, stats: &[&ShardStats]) {
    let groups: Vec<(usize, &Value)> = stats
        .iter()
        .filter_map(|s| s.group.as_ref().map(|g| (s.shard, g)))
        .collect();
    if groups.is_empty() {
        return;
    }
    out.header(
        "corestate_group_is_leader",
        "gauge",
        "1 while this member leads its shard's group.",
    );
    for (shard, g) in &groups {
        let leads = g["role"] == "leader";
        out.sample(
            "corestate_group_is_leader",
            &[("shard", &shard.to_string())],
            leads as u8 as f64,
        );
    }
    for (name, kind, help, field) in GROUP_SERIES {
        out.header(name, kind, help);
        for (shard, g) in &groups {
            let value = g[field].as_u64().unwrap_or(0);
            out.sample(name, &[("shard", &shard.to_string())], value as f64);
        }
    }
    let name = "corestate_group_follower_lag_entries";
    out.header(
        name,
        "gauge",
        "On the leader: entries of its log each other member does not have yet.",
    );
    for (shard, g) in &groups {
        for r in g["replicas"].as_array().into_iter().flatten() {
            let follower = r["node"].as_u64().unwrap_or(0).to_string();
            let lag = r["lag_entries"].as_u64().unwrap_or(0);
            out.sample(
                name,
                &[("shard", &shard.to_string()), ("follower", &follower)],
                lag as f64,
            );
        }
    }
    render_latency(
        out,
        "corestate_group_turn_commit_latency_seconds",
        "On the leader: from proposing a turn's entry to its commit on a majority and apply here.",
        stats
            .iter()
            .filter(|s| s.group.is_some())
            .map(|s| (s.shard, &s.turn_commit_latency)),
    );
}
