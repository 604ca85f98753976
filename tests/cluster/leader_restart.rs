//! A leader SIGKILLed and restarted at once never leads its old term again.
//!
//! Why it matters: a leader sends entries to its followers while it writes
//! them to its own log. Killed in between, it comes back without entries
//! its followers hold — possibly committed by them. Were it to resume the
//! same term (openraft's "leader restore", on by default), its next
//! entries would take the same log ids (term, index) as those, with other
//! content; Raft's log matching then believes the logs agree, and the
//! replicas diverge for good. The 600 s linearizability run found exactly
//! that: one replica with a transition the others lack, and watch events
//! for entries the final log does not hold. A restarted node must win a
//! new election (a higher term) to lead.

use serde_json::json;

use crate::harness::Cluster;

/// Kill-and-restart rounds.
const ROUNDS: usize = 3;
/// Elections slow enough that a restart always beats them: without the
/// rule, the restarted node would find its old term still current.
const SLOW_ELECTIONS: &str = "    election_timeout_ms: 1500\n";

#[test]
fn a_leader_restarted_at_once_wins_a_new_term_before_leading_again() {
    let mut cluster = Cluster::start_with(3, false, SLOW_ELECTIONS);
    let leader = cluster.leader();
    cluster.flip_instances(leader, &["r-0"]);
    for round in 0..ROUNDS {
        let leader = cluster.leader();
        let term = cluster.term_on(leader);
        let flip = json!({"instance_id": "r-0", "event": "FLIP",
                          "idempotency_key": format!("round-{round}")});
        cluster.ok_on(leader, "APPLY_EVENT", flip);
        // SIGKILL, then start again on the same data as fast as we can.
        let killed = std::time::Instant::now();
        cluster.nodes.get_mut(&leader).unwrap().restart();
        eprintln!(
            "round {round}: node {leader} back in {:?}",
            killed.elapsed()
        );
        let next = cluster.leader();
        let next_term = cluster.term_on(next);
        assert!(
            next_term > term,
            "round {round}: node {next} leads term {next_term}, the term node {leader} \
             led (term {term}) before its restart"
        );
        let got = cluster.ok_on(next, "GET_INSTANCE", json!({"instance_id": "r-0"}));
        let expected = if round % 2 == 0 { "b" } else { "a" };
        assert_eq!(got["state"], expected, "round {round}: {got}");
    }
}
