//! A full disk: writes that need space are refused with a retryable
//! WAL_IO_ERROR naming the cause, nothing unacknowledged becomes visible,
//! reads and watches go on, and writes resume by themselves once space is
//! freed. The disk is a small tmpfs this test mounts (root only; skipped
//! with a message otherwise).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::support::{write_config, Server};

/// Size of the file system the server gets.
const DISK_MB: u64 = 24;

/// A tmpfs mounted for the test, unmounted when dropped.
struct SmallDisk {
    dir: TempDir,
}

impl SmallDisk {
    fn mount() -> Option<SmallDisk> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a {DISK_MB} MiB tmpfs needs root");
            return None;
        }
        let dir = TempDir::new().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={DISK_MB}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipped: could not mount a tmpfs here");
            return None;
        }
        Some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fill the file system with one file until it is full; returns its path.
fn fill_up(dir: &Path) -> PathBuf {
    let path = dir.join("ballast");
    let mut f = fs::File::create(&path).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    path
}

fn create(c: &mut crate::support::RawClient, id: &str) -> Value {
    c.call(
        "CREATE_INSTANCE",
        json!({"machine": "m", "version": 1, "instance_id": id,
               "initial_ctx": {"pad": "d".repeat(2048)}}),
    )
}

#[test]
fn a_full_disk_refuses_writes_keeps_reads_and_watches_and_recovers() {
    let Some(disk) = SmallDisk::mount() else {
        return;
    };
    let data = disk.path().join("data");
    let cfg_dir = TempDir::new().unwrap();
    let config = write_config(
        cfg_dir.path(),
        "storage:\n  wal_segment_size_mb: 1\ncompaction:\n  enabled: false\n",
    );
    let args = ["--config", config.to_str().unwrap(), "--shards", "1"];
    let mut server = Server::start_in(&data, &args);
    let mut c = server.raw();
    c.ok(
        "PUT_MACHINE",
        json!({"machine": "m", "version": 1, "definition":
            {"states": ["a", "b"], "initial": "a",
             "transitions": [{"from": "a", "event": "GO", "to": "b"}]}}),
    );
    assert_eq!(create(&mut c, "keep")["status"], "ok");
    let mut watcher = server.raw();
    watcher.ok("WATCH_ALL", json!({}));

    let ballast = fill_up(disk.path());
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for i in 0..2_000 {
        let id = format!("w{i}");
        let r = create(&mut c, &id);
        if r["status"] == "ok" {
            acknowledged.push(id);
            continue;
        }
        refused = Some((id, r));
        break;
    }
    let (refused_id, r) = refused.expect("the disk filled up");
    let e = &r["error"];
    assert_eq!(e["code"], "WAL_IO_ERROR", "{r}");
    assert_eq!(e["retryable"], true, "{r}");
    assert!(
        e["message"].as_str().unwrap().contains("space"),
        "the cause is named: {r}"
    );
    // Nothing unacknowledged is visible; reads, LIST and watches go on.
    c.err_code(
        "GET_INSTANCE",
        json!({"instance_id": refused_id}),
        "INSTANCE_NOT_FOUND",
    );
    assert_eq!(
        c.ok("GET_INSTANCE", json!({"instance_id": "keep"}))["state"],
        "a"
    );
    assert_eq!(
        c.ok("LIST_INSTANCES", json!({"limit": 1}))["total"],
        acknowledged.len() + 1
    );
    watcher.assert_alive();
    assert!(
        server.stderr().contains("cannot create WAL segment"),
        "{}",
        server.stderr()
    );

    // Space again: writes resume by themselves.
    fs::remove_file(ballast).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = create(&mut c, &refused_id);
        if r["status"] == "ok" {
            break;
        }
        assert_eq!(r["error"]["code"], "WAL_IO_ERROR", "{r}");
        assert!(Instant::now() < deadline, "writes did not resume: {r}");
        std::thread::sleep(Duration::from_millis(200));
    }
    c.ok("APPLY_EVENT", json!({"instance_id": "keep", "event": "GO"}));
    let event = watcher.read_response();
    assert_eq!(event["type"], "event", "{event}");
    assert_eq!(event["instance_id"], "keep");

    // Nothing acknowledged was lost.
    server.restart();
    let mut c = server.raw();
    assert_eq!(
        c.ok("LIST_INSTANCES", json!({"limit": 1}))["total"],
        acknowledged.len() + 2
    );
    drop(c);
    drop(watcher);
    server.sigkill();
    drop(server);
}
