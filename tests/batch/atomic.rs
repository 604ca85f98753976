//! An atomic batch applies everything on every shard it touches, its reads
//! see its own writes, and watchers get its events.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::elements::{apply_op, assert_ok_entry, get_op, op};
use crate::instances::{account_definition, get, order_definition, pair};
use crate::support::{error_code, put_machine, rstmdb_connect, Server};
use crate::watcher::Watcher;

#[test]
fn atomic_batches_apply_everything_on_every_shard() {
    let server = Server::start(&[]);
    let mut c = server.raw();
    put_machine(&mut c, "acct", account_definition());
    put_machine(&mut c, "order", order_definition());
    let (a, b) = pair("ok");
    let mut watcher = Watcher::subscribe(server.addr(), json!({"include_ctx": true}));

    // Cross-shard: creates, applies, reads that see the batch's own writes.
    let ops = vec![
        op(
            "CREATE_INSTANCE",
            json!({"machine": "acct", "version": 1, "instance_id": a,
                                     "initial_ctx": {"bal": 100}}),
        ),
        op(
            "CREATE_INSTANCE",
            json!({"machine": "acct", "version": 1, "instance_id": b,
                                     "initial_ctx": {"bal": 0}}),
        ),
        apply_op(&a, "MOVE", json!({"bal": 60})),
        apply_op(&b, "MOVE", json!({"bal": 40})),
        get_op(&a),
        get_op(&b),
        op("GET_MACHINE", json!({"machine": "acct", "version": 1})),
    ];
    let r = c.ok("BATCH", json!({"mode": "atomic", "ops": ops}));
    let results = r["results"].as_array().expect("results");
    assert_eq!(results.len(), ops.len(), "{r}");
    for (i, entry) in results.iter().enumerate() {
        assert_ok_entry(entry, &format!("op {i}"));
    }
    assert_eq!(results[4]["result"]["ctx"], json!({"bal": 60}), "{r}");
    assert_eq!(results[5]["result"]["ctx"], json!({"bal": 40}), "{r}");
    let mut offsets: Vec<u64> = (0..4)
        .map(|i| results[i]["result"]["wal_offset"].as_u64().unwrap())
        .collect();
    assert_eq!(
        offsets.iter().collect::<BTreeSet<_>>().len(),
        4,
        "distinct offsets: {offsets:?}"
    );
    // Visible outside the batch at once, on both shards.
    assert_eq!(get(&mut c, &a).unwrap()["ctx"], json!({"bal": 60}));
    assert_eq!(get(&mut c, &b).unwrap()["ctx"], json!({"bal": 40}));

    // The watcher gets both applies, in offset order, and nothing for creates.
    let apply_offsets = {
        let mut o = vec![offsets[2], offsets[3]];
        o.sort_unstable();
        o
    };
    let got = watcher.expect_events(2, "cross-shard batch", &server);
    assert_eq!(
        got.iter()
            .map(|e| e["wal_offset"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        apply_offsets
    );
    for e in &got {
        let want_ctx = if e["instance_id"] == a.as_str() {
            json!({"bal": 60})
        } else {
            json!({"bal": 40})
        };
        assert_eq!(e["ctx"], want_ctx, "{e}");
        assert_eq!(e["event"], "MOVE", "{e}");
    }

    // Single-shard fast path: several ops on one instance, one record.
    let (x, _) = pair("single");
    let r = c.ok(
        "BATCH",
        json!({"mode": "atomic", "ops": [
            op("CREATE_INSTANCE", json!({"machine": "order", "version": 1, "instance_id": x})),
            apply_op(&x, "PAY", json!({"p": 1})),
            apply_op(&x, "SHIP", json!({"s": 2})),
            get_op(&x),
        ]}),
    );
    assert_eq!(r["results"][3]["result"]["state"], "shipped", "{r}");
    assert_eq!(
        r["results"][3]["result"]["ctx"],
        json!({"p": 1, "s": 2}),
        "{r}"
    );
    offsets = (1..3)
        .map(|i| r["results"][i]["result"]["wal_offset"].as_u64().unwrap())
        .collect();
    let got = watcher.expect_events(2, "single-shard batch", &server);
    assert_eq!(
        got.iter()
            .map(|e| e["wal_offset"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        offsets
    );
    assert_eq!(got[0]["to_state"], "paid");
    assert_eq!(got[1]["to_state"], "shipped");

    // A DELETE in an atomic batch, with a create on the other shard.
    let (_, z) = pair("single");
    let r = c.ok(
        "BATCH",
        json!({"mode": "atomic", "ops": [
            op("DELETE_INSTANCE", json!({"instance_id": x})),
            op("CREATE_INSTANCE", json!({"machine": "order", "version": 1, "instance_id": z})),
        ]}),
    );
    assert_eq!(r["results"][0]["result"]["deleted"], true, "{r}");
    assert!(get(&mut c, &x).is_none());
    assert_eq!(get(&mut c, &z).unwrap()["state"], "created");
    watcher.expect_events(0, "delete and create send nothing", &server);

    // The official client's batch(): atomic and best effort.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = rstmdb_connect(server.addr(), None).await.unwrap();
        let r = client
            .batch(
                vec![
                    apply_op(&a, "MOVE", json!({"bal": 50})),
                    apply_op(&b, "MOVE", json!({"bal": 50})),
                ],
                true,
            )
            .await
            .unwrap();
        assert_eq!(r["results"][1]["result"]["ctx"], json!({"bal": 50}), "{r}");
        let err = client
            .batch(
                vec![
                    apply_op(&a, "MOVE", json!({"bal": 0})),
                    apply_op(&b, "NOPE", Value::Null),
                ],
                true,
            )
            .await
            .unwrap_err();
        assert_eq!(error_code(&err), "BAD_REQUEST", "{err}");
        let r = client
            .batch(vec![get_op(&a), apply_op(&b, "NOPE", Value::Null)], false)
            .await
            .unwrap();
        assert_eq!(r["results"][0]["result"]["ctx"], json!({"bal": 50}), "{r}");
        assert_eq!(r["results"][1]["status"], "error", "{r}");
    });
}
