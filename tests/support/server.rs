//! The server under test: the real `corestate` binary started on a fresh
//! 127.0.0.1 port and a fresh (or given) data directory, SIGKILLed by PID
//! on drop, the tail of its stderr printed when a test panics.
//!
//! Every test owns its servers outright: a fresh port (glommio's listener
//! sets SO_REUSEPORT, so a leftover server on a reused port would silently
//! steal connections), a fresh temporary directory, and a `Drop` that
//! SIGKILLs exactly the process it started. When a test panics, the tail of
//! the server's stderr is printed and its directory is kept for inspection.

use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::fixtures::SHARDS;
use super::raw_client::RawClient;

/// How long a server may take to accept its first connection.
pub const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Poll interval while waiting for the server to accept connections.
pub const SERVER_READY_POLL: Duration = Duration::from_millis(20);
/// Lines of server stderr quoted in failure messages.
pub const STDERR_TAIL_LINES: usize = 60;

/// Path of the binary under test.
pub fn server_binary() -> &'static str {
    env!("CARGO_BIN_EXE_corestate")
}

/// How many times `fresh_port` asks the kernel before giving up on finding
/// a port this process has not handed out yet.
const FRESH_PORT_ATTEMPTS_MAX: usize = 1_000;

/// Starts in a row on fresh ports that another process answered first
/// before a test gives up (see `Server::spawn_and_wait_ready`).
const FOREIGN_LISTENER_RETRIES_MAX: usize = 5;

/// The processes listening on `port` as `ss` names them (`None` when it
/// cannot tell: not installed, or no process named), and its lines for a
/// diagnosis.
fn listeners_on(port: u16) -> (Option<Vec<u32>>, String) {
    let out = match Command::new("ss")
        .args(["-Hltnp", &format!("sport = :{port}")])
        .output()
    {
        Ok(out) => out,
        Err(e) => return (None, format!("ss failed: {e}")),
    };
    let lines = String::from_utf8_lossy(&out.stdout)
        .trim()
        .replace('\n', "; ");
    let pids: Vec<u32> = lines
        .split("pid=")
        .skip(1)
        .filter_map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect();
    ((!pids.is_empty()).then_some(pids), lines)
}

/// A port nobody listens on right now and that this test process has never
/// handed out before: bind to port 0, read it, release it, and remember it.
///
/// The memory matters: a cluster picks every node's peer port first and
/// binds it only when that node starts, so in the meantime the kernel may
/// offer the same free port again — CI once gave node 1's client port to
/// node 3's peer listener, and with SO_REUSEPORT both binds succeeded.
pub fn fresh_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..FRESH_PORT_ATTEMPTS_MAX {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = listener.local_addr().expect("local addr").port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
    panic!("no port left that this test process has not handed out already");
}

/// The last `lines` lines of a log file (or a note that it is missing).
pub fn file_tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            all[from..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// One running (or stopped) server process and everything it owns.
pub struct Server {
    child: Option<Child>,
    addr: SocketAddr,
    data_dir: PathBuf,
    extra_args: Vec<String>,
    /// Environment variables set for the process (after the test run's own
    /// `RSTMDB_*` / `CORESTATE_*` variables were removed).
    env: Vec<(String, String)>,
    /// Holds the stderr logs (and the data directory when we created it).
    work: Option<TempDir>,
    stderr_path: PathBuf,
    starts: usize,
}

/// A server launch that ended with the process exiting.
pub struct Exited {
    pub status: ExitStatus,
    pub stderr: String,
}

impl Server {
    /// Start a server on a fresh data directory.
    pub fn start(extra_args: &[&str]) -> Server {
        Server::start_with_env(extra_args, &[])
    }

    /// Start a server on a fresh data directory with environment variables.
    pub fn start_with_env(extra_args: &[&str], env: &[(&str, &str)]) -> Server {
        let work = TempDir::new().expect("create temp dir");
        let data_dir = work.path().join("data");
        fs::create_dir_all(&data_dir).expect("create data dir");
        Server::launch(work, data_dir, extra_args, env)
    }

    /// Start a server on an existing data directory (owned by the caller).
    pub fn start_in(data_dir: &Path, extra_args: &[&str]) -> Server {
        let work = TempDir::new().expect("create temp dir");
        Server::launch(work, data_dir.to_path_buf(), extra_args, &[])
    }

    fn launch(
        work: TempDir,
        data_dir: PathBuf,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let mut server = Server {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            work: Some(work),
            stderr_path: PathBuf::new(),
            starts: 0,
        };
        server.spawn_and_wait_ready();
        server
    }

    /// Launch on `data_dir` expecting the process to exit by itself (it
    /// must refuse to start). Panics if it listens instead.
    pub fn expect_exit_in(data_dir: &Path, extra_args: &[&str], timeout: Duration) -> Exited {
        let work = TempDir::new().expect("create temp dir");
        let port = fresh_port();
        let stderr_path = work.path().join("stderr-exit.log");
        let mut child = spawn_server(data_dir, port, extra_args, &[], &stderr_path);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Exited {
                    status,
                    stderr: fs::read_to_string(&stderr_path).unwrap_or_default(),
                };
            }
            // Only our child's listener counts: another process that took
            // the same fresh port (SO_REUSEPORT) proves nothing of ours.
            let ours = || match listeners_on(port).0 {
                Some(pids) => pids.contains(&child.id()),
                None => true,
            };
            if TcpStream::connect_timeout(&addr, SERVER_READY_POLL).is_ok() && ours() {
                kill_child(&mut child);
                panic!(
                    "server was expected to refuse to start but it accepted a connection on \
                     {addr}; stderr:\n{}",
                    file_tail(&stderr_path, STDERR_TAIL_LINES)
                );
            }
            if Instant::now() > deadline {
                kill_child(&mut child);
                panic!(
                    "server neither exited nor listened within {timeout:?}; stderr:\n{}",
                    file_tail(&stderr_path, STDERR_TAIL_LINES)
                );
            }
            std::thread::sleep(SERVER_READY_POLL);
        }
    }

    /// Start the process on a fresh port and wait until it serves there.
    ///
    /// Ready means the port takes a connection, no process but the child
    /// listens on it (as `ss` tells), and the child has logged that it
    /// listens there. A connection alone proves nothing: glommio's listener
    /// sets SO_REUSEPORT, so another process that bound the same port
    /// between `fresh_port` and our bind would answer the probe (CI once
    /// saw "ready after 0 ms", then the client's connection reset). A port
    /// another process also holds is given up: the child is killed and
    /// started again on another port, at most `FOREIGN_LISTENER_RETRIES_MAX`
    /// times.
    fn spawn_and_wait_ready(&mut self) {
        assert!(self.child.is_none(), "server already running");
        for _ in 0..FOREIGN_LISTENER_RETRIES_MAX {
            match self.spawn_once() {
                Some(child) => {
                    self.child = Some(child);
                    return;
                }
                None => continue,
            }
        }
        panic!(
            "{FOREIGN_LISTENER_RETRIES_MAX} fresh ports in a row were taken by another \
             process before corestate listened on them"
        );
    }

    /// One start; `None` when another process answered on the port first
    /// (the child is killed).
    fn spawn_once(&mut self) -> Option<Child> {
        self.starts += 1;
        let port = fresh_port();
        self.addr = SocketAddr::from(([127, 0, 0, 1], port));
        self.stderr_path = self.work_dir().join(format!("stderr-{}.log", self.starts));
        let args: Vec<&str> = self.extra_args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut child = spawn_server(&self.data_dir, port, &args, &env, &self.stderr_path);
        // The start-up line reads "listening on 127.0.0.1:PORT | ..." (or
        // "... PORT (TLS) | ..."), in text and JSON logs alike.
        let listening_line = format!("listening on {} ", self.addr);
        let started = Instant::now();
        let deadline = started + SERVER_READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!(
                    "corestate exited during start-up with {status}; stderr:\n{}",
                    file_tail(&self.stderr_path, STDERR_TAIL_LINES)
                );
            }
            if TcpStream::connect_timeout(&self.addr, SERVER_READY_POLL).is_ok() {
                let (pids, lines) = listeners_on(port);
                if pids.is_some_and(|pids| pids.iter().any(|&pid| pid != child.id())) {
                    eprintln!(
                        "port {port} is also held by another process ({lines}); starting \
                         corestate run {} again on another port",
                        self.starts
                    );
                    kill_child(&mut child);
                    return None;
                }
                if self.stderr().contains(&listening_line) {
                    eprintln!(
                        "corestate run {} ready on {} after {} ms",
                        self.starts,
                        self.addr,
                        started.elapsed().as_millis()
                    );
                    return Some(child);
                }
                // Ours, bound but not done logging its start: poll again.
            }
            if Instant::now() > deadline {
                kill_child(&mut child);
                panic!(
                    "corestate did not accept connections on {} within {SERVER_READY_TIMEOUT:?}; \
                     stderr:\n{}",
                    self.addr,
                    file_tail(&self.stderr_path, STDERR_TAIL_LINES)
                );
            }
            std::thread::sleep(SERVER_READY_POLL);
        }
    }

    /// The temporary directory holding the logs (and the data directory
    /// when the server created it), for the test's own files.
    pub fn work_dir(&self) -> &Path {
        self.work.as_ref().expect("work dir").path()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stderr of the current (or last) run.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Lines containing `needle` in the stderr of every run of this
    /// server so far (each start writes its own file).
    pub fn stderr_lines_matching(&self, needle: &str) -> Vec<String> {
        (1..=self.starts)
            .flat_map(|run| {
                let path = self.work_dir().join(format!("stderr-{run}.log"));
                fs::read_to_string(path)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains(needle))
                    .map(|l| format!("run {run}: {l}"))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The last lines of stderr of the current (or last) run.
    pub fn stderr_tail(&self) -> String {
        file_tail(&self.stderr_path, STDERR_TAIL_LINES)
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    /// Send `signal` to the running process.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = self.pid().expect("running") as libc::pid_t;
        // SAFETY: kill(2) on the PID of our own unreaped child, so the PID
        // cannot have been reused by another process.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// Wait for the process to exit by itself and reap it; panics after
    /// `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
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

    /// Kill the process with a real SIGKILL and reap it.
    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
    }

    /// SIGKILL (if running), then start again on the same data directory
    /// with a fresh port.
    pub fn restart(&mut self) {
        self.sigkill();
        self.spawn_and_wait_ready();
    }

    /// A connected raw RCPX client.
    pub fn raw(&self) -> RawClient {
        RawClient::connect(self.addr)
    }

    /// `n` connections the server serves (each answered a PING). Right
    /// after the start the readiness probes' connections may still hold
    /// seats for a moment, and a connection over `--max-connections` is
    /// answered RATE_LIMITED and closed: such a one is tried again.
    pub fn served_connections(&self, n: usize) -> Vec<RawClient> {
        let mut clients = Vec::new();
        let deadline = Instant::now() + SEATS_FREED_TIMEOUT;
        while clients.len() < n {
            let mut c = self.raw();
            let response = c.call("PING", serde_json::Value::Null);
            if response["status"] == "ok" {
                clients.push(c);
            } else {
                assert!(
                    Instant::now() < deadline,
                    "could not open {n} connections: {response}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        clients
    }
}

/// How long the readiness probes' seats may take to be given back.
const SEATS_FREED_TIMEOUT: Duration = Duration::from_secs(10);

impl Drop for Server {
    fn drop(&mut self) {
        self.sigkill();
        if std::thread::panicking() {
            eprintln!(
                "--- corestate stderr (last {STDERR_TAIL_LINES} lines, run {}) ---\n{}\n--- end ---",
                self.starts,
                self.stderr_tail()
            );
            if let Some(work) = self.work.take() {
                // Keep the logs, not the (pre-allocated, large) WAL segments.
                let _ = fs::remove_dir_all(work.path().join("data"));
                let kept = work.keep();
                eprintln!("kept server logs in {}", kept.display());
            }
        }
    }
}

fn spawn_server(
    data_dir: &Path,
    port: u16,
    extra_args: &[&str],
    env: &[(&str, &str)],
    stderr_path: &Path,
) -> Child {
    let log = File::create(stderr_path).expect("create stderr log");
    let log_for_stdout = log.try_clone().expect("clone log handle");
    let mut cmd = Command::new(server_binary());
    cmd.arg("--bind")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--fsync", "every_write"])
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_for_stdout))
        .stderr(Stdio::from(log))
        .env("RUST_LOG", "info");
    if !extra_args.iter().any(|a| a.starts_with("--shards")) {
        cmd.args(["--shards", &SHARDS.to_string()]);
    }
    // Nothing from the environment of the test run may configure the server.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("RSTMDB_") || key.starts_with("CORESTATE_") {
            cmd.env_remove(key);
        }
    }
    for (key, value) in env {
        cmd.env(key, value);
    }
    // The HTTP API listens on 127.0.0.1:7402 unless told otherwise: a test
    // that does not ask for it gets none (a fixed port shared by every
    // test server, with SO_REUSEPORT, would mix them up).
    let http_configured = extra_args.iter().any(|a| a.starts_with("--http-listen"))
        || env.iter().any(|(k, _)| *k == "CORESTATE_HTTP_LISTEN");
    if !http_configured {
        cmd.args(["--http-listen", "off"]);
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", server_binary()))
}

fn kill_child(child: &mut Child) {
    let pid = child.id() as libc::pid_t;
    if child.try_wait().ok().flatten().is_none() {
        // SAFETY: kill(2) on the PID of a child we spawned and have not reaped
        // yet, so the PID cannot have been reused by another process.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    let _ = child.wait();
}
