//! A process that was paused (SIGSTOP, a frozen VM, a debugger) is not a
//! stalled shard: the watchdog must not abort it when it resumes.

use std::thread;
use std::time::Duration;

use serde_json::json;

use crate::support::Server;

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on the PID of the server this test started and holds.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

#[test]
fn a_pause_longer_than_the_watchdog_limit_is_survived() {
    let mut server = Server::start(&[]);
    let mut c = server.raw();
    c.ok(
        "PUT_MACHINE",
        json!({"machine": "m", "version": 1, "definition":
            {"states": ["a"], "initial": "a", "transitions": []}}),
    );
    let pid = server.pid().unwrap();
    // Requests in flight when the process stops.
    let addr = server.addr();
    let load = thread::spawn(move || {
        let mut c = crate::support::RawClient::connect(addr);
        for i in 0..20 {
            c.ok(
                "CREATE_INSTANCE",
                json!({"machine": "m", "version": 1, "instance_id": format!("p{i}")}),
            );
        }
    });
    thread::sleep(Duration::from_millis(50));
    signal(pid, libc::SIGSTOP);
    thread::sleep(Duration::from_secs(7));
    signal(pid, libc::SIGCONT);
    load.join()
        .expect("the requests of the paused process are answered");
    thread::sleep(Duration::from_secs(2));
    assert!(
        server.is_running(),
        "aborted after the pause: {}",
        server.stderr_tail()
    );
    c.assert_alive();
    let listed = c.ok("LIST_INSTANCES", json!({}));
    assert_eq!(listed["total"], 20);
    let log = server.stderr();
    assert!(!log.contains("has not made progress"), "{log}");
    assert!(
        log.contains("did not run for"),
        "the pause is logged: {log}"
    );
}
