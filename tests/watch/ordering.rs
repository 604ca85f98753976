//! Under concurrent load on every shard, each watcher gets every event
//! exactly once, in strictly increasing `wal_offset`.

use std::collections::BTreeSet;
use std::sync::mpsc;

use serde_json::json;

use crate::events::{assert_same_offsets, create, ids_on_all_shards};
use crate::support::{flip_definition, put_machine, shard_of, Server, RESPONSE_TIMEOUT, SHARDS};
use crate::writers::{run_writers, spawn_watcher, Load};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_watcher_gets_every_event_once_in_offset_order_across_shards() {
    const WRITERS: usize = 8;
    const INSTANCES_PER_WRITER: usize = 4;
    const APPLIES_PER_INSTANCE: usize = 150;
    const WINDOW: usize = 16;
    const WATCHERS: usize = 3;

    let server = Server::start(&[]);
    let mut setup = server.raw();
    put_machine(&mut setup, "flip", flip_definition());
    let ids = ids_on_all_shards("load", WRITERS * INSTANCES_PER_WRITER / SHARDS);
    for id in &ids {
        create(&mut setup, "flip", id);
    }
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut targets = Vec::new();
    let mut watchers = Vec::new();
    for w in 0..WATCHERS {
        let (tx, rx) = mpsc::channel();
        targets.push(tx);
        watchers.push(spawn_watcher(
            server.addr(),
            format!("watcher {w}"),
            json!({"include_ctx": w == 0}),
            rx,
            ready_tx.clone(),
        ));
    }
    for _ in 0..WATCHERS {
        ready_rx
            .recv_timeout(RESPONSE_TIMEOUT)
            .expect("watcher subscribed");
    }

    // Writers: each owns INSTANCES_PER_WRITER instances, spread over shards.
    let load = Load::new(APPLIES_PER_INSTANCE, WINDOW);
    let (acked, elapsed) = run_writers(server.addr(), &ids, WRITERS, &load, &server).await;
    let total = acked.len();
    assert_eq!(total, WRITERS * INSTANCES_PER_WRITER * APPLIES_PER_INSTANCE);
    eprintln!(
        "ordering: {total} durable applies in {:.2} s ({:.0}/s) by {WRITERS} pipelined writers",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    for tx in &targets {
        tx.send(total).expect("tell watcher");
    }
    let mut want: Vec<(u64, String)> = acked;
    want.sort();
    let want_offsets: Vec<u64> = want.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        want_offsets.iter().collect::<BTreeSet<_>>().len(),
        total,
        "acknowledged offsets are unique"
    );
    let shards_seen: BTreeSet<usize> = want.iter().map(|(_, id)| shard_of(id)).collect();
    assert_eq!(shards_seen.len(), SHARDS, "load covers every shard");

    for (w, handle) in watchers.into_iter().enumerate() {
        let got = match handle.join().expect("watcher thread") {
            Ok(got) => got,
            Err(e) => panic!("{e}\nserver stderr:\n{}", server.stderr_tail()),
        };
        let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
        assert_same_offsets(&offsets, &want_offsets, &format!("watcher {w}"), &server);
        assert_eq!(got, want, "watcher {w}: instance ids per offset");
    }
}
