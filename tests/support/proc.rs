//! `Proc`: the [`Server`] as the operations suites (shutdown, limits,
//! auth, damaged logs) drive it — environment variables, SIGTERM/SIGINT,
//! waiting for the exit status, memory from /proc — with its address and
//! data directory as plain fields.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use super::proc_stats::rss_kib;
use super::raw_client::RawClient;
use super::server::Server;

/// How long a server may take to exit after SIGTERM in these tests; the
/// server's own bound is `corestate::shutdown::SHUTDOWN_DEADLINE_MS`.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Proc {
    server: Server,
    /// Where the current run listens.
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
}

impl Proc {
    /// Start on a fresh data directory.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let server = Server::start_with_env(args, env);
        Proc {
            addr: server.addr(),
            data_dir: server.data_dir().to_path_buf(),
            server,
        }
    }

    /// A directory next to the data directory for the test's own files.
    pub fn work_dir(&self) -> &Path {
        self.server.work_dir()
    }

    /// Start again on the same data directory (the previous run must have
    /// exited).
    pub fn restart(&mut self) {
        assert!(self.server.pid().is_none(), "previous run still owned");
        self.server.restart();
        self.addr = self.server.addr();
    }

    pub fn pid(&self) -> u32 {
        self.server.pid().expect("running")
    }

    pub fn raw(&self) -> RawClient {
        self.server.raw()
    }

    pub fn signal(&self, signal: libc::c_int) {
        self.server.signal(signal);
    }

    /// Wait for the process to exit by itself; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.server.wait_exit(timeout)
    }

    pub fn is_running(&mut self) -> bool {
        self.server.is_running()
    }

    /// Stderr of the current (or last) run.
    pub fn stderr(&self) -> String {
        self.server.stderr()
    }

    /// Resident memory of the running server, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        rss_kib(self.pid()).expect("VmRSS") * 1024
    }
}
