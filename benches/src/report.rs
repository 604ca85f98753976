//! The result of one run: the JSON document (`--json`) and the human
//! summary printed on stdout.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::hostile::HostileResults;
use crate::memory::ServerMemory;
use crate::stats::{MachineFacts, ThreadCpu};

/// Server threads listed in the human summary (the JSON has all).
pub const SUMMARY_THREADS_MAX: usize = 6;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub tool_version: &'static str,
    /// The exact command line, shell-quoted.
    pub command: String,
    pub label: Option<String>,
    /// `--tag KEY=VALUE` pairs.
    pub tags: BTreeMap<String, String>,
    pub started_unix_secs: u64,
    pub server: ServerInfo,
    pub config: RunConfig,
    pub machine: MachineFacts,
    pub setup: SetupInfo,
    pub results: Results,
    /// False when any request failed or anything else went wrong.
    pub ok: bool,
    /// Everything that makes `ok` false, in words.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    pub addr: String,
    /// `server_name` / `server_version` from HELLO.
    pub name: String,
    pub version: String,
    pub pid: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    pub workload: String,
    /// `rcp` or `http` (the load connections' protocol).
    pub transport: String,
    /// Where `--transport http` connected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<String>,
    pub mix: String,
    pub connections: usize,
    pub pipeline: usize,
    pub duration_secs: f64,
    pub warmup_secs: f64,
    pub instances: usize,
    pub payload_bytes: usize,
    pub full_parse: bool,
    /// `--hostile`, every kind named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostile: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SetupInfo {
    /// PUT_MACHINE answered `created: true` (false: already there).
    pub machine_created: bool,
    pub instances_created: usize,
    pub precreate_secs: f64,
    /// Per-run prefix of every instance id the harness made.
    pub run_tag: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub min_us: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    /// Percentiles of a histogram of µs (all zero when it is empty).
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            min_us: h.min(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// `--workload batch`: each operation is one atomic BATCH of
/// `ops_per_batch` APPLY_EVENTs.
#[derive(Debug, Clone, Serialize)]
pub struct BatchResults {
    pub mode: &'static str,
    pub ops_per_batch: usize,
    /// Shards the instances of a batch were spread over.
    pub shards: u64,
    /// Where `shards` came from (INFO, or assumed).
    pub shards_source: String,
    /// Shards a batch touches (every batch touches the same number).
    pub shards_per_batch: u64,
    pub instances_per_connection: usize,
    pub batches: u64,
    pub batches_per_sec: f64,
    /// Applied events: batches × ops per batch.
    pub events: u64,
    pub events_per_sec: f64,
    pub server_cpu_us_per_event: Option<f64>,
}

/// One WATCH_ALL subscriber of `--workload watch`.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriberResult {
    pub subscription_id: String,
    /// Events whose stamp is in the measured window.
    pub events_in_window: u64,
    /// `events_in_window` per second of the window.
    pub events_per_sec: f64,
    /// `events_in_window` / applies of the window acknowledged.
    pub delivered_fraction: f64,
    /// Events of the whole run (warm-up and drain included).
    pub events_total: u64,
    /// `events_total` / applies of the whole run acknowledged.
    pub delivered_fraction_total: f64,
    pub foreign_events: u64,
    pub order_violations: u64,
    /// The first violations: [highest offset before, offset received].
    pub first_violations: Vec<[u64; 2]>,
    /// Receive time − the `t` stamp of the apply, for in-window events.
    pub latency: Latency,
    /// Why it stopped reading.
    pub end: String,
    /// When the last event arrived after the writers had finished (ms,
    /// negative: before).
    pub last_event_after_writers_ms: Option<i64>,
    pub slow_path_events: u64,
}

/// `--workload watch`: subscribers beside an apply load.
#[derive(Debug, Clone, Serialize)]
pub struct WatchResults {
    pub subscribers: usize,
    pub include_ctx: bool,
    /// Applies sent in the window (stamp) and acknowledged: the events
    /// each subscriber should receive for the window.
    pub applies_acked_in_window: u64,
    /// Applies acknowledged over the whole run.
    pub applies_acked_total: u64,
    /// Some subscriber received fewer events than applies were acknowledged.
    pub loss: bool,
    /// Events that arrived after a higher offset, all subscribers.
    pub order_violations: u64,
    /// The lowest delivered fraction of any subscriber (window).
    pub delivered_fraction_min: f64,
    /// The lowest delivered fraction of any subscriber (whole run).
    pub delivered_fraction_total_min: f64,
    /// Per-subscriber delivered events/s: lowest and mean.
    pub events_per_sec_min: f64,
    pub events_per_sec_mean: f64,
    /// Event latency over every subscriber's in-window events.
    pub latency: Latency,
    pub per_subscriber: Vec<SubscriberResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CpuUse {
    pub cpu_seconds: f64,
    /// CPU seconds per wall-clock second of the measured window.
    pub cores_busy: f64,
    /// CPU microseconds per measured operation.
    pub per_op_us: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerCpu {
    #[serde(flatten)]
    pub total: CpuUse,
    /// Per-thread CPU in the window, busiest first.
    pub threads: Vec<ThreadCpu>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WalStats {
    /// The server answered WAL_STATS with `io_stats`.
    pub supported: bool,
    /// Why the numbers are missing, when they are.
    pub note: Option<String>,
    pub fsyncs: Option<u64>,
    pub writes: Option<u64>,
    pub fsyncs_per_sec: Option<f64>,
    pub ops_per_fsync: Option<f64>,
}

/// How busy the whole machine was in the measured window: numbers taken
/// on a machine that other work keeps busy are noisy.
#[derive(Debug, Clone, Serialize)]
pub struct MachineLoad {
    pub cores_busy: f64,
    /// Cores busy with neither the server (when its PID is known) nor the
    /// harness.
    pub other_cores_busy: Option<f64>,
    pub load_average_1m_start: f64,
    pub load_average_1m_end: f64,
}

/// Other processes using more than this many cores make a run "noisy".
pub const NOISY_OTHER_CORES: f64 = 0.25;

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub elapsed_secs: f64,
    pub ops: u64,
    pub ops_per_sec: f64,
    pub ops_by_kind: BTreeMap<String, u64>,
    pub latency: Latency,
    /// Failed requests by error code (whole run, warm-up and drain included).
    pub errors: BTreeMap<String, u64>,
    pub errors_total: u64,
    pub server_cpu: Option<ServerCpu>,
    /// Why server CPU is missing when a PID was given.
    pub server_cpu_note: Option<String>,
    pub harness_cpu: CpuUse,
    /// The server's resident memory over the run (`--server-pid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_memory: Option<ServerMemory>,
    /// Why server memory is missing when a PID was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_memory_note: Option<String>,
    pub wal: WalStats,
    pub machine_load: MachineLoad,
    /// Verified responses per second from the start of the load (warm-up
    /// seconds first).
    pub timeline_ops_per_sec: Vec<u64>,
    /// Longest time with no response at all while load was running.
    pub max_stall_ms: u64,
    /// Responses the byte-level fast path did not recognise.
    pub slow_path_responses: u64,
    /// Batch figures (`--workload batch`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchResults>,
    /// Subscriber figures (`--workload watch`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchResults>,
    /// Hostile clients beside the load (`--hostile`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostile: Option<HostileResults>,
}

/// `12.34 %` (also summary.md's percentages).
pub(crate) fn percent(fraction: f64) -> String {
    format!("{:.2} %", 100.0 * fraction)
}

/// `1,234,567` (also summary.md's large numbers).
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Report {
    /// The summary printed on stdout.
    pub fn summary(&self) -> String {
        let r = &self.results;
        let c = &self.config;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "corestate-bench {} -- {} against {} ({} {}{})",
            self.tool_version,
            if c.workload == "mix" {
                format!("mix {}", c.mix)
            } else {
                c.workload.clone()
            },
            self.server.addr,
            self.server.name,
            self.server.version,
            self.server
                .pid
                .map(|p| format!(", pid {p}"))
                .unwrap_or_default()
        );
        if let Some(label) = &self.label {
            let _ = writeln!(s, "  label           {label}");
        }
        let _ = writeln!(
            s,
            "  load            {} {} connections x {} pipeline, {} instances, payload {} B, \
             {:.1} s measured after {:.1} s warm-up{}",
            c.connections,
            c.transport.to_uppercase(),
            c.pipeline,
            c.instances,
            c.payload_bytes,
            r.elapsed_secs,
            c.warmup_secs,
            c.http_addr
                .as_ref()
                .map(|a| format!(" (HTTP API at {a})"))
                .unwrap_or_default()
        );
        let by_kind: Vec<String> = r
            .ops_by_kind
            .iter()
            .filter(|(_, &n)| n > 0)
            .map(|(k, n)| format!("{k} {}", thousands(*n)))
            .collect();
        let _ = writeln!(
            s,
            "  throughput      {} ops/s   ({} ops: {})",
            thousands(r.ops_per_sec.round() as u64),
            thousands(r.ops),
            by_kind.join(", ")
        );
        let l = &r.latency;
        let _ = writeln!(
            s,
            "  latency (us)    p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {:.0})",
            thousands(l.p50_us),
            thousands(l.p90_us),
            thousands(l.p99_us),
            thousands(l.p999_us),
            thousands(l.max_us),
            l.mean_us
        );
        match (&r.server_cpu, &r.server_cpu_note) {
            (Some(cpu), _) => {
                let _ = writeln!(
                    s,
                    "  server CPU      {:.1} us/op   ({:.2} s, {:.2} cores busy)",
                    cpu.total.per_op_us, cpu.total.cpu_seconds, cpu.total.cores_busy
                );
                let threads: Vec<String> = cpu
                    .threads
                    .iter()
                    .take(SUMMARY_THREADS_MAX)
                    .map(|t| {
                        format!(
                            "{} {:.0}%",
                            t.name,
                            100.0 * t.cpu_seconds / r.elapsed_secs.max(1e-9)
                        )
                    })
                    .collect();
                if !threads.is_empty() {
                    let _ = writeln!(s, "  server threads  {}", threads.join(", "));
                }
            }
            (None, Some(note)) => {
                let _ = writeln!(s, "  server CPU      n/a ({note})");
            }
            (None, None) => {
                let _ = writeln!(s, "  server CPU      n/a (no --server-pid)");
            }
        }
        match (&r.server_memory, &r.server_memory_note) {
            (Some(memory), _) => memory.summary_line(&mut s),
            (None, Some(note)) => {
                let _ = writeln!(s, "  server memory   n/a ({note})");
            }
            (None, None) => {}
        }
        if let Some(b) = &r.batch {
            let _ = writeln!(
                s,
                "  batches         {} batches/s x {} ops = {} events/s   ({} {} batches, \
                 each over {} of {} shards ({}), {} instances per connection)",
                thousands(b.batches_per_sec.round() as u64),
                b.ops_per_batch,
                thousands(b.events_per_sec.round() as u64),
                thousands(b.batches),
                b.mode,
                b.shards_per_batch,
                b.shards,
                b.shards_source,
                b.instances_per_connection
            );
            if let Some(per_event) = b.server_cpu_us_per_event {
                let _ = writeln!(s, "  server CPU      {per_event:.1} us/event");
            }
        }
        if let Some(w) = &r.watch {
            self.watch_summary(&mut s, w);
        }
        if let Some(hostile) = &r.hostile {
            hostile.summary_lines(&mut s);
        }
        let h = &r.harness_cpu;
        let _ = writeln!(
            s,
            "  harness CPU     {:.1} us/op   ({:.2} s, {:.2} cores busy)",
            h.per_op_us, h.cpu_seconds, h.cores_busy
        );
        match (r.wal.fsyncs_per_sec, &r.wal.note) {
            (Some(per_sec), _) => {
                let _ = writeln!(
                    s,
                    "  WAL syncs       {} /s   ({} syncs, {} writes, {} ops/sync)",
                    thousands(per_sec.round() as u64),
                    thousands(r.wal.fsyncs.unwrap_or(0)),
                    thousands(r.wal.writes.unwrap_or(0)),
                    r.wal
                        .ops_per_fsync
                        .map_or("-".to_string(), |v| format!("{v:.1}"))
                );
            }
            (None, note) => {
                let _ = writeln!(
                    s,
                    "  WAL syncs       n/a{}",
                    note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
                );
            }
        }
        let m = &r.machine_load;
        let _ = writeln!(
            s,
            "  machine load    {:.2} of {} cores busy{}, load average {:.2} -> {:.2}",
            m.cores_busy,
            self.machine.nproc,
            m.other_cores_busy
                .map(|o| format!(" ({o:.2} by other processes)"))
                .unwrap_or_default(),
            m.load_average_1m_start,
            m.load_average_1m_end
        );
        if m.other_cores_busy.is_some_and(|o| o > NOISY_OTHER_CORES) {
            let _ = writeln!(s, "  !!! NOISY       other processes were busy during the run: numbers are unreliable");
        }
        if r.max_stall_ms >= 1000 {
            let _ = writeln!(
                s,
                "  STALL           longest gap without any response: {} ms",
                r.max_stall_ms
            );
        }
        if r.errors_total == 0 && self.problems.is_empty() {
            let _ = writeln!(s, "  errors          none (every response verified)");
        } else {
            let _ = writeln!(s, "  !!! ERRORS      {} failed requests", r.errors_total);
            for (code, n) in &r.errors {
                let _ = writeln!(s, "  !!!   {code}: {n}");
            }
            for p in &self.problems {
                let _ = writeln!(s, "  !!! {p}");
            }
            let _ = writeln!(s, "  !!! RUN FAILED");
        }
        s
    }
}

impl Report {
    fn watch_summary(&self, s: &mut String, w: &WatchResults) {
        let _ = writeln!(
            s,
            "  watch           {} WATCH_ALL subscribers (include_ctx {}); {} applies \
             acknowledged in the window, {} in the whole run",
            w.subscribers,
            w.include_ctx,
            thousands(w.applies_acked_in_window),
            thousands(w.applies_acked_total)
        );
        let l = &w.latency;
        let _ = writeln!(
            s,
            "  event latency   p50 {}  p90 {}  p99 {}  p99.9 {}  max {} us  (all subscribers; \
             apply sent -> event read)",
            thousands(l.p50_us),
            thousands(l.p90_us),
            thousands(l.p99_us),
            thousands(l.p999_us),
            thousands(l.max_us)
        );
        for (i, sub) in w.per_subscriber.iter().enumerate() {
            let _ = writeln!(
                s,
                "  subscriber {i:<4} {} events/s, {} delivered ({} whole run), p50 {} p99 {} \
                 max {} us, {} order violations; {}",
                thousands(sub.events_per_sec.round() as u64),
                percent(sub.delivered_fraction),
                percent(sub.delivered_fraction_total),
                thousands(sub.latency.p50_us),
                thousands(sub.latency.p99_us),
                thousands(sub.latency.max_us),
                sub.order_violations,
                sub.end
            );
        }
        if w.loss {
            let _ = writeln!(
                s,
                "  !!! LOSS        events were NOT delivered: the worst subscriber received {} \
                 of the window's events ({} of the whole run's)",
                percent(w.delivered_fraction_min),
                percent(w.delivered_fraction_total_min)
            );
        }
        if w.order_violations > 0 {
            let _ = writeln!(
                s,
                "  !!! ORDER       {} events arrived after an event with a higher wal_offset",
                thousands(w.order_violations)
            );
        }
    }
}

/// Shell-quotes argv so the command can be pasted back.
pub fn shell_command(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_./:=,@%+-".contains(c));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_grouping() {
        assert_eq!(
            shell_command(&["a".into(), "x y".into(), "it's".into()]),
            r"a 'x y' 'it'\''s'"
        );
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(123), "123");
    }
}
