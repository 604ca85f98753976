//! `--transport http` against the real `corestate` binary: create, apply,
//! get and mix over the HTTP/JSON API for a second each, every answer
//! verified, no errors; and a wrong answer (the HTTP API of a server that
//! never saw the pre-created instances) is counted, not hidden.
//!
//! The server binary is built by cargo first (a no-op when it is fresh):
//! `cargo test -p corestate-bench` builds only this crate and its library
//! dependencies, not the server's binary.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use corestate_bench::cli::Args;
use corestate_bench::report::Report;

/// How long a server may take to open its listeners.
const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Poll interval while waiting for the listeners.
const SERVER_READY_POLL: Duration = Duration::from_millis(20);

/// Builds the server binary with this test's profile; its path.
fn server_binary() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let release = !cfg!(debug_assertions);
    let mut build = Command::new(env!("CARGO"));
    build
        .current_dir(&workspace)
        // With this crate selected too, the shared dependencies get the
        // same features as in this test's build (hyper's client): nothing
        // is compiled twice.
        .args([
            "build",
            "--quiet",
            "-p",
            "corestate-bench",
            "-p",
            "corestate",
        ])
        .args(["--bin", "corestate"]);
    if release {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo build");
    assert!(status.success(), "building the corestate binary failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    target
        .join(if release { "release" } else { "debug" })
        .join("corestate")
}

fn fresh_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// A server on fresh RCP and HTTP ports with a temp data dir, SIGKILLed by
/// PID on drop.
struct Server {
    child: Child,
    rcp: String,
    http: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(binary: &PathBuf) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let (rcp, http) = loop {
            let (a, b) = (fresh_port(), fresh_port());
            if a != b {
                break (format!("127.0.0.1:{a}"), format!("127.0.0.1:{b}"));
            }
        };
        let mut cmd = Command::new(binary);
        cmd.args(["--bind", &rcp, "--http-listen", &http, "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--shards", "2", "--fsync", "never"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("RSTMDB_") || key.starts_with("CORESTATE_") {
                cmd.env_remove(key);
            }
        }
        let child = cmd.spawn().expect("start corestate");
        let server = Server {
            child,
            rcp,
            http,
            _dir: dir,
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(&server.rcp).is_err()
            || std::net::TcpStream::connect(&server.http).is_err()
        {
            assert!(
                started.elapsed() < SERVER_READY_TIMEOUT,
                "the server did not open its listeners"
            );
            std::thread::sleep(SERVER_READY_POLL);
        }
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bench(rcp: &str, http: &str, workload: &str) -> Report {
    let argv: Vec<String> = [
        "corestate-bench",
        "--addr",
        rcp,
        "--transport",
        "http",
        "--http-addr",
        http,
        "--workload",
        workload,
        "--connections",
        "4",
        "--pipeline",
        "1",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--instances",
        "40",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let args = Args::try_parse_from(&argv).expect("valid flags");
    args.validate().expect("flags within limits");
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
fn every_http_answer_is_verified_and_a_clean_run_has_no_errors() {
    let binary = server_binary();
    let server = Server::start(&binary);
    for workload in ["create", "apply", "get", "mix"] {
        let report = bench(&server.rcp, &server.http, workload);
        assert!(report.ok, "{workload}: {:?}", report.problems);
        assert_eq!(report.results.errors_total, 0, "{workload}");
        assert!(report.results.ops > 0, "{workload}");
        assert_eq!(report.config.transport, "http");
        // Success bodies are wrapped in the RCP envelope the checker's
        // fast path reads: none should need the slow path.
        assert_eq!(report.results.slow_path_responses, 0, "{workload}");
    }

    // Setup over RCP on one server, load over HTTP on another: every get
    // names an instance that server does not have (404 INSTANCE_NOT_FOUND).
    let other = Server::start(&binary);
    let report = bench(&server.rcp, &other.http, "get");
    assert!(!report.ok);
    assert!(report.results.errors_total > 0);
    assert!(report.results.errors.contains_key("INSTANCE_NOT_FOUND"));
    assert_eq!(report.results.ops, 0);
}

#[test]
fn http_refuses_a_pipeline_deeper_than_one() {
    let args = Args::try_parse_from(["corestate-bench", "--transport", "http", "--pipeline", "4"])
        .unwrap();
    let refused = args.validate().unwrap_err();
    assert!(refused.contains("--pipeline 1"), "{refused}");
    let args = Args::try_parse_from(["corestate-bench", "--transport", "http", "--pipeline", "1"])
        .unwrap();
    assert!(args.validate().is_ok());
    let args = Args::try_parse_from(["corestate-bench", "--http-addr", "127.0.0.1:1"]).unwrap();
    assert!(args.validate().is_err());
}
