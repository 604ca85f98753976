//! The harness against a tiny in-process RCP server that can misbehave on
//! purpose: a clean run passes, error responses are counted by code and
//! fail the run, an out-of-order id stops the connection and fails the run,
//! and a server without WAL_STATS yields "n/a" instead of a failure.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

use clap::Parser;
use corestate_bench::cli::Args;
use corestate_bench::frame;
use serde_json::{json, Value};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Misbehaviour {
    None,
    /// Every 50th APPLY_EVENT fails with GUARD_FAILED.
    ErrorEvery50thApply,
    /// The 30th response on a connection carries the wrong id.
    WrongIdOn30th,
}

type States = Arc<Mutex<HashMap<String, &'static str>>>;

fn serve(listener: TcpListener, misbehaviour: Misbehaviour) {
    let states: States = Arc::default();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { return };
        let states = states.clone();
        thread::spawn(move || serve_connection(stream, misbehaviour, states));
    }
}

fn serve_connection(mut stream: TcpStream, misbehaviour: Misbehaviour, states: States) {
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
                "PUT_MACHINE" => Ok(json!({"created":true,"machine":p["machine"],
                    "stored_checksum":"0","version":p["version"]})),
                "CREATE_INSTANCE" => {
                    let iid = p["instance_id"].as_str().unwrap().to_string();
                    states.lock().unwrap().insert(iid.clone(), "a");
                    Ok(json!({"instance_id":iid,"state":"a","wal_offset":1}))
                }
                "APPLY_EVENT" => {
                    applies += 1;
                    if misbehaviour == Misbehaviour::ErrorEvery50thApply
                        && applies.is_multiple_of(50)
                    {
                        Err("GUARD_FAILED")
                    } else {
                        let iid = p["instance_id"].as_str().unwrap();
                        let mut states = states.lock().unwrap();
                        let state = states.get_mut(iid).expect("instance exists");
                        let from = *state;
                        *state = if from == "a" { "b" } else { "a" };
                        Ok(json!({"applied":true,"ctx":{},"from_state":from,
                            "to_state":*state,"wal_offset":2}))
                    }
                }
                "GET_INSTANCE" => {
                    let iid = p["instance_id"].as_str().unwrap();
                    let state = states.lock().unwrap()[iid];
                    Ok(
                        json!({"ctx":{},"last_wal_offset":1,"machine":"corestate-bench",
                        "state":state,"version":1}),
                    )
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
        }
        if stream.write_all(&out).is_err() {
            return;
        }
    }
}

fn run_against(misbehaviour: Misbehaviour, workload: &str) -> corestate_bench::report::Report {
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
    ]
    .iter()
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
