//! `from_offset` replays exactly the suffix of the history — also one
//! written before a restart — then continues live with no gap or duplicate.

use std::time::Duration;

use serde_json::{json, Value};

use crate::conn::{WatchConn, EVENT_TIMEOUT};
use crate::events::{apply, assert_same_offsets, create, ids_on_all_shards, offset_of};
use crate::support::{flip_definition, put_machine, shard_of, RawClient, Server};
use crate::writers::{flip_writer, Load};

/// Build a history on both shards (single applies, a single-shard atomic
/// batch, a cross-shard atomic batch); returns every event offset with its
/// instance, sorted.
fn build_history(client: &mut RawClient, ids: &[String], rounds: usize) -> Vec<(u64, String)> {
    let mut events = Vec::new();
    for round in 0..rounds {
        for id in ids {
            let a = apply(client, "flip", id, "FLIP", Some(json!({"round": round})));
            events.push((a.offset, id.clone()));
        }
    }
    for ops_ids in [
        vec![ids[0].clone(), ids[2].clone()],
        vec![ids[0].clone(), ids[1].clone()],
    ] {
        let ops: Vec<Value> = ops_ids
            .iter()
            .map(|id| json!({"op": "APPLY_EVENT", "params": {"instance_id": id, "event": "FLIP"}}))
            .collect();
        let r = client.ok("BATCH", json!({"mode": "atomic", "ops": ops}));
        for (res, id) in r["results"]
            .as_array()
            .expect("results")
            .iter()
            .zip(&ops_ids)
        {
            assert_eq!(res["status"], "ok", "{r}");
            events.push((res["result"]["wal_offset"].as_u64().unwrap(), id.clone()));
        }
    }
    events.sort();
    events
}

fn received(events: &[Value]) -> Vec<(u64, String)> {
    events
        .iter()
        .map(|e| {
            (
                offset_of(e),
                e["instance_id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn from_offset_replays_exactly_the_suffix_then_continues_live() {
    let server = Server::start(&[]);
    let mut client = server.raw();
    put_machine(&mut client, "flip", flip_definition());
    let ids = ids_on_all_shards("hist", 2);
    assert_eq!(shard_of(&ids[0]), shard_of(&ids[2]));
    assert_ne!(shard_of(&ids[0]), shard_of(&ids[1]));
    for id in &ids {
        create(&mut client, "flip", id);
    }
    let history = build_history(&mut client, &ids, 60);
    let mid = history[history.len() / 2].0;
    let suffix: Vec<(u64, String)> = history.iter().filter(|(o, _)| *o >= mid).cloned().collect();

    // Exactly at an event's offset: that event and everything after.
    let mut at = WatchConn::connect(server.addr(), "from mid");
    let r = at.ok(
        "WATCH_ALL",
        json!({"from_offset": mid, "include_ctx": false}),
    );
    assert_eq!(
        r["wal_offset"], mid,
        "WATCH_ALL answers the offset it starts at: {r}"
    );
    // Just after it: the suffix without that event.
    let mut after = WatchConn::connect(server.addr(), "from mid+1");
    after.ok(
        "WATCH_ALL",
        json!({"from_offset": mid + 1, "include_ctx": false}),
    );
    // The whole history.
    let mut zero = WatchConn::connect(server.addr(), "from 0");
    zero.ok("WATCH_ALL", json!({"from_offset": 0, "include_ctx": false}));
    // One instance's history from the middle.
    let mut one = WatchConn::connect(server.addr(), "instance from mid");
    one.ok(
        "WATCH_INSTANCE",
        json!({"instance_id": ids[1], "from_offset": mid, "include_ctx": false}),
    );

    // Live traffic while they replay: the switch to live must lose nothing.
    let live_ids = ids.clone();
    let addr = server.addr();
    let live = tokio::spawn(async move { flip_writer(addr, live_ids, Load::new(40, 8)).await });
    let live = match live.await.expect("live writer") {
        Ok(live) => live,
        Err(e) => panic!("live writer: {e}\n{}", server.stderr_tail()),
    };
    let mut tail = live.clone();
    tail.sort();

    let expect = |prefix: &[(u64, String)], keep: &dyn Fn(&(u64, String)) -> bool| {
        prefix
            .iter()
            .chain(tail.iter())
            .filter(|x| keep(x))
            .cloned()
            .collect::<Vec<_>>()
    };
    let cases: Vec<(&mut WatchConn, Vec<(u64, String)>)> = vec![
        (&mut at, expect(&suffix, &|_| true)),
        (&mut after, expect(&suffix, &|(o, _)| *o > mid)),
        (&mut zero, expect(&history, &|_| true)),
        (&mut one, expect(&suffix, &|(_, id)| *id == ids[1])),
    ];
    for (conn, want) in cases {
        let label = conn.label.clone();
        let got = received(&conn.expect_events(want.len(), "replay then live"));
        let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
        let want_offsets: Vec<u64> = want.iter().map(|(o, _)| *o).collect();
        assert_same_offsets(&offsets, &want_offsets, &label, &server);
        assert_eq!(got, want, "{label}");
    }
}

#[test]
fn from_offset_replays_history_written_before_a_restart() {
    let mut server = Server::start(&[]);
    let mut client = server.raw();
    put_machine(&mut client, "flip", flip_definition());
    let ids = ids_on_all_shards("restart", 2);
    for id in &ids {
        create(&mut client, "flip", id);
    }
    let history = build_history(&mut client, &ids, 10);
    let mid = history[history.len() / 2].0;
    server.restart();

    let mut conn = WatchConn::connect(server.addr(), "after restart");
    conn.ok(
        "WATCH_ALL",
        json!({"from_offset": mid, "include_ctx": false}),
    );
    let want: Vec<(u64, String)> = history.iter().filter(|(o, _)| *o >= mid).cloned().collect();
    let mut got = Vec::new();
    while got.len() < want.len() {
        match conn.next_event(Duration::from_secs(5)) {
            Some(e) => got.push(e),
            None => break,
        }
    }
    let got = received(&got);
    assert_eq!(
        got,
        want,
        "WATCH_ALL from_offset {mid} after a restart must replay the {} events at or after it \
         from the logs; got {} events\nserver stderr:\n{}",
        want.len(),
        got.len(),
        server.stderr_tail()
    );
    // And then live events.
    let mut client = server.raw();
    let a = apply(&mut client, "flip", &ids[1], "FLIP", None);
    let e = conn
        .next_event(EVENT_TIMEOUT)
        .expect("live event after the replay");
    assert_eq!(offset_of(&e), a.offset);
}
