//! SIGKILL under concurrent load loses no acknowledged write and never
//! leaves half of one.

use std::collections::BTreeMap;

use serde_json::json;
use tempfile::TempDir;

use crate::acked_load::{load_round, merged, state_after, ConnectionLog, InFlight, Known};
use crate::support::{flip_definition, RawClient, Server};

/// Fewer acknowledged writes than this would make the kill test vacuous.
const MIN_ACKS_PER_ROUND: usize = 40;

/// Expected state of one instance after a crash: exactly `known`, or —
/// only for an instance with unanswered requests — exactly the outcome of
/// a prefix of them (per-instance order: never a later one without the
/// earlier ones, never half of one).
#[derive(Debug, Clone)]
struct Expectation {
    known: Option<Known>,
    /// Outcomes after the first, second, ... unanswered request.
    alternatives: Vec<Known>,
}

/// Build the expectations of all connections' logs into `expect`.
fn add_expectations(expect: &mut BTreeMap<String, Expectation>, logs: &[ConnectionLog]) {
    for log in logs {
        for (id, known) in &log.known {
            expect.insert(
                id.clone(),
                Expectation {
                    known: Some(known.clone()),
                    alternatives: Vec::new(),
                },
            );
        }
        for request in &log.in_flight {
            match request {
                InFlight::Create { id, ctx } => {
                    let e = expect.entry(id.clone()).or_insert(Expectation {
                        known: None,
                        alternatives: Vec::new(),
                    });
                    assert!(
                        e.known.is_none(),
                        "create in flight on a known instance {id}"
                    );
                    e.alternatives.push(Known {
                        state: "a".into(),
                        ctx: ctx.clone(),
                        wal_offset: 0,
                        deleted: false,
                    });
                }
                InFlight::Apply { id, payload } => {
                    let e = expect
                        .get_mut(id)
                        .expect("apply in flight on a known instance");
                    let base = e
                        .alternatives
                        .last()
                        .or(e.known.as_ref())
                        .cloned()
                        .expect("a state to apply to");
                    let n = payload["n"].as_u64().unwrap();
                    e.alternatives.push(Known {
                        state: state_after(n).into(),
                        ctx: merged(&base.ctx, payload),
                        wal_offset: 0,
                        deleted: false,
                    });
                }
                InFlight::Delete { id } => {
                    let e = expect
                        .get_mut(id)
                        .expect("delete in flight on a known instance");
                    let mut gone = e
                        .alternatives
                        .last()
                        .or(e.known.as_ref())
                        .cloned()
                        .expect("a state to delete");
                    gone.deleted = true;
                    e.alternatives.push(gone);
                }
            }
        }
    }
}

/// What the server has for `id` now: `None` when INSTANCE_NOT_FOUND.
fn observe(client: &mut RawClient, id: &str) -> Option<Known> {
    let response = client.call("GET_INSTANCE", json!({"instance_id": id}));
    if response["status"] == "error" {
        assert_eq!(
            response["error"]["code"], "INSTANCE_NOT_FOUND",
            "GET_INSTANCE {id}: {response}"
        );
        return None;
    }
    let result = &response["result"];
    Some(Known {
        state: result["state"].as_str().unwrap_or_default().to_string(),
        ctx: result["ctx"].clone(),
        wal_offset: result["last_wal_offset"].as_u64().unwrap_or(0),
        deleted: false,
    })
}

fn matches(observed: &Option<Known>, wanted: &Known, check_offset: bool) -> bool {
    match observed {
        None => wanted.deleted,
        Some(got) => {
            !wanted.deleted
                && got.state == wanted.state
                && got.ctx == wanted.ctx
                && (!check_offset || got.wal_offset == wanted.wal_offset)
        }
    }
}

/// Check every expectation against the restarted server and pin each one
/// to what was observed (so a later round expects exactly that).
fn verify_and_settle(server: &Server, expect: &mut BTreeMap<String, Expectation>) {
    let mut client = server.raw();
    let mut failures = Vec::new();
    let mut settled_in_flight = 0;
    for (id, e) in expect.iter_mut() {
        let observed = observe(&mut client, id);
        let as_known = e
            .known
            .as_ref()
            .is_some_and(|k| matches(&observed, k, true));
        let as_alternative = e.alternatives.iter().any(|k| {
            matches(&observed, k, false)
                && observed.as_ref().is_none_or(|got| {
                    e.known
                        .as_ref()
                        .is_none_or(|known| got.wal_offset > known.wal_offset)
                })
        });
        let never_created = e.known.is_none() && observed.is_none();
        if !(as_known || as_alternative || never_created) {
            failures.push(format!(
                "{id}: observed {observed:?}\n    acknowledged {:?}\n    in-flight outcomes {:?}",
                e.known, e.alternatives
            ));
            continue;
        }
        if !e.alternatives.is_empty() {
            settled_in_flight += 1;
        }
        e.known = match observed {
            Some(got) => Some(got),
            None if never_created => None,
            None => e.known.clone().map(|mut k| {
                k.deleted = true;
                k
            }),
        };
        e.alternatives.clear();
    }

    // No instance exists that nobody asked for.
    let listed = client.ok("LIST_INSTANCES", json!({"limit": 1_000_000}));
    let live: Vec<&String> = expect
        .iter()
        .filter(|(_, e)| e.known.as_ref().is_some_and(|k| !k.deleted))
        .map(|(id, _)| id)
        .collect();
    let listed_ids: Vec<String> = listed["instances"]
        .as_array()
        .expect("instances array")
        .iter()
        .map(|s| s["id"].as_str().unwrap_or_default().to_string())
        .collect();
    let live_ids: Vec<String> = live.iter().map(|s| s.to_string()).collect();
    if listed_ids != live_ids {
        failures.push(format!(
            "LIST_INSTANCES after restart lists {} instances, expected the {} live ones\n \
             listed: {listed_ids:?}\n expected: {live_ids:?}",
            listed_ids.len(),
            live_ids.len()
        ));
    }
    assert!(
        failures.is_empty(),
        "{} of {} instances are wrong after the crash ({settled_in_flight} in-flight settled):\n{}\nserver stderr:\n{}",
        failures.len(),
        expect.len(),
        failures.join("\n"),
        server.stderr_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_concurrent_load_loses_no_acknowledged_write() {
    let dir = TempDir::new().unwrap();
    let mut server = Server::start_in(dir.path(), &[]);
    server.raw().ok(
        "PUT_MACHINE",
        json!({"machine": "flip", "version": 1, "definition": flip_definition()}),
    );

    let mut expect = BTreeMap::new();
    for round in 1..=2 {
        let logs = load_round(&mut server, &format!("r{round}")).await;
        let acks: usize = logs.iter().map(|l| l.acks).sum();
        let problems: Vec<&String> = logs.iter().flat_map(|l| &l.problems).collect();
        assert!(
            problems.is_empty(),
            "round {round}: wrong responses under load:\n{problems:#?}\nstderr:\n{}",
            server.stderr_tail()
        );
        assert!(
            acks >= MIN_ACKS_PER_ROUND,
            "round {round}: only {acks} writes acknowledged before the kill; ends: {:?}\nstderr:\n{}",
            logs.iter().map(|l| &l.ended_by).collect::<Vec<_>>(),
            server.stderr_tail()
        );
        eprintln!(
            "round {round}: {acks} acknowledged writes; unanswered at the kill: {:?}",
            logs.iter()
                .map(|l| (l.in_flight.len(), l.in_flight.first().cloned()))
                .collect::<Vec<_>>()
        );
        add_expectations(&mut expect, &logs);
        server.restart();
        verify_and_settle(&server, &mut expect);
    }

    // The recovered server keeps working, and that survives another crash.
    let mut client = server.raw();
    let (id, e) = expect
        .iter()
        .find(|(_, e)| e.known.as_ref().is_some_and(|k| !k.deleted))
        .expect("a live instance");
    let before = e.known.clone().unwrap();
    let applied = client.ok(
        "APPLY_EVENT",
        json!({"instance_id": id, "event": "FLIP", "payload": {"after": "recovery"}}),
    );
    assert!(applied["wal_offset"].as_u64().unwrap() > before.wal_offset);
    let id = id.clone();
    server.restart();
    let got = server.raw().ok("GET_INSTANCE", json!({"instance_id": id}));
    assert_eq!(got["ctx"]["after"], "recovery", "{got}");
    assert_eq!(got["last_wal_offset"], applied["wal_offset"], "{got}");
}
