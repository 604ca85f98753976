//! `expected_wal_offset` is checked against the instance's last offset, and
//! racing compare-and-set applies are linearizable.

use serde_json::json;

use crate::machines::counter_definition;
use crate::support::{RawClient, Server};

#[test]
fn expected_wal_offset_is_checked_against_last_wal_offset() {
    let server = Server::start(&[]);
    let mut client = server.raw();
    client.ok(
        "PUT_MACHINE",
        json!({"machine": "m", "version": 1, "definition": counter_definition()}),
    );
    let created = client.ok(
        "CREATE_INSTANCE",
        json!({"machine": "m", "version": 1, "instance_id": "occ"}),
    );
    let offset = created["wal_offset"].as_u64().expect("wal_offset is a u64");

    let error = client.err_code(
        "APPLY_EVENT",
        json!({"instance_id": "occ", "event": "INC", "expected_wal_offset": offset + 1}),
        "CONFLICT",
    );
    assert_eq!(error["retryable"], false, "{error}");

    let applied = client.ok(
        "APPLY_EVENT",
        json!({"instance_id": "occ", "event": "INC", "expected_wal_offset": offset}),
    );
    let next = applied["wal_offset"].as_u64().unwrap();
    assert!(
        next > offset,
        "offsets increase per instance: {offset} then {next}"
    );
    let got = client.ok("GET_INSTANCE", json!({"instance_id": "occ"}));
    assert_eq!(got["last_wal_offset"], next, "{got}");

    // The old offset is stale now.
    client.err_code(
        "APPLY_EVENT",
        json!({"instance_id": "occ", "event": "INC", "expected_wal_offset": offset}),
        "CONFLICT",
    );
    client.ok(
        "APPLY_EVENT",
        json!({"instance_id": "occ", "event": "INC", "expected_wal_offset": next,
               "expected_state": "s"}),
    );
}

#[test]
fn racing_compare_and_set_applies_are_linearizable() {
    const RACERS: usize = 6;
    const ATTEMPTS: usize = 25;
    let server = Server::start(&[]);
    let mut setup = server.raw();
    setup.ok(
        "PUT_MACHINE",
        json!({"machine": "counter", "version": 1, "definition": counter_definition()}),
    );
    let created = setup.ok(
        "CREATE_INSTANCE",
        json!({"machine": "counter", "version": 1, "instance_id": "cas"}),
    );
    let first_offset = created["wal_offset"].as_u64().unwrap();

    // Each racer: read the offset, apply with expected_wal_offset; record
    // (expected, resulting) of every success.
    let addr = server.addr();
    let racers: Vec<_> = (0..RACERS)
        .map(|r| {
            std::thread::spawn(move || {
                let mut client = RawClient::connect(addr);
                let mut wins = Vec::new();
                let mut conflicts = 0;
                for a in 0..ATTEMPTS {
                    let got = client.ok("GET_INSTANCE", json!({"instance_id": "cas"}));
                    let expected = got["last_wal_offset"].as_u64().unwrap();
                    let response = client.call(
                        "APPLY_EVENT",
                        json!({"instance_id": "cas", "event": "INC",
                               "expected_wal_offset": expected,
                               "payload": {"by": r, "attempt": a}}),
                    );
                    if response["status"] == "ok" {
                        let offset = response["result"]["wal_offset"].as_u64().unwrap();
                        wins.push((expected, offset, response["result"]["ctx"].clone()));
                    } else {
                        assert_eq!(response["error"]["code"], "CONFLICT", "{response}");
                        conflicts += 1;
                    }
                }
                (wins, conflicts)
            })
        })
        .collect();
    let mut wins = Vec::new();
    let mut conflicts = 0;
    for racer in racers {
        let (w, c) = racer.join().expect("racer thread");
        wins.extend(w);
        conflicts += c;
    }
    wins.sort_by_key(|(_, offset, _)| *offset);
    assert!(!wins.is_empty());
    eprintln!("{} wins, {conflicts} conflicts", wins.len());

    // The successes form one chain: each expected the offset the previous
    // success produced, starting at the create.
    let mut previous = first_offset;
    for (expected, offset, _) in &wins {
        assert_eq!(
            *expected, previous,
            "a success expected {expected} but the instance was at {previous}: {wins:?}"
        );
        previous = *offset;
    }
    let got = setup.ok("GET_INSTANCE", json!({"instance_id": "cas"}));
    assert_eq!(got["last_wal_offset"], previous, "{got}");
    assert_eq!(got["ctx"], wins.last().unwrap().2, "{got}");
}
