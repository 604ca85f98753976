//! An event leaves the server only once durable: what a watcher saw before
//! a SIGKILL is there after the restart.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::conn::WatchConn;
use crate::events::{create, ids_on_all_shards, offset_of};
use crate::support::{flip_definition, put_machine, Server, SHARDS};
use crate::writers::{flip_writer, Load};

/// An event leaves the server only once its record is durable: whatever a
/// watcher received before a SIGKILL is still there after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_a_watcher_received_survive_a_sigkill() {
    const WRITERS: usize = 4;
    const INSTANCES_PER_WRITER: usize = 2;
    const RUN_BEFORE_KILL: Duration = Duration::from_millis(1200);
    const MIN_EVENTS_SEEN: usize = 50;

    let mut server = Server::start(&[]);
    let mut setup = server.raw();
    put_machine(&mut setup, "flip", flip_definition());
    let ids = ids_on_all_shards("durable", WRITERS * INSTANCES_PER_WRITER / SHARDS);
    for id in &ids {
        create(&mut setup, "flip", id);
    }
    let mut conn = WatchConn::connect(server.addr(), "watcher");
    conn.ok("WATCH_ALL", json!({"include_ctx": false}));
    let watcher = std::thread::spawn(move || {
        let mut seen: Vec<Value> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match conn.poll_frame(Instant::now() + Duration::from_millis(200)) {
                Ok(Some(frame)) => seen.push(frame.json()),
                Ok(None) => {}
                Err(_) => break, // the server died
            }
        }
        seen
    });
    let addr = server.addr();
    let per_writer = ids.len() / WRITERS;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let mine = ids[w * per_writer..(w + 1) * per_writer].to_vec();
            // Far more than can be done before the kill; ends with an error.
            tokio::spawn(flip_writer(addr, mine, Load::new(1_000_000, 16)))
        })
        .collect();
    tokio::time::sleep(RUN_BEFORE_KILL).await;
    server.sigkill();
    for w in writers {
        let _ = w.await.expect("writer task");
    }
    let seen = watcher.join().expect("watcher thread");
    assert!(
        seen.len() >= MIN_EVENTS_SEEN,
        "only {} events seen before the kill\n{}",
        seen.len(),
        server.stderr_tail()
    );
    // Per instance, the newest event the watcher saw.
    let mut newest: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for e in &seen {
        let id = e["instance_id"].as_str().unwrap_or_default().to_string();
        let k = e["payload"]["k"].as_u64().unwrap_or_else(|| panic!("{e}"));
        let entry = newest.entry(id).or_insert((0, 0));
        *entry = (*entry).max((offset_of(e), k));
    }

    server.restart();
    let mut client = server.raw();
    let mut lost = Vec::new();
    for (id, (offset, k)) in &newest {
        let got = client.ok("GET_INSTANCE", json!({"instance_id": id}));
        let last = got["last_wal_offset"].as_u64().unwrap_or(0);
        let have_k = got["ctx"]["k"].as_u64().unwrap_or(0);
        if last < *offset || have_k < *k {
            lost.push(format!(
                "{id}: watcher saw offset {offset} (k {k}); after restart last_wal_offset \
                 {last}, ctx.k {have_k}"
            ));
        }
    }
    assert!(
        lost.is_empty(),
        "events delivered to a watcher were not durable:\n{}\nserver stderr:\n{}",
        lost.join("\n"),
        server.stderr_tail()
    );
    eprintln!(
        "durable events: {} seen before the kill, all {} instances intact",
        seen.len(),
        newest.len()
    );
}
