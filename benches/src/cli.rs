//! Command-line flags and their limits.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::hostile::HostileSpec;
use crate::http_conn::{default_http_addr, HTTP_PIPELINE_MAX};
use crate::watch::SUBSCRIBERS_MAX;
use crate::workload::{Mix, OpKind, BATCH_OPS_MAX, PAYLOAD_BYTES_MAX};

/// Most load connections (rstmdb 0.3 refuses more than 1000 in total).
pub const CONNECTIONS_MAX: usize = 4096;
/// Deepest pipeline per connection.
pub const PIPELINE_MAX: usize = 65_536;
/// Longest measured duration or warm-up (one day).
pub const PHASE_SECS_MAX: f64 = 86_400.0;
/// Most pre-created instances.
pub const INSTANCES_MAX: usize = 10_000_000;
/// Mix used by `--workload mix` when `--mix` is not given.
pub const MIX_DEFAULT: &str = "apply=70,get=30,create=0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// CREATE_INSTANCE with unique ids.
    Create,
    /// APPLY_EVENT cycling over pre-created instances.
    Apply,
    /// GET_INSTANCE on pre-created instances.
    Get,
    /// Ratios given by --mix.
    Mix,
    /// Atomic BATCHes of --batch-ops APPLY_EVENTs, spread over the shards.
    Batch,
    /// APPLY_EVENT writers plus --subscribers WATCH_ALL subscribers.
    Watch,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Create => "create",
            Workload::Apply => "apply",
            Workload::Get => "get",
            Workload::Mix => "mix",
            Workload::Batch => "batch",
            Workload::Watch => "watch",
        }
    }
}

/// How the load connections talk to the server (setup always uses RCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// RCP over TCP (binary framing), pipelined.
    Rcp,
    /// The HTTP/JSON API over HTTP/1.1 keep-alive connections, one request
    /// outstanding per connection.
    Http,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Rcp => "rcp",
            Transport::Http => "http",
        }
    }
}

/// Load generator for RCP servers (corestate, rstmdb 0.3): closed-loop
/// pipelined connections, every response verified.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "corestate-bench",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Server address (host:port)
    #[arg(long, default_value = "127.0.0.1:7401")]
    pub addr: String,
    /// Protocol of the load connections (setup always uses RCP)
    #[arg(long, value_enum, default_value = "rcp")]
    pub transport: Transport,
    /// HTTP API address for --transport http [default: the host of --addr,
    /// port 7402]
    #[arg(long, value_name = "HOST:PORT")]
    pub http_addr: Option<String>,
    /// What to send
    #[arg(long, value_enum, default_value = "apply")]
    pub workload: Workload,
    /// Operation weights for --workload mix, e.g. apply=70,get=30,create=0
    #[arg(long, value_name = "RATIOS")]
    pub mix: Option<String>,
    /// Concurrent client connections
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Requests kept outstanding on each connection
    #[arg(long, default_value_t = 16)]
    pub pipeline: usize,
    /// Measured seconds (after the warm-up)
    #[arg(long = "duration", value_name = "SECS", default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Warm-up seconds (load runs, nothing is measured)
    #[arg(long = "warmup", value_name = "SECS", default_value_t = 2.0)]
    pub warmup_secs: f64,
    /// Instances pre-created for apply/get
    #[arg(long, default_value_t = 1000)]
    pub instances: usize,
    /// Length of the string in each APPLY_EVENT payload / initial_ctx (0 = none)
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub payload_bytes: usize,
    /// PID of a local server: report its CPU time per operation
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Write every number, the command line and machine facts to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Bearer token (AUTH after HELLO)
    #[arg(long, value_name = "T")]
    pub token: Option<String>,
    /// Name for this run in the output (e.g. the server under test)
    #[arg(long)]
    pub label: Option<String>,
    /// Parse every response fully as JSON (slower generator)
    #[arg(long)]
    pub full_parse: bool,
    /// APPLY_EVENT ops per BATCH (--workload batch), on distinct instances
    /// spread over the server's shards
    #[arg(long, value_name = "B", default_value_t = 10)]
    pub batch_ops: usize,
    /// WATCH_ALL subscriber connections (--workload watch)
    #[arg(long, value_name = "S", default_value_t = 4)]
    pub subscribers: usize,
    /// With --workload watch: fail the run (exit 1) when a subscriber misses
    /// events or sees offsets out of order (normally reported, exit 0)
    #[arg(long)]
    pub fail_on_loss: bool,
    /// Seconds to wait for outstanding answers after the measured phase
    /// (and, for watch subscribers, for late events)
    #[arg(long = "drain-timeout", value_name = "SECS", default_value_t = 10.0)]
    pub drain_timeout_secs: f64,
    /// Hostile connections kept open beside the load from the warm-up to
    /// the end of the drain, e.g. slowloris=32,unread=8,biglist=4
    /// (slowloris: a never-finished 16 MiB frame trickled a byte at a time;
    /// unread: pipelined GETs of a 1 MiB context, never read; biglist:
    /// pipelined LIST_INSTANCES limit 10000, read slowly)
    #[arg(long, value_name = "KIND=N,...", value_parser = HostileSpec::parse)]
    pub hostile: Option<HostileSpec>,
    /// Plain progress lines even on a terminal (or none with --quiet)
    #[arg(long)]
    pub no_progress_bar: bool,
    /// No progress output at all
    #[arg(long)]
    pub quiet: bool,
    /// Free-form KEY=VALUE recorded in the JSON (repeatable; run-matrix.sh
    /// tags server, fsync policy and repetition)
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Aggregate the runs of a matrix directory (DIR/runs/*.json) into
    /// DIR/results.json and DIR/summary.md (medians, ratios, targets)
    Summarize {
        /// The directory run-matrix.sh wrote
        dir: PathBuf,
    },
}

impl Args {
    /// `--tag` values as a map.
    pub fn tag_map(&self) -> std::collections::BTreeMap<String, String> {
        self.tags
            .iter()
            .filter_map(|t| t.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Where `--transport http` connects.
    pub fn http_addr(&self) -> String {
        self.http_addr
            .clone()
            .unwrap_or_else(|| default_http_addr(&self.addr))
    }

    /// The operation mix this run uses.
    pub fn mix(&self) -> Result<Mix, String> {
        match (self.workload, &self.mix) {
            (Workload::Mix, text) => Mix::parse(text.as_deref().unwrap_or(MIX_DEFAULT)),
            (_, Some(_)) => Err("--mix needs --workload mix".into()),
            (Workload::Create, None) => Ok(Mix::only(OpKind::Create)),
            (Workload::Apply, None) => Ok(Mix::only(OpKind::Apply)),
            (Workload::Get, None) => Ok(Mix::only(OpKind::Get)),
            (Workload::Batch, None) => Ok(Mix::only(OpKind::Batch)),
            (Workload::Watch, None) => Ok(Mix::only(OpKind::Apply)),
        }
    }

    /// Checks every flag against its limit.
    pub fn validate(&self) -> Result<(), String> {
        let range = |name: &str, v: usize, min: usize, max: usize| {
            if (min..=max).contains(&v) {
                Ok(())
            } else {
                Err(format!("--{name} must be in {min}..={max}, got {v}"))
            }
        };
        range("connections", self.connections, 1, CONNECTIONS_MAX)?;
        range("pipeline", self.pipeline, 1, PIPELINE_MAX)?;
        range("payload-bytes", self.payload_bytes, 0, PAYLOAD_BYTES_MAX)?;
        range("instances", self.instances, 0, INSTANCES_MAX)?;
        range("batch-ops", self.batch_ops, 1, BATCH_OPS_MAX)?;
        range("subscribers", self.subscribers, 1, SUBSCRIBERS_MAX)?;
        let secs = |name: &str, v: f64, min: f64| {
            if v.is_finite() && v >= min && v <= PHASE_SECS_MAX {
                Ok(())
            } else {
                Err(format!(
                    "--{name} must be in {min}..={PHASE_SECS_MAX} seconds, got {v}"
                ))
            }
        };
        secs("duration", self.duration_secs, 0.1)?;
        secs("warmup", self.warmup_secs, 0.0)?;
        secs("drain-timeout", self.drain_timeout_secs, 0.1)?;
        for tag in &self.tags {
            if !tag.contains('=') {
                return Err(format!("--tag {tag:?}: expected KEY=VALUE"));
            }
        }
        if self.transport == Transport::Http {
            if !matches!(
                self.workload,
                Workload::Create | Workload::Apply | Workload::Get | Workload::Mix
            ) {
                return Err(format!(
                    "--transport http drives create, apply, get and mix; not {}",
                    self.workload.name()
                ));
            }
            if self.pipeline > HTTP_PIPELINE_MAX {
                return Err(format!(
                    "--transport http keeps one request outstanding per connection \
                     (hyper's HTTP/1.1 client does not pipeline, and the server answers \
                     a connection's requests one at a time): use --pipeline \
                     {HTTP_PIPELINE_MAX} and more --connections, got --pipeline {}",
                    self.pipeline
                ));
            }
        } else if self.http_addr.is_some() {
            return Err("--http-addr needs --transport http".into());
        }
        let mix = self.mix()?;
        if (mix.uses(OpKind::Apply) || mix.uses(OpKind::Get)) && self.instances == 0 {
            return Err("apply and get need --instances of at least 1".into());
        }
        Ok(())
    }
}
