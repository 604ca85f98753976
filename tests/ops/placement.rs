//! Where the shards' executors run (`corestate.first_core`,
//! `corestate.pin_cores`), read back from the kernel; how long they spin
//! before parking (`corestate.spin_before_park_us`), from the start-up
//! log; and the process's huge-page setting, from the kernel.

use std::fs;

use crate::support::Server;

/// `Cpus_allowed_list` of the server's thread that runs shard `shard`.
fn shard_cpus(pid: u32, shard: usize) -> String {
    let prefix = format!("shard-{shard}-");
    for task in fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let dir = task.expect("task").path();
        let comm = fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim().starts_with(&prefix) {
            let status = fs::read_to_string(dir.join("status")).expect("status");
            return status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .expect("Cpus_allowed_list")
                .trim()
                .to_string();
        }
    }
    panic!("no thread of shard {shard} in process {pid}");
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[test]
fn shards_are_pinned_from_first_core_or_left_to_the_kernel() {
    let n = cpus();
    let default = Server::start(&["--shards", "2"]);
    let pid = default.pid().expect("pid");
    assert_eq!(shard_cpus(pid, 0), "0");
    assert_eq!(shard_cpus(pid, 1), (1 % n).to_string());
    assert!(
        default
            .stderr()
            .contains("shards 2 (pinned from CPU 0, spin before park 0 µs)"),
        "{}",
        default.stderr_tail()
    );
    drop(default);

    let shifted = Server::start_with_env(&["--shards", "2"], &[("CORESTATE_FIRST_CORE", "1")]);
    let pid = shifted.pid().expect("pid");
    assert_eq!(shard_cpus(pid, 0), (1 % n).to_string());
    assert_eq!(shard_cpus(pid, 1), (2 % n).to_string());
    drop(shifted);

    let free = Server::start_with_env(&["--shards", "2"], &[("CORESTATE_PIN_CORES", "false")]);
    let pid = free.pid().expect("pid");
    let mine = fs::read_to_string("/proc/self/status")
        .expect("own status")
        .lines()
        .find_map(|l| {
            l.strip_prefix("Cpus_allowed_list:")
                .map(|v| v.trim().to_string())
        })
        .expect("own Cpus_allowed_list");
    assert_eq!(
        shard_cpus(pid, 0),
        mine,
        "an unpinned shard may run anywhere"
    );
    assert!(
        free.stderr().contains("(unpinned, "),
        "{}",
        free.stderr_tail()
    );
}

/// A server's flags, its environment, and the log text it must print.
type SpinCase<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

/// An idle executor parks at once when every write waits for its sync,
/// spins 50 µs first under the other policies, and spins what it is told
/// to when configured (flag over environment).
#[test]
fn executors_spin_before_parking_by_policy_unless_configured() {
    let cases: [SpinCase; 4] = [
        (&["--fsync", "every_write"], &[], "spin before park 0 µs"),
        (&["--fsync", "never"], &[], "spin before park 50 µs"),
        (
            &["--fsync", "never"],
            &[("CORESTATE_SPIN_BEFORE_PARK_US", "0")],
            "spin before park 0 µs",
        ),
        (
            &["--spin-before-park-us", "120"],
            &[("CORESTATE_SPIN_BEFORE_PARK_US", "7")],
            "spin before park 120 µs",
        ),
    ];
    for (args, env, line) in cases {
        let server = Server::start_with_env(args, env);
        assert!(
            server.stderr().contains(line),
            "{args:?} {env:?}: {}",
            server.stderr_tail()
        );
    }
}

/// The server turns transparent huge pages off for itself
/// (`src/runtime.rs`): the kernel reports it per process.
#[test]
fn transparent_huge_pages_are_off_for_the_server() {
    let server = Server::start(&[]);
    let pid = server.pid().expect("pid");
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    match status.lines().find_map(|l| l.strip_prefix("THP_enabled:")) {
        Some(flag) => assert_eq!(flag.trim(), "0", "THP_enabled in /proc/{pid}/status"),
        // Kernels before 6.0 do not report the flag.
        None => eprintln!("this kernel does not report THP_enabled; not checked"),
    }
}
