//! Failover: the leader of a three-node cluster is SIGKILLed (twice, the
//! second time right after the first comes back); every acknowledged write
//! is served by the next leader.

use std::time::Instant;

use serde_json::json;

use crate::harness::{Cluster, NOT_LEADER_CODE};
use crate::support::order_definition;

fn instance(i: usize) -> String {
    format!("order-{i}")
}

fn state_on_leader(cluster: &mut Cluster, id: &str) -> String {
    let (_, got) = cluster.ok_on_leader("GET_INSTANCE", json!({"instance_id": id}));
    got["state"].as_str().expect("a state").to_string()
}

#[test]
fn every_acknowledged_write_survives_the_loss_of_the_leader() {
    let mut cluster = Cluster::start(3);
    let (first, _) = cluster.ok_on_leader(
        "PUT_MACHINE",
        json!({"machine": "order", "version": 1, "definition": order_definition()}),
    );
    for i in 0..10 {
        let params = json!({"machine": "order", "version": 1, "instance_id": instance(i),
                            "idempotency_key": format!("create-{i}")});
        cluster.ok_on_leader("CREATE_INSTANCE", params);
    }
    for i in 0..5 {
        let params = json!({"instance_id": instance(i), "event": "PAY",
                            "idempotency_key": format!("pay-{i}")});
        cluster.ok_on_leader("APPLY_EVENT", params);
    }

    // Followers refuse what needs the leader: retryable, naming it.
    for (&id, _) in cluster.nodes.iter().filter(|(&id, _)| id != first) {
        let error = cluster
            .raw(id)
            .err("GET_INSTANCE", json!({"instance_id": instance(0)}));
        assert_eq!(error["code"], NOT_LEADER_CODE, "{error}");
        assert_eq!(error["retryable"], true, "{error}");
        assert_eq!(error["details"]["leader"], first, "{error}");
    }

    // The leader dies; another node serves everything acknowledged.
    cluster.nodes.get_mut(&first).unwrap().sigkill();
    let killed = Instant::now();
    assert_eq!(state_on_leader(&mut cluster, &instance(0)), "paid");
    eprintln!(
        "failover: a read was served {:?} after SIGKILL",
        killed.elapsed()
    );
    let (second, _) = cluster.ok_on_leader("GET_INSTANCE", json!({"instance_id": instance(9)}));
    assert_ne!(second, first);
    for i in 0..10 {
        let expected = if i < 5 { "paid" } else { "created" };
        assert_eq!(state_on_leader(&mut cluster, &instance(i)), expected, "{i}");
    }
    // The machine installed through the first leader is known to the
    // second (its catalog reads the group's), and the same definition put
    // again is the existing version, not a conflict.
    let (_, machine) =
        cluster.ok_on_leader("GET_MACHINE", json!({"machine": "order", "version": 1}));
    assert_eq!(machine["definition"]["initial"], "created", "{machine}");
    let (_, listed) = cluster.ok_on_leader("LIST_MACHINES", json!({}));
    assert_eq!(listed["items"][0]["machine"], "order", "{listed}");
    let (_, put) = cluster.ok_on_leader(
        "PUT_MACHINE",
        json!({"machine": "order", "version": 1, "definition": order_definition()}),
    );
    assert_eq!(put["created"], false, "{put}");
    for i in 5..10 {
        let params = json!({"instance_id": instance(i), "event": "PAY",
                            "idempotency_key": format!("pay-{i}")});
        cluster.ok_on_leader("APPLY_EVENT", params);
    }

    // The first leader comes back; the second dies at once: the third node
    // (or the first, once caught up) serves all of it.
    cluster.nodes.get_mut(&first).unwrap().restart();
    cluster.nodes.get_mut(&second).unwrap().sigkill();
    for i in 0..10 {
        assert_eq!(state_on_leader(&mut cluster, &instance(i)), "paid", "{i}");
    }
    // A retried create with its key names the same instance, never a copy.
    let (_, again) = cluster.ok_on_leader(
        "CREATE_INSTANCE",
        json!({"machine": "order", "version": 1, "instance_id": instance(3),
               "idempotency_key": "create-3"}),
    );
    assert_eq!(again["instance_id"], instance(3), "{again}");
}
