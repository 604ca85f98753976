//! The harness against a tiny in-process RCP server that can misbehave on
//! purpose: a clean run passes, error responses are counted by code and
//! fail the run, an out-of-order id stops the connection and fails the run,
//! and a server without WAL_STATS yields "n/a" instead of a failure. Batches
//! are verified op by op; watch subscribers see every event, and a server
//! that drops or reorders events is reported (loss, order violations)
//! without failing the run unless --fail-on-loss is given. Hostile clients
//! beside a load leave its verification alone and report what they did,
//! and the server's memory is sampled when its PID is given.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

use clap::Parser;
use corestate_bench::cli::Args;
use corestate_bench::frame;
use serde_json::{json, Value};

/// Answers a connection buffers before it writes them.
const FLUSH_BYTES: usize = 16 * 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Misbehaviour {
    None,
    /// Every 50th APPLY_EVENT fails with GUARD_FAILED.
    ErrorEvery50thApply,
    /// The 30th response on a connection carries the wrong id.
    WrongIdOn30th,
    /// The first subscriber misses every 10th event.
    DropEvery10thEvent,
    /// Every 50th event is held back and sent after the next one.
    SwapEvery50thEvent,
    /// The 3rd op of every 20th BATCH fails (atomic: the whole BATCH fails).
    FailEvery20thBatch,
}

/// Instance states, subscribers and the log offset, behind one lock so that
/// events leave in offset order.
#[derive(Default)]
struct World {
    states: HashMap<String, &'static str>,
    subscribers: Vec<(String, TcpStream)>,
    next_offset: u64,
    held_event: Option<Value>,
    batches: u64,
}

type Shared = Arc<Mutex<World>>;

fn serve(listener: TcpListener, misbehaviour: Misbehaviour) {
    let world: Shared = Arc::default();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { return };
        let world = world.clone();
        thread::spawn(move || serve_connection(stream, misbehaviour, world));
    }
}

/// Flips the instance and sends its event to every subscriber.
fn apply(world: &mut World, misbehaviour: Misbehaviour, p: &Value) -> Result<Value, &'static str> {
    let iid = p["instance_id"].as_str().unwrap();
    let state = world.states.get_mut(iid).ok_or("INSTANCE_NOT_FOUND")?;
    let from = *state;
    *state = if from == "a" { "b" } else { "a" };
    let to = *state;
    world.next_offset += 1;
    let offset = world.next_offset;
    let event = json!({"type":"event","subscription_id":"","instance_id":iid,
        "machine":"corestate-bench","version":1,"wal_offset":offset,"from_state":from,
        "to_state":to,"event":"go","payload":p.get("payload").cloned().unwrap_or(Value::Null)});
    let mut events = vec![event];
    if misbehaviour == Misbehaviour::SwapEvery50thEvent {
        if offset.is_multiple_of(50) {
            world.held_event = events.pop();
        } else if let Some(held) = world.held_event.take() {
            events.push(held);
        }
    }
    for event in events {
        let offset = event["wal_offset"].as_u64().unwrap();
        for (i, (sub_id, sub)) in world.subscribers.iter_mut().enumerate() {
            if misbehaviour == Misbehaviour::DropEvery10thEvent
                && i == 0
                && offset.is_multiple_of(10)
            {
                continue;
            }
            let mut e = event.clone();
            e["subscription_id"] = json!(sub_id);
            let mut out = Vec::new();
            frame::encode(&mut out, e.to_string().as_bytes());
            let _ = sub.write_all(&out);
        }
    }
    Ok(json!({"applied":true,"ctx":{},"from_state":from,"to_state":to,"wal_offset":offset}))
}

fn serve_connection(mut stream: TcpStream, misbehaviour: Misbehaviour, world: Shared) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let mut answered = 0u64;
    let mut applies = 0u64;
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        while let Some(d) = frame::decode(&buf).expect("valid frame from the harness") {
            let req: Value = serde_json::from_slice(&buf[d.payload_start..d.payload_end]).unwrap();
            buf.drain(..d.payload_end);
            answered += 1;
            let mut id = req["id"].as_str().unwrap().to_string();
            if misbehaviour == Misbehaviour::WrongIdOn30th && answered == 30 {
                id.push('x');
            }
            let p = &req["params"];
            let result = match req["op"].as_str().unwrap() {
                "HELLO" => Ok(json!({"protocol_version":1,"wire_mode":"binary_json",
                    "server_name":"fake","server_version":"0","features":[]})),
                "INFO" => Ok(json!({"server_name":"fake","shards":2})),
                "WATCH_ALL" => {
                    // Answer before the first event can be sent.
                    let sub_id = format!("sub-{}", stream.local_addr().unwrap().port());
                    let body = json!({"type":"response","id":id,"status":"ok",
                        "result":{"subscription_id":sub_id,"wal_offset":0}});
                    frame::encode(&mut out, body.to_string().as_bytes());
                    let mut w = world.lock().unwrap();
                    if stream.write_all(&out).is_err() {
                        return;
                    }
                    out.clear();
                    w.subscribers.push((sub_id, stream.try_clone().unwrap()));
                    continue;
                }
                "BATCH" => {
                    let mut w = world.lock().unwrap();
                    w.batches += 1;
                    let failing = misbehaviour == Misbehaviour::FailEvery20thBatch
                        && w.batches.is_multiple_of(20);
                    let mut results = Vec::new();
                    let mut failed = false;
                    for (i, op) in p["ops"].as_array().unwrap().iter().enumerate() {
                        assert_eq!(op["op"], "APPLY_EVENT");
                        if failing && i == 2 {
                            failed = true;
                            break;
                        }
                        let r = apply(&mut w, misbehaviour, &op["params"]).unwrap();
                        results.push(json!({"error":null,"result":r,"status":"ok"}));
                    }
                    if failed {
                        Err("BAD_REQUEST")
                    } else {
                        Ok(json!({ "results": results }))
                    }
                }
                "PUT_MACHINE" => Ok(json!({"created":true,"machine":p["machine"],
                    "stored_checksum":"0","version":p["version"]})),
                "CREATE_INSTANCE" => {
                    let iid = p["instance_id"].as_str().unwrap().to_string();
                    world.lock().unwrap().states.insert(iid.clone(), "a");
                    Ok(json!({"instance_id":iid,"state":"a","wal_offset":1}))
                }
                "APPLY_EVENT" => {
                    applies += 1;
                    if misbehaviour == Misbehaviour::ErrorEvery50thApply
                        && applies.is_multiple_of(50)
                    {
                        Err("GUARD_FAILED")
                    } else {
                        apply(&mut world.lock().unwrap(), misbehaviour, p)
                    }
                }
                "GET_INSTANCE" => {
                    let iid = p["instance_id"].as_str().unwrap();
                    let state = world.lock().unwrap().states[iid];
                    Ok(
                        json!({"ctx":{},"last_wal_offset":1,"machine":"corestate-bench",
                        "state":state,"version":1}),
                    )
                }
                "LIST_INSTANCES" => {
                    let w = world.lock().unwrap();
                    let limit = p["limit"].as_u64().unwrap_or(100) as usize;
                    let rows: Vec<Value> = w
                        .states
                        .iter()
                        .take(limit)
                        .map(|(iid, state)| {
                            json!({"id":iid,"machine":"corestate-bench",
                            "state":state,"version":1})
                        })
                        .collect();
                    Ok(json!({"has_more":rows.len() < w.states.len(),
                        "instances":rows,"total":w.states.len()}))
                }
                _ => Err("BAD_REQUEST"),
            };
            // Keys in another order than rstmdb's, on purpose: the harness
            // must not depend on the byte layout.
            let body = match result {
                Ok(r) => json!({"result":r,"status":"ok","id":id,"type":"response"}),
                Err(code) => json!({"type":"response","id":id,"status":"error",
                    "error":{"code":code,"message":"injected","retryable":false}}),
            };
            frame::encode(&mut out, body.to_string().as_bytes());
            // Answers leave as they are made, not only after every request
            // of a read: a pipelining hostile client sends thousands at once.
            if out.len() >= FLUSH_BYTES {
                if stream.write_all(&out).is_err() {
                    return;
                }
                out.clear();
            }
        }
        if stream.write_all(&out).is_err() {
            return;
        }
    }
}

fn run_against(misbehaviour: Misbehaviour, workload: &str) -> corestate_bench::report::Report {
    run_with(misbehaviour, workload, &[])
}

fn run_with(
    misbehaviour: Misbehaviour,
    workload: &str,
    extra: &[&str],
) -> corestate_bench::report::Report {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    thread::spawn(move || serve(listener, misbehaviour));
    let argv: Vec<String> = [
        "corestate-bench",
        "--addr",
        &addr,
        "--workload",
        workload,
        "--connections",
        "4",
        "--pipeline",
        "8",
        "--duration",
        "0.5",
        "--warmup",
        "0.2",
        "--instances",
        "20",
        "--quiet",
        "--drain-timeout",
        "3",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect();
    let args = Args::parse_from(&argv);
    args.validate().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local
        .block_on(&runtime, corestate_bench::run::run(&args, &argv))
        .expect("the run takes place")
}

#[test]
fn a_clean_run_passes_and_reports_wal_syncs_as_unavailable() {
    for workload in ["apply", "get", "create", "mix"] {
        let report = run_against(Misbehaviour::None, workload);
        assert!(report.ok, "{workload}: {:?}", report.problems);
        assert!(report.results.ops > 0);
        assert_eq!(report.results.errors_total, 0);
        assert!(!report.results.wal.supported);
        assert!(report.results.slow_path_responses > 0);
        assert!(report.summary().contains("WAL syncs       n/a"));
    }
}

#[test]
fn error_responses_are_counted_by_code_and_fail_the_run() {
    let report = run_against(Misbehaviour::ErrorEvery50thApply, "apply");
    assert!(!report.ok);
    assert!(report.results.errors["GUARD_FAILED"] > 0);
    assert!(report.summary().contains("RUN FAILED"));
}

#[test]
fn a_mismatched_id_stops_the_connection_and_fails_the_run() {
    let report = run_against(Misbehaviour::WrongIdOn30th, "get");
    assert!(!report.ok);
    assert_eq!(report.results.errors["PROTOCOL_VIOLATION"], 4);
    assert!(
        report
            .problems
            .iter()
            .filter(|p| p.contains("protocol violation"))
            .count()
            == 4
    );
}

#[test]
fn batches_are_verified_and_counted_as_events() {
    let report = run_with(Misbehaviour::None, "batch", &["--batch-ops", "5"]);
    assert!(report.ok, "{:?}", report.problems);
    let b = report.results.batch.as_ref().expect("batch figures");
    assert_eq!(b.ops_per_batch, 5);
    assert_eq!(b.shards, 2, "the fake server reports 2 shards in INFO");
    assert_eq!(b.shards_per_batch, 2);
    assert!(b.instances_per_connection >= 5 * 8);
    assert_eq!(b.batches, report.results.ops);
    assert_eq!(b.events, 5 * b.batches);
    assert!(report.summary().contains("events/s"));
}

#[test]
fn a_failed_atomic_batch_fails_the_run() {
    let report = run_with(Misbehaviour::FailEvery20thBatch, "batch", &[]);
    assert!(!report.ok);
    assert!(report.results.errors["BAD_REQUEST"] > 0);
}

#[test]
fn every_subscriber_sees_every_event_in_order() {
    let report = run_with(Misbehaviour::None, "watch", &["--subscribers", "3"]);
    assert!(report.ok, "{:?}", report.problems);
    let w = report.results.watch.as_ref().expect("watch figures");
    assert_eq!(w.per_subscriber.len(), 3);
    assert!(w.applies_acked_in_window > 0);
    assert!(!w.loss);
    assert_eq!(w.order_violations, 0);
    for s in &w.per_subscriber {
        assert_eq!(s.events_in_window, w.applies_acked_in_window);
        assert_eq!(s.events_total, w.applies_acked_total);
        assert_eq!(s.delivered_fraction, 1.0);
        assert_eq!(s.end, "complete");
        assert!(s.latency.p50_us > 0);
    }
    assert!(!report.summary().contains("LOSS"));
}

#[test]
fn lost_events_are_reported_loudly_without_failing_the_run() {
    let report = run_with(Misbehaviour::DropEvery10thEvent, "watch", &[]);
    assert!(
        report.ok,
        "loss alone does not fail the run: {:?}",
        report.problems
    );
    let w = report.results.watch.as_ref().unwrap();
    assert!(w.loss);
    let first = &w.per_subscriber[0];
    assert!(
        (0.85..0.95).contains(&first.delivered_fraction),
        "{}",
        first.delivered_fraction
    );
    assert!(first.end.contains("quiet"), "{}", first.end);
    assert_eq!(w.per_subscriber[1].delivered_fraction, 1.0);
    assert!(report.summary().contains("!!! LOSS"));

    let strict = run_with(
        Misbehaviour::DropEvery10thEvent,
        "watch",
        &["--fail-on-loss"],
    );
    assert!(!strict.ok);
}

#[test]
fn out_of_order_events_are_counted() {
    let report = run_with(
        Misbehaviour::SwapEvery50thEvent,
        "watch",
        &["--subscribers", "2"],
    );
    let w = report.results.watch.as_ref().unwrap();
    assert!(w.order_violations > 0);
    assert_eq!(
        w.per_subscriber[0].order_violations,
        w.per_subscriber[1].order_violations
    );
    assert!(report.summary().contains("!!! ORDER"));
}

#[test]
fn hostile_clients_run_beside_a_verified_load_and_memory_is_sampled() {
    let pid = std::process::id().to_string();
    let report = run_with(
        Misbehaviour::None,
        "mix",
        &[
            "--hostile",
            "slowloris=2,unread=2,biglist=2",
            "--server-pid",
            &pid,
        ],
    );
    assert!(report.ok, "{:?}", report.problems);
    assert!(report.results.ops > 0);
    assert_eq!(
        report.config.hostile.as_deref(),
        Some("slowloris=2,unread=2,biglist=2")
    );
    let hostile = report.results.hostile.as_ref().expect("hostile figures");
    assert!(hostile.open_secs >= 0.7, "{}", hostile.open_secs);
    let kind = |name: &str| {
        hostile
            .kinds
            .iter()
            .find(|k| k.kind == name)
            .unwrap_or_else(|| panic!("{name} reported"))
    };
    for name in ["slowloris", "unread", "biglist"] {
        assert_eq!(kind(name).connections, 2, "{name}");
        assert_eq!(kind(name).closed_by_server, 0, "{name}");
    }
    let slowloris = kind("slowloris");
    assert_eq!(slowloris.requests_sent, 0);
    assert!(slowloris.bytes_sent >= 2 * frame::HEADER_BYTES as u64);
    let unread = kind("unread");
    assert!(unread.requests_sent > 0);
    assert_eq!(unread.bytes_read, 0);
    let biglist = kind("biglist");
    assert!(biglist.requests_sent > 0);
    assert!(biglist.answers_read > 0, "{biglist:?}");
    let head = biglist.first_answer_head.as_deref().unwrap();
    assert!(head.contains("\"instances\":[{"), "{head}");
    let memory = report.results.server_memory.as_ref().expect("memory");
    assert!(memory.samples >= 2);
    assert!(memory.rss_peak_kib > 0 && memory.vm_hwm_kib >= memory.rss_peak_kib);
    let summary = report.summary();
    assert!(summary.contains("hostile         slowloris=2,unread=2,biglist=2"));
    assert!(summary.contains("server memory   peak RSS"));
}
