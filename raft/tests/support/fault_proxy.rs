//! A fault-injecting TCP proxy for tests: one per directed link (the
//! dialer connects to the proxy, the proxy to the real listener). Plain std
//! threads and sockets on 127.0.0.1, no root, no iptables.
//!
//! Modes, switchable at run time with [`FaultProxy::set_mode`]:
//! * `Pass` — forward both ways;
//! * `Drop` — close every current connection and close new ones at once;
//! * `Blackhole` — accept and read, forward nothing (a partition);
//! * `OneWay(dir)` — forward only one direction;
//! * `Delay(d)` — forward after waiting `d` per read.
//!
//! Leaving `Blackhole` or `OneWay` closes the connections that lost bytes:
//! TCP never delivers a stream with a hole in it, so a link that healed
//! after dropping data is, to both ends, a connection that broke.

#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How often idle threads look at the mode and the stop flag.
const POLL_INTERVAL_MS: u64 = 5;

/// The buffer of one direction of one connection.
const PUMP_BUFFER_BYTES: usize = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Dialer → listener.
    Forward,
    /// Listener → dialer.
    Backward,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Drop,
    Blackhole,
    OneWay(Direction),
    Delay(Duration),
}

struct Shared {
    target: SocketAddr,
    mode: Mutex<Mode>,
    /// Both sockets of every live connection, to close them on demand.
    conns: Mutex<Vec<(TcpStream, TcpStream)>>,
    stop: AtomicBool,
}

impl Shared {
    fn close_all(&self) {
        for (a, b) in self.conns.lock().expect("conns").drain(..) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }
}

/// One directed link's proxy. Dropping it stops it and closes everything.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on a fresh port of 127.0.0.1 and forwards to `target`.
    pub fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        FaultProxy::start_on(listener, target)
    }

    /// Listens with `listener` (a caller that hands out ports itself binds
    /// it, so that no proxy takes a port it promised a server) and forwards
    /// to `target`.
    pub fn start_on(listener: TcpListener, target: SocketAddr) -> FaultProxy {
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("proxy addr");
        let shared = Arc::new(Shared {
            target,
            mode: Mutex::new(Mode::Pass),
            conns: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let accepting = shared.clone();
        let acceptor = thread::spawn(move || accept_loop(listener, accepting));
        FaultProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Where dialers connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn mode(&self) -> Mode {
        *self.shared.mode.lock().expect("mode")
    }

    pub fn set_mode(&self, mode: Mode) {
        let old = std::mem::replace(&mut *self.shared.mode.lock().expect("mode"), mode);
        let lost_bytes = matches!(old, Mode::Blackhole | Mode::OneWay(_)) && old != mode;
        if mode == Mode::Drop || lost_bytes {
            self.shared.close_all();
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.close_all();
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
                continue;
            }
            Err(_) => continue,
        };
        if *shared.mode.lock().expect("mode") == Mode::Drop {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let _ = client.set_nonblocking(false);
        let Ok(server) = TcpStream::connect(shared.target) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let clones = (client.try_clone(), server.try_clone());
        let (Ok(client2), Ok(server2)) = clones else {
            continue;
        };
        shared.conns.lock().expect("conns").push((
            client.try_clone().expect("clone"),
            server.try_clone().expect("clone"),
        ));
        let (a, b) = (shared.clone(), shared.clone());
        thread::spawn(move || pump(client, server2, Direction::Forward, a));
        thread::spawn(move || pump(server, client2, Direction::Backward, b));
    }
    // The listener is dropped here: the port is released.
}

/// Copies `from` → `to` as the mode allows, until either side closes.
fn pump(mut from: TcpStream, mut to: TcpStream, direction: Direction, shared: Arc<Shared>) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(POLL_INTERVAL_MS * 4)));
    let mut buf = vec![0u8; PUMP_BUFFER_BYTES];
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                continue
            }
            Err(_) => break,
        };
        let mode = *shared.mode.lock().expect("mode");
        let forward = match mode {
            Mode::Pass => true,
            Mode::Drop => break,
            Mode::Blackhole => false,
            Mode::OneWay(allowed) => allowed == direction,
            Mode::Delay(delay) => {
                thread::sleep(delay);
                true
            }
        };
        if forward && to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
