//! The metrics HTTP endpoint (docs/PROTOCOL.md §13.6): hyper's HTTP/1.1
//! server (through `crate::http::io`, like the API) on its own address, run
//! as tasks on core 0's executor (it asks every acceptor core for its counters). Paths: `/metrics` (Prometheus text), `/health` and
//! `/healthz` (`OK`), `/` (a small page linking to `/metrics`), anything
//! else 404. Any method is accepted. One request per connection
//! (`Connection: close`).
//!
//! Bounded like everything else: at most `METRICS_CONNECTIONS_MAX`
//! connections at once, a request head of at most
//! `METRICS_REQUEST_HEAD_BYTES_MAX` (hyper's read buffer; 431 beyond) that
//! must arrive within
//! `METRICS_REQUEST_HEAD_TIMEOUT_MS`, and `METRICS_REQUEST_TIMEOUT_MS` for
//! the whole exchange. Connections that stall in their request head cannot
//! lock scrapes out: when every slot is taken, a new connection takes the
//! slot of the oldest one still sending its head. A shard that does not
//! answer its statistics within `METRICS_SHARD_STATS_TIMEOUT_MS` is reported
//! with `corestate_shard_up 0` instead of stalling the scrape.

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::future::{self, BoxedLocal};
use glommio::net::{TcpListener, TcpStream};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use shards::shard::{ShardMsg, ShardStats};

use super::process::ProcessStats;
use super::{Exposition, WatchKind};
use crate::http::io::{self, drive, HyperIo, ReadClock};
use crate::server::context::ServerCtx;
use crate::server::refusals::RefusalCause;

/// Scrape connections served at once.
pub const METRICS_CONNECTIONS_MAX: usize = 16;
/// Largest HTTP request head read (hyper's smallest read buffer).
pub const METRICS_REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// Longest one scrape connection may take, end to end.
pub const METRICS_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Longest a connection may take to send its request head.
pub const METRICS_REQUEST_HEAD_TIMEOUT_MS: u64 = 2_000;
/// Longest a scrape waits for one shard's statistics.
pub const METRICS_SHARD_STATS_TIMEOUT_MS: u64 = 2_000;

const CONTENT_TYPE_PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";
const CONTENT_TYPE_TEXT: &str = "text/plain; charset=utf-8";
const CONTENT_TYPE_HTML: &str = "text/html; charset=utf-8";
const INDEX_HTML: &str = "<html><head><title>corestate</title></head><body>\
<h1>corestate</h1><p><a href=\"/metrics\">Metrics</a></p></body></html>\n";

/// One open metrics connection, as the accept loop sees it.
struct Open {
    id: u64,
    /// Its request head has arrived: it is being answered.
    head_done: Rc<Cell<bool>>,
    /// Closes it to make room for another.
    evict: flume::Sender<()>,
}

/// Make room for one more connection: `true` when there is a free slot, or
/// the oldest connection still sending its head was closed for it.
fn make_room(open: &RefCell<Vec<Open>>) -> bool {
    let mut open = open.borrow_mut();
    if open.len() < METRICS_CONNECTIONS_MAX {
        return true;
    }
    match open.iter().position(|o| !o.head_done.get()) {
        Some(i) => {
            let _ = open.remove(i).evict.try_send(());
            true
        }
        None => false,
    }
}

/// Serve the endpoint until the executor stops.
pub async fn serve(ctx: Rc<ServerCtx>, listener: TcpListener) {
    let open: Rc<RefCell<Vec<Open>>> = Rc::new(RefCell::new(Vec::new()));
    let mut next_id = 0u64;
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("metrics endpoint: accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if !make_room(&open) {
            drop(stream);
            continue;
        }
        let id = next_id;
        next_id += 1;
        let head_done = Rc::new(Cell::new(false));
        let (evict, evicted) = flume::bounded(1);
        open.borrow_mut().push(Open {
            id,
            head_done: head_done.clone(),
            evict,
        });
        let ctx = ctx.clone();
        let open = open.clone();
        glommio::spawn_local(async move {
            let exchange = answer_one(&ctx, stream, &head_done);
            let timeout = async {
                glommio::timer::sleep(Duration::from_millis(METRICS_REQUEST_TIMEOUT_MS)).await;
            };
            let closed = async {
                let _ = evicted.recv_async().await;
            };
            future::or(exchange, future::or(timeout, closed)).await;
            open.borrow_mut().retain(|o| o.id != id);
        })
        .detach();
    }
}

async fn answer_one(ctx: &Rc<ServerCtx>, stream: TcpStream, head_done: &Rc<Cell<bool>>) {
    // The head must arrive in time; once it has, the exchange's own
    // timeout (`METRICS_REQUEST_TIMEOUT_MS`) bounds the rest.
    let clock = Rc::new(ReadClock::started(Duration::from_millis(
        METRICS_REQUEST_HEAD_TIMEOUT_MS,
    )));
    let ctx = ctx.clone();
    let head_done = head_done.clone();
    let service_clock = clock.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        head_done.set(true);
        service_clock.disarm();
        let ctx = ctx.clone();
        let answer: BoxedLocal<Result<_, Infallible>> =
            Box::pin(async move { Ok(answer(&ctx, req.uri().path()).await) });
        answer
    });
    let conn = http1::Builder::new()
        .keep_alive(false)
        .max_buf_size(METRICS_REQUEST_HEAD_BYTES_MAX)
        .serve_connection(HyperIo::new(stream), service);
    if let Ok(mut parts) = drive(conn, &clock, None).await {
        io::close(&mut parts.io).await;
    }
}

/// The answer for `path`; any method is accepted.
async fn answer(ctx: &ServerCtx, path: &str) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (StatusCode::OK, CONTENT_TYPE_PROMETHEUS, scrape(ctx).await),
        "/health" | "/healthz" => (StatusCode::OK, CONTENT_TYPE_TEXT, "OK".to_string()),
        "/" => (StatusCode::OK, CONTENT_TYPE_HTML, INDEX_HTML.to_string()),
        _ => (
            StatusCode::NOT_FOUND,
            CONTENT_TYPE_TEXT,
            "Not Found".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A per-shard metric: name, type, help, and how to read it.
type ShardMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ShardStats) -> f64,
);

/// Every shard's statistics, `None` for a shard that did not answer in time.
async fn shard_stats(ctx: &ServerCtx) -> Vec<Option<ShardStats>> {
    shards::router::ask_all_until(
        ctx.router.all(),
        |done| ShardMsg::Stats { done },
        glommio::timer::sleep(Duration::from_millis(METRICS_SHARD_STATS_TIMEOUT_MS)),
    )
    .await
}

/// The whole exposition: counters, levels read now, shard and process stats.
pub async fn scrape(ctx: &ServerCtx) -> String {
    let stats = shard_stats(ctx).await;
    let cores = crate::server::cores::stats_of_all(ctx).await;
    let mut counters = super::Counters::default();
    let mut refusals = [0u64; 3];
    let mut subscriptions = [0u64; 2];
    let mut lag_max = 0u64;
    let mut connections_open = 0usize;
    for (_, core) in &cores {
        counters.absorb(&core.counters);
        for (sum, n) in refusals.iter_mut().zip(core.refusals) {
            *sum += n;
        }
        for (sum, n) in subscriptions.iter_mut().zip(core.subscriptions) {
            *sum += n;
        }
        lag_max = lag_max.max(core.lag_max_offsets);
        connections_open += core.connections_open;
    }
    let mut out = Exposition::new();

    out.single(
        "rstmdb_connections_total",
        "counter",
        "Client connections accepted.",
        counters.connections_total() as f64,
    );
    out.single(
        "rstmdb_connections_active",
        "gauge",
        "Client connections open now (including TLS handshakes in progress).",
        connections_open as f64,
    );
    out.header(
        "corestate_core_connections_open",
        "gauge",
        "Client connections open now, by the acceptor core serving them.",
    );
    for (core, stats) in &cores {
        out.sample(
            "corestate_core_connections_open",
            &[("core", &core.to_string())],
            stats.connections_open as f64,
        );
    }
    out.single(
        "corestate_answer_buffer_bytes",
        "gauge",
        "Bytes of answers produced and not yet written, all connections together.",
        ctx.answer_budget.used_bytes() as f64,
    );
    out.single(
        "corestate_answer_buffer_limit_bytes",
        "gauge",
        "Limit of corestate_answer_buffer_bytes (corestate.answer_buffer_total_mb).",
        ctx.answer_budget.limit_bytes() as f64,
    );
    out.header(
        "corestate_refusals_total",
        "counter",
        "Refusals by cause: connection limit, TLS handshake failure, failed AUTH.",
    );
    for (cause, total) in RefusalCause::ALL.iter().zip(refusals) {
        out.sample(
            "corestate_refusals_total",
            &[("cause", cause.as_str())],
            total as f64,
        );
    }
    counters.render(&mut out);

    // Subscriptions and how far behind the released stream they are.
    let released_upto = ctx.merger.borrow().released_upto();
    out.header(
        "rstmdb_subscriptions_active",
        "gauge",
        "Watch subscriptions open now, by type.",
    );
    for kind in [WatchKind::Instance, WatchKind::All] {
        out.sample(
            "rstmdb_subscriptions_active",
            &[("type", kind.as_str())],
            subscriptions[kind as usize] as f64,
        );
    }
    out.single(
        "corestate_watch_released_offset",
        "gauge",
        "Every event with a smaller wal_offset has been released to watchers.",
        released_upto as f64,
    );
    out.single(
        "corestate_watch_subscriber_lag_offsets_max",
        "gauge",
        "Largest distance, in wal_offset units, between the released stream and a subscription's cursor.",
        lag_max as f64,
    );

    // Totals over the shards that answered.
    let answered: Vec<&ShardStats> = stats.iter().flatten().collect();
    let sum = |f: &dyn Fn(&ShardStats) -> u64| answered.iter().map(|s| f(s)).sum::<u64>() as f64;
    out.single(
        "rstmdb_instances_total",
        "gauge",
        "Active (not deleted) instances.",
        sum(&|s| s.instances_active),
    );
    out.single(
        "rstmdb_machines_total",
        "gauge",
        "Machine (name, version) pairs.",
        answered.iter().map(|s| s.machines).max().unwrap_or(0) as f64,
    );
    out.single(
        "rstmdb_wal_entries",
        "gauge",
        "Entries the write-ahead log has recorded (the sequence of the newest; WAL_STATS entry_count).",
        sum(&|s| s.entries),
    );
    out.single(
        "rstmdb_wal_segments",
        "gauge",
        "Write-ahead log segment files.",
        sum(&|s| s.log_segments),
    );
    out.single(
        "rstmdb_wal_size_bytes",
        "gauge",
        "Bytes of records the write-ahead log segment files hold.",
        sum(&|s| s.log_data_bytes),
    );
    out.single(
        "rstmdb_wal_bytes_written_total",
        "counter",
        "Record bytes appended to the write-ahead log since start.",
        sum(&|s| s.wal.bytes_appended),
    );
    out.single(
        "rstmdb_wal_writes_total",
        "counter",
        "Write calls to the write-ahead log since start.",
        sum(&|s| s.wal.writes),
    );
    out.single(
        "rstmdb_wal_bytes_read_total",
        "counter",
        "Bytes read from the write-ahead log since start (recovery, WAL_READ, watch catch-up).",
        sum(&|s| s.reads.bytes_read),
    );
    out.single(
        "rstmdb_wal_reads_total",
        "counter",
        "Read passes over the write-ahead log since start (recovery counts one).",
        sum(&|s| s.reads.reads),
    );
    out.single(
        "rstmdb_wal_fsyncs_total",
        "counter",
        "Syncs of the write-ahead log since start.",
        sum(&|s| s.wal.syncs),
    );

    // Per shard.
    out.header(
        "corestate_shard_up",
        "gauge",
        "1 if the shard answered this scrape's statistics request in time.",
    );
    for (id, s) in stats.iter().enumerate() {
        out.sample(
            "corestate_shard_up",
            &[("shard", &id.to_string())],
            s.is_some() as u8 as f64,
        );
    }
    out.header(
        "corestate_shard_mailbox_depth",
        "gauge",
        "Messages waiting in the shard's mailbox.",
    );
    for (id, mailbox) in ctx.router.all().iter().enumerate() {
        out.sample(
            "corestate_shard_mailbox_depth",
            &[("shard", &id.to_string())],
            mailbox.len() as f64,
        );
    }
    let per_shard: [ShardMetric; 9] = [
        (
            "corestate_shard_wal_rollover_failing",
            "gauge",
            "1 while the shard cannot create its next WAL segment (disk full): writes that need it fail with WAL_IO_ERROR.",
            |s| s.rollover_failing as u8 as f64,
        ),
        (
            "corestate_shard_requests_waiting_for_budget",
            "gauge",
            "Requests held because their clients' answer budgets are spent (clients not reading).",
            |s| s.waiting_for_budget as f64,
        ),
        (
            "corestate_shard_instances_active",
            "gauge",
            "Active instances owned by the shard.",
            |s| s.instances_active as f64,
        ),
        (
            "corestate_shard_wal_records_appended_total",
            "counter",
            "Records the shard appended to its log since start.",
            |s| s.wal.records_appended as f64,
        ),
        (
            "corestate_shard_wal_bytes_appended_total",
            "counter",
            "Record bytes the shard appended to its log since start.",
            |s| s.wal.bytes_appended as f64,
        ),
        (
            "corestate_shard_wal_group_commits_total",
            "counter",
            "Group commits (one write for many records) since start.",
            |s| s.wal.group_commits as f64,
        ),
        (
            "corestate_shard_wal_syncs_total",
            "counter",
            "Syncs of the shard's log since start.",
            |s| s.wal.syncs as f64,
        ),
        (
            "corestate_shard_wal_records_per_sync",
            "gauge",
            "Records appended per sync since start (group-commit efficiency).",
            |s| {
                if s.wal.syncs == 0 {
                    0.0
                } else {
                    s.wal.records_appended as f64 / s.wal.syncs as f64
                }
            },
        ),
        (
            "corestate_shard_wal_segments",
            "gauge",
            "Segment files in the shard's log.",
            |s| s.log_segments as f64,
        ),
    ];
    for (name, kind, help, value) in per_shard {
        out.header(name, kind, help);
        for s in &answered {
            out.sample(name, &[("shard", &s.shard.to_string())], value(s));
        }
    }
    super::group::render_latency(
        &mut out,
        "corestate_shard_wal_commit_latency_seconds",
        "Group commit latency (write + sync of one group), by shard.",
        answered.iter().map(|s| (s.shard, &s.wal.commit_latency)),
    );
    super::group::render_groups(&mut out, &answered);

    if let Some(hooks) = &ctx.webhooks {
        hooks.render(&mut out);
    }
    ProcessStats::read().render(&mut out);
    out.finish()
}
