//! A targeted reproduction of the gap the linearizability run found: a
//! WATCH_ALL resumed after a SIGKILL with `from_offset` = the offset of the
//! newest record, which shard 1 wrote after shard 0's newest record, must
//! replay that record. corestate up to 38c2fde answered the subscription but
//! never delivered it (the merge started its in-memory ring at the quieter
//! shard's watermark); fixed by starting it above every shard's history.

use std::time::Duration;

use serde_json::json;

use crate::client::Client;
use crate::support::{ids_on_shard, put_machine, Server};
use crate::workload::{definition, MACHINE};

/// How long the resumed stream is given to deliver the record.
const REPLAY_WAIT: Duration = Duration::from_secs(3);

#[test]
fn watch_all_resumed_after_sigkill_replays_the_newest_record_of_the_busier_shard() {
    let mut server = Server::start(&[]);
    let mut c = server.raw();
    put_machine(&mut c, MACHINE, definition());
    let quiet = ids_on_shard("quiet", 0, 1).remove(0);
    let busy = ids_on_shard("busy", 1, 1).remove(0);
    for id in [&quiet, &busy] {
        c.ok(
            "CREATE_INSTANCE",
            json!({"machine": MACHINE, "version": 1, "instance_id": id}),
        );
    }
    c.ok(
        "APPLY_EVENT",
        json!({"instance_id": quiet, "event": "START"}),
    );
    // Shard 1 writes last: its newest record is above everything shard 0 has.
    std::thread::sleep(Duration::from_millis(50));
    let last = c.ok(
        "APPLY_EVENT",
        json!({"instance_id": busy, "event": "START"}),
    );
    let last_offset = last["wal_offset"].as_u64().expect("wal_offset");
    drop(c);
    server.restart();
    let mut w = Client::connect(server.addr()).expect("connect");
    w.send(
        "WATCH_ALL",
        json!({"from_offset": last_offset, "include_ctx": false}),
    )
    .expect("send");
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + REPLAY_WAIT;
    while std::time::Instant::now() < deadline {
        if let Some(frame) = w.next_frame(Duration::from_millis(100)).expect("frame") {
            got.push(frame);
        }
    }
    let events: Vec<u64> = got
        .iter()
        .filter(|f| f["type"] == "event")
        .filter_map(|f| f["wal_offset"].as_u64())
        .collect();
    assert_eq!(
        events,
        vec![last_offset],
        "WATCH_ALL from_offset {last_offset} after a restart must replay the record at \
         {last_offset}; frames: {got:?}"
    );
}
