//! Load for the watch tests: pipelined FLIP writers on tokio, and watcher
//! threads that collect a known number of events.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::conn::{WatchConn, QUIET_PERIOD};
use crate::events::offset_of;
use crate::support::{
    assert_server_frame, rcpx_json, request, take_rcpx_frame, Server, RESPONSE_TIMEOUT,
};

/// A tokio connection that sends `window` requests at a time, then reads
/// their responses (answers come in request order, docs/PROTOCOL.md §3.8).
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
pub struct Load {
    /// FLIPs applied to each instance (round robin over the instances).
    applies_per_instance: usize,
    /// Requests in flight per connection.
    window: usize,
    /// Bytes of padding in each payload.
    pub pad: usize,
    /// APPLY_EVENTs per request: 1 sends plain APPLY_EVENT requests, more
    /// sends best-effort BATCHes of that many.
    pub per_request: usize,
    /// Acknowledged events so far, over all writers.
    pub progress: Arc<AtomicUsize>,
}

impl Load {
    pub fn new(applies_per_instance: usize, window: usize) -> Load {
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
pub async fn flip_writer(
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
pub async fn run_writers(
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

/// A WATCH_ALL watcher on its own thread: subscribes, reports ready, then
/// collects `expect` events (or stops at the deadline) and listens for
/// extras. Returns the received offsets and instance ids.
pub fn spawn_watcher(
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
