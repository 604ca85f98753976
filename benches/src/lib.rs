//! corestate-bench: a load generator for RCP servers (corestate, rstmdb
//! 0.3). Closed-loop pipelined connections on one thread drive a workload
//! (create / apply / get / mix / batch / watch); every response is
//! verified; throughput, latency percentiles, server and harness CPU per
//! operation and WAL syncs per second are reported as text and JSON.
//!
//! Data flow: `cli` flags → `run` (setup, phases, samples) → one
//! `conn::Conn::run_load` task per connection, rendering requests with
//! `workload` over `frame` and verifying answers with `response`, or with
//! `--transport http` one `http_conn::HttpConn::run_load` task per
//! connection over the HTTP/JSON API, same generator and checker (plus one
//! `watch::run_subscriber` task per WATCH_ALL subscriber) → `stats`
//! (/proc, getrusage) and `progress` alongside → `report`. Off the event
//! loop, on threads of their own: `hostile` clients (`--hostile`) and the
//! server's RSS samples (`memory`).

pub mod charts;
pub mod cli;
pub mod conn;
pub mod frame;
pub mod hostile;
pub mod http_conn;
pub mod memory;
pub mod progress;
pub mod report;
pub mod response;
pub mod run;
pub mod stats;
pub mod summarize;
pub mod watch;
pub mod workload;

use std::process::ExitCode;

use clap::Parser;

/// Exit status when a request failed or the run went wrong.
pub const EXIT_FAILED_REQUESTS: u8 = 1;
/// Exit status when the run could not take place (flags, setup, I/O).
pub const EXIT_SETUP_FAILED: u8 = 2;

/// Parses the command line, runs, prints, writes JSON; the process exit code.
pub fn main_entry() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let args = cli::Args::parse();
    if let Some(cli::Command::Summarize { dir }) = &args.command {
        return match summarize::summarize(dir) {
            Ok(paths) => {
                for p in paths {
                    println!("wrote {}", p.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("corestate-bench summarize: {e}");
                ExitCode::from(EXIT_SETUP_FAILED)
            }
        };
    }
    if let Err(e) = args.validate() {
        eprintln!("corestate-bench: {e}");
        return ExitCode::from(EXIT_SETUP_FAILED);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("corestate-bench: tokio runtime: {e}");
            return ExitCode::from(EXIT_SETUP_FAILED);
        }
    };
    let local = tokio::task::LocalSet::new();
    let report = match local.block_on(&runtime, run::run(&args, &argv)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("corestate-bench: {e}");
            return ExitCode::from(EXIT_SETUP_FAILED);
        }
    };
    print!("{}", report.summary());
    if let Some(path) = &args.json {
        let written = serde_json::to_string_pretty(&report)
            .map_err(|e| e.to_string())
            .and_then(|text| std::fs::write(path, text + "\n").map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!("corestate-bench: writing {}: {e}", path.display());
            return ExitCode::from(EXIT_SETUP_FAILED);
        }
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("corestate-bench: RUN FAILED: see the errors above");
        ExitCode::from(EXIT_FAILED_REQUESTS)
    }
}
