//! An idempotency key replays the first result — of an apply even after a
//! restart, and of a create.

use serde_json::json;

use crate::setup::{connect, connect_with_order, expect_code};
use crate::support::Server;

#[tokio::test]
async fn idempotent_apply_replays_the_first_result_even_after_restart() {
    let mut server = Server::start(&[]);
    let client = connect_with_order(&server).await;
    for id in ["i1", "i2"] {
        client
            .create_instance("order", 1, Some(id), Some(json!({"n": 0})), None)
            .await
            .unwrap();
    }

    let first = client
        .apply_event("i1", "PAY", Some(json!({"n": 1})), None, Some("k-pay"))
        .await
        .unwrap();
    assert!(first.applied);
    assert_eq!(first.to_state, "paid");

    // Same key, even with another event and payload: the first result,
    // marked not applied, and nothing written.
    let replay = client
        .apply_event("i1", "CANCEL", Some(json!({"n": 99})), None, Some("k-pay"))
        .await
        .unwrap();
    assert!(!replay.applied, "a replay reports applied: false");
    assert_eq!(replay.from_state, "created");
    assert_eq!(replay.to_state, "paid");
    assert_eq!(replay.wal_offset, first.wal_offset);
    assert_eq!(replay.ctx, first.ctx);
    let got = client.get_instance("i1").await.unwrap();
    assert_eq!(got.state, "paid");
    assert_eq!(
        got.last_wal_offset, first.wal_offset,
        "a replay writes nothing"
    );
    assert_eq!(got.ctx, json!({"n": 1}));

    // Keys are per instance.
    let other = client
        .apply_event("i2", "PAY", Some(json!({"n": 2})), None, Some("k-pay"))
        .await
        .unwrap();
    assert!(other.applied);
    assert_ne!(other.wal_offset, first.wal_offset);

    // A failed attempt does not consume its key.
    expect_code(
        client
            .apply_event("i2", "SHIP", None, None, Some("k-ship"))
            .await,
        "GUARD_FAILED",
    );
    client
        .apply_event("i2", "NOTE", Some(json!({"address": "x"})), None, None)
        .await
        .unwrap();
    let shipped = client
        .apply_event("i2", "SHIP", None, None, Some("k-ship"))
        .await
        .unwrap();
    assert!(shipped.applied);
    assert_eq!(shipped.to_state, "shipped");

    // Keys survive a restart.
    drop(client);
    server.restart();
    let client = connect(&server).await;
    let replay = client
        .apply_event("i1", "PAY", None, None, Some("k-pay"))
        .await
        .unwrap();
    assert!(!replay.applied, "key remembered across restart");
    assert_eq!(replay.wal_offset, first.wal_offset);
    assert_eq!(replay.to_state, "paid");
    assert_eq!(replay.ctx, first.ctx);
    let replay = client
        .apply_event("i2", "SHIP", None, None, Some("k-ship"))
        .await
        .unwrap();
    assert!(!replay.applied);
    assert_eq!(replay.wal_offset, shipped.wal_offset);
    let got = client.get_instance("i1").await.unwrap();
    assert_eq!(got.last_wal_offset, first.wal_offset);
    assert_eq!(got.state, "paid");

    // A deleted instance has nothing to replay.
    client.delete_instance("i1", None).await.unwrap();
    expect_code(
        client
            .apply_event("i1", "PAY", None, None, Some("k-pay"))
            .await,
        "INSTANCE_NOT_FOUND",
    );
}

#[tokio::test]
async fn idempotent_create_returns_the_first_result() {
    let mut server = Server::start(&[]);
    let client = connect_with_order(&server).await;

    let first = client
        .create_instance("order", 1, Some("c1"), Some(json!({"a": 1})), Some("ck"))
        .await
        .unwrap();
    let retry = client
        .create_instance("order", 1, Some("c1"), Some(json!({"a": 1})), Some("ck"))
        .await
        .unwrap();
    assert_eq!(retry.instance_id, "c1");
    assert_eq!(retry.wal_offset, first.wal_offset);
    assert_eq!(retry.state, "created");

    // Without an explicit id the retry names the same generated instance.
    let generated = client
        .create_instance("order", 1, None, None, Some("gen-key"))
        .await
        .unwrap();
    let retry = client
        .create_instance("order", 1, None, None, Some("gen-key"))
        .await
        .unwrap();
    assert_eq!(retry.instance_id, generated.instance_id);
    assert_eq!(retry.wal_offset, generated.wal_offset);
    let listed = client.list_instances(None, None, None, None).await.unwrap();
    assert_eq!(listed.total, 2, "no second instance was created");

    // The raw result says it was not applied again.
    let mut raw = server.raw();
    let params = json!({"machine": "order", "version": 1, "instance_id": "c1",
                        "initial_ctx": {"a": 1}, "idempotency_key": "ck"});
    let replay = raw.ok("CREATE_INSTANCE", params.clone());
    assert_eq!(replay["applied"], false, "{replay}");
    assert_eq!(replay["wal_offset"], first.wal_offset, "{replay}");
    // Without the key it is an ordinary duplicate.
    raw.err_code(
        "CREATE_INSTANCE",
        json!({"machine": "order", "version": 1, "instance_id": "c1"}),
        "INSTANCE_EXISTS",
    );

    drop(raw);
    server.restart();
    let mut raw = server.raw();
    let replay = raw.ok("CREATE_INSTANCE", params);
    assert_eq!(replay["applied"], false, "{replay}");
    assert_eq!(replay["wal_offset"], first.wal_offset, "{replay}");
}

/// The outcomes an instance remembers for its keys are bounded in bytes
/// too (1 MiB, shards::instance): with a context of 400 KiB, two keyed
/// applies fit and a third pushes the first out — its retry applies again
/// — before and after a restart alike.
#[tokio::test]
async fn a_large_context_keeps_fewer_idempotency_outcomes() {
    let mut server = Server::start(&[]);
    let mut c = server.raw();
    c.ok(
        "PUT_MACHINE",
        json!({"machine": "loop", "version": 1, "definition": {
            "states": ["s"], "initial": "s",
            "transitions": [{"from": "s", "event": "INC", "to": "s"}]}}),
    );
    let pad = "x".repeat(400 * 1024);
    c.ok(
        "CREATE_INSTANCE",
        json!({"machine": "loop", "version": 1, "instance_id": "big",
               "initial_ctx": {"pad": pad}}),
    );
    let apply = |c: &mut crate::support::RawClient, key: &str, n: u64| {
        c.ok(
            "APPLY_EVENT",
            json!({"instance_id": "big", "event": "INC", "payload": {"n": n},
                   "idempotency_key": key}),
        )
    };
    let offsets: Vec<u64> = (1..=3)
        .map(|n| {
            apply(&mut c, &format!("k{n}"), n)["wal_offset"]
                .as_u64()
                .unwrap()
        })
        .collect();
    for round in ["before a restart", "after a restart"] {
        for (n, offset) in [(2, offsets[1]), (3, offsets[2])] {
            let retry = apply(&mut c, &format!("k{n}"), 99);
            assert_eq!(retry["applied"], json!(false), "k{n} {round}");
            assert_eq!(retry["wal_offset"].as_u64(), Some(offset), "k{n} {round}");
            assert_eq!(retry["ctx"]["n"], json!(n), "k{n} {round}");
        }
        if round == "before a restart" {
            drop(c);
            server.restart();
            c = server.raw();
        }
    }
    // k1 was forgotten: its retry is a new apply (and remembered now).
    let again = apply(&mut c, "k1", 7);
    assert_eq!(again["applied"], json!(true));
    assert!(again["wal_offset"].as_u64().unwrap() > offsets[2]);
    assert_eq!(again["ctx"]["n"], json!(7));
    assert_eq!(again["ctx"]["pad"].as_str().map(str::len), Some(400 * 1024));
}
