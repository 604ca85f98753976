//! Durability across real crashes: SIGKILL under concurrent load loses no
//! acknowledged write and never leaves half of one; a torn WAL tail is
//! repaired with a warning; corruption in the middle of a log refuses
//! start-up (naming the file) unless `--salvage` is given.

mod support;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tempfile::TempDir;

use support::*;

/// Concurrent connections writing during the kill test.
const LOAD_CONNECTIONS: usize = 4;
/// Requests the extra pipelining connection keeps unanswered at a time.
const PIPELINE_WINDOW: usize = 32;
/// Events applied to each instance before the connection moves on.
const APPLIES_PER_INSTANCE: u64 = 12;
/// Every this-many-th instance is deleted after its events.
const DELETE_EVERY: u64 = 5;
/// How long the load runs before the SIGKILL.
const LOAD_BEFORE_KILL: Duration = Duration::from_millis(1500);
/// Fewer acknowledged writes than this would make the kill test vacuous.
const MIN_ACKS_PER_ROUND: usize = 40;

fn flip_definition() -> Value {
    json!({
        "states": ["a", "b"],
        "initial": "a",
        "transitions": [
            {"from": "a", "event": "FLIP", "to": "b"},
            {"from": "b", "event": "FLIP", "to": "a"}
        ]
    })
}

fn state_after(n: u64) -> &'static str {
    if n.is_multiple_of(2) {
        "a"
    } else {
        "b"
    }
}

/// What the server told one connection about one instance, last seen.
#[derive(Debug, Clone, PartialEq)]
struct Known {
    state: String,
    ctx: Value,
    wal_offset: u64,
    deleted: bool,
}

/// The one request a connection had in flight when the server died.
#[derive(Debug, Clone)]
enum InFlight {
    Create { id: String, ctx: Value },
    Apply { id: String, payload: Value },
    Delete { id: String },
}

#[derive(Debug, Default)]
struct ConnectionLog {
    known: BTreeMap<String, Known>,
    acks: usize,
    /// Requests sent but not answered, in the order sent (one for a
    /// request-response connection, several for a pipelining one).
    in_flight: Vec<InFlight>,
    /// Responses that were errors or had the wrong content (server bugs).
    problems: Vec<String>,
    ended_by: String,
}

/// One connection's workload: create instances, flip each a few times,
/// delete some; record every acknowledged result until the server dies.
async fn run_load(addr: std::net::SocketAddr, conn: usize, prefix: String) -> ConnectionLog {
    let mut log = ConnectionLog::default();
    let mut client = match AsyncRawClient::connect(addr).await {
        Ok(client) => client,
        Err(e) => {
            log.problems
                .push(format!("connection {conn} could not connect: {e}"));
            return log;
        }
    };
    for k in 0u64.. {
        let id = format!("{prefix}-c{conn}-i{k:04}");
        let ctx = json!({"n": 0, "owner": conn});
        log.in_flight = vec![InFlight::Create {
            id: id.clone(),
            ctx: ctx.clone(),
        }];
        let params = json!({"machine": "flip", "version": 1, "instance_id": id,
                            "initial_ctx": ctx});
        let response = match client.call("CREATE_INSTANCE", params).await {
            Ok(r) => r,
            Err(e) => {
                log.ended_by = e.to_string();
                return log;
            }
        };
        let result = &response["result"];
        if response["status"] != "ok" || result["state"] != "a" {
            log.problems
                .push(format!("CREATE {id}: unexpected response {response}"));
            return log;
        }
        log.known.insert(
            id.clone(),
            Known {
                state: "a".into(),
                ctx,
                wal_offset: result["wal_offset"].as_u64().unwrap_or(0),
                deleted: false,
            },
        );
        log.acks += 1;

        for n in 1..=APPLIES_PER_INSTANCE {
            let payload = json!({"n": n, "by": conn});
            log.in_flight = vec![InFlight::Apply {
                id: id.clone(),
                payload: payload.clone(),
            }];
            let params = json!({"instance_id": id, "event": "FLIP", "payload": payload});
            let response = match client.call("APPLY_EVENT", params).await {
                Ok(r) => r,
                Err(e) => {
                    log.ended_by = e.to_string();
                    return log;
                }
            };
            let result = &response["result"];
            let previous = log.known[&id].clone();
            let expected_ctx = merged(&previous.ctx, &payload);
            let offset = result["wal_offset"].as_u64().unwrap_or(0);
            if response["status"] != "ok"
                || result["to_state"] != state_after(n)
                || result["ctx"] != expected_ctx
                || offset <= previous.wal_offset
            {
                log.problems.push(format!(
                    "APPLY {id} #{n}: unexpected response {response} (previous {previous:?})"
                ));
                return log;
            }
            log.known.insert(
                id.clone(),
                Known {
                    state: state_after(n).into(),
                    ctx: expected_ctx,
                    wal_offset: offset,
                    deleted: false,
                },
            );
            log.acks += 1;
        }

        if k % DELETE_EVERY == DELETE_EVERY - 1 {
            log.in_flight = vec![InFlight::Delete { id: id.clone() }];
            let response = match client
                .call("DELETE_INSTANCE", json!({"instance_id": id}))
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    log.ended_by = e.to_string();
                    return log;
                }
            };
            if response["status"] != "ok" || response["result"]["deleted"] != true {
                log.problems
                    .push(format!("DELETE {id}: unexpected response {response}"));
                return log;
            }
            if let Some(known) = log.known.get_mut(&id) {
                known.deleted = true;
            }
            log.acks += 1;
        }
    }
    unreachable!("the load runs until the server dies")
}

/// A connection that pipelines applies on one instance, keeping
/// `PIPELINE_WINDOW` of them unanswered, until the server dies.
async fn run_pipelined_load(addr: std::net::SocketAddr, prefix: String) -> ConnectionLog {
    let mut log = ConnectionLog::default();
    let mut client = match AsyncRawClient::connect(addr).await {
        Ok(client) => client,
        Err(e) => {
            log.problems
                .push(format!("pipelined connection could not connect: {e}"));
            return log;
        }
    };
    let id = format!("{prefix}-pipe");
    let ctx = json!({"n": 0, "owner": "pipe"});
    log.in_flight = vec![InFlight::Create {
        id: id.clone(),
        ctx: ctx.clone(),
    }];
    let params = json!({"machine": "flip", "version": 1, "instance_id": id, "initial_ctx": ctx});
    let response = match client.call("CREATE_INSTANCE", params).await {
        Ok(r) => r,
        Err(e) => {
            log.ended_by = e.to_string();
            return log;
        }
    };
    if response["status"] != "ok" {
        log.problems.push(format!("CREATE {id}: {response}"));
        return log;
    }
    let mut current = Known {
        state: "a".into(),
        ctx,
        wal_offset: response["result"]["wal_offset"].as_u64().unwrap_or(0),
        deleted: false,
    };
    log.known.insert(id.clone(), current.clone());
    log.acks += 1;
    log.in_flight.clear();

    let mut ids = VecDeque::new();
    let mut next_n = 1u64;
    loop {
        while log.in_flight.len() < PIPELINE_WINDOW {
            let payload = json!({"n": next_n});
            // Recorded before the write: a failed write may still have
            // delivered the request.
            log.in_flight.push(InFlight::Apply {
                id: id.clone(),
                payload: payload.clone(),
            });
            let params = json!({"instance_id": id, "event": "FLIP", "payload": payload});
            match client.send("APPLY_EVENT", params).await {
                Ok(request_id) => ids.push_back(request_id),
                Err(e) => {
                    log.ended_by = e.to_string();
                    return log;
                }
            }
            next_n += 1;
        }
        let response = match client.next_response().await {
            Ok(r) => r,
            Err(e) => {
                log.ended_by = e.to_string();
                return log;
            }
        };
        let request_id = ids.pop_front().expect("a request awaiting its answer");
        let InFlight::Apply { payload, .. } = log.in_flight.remove(0) else {
            unreachable!("only applies are pipelined")
        };
        let n = payload["n"].as_u64().unwrap();
        let result = &response["result"];
        let offset = result["wal_offset"].as_u64().unwrap_or(0);
        let expected_ctx = merged(&current.ctx, &payload);
        if response["id"] != request_id.as_str()
            || response["status"] != "ok"
            || result["to_state"] != state_after(n)
            || result["ctx"] != expected_ctx
            || offset <= current.wal_offset
        {
            log.problems.push(format!(
                "pipelined APPLY {id} #{n} (request {request_id}): unexpected response \
                 {response} (previous {current:?})"
            ));
            return log;
        }
        current = Known {
            state: state_after(n).into(),
            ctx: expected_ctx,
            wal_offset: offset,
            deleted: false,
        };
        log.known.insert(id.clone(), current.clone());
        log.acks += 1;
    }
}

/// Shallow merge of an object payload into an object context (spec §7.2).
fn merged(ctx: &Value, payload: &Value) -> Value {
    let mut out = ctx.clone();
    if let (Some(out), Some(payload)) = (out.as_object_mut(), payload.as_object()) {
        for (k, v) in payload {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

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

/// Run the load on every connection, SIGKILL the server in the middle of
/// it, and collect what each connection saw acknowledged.
async fn load_round(server: &mut Server, prefix: &str) -> Vec<ConnectionLog> {
    let addr = server.addr();
    let mut tasks: Vec<_> = (0..LOAD_CONNECTIONS)
        .map(|conn| tokio::spawn(run_load(addr, conn, prefix.to_string())))
        .collect();
    tasks.push(tokio::spawn(run_pipelined_load(addr, prefix.to_string())));
    tokio::time::sleep(LOAD_BEFORE_KILL).await;
    server.sigkill();
    let mut logs = Vec::new();
    for task in tasks {
        logs.push(task.await.expect("load task"));
    }
    logs
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

/// A config with 1 MiB WAL segments: recovery scans whole segments, and a
/// debug build scanning the default 64 MiB ones after damage takes seconds.
fn small_segments_config() -> (TempDir, String) {
    let dir = TempDir::new().unwrap();
    let path = write_config(dir.path(), "storage:\n  wal_segment_size_mb: 1\n");
    (dir, path.to_string_lossy().into_owned())
}

/// Per shard directory, the highest segment that holds data, with the
/// length of its data.
fn last_written_segments(data_dir: &Path) -> Vec<(PathBuf, usize)> {
    let mut by_shard: HashMap<PathBuf, (PathBuf, usize)> = HashMap::new();
    for segment in wal_segments(data_dir) {
        let bytes = fs::read(&segment).unwrap();
        let end = data_end(&bytes);
        if end == 0 {
            continue;
        }
        let shard = segment.parent().unwrap().to_path_buf();
        // Sorted ascending, so a later segment replaces an earlier one.
        by_shard.insert(shard, (segment, end));
    }
    let mut out: Vec<_> = by_shard.into_values().collect();
    out.sort();
    out
}

/// Write a small workload with one connection, each request acknowledged
/// before the next; returns what GET_INSTANCE says about every instance.
fn write_sequential_workload(
    server: &Server,
    instances: usize,
    applies: u64,
) -> Vec<(String, Value)> {
    let mut client = server.raw();
    client.ok(
        "PUT_MACHINE",
        json!({"machine": "flip", "version": 1, "definition": flip_definition()}),
    );
    let mut ids = Vec::new();
    for i in 0..instances {
        let id = format!("seq-{i:02}");
        client.ok(
            "CREATE_INSTANCE",
            json!({"machine": "flip", "version": 1, "instance_id": id,
                   "initial_ctx": {"n": 0, "name": id}}),
        );
        for n in 1..=applies {
            client.ok(
                "APPLY_EVENT",
                json!({"instance_id": id, "event": "FLIP", "payload": {"n": n}}),
            );
        }
        ids.push(id);
    }
    ids.into_iter()
        .map(|id| {
            let got = client.ok("GET_INSTANCE", json!({"instance_id": id}));
            (id, got)
        })
        .collect()
}

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
