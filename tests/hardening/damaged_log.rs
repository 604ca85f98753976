//! Missing or damaged log files: a deleted segment (in the middle, or the
//! newest) and a flipped byte in a record a clean shutdown had sealed are
//! refused at start-up, naming the file — never taken for a torn write or
//! the end of the log — and `--salvage` starts from what is there, saying
//! what it dropped.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use tempfile::TempDir;

use crate::support::{data_end, write_config, Proc, Server, EXIT_TIMEOUT};

const EXIT_WAIT: Duration = Duration::from_secs(20);

fn small_segments_config() -> (TempDir, String) {
    let dir = TempDir::new().unwrap();
    let path = write_config(
        dir.path(),
        "storage:\n  wal_segment_size_mb: 1\ncompaction:\n  enabled: false\n",
    );
    (dir, path.to_string_lossy().into_owned())
}

/// Shard 0's segment files, ascending.
fn shard0_segments(data_dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(data_dir.join("shard-000/wal"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    out.sort();
    out
}

fn fill(server: &Server, instances: usize) {
    let mut c = server.raw();
    c.ok(
        "PUT_MACHINE",
        json!({"machine": "m", "version": 1, "definition":
            {"states": ["a"], "initial": "a", "transitions": []}}),
    );
    let pad = "p".repeat(2000);
    for i in 0..instances {
        c.ok(
            "CREATE_INSTANCE",
            json!({"machine": "m", "version": 1, "instance_id": format!("i{i}"),
                   "initial_ctx": {"pad": pad}}),
        );
    }
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn a_deleted_segment_in_the_middle_or_at_the_end_refuses_start_naming_it() {
    let dir = TempDir::new().unwrap();
    let (_cfg, config) = small_segments_config();
    let args = ["--config", config.as_str()];
    let mut server = Server::start_in(dir.path(), &args);
    fill(&server, 3_000);
    server.sigkill();
    let segments = shard0_segments(dir.path());
    let with_data: Vec<&PathBuf> = segments
        .iter()
        .filter(|p| data_end(&fs::read(p).unwrap()) > 0)
        .collect();
    assert!(with_data.len() >= 3, "{segments:?}");

    // A segment in the middle.
    let middle = with_data[1].clone();
    let aside = dir.path().join("aside.wal");
    fs::rename(&middle, &aside).unwrap();
    let exited = Server::expect_exit_in(dir.path(), &args, EXIT_WAIT);
    assert!(
        exited.status.code().is_some_and(|c| c != 0),
        "{}",
        exited.stderr
    );
    assert!(exited.stderr.contains(&name(&middle)), "{}", exited.stderr);
    assert!(exited.stderr.contains("missing"), "{}", exited.stderr);
    // Put back, everything is there: the refusal changed nothing.
    fs::rename(&aside, &middle).unwrap();
    let mut server = Server::start_in(dir.path(), &args);
    let mut c = server.raw();
    assert_eq!(c.ok("LIST_INSTANCES", json!({"limit": 1}))["total"], 3_000);
    server.sigkill();

    // The newest segment with data (a prepared empty one may follow it).
    let last = shard0_segments(dir.path())
        .into_iter()
        .rev()
        .find(|p| data_end(&fs::read(p).unwrap()) > 0)
        .unwrap();
    fs::remove_file(&last).unwrap();
    let exited = Server::expect_exit_in(dir.path(), &args, EXIT_WAIT);
    assert!(
        exited.status.code().is_some_and(|c| c != 0),
        "{}",
        exited.stderr
    );
    assert!(exited.stderr.contains(&name(&last)), "{}", exited.stderr);

    // --salvage starts from what is there and says what it dropped.
    let salvage = ["--config", config.as_str(), "--salvage"];
    let mut server = Server::start_in(dir.path(), &salvage);
    let total = server.raw().ok("LIST_INSTANCES", json!({"limit": 1}))["total"]
        .as_u64()
        .unwrap();
    assert!(total < 3_000 && total > 0, "{total}");
    assert!(server.stderr().contains("--salvage"), "{}", server.stderr());
    server.sigkill();
    // After salvage the log is whole again.
    let server = Server::start_in(dir.path(), &args);
    assert_eq!(
        server.raw().ok("LIST_INSTANCES", json!({"limit": 1}))["total"],
        total
    );
}

/// Start of the last record in a segment's written data.
fn last_record_start(bytes: &[u8]) -> usize {
    let end = data_end(bytes);
    let mut pos = 0usize;
    let mut last = 0usize;
    while pos + 40 <= end {
        let len = u32::from_le_bytes(bytes[pos + 8..pos + 12].try_into().unwrap()) as usize;
        last = pos;
        pos += 40 + len;
    }
    last
}

#[test]
fn a_flipped_byte_in_the_last_record_after_a_clean_shutdown_is_damage() {
    let mut server = Proc::start(&[], &[]);
    let mut c = server.raw();
    c.ok(
        "PUT_MACHINE",
        json!({"machine": "m", "version": 1, "definition":
            {"states": ["a"], "initial": "a", "transitions": []}}),
    );
    for i in 0..20 {
        c.ok(
            "CREATE_INSTANCE",
            json!({"machine": "m", "version": 1, "instance_id": format!("i{i}")}),
        );
    }
    drop(c);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(EXIT_TIMEOUT).success());
    let data = server.data_dir.clone();
    let segment = shard0_segments(&data)
        .into_iter()
        .find(|p| data_end(&fs::read(p).unwrap()) > 0)
        .unwrap();
    let bytes = fs::read(&segment).unwrap();
    let victim = last_record_start(&bytes) + 45;
    let file = fs::OpenOptions::new().write(true).open(&segment).unwrap();
    file.write_all_at(&[bytes[victim] ^ 0x01], victim as u64)
        .unwrap();
    file.sync_all().unwrap();

    let exited = Server::expect_exit_in(&data, &[], EXIT_WAIT);
    assert!(
        exited.status.code().is_some_and(|c| c != 0),
        "{}",
        exited.stderr
    );
    assert!(exited.stderr.contains(&name(&segment)), "{}", exited.stderr);
    assert!(
        !exited.stderr.contains("none of it was acknowledged"),
        "an acknowledged record reported as a torn write: {}",
        exited.stderr
    );
    let server = Server::start_in(&data, &["--salvage"]);
    let total = server.raw().ok("LIST_INSTANCES", json!({}))["total"]
        .as_u64()
        .unwrap();
    // Salvage cut the damaged record (the last create on shard 0) only.
    assert_eq!(total, 19);
}
