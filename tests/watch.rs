//! Watch streams (spec §2.4, §10; issue 3): WATCH_INSTANCE, WATCH_ALL and
//! UNWATCH over raw sockets and through `rstmdb-client` 0.3.0's
//! subscription API — the event message byte order, filters, include_ctx,
//! auth, and the guarantees corestate adds over rstmdb 0.3: one stream in
//! strictly increasing `wal_offset` across shards, exactly once; replay
//! with `from_offset` with no gap and no duplicate; a slow watcher loses
//! nothing while the server's memory stays bounded.
//!
//! Instances are placed by `crc32c(instance_id) % 2` (the harness runs two
//! shards); every test that cares spreads its instances over both.

mod support;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{json, Value};

use support::*;

/// Shards the harness starts the server with.
const SHARDS: usize = 2;
/// How long a watcher waits for an event that must come.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a watcher listens to be sure no (further) event comes.
const QUIET_PERIOD: Duration = Duration::from_millis(400);
/// Events the server keeps in memory for watchers (`WATCH_RING_EVENTS_MAX`).
const SERVER_RING_EVENTS: usize = 65_536;
/// Keys of an event message, in the order spec §2.4 fixes.
const EVENT_KEYS: [&str; 11] = [
    "type",
    "subscription_id",
    "instance_id",
    "machine",
    "version",
    "wal_offset",
    "from_state",
    "to_state",
    "event",
    "payload",
    "ctx",
];

// ---------------------------------------------------------------------------
// Machines and placement
// ---------------------------------------------------------------------------

fn order_definition() -> Value {
    json!({
        "states": ["created", "paid", "shipped", "cancelled"],
        "initial": "created",
        "transitions": [
            {"from": "created", "event": "PAY", "to": "paid"},
            {"from": "paid", "event": "SHIP", "to": "shipped"},
            {"from": ["created", "paid"], "event": "CANCEL", "to": "cancelled"},
            {"from": ["created", "paid", "shipped", "cancelled"], "event": "NOTE", "to": "created"}
        ]
    })
}

fn ticket_definition() -> Value {
    json!({
        "states": ["open", "closed"],
        "initial": "open",
        "transitions": [
            {"from": "open", "event": "CLOSE", "to": "closed"},
            {"from": "closed", "event": "REOPEN", "to": "open"},
            {"from": ["open", "closed"], "event": "NOTE", "to": "open"}
        ]
    })
}

/// Two states and one event that flips between them: any number of applies
/// in any order succeed, which is what load tests need.
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

/// `per_shard` ids on every shard, interleaved (shard 0, shard 1, ...).
fn ids_on_all_shards(prefix: &str, per_shard: usize) -> Vec<String> {
    let lists: Vec<Vec<String>> = (0..SHARDS)
        .map(|s| ids_on_shard(prefix, s, per_shard))
        .collect();
    (0..per_shard)
        .flat_map(|i| lists.iter().map(move |l| l[i].clone()))
        .collect()
}

fn put_machine(client: &mut RawClient, name: &str, definition: Value) {
    client.ok(
        "PUT_MACHINE",
        json!({"machine": name, "version": 1, "definition": definition}),
    );
}

fn create(client: &mut RawClient, machine: &str, id: &str) -> u64 {
    let result = client.ok(
        "CREATE_INSTANCE",
        json!({"machine": machine, "version": 1, "instance_id": id}),
    );
    result["wal_offset"].as_u64().expect("create wal_offset")
}

/// One acknowledged APPLY_EVENT, as the writer saw it.
#[derive(Debug, Clone, PartialEq)]
struct Acked {
    offset: u64,
    instance_id: String,
    machine: String,
    event: String,
    from_state: String,
    to_state: String,
    payload: Value,
    ctx: Value,
}

fn apply(
    client: &mut RawClient,
    machine: &str,
    id: &str,
    event: &str,
    payload: Option<Value>,
) -> Acked {
    let mut params = json!({"instance_id": id, "event": event});
    if let Some(p) = &payload {
        params["payload"] = p.clone();
    }
    let r = client.ok("APPLY_EVENT", params);
    assert_eq!(r["applied"], true, "{r}");
    Acked {
        offset: r["wal_offset"].as_u64().expect("apply wal_offset"),
        instance_id: id.to_string(),
        machine: machine.to_string(),
        event: event.to_string(),
        from_state: r["from_state"].as_str().unwrap_or_default().to_string(),
        to_state: r["to_state"].as_str().unwrap_or_default().to_string(),
        payload: payload.unwrap_or(Value::Null),
        ctx: r["ctx"].clone(),
    }
}

// ---------------------------------------------------------------------------
// Key order of a JSON object, as sent
// ---------------------------------------------------------------------------

/// The top-level keys of a JSON object in the order they appear.
struct KeyOrder(Vec<String>);

impl<'de> Deserialize<'de> for KeyOrder {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = KeyOrder;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeyOrder, A::Error> {
                let mut keys = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    map.next_value::<IgnoredAny>()?;
                    keys.push(key);
                }
                Ok(KeyOrder(keys))
            }
        }
        d.deserialize_map(Keys)
    }
}

fn key_order(payload: &[u8]) -> Vec<String> {
    serde_json::from_slice::<KeyOrder>(payload)
        .unwrap_or_else(|e| {
            panic!(
                "not a JSON object ({e}): {:?}",
                String::from_utf8_lossy(payload)
            )
        })
        .0
}

// ---------------------------------------------------------------------------
// A watching connection: responses and pushed events interleave
// ---------------------------------------------------------------------------

/// A blocking RCPX connection that may hold subscriptions: responses are
/// matched to requests, events are queued in arrival order.
struct WatchConn {
    stream: TcpStream,
    buf: Vec<u8>,
    events: VecDeque<Frame>,
    next_id: u64,
    /// Server stderr path is not known here; callers add it to messages.
    label: String,
}

impl WatchConn {
    fn connect(addr: SocketAddr, label: &str) -> WatchConn {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).ok();
        WatchConn {
            stream,
            buf: Vec::new(),
            events: VecDeque::new(),
            next_id: 1,
            label: label.to_string(),
        }
    }

    /// The next frame before `deadline`, or `None` on timeout.
    fn read_frame_until(&mut self, deadline: Instant) -> Option<Frame> {
        match self.poll_frame(deadline) {
            Ok(frame) => frame,
            Err(e) => panic!("{}: {e}", self.label),
        }
    }

    /// The next frame before `deadline` (`Ok(None)` on timeout), or how the
    /// connection ended.
    fn poll_frame(&mut self, deadline: Instant) -> Result<Option<Frame>, String> {
        let mut chunk = vec![0u8; 256 * 1024];
        loop {
            if let Some(frame) = take_rcpx_frame(&mut self.buf)? {
                assert_server_frame(&frame);
                return Ok(Some(frame));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let wait = (deadline - now).max(Duration::from_millis(1));
            self.stream
                .set_read_timeout(Some(wait))
                .expect("set read timeout");
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(format!(
                        "the server closed the watching connection ({} bytes buffered)",
                        self.buf.len()
                    ))
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(format!("reading from the server failed: {e}")),
            }
        }
    }

    fn send(&mut self, op: &str, params: Value) -> String {
        let id = format!("w{}", self.next_id);
        self.next_id += 1;
        self.stream
            .write_all(&rcpx_json(&request(&id, op, params)))
            .expect("write request");
        id
    }

    /// Send a request and return its response envelope; events that arrive
    /// before it are queued.
    fn call(&mut self, op: &str, params: Value) -> Value {
        let id = self.send(op, params);
        let deadline = Instant::now() + RESPONSE_TIMEOUT;
        loop {
            let frame = self.read_frame_until(deadline).unwrap_or_else(|| {
                panic!(
                    "{}: no response to {op} within {RESPONSE_TIMEOUT:?}",
                    self.label
                )
            });
            let doc = frame.json();
            match doc["type"].as_str() {
                Some("event") => self.events.push_back(frame),
                Some("response") => {
                    assert_eq!(doc["id"], id.as_str(), "{}: response id: {doc}", self.label);
                    return doc;
                }
                _ => panic!("{}: unexpected message {doc}", self.label),
            }
        }
    }

    fn ok(&mut self, op: &str, params: Value) -> Value {
        let r = self.call(op, params.clone());
        assert_eq!(
            r["status"], "ok",
            "{}: {op} {params} should succeed: {r}",
            self.label
        );
        r["result"].clone()
    }

    fn err_code(&mut self, op: &str, params: Value, code: &str) -> Value {
        let r = self.call(op, params.clone());
        assert_eq!(
            r["status"], "error",
            "{}: {op} {params} should fail: {r}",
            self.label
        );
        assert_eq!(
            r["error"]["code"], code,
            "{}: {op} {params}: {r}",
            self.label
        );
        r["error"].clone()
    }

    /// The next event frame within `timeout`.
    fn next_event_frame(&mut self, timeout: Duration) -> Option<Frame> {
        if let Some(frame) = self.events.pop_front() {
            return Some(frame);
        }
        let frame = self.read_frame_until(Instant::now() + timeout)?;
        let doc = frame.json();
        assert_eq!(
            doc["type"], "event",
            "{}: expected only events, got {doc}",
            self.label
        );
        Some(frame)
    }

    fn next_event(&mut self, timeout: Duration) -> Option<Value> {
        self.next_event_frame(timeout).map(|f| f.json())
    }

    /// Exactly `n` events (each within `EVENT_TIMEOUT` of the previous),
    /// then nothing more for `QUIET_PERIOD`.
    fn expect_events(&mut self, n: usize, context: &str) -> Vec<Value> {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            match self.next_event(EVENT_TIMEOUT) {
                Some(e) => got.push(e),
                None => panic!(
                    "{} ({context}): only {} of {n} events arrived; got {got:#?}",
                    self.label,
                    got.len()
                ),
            }
        }
        self.expect_quiet(context);
        got
    }

    /// No event arrives for `QUIET_PERIOD`.
    fn expect_quiet(&mut self, context: &str) {
        if let Some(e) = self.next_event(QUIET_PERIOD) {
            panic!("{} ({context}): unexpected event {e}", self.label);
        }
    }
}

fn offset_of(e: &Value) -> u64 {
    e["wal_offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("event without wal_offset: {e}"))
}

/// The event a subscription must have produced for `a`.
fn expected_event(sub: &str, version: u64, a: &Acked, include_ctx: bool) -> Value {
    let mut e = json!({
        "type": "event",
        "subscription_id": sub,
        "instance_id": a.instance_id,
        "machine": a.machine,
        "version": version,
        "wal_offset": a.offset,
        "from_state": a.from_state,
        "to_state": a.to_state,
        "event": a.event,
        "payload": a.payload,
    });
    if include_ctx {
        e["ctx"] = a.ctx.clone();
    }
    e
}

/// Offsets strictly increasing; panics with the first violation.
fn assert_strictly_increasing(offsets: &[u64], who: &str, server: &Server) {
    if let Some(i) = (1..offsets.len()).find(|&i| offsets[i] <= offsets[i - 1]) {
        panic!(
            "{who}: event #{i} has wal_offset {} after {} (not strictly increasing); \
             {} events\nserver stderr:\n{}",
            offsets[i],
            offsets[i - 1],
            offsets.len(),
            server.stderr_tail()
        );
    }
}

/// `got` must be exactly `want` (both in delivery order).
fn assert_same_offsets(got: &[u64], want: &[u64], who: &str, server: &Server) {
    assert_strictly_increasing(got, who, server);
    if got == want {
        return;
    }
    let got_set: BTreeSet<u64> = got.iter().copied().collect();
    let want_set: BTreeSet<u64> = want.iter().copied().collect();
    let missing: Vec<u64> = want_set.difference(&got_set).copied().collect();
    let extra: Vec<u64> = got_set.difference(&want_set).copied().collect();
    panic!(
        "{who}: received {} events, expected {}; {} missing (first {:?}), {} unexpected \
         (first {:?}), duplicates: {}\nserver stderr:\n{}",
        got.len(),
        want.len(),
        missing.len(),
        &missing[..missing.len().min(10)],
        extra.len(),
        &extra[..extra.len().min(10)],
        got.len() - got_set.len(),
        server.stderr_tail()
    );
}

// ---------------------------------------------------------------------------
// Pipelined asynchronous writers (load)
// ---------------------------------------------------------------------------

/// A tokio connection that sends `window` requests at a time, then reads
/// their responses (answers come in request order, spec §3.8).
struct PipelinedWriter {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
    next_id: u64,
}

impl PipelinedWriter {
    async fn connect(addr: SocketAddr) -> PipelinedWriter {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("writer cannot connect to {addr}: {e}"));
        stream.set_nodelay(true).ok();
        PipelinedWriter {
            stream,
            buf: Vec::new(),
            next_id: 1,
        }
    }

    /// Send all `requests` (op, params) in one write and return the results
    /// in order; any error response or transport failure is an `Err`.
    async fn round(&mut self, requests: &[(&str, Value)]) -> Result<Vec<Value>, String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut out = Vec::new();
        let mut ids = Vec::with_capacity(requests.len());
        for (op, params) in requests {
            let id = format!("p{}", self.next_id);
            self.next_id += 1;
            out.extend_from_slice(&rcpx_json(&request(&id, op, params.clone())));
            ids.push(id);
        }
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut results = Vec::with_capacity(ids.len());
        let mut chunk = vec![0u8; 64 * 1024];
        for id in ids {
            let deadline = tokio::time::Instant::now() + RESPONSE_TIMEOUT;
            let frame = loop {
                if let Some(frame) = take_rcpx_frame(&mut self.buf)? {
                    break frame;
                }
                let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                    .await
                    .map_err(|_| format!("no response to {id} within {RESPONSE_TIMEOUT:?}"))?
                    .map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return Err("server closed the connection".into());
                }
                self.buf.extend_from_slice(&chunk[..n]);
            };
            assert_server_frame(&frame);
            let doc = frame.json();
            if doc["id"] != id.as_str() || doc["status"] != "ok" {
                return Err(format!("request {id}: unexpected response {doc}"));
            }
            results.push(doc["result"].clone());
        }
        Ok(results)
    }
}

/// A FLIP load: how many events, how they are sent.
#[derive(Clone)]
struct Load {
    /// FLIPs applied to each instance (round robin over the instances).
    applies_per_instance: usize,
    /// Requests in flight per connection.
    window: usize,
    /// Bytes of padding in each payload.
    pad: usize,
    /// APPLY_EVENTs per request: 1 sends plain APPLY_EVENT requests, more
    /// sends best-effort BATCHes of that many.
    per_request: usize,
    /// Acknowledged events so far, over all writers.
    progress: Arc<AtomicUsize>,
}

impl Load {
    fn new(applies_per_instance: usize, window: usize) -> Load {
        Load {
            applies_per_instance,
            window,
            pad: 0,
            per_request: 1,
            progress: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// Apply the load's FLIPs to `ids`; returns every acknowledged offset with
/// its instance, in acknowledgement order.
async fn flip_writer(
    addr: SocketAddr,
    ids: Vec<String>,
    load: Load,
) -> Result<Vec<(u64, String)>, String> {
    let mut w = PipelinedWriter::connect(addr).await;
    let total = ids.len() * load.applies_per_instance;
    let padding = "x".repeat(load.pad);
    let apply_params = |k: usize| {
        json!({"instance_id": ids[k % ids.len()], "event": "FLIP",
               "payload": {"k": k, "pad": padding}})
    };
    let mut acked = Vec::with_capacity(total);
    let mut next = 0usize;
    while next < total {
        let mut requests: Vec<(&str, Value)> = Vec::with_capacity(load.window);
        let mut sent: Vec<std::ops::Range<usize>> = Vec::with_capacity(load.window);
        while requests.len() < load.window && next < total {
            let end = (next + load.per_request).min(total);
            if load.per_request == 1 {
                requests.push(("APPLY_EVENT", apply_params(next)));
            } else {
                let ops: Vec<Value> = (next..end)
                    .map(|k| json!({"op": "APPLY_EVENT", "params": apply_params(k)}))
                    .collect();
                requests.push(("BATCH", json!({"mode": "best_effort", "ops": ops})));
            }
            sent.push(next..end);
            next = end;
        }
        let results = w.round(&requests).await?;
        for (range, r) in sent.into_iter().zip(results) {
            let per_op: Vec<Value> = if load.per_request == 1 {
                vec![r]
            } else {
                r["results"]
                    .as_array()
                    .ok_or_else(|| format!("batch without results: {r}"))?
                    .iter()
                    .map(|e| {
                        if e["status"] == "ok" {
                            Ok(e["result"].clone())
                        } else {
                            Err(format!("an apply in a batch failed: {e}"))
                        }
                    })
                    .collect::<Result<_, _>>()?
            };
            if per_op.len() != range.len() {
                return Err(format!("{} results for {} ops", per_op.len(), range.len()));
            }
            let n = range.len();
            for (k, r) in range.zip(per_op) {
                let offset = r["wal_offset"]
                    .as_u64()
                    .ok_or_else(|| format!("apply result without wal_offset: {r}"))?;
                acked.push((offset, ids[k % ids.len()].clone()));
            }
            load.progress.fetch_add(n, Ordering::Relaxed);
        }
    }
    Ok(acked)
}

/// Run `writers` flip writers at once over `ids` (each writer gets its own
/// disjoint slice) and return all acknowledged offsets, plus the elapsed time.
async fn run_writers(
    addr: SocketAddr,
    ids: &[String],
    writers: usize,
    load: &Load,
    server: &Server,
) -> (Vec<(u64, String)>, Duration) {
    let started = Instant::now();
    let per_writer = ids.len() / writers;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let mine = ids[w * per_writer..(w + 1) * per_writer].to_vec();
            tokio::spawn(flip_writer(addr, mine, load.clone()))
        })
        .collect();
    let mut all = Vec::new();
    for (w, task) in tasks.into_iter().enumerate() {
        match task.await.expect("writer task") {
            Ok(acked) => all.extend(acked),
            Err(e) => panic!(
                "writer {w} failed: {e}\nserver stderr:\n{}",
                server.stderr_tail()
            ),
        }
    }
    (all, started.elapsed())
}

/// Limit a socket's receive buffer (turns off the kernel's autotuning).
fn set_receive_buffer(stream: &TcpStream, bytes: usize) {
    use std::os::fd::AsRawFd;
    let value = bytes as libc::c_int;
    // SAFETY: setsockopt on a socket we own, with a pointer to a c_int that
    // lives across the call and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt(SO_RCVBUF): {}",
        io::Error::last_os_error()
    );
}

/// Largest TCP send buffer the kernel autotunes to (`tcp_wmem` max).
fn tcp_send_buffer_max() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
        .unwrap_or(4 * 1024 * 1024)
}

/// VmRSS of a process in KiB (`None` once it has exited).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User + system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// How busy the server is over `window`, in % of one core.
fn cpu_percent(pid: u32, window: Duration) -> String {
    let ticks_per_second = 100.0; // USER_HZ on Linux
    match (cpu_ticks(pid), {
        std::thread::sleep(window);
        cpu_ticks(pid)
    }) {
        (Some(a), Some(b)) => format!(
            "{:.0}%",
            (b - a) as f64 / ticks_per_second / window.as_secs_f64() * 100.0
        ),
        _ => "unknown".into(),
    }
}

// ---------------------------------------------------------------------------
// Event message, include_ctx, payload
// ---------------------------------------------------------------------------

#[test]
fn event_messages_have_the_spec_shape_and_payload_is_always_present() {
    let server = Server::start(&[]);
    let mut writer = server.raw();
    put_machine(&mut writer, "order", order_definition());
    let ids = ids_on_all_shards("shape", 1);
    for id in &ids {
        create(&mut writer, "order", id);
    }

    let mut with_ctx = WatchConn::connect(server.addr(), "with_ctx");
    let sub = with_ctx.ok("WATCH_ALL", json!({}));
    assert_eq!(
        key_order(sub.to_string().as_bytes()).len(),
        2,
        "WATCH_ALL result is {{subscription_id, wal_offset}}: {sub}"
    );
    let sub_id = sub["subscription_id"]
        .as_str()
        .expect("subscription_id")
        .to_string();
    assert!(sub_id.starts_with("sub-") && sub_id.len() == 40, "{sub_id}");
    assert!(sub["wal_offset"].is_u64(), "{sub}");
    let mut without_ctx = WatchConn::connect(server.addr(), "without_ctx");
    let sub2 = without_ctx.ok("WATCH_ALL", json!({"include_ctx": false}));
    let sub2_id = sub2["subscription_id"].as_str().unwrap().to_string();
    assert_ne!(sub_id, sub2_id, "subscription ids are unique");

    // Payload sent on shard 0's instance, none on shard 1's.
    let a = apply(
        &mut writer,
        "order",
        &ids[0],
        "PAY",
        Some(json!({"amount": 10, "who": "ann"})),
    );
    let b = apply(&mut writer, "order", &ids[1], "PAY", None);
    assert_eq!(a.ctx, json!({"amount": 10, "who": "ann"}));

    let mut expected = vec![a.clone(), b.clone()];
    expected.sort_by_key(|x| x.offset);
    for (conn, sub, include_ctx) in [
        (&mut with_ctx, &sub_id, true),
        (&mut without_ctx, &sub2_id, false),
    ] {
        for want in &expected {
            let frame = conn
                .next_event_frame(EVENT_TIMEOUT)
                .unwrap_or_else(|| panic!("no event for {want:?}\n{}", server.stderr_tail()));
            let keys = key_order(&frame.payload);
            let want_keys: Vec<&str> = if include_ctx {
                EVENT_KEYS.to_vec()
            } else {
                EVENT_KEYS[..10].to_vec()
            };
            assert_eq!(
                keys,
                want_keys,
                "{:?}",
                String::from_utf8_lossy(&frame.payload)
            );
            assert_eq!(frame.json(), expected_event(sub, 1, want, include_ctx));
        }
        conn.expect_quiet("after two applies");
    }
    let b_event_payload = &expected_event(&sub_id, 1, &b, true)["payload"];
    assert!(b_event_payload.is_null(), "payload null when none was sent");

    // CREATE and DELETE produce no events; an idempotent replay produces
    // none either; a failed apply produces none.
    create(&mut writer, "order", "shape-extra");
    writer.ok("DELETE_INSTANCE", json!({"instance_id": "shape-extra"}));
    let keyed = json!({"instance_id": ids[0], "event": "SHIP", "idempotency_key": "k-ship"});
    let first = writer.ok("APPLY_EVENT", keyed.clone());
    assert_eq!(first["applied"], true, "{first}");
    let replay = writer.ok("APPLY_EVENT", keyed);
    assert_eq!(replay["applied"], false, "an idempotent replay: {replay}");
    writer.err_code(
        "APPLY_EVENT",
        json!({"instance_id": ids[1], "event": "REOPEN"}),
        "INVALID_TRANSITION",
    );
    for conn in [&mut with_ctx, &mut without_ctx] {
        let e = conn.next_event(EVENT_TIMEOUT).expect("the SHIP event");
        assert_eq!(e["event"], "SHIP", "{e}");
        assert_eq!(e["wal_offset"], first["wal_offset"], "{e}");
        assert!(e["payload"].is_null(), "{e}");
        conn.expect_quiet("create, delete, a replay and a failed apply send nothing");
    }
    // The connections still answer requests normally.
    with_ctx.ok("PING", Value::Null);
}

#[test]
fn watch_parameters_are_checked() {
    let server = Server::start(&[]);
    let mut c = WatchConn::connect(server.addr(), "params");
    c.err_code("WATCH_ALL", json!({"include_ctx": null}), "BAD_REQUEST");
    c.err_code("WATCH_ALL", json!({"machines": null}), "BAD_REQUEST");
    c.err_code("WATCH_ALL", json!({"machines": "order"}), "BAD_REQUEST");
    c.err_code("WATCH_INSTANCE", json!({}), "BAD_REQUEST");
    c.err_code(
        "WATCH_INSTANCE",
        json!({"instance_id": "nope"}),
        "INSTANCE_NOT_FOUND",
    );
    c.err_code("UNWATCH", json!({}), "BAD_REQUEST");
    // params absent / null / {} are all a plain WATCH_ALL.
    for params in [Value::Null, json!({})] {
        let r = c.ok("WATCH_ALL", params);
        assert!(r["subscription_id"].is_string(), "{r}");
    }
}

/// Without `from_offset` a subscription gets only what happens after it: an
/// event acknowledged before the WATCH_ALL was sent is history, and the
/// answered `wal_offset` (the next write position, spec §10.2) is past it.
#[test]
fn watch_all_without_from_offset_gets_nothing_acknowledged_before_it() {
    const ROUNDS: usize = 20;
    let server = Server::start(&[]);
    let mut writer = server.raw();
    put_machine(&mut writer, "flip", flip_definition());
    let ids = ids_on_all_shards("before", 1);
    for id in &ids {
        create(&mut writer, "flip", id);
    }
    let mut failures = Vec::new();
    for round in 0..ROUNDS {
        // An acknowledged apply, alternating shards ...
        let before = apply(&mut writer, "flip", &ids[round % SHARDS], "FLIP", None);
        // ... then a new subscription, then a marker apply on the other shard.
        let mut conn = WatchConn::connect(server.addr(), &format!("round {round}"));
        let r = conn.ok("WATCH_ALL", json!({"include_ctx": false}));
        let marker = apply(
            &mut writer,
            "flip",
            &ids[(round + 1) % SHARDS],
            "FLIP",
            None,
        );
        let first = conn.next_event(EVENT_TIMEOUT).expect("the marker event");
        let start = r["wal_offset"].as_u64().unwrap_or(0);
        if offset_of(&first) != marker.offset || start <= before.offset {
            failures.push(format!(
                "round {round}: apply acknowledged at {} before WATCH_ALL (answered wal_offset \
                 {start}); first event delivered: {} (marker {})",
                before.offset,
                offset_of(&first),
                marker.offset
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {ROUNDS} new WATCH_ALL subscriptions received an event acknowledged before they \
         were requested (or answered a wal_offset not past it):\n{}\nserver stderr:\n{}",
        failures.len(),
        failures.join("\n"),
        server.stderr_tail()
    );
}

// ---------------------------------------------------------------------------
// Filters
// ---------------------------------------------------------------------------

/// What a WATCH_ALL filter lets through (spec §10.2: AND across
/// categories, OR within a list, empty = everything).
#[derive(Clone, Debug)]
struct FilterSpec {
    params: Value,
}

impl FilterSpec {
    fn allows(&self, a: &Acked) -> bool {
        let ok = |key: &str, value: &str| match self.params.get(key).and_then(Value::as_array) {
            None => true,
            Some(list) if list.is_empty() => true,
            Some(list) => list.iter().any(|v| v == value),
        };
        ok("machines", &a.machine)
            && ok("from_states", &a.from_state)
            && ok("to_states", &a.to_state)
            && ok("events", &a.event)
    }
}

#[test]
fn watch_all_filters_select_by_machine_states_and_event() {
    let server = Server::start(&[]);
    let mut writer = server.raw();
    put_machine(&mut writer, "order", order_definition());
    put_machine(&mut writer, "ticket", ticket_definition());
    let orders = ids_on_all_shards("order", 2);
    let tickets = ids_on_all_shards("ticket", 1);
    for id in &orders {
        create(&mut writer, "order", id);
    }
    for id in &tickets {
        create(&mut writer, "ticket", id);
    }

    let filters: Vec<FilterSpec> = [
        json!({}),
        json!({"machines": ["order"]}),
        json!({"machines": ["ticket", "nothing"]}),
        json!({"from_states": ["paid"]}),
        json!({"to_states": ["cancelled", "closed"]}),
        json!({"events": ["NOTE"]}),
        json!({"machines": ["order"], "events": ["NOTE"]}),
        json!({"machines": ["ticket"], "from_states": ["closed"], "to_states": ["open"],
               "events": ["REOPEN"]}),
        json!({"machines": [], "events": []}),
        json!({"machines": ["Order"]}),
    ]
    .into_iter()
    .map(|params| FilterSpec { params })
    .collect();

    // All subscriptions on one connection (one message per subscription),
    // plus one filter on a connection of its own.
    let mut conn = WatchConn::connect(server.addr(), "filters");
    let mut subs: Vec<String> = Vec::new();
    for f in &filters {
        let mut params = f.params.clone();
        params["include_ctx"] = json!(false);
        let r = conn.ok("WATCH_ALL", params);
        subs.push(r["subscription_id"].as_str().unwrap().to_string());
    }
    let mut alone = WatchConn::connect(server.addr(), "alone");
    let alone_filter = FilterSpec {
        params: json!({"machines": ["order"], "from_states": ["created"], "to_states": ["paid"]}),
    };
    let alone_sub = alone.ok("WATCH_ALL", alone_filter.params.clone())["subscription_id"]
        .as_str()
        .unwrap()
        .to_string();

    let script: Vec<(&str, &str, &str)> = vec![
        ("order", &orders[0], "PAY"),
        ("order", &orders[1], "NOTE"),
        ("ticket", &tickets[0], "CLOSE"),
        ("order", &orders[0], "SHIP"),
        ("order", &orders[2], "PAY"),
        ("ticket", &tickets[1], "NOTE"),
        ("order", &orders[2], "CANCEL"),
        ("ticket", &tickets[0], "REOPEN"),
        ("order", &orders[3], "CANCEL"),
        ("ticket", &tickets[1], "CLOSE"),
        ("order", &orders[0], "NOTE"),
        ("order", &orders[1], "PAY"),
    ];
    let mut acked = Vec::new();
    for (machine, id, event) in script {
        acked.push(apply(
            &mut writer,
            machine,
            id,
            event,
            Some(json!({"e": event})),
        ));
    }
    acked.sort_by_key(|a| a.offset);

    // Expected per subscription, then collect everything the connection gets.
    let mut want: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (f, sub) in filters.iter().zip(&subs) {
        let list = acked
            .iter()
            .filter(|a| f.allows(a))
            .map(|a| expected_event(sub, 1, a, false))
            .collect();
        want.insert(sub.clone(), list);
    }
    let total: usize = want.values().map(Vec::len).sum();
    let got = conn.expect_events(total, "all filters on one connection");
    let mut by_sub: BTreeMap<String, Vec<Value>> =
        subs.iter().map(|s| (s.clone(), Vec::new())).collect();
    for e in got {
        let sub = e["subscription_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        by_sub
            .get_mut(&sub)
            .unwrap_or_else(|| panic!("event for an unknown subscription: {e}"))
            .push(e);
    }
    for (f, sub) in filters.iter().zip(&subs) {
        assert_eq!(
            by_sub[sub], want[sub],
            "filter {} delivered the wrong events",
            f.params
        );
    }
    // Sanity: the script exercises every filter both ways.
    assert_eq!(want[&subs[0]].len(), acked.len());
    assert!(want[&subs[9]].is_empty(), "filters are case-sensitive");
    assert_eq!(want[&subs[7]].len(), 1);

    let alone_want: Vec<Value> = acked
        .iter()
        .filter(|a| alone_filter.allows(a))
        .map(|a| {
            let mut e = expected_event(&alone_sub, 1, a, true);
            e["ctx"] = a.ctx.clone();
            e
        })
        .collect();
    assert_eq!(alone_want.len(), 3);
    let got = alone.expect_events(alone_want.len(), "filter on its own connection");
    assert_eq!(got, alone_want);
}

// ---------------------------------------------------------------------------
// UNWATCH, WATCH_INSTANCE
// ---------------------------------------------------------------------------

#[test]
fn unwatch_stops_delivery_and_reports_what_it_removed() {
    let server = Server::start(&[]);
    let mut writer = server.raw();
    put_machine(&mut writer, "flip", flip_definition());
    let ids = ids_on_all_shards("unwatch", 1);
    for id in &ids {
        create(&mut writer, "flip", id);
    }

    let mut conn = WatchConn::connect(server.addr(), "watcher");
    let gone = conn.ok("WATCH_ALL", json!({"include_ctx": false}))["subscription_id"]
        .as_str()
        .unwrap()
        .to_string();
    let stays = conn.ok("WATCH_ALL", json!({"include_ctx": false}))["subscription_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut other = WatchConn::connect(server.addr(), "other");
    let others = other.ok("WATCH_ALL", json!({"include_ctx": false}))["subscription_id"]
        .as_str()
        .unwrap()
        .to_string();

    let first = apply(&mut writer, "flip", &ids[0], "FLIP", None);
    let got = conn.expect_events(2, "both subscriptions see the first event");
    let subs: BTreeSet<&str> = got
        .iter()
        .map(|e| e["subscription_id"].as_str().unwrap())
        .collect();
    assert_eq!(subs, BTreeSet::from([gone.as_str(), stays.as_str()]));
    assert!(got.iter().all(|e| offset_of(e) == first.offset));

    let r = conn.ok("UNWATCH", json!({"subscription_id": gone}));
    assert_eq!(r, json!({"removed": true, "subscription_id": gone}));
    assert_eq!(
        key_order(r.to_string().as_bytes()),
        vec!["removed", "subscription_id"]
    );
    // Removing it again, an unknown id, or another connection's id: ok,
    // removed false — and the other connection's subscription survives.
    let again = conn.ok("UNWATCH", json!({"subscription_id": gone}));
    assert_eq!(again, json!({"removed": false, "subscription_id": gone}));
    let unknown = conn.ok("UNWATCH", json!({"subscription_id": "sub-nope"}));
    assert_eq!(unknown["removed"], false, "{unknown}");
    let foreign = conn.ok("UNWATCH", json!({"subscription_id": others}));
    assert_eq!(foreign["removed"], false, "{foreign}");

    // Events after the UNWATCH reach only the remaining subscriptions.
    let mut later = Vec::new();
    for id in &ids {
        later.push(apply(&mut writer, "flip", id, "FLIP", None).offset);
    }
    later.sort_unstable();
    let got = conn.expect_events(later.len(), "only the remaining subscription");
    for e in &got {
        assert_eq!(e["subscription_id"], stays.as_str(), "{e}");
    }
    assert_eq!(got.iter().map(offset_of).collect::<Vec<_>>(), later);
    let got = other.expect_events(1 + later.len(), "the other connection");
    assert!(got.iter().all(|e| e["subscription_id"] == others.as_str()));

    // UNWATCH of the last subscription: the connection goes quiet but stays usable.
    conn.ok("UNWATCH", json!({"subscription_id": stays}));
    apply(&mut writer, "flip", &ids[1], "FLIP", None);
    conn.expect_quiet("no subscriptions left");
    conn.ok("PING", Value::Null);
    other.expect_events(1, "still subscribed");
}

#[test]
fn watch_instance_sees_only_its_instance() {
    let server = Server::start(&[]);
    let mut writer = server.raw();
    put_machine(&mut writer, "order", order_definition());
    let ids = ids_on_all_shards("inst", 2);
    for id in &ids {
        create(&mut writer, "order", id);
    }
    let paid = apply(
        &mut writer,
        "order",
        &ids[0],
        "PAY",
        Some(json!({"amount": 3})),
    );

    let mut conn = WatchConn::connect(server.addr(), "instance watcher");
    let r = conn.ok("WATCH_INSTANCE", json!({"instance_id": ids[0]}));
    assert_eq!(
        key_order(r.to_string().as_bytes()),
        vec![
            "current_state",
            "current_wal_offset",
            "instance_id",
            "subscription_id"
        ],
        "{r}"
    );
    assert_eq!(r["current_state"], "paid", "{r}");
    assert_eq!(r["current_wal_offset"], paid.offset, "{r}");
    assert_eq!(r["instance_id"], ids[0].as_str(), "{r}");
    let sub0 = r["subscription_id"].as_str().unwrap().to_string();
    // A second one, on the other shard, without ctx.
    let r = conn.ok(
        "WATCH_INSTANCE",
        json!({"instance_id": ids[1], "include_ctx": false}),
    );
    assert_eq!(r["current_state"], "created", "{r}");
    let sub1 = r["subscription_id"].as_str().unwrap().to_string();

    // Traffic on all four instances; only ids[0] and ids[1] are watched.
    let mut want = Vec::new();
    for (id, event) in [
        (&ids[2], "PAY"),
        (&ids[0], "SHIP"),
        (&ids[3], "CANCEL"),
        (&ids[1], "PAY"),
        (&ids[2], "SHIP"),
        (&ids[1], "NOTE"),
        (&ids[0], "NOTE"),
    ] {
        let a = apply(&mut writer, "order", id, event, None);
        if *id == ids[0] {
            want.push(expected_event(&sub0, 1, &a, true));
        } else if *id == ids[1] {
            want.push(expected_event(&sub1, 1, &a, false));
        }
    }
    want.sort_by_key(offset_of);
    let got = conn.expect_events(want.len(), "two instance subscriptions");
    assert_eq!(got, want);

    // Unknown and deleted instances cannot be watched.
    conn.err_code(
        "WATCH_INSTANCE",
        json!({"instance_id": "inst-missing"}),
        "INSTANCE_NOT_FOUND",
    );
    writer.ok("DELETE_INSTANCE", json!({"instance_id": ids[3]}));
    conn.err_code(
        "WATCH_INSTANCE",
        json!({"instance_id": ids[3]}),
        "INSTANCE_NOT_FOUND",
    );
}

#[test]
fn watches_require_authentication_when_auth_is_on() {
    let (_dir, config) = auth_config();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let mut admin = server.raw();
    admin.ok("AUTH", json!({"method": "bearer", "token": AUTH_TOKEN}));
    put_machine(&mut admin, "flip", flip_definition());
    let ids = ids_on_all_shards("auth", 1);
    for id in &ids {
        create(&mut admin, "flip", id);
    }

    let mut anon = WatchConn::connect(server.addr(), "unauthenticated");
    for (op, params) in [
        ("WATCH_ALL", json!({})),
        ("WATCH_INSTANCE", json!({"instance_id": ids[0]})),
        ("UNWATCH", json!({"subscription_id": "sub-x"})),
    ] {
        let e = anon.err_code(op, params, "UNAUTHORIZED");
        assert_eq!(e["message"], "authentication required", "{e}");
    }
    let e = anon.err_code(
        "AUTH",
        json!({"method": "bearer", "token": "wrong"}),
        "AUTH_FAILED",
    );
    assert!(
        e["message"].as_str().unwrap().contains("invalid token"),
        "{e}"
    );
    anon.err_code("WATCH_ALL", json!({}), "UNAUTHORIZED");

    // Nothing was registered by the refused requests.
    apply(&mut admin, "flip", &ids[0], "FLIP", None);
    anon.expect_quiet("refused watches deliver nothing");

    // After AUTH the same connection watches normally.
    anon.ok("AUTH", json!({"method": "bearer", "token": AUTH_TOKEN}));
    let sub = anon.ok("WATCH_ALL", json!({"include_ctx": false}));
    let a = apply(&mut admin, "flip", &ids[1], "FLIP", None);
    let e = anon.next_event(EVENT_TIMEOUT).expect("event after AUTH");
    assert_eq!(e["subscription_id"], sub["subscription_id"]);
    assert_eq!(offset_of(&e), a.offset);
    let r = anon.ok(
        "UNWATCH",
        json!({"subscription_id": sub["subscription_id"]}),
    );
    assert_eq!(r["removed"], true, "{r}");
}

// ---------------------------------------------------------------------------
// The official Rust client
// ---------------------------------------------------------------------------

/// The next event the client's read loop broadcast, within `EVENT_TIMEOUT`.
/// (Generic: the client's `StreamEvent` type lives in `rstmdb-protocol`,
/// which the tests do not depend on directly.)
async fn next_stream_event<T: Clone>(rx: &mut tokio::sync::broadcast::Receiver<T>) -> Option<T> {
    match tokio::time::timeout(EVENT_TIMEOUT, rx.recv()).await {
        Ok(Ok(e)) => Some(e),
        Ok(Err(e)) => panic!("client event stream: {e}"),
        Err(_) => None,
    }
}

#[tokio::test]
async fn rust_client_subscriptions_receive_events_and_unwatch() {
    let server = Server::start(&[]);
    let client = rstmdb_connect(server.addr(), None)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    client
        .put_machine("order", 1, order_definition())
        .await
        .unwrap();
    let ids = ids_on_all_shards("client", 1);
    let mut created = Vec::new();
    for id in &ids {
        created.push(
            client
                .create_instance("order", 1, Some(id), Some(json!({"n": 0})), None)
                .await
                .unwrap(),
        );
    }

    let mut rx = client.connection().subscribe_stream_events();
    let all = client
        .watch_all(None, None, None, None, true)
        .await
        .unwrap();
    assert!(all.subscription_id.starts_with("sub-"), "{all:?}");
    let one = client.watch_instance(&ids[1], false).await.unwrap();
    assert_eq!(one.instance_id, ids[1]);
    assert_eq!(one.current_state, "created");
    assert_eq!(one.current_wal_offset, created[1].wal_offset);
    let paid_only = client
        .watch_all(
            Some(vec!["order".into()]),
            None,
            Some(vec!["paid".into()]),
            Some(vec!["PAY".into()]),
            false,
        )
        .await
        .unwrap();

    let a = client
        .apply_event(&ids[0], "PAY", Some(json!({"amount": 5})), None, None)
        .await
        .unwrap();
    let b = client
        .apply_event(&ids[1], "CANCEL", None, Some("created"), None)
        .await
        .unwrap();

    // all: a, b; one: b; paid_only: a — 4 messages, each subscription in
    // offset order.
    let mut got = BTreeMap::new();
    for _ in 0..4 {
        let e = next_stream_event(&mut rx).await.unwrap_or_else(|| {
            panic!(
                "missing client event; got {got:?}\n{}",
                server.stderr_tail()
            )
        });
        got.entry(e.subscription_id.clone())
            .or_insert_with(Vec::new)
            .push(e);
    }
    let all_events = &got[&all.subscription_id];
    let mut want = vec![
        (a.wal_offset, ids[0].clone()),
        (b.wal_offset, ids[1].clone()),
    ];
    want.sort();
    assert_eq!(
        all_events
            .iter()
            .map(|e| (e.wal_offset, e.instance_id.clone()))
            .collect::<Vec<_>>(),
        want
    );
    for e in all_events {
        assert_eq!(e.msg_type, "event");
        assert_eq!(e.machine, "order");
        assert_eq!(e.version, 1);
        if e.instance_id == ids[0] {
            assert_eq!(
                (e.from_state.as_str(), e.to_state.as_str(), e.event.as_str()),
                ("created", "paid", "PAY")
            );
            assert_eq!(e.payload, Some(json!({"amount": 5})));
            assert_eq!(e.ctx, Some(json!({"n": 0, "amount": 5})));
        } else {
            assert_eq!(
                (e.from_state.as_str(), e.to_state.as_str(), e.event.as_str()),
                ("created", "cancelled", "CANCEL")
            );
            assert_eq!(e.payload, None, "payload null");
            assert_eq!(e.ctx, Some(json!({"n": 0})));
        }
    }
    let one_events = &got[&one.subscription_id];
    assert_eq!(one_events.len(), 1, "{one_events:?}");
    assert_eq!(one_events[0].instance_id, ids[1]);
    assert_eq!(one_events[0].wal_offset, b.wal_offset);
    assert_eq!(one_events[0].ctx, None, "include_ctx false");
    let paid_events = &got[&paid_only.subscription_id];
    assert_eq!(paid_events.len(), 1, "{paid_events:?}");
    assert_eq!(paid_events[0].wal_offset, a.wal_offset);

    let removed = client.unwatch(&all.subscription_id).await.unwrap();
    assert!(removed.removed);
    assert_eq!(removed.subscription_id, all.subscription_id);
    assert!(!client.unwatch(&all.subscription_id).await.unwrap().removed);
    client.unwatch(&paid_only.subscription_id).await.unwrap();

    // Only the instance subscription is left.
    let c = client
        .apply_event(&ids[0], "SHIP", None, None, None)
        .await
        .unwrap();
    let d = client
        .apply_event(&ids[1], "NOTE", None, None, None)
        .await
        .unwrap();
    assert!(c.applied && d.applied);
    let e = next_stream_event(&mut rx).await.expect("instance event");
    assert_eq!(e.subscription_id, one.subscription_id);
    assert_eq!(e.wal_offset, d.wal_offset);
    assert!(
        tokio::time::timeout(QUIET_PERIOD, rx.recv()).await.is_err(),
        "no event after UNWATCH"
    );
    // The client (and its read loop) are still healthy.
    client.ping().await.unwrap();
}

// ---------------------------------------------------------------------------
// Ordering under load
// ---------------------------------------------------------------------------

/// A WATCH_ALL watcher on its own thread: subscribes, reports ready, then
/// collects `expect` events (or stops at the deadline) and listens for
/// extras. Returns the received offsets and instance ids.
fn spawn_watcher(
    addr: SocketAddr,
    label: String,
    params: Value,
    expect: mpsc::Receiver<usize>,
    ready: mpsc::Sender<u64>,
) -> std::thread::JoinHandle<Result<Vec<(u64, String)>, String>> {
    std::thread::spawn(move || {
        let mut conn = WatchConn::connect(addr, &label);
        let r = conn.ok("WATCH_ALL", params);
        ready
            .send(r["wal_offset"].as_u64().unwrap_or(0))
            .expect("report ready");
        let mut got: Vec<(u64, String)> = Vec::new();
        let mut target: Option<usize> = None;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if target.is_none() {
                target = expect.try_recv().ok();
            }
            if target.is_some_and(|t| got.len() >= t) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{label}: {} events by the deadline, expected {target:?}",
                    got.len()
                ));
            }
            if let Some(e) = conn.next_event(Duration::from_millis(200)) {
                got.push((
                    offset_of(&e),
                    e["instance_id"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
        if let Some(e) = conn.next_event(QUIET_PERIOD) {
            return Err(format!("{label}: an extra event after all expected: {e}"));
        }
        Ok(got)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_watcher_gets_every_event_once_in_offset_order_across_shards() {
    const WRITERS: usize = 8;
    const INSTANCES_PER_WRITER: usize = 4;
    const APPLIES_PER_INSTANCE: usize = 150;
    const WINDOW: usize = 16;
    const WATCHERS: usize = 3;

    let server = Server::start(&[]);
    let mut setup = server.raw();
    put_machine(&mut setup, "flip", flip_definition());
    let ids = ids_on_all_shards("load", WRITERS * INSTANCES_PER_WRITER / SHARDS);
    for id in &ids {
        create(&mut setup, "flip", id);
    }
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut targets = Vec::new();
    let mut watchers = Vec::new();
    for w in 0..WATCHERS {
        let (tx, rx) = mpsc::channel();
        targets.push(tx);
        watchers.push(spawn_watcher(
            server.addr(),
            format!("watcher {w}"),
            json!({"include_ctx": w == 0}),
            rx,
            ready_tx.clone(),
        ));
    }
    for _ in 0..WATCHERS {
        ready_rx
            .recv_timeout(RESPONSE_TIMEOUT)
            .expect("watcher subscribed");
    }

    // Writers: each owns INSTANCES_PER_WRITER instances, spread over shards.
    let load = Load::new(APPLIES_PER_INSTANCE, WINDOW);
    let (acked, elapsed) = run_writers(server.addr(), &ids, WRITERS, &load, &server).await;
    let total = acked.len();
    assert_eq!(total, WRITERS * INSTANCES_PER_WRITER * APPLIES_PER_INSTANCE);
    eprintln!(
        "ordering: {total} durable applies in {:.2} s ({:.0}/s) by {WRITERS} pipelined writers",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    for tx in &targets {
        tx.send(total).expect("tell watcher");
    }
    let mut want: Vec<(u64, String)> = acked;
    want.sort();
    let want_offsets: Vec<u64> = want.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        want_offsets.iter().collect::<BTreeSet<_>>().len(),
        total,
        "acknowledged offsets are unique"
    );
    let shards_seen: BTreeSet<usize> = want.iter().map(|(_, id)| shard_of(id)).collect();
    assert_eq!(shards_seen.len(), SHARDS, "load covers every shard");

    for (w, handle) in watchers.into_iter().enumerate() {
        let got = match handle.join().expect("watcher thread") {
            Ok(got) => got,
            Err(e) => panic!("{e}\nserver stderr:\n{}", server.stderr_tail()),
        };
        let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
        assert_same_offsets(&offsets, &want_offsets, &format!("watcher {w}"), &server);
        assert_eq!(got, want, "watcher {w}: instance ids per offset");
    }
}

/// An event leaves the server only once its record is durable: whatever a
/// watcher received before a SIGKILL is still there after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_a_watcher_received_survive_a_sigkill() {
    const WRITERS: usize = 4;
    const INSTANCES_PER_WRITER: usize = 2;
    const RUN_BEFORE_KILL: Duration = Duration::from_millis(1200);
    const MIN_EVENTS_SEEN: usize = 50;

    let mut server = Server::start(&[]);
    let mut setup = server.raw();
    put_machine(&mut setup, "flip", flip_definition());
    let ids = ids_on_all_shards("durable", WRITERS * INSTANCES_PER_WRITER / SHARDS);
    for id in &ids {
        create(&mut setup, "flip", id);
    }
    let mut conn = WatchConn::connect(server.addr(), "watcher");
    conn.ok("WATCH_ALL", json!({"include_ctx": false}));
    let watcher = std::thread::spawn(move || {
        let mut seen: Vec<Value> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match conn.poll_frame(Instant::now() + Duration::from_millis(200)) {
                Ok(Some(frame)) => seen.push(frame.json()),
                Ok(None) => {}
                Err(_) => break, // the server died
            }
        }
        seen
    });
    let addr = server.addr();
    let per_writer = ids.len() / WRITERS;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let mine = ids[w * per_writer..(w + 1) * per_writer].to_vec();
            // Far more than can be done before the kill; ends with an error.
            tokio::spawn(flip_writer(addr, mine, Load::new(1_000_000, 16)))
        })
        .collect();
    tokio::time::sleep(RUN_BEFORE_KILL).await;
    server.sigkill();
    for w in writers {
        let _ = w.await.expect("writer task");
    }
    let seen = watcher.join().expect("watcher thread");
    assert!(
        seen.len() >= MIN_EVENTS_SEEN,
        "only {} events seen before the kill\n{}",
        seen.len(),
        server.stderr_tail()
    );
    // Per instance, the newest event the watcher saw.
    let mut newest: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for e in &seen {
        let id = e["instance_id"].as_str().unwrap_or_default().to_string();
        let k = e["payload"]["k"].as_u64().unwrap_or_else(|| panic!("{e}"));
        let entry = newest.entry(id).or_insert((0, 0));
        *entry = (*entry).max((offset_of(e), k));
    }

    server.restart();
    let mut client = server.raw();
    let mut lost = Vec::new();
    for (id, (offset, k)) in &newest {
        let got = client.ok("GET_INSTANCE", json!({"instance_id": id}));
        let last = got["last_wal_offset"].as_u64().unwrap_or(0);
        let have_k = got["ctx"]["k"].as_u64().unwrap_or(0);
        if last < *offset || have_k < *k {
            lost.push(format!(
                "{id}: watcher saw offset {offset} (k {k}); after restart last_wal_offset \
                 {last}, ctx.k {have_k}"
            ));
        }
    }
    assert!(
        lost.is_empty(),
        "events delivered to a watcher were not durable:\n{}\nserver stderr:\n{}",
        lost.join("\n"),
        server.stderr_tail()
    );
    eprintln!(
        "durable events: {} seen before the kill, all {} instances intact",
        seen.len(),
        newest.len()
    );
}

// ---------------------------------------------------------------------------
// Replay with from_offset
// ---------------------------------------------------------------------------

/// Build a history on both shards (single applies, a single-shard atomic
/// batch, a cross-shard atomic batch); returns every event offset with its
/// instance, sorted.
fn build_history(client: &mut RawClient, ids: &[String], rounds: usize) -> Vec<(u64, String)> {
    let mut events = Vec::new();
    for round in 0..rounds {
        for id in ids {
            let a = apply(client, "flip", id, "FLIP", Some(json!({"round": round})));
            events.push((a.offset, id.clone()));
        }
    }
    for ops_ids in [
        vec![ids[0].clone(), ids[2].clone()],
        vec![ids[0].clone(), ids[1].clone()],
    ] {
        let ops: Vec<Value> = ops_ids
            .iter()
            .map(|id| json!({"op": "APPLY_EVENT", "params": {"instance_id": id, "event": "FLIP"}}))
            .collect();
        let r = client.ok("BATCH", json!({"mode": "atomic", "ops": ops}));
        for (res, id) in r["results"]
            .as_array()
            .expect("results")
            .iter()
            .zip(&ops_ids)
        {
            assert_eq!(res["status"], "ok", "{r}");
            events.push((res["result"]["wal_offset"].as_u64().unwrap(), id.clone()));
        }
    }
    events.sort();
    events
}

fn received(events: &[Value]) -> Vec<(u64, String)> {
    events
        .iter()
        .map(|e| {
            (
                offset_of(e),
                e["instance_id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn from_offset_replays_exactly_the_suffix_then_continues_live() {
    let server = Server::start(&[]);
    let mut client = server.raw();
    put_machine(&mut client, "flip", flip_definition());
    let ids = ids_on_all_shards("hist", 2);
    assert_eq!(shard_of(&ids[0]), shard_of(&ids[2]));
    assert_ne!(shard_of(&ids[0]), shard_of(&ids[1]));
    for id in &ids {
        create(&mut client, "flip", id);
    }
    let history = build_history(&mut client, &ids, 60);
    let mid = history[history.len() / 2].0;
    let suffix: Vec<(u64, String)> = history.iter().filter(|(o, _)| *o >= mid).cloned().collect();

    // Exactly at an event's offset: that event and everything after.
    let mut at = WatchConn::connect(server.addr(), "from mid");
    let r = at.ok(
        "WATCH_ALL",
        json!({"from_offset": mid, "include_ctx": false}),
    );
    assert_eq!(
        r["wal_offset"], mid,
        "WATCH_ALL answers the offset it starts at: {r}"
    );
    // Just after it: the suffix without that event.
    let mut after = WatchConn::connect(server.addr(), "from mid+1");
    after.ok(
        "WATCH_ALL",
        json!({"from_offset": mid + 1, "include_ctx": false}),
    );
    // The whole history.
    let mut zero = WatchConn::connect(server.addr(), "from 0");
    zero.ok("WATCH_ALL", json!({"from_offset": 0, "include_ctx": false}));
    // One instance's history from the middle.
    let mut one = WatchConn::connect(server.addr(), "instance from mid");
    one.ok(
        "WATCH_INSTANCE",
        json!({"instance_id": ids[1], "from_offset": mid, "include_ctx": false}),
    );

    // Live traffic while they replay: the switch to live must lose nothing.
    let live_ids = ids.clone();
    let addr = server.addr();
    let live = tokio::spawn(async move { flip_writer(addr, live_ids, Load::new(40, 8)).await });
    let live = match live.await.expect("live writer") {
        Ok(live) => live,
        Err(e) => panic!("live writer: {e}\n{}", server.stderr_tail()),
    };
    let mut tail = live.clone();
    tail.sort();

    let expect = |prefix: &[(u64, String)], keep: &dyn Fn(&(u64, String)) -> bool| {
        prefix
            .iter()
            .chain(tail.iter())
            .filter(|x| keep(x))
            .cloned()
            .collect::<Vec<_>>()
    };
    let cases: Vec<(&mut WatchConn, Vec<(u64, String)>)> = vec![
        (&mut at, expect(&suffix, &|_| true)),
        (&mut after, expect(&suffix, &|(o, _)| *o > mid)),
        (&mut zero, expect(&history, &|_| true)),
        (&mut one, expect(&suffix, &|(_, id)| *id == ids[1])),
    ];
    for (conn, want) in cases {
        let label = conn.label.clone();
        let got = received(&conn.expect_events(want.len(), "replay then live"));
        let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
        let want_offsets: Vec<u64> = want.iter().map(|(o, _)| *o).collect();
        assert_same_offsets(&offsets, &want_offsets, &label, &server);
        assert_eq!(got, want, "{label}");
    }
}

#[test]
fn from_offset_replays_history_written_before_a_restart() {
    let mut server = Server::start(&[]);
    let mut client = server.raw();
    put_machine(&mut client, "flip", flip_definition());
    let ids = ids_on_all_shards("restart", 2);
    for id in &ids {
        create(&mut client, "flip", id);
    }
    let history = build_history(&mut client, &ids, 10);
    let mid = history[history.len() / 2].0;
    server.restart();

    let mut conn = WatchConn::connect(server.addr(), "after restart");
    conn.ok(
        "WATCH_ALL",
        json!({"from_offset": mid, "include_ctx": false}),
    );
    let want: Vec<(u64, String)> = history.iter().filter(|(o, _)| *o >= mid).cloned().collect();
    let mut got = Vec::new();
    while got.len() < want.len() {
        match conn.next_event(Duration::from_secs(5)) {
            Some(e) => got.push(e),
            None => break,
        }
    }
    let got = received(&got);
    assert_eq!(
        got,
        want,
        "WATCH_ALL from_offset {mid} after a restart must replay the {} events at or after it \
         from the logs; got {} events\nserver stderr:\n{}",
        want.len(),
        got.len(),
        server.stderr_tail()
    );
    // And then live events.
    let mut client = server.raw();
    let a = apply(&mut client, "flip", &ids[1], "FLIP", None);
    let e = conn
        .next_event(EVENT_TIMEOUT)
        .expect("live event after the replay");
    assert_eq!(offset_of(&e), a.offset);
}

// ---------------------------------------------------------------------------
// A slow watcher
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_watcher_loses_nothing_and_server_memory_stays_bounded() {
    const WRITERS: usize = 8;
    const INSTANCES_PER_WRITER: usize = 4;
    // 8 × 4 × 2,700 = 86,400 events: 20,864 past the server's 65,536-event
    // ring — more than the kernel can buffer between the server and the
    // stalled watcher (see below), so the watcher's cursor falls out of the
    // ring and it must be served from the logs.
    const APPLIES_PER_INSTANCE: usize = 2_700;
    // The stalled watcher's receive buffer: small, so that the kernel
    // (client receive buffer, autotuned up to 32 MiB otherwise, plus the
    // server's send buffer) cannot hold what the server must keep track of.
    const SLOW_RCVBUF_BYTES: usize = 64 * 1024;
    // Best-effort BATCHes of 25 applies, 4 in flight per writer: the load
    // is produced fast enough for a test even by a debug build.
    const APPLIES_PER_REQUEST: usize = 25;
    const WINDOW: usize = 4;
    // Payload `{"k":N,"pad":"xxx…"}` ≈ 200 bytes; the ctx carries it too.
    const PAD: usize = 180;
    // RSS growth allowed while the watcher is stalled: the ring of 65,536
    // events, which the server keeps whether or not anyone watches (measured
    // ≈ 1 KiB per event of this load: 16 → 82 MiB over 80,000 events with
    // no watcher at all), and allocator slack — not a second copy of the
    // undelivered stream for the stalled watcher.
    const RSS_GROWTH_MAX_MIB: u64 = 96;
    // Once the ring is full, more events must not make the server grow.
    const RSS_GROWTH_AFTER_RING_FULL_MAX_MIB: u64 = 24;

    let server = Server::start(&[]);
    let pid = server.pid().expect("server pid");
    let mut setup = server.raw();
    put_machine(&mut setup, "flip", flip_definition());
    let ids = ids_on_all_shards("slow", WRITERS * INSTANCES_PER_WRITER / SHARDS);
    for id in &ids {
        create(&mut setup, "flip", id);
    }

    // The slow watcher subscribes, then reads nothing until the load is over.
    let mut slow = WatchConn::connect(server.addr(), "slow watcher");
    set_receive_buffer(&slow.stream, SLOW_RCVBUF_BYTES);
    let sub = slow.ok("WATCH_ALL", json!({}));
    let sub_id = sub["subscription_id"].as_str().unwrap().to_string();
    // A fast watcher alongside it keeps up the whole time.
    let (ready_tx, ready_rx) = mpsc::channel();
    let (target_tx, target_rx) = mpsc::channel();
    let fast = spawn_watcher(
        server.addr(),
        "fast watcher".into(),
        json!({"include_ctx": false}),
        target_rx,
        ready_tx,
    );
    ready_rx
        .recv_timeout(RESPONSE_TIMEOUT)
        .expect("fast watcher ready");

    let mib = |kib: u64| kib as f64 / 1024.0;
    let rss = move || rss_kib(pid).expect("server VmRSS");
    let rss_before = rss();
    let mut load = Load::new(APPLIES_PER_INSTANCE, WINDOW);
    load.pad = PAD;
    load.per_request = APPLIES_PER_REQUEST;
    // Sample RSS with the number of events acknowledged at that moment.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (sampling, progress) = (sampling.clone(), load.progress.clone());
        std::thread::spawn(move || {
            let mut samples: Vec<(usize, u64)> = Vec::new();
            while sampling.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    samples.push((progress.load(Ordering::Relaxed), kib));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            samples
        })
    };
    let (acked, elapsed) = run_writers(server.addr(), &ids, WRITERS, &load, &server).await;
    let total = acked.len();
    assert!(
        total > SERVER_RING_EVENTS,
        "the load must overflow the ring"
    );
    let rss_stalled = rss();
    eprintln!(
        "slow watcher: writers made {total} applies in {:.1} s ({:.0}/s) while it was stalled; \
         server RSS {:.1} MiB before, {:.1} MiB after",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        mib(rss_before),
        mib(rss_stalled)
    );
    target_tx.send(total).expect("tell fast watcher");
    let fast_got = match fast.join().expect("fast watcher thread") {
        Ok(got) => got,
        Err(e) => panic!("{e}\nserver stderr:\n{}", server.stderr_tail()),
    };
    sampling.store(false, Ordering::Relaxed);
    let samples = sampler.join().expect("sampler");
    let rss_peak = samples
        .iter()
        .map(|(_, k)| *k)
        .max()
        .unwrap_or(rss_stalled)
        .max(rss_stalled);
    let rss_ring_full = samples
        .iter()
        .find(|(n, _)| *n >= SERVER_RING_EVENTS)
        .map_or(rss_stalled, |(_, k)| *k);
    let fast_offsets: Vec<u64> = fast_got.iter().map(|(o, _)| *o).collect();

    // Now drain the slow watcher.
    let drain_started = Instant::now();
    let mut offsets = Vec::with_capacity(total);
    let mut first = None;
    while offsets.len() < total {
        let Some(e) = slow.next_event(EVENT_TIMEOUT) else {
            let cpu = cpu_percent(pid, Duration::from_secs(1));
            // Does one more event get the stream going again?
            let before = offsets.len();
            let mut poke = server.raw();
            apply(&mut poke, "flip", &ids[0], "FLIP", None);
            while let Some(e) = slow.next_event(Duration::from_secs(5)) {
                offsets.push(offset_of(&e));
            }
            panic!(
                "slow watcher: stalled after {before} of {total} events — nothing for \
                 {EVENT_TIMEOUT:?} (last offset {:?}; server CPU meanwhile {cpu}); after one \
                 more APPLY_EVENT, {} more events arrived\nserver stderr:\n{}",
                before.checked_sub(1).map(|i| offsets[i]),
                offsets.len() - before,
                server.stderr_tail()
            );
        };
        if first.is_none() {
            assert_eq!(e["subscription_id"], sub_id.as_str(), "{e}");
            assert!(
                e["payload"]["pad"].is_string() && e["ctx"]["pad"].is_string(),
                "{e}"
            );
            first = Some(e.to_string().len() + RCPX_HEADER_BYTES);
        }
        offsets.push(offset_of(&e));
    }
    slow.expect_quiet("after every event");
    let drained_in = drain_started.elapsed();
    let rss_end = rss();

    let mut want: Vec<(u64, String)> = acked;
    want.sort();
    let want_offsets: Vec<u64> = want.iter().map(|(o, _)| *o).collect();
    assert_same_offsets(&offsets, &want_offsets, "slow watcher", &server);
    assert_same_offsets(&fast_offsets, &want_offsets, "fast watcher", &server);

    // The premise: the kernel could not have held the events the watcher
    // missed beyond the ring, so the server had to serve them from its logs.
    let event_bytes = first.unwrap_or(1);
    let kernel_bytes = tcp_send_buffer_max() + 2 * SLOW_RCVBUF_BYTES;
    let kernel_events = kernel_bytes / event_bytes;
    eprintln!(
        "slow watcher: events of {event_bytes} bytes; at most {kernel_events} fit in the \
         kernel's buffers ({kernel_bytes} bytes); {} events were beyond the ring",
        total - SERVER_RING_EVENTS
    );
    assert!(
        total - SERVER_RING_EVENTS > kernel_events,
        "test premise: the stalled watcher must fall out of the ring"
    );
    eprintln!(
        "slow watcher: {total} events ({:.0} applies/s by {WRITERS} writers while it was \
         stalled, {:.1} s); drained in {:.2} s ({:.0} events/s)\n\
         server RSS: before {:.1} MiB, ring full {:.1} MiB, end of load {:.1} MiB, \
         peak {:.1} MiB, after drain {:.1} MiB",
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        drained_in.as_secs_f64(),
        total as f64 / drained_in.as_secs_f64(),
        mib(rss_before),
        mib(rss_ring_full),
        mib(rss_stalled),
        mib(rss_peak),
        mib(rss_end)
    );
    let growth = rss_peak.saturating_sub(rss_before) / 1024;
    assert!(
        growth <= RSS_GROWTH_MAX_MIB,
        "server RSS grew by {growth} MiB (from {:.1} to a peak of {:.1} MiB) with a stalled \
         watcher; allowed {RSS_GROWTH_MAX_MIB} MiB",
        mib(rss_before),
        mib(rss_peak)
    );
    let late_growth = rss_peak.saturating_sub(rss_ring_full) / 1024;
    assert!(
        late_growth <= RSS_GROWTH_AFTER_RING_FULL_MAX_MIB,
        "server RSS kept growing after the ring was full: {:.1} MiB at {SERVER_RING_EVENTS} \
         events, peak {:.1} MiB at {total}",
        mib(rss_ring_full),
        mib(rss_peak)
    );
}
