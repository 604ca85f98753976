//! BATCH (spec §9; issue 3): best-effort batches report every op in order;
//! atomic batches are all-or-nothing across shards (two-phase commit),
//! isolated from concurrent readers, and atomic across a SIGKILL at any
//! moment. Only instance ops and machine/instance reads may appear inside;
//! a nested BATCH or a session op rejects the whole batch; at most 100 ops.
//!
//! Instances are placed by `crc32c(instance_id) % 2` (the harness runs two
//! shards); the cross-shard tests pick ids on both.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

use support::*;

/// Shards the harness starts the server with.
const SHARDS: usize = 2;
/// Ops a batch may hold (the server's default `max_batch_ops`).
const MAX_BATCH_OPS: usize = 100;
/// How long a watcher waits for an event that must come.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a watcher listens to be sure no (further) event comes.
const QUIET_PERIOD: Duration = Duration::from_millis(400);
/// Balance every account starts with in the transfer tests.
const INITIAL_BALANCE: i64 = 1_000;

fn shard_of(id: &str) -> usize {
    crc32c::crc32c(id.as_bytes()) as usize % SHARDS
}

/// The first `count` ids `{prefix}-{n}` that land on `shard`.
fn ids_on_shard(prefix: &str, shard: usize, count: usize) -> Vec<String> {
    (0u64..)
        .map(|n| format!("{prefix}-{n}"))
        .filter(|id| shard_of(id) == shard)
        .take(count)
        .collect()
}

/// One id on shard 0 and one on shard 1.
fn pair(prefix: &str) -> (String, String) {
    (
        ids_on_shard(prefix, 0, 1).remove(0),
        ids_on_shard(prefix, 1, 1).remove(0),
    )
}

fn order_definition() -> Value {
    json!({
        "states": ["created", "paid", "shipped", "cancelled"],
        "initial": "created",
        "transitions": [
            {"from": "created", "event": "PAY", "to": "paid"},
            {"from": "paid", "event": "SHIP", "to": "shipped"},
            {"from": ["created", "paid"], "event": "CANCEL", "to": "cancelled"}
        ]
    })
}

/// An account: one state, MOVE overwrites the balance with the payload.
fn account_definition() -> Value {
    json!({
        "states": ["open"],
        "initial": "open",
        "transitions": [{"from": "open", "event": "MOVE", "to": "open"}]
    })
}

fn put_machine(client: &mut RawClient, name: &str, definition: Value) {
    client.ok(
        "PUT_MACHINE",
        json!({"machine": name, "version": 1, "definition": definition}),
    );
}

fn create(client: &mut RawClient, machine: &str, id: &str, ctx: Value) -> u64 {
    let r = client.ok(
        "CREATE_INSTANCE",
        json!({"machine": machine, "version": 1, "instance_id": id, "initial_ctx": ctx}),
    );
    r["wal_offset"].as_u64().expect("create wal_offset")
}

fn op(name: &str, params: Value) -> Value {
    json!({"op": name, "params": params})
}

fn apply_op(id: &str, event: &str, payload: Value) -> Value {
    op(
        "APPLY_EVENT",
        json!({"instance_id": id, "event": event, "payload": payload}),
    )
}

fn get_op(id: &str) -> Value {
    op("GET_INSTANCE", json!({"instance_id": id}))
}

/// GET_INSTANCE's result, or `None` for INSTANCE_NOT_FOUND.
fn get(client: &mut RawClient, id: &str) -> Option<Value> {
    let r = client.call("GET_INSTANCE", json!({"instance_id": id}));
    if r["status"] == "error" {
        assert_eq!(r["error"]["code"], "INSTANCE_NOT_FOUND", "GET {id}: {r}");
        return None;
    }
    Some(r["result"].clone())
}

/// Key names of a JSON object, in the order serde_json keeps them (sorted
/// unless `preserve_order`; used only for set comparison).
fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// Check one entry of a `results` array: `{error, result, status}`.
fn assert_ok_entry(entry: &Value, what: &str) -> Value {
    assert_eq!(
        keys(entry),
        BTreeSet::from(["error".into(), "result".into(), "status".into()]),
        "{what}: {entry}"
    );
    assert_eq!(entry["status"], "ok", "{what}: {entry}");
    assert!(entry["error"].is_null(), "{what}: {entry}");
    entry["result"].clone()
}

fn assert_error_entry(entry: &Value, code: &str, what: &str) -> Value {
    assert_eq!(
        keys(entry),
        BTreeSet::from(["error".into(), "result".into(), "status".into()]),
        "{what}: {entry}"
    );
    assert_eq!(entry["status"], "error", "{what}: {entry}");
    assert!(entry["result"].is_null(), "{what}: {entry}");
    assert_eq!(entry["error"]["code"], code, "{what}: {entry}");
    assert_eq!(entry["error"]["retryable"], false, "{what}: {entry}");
    entry["error"].clone()
}

/// A connection that only watches: WATCH_ALL, then events.
struct Watcher {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Watcher {
    fn subscribe(addr: SocketAddr, params: Value) -> Watcher {
        let stream = TcpStream::connect(addr).expect("connect watcher");
        stream.set_nodelay(true).ok();
        let mut w = Watcher {
            stream,
            buf: Vec::new(),
        };
        w.stream
            .write_all(&rcpx_json(&request("watch", "WATCH_ALL", params)))
            .expect("send WATCH_ALL");
        let r = w
            .next_message(RESPONSE_TIMEOUT)
            .expect("WATCH_ALL response");
        assert_eq!(r["type"], "response", "{r}");
        assert_eq!(r["status"], "ok", "{r}");
        w
    }

    fn next_message(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match take_rcpx_frame(&mut self.buf) {
                Ok(Some(frame)) => {
                    assert_server_frame(&frame);
                    return Some(frame.json());
                }
                Ok(None) => {}
                Err(e) => panic!("watcher: {e}"),
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            self.stream
                .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))
                .expect("set read timeout");
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("watcher: the server closed the connection"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("watcher: read failed: {e}"),
            }
        }
    }

    fn next_event(&mut self, timeout: Duration) -> Option<Value> {
        let e = self.next_message(timeout)?;
        assert_eq!(e["type"], "event", "a watcher gets only events: {e}");
        Some(e)
    }

    /// Exactly `n` events, then quiet.
    fn expect_events(&mut self, n: usize, context: &str, server: &Server) -> Vec<Value> {
        let mut got = Vec::new();
        while got.len() < n {
            match self.next_event(EVENT_TIMEOUT) {
                Some(e) => got.push(e),
                None => panic!(
                    "watcher ({context}): {} of {n} events; got {got:#?}\n{}",
                    got.len(),
                    server.stderr_tail()
                ),
            }
        }
        if let Some(e) = self.next_event(QUIET_PERIOD) {
            panic!("watcher ({context}): unexpected event {e}");
        }
        got
    }
}

/// A small deterministic PRNG (xorshift64*), seeded per test and printed.
struct Rng(u64);

impl Rng {
    fn seeded(name: &str) -> Rng {
        let seed = match std::env::var("CORESTATE_TEST_SEED") {
            Ok(s) => s.parse().expect("CORESTATE_TEST_SEED is a u64"),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1),
        };
        eprintln!("{name}: seed {seed} (set CORESTATE_TEST_SEED to repeat)");
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---------------------------------------------------------------------------
// Best effort
// ---------------------------------------------------------------------------

#[test]
fn best_effort_reports_every_op_in_order() {
    let server = Server::start(&[]);
    let mut c = server.raw();
    put_machine(&mut c, "order", order_definition());
    let (x, y) = pair("be");
    create(&mut c, "order", &y, json!({"n": 1}));

    let ops = vec![
        op(
            "CREATE_INSTANCE",
            json!({"machine": "order", "version": 1, "instance_id": x}),
        ),
        apply_op(&x, "PAY", json!({"amount": 7})),
        apply_op("be-missing", "PAY", Value::Null),
        get_op(&x),
        op("GET_MACHINE", json!({"machine": "order", "version": 1})),
        apply_op(&y, "SHIP", Value::Null),
        op("LIST_MACHINES", Value::Null),
        op("GET_MACHINE", json!({"machine": "nope", "version": 1})),
        apply_op(&y, "CANCEL", json!({"why": "test"})),
        op("DELETE_INSTANCE", json!({"instance_id": "be-missing"})),
        op(
            "CREATE_INSTANCE",
            json!({"machine": "order", "version": 1, "instance_id": y}),
        ),
        op("APPLY_EVENT", json!({"instance_id": x})),
        get_op(&y),
    ];
    for params in [
        json!({"ops": ops}),
        json!({"mode": "best_effort", "ops": ops}),
    ] {
        // Run twice: the second time on the state the first left behind.
        let first_run = params.get("mode").is_none();
        let r = c.ok("BATCH", params);
        assert_eq!(keys(&r), BTreeSet::from(["results".into()]), "{r}");
        let results = r["results"].as_array().expect("results array");
        assert_eq!(results.len(), ops.len(), "{r}");
        if first_run {
            let created = assert_ok_entry(&results[0], "create x");
            assert_eq!(created["instance_id"], x.as_str());
            let paid = assert_ok_entry(&results[1], "pay x");
            assert_eq!(paid["to_state"], "paid");
            assert!(paid["wal_offset"].as_u64().unwrap() > created["wal_offset"].as_u64().unwrap());
            let got = assert_ok_entry(&results[3], "get x after the pay in the same batch");
            assert_eq!(got["state"], "paid", "{got}");
            assert_eq!(got["ctx"], json!({"amount": 7}));
            assert_error_entry(&results[5], "INVALID_TRANSITION", "ship y from created");
            let cancelled = assert_ok_entry(&results[8], "cancel y");
            assert_eq!(cancelled["ctx"], json!({"n": 1, "why": "test"}));
            let got = assert_ok_entry(&results[12], "get y");
            assert_eq!(got["state"], "cancelled", "{got}");
        } else {
            assert_error_entry(&results[0], "INSTANCE_EXISTS", "create x again");
            assert_error_entry(&results[1], "INVALID_TRANSITION", "pay x again");
            assert_ok_entry(&results[3], "get x");
            assert_error_entry(&results[5], "INVALID_TRANSITION", "ship y");
            assert_error_entry(&results[8], "INVALID_TRANSITION", "cancel y again");
            assert_ok_entry(&results[12], "get y");
        }
        assert_error_entry(
            &results[2],
            "INSTANCE_NOT_FOUND",
            "apply on a missing instance",
        );
        let m = assert_ok_entry(&results[4], "get machine");
        assert!(m["definition"].is_object(), "{m}");
        let list = assert_ok_entry(&results[6], "list machines");
        assert_eq!(
            list["items"],
            json!([{"machine": "order", "versions": [1]}])
        );
        assert_error_entry(&results[7], "MACHINE_NOT_FOUND", "get unknown machine");
        assert_error_entry(&results[9], "INSTANCE_NOT_FOUND", "delete missing");
        assert_error_entry(&results[10], "INSTANCE_EXISTS", "create y");
        assert_error_entry(&results[11], "BAD_REQUEST", "apply without event");
    }
    // What succeeded stays applied.
    assert_eq!(get(&mut c, &x).unwrap()["state"], "paid");
    assert_eq!(get(&mut c, &y).unwrap()["state"], "cancelled");

    // Empty ops, and the `operations` alias.
    assert_eq!(c.ok("BATCH", json!({"ops": []})), json!({"results": []}));
    let r = c.ok("BATCH", json!({"operations": [get_op(&x), get_op(&y)]}));
    assert_eq!(r["results"].as_array().map(Vec::len), Some(2), "{r}");
    assert_eq!(r["results"][0]["result"]["state"], "paid", "{r}");
    let r = c.ok(
        "BATCH",
        json!({"mode": "atomic", "operations": [apply_op(&x, "SHIP", json!({"via": "alias"}))]}),
    );
    assert_eq!(r["results"][0]["result"]["to_state"], "shipped", "{r}");
    let e = c.err_code("BATCH", json!({"mode": "atomic"}), "BAD_REQUEST");
    assert_eq!(e["message"], "invalid request: missing ops array", "{e}");
}

// ---------------------------------------------------------------------------
// Atomic success
// ---------------------------------------------------------------------------

#[test]
fn atomic_batches_apply_everything_on_every_shard() {
    let server = Server::start(&[]);
    let mut c = server.raw();
    put_machine(&mut c, "acct", account_definition());
    put_machine(&mut c, "order", order_definition());
    let (a, b) = pair("ok");
    let mut watcher = Watcher::subscribe(server.addr(), json!({"include_ctx": true}));

    // Cross-shard: creates, applies, reads that see the batch's own writes.
    let ops = vec![
        op(
            "CREATE_INSTANCE",
            json!({"machine": "acct", "version": 1, "instance_id": a,
                                     "initial_ctx": {"bal": 100}}),
        ),
        op(
            "CREATE_INSTANCE",
            json!({"machine": "acct", "version": 1, "instance_id": b,
                                     "initial_ctx": {"bal": 0}}),
        ),
        apply_op(&a, "MOVE", json!({"bal": 60})),
        apply_op(&b, "MOVE", json!({"bal": 40})),
        get_op(&a),
        get_op(&b),
        op("GET_MACHINE", json!({"machine": "acct", "version": 1})),
    ];
    let r = c.ok("BATCH", json!({"mode": "atomic", "ops": ops}));
    let results = r["results"].as_array().expect("results");
    assert_eq!(results.len(), ops.len(), "{r}");
    for (i, entry) in results.iter().enumerate() {
        assert_ok_entry(entry, &format!("op {i}"));
    }
    assert_eq!(results[4]["result"]["ctx"], json!({"bal": 60}), "{r}");
    assert_eq!(results[5]["result"]["ctx"], json!({"bal": 40}), "{r}");
    let mut offsets: Vec<u64> = (0..4)
        .map(|i| results[i]["result"]["wal_offset"].as_u64().unwrap())
        .collect();
    assert_eq!(
        offsets.iter().collect::<BTreeSet<_>>().len(),
        4,
        "distinct offsets: {offsets:?}"
    );
    // Visible outside the batch at once, on both shards.
    assert_eq!(get(&mut c, &a).unwrap()["ctx"], json!({"bal": 60}));
    assert_eq!(get(&mut c, &b).unwrap()["ctx"], json!({"bal": 40}));

    // The watcher gets both applies, in offset order, and nothing for creates.
    let apply_offsets = {
        let mut o = vec![offsets[2], offsets[3]];
        o.sort_unstable();
        o
    };
    let got = watcher.expect_events(2, "cross-shard batch", &server);
    assert_eq!(
        got.iter()
            .map(|e| e["wal_offset"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        apply_offsets
    );
    for e in &got {
        let want_ctx = if e["instance_id"] == a.as_str() {
            json!({"bal": 60})
        } else {
            json!({"bal": 40})
        };
        assert_eq!(e["ctx"], want_ctx, "{e}");
        assert_eq!(e["event"], "MOVE", "{e}");
    }

    // Single-shard fast path: several ops on one instance, one record.
    let (x, _) = pair("single");
    let r = c.ok(
        "BATCH",
        json!({"mode": "atomic", "ops": [
            op("CREATE_INSTANCE", json!({"machine": "order", "version": 1, "instance_id": x})),
            apply_op(&x, "PAY", json!({"p": 1})),
            apply_op(&x, "SHIP", json!({"s": 2})),
            get_op(&x),
        ]}),
    );
    assert_eq!(r["results"][3]["result"]["state"], "shipped", "{r}");
    assert_eq!(
        r["results"][3]["result"]["ctx"],
        json!({"p": 1, "s": 2}),
        "{r}"
    );
    offsets = (1..3)
        .map(|i| r["results"][i]["result"]["wal_offset"].as_u64().unwrap())
        .collect();
    let got = watcher.expect_events(2, "single-shard batch", &server);
    assert_eq!(
        got.iter()
            .map(|e| e["wal_offset"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        offsets
    );
    assert_eq!(got[0]["to_state"], "paid");
    assert_eq!(got[1]["to_state"], "shipped");

    // A DELETE in an atomic batch, with a create on the other shard.
    let (_, z) = pair("single");
    let r = c.ok(
        "BATCH",
        json!({"mode": "atomic", "ops": [
            op("DELETE_INSTANCE", json!({"instance_id": x})),
            op("CREATE_INSTANCE", json!({"machine": "order", "version": 1, "instance_id": z})),
        ]}),
    );
    assert_eq!(r["results"][0]["result"]["deleted"], true, "{r}");
    assert!(get(&mut c, &x).is_none());
    assert_eq!(get(&mut c, &z).unwrap()["state"], "created");
    watcher.expect_events(0, "delete and create send nothing", &server);

    // The official client's batch(): atomic and best effort.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = rstmdb_connect(server.addr(), None).await.unwrap();
        let r = client
            .batch(
                vec![
                    apply_op(&a, "MOVE", json!({"bal": 50})),
                    apply_op(&b, "MOVE", json!({"bal": 50})),
                ],
                true,
            )
            .await
            .unwrap();
        assert_eq!(r["results"][1]["result"]["ctx"], json!({"bal": 50}), "{r}");
        let err = client
            .batch(
                vec![
                    apply_op(&a, "MOVE", json!({"bal": 0})),
                    apply_op(&b, "NOPE", Value::Null),
                ],
                true,
            )
            .await
            .unwrap_err();
        assert_eq!(error_code(&err), "BAD_REQUEST", "{err}");
        let r = client
            .batch(vec![get_op(&a), apply_op(&b, "NOPE", Value::Null)], false)
            .await
            .unwrap();
        assert_eq!(r["results"][0]["result"]["ctx"], json!({"bal": 50}), "{r}");
        assert_eq!(r["results"][1]["status"], "error", "{r}");
    });
}

// ---------------------------------------------------------------------------
// Atomic failure
// ---------------------------------------------------------------------------

/// Everything observable about an instance.
fn snapshot(c: &mut RawClient, id: &str) -> Option<Value> {
    get(c, id)
}

/// Run `ops` atomically; it must fail at `index` (`op_name`, `code`).
fn expect_atomic_failure(
    c: &mut RawClient,
    ops: &[Value],
    index: usize,
    op_name: &str,
    code: &str,
) -> Value {
    let e = c.err_code(
        "BATCH",
        json!({"mode": "atomic", "ops": ops}),
        "BAD_REQUEST",
    );
    let message = e["message"].as_str().unwrap_or_default();
    let prefix = format!(
        "invalid request: atomic batch failed: op {index} ({op_name}) failed with {code}: "
    );
    assert!(
        message.starts_with(&prefix),
        "message {message:?} should start with {prefix:?}"
    );
    let details = &e["details"];
    assert_eq!(details["failed_op_index"], index, "{e}");
    assert_eq!(details["failed_op"], op_name, "{e}");
    assert_eq!(details["failed_code"], code, "{e}");
    assert_eq!(details["applied"], false, "{e}");
    let failed_message = details["failed_message"].as_str().expect("failed_message");
    assert!(
        !failed_message.is_empty() && message.contains(failed_message),
        "{e}"
    );
    assert_eq!(e["retryable"], false, "{e}");
    e
}

#[test]
fn a_failing_atomic_batch_leaves_no_trace_on_any_shard() {
    let mut server = Server::start(&[]);
    let mut c = server.raw();
    put_machine(&mut c, "order", order_definition());
    let a = ids_on_shard("fail", 0, 2);
    let b = ids_on_shard("fail", 1, 2);
    for id in a.iter().chain(&b) {
        create(&mut c, "order", id, json!({"v": 0}));
    }
    let mut watcher = Watcher::subscribe(server.addr(), json!({}));
    let pay = c.ok(
        "APPLY_EVENT",
        json!({"instance_id": a[0], "event": "PAY", "payload": {"v": 1}}),
    );
    let e = watcher
        .expect_events(1, "the PAY before the batches", &server)
        .remove(0);
    assert_eq!(e["wal_offset"], pay["wal_offset"], "{e}");
    let ids: Vec<String> = a.iter().chain(&b).cloned().collect();
    let new_a = ids_on_shard("fresh", 0, 1).remove(0);
    let new_b = ids_on_shard("fresh", 1, 1).remove(0);
    let missing_a = ids_on_shard("missing", 0, 1).remove(0);
    let before: BTreeMap<String, Option<Value>> = ids
        .iter()
        .map(|id| (id.clone(), snapshot(&mut c, id)))
        .collect();

    let poisoned = json!({"v": 666, "poison": true});
    let cases: Vec<(&str, Vec<Value>, usize, &str, &str)> = vec![
        (
            // Shard 0 prepares (and holds) its part; shard 1 fails at its last op.
            "fails on the second shard after the first prepared",
            vec![
                apply_op(&a[0], "SHIP", poisoned.clone()),
                op(
                    "CREATE_INSTANCE",
                    json!({"machine": "order", "version": 1,
                                             "instance_id": new_a}),
                ),
                op(
                    "APPLY_EVENT",
                    json!({"instance_id": b[0], "event": "PAY",
                                         "payload": poisoned, "idempotency_key": "k-pay"}),
                ),
                op(
                    "CREATE_INSTANCE",
                    json!({"machine": "order", "version": 1,
                                             "instance_id": new_b}),
                ),
                op("DELETE_INSTANCE", json!({"instance_id": b[1]})),
                apply_op(&b[0], "PAY", Value::Null),
            ],
            5,
            "APPLY_EVENT",
            "INVALID_TRANSITION",
        ),
        (
            "fails on the first shard, in the middle of its ops",
            vec![
                apply_op(&b[0], "CANCEL", poisoned.clone()),
                apply_op(&a[1], "PAY", poisoned.clone()),
                apply_op(&missing_a, "PAY", Value::Null),
                apply_op(&a[0], "SHIP", poisoned.clone()),
            ],
            2,
            "APPLY_EVENT",
            "INSTANCE_NOT_FOUND",
        ),
        (
            "single shard (fast path)",
            vec![
                apply_op(&a[1], "PAY", poisoned.clone()),
                op("DELETE_INSTANCE", json!({"instance_id": a[0]})),
                op(
                    "CREATE_INSTANCE",
                    json!({"machine": "order", "version": 1,
                                             "instance_id": new_a}),
                ),
                op(
                    "CREATE_INSTANCE",
                    json!({"machine": "order", "version": 1,
                                             "instance_id": a[1]}),
                ),
            ],
            3,
            "CREATE_INSTANCE",
            "INSTANCE_EXISTS",
        ),
        (
            "a machine read fails",
            vec![
                apply_op(&a[1], "PAY", poisoned.clone()),
                apply_op(&b[1], "PAY", poisoned.clone()),
                op("GET_MACHINE", json!({"machine": "nope", "version": 1})),
            ],
            2,
            "GET_MACHINE",
            "MACHINE_NOT_FOUND",
        ),
        (
            "an op with bad params",
            vec![
                apply_op(&a[1], "PAY", poisoned.clone()),
                apply_op(&b[1], "PAY", poisoned.clone()),
                op("APPLY_EVENT", json!({"instance_id": b[1]})),
            ],
            2,
            "APPLY_EVENT",
            "BAD_REQUEST",
        ),
        (
            "optimistic concurrency fails on the second shard",
            vec![
                apply_op(&a[1], "PAY", poisoned.clone()),
                op(
                    "APPLY_EVENT",
                    json!({"instance_id": b[1], "event": "PAY",
                                         "expected_wal_offset": 1}),
                ),
            ],
            1,
            "APPLY_EVENT",
            "CONFLICT",
        ),
    ];
    for (what, ops, index, op_name, code) in &cases {
        eprintln!("atomic failure case: {what}");
        expect_atomic_failure(&mut c, ops, *index, op_name, code);
        for id in &ids {
            assert_eq!(
                snapshot(&mut c, id),
                before[id],
                "{what}: instance {id} changed\n{}",
                server.stderr_tail()
            );
        }
        assert!(snapshot(&mut c, &new_a).is_none(), "{what}: {new_a} exists");
        assert!(snapshot(&mut c, &new_b).is_none(), "{what}: {new_b} exists");
    }
    // Watchers were told nothing.
    if let Some(e) = watcher.next_event(QUIET_PERIOD) {
        panic!("a watcher received an event of a failed atomic batch: {e}");
    }

    // Later operations behave as if the batches never ran: the creates
    // succeed, the idempotency key is fresh, the offset check passes
    // against the pre-batch offset.
    let fresh = c.ok(
        "APPLY_EVENT",
        json!({"instance_id": b[0], "event": "PAY", "idempotency_key": "k-pay",
               "payload": {"v": 2}}),
    );
    assert_eq!(
        fresh["applied"], true,
        "key of a failed batch must be unused: {fresh}"
    );
    assert_eq!(fresh["ctx"], json!({"v": 2}), "{fresh}");
    let ship = c.ok(
        "APPLY_EVENT",
        json!({"instance_id": a[0], "event": "SHIP",
               "expected_wal_offset": pay["wal_offset"]}),
    );
    assert_eq!(ship["ctx"], json!({"v": 1}), "{ship}");
    create(&mut c, "order", &new_a, json!({}));
    create(&mut c, "order", &new_b, json!({}));
    let got = watcher.expect_events(2, "the later applies only", &server);
    let got_offsets: BTreeSet<u64> = got
        .iter()
        .map(|e| e["wal_offset"].as_u64().unwrap())
        .collect();
    let want: BTreeSet<u64> = [&fresh, &ship]
        .iter()
        .map(|r| r["wal_offset"].as_u64().unwrap())
        .collect();
    assert_eq!(got_offsets, want);
    for e in &got {
        assert!(e["ctx"].get("poison").is_none(), "{e}");
    }

    // A restart replays the logs: still no trace (aborted prepares stay aborted).
    let now: BTreeMap<String, Option<Value>> = ids
        .iter()
        .chain([&new_a, &new_b])
        .map(|id| (id.clone(), snapshot(&mut c, id)))
        .collect();
    server.restart();
    let mut c = server.raw();
    for (id, want) in &now {
        assert_eq!(
            &snapshot(&mut c, id),
            want,
            "after restart: {id}\n{}",
            server.stderr_tail()
        );
    }
    let listed = c.ok("LIST_INSTANCES", json!({"limit": 100}));
    assert_eq!(
        listed["total"],
        now.values().filter(|v| v.is_some()).count(),
        "{listed}"
    );
}

// ---------------------------------------------------------------------------
// What a batch may contain
// ---------------------------------------------------------------------------

#[test]
fn nested_batches_session_ops_and_oversized_batches_are_rejected_whole() {
    let server = Server::start(&[]);
    let mut c = server.raw();
    put_machine(&mut c, "order", order_definition());
    let (x, y) = pair("reject");
    let create = |id: &str| {
        op(
            "CREATE_INSTANCE",
            json!({"machine": "order", "version": 1, "instance_id": id}),
        )
    };
    // Elements that cannot run in a batch: the session/connection operations
    // and batches inside batches, and malformed elements.
    let refused = [
        op("BATCH", json!({"ops": [create(&y)]})),
        op("HELLO", json!({"protocol_version": 1})),
        op("AUTH", json!({"method": "bearer", "token": "t"})),
        op("BYE", Value::Null),
        op("WATCH_ALL", json!({})),
        op("WATCH_INSTANCE", json!({"instance_id": x})),
        op("UNWATCH", json!({"subscription_id": "sub-x"})),
        json!({"params": {}}),
        json!({"op": 5}),
        json!({"op": "NOT_AN_OP"}),
    ];
    // Atomic: refused whole, before anything runs, naming the element.
    let atomic_only = [
        op("INFO", Value::Null),
        op(
            "PUT_MACHINE",
            json!({"machine": "m", "version": 1, "definition": order_definition()}),
        ),
        op("LIST_INSTANCES", json!({})),
    ];
    for bad in refused.iter().chain(atomic_only.iter()) {
        let ops = json!([create(&x), bad, create(&y)]);
        let e = c.err_code(
            "BATCH",
            json!({"mode": "atomic", "ops": ops}),
            "BAD_REQUEST",
        );
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .starts_with("invalid request: "),
            "{e}"
        );
        assert_eq!(e["details"]["failed_op_index"], 1, "{bad}: {e}");
        assert_eq!(e["details"]["applied"], false, "{e}");
        assert!(get(&mut c, &x).is_none(), "atomic {bad}: {x} exists");
        assert!(get(&mut c, &y).is_none(), "atomic {bad}: {y} exists");
    }
    // Best effort: the element that cannot run gets its own error; the
    // others run.
    for (i, bad) in refused.iter().enumerate() {
        let (x, y) = (format!("{x}-{i}"), format!("{y}-{i}"));
        let ops = json!([create(&x), bad, create(&y)]);
        let r = c.ok("BATCH", json!({"mode": "best_effort", "ops": ops}));
        let results = r["results"].as_array().unwrap();
        assert_eq!(results.len(), 3, "{r}");
        assert_eq!(results[0]["status"], "ok", "{r}");
        assert_eq!(results[1]["status"], "error", "{bad}: {r}");
        assert_eq!(results[1]["error"]["code"], "BAD_REQUEST", "{r}");
        assert_eq!(results[2]["status"], "ok", "{r}");
        assert!(get(&mut c, &x).is_some() && get(&mut c, &y).is_some());
    }
    // The connection is still open and usable (the BYE inside did nothing).
    c.assert_alive();

    // Size limit: 100 ops run, 101 are refused before anything runs.
    for mode in ["atomic", "best_effort"] {
        let ids: Vec<String> = (0..=MAX_BATCH_OPS)
            .map(|i| format!("size-{mode}-{i}"))
            .collect();
        let ops: Vec<Value> = ids
            .iter()
            .map(|id| {
                op(
                    "CREATE_INSTANCE",
                    json!({"machine": "order", "version": 1, "instance_id": id}),
                )
            })
            .collect();
        let e = c.err_code("BATCH", json!({"mode": mode, "ops": ops}), "BAD_REQUEST");
        assert_eq!(
            e["message"],
            format!(
                "invalid request: batch size {} exceeds limit {MAX_BATCH_OPS}",
                MAX_BATCH_OPS + 1
            ),
            "{e}"
        );
        assert!(
            ids.iter().all(|id| get(&mut c, id).is_none()),
            "{mode}: 101 ops ran partly"
        );
        let r = c.ok("BATCH", json!({"mode": mode, "ops": ops[..MAX_BATCH_OPS]}));
        let results = r["results"].as_array().unwrap();
        assert_eq!(results.len(), MAX_BATCH_OPS);
        assert!(results.iter().all(|e| e["status"] == "ok"), "{mode}: {r}");
        let on_shard_0 = ids[..MAX_BATCH_OPS]
            .iter()
            .filter(|id| shard_of(id) == 0)
            .count();
        assert!(
            on_shard_0 > 0 && on_shard_0 < MAX_BATCH_OPS,
            "the 100 creates span both shards"
        );
    }
}

// ---------------------------------------------------------------------------
// Isolation under concurrent readers
// ---------------------------------------------------------------------------

/// What a transfer writer committed, by seq: (balance of a, balance of b).
type Ledger = BTreeMap<i64, (i64, i64)>;

/// One writer: transfers within its pair (a on shard 0, b on shard 1) for
/// `run_for`; every fourth round first tries a batch that must fail after
/// staging poison on shard 0. Returns the committed ledger.
async fn transfer_writer(
    addr: SocketAddr,
    a: String,
    b: String,
    run_for: Duration,
    seed: u64,
) -> Result<Ledger, String> {
    let mut c = AsyncRawClient::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut rng = Rng(seed | 1);
    let mut ledger = Ledger::new();
    let (mut bal_a, mut bal_b) = (INITIAL_BALANCE, INITIAL_BALANCE);
    ledger.insert(0, (bal_a, bal_b));
    let started = Instant::now();
    let mut seq = 0i64;
    while started.elapsed() < run_for {
        seq += 1;
        if seq % 4 == 0 {
            let poison = json!({"bal": -999_999, "seq": -1, "poison": true});
            let ops = json!([
                apply_op(&a, "MOVE", poison.clone()),
                apply_op(&b, "MOVE", poison),
                apply_op(&b, "NOPE", Value::Null),
            ]);
            let r = c
                .call("BATCH", json!({"mode": "atomic", "ops": ops}))
                .await
                .map_err(|e| format!("poisoned batch: {e}"))?;
            if r["status"] != "error" || r["error"]["details"]["failed_op_index"] != 2 {
                return Err(format!("poisoned batch must fail at op 2: {r}"));
            }
        }
        let k = 1 + rng.below(100) as i64;
        let (na, nb) = if rng.below(2) == 0 {
            (bal_a - k, bal_b + k)
        } else {
            (bal_a + k, bal_b - k)
        };
        let mut ops = vec![
            apply_op(&a, "MOVE", json!({"bal": na, "seq": seq})),
            apply_op(&b, "MOVE", json!({"bal": nb, "seq": seq})),
        ];
        if rng.below(2) == 0 {
            ops.reverse();
        }
        let r = c
            .call("BATCH", json!({"mode": "atomic", "ops": ops}))
            .await
            .map_err(|e| format!("transfer {seq}: {e}"))?;
        if r["status"] != "ok" {
            return Err(format!("transfer {seq} failed: {r}"));
        }
        bal_a = na;
        bal_b = nb;
        ledger.insert(seq, (na, nb));
    }
    Ok(ledger)
}

/// (seq, bal) from a GET_INSTANCE result.
fn seq_bal(result: &Value) -> Result<(i64, i64), String> {
    let ctx = &result["ctx"];
    if ctx.get("poison").is_some() {
        return Err(format!(
            "a reader saw staged state of a failed batch: {result}"
        ));
    }
    match (ctx["seq"].as_i64(), ctx["bal"].as_i64()) {
        (Some(s), Some(b)) => Ok((s, b)),
        _ => Err(format!("unexpected ctx: {result}")),
    }
}

/// Observations of one reader: (pair, seq of a, bal a, seq of b, bal b, how).
type Observation = (usize, i64, i64, i64, i64, &'static str);

/// A reader: in a loop over both pairs, GET a then b, GET b then a, and an
/// atomic BATCH of both GETs. Checks what needs no ledger on the fly.
async fn reader(
    addr: SocketAddr,
    pairs: Vec<(String, String)>,
    run_for: Duration,
) -> Result<Vec<Observation>, String> {
    let mut c = AsyncRawClient::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut seen = Vec::new();
    let started = Instant::now();
    let mut round = 0usize;
    while started.elapsed() < run_for {
        let p = round % pairs.len();
        let (a, b) = &pairs[p];
        let get = |id: &str| json!({"instance_id": id});
        let how = ["a-then-b", "b-then-a", "atomic-batch"][round % 3];
        let (sa, ba, sb, bb) = match how {
            "a-then-b" | "b-then-a" => {
                let first_is_a = how == "a-then-b";
                let (first, second) = if first_is_a { (a, b) } else { (b, a) };
                let r1 = c
                    .call("GET_INSTANCE", get(first))
                    .await
                    .map_err(|e| e.to_string())?;
                let r2 = c
                    .call("GET_INSTANCE", get(second))
                    .await
                    .map_err(|e| e.to_string())?;
                let (s1, b1) = seq_bal(&r1["result"])?;
                let (s2, b2) = seq_bal(&r2["result"])?;
                // Once any part of a batch is visible, all of it is: the
                // second read can never be older than the first.
                if s2 < s1 {
                    return Err(format!(
                        "{how}: read {first} at seq {s1}, then {second} at older seq {s2}: \
                         a batch was half visible"
                    ));
                }
                if first_is_a {
                    (s1, b1, s2, b2)
                } else {
                    (s2, b2, s1, b1)
                }
            }
            _ => {
                let ops = json!([get_op(a), get_op(b)]);
                let r = c
                    .call("BATCH", json!({"mode": "atomic", "ops": ops}))
                    .await
                    .map_err(|e| e.to_string())?;
                if r["status"] != "ok" {
                    return Err(format!("atomic read batch failed: {r}"));
                }
                let (s1, b1) = seq_bal(&r["result"]["results"][0]["result"])?;
                let (s2, b2) = seq_bal(&r["result"]["results"][1]["result"])?;
                if s1 != s2 || b1 + b2 != 2 * INITIAL_BALANCE {
                    return Err(format!(
                        "an atomic batch of two GETs saw a at seq {s1} (bal {b1}) and b at seq \
                         {s2} (bal {b2}): not one consistent state"
                    ));
                }
                (s1, b1, s2, b2)
            }
        };
        if sa == sb && ba + bb != 2 * INITIAL_BALANCE {
            return Err(format!(
                "{how}: both at seq {sa} but {ba} + {bb} != {}",
                2 * INITIAL_BALANCE
            ));
        }
        seen.push((p, sa, ba, sb, bb, how));
        round += 1;
    }
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_readers_never_see_half_of_an_atomic_batch() {
    const PAIRS: usize = 2;
    const READERS: usize = 3;
    const RUN_FOR: Duration = Duration::from_secs(4);

    let server = Server::start(&[]);
    let mut c = server.raw();
    put_machine(&mut c, "acct", account_definition());
    let a = ids_on_shard("iso", 0, PAIRS);
    let b = ids_on_shard("iso", 1, PAIRS);
    let pairs: Vec<(String, String)> = a.into_iter().zip(b).collect();
    for (x, y) in &pairs {
        create(&mut c, "acct", x, json!({"bal": INITIAL_BALANCE, "seq": 0}));
        create(&mut c, "acct", y, json!({"bal": INITIAL_BALANCE, "seq": 0}));
    }
    let mut rng = Rng::seeded("isolation");
    let addr = server.addr();
    let writers: Vec<_> = pairs
        .iter()
        .map(|(x, y)| {
            tokio::spawn(transfer_writer(
                addr,
                x.clone(),
                y.clone(),
                RUN_FOR,
                rng.next(),
            ))
        })
        .collect();
    let readers: Vec<_> = (0..READERS)
        .map(|_| tokio::spawn(reader(addr, pairs.clone(), RUN_FOR)))
        .collect();
    let mut ledgers = Vec::new();
    for (i, w) in writers.into_iter().enumerate() {
        match w.await.expect("writer task") {
            Ok(l) => ledgers.push(l),
            Err(e) => panic!("writer {i}: {e}\nserver stderr:\n{}", server.stderr_tail()),
        }
    }
    let mut observations = Vec::new();
    for (i, r) in readers.into_iter().enumerate() {
        match r.await.expect("reader task") {
            Ok(o) => observations.extend(o),
            Err(e) => panic!("reader {i}: {e}\nserver stderr:\n{}", server.stderr_tail()),
        }
    }
    // Every value read is one some committed batch wrote.
    let mut by_how: BTreeMap<&str, usize> = BTreeMap::new();
    for (p, sa, ba, sb, bb, how) in &observations {
        let ledger = &ledgers[*p];
        assert_eq!(
            ledger.get(sa).map(|v| v.0),
            Some(*ba),
            "pair {p} a at seq {sa} read {ba} ({how})"
        );
        assert_eq!(
            ledger.get(sb).map(|v| v.1),
            Some(*bb),
            "pair {p} b at seq {sb} read {bb} ({how})"
        );
        *by_how.entry(how).or_default() += 1;
    }
    let transfers: usize = ledgers.iter().map(|l| l.len() - 1).sum();
    eprintln!(
        "isolation: {transfers} transfers ({:.0}/s atomic 2-op cross-shard batches, 1 writer per \
         pair, plus failing ones), reads checked: {by_how:?}",
        transfers as f64 / RUN_FOR.as_secs_f64()
    );
    assert!(
        transfers >= 20,
        "too few transfers to mean anything: {transfers}"
    );
    assert!(
        by_how.len() == 3 && by_how.values().all(|&n| n >= 10),
        "{by_how:?}"
    );
    // Final state is the last ledger entry.
    for ((x, y), ledger) in pairs.iter().zip(&ledgers) {
        let (last_seq, (ba, bb)) = ledger.iter().next_back().map(|(s, v)| (*s, *v)).unwrap();
        assert_eq!(seq_bal(&get(&mut c, x).unwrap()).unwrap(), (last_seq, ba));
        assert_eq!(seq_bal(&get(&mut c, y).unwrap()).unwrap(), (last_seq, bb));
    }
}

// ---------------------------------------------------------------------------
// SIGKILL during transfer batches
// ---------------------------------------------------------------------------

/// One connection's accounts and what it knows was committed.
#[derive(Debug, Clone)]
struct Owner {
    conn: usize,
    /// Two accounts on shard 0, two on shard 1.
    left: Vec<String>,
    right: Vec<String>,
    /// Acknowledged (bal, seq) per account.
    known: BTreeMap<String, (i64, i64)>,
    next_seq: i64,
}

/// The batch a connection had in flight at the kill: account → (bal, seq) after it.
type InFlight = BTreeMap<String, (i64, i64)>;

#[derive(Debug, Default)]
struct RoundLog {
    acks: usize,
    in_flight: Option<InFlight>,
    problems: Vec<String>,
    ended_by: String,
    ended_at: Option<Instant>,
}

async fn transfer_load(addr: SocketAddr, owner: &mut Owner, seed: u64) -> RoundLog {
    let mut log = RoundLog::default();
    let mut rng = Rng(seed | 1);
    let mut c = match AsyncRawClient::connect(addr).await {
        Ok(c) => c,
        Err(e) => {
            log.problems
                .push(format!("conn {}: connect: {e}", owner.conn));
            return log;
        }
    };
    loop {
        let seq = owner.next_seq;
        let x = owner.left[rng.below(2) as usize].clone();
        let y = owner.right[rng.below(2) as usize].clone();
        let k = 1 + rng.below(100) as i64;
        let (bx, by) = (owner.known[&x].0, owner.known[&y].0);
        let (nx, ny) = if rng.below(2) == 0 {
            (bx - k, by + k)
        } else {
            (bx + k, by - k)
        };
        let tx = format!("c{}-{seq}", owner.conn);
        let mut ops = vec![
            apply_op(&x, "MOVE", json!({"bal": nx, "seq": seq, "tx": tx})),
            apply_op(&y, "MOVE", json!({"bal": ny, "seq": seq, "tx": tx})),
        ];
        if rng.below(2) == 0 {
            ops.reverse();
        }
        let after: InFlight = BTreeMap::from([(x.clone(), (nx, seq)), (y.clone(), (ny, seq))]);
        log.in_flight = Some(after.clone());
        let r = match c.call("BATCH", json!({"mode": "atomic", "ops": ops})).await {
            Ok(r) => r,
            Err(e) => {
                log.ended_by = e.to_string();
                log.ended_at = Some(Instant::now());
                return log;
            }
        };
        if r["status"] != "ok" {
            log.problems
                .push(format!("conn {}: transfer {tx} failed: {r}", owner.conn));
            return log;
        }
        for (id, v) in after {
            owner.known.insert(id, v);
        }
        owner.next_seq += 1;
        log.in_flight = None;
        log.acks += 1;
    }
}

/// (bal, seq) of every account of `owner`, read from the server.
fn read_accounts(c: &mut RawClient, owner: &Owner) -> BTreeMap<String, (i64, i64)> {
    owner
        .left
        .iter()
        .chain(&owner.right)
        .map(|id| {
            let r = get(c, id).unwrap_or_else(|| panic!("account {id} vanished"));
            let ctx = &r["ctx"];
            (
                id.clone(),
                (
                    ctx["bal"].as_i64().unwrap_or(i64::MIN),
                    ctx["seq"].as_i64().unwrap_or(-1),
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_cross_shard_transfers_keeps_every_batch_whole() {
    const CONNECTIONS: usize = 4;
    const CYCLES: usize = 5;
    const ACCOUNTS_PER_SHARD_PER_CONN: usize = 2;
    const MIN_ACKS_PER_CYCLE: usize = 10;

    let dir = TempDir::new().unwrap();
    let mut server = Server::start_in(dir.path(), &[]);
    let mut c = server.raw();
    put_machine(&mut c, "acct", account_definition());
    let left = ids_on_shard("kill", 0, CONNECTIONS * ACCOUNTS_PER_SHARD_PER_CONN);
    let right = ids_on_shard("kill", 1, CONNECTIONS * ACCOUNTS_PER_SHARD_PER_CONN);
    let mut owners: Vec<Owner> = (0..CONNECTIONS)
        .map(|conn| {
            let l = left[conn * 2..conn * 2 + 2].to_vec();
            let r = right[conn * 2..conn * 2 + 2].to_vec();
            let known = l
                .iter()
                .chain(&r)
                .map(|id| (id.clone(), (INITIAL_BALANCE, 0)))
                .collect();
            Owner {
                conn,
                left: l,
                right: r,
                known,
                next_seq: 1,
            }
        })
        .collect();
    for id in left.iter().chain(&right) {
        create(
            &mut c,
            "acct",
            id,
            json!({"bal": INITIAL_BALANCE, "seq": 0}),
        );
    }
    let total = INITIAL_BALANCE * (left.len() + right.len()) as i64;
    let mut rng = Rng::seeded("kill test");
    let started = Instant::now();

    for cycle in 1..=CYCLES {
        let kill_after = Duration::from_millis(500 + rng.below(1000));
        let addr = server.addr();
        let tasks: Vec<_> = owners
            .iter()
            .cloned()
            .map(|mut owner| {
                let seed = rng.next();
                tokio::spawn(async move {
                    let log = transfer_load(addr, &mut owner, seed).await;
                    (owner, log)
                })
            })
            .collect();
        tokio::time::sleep(kill_after).await;
        let killed_at = Instant::now();
        server.sigkill();
        let mut logs = Vec::new();
        owners.clear();
        for t in tasks {
            let (owner, log) = t.await.expect("load task");
            owners.push(owner);
            logs.push(log);
        }
        let acks: usize = logs.iter().map(|l| l.acks).sum();
        let mut problems: Vec<String> = logs.iter().flat_map(|l| l.problems.clone()).collect();
        for (i, l) in logs.iter().enumerate() {
            if l.ended_at
                .is_some_and(|t| t + Duration::from_millis(5) < killed_at)
            {
                problems.push(format!("conn {i} ended before the kill: {}", l.ended_by));
            }
        }
        assert!(
            problems.is_empty(),
            "cycle {cycle}: {problems:#?}\nserver stderr:\n{}",
            server.stderr_tail()
        );
        assert!(
            acks >= MIN_ACKS_PER_CYCLE,
            "cycle {cycle}: only {acks} batches acknowledged before the kill\n{}",
            server.stderr_tail()
        );

        server.restart();
        let mut c = server.raw();
        let mut failures = Vec::new();
        let mut sum = 0i64;
        let mut in_flight_applied = 0;
        for (owner, log) in owners.iter_mut().zip(&logs) {
            let observed = read_accounts(&mut c, owner);
            sum += observed.values().map(|(b, _)| b).sum::<i64>();
            let flight = log.in_flight.clone().unwrap_or_default();
            // The in-flight batch: both of its accounts before it, or both after.
            let before_ok = flight.keys().all(|id| observed[id] == owner.known[id]);
            let after_ok = flight.iter().all(|(id, v)| observed[id] == *v);
            if !(before_ok || after_ok) {
                failures.push(format!(
                    "conn {}: in-flight batch {flight:?} half applied: observed {:?}, known {:?}",
                    owner.conn, observed, owner.known
                ));
            }
            if after_ok && !before_ok {
                in_flight_applied += 1;
            }
            // Everything acknowledged (and not touched by the in-flight batch) is there.
            for (id, want) in &owner.known {
                if !flight.contains_key(id) && observed[id] != *want {
                    failures.push(format!(
                        "conn {}: account {id} is {:?}, acknowledged {want:?}",
                        owner.conn, observed[id]
                    ));
                }
            }
            // Settle: what is on the server is what we know from now on.
            owner.known = observed;
            if after_ok && !before_ok {
                owner.next_seq += 1;
            }
        }
        if sum != total {
            failures.push(format!("sum of balances is {sum}, expected {total}"));
        }
        assert!(
            failures.is_empty(),
            "cycle {cycle} (killed after {kill_after:?}, {acks} acks):\n{}\nserver stderr:\n{}",
            failures.join("\n"),
            server.stderr_tail()
        );
        eprintln!(
            "cycle {cycle}: killed after {kill_after:?}; {acks} acknowledged transfers; \
             {in_flight_applied} of {} in-flight batches applied after restart; sum {sum}",
            logs.iter().filter(|l| l.in_flight.is_some()).count()
        );
    }

    // Nothing is left locked or in doubt: every account takes a new batch.
    let mut c = server.raw();
    for owner in &owners {
        let (x, y) = (&owner.left[0], &owner.right[0]);
        let (bx, by) = (owner.known[x].0, owner.known[y].0);
        let r = c.ok(
            "BATCH",
            json!({"mode": "atomic", "ops": [
                apply_op(x, "MOVE", json!({"bal": bx - 1, "seq": owner.next_seq})),
                apply_op(y, "MOVE", json!({"bal": by + 1, "seq": owner.next_seq})),
            ]}),
        );
        assert_eq!(r["results"].as_array().map(Vec::len), Some(2), "{r}");
    }
    let final_sum: i64 = owners
        .iter()
        .map(|o| {
            read_accounts(&mut c, o)
                .values()
                .map(|(b, _)| b)
                .sum::<i64>()
        })
        .sum();
    assert_eq!(final_sum, total);
    eprintln!(
        "kill test: {CYCLES} cycles in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
