//! The crash-test harness: K cycles of start → mixed writers on several
//! connections → SIGKILL at a random moment → restart → verify, all on one
//! data directory that keeps growing (1 MiB segments, so snapshots and
//! compaction happen along the way).
//!
//! Each writer connection owns its instances and keeps one request in
//! flight, recording every acknowledged result. After the restart every
//! acknowledged write must be there exactly as acknowledged; the one request
//! that was in flight may be present or absent, but whole.
//!
//! `CORESTATE_CRASH_CYCLES` (default 20) sets K; `CORESTATE_TEST_SEED`
//! repeats a run. The README gives the command for 1,000 cycles.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::{write_config, RawClient, Server};

const WRITERS: usize = 4;
const INSTANCES_PER_WRITER: usize = 12;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What an instance looks like as far as one writer knows.
#[derive(Clone, Debug, PartialEq)]
enum Known {
    Live {
        state: String,
        ctx: Value,
        offset: u64,
    },
    Deleted,
}

#[derive(Default)]
struct Ledger {
    /// Acknowledged state per instance.
    acked: HashMap<String, Known>,
    /// The request in flight when the server died, and what it would have made.
    in_flight: Option<(String, Known)>,
    /// Acknowledged machine versions (name, version) → checksum.
    machines: Vec<(String, u32, String)>,
}

fn definition(version: u32) -> Value {
    json!({"states": ["idle", "busy"], "initial": "idle", "transitions": [
        {"from": "idle", "event": "GO", "to": "busy"},
        {"from": "busy", "event": "DONE", "to": "idle"}],
        "meta": {"version": version}})
}

/// One request; `None` once the server is gone (the harness's client panics
/// on a closed connection).
fn try_call(c: &mut RawClient, op: &str, params: &Value) -> Option<Value> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.call(op, params.clone()))).ok()
}

fn writer(
    addr: std::net::SocketAddr,
    w: usize,
    cycle: u64,
    seed: u64,
    stop: Arc<AtomicBool>,
    ledger: &mut Ledger,
) {
    let mut rng = Rng(seed ^ (w as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ cycle);
    let Ok(mut c) = std::panic::catch_unwind(|| RawClient::connect(addr)) else {
        return;
    };
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let id = format!("w{w}-i{}", rng.below(INSTANCES_PER_WRITER as u64));
        let roll = rng.below(100);
        let known = ledger.acked.get(&id).cloned();
        // Decide the request and what it would make of the instance.
        let (op, params, expect): (&str, Value, Option<Known>) = match (&known, roll) {
            (_, 0..=1) => {
                let version = 1000 + (cycle * 100 + n) as u32 % 60_000;
                ledger.in_flight = None;
                let Some(r) = try_call(
                    &mut c,
                    "PUT_MACHINE",
                    &json!({"machine": format!("extra{w}"), "version": version, "definition": definition(version)}),
                ) else {
                    return;
                };
                if r["status"] == "ok" {
                    let checksum = r["result"]["stored_checksum"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    ledger
                        .machines
                        .push((format!("extra{w}"), version, checksum));
                }
                continue;
            }
            (_, 2) if w == 0 => {
                if try_call(&mut c, "COMPACT", &json!({"force_snapshot": true})).is_none() {
                    return;
                }
                continue;
            }
            (Some(Known::Live { .. }), 3) => {
                if try_call(&mut c, "SNAPSHOT_INSTANCE", &json!({"instance_id": id})).is_none() {
                    return;
                }
                continue;
            }
            (None | Some(Known::Deleted), _) => (
                "CREATE_INSTANCE",
                json!({"machine": "job", "version": 1, "instance_id": id, "initial_ctx": {"n": n, "w": w}}),
                Some(Known::Live {
                    state: "idle".into(),
                    ctx: json!({"n": n, "w": w}),
                    offset: 0,
                }),
            ),
            (Some(Known::Live { .. }), 4..=9) => (
                "DELETE_INSTANCE",
                json!({"instance_id": id}),
                Some(Known::Deleted),
            ),
            (Some(Known::Live { state, ctx, .. }), _) => {
                let event = if state == "idle" { "GO" } else { "DONE" };
                let to = if state == "idle" { "busy" } else { "idle" };
                let mut new_ctx = ctx.clone();
                new_ctx["n"] = json!(n);
                new_ctx["cycle"] = json!(cycle);
                (
                    "APPLY_EVENT",
                    json!({"instance_id": id, "event": event, "payload": {"n": n, "cycle": cycle}}),
                    Some(Known::Live {
                        state: to.into(),
                        ctx: new_ctx,
                        offset: 0,
                    }),
                )
            }
        };
        ledger.in_flight = expect.clone().map(|k| (id.clone(), k));
        // The server died mid-request: in_flight stays recorded.
        let Some(response) = try_call(&mut c, op, &params) else {
            return;
        };
        ledger.in_flight = None;
        assert_eq!(response["status"], "ok", "{op} {params} failed: {response}");
        let offset = response["result"]["wal_offset"].as_u64().unwrap_or(0);
        match expect {
            Some(Known::Live { state, ctx, .. }) => {
                ledger.acked.insert(id, Known::Live { state, ctx, offset });
            }
            Some(Known::Deleted) => {
                ledger.acked.insert(id, Known::Deleted);
            }
            None => {}
        }
    }
}

fn matches(got: &Value, k: &Known) -> bool {
    match k {
        Known::Deleted => got["status"] == "error" && got["error"]["code"] == "INSTANCE_NOT_FOUND",
        Known::Live { state, ctx, offset } => {
            got["status"] == "ok"
                && got["result"]["state"] == state.as_str()
                && got["result"]["ctx"] == *ctx
                && (*offset == 0 || got["result"]["last_wal_offset"].as_u64() == Some(*offset))
        }
    }
}

#[test]
fn every_acknowledged_write_survives_repeated_sigkills() {
    let cycles: u64 = std::env::var("CORESTATE_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("CORESTATE_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            Instant::now().elapsed().as_nanos() as u64 ^ std::process::id() as u64 | 1
        });
    eprintln!("crash cycles: {cycles}, seed {seed} (CORESTATE_TEST_SEED={seed} repeats this run)");
    // Writers lose their server on purpose every cycle; their client's
    // panics are expected and caught, so keep them out of the output.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let writer = thread::current()
            .name()
            .is_some_and(|n| n.starts_with("crash-writer"));
        if !writer {
            default_hook(info);
        }
    }));
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), "storage:\n  wal_segment_size_mb: 1\n");
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let config = config.to_str().unwrap().to_owned();
    let mut server = Server::start_in(&data, &["--config", &config]);
    server.raw().ok(
        "PUT_MACHINE",
        json!({"machine": "job", "version": 1, "definition": definition(1)}),
    );
    let mut ledgers: Vec<Ledger> = (0..WRITERS).map(|_| Ledger::default()).collect();
    let mut rng = Rng(seed);
    let mut acked_total = 0usize;
    for cycle in 0..cycles {
        let stop = Arc::new(AtomicBool::new(false));
        let addr = server.addr();
        let kill_after = Duration::from_millis(200 + rng.below(800));
        thread::scope(|s| {
            for (w, ledger) in ledgers.iter_mut().enumerate() {
                let stop = stop.clone();
                thread::Builder::new()
                    .name(format!("crash-writer-{w}"))
                    .spawn_scoped(s, move || writer(addr, w, cycle, seed, stop, ledger))
                    .expect("spawn writer");
            }
            thread::sleep(kill_after);
            server.sigkill();
            stop.store(true, Ordering::Relaxed);
        });
        server.restart();
        let mut c = server.raw();
        for (w, ledger) in ledgers.iter_mut().enumerate() {
            for (id, known) in ledger.acked.clone() {
                let got = c.call("GET_INSTANCE", json!({"instance_id": id}));
                let in_flight = ledger.in_flight.as_ref().filter(|(i, _)| *i == id);
                if matches(&got, &known) {
                    continue;
                }
                match in_flight {
                    // The unacknowledged request was applied, whole: adopt it.
                    Some((_, k)) if matches(&got, k) => {
                        let adopted = match k {
                            Known::Live { state, ctx, .. } => Known::Live {
                                state: state.clone(),
                                ctx: ctx.clone(),
                                offset: got["result"]["last_wal_offset"].as_u64().unwrap_or(0),
                            },
                            Known::Deleted => Known::Deleted,
                        };
                        ledger.acked.insert(id.clone(), adopted);
                    }
                    _ => panic!(
                        "cycle {cycle} (seed {seed}): writer {w} instance {id}: acknowledged {known:?}, \
                         in flight {in_flight:?}, found {got}\nserver stderr:\n{}",
                        server.stderr_tail()
                    ),
                }
            }
            // An in-flight create of a never-acknowledged instance: whole or absent.
            if let Some((id, k)) = ledger.in_flight.take() {
                if let std::collections::hash_map::Entry::Vacant(slot) = ledger.acked.entry(id) {
                    let got = c.call("GET_INSTANCE", json!({"instance_id": slot.key()}));
                    if got["status"] == "ok" {
                        assert!(
                            matches(&got, &k),
                            "half-present create {}: {got}",
                            slot.key()
                        );
                        slot.insert(k);
                    }
                }
            }
            for (name, version, checksum) in &ledger.machines {
                let got = c.ok("GET_MACHINE", json!({"machine": name, "version": version}));
                assert_eq!(
                    got["checksum"],
                    checksum.as_str(),
                    "machine {name} v{version}"
                );
            }
            acked_total += ledger.acked.len();
        }
    }
    eprintln!("{cycles} cycles verified; {acked_total} instance checks");
    let stderr = server.stderr();
    assert!(!stderr.contains("panic"), "server panicked:\n{stderr}");
}
