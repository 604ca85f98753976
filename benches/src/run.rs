//! One benchmark run, start to finish: setup (HELLO/AUTH, PUT_MACHINE,
//! pre-created instances, WATCH_ALL subscribers), the hostile clients and
//! the server's memory samples beside the load, the load connections,
//! warm-up, the measured window with its CPU / WAL samples at both edges,
//! drain (and the subscribers' drain), and the report.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::cli::{Args, Transport, Workload};
use crate::conn::{new_histogram, BenchError, Conn, LoadOutcome, Shared};
use crate::hostile;
use crate::http_conn::HttpConn;
use crate::memory::RssSampler;
use crate::progress::{self, Display};
use crate::report::{
    shell_command, BatchResults, CpuUse, Latency, MachineLoad, Report, Results, RunConfig,
    ServerCpu, ServerInfo, SetupInfo, WalStats,
};
use crate::response::Checker;
use crate::stats::{self, ProcCpu};
use crate::watch::{self, join_subscribers, watch_results, SubscriberEnd, WatchShared};
use crate::workload::{
    shard_of, spread_instance_ids, unix_nanos, Generator, Mix, OpKind, Templates,
    MACHINE_DEFINITION, MACHINE_NAME, MACHINE_VERSION, OP_KINDS,
};

/// Most connections used to pre-create instances.
pub const SETUP_CONNECTIONS_MAX: usize = 8;
/// Requests outstanding per setup connection.
pub const SETUP_PIPELINE_DEPTH: usize = 64;

/// How many shards the server has: INFO's `shards` (corestate), else 1
/// (placement does not matter to a server that does not report it).
async fn server_shards(control: &mut Conn) -> Result<(u64, String), BenchError> {
    Ok(match control.call("INFO", Value::Null).await? {
        Ok(info) => match info["shards"].as_u64() {
            Some(n) if n >= 1 => (n, "from INFO".into()),
            _ => (1, "not in INFO: 1 assumed".into()),
        },
        Err(e) => (1, format!("INFO refused ({}): 1 assumed", e.code)),
    })
}

/// Instances each connection owns in a batch run: enough that the batches
/// a connection has in flight never share an instance (so every state is
/// predictable whatever order the server runs them in), at least
/// `--instances` in total, and a whole number of rounds over the shards.
fn batch_instances_per_connection(args: &Args, shards: usize) -> usize {
    let wanted = args
        .instances
        .div_ceil(args.connections)
        .max(args.batch_ops * args.pipeline);
    wanted.div_ceil(shards) * shards
}

/// WAL counters at one instant.
#[derive(Debug, Clone, Copy)]
struct WalCounters {
    fsyncs: u64,
    writes: u64,
}

/// Asks for WAL_STATS; `Err(note)` when the server does not offer it.
async fn wal_counters(control: &mut Conn) -> Result<Result<WalCounters, String>, BenchError> {
    Ok(match control.call("WAL_STATS", Value::Null).await? {
        Ok(result) => {
            let io = &result["io_stats"];
            match (io["fsyncs"].as_u64(), io["writes"].as_u64()) {
                (Some(fsyncs), Some(writes)) => Ok(WalCounters { fsyncs, writes }),
                _ => Err(format!("WAL_STATS result has no io_stats: {result}")),
            }
        }
        Err(e) => Err(format!("WAL_STATS: {} {}", e.code, e.message)),
    })
}

fn run_tag() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "{:08x}",
        (nanos ^ ((std::process::id() as u64) << 20)) as u32
    )
}

type Merged = (
    Histogram<u64>,
    BTreeMap<String, u64>,
    [u64; OP_KINDS],
    u64,
    u64,
);

fn merge(outcomes: &[LoadOutcome]) -> Merged {
    let mut histogram = new_histogram();
    let mut failures = BTreeMap::new();
    let mut by_kind = [0u64; OP_KINDS];
    let mut ops = 0;
    let mut slow = 0;
    for o in outcomes {
        histogram.add(&o.histogram).expect("same histogram bounds");
        for (code, n) in &o.failures {
            *failures.entry(code.clone()).or_insert(0) += n;
        }
        for (total, n) in by_kind.iter_mut().zip(o.measured_by_kind) {
            *total += n;
        }
        ops += o.measured_ops;
        slow += o.slow_path_count;
    }
    (histogram, failures, by_kind, ops, slow)
}

/// Waits for every task; past `deadline` the connections are told to give
/// up (they return what they measured, marked fatal).
async fn join_all(
    handles: Vec<JoinHandle<LoadOutcome>>,
    shared: &Shared,
    deadline: tokio::time::Instant,
) -> Result<Vec<LoadOutcome>, BenchError> {
    let mut outcomes = Vec::with_capacity(handles.len());
    for mut handle in handles {
        let joined = match tokio::time::timeout_at(deadline, &mut handle).await {
            Ok(joined) => joined,
            Err(_) => {
                if !shared.abort.get() {
                    shared.abort.set(true);
                    shared.abort_notify.notify_waiters();
                }
                handle.await
            }
        };
        outcomes.push(joined.map_err(|e| BenchError(format!("load task failed: {e}")))?);
    }
    Ok(outcomes)
}

/// Creates every templated instance over a few pipelined connections.
async fn precreate(args: &Args, templates: &Rc<Templates>) -> Result<f64, BenchError> {
    let total = templates.instance_ids.len();
    if total == 0 {
        return Ok(0.0);
    }
    let started = Instant::now();
    let connections = args.connections.clamp(1, SETUP_CONNECTIONS_MAX).min(total);
    let shared = Rc::new(Shared::new());
    let mut handles = Vec::with_capacity(connections);
    for index in 0..connections {
        let (conn, _) = Conn::open(&args.addr, args.token.as_deref()).await?;
        let list = (index..total)
            .step_by(connections)
            .map(|k| k as u32)
            .collect();
        let generator = Generator::precreate(templates.clone(), list, index);
        let shared = shared.clone();
        handles.push(tokio::task::spawn_local(async move {
            conn.run_load(
                index,
                generator,
                &shared,
                SETUP_PIPELINE_DEPTH,
                Checker::new(false),
            )
            .await
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
    let outcomes = join_all(handles, &shared, deadline).await?;
    let (_, failures, _, _, _) = merge(&outcomes);
    if !failures.is_empty() {
        return Err(BenchError(format!(
            "pre-creating {total} instances failed: {failures:?}"
        )));
    }
    let created: u64 = outcomes.iter().map(|o| o.completed).sum();
    if created != total as u64 {
        return Err(BenchError(format!(
            "pre-created {created} of {total} instances"
        )));
    }
    Ok(started.elapsed().as_secs_f64())
}

fn cpu_use(cpu_seconds: f64, elapsed_secs: f64, ops: u64) -> CpuUse {
    CpuUse {
        cpu_seconds,
        cores_busy: cpu_seconds / elapsed_secs.max(1e-9),
        per_op_us: if ops == 0 {
            0.0
        } else {
            cpu_seconds * 1e6 / ops as f64
        },
    }
}

/// Runs the benchmark described by `args`. `Err` means the run could not
/// take place (setup failed); request failures are in the report.
pub async fn run(args: &Args, argv: &[String]) -> Result<Report, BenchError> {
    let mix: Mix = args.mix().map_err(BenchError)?;
    let started_unix_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let machine = stats::machine_facts();

    // Setup.
    let (mut control, hello) = Conn::open(&args.addr, args.token.as_deref()).await?;
    let definition: Value = serde_json::from_str(MACHINE_DEFINITION).expect("valid definition");
    let put = control
        .call(
            "PUT_MACHINE",
            json!({"machine": MACHINE_NAME, "version": MACHINE_VERSION, "definition": definition}),
        )
        .await?
        .map_err(|e| BenchError(format!("PUT_MACHINE refused: {}: {}", e.code, e.message)))?;
    let machine_created = put["created"].as_bool().unwrap_or(false);
    let tag = run_tag();
    let needs_instances = mix.uses(OpKind::Apply) || mix.uses(OpKind::Get);
    let instance_count = if needs_instances { args.instances } else { 0 };
    let mut templates = Templates::new(&tag, instance_count, args.payload_bytes);
    let mut batch_layout = None;
    if args.workload == Workload::Batch {
        let (shards, source) = server_shards(&mut control).await?;
        let per_connection = batch_instances_per_connection(args, shards as usize);
        templates = templates
            .with_instance_ids(spread_instance_ids(
                &tag,
                args.connections,
                per_connection,
                shards as usize,
            ))
            .with_batch_ops(args.batch_ops);
        // Every batch takes batch_ops consecutive instances of a
        // connection, which cycle through the shards.
        let first: Vec<usize> = (0..args.batch_ops)
            .map(|i| {
                shard_of(
                    &templates.instance_ids[i * args.connections],
                    shards as usize,
                )
            })
            .collect();
        let mut touched = first.clone();
        touched.sort_unstable();
        touched.dedup();
        batch_layout = Some((shards, source, per_connection, touched.len() as u64));
    }
    if args.workload == Workload::Watch {
        templates = templates.stamped();
    }
    let templates = Rc::new(templates);
    let instance_count = templates.instance_ids.len();
    let precreate_secs = precreate(args, &templates).await?;

    let mut conns = Vec::with_capacity(args.connections);
    let mut http_conns = Vec::new();
    match args.transport {
        Transport::Rcp => {
            for _ in 0..args.connections {
                conns.push(Conn::open(&args.addr, args.token.as_deref()).await?.0);
            }
        }
        Transport::Http => {
            let http_addr = args.http_addr();
            for _ in 0..args.connections {
                http_conns.push(HttpConn::open(&http_addr, args.token.as_deref()).await?);
            }
        }
    }

    // Subscribers, before any apply.
    let shared = Rc::new(Shared::new());
    let watch_shared = Rc::new(WatchShared::new(Duration::from_secs_f64(
        args.drain_timeout_secs,
    )));
    let mut subscriber_handles = Vec::new();
    if args.workload == Workload::Watch {
        for index in 0..args.subscribers {
            let (mut conn, _) = Conn::open(&args.addr, args.token.as_deref()).await?;
            let result = conn
                .call("WATCH_ALL", json!({"include_ctx": false}))
                .await?
                .map_err(|e| BenchError(format!("WATCH_ALL refused: {}: {}", e.code, e.message)))?;
            let subscription_id = result["subscription_id"]
                .as_str()
                .ok_or_else(|| {
                    BenchError(format!("WATCH_ALL result has no subscription_id: {result}"))
                })?
                .to_string();
            let prefix = templates.instance_prefix.clone().into_bytes();
            let (shared, watch_shared) = (shared.clone(), watch_shared.clone());
            subscriber_handles.push(tokio::task::spawn_local(async move {
                watch::run_subscriber(conn, index, subscription_id, prefix, &shared, &watch_shared)
                    .await
            }));
        }
    }

    // Hostile clients and the server's memory samples, from here to the
    // end of the drain.
    let big_instance = match &args.hostile {
        Some(spec) => hostile::prepare(&mut control, spec, &tag).await?,
        None => None,
    };
    let memory = args.server_pid.map(RssSampler::start);
    let hostile_run = match args.hostile {
        Some(spec) => {
            Some(hostile::start(&args.addr, args.token.as_deref(), spec, big_instance).await?)
        }
        None => None,
    };

    // Load.
    let schedule: Rc<[OpKind]> = Rc::from(mix.schedule());
    let mut handles = Vec::with_capacity(args.connections);
    for (index, conn) in conns.into_iter().enumerate() {
        let generator =
            Generator::load(templates.clone(), schedule.clone(), index, args.connections);
        let shared = shared.clone();
        let (pipeline, full_parse) = (args.pipeline, args.full_parse);
        handles.push(tokio::task::spawn_local(async move {
            conn.run_load(
                index,
                generator,
                &shared,
                pipeline,
                Checker::new(full_parse),
            )
            .await
        }));
    }
    for (index, conn) in http_conns.into_iter().enumerate() {
        let generator =
            Generator::load(templates.clone(), schedule.clone(), index, args.connections);
        let shared = shared.clone();
        let full_parse = args.full_parse;
        handles.push(tokio::task::spawn_local(async move {
            conn.run_load(index, generator, &shared, Checker::new(full_parse))
                .await
        }));
    }
    let warmup = Duration::from_secs_f64(args.warmup_secs);
    let duration = Duration::from_secs_f64(args.duration_secs);
    let ticker_finished = Rc::new(Cell::new(false));
    let ticker = tokio::task::spawn_local(progress::run(
        shared.clone(),
        ticker_finished.clone(),
        Display::choose(args.quiet, args.no_progress_bar),
        warmup,
        duration,
    ));

    tokio::time::sleep(warmup).await;
    let wal_before = wal_counters(&mut control).await?;
    let sample_cpu = |pid: Option<u32>| pid.map(stats::sample_process);
    let server_before = sample_cpu(args.server_pid);
    let self_before = stats::self_cpu_seconds();
    let system_before = stats::sample_system();
    let load_start = stats::load_average_1m();
    shared.window_start_unix_ns.set(Some(unix_nanos()));
    let window_start = Instant::now();
    shared.window_start.set(Some(window_start));

    tokio::time::sleep(duration).await;
    let window_end = Instant::now();
    shared.window_end.set(Some(window_end));
    shared.window_end_unix_ns.set(Some(unix_nanos()));
    shared.stop.set(true);
    let self_after = stats::self_cpu_seconds();
    let system_after = stats::sample_system();
    let server_after = sample_cpu(args.server_pid);
    let wal_after = wal_counters(&mut control).await?;
    let elapsed_secs = window_end.duration_since(window_start).as_secs_f64();

    let drain_deadline =
        tokio::time::Instant::now() + Duration::from_secs_f64(args.drain_timeout_secs);
    let outcomes = join_all(handles, &shared, drain_deadline).await?;
    watch_shared
        .applies_acked
        .set(outcomes.iter().map(|o| o.stamped_acked).sum());
    watch_shared.writers_done_at.set(Some(Instant::now()));
    let subscribers = join_subscribers(subscriber_handles, &shared, &watch_shared).await?;
    let (server_memory, server_memory_note) = match memory.map(RssSampler::finish) {
        Some(Ok(memory)) => (Some(memory), None),
        Some(Err(note)) => (None, Some(note)),
        None => (None, None),
    };
    let hostile = hostile_run.map(hostile::HostileRun::finish).transpose()?;
    ticker_finished.set(true);
    let ticker = ticker
        .await
        .map_err(|e| BenchError(format!("progress task failed: {e}")))?;

    // Report.
    let (histogram, errors, by_kind, ops, slow_path_responses) = merge(&outcomes);
    let errors_total: u64 = errors.values().sum();
    let mut problems: Vec<String> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, o)| o.fatal.as_ref().map(|f| format!("connection {i}: {f}")))
        .collect();
    if ops == 0 {
        problems.push("no operation completed in the measured window".into());
    }
    let (server_cpu, server_cpu_note) = match (server_before, server_after) {
        (Some(Ok(before)), Some(Ok(after))) => {
            (Some(server_cpu(&before, &after, elapsed_secs, ops)), None)
        }
        (Some(Err(e)), _) | (_, Some(Err(e))) => (None, Some(e)),
        _ => (None, None),
    };
    let wal = match (wal_before, wal_after) {
        (Ok(before), Ok(after)) => {
            let fsyncs = after.fsyncs.saturating_sub(before.fsyncs);
            let writes = after.writes.saturating_sub(before.writes);
            WalStats {
                supported: true,
                note: None,
                fsyncs: Some(fsyncs),
                writes: Some(writes),
                fsyncs_per_sec: Some(fsyncs as f64 / elapsed_secs.max(1e-9)),
                ops_per_fsync: (fsyncs > 0).then(|| ops as f64 / fsyncs as f64),
            }
        }
        (Err(note), _) | (_, Err(note)) => WalStats {
            supported: false,
            note: Some(note),
            fsyncs: None,
            writes: None,
            fsyncs_per_sec: None,
            ops_per_fsync: None,
        },
    };
    let harness_cpu = cpu_use(self_after - self_before, elapsed_secs, ops);
    let hz = stats::clock_ticks_per_sec() as f64;
    let machine_cores_busy = match (system_before, system_after) {
        (Some(a), Some(b)) => {
            b.busy_ticks.saturating_sub(a.busy_ticks) as f64 / hz / elapsed_secs.max(1e-9)
        }
        _ => 0.0,
    };
    let machine_load = MachineLoad {
        cores_busy: machine_cores_busy,
        other_cores_busy: server_cpu.as_ref().map(|cpu| {
            (machine_cores_busy - cpu.total.cores_busy - harness_cpu.cores_busy).max(0.0)
        }),
        load_average_1m_start: load_start,
        load_average_1m_end: stats::load_average_1m(),
    };
    let latency = Latency::from_histogram(&histogram);
    let ops_by_kind = OpKind::ALL
        .iter()
        .map(|k| (k.name().to_string(), by_kind[k.index()]))
        .collect();
    let batch = batch_layout.map(|(shards, shards_source, per_connection, touched)| {
        let batches = by_kind[OpKind::Batch.index()];
        let events = batches * args.batch_ops as u64;
        BatchResults {
            mode: "atomic",
            ops_per_batch: args.batch_ops,
            shards,
            shards_source,
            shards_per_batch: touched,
            instances_per_connection: per_connection,
            batches,
            batches_per_sec: batches as f64 / elapsed_secs.max(1e-9),
            events,
            events_per_sec: events as f64 / elapsed_secs.max(1e-9),
            server_cpu_us_per_event: server_cpu
                .as_ref()
                .filter(|_| events > 0)
                .map(|cpu| cpu.total.cpu_seconds * 1e6 / events as f64),
        }
    });
    let watch = (args.workload == Workload::Watch).then(|| {
        let applies_in_window = outcomes.iter().map(|o| o.stamped_acked_in_window).sum();
        watch_results(
            &subscribers,
            applies_in_window,
            watch_shared.applies_acked.get(),
            elapsed_secs,
        )
    });
    for (i, sub) in subscribers.iter().enumerate() {
        if let SubscriberEnd::Failed(why) = &sub.end {
            problems.push(format!("watch subscriber {i}: {why}"));
        }
    }
    if let Some(w) = watch.as_ref().filter(|_| args.fail_on_loss) {
        if w.loss {
            problems.push(format!(
                "--fail-on-loss: a subscriber received only {:.2} % of the events",
                100.0 * w.delivered_fraction_total_min.min(w.delivered_fraction_min)
            ));
        }
        if w.order_violations > 0 {
            problems.push(format!(
                "--fail-on-loss: {} events arrived out of offset order",
                w.order_violations
            ));
        }
    }
    let ok = errors_total == 0 && problems.is_empty();
    Ok(Report {
        tool: "corestate-bench",
        tool_version: env!("CARGO_PKG_VERSION"),
        command: shell_command(argv),
        label: args.label.clone(),
        tags: args.tag_map(),
        started_unix_secs,
        server: ServerInfo {
            addr: args.addr.clone(),
            name: hello["server_name"].as_str().unwrap_or("?").to_string(),
            version: hello["server_version"].as_str().unwrap_or("?").to_string(),
            pid: args.server_pid,
        },
        config: RunConfig {
            workload: args.workload.name().to_string(),
            transport: args.transport.name().to_string(),
            http_addr: (args.transport == Transport::Http).then(|| args.http_addr()),
            mix: mix.describe(),
            connections: args.connections,
            pipeline: args.pipeline,
            duration_secs: args.duration_secs,
            warmup_secs: args.warmup_secs,
            instances: instance_count,
            payload_bytes: args.payload_bytes,
            full_parse: args.full_parse,
            hostile: args.hostile.map(|spec| spec.describe()),
        },
        machine,
        setup: SetupInfo {
            machine_created,
            instances_created: instance_count,
            precreate_secs,
            run_tag: tag,
        },
        results: Results {
            elapsed_secs,
            ops,
            ops_per_sec: ops as f64 / elapsed_secs.max(1e-9),
            ops_by_kind,
            latency,
            errors,
            errors_total,
            server_cpu,
            server_cpu_note,
            harness_cpu,
            server_memory,
            server_memory_note,
            wal,
            machine_load,
            timeline_ops_per_sec: ticker.timeline_ops_per_sec,
            max_stall_ms: ticker.max_stall_ms,
            slow_path_responses,
            batch,
            watch,
            hostile,
        },
        ok,
        problems,
    })
}

fn server_cpu(before: &ProcCpu, after: &ProcCpu, elapsed_secs: f64, ops: u64) -> ServerCpu {
    let hz = stats::clock_ticks_per_sec() as f64;
    let cpu_seconds = after.ticks.saturating_sub(before.ticks) as f64 / hz;
    ServerCpu {
        total: cpu_use(cpu_seconds, elapsed_secs, ops),
        threads: stats::thread_deltas(before, after),
    }
}
