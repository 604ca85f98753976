//! Corruption inside the log refuses start-up, naming the file, unless
//! `--salvage` is given.

use std::fs;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::acked_load::state_after;
use crate::segments::{last_written_segments, small_segments_config, write_sequential_workload};
use crate::support::Server;

#[test]
fn corruption_inside_the_log_refuses_start_unless_salvaging() {
    let dir = TempDir::new().unwrap();
    let (_config_dir, config) = small_segments_config();
    let mut server = Server::start_in(dir.path(), &["--config", &config]);
    let expected = write_sequential_workload(&server, 8, 4);
    server.sigkill();

    // The segment with the most data; damage a byte inside its first
    // record's JSON payload, with many acknowledged records after it.
    let (segment, end) = last_written_segments(dir.path())
        .into_iter()
        .max_by_key(|(_, end)| *end)
        .expect("a WAL segment with data");
    let bytes = fs::read(&segment).unwrap();
    let payload_start = bytes[..end]
        .iter()
        .position(|&b| b == b'{')
        .expect("a JSON payload in the first record");
    assert!(
        end > payload_start + 1000,
        "segment {} holds too little data ({end} bytes) to have later records",
        segment.display()
    );
    let victim = payload_start + 3;
    let file = fs::OpenOptions::new().write(true).open(&segment).unwrap();
    file.write_all_at(&[bytes[victim] ^ 0x01], victim as u64)
        .unwrap();
    file.sync_all().unwrap();
    drop(server);

    let exited =
        Server::expect_exit_in(dir.path(), &["--config", &config], Duration::from_secs(20));
    eprintln!(
        "server refused to start ({}):\n{}",
        exited.status, exited.stderr
    );
    let file_name = segment.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        exited.status.code().is_some_and(|c| c != 0),
        "server must exit with a non-zero code on a corrupt log, got {}; stderr:\n{}",
        exited.status,
        exited.stderr
    );
    assert!(
        exited.stderr.contains(&file_name),
        "the error must name the damaged file {file_name}; stderr:\n{}",
        exited.stderr
    );

    // With --salvage it starts, and what it keeps is a consistent prefix.
    let mut server = Server::start_in(dir.path(), &["--config", &config, "--salvage"]);
    let mut client = server.raw();
    client.assert_alive();
    for (id, want) in &expected {
        let response = client.call("GET_INSTANCE", json!({"instance_id": id}));
        if response["status"] != "ok" {
            continue;
        }
        let got = &response["result"];
        let n = got["ctx"]["n"].as_u64().expect("ctx.n");
        assert!(
            n <= want["ctx"]["n"].as_u64().unwrap(),
            "{id}: {got} vs {want}"
        );
        assert_eq!(
            got["state"],
            state_after(n),
            "{id}: state and ctx disagree: {got}"
        );
    }
    client.ok("LIST_INSTANCES", Value::Null);

    // The salvaged log is whole again: a normal start works.
    drop(client);
    server.sigkill();
    let server = Server::start_in(dir.path(), &["--config", &config]);
    server.raw().assert_alive();
}
