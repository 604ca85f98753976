//! Test support for the operations suites (shutdown, limits, metrics,
//! auth): a server process this module owns outright, so a test can give it
//! environment variables, send it SIGTERM/SIGINT and read its exit status —
//! things the shared harness (`common`) deliberately hides. Fresh port,
//! fresh (or given) data directory, SIGKILL by PID on drop.

#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::common::{
    file_tail, fresh_port, server_binary, RawClient, SERVER_READY_POLL, SERVER_READY_TIMEOUT,
    STDERR_TAIL_LINES,
};

/// How long a server may take to exit after SIGTERM in these tests; the
/// server's own bound is `corestate::shutdown::SHUTDOWN_DEADLINE_MS`.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Proc {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    work: TempDir,
    stderr_path: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    runs: usize,
    pub status: Option<ExitStatus>,
}

impl Proc {
    /// Start on a fresh data directory.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let work = TempDir::new().expect("temp dir");
        let data_dir = work.path().join("data");
        fs::create_dir_all(&data_dir).expect("data dir");
        let mut p = Proc {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            work,
            stderr_path: PathBuf::new(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            runs: 0,
            status: None,
        };
        p.spawn();
        p
    }

    /// A directory next to the data directory for the test's own files.
    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    /// Start again on the same data directory (the previous run must have
    /// exited).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "previous run still owned");
        self.spawn();
    }

    fn spawn(&mut self) {
        self.runs += 1;
        self.status = None;
        let port = fresh_port();
        self.addr = SocketAddr::from(([127, 0, 0, 1], port));
        self.stderr_path = self.work.path().join(format!("stderr-{}.log", self.runs));
        let log = File::create(&self.stderr_path).expect("stderr log");
        let mut cmd = Command::new(server_binary());
        cmd.arg("--bind")
            .arg(self.addr.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--shards", "2", "--fsync", "every_write"])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("clone log")))
            .stderr(Stdio::from(log))
            .env("RUST_LOG", "info");
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("RSTMDB_") || key.starts_with("CORESTATE_") {
                cmd.env_remove(key);
            }
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn corestate");
        let deadline = Instant::now() + SERVER_READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!(
                    "corestate exited during start-up with {status}:\n{}",
                    file_tail(&self.stderr_path, STDERR_TAIL_LINES)
                );
            }
            if TcpStream::connect_timeout(&self.addr, SERVER_READY_POLL).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                kill(&mut child);
                panic!(
                    "corestate did not start:\n{}",
                    file_tail(&self.stderr_path, STDERR_TAIL_LINES)
                );
            }
            std::thread::sleep(SERVER_READY_POLL);
        }
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn raw(&self) -> RawClient {
        RawClient::connect(self.addr)
    }

    pub fn signal(&self, signal: libc::c_int) {
        let pid = self.pid() as libc::pid_t;
        // SAFETY: kill(2) on the PID of our own unreaped child.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// Wait for the process to exit by itself; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                self.status = Some(status);
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "corestate did not exit within {timeout:?}:\n{}",
                    file_tail(&self.stderr_path, STDERR_TAIL_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    /// Stderr of the current (or last) run.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Resident memory of the running server, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let status =
            fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kib * 1024
    }
}

fn kill(child: &mut Child) {
    if child.try_wait().ok().flatten().is_none() {
        // SAFETY: kill(2) on the PID of our own unreaped child.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGKILL);
        }
    }
    let _ = child.wait();
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
        if std::thread::panicking() {
            eprintln!(
                "--- corestate stderr (run {}) ---\n{}\n--- end ---",
                self.runs,
                file_tail(&self.stderr_path, STDERR_TAIL_LINES)
            );
        }
    }
}

/// One HTTP/1.1 GET; returns (status line, headers, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(String, String, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: corestate-tests\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    Ok((status.to_string(), headers.to_string(), body.to_string()))
}
