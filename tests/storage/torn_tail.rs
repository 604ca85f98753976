//! A torn WAL tail is truncated with a warning; nothing acknowledged is lost.

use std::fs;
use std::os::unix::fs::FileExt;

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::segments::{last_written_segments, small_segments_config, write_sequential_workload};
use crate::support::Server;

fn assert_all_present(server: &Server, expected: &[(String, Value)]) {
    let mut client = server.raw();
    for (id, want) in expected {
        let response = client.call("GET_INSTANCE", json!({"instance_id": id}));
        assert_eq!(
            response["status"],
            "ok",
            "{id} lost after recovery: {response}\nstderr:\n{}",
            server.stderr_tail()
        );
        assert_eq!(&response["result"], want, "{id} differs after recovery");
    }
}

#[test]
fn torn_tail_is_truncated_with_a_warning_and_nothing_acknowledged_is_lost() {
    let dir = TempDir::new().unwrap();
    let (_config_dir, config) = small_segments_config();
    let mut server = Server::start_in(dir.path(), &["--config", &config]);
    let expected = write_sequential_workload(&server, 6, 3);
    server.sigkill();

    let segments = last_written_segments(dir.path());
    assert!(
        !segments.is_empty(),
        "no WAL data found under {}/shard-*/wal/*.wal",
        dir.path().display()
    );
    // One shard gets random bytes, the other a torn copy of a real record
    // (its header and the start of its payload), as a crash mid-write leaves.
    for (i, (segment, end)) in segments.iter().enumerate() {
        let tail: Vec<u8> = if i % 2 == 0 {
            b"\xde\xad\xbe\xef half a record \x01\x02\x03".to_vec()
        } else {
            fs::read(segment).unwrap()[..60].to_vec()
        };
        let file = fs::OpenOptions::new().write(true).open(segment).unwrap();
        file.write_all_at(&tail, *end as u64).unwrap();
        file.sync_all().unwrap();
        eprintln!(
            "appended {} torn bytes to {} at {end}",
            tail.len(),
            segment.display()
        );
    }

    server.restart();
    let stderr = server.stderr();
    assert!(
        stderr.to_lowercase().contains("warn"),
        "recovery of a torn tail must log a warning; stderr:\n{stderr}"
    );
    for line in stderr.lines().filter(|l| l.to_lowercase().contains("warn")) {
        eprintln!("server warned: {line}");
    }
    for (segment, _) in &segments {
        let name = segment.to_string_lossy();
        assert!(
            stderr.contains(name.as_ref()),
            "the warning should name the repaired file {name}; stderr:\n{stderr}"
        );
    }
    assert_all_present(&server, &expected);

    // Appends after the repair are readable by the next recovery.
    let mut client = server.raw();
    let applied = client.ok(
        "APPLY_EVENT",
        json!({"instance_id": "seq-00", "event": "FLIP", "payload": {"after": "repair"}}),
    );
    let created = client.ok(
        "CREATE_INSTANCE",
        json!({"machine": "flip", "version": 1, "instance_id": "after-repair"}),
    );
    server.restart();
    let mut client = server.raw();
    let got = client.ok("GET_INSTANCE", json!({"instance_id": "seq-00"}));
    assert_eq!(got["ctx"]["after"], "repair", "{got}");
    assert_eq!(got["last_wal_offset"], applied["wal_offset"], "{got}");
    let got = client.ok("GET_INSTANCE", json!({"instance_id": "after-repair"}));
    assert_eq!(got["last_wal_offset"], created["wal_offset"], "{got}");
    assert_all_present(&server, &expected[1..]);
}
