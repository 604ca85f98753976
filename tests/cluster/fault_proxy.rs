//! A fault injector for one directed peer link: a TCP proxy on a fresh
//! 127.0.0.1 port that the dialing node is configured to call instead of
//! the target's peer port. What it does with traffic is switched at run
//! time, with no root needed:
//!
//! * `Pass` — bytes flow both ways;
//! * `Blackhole` — bytes are read and thrown away both ways and new
//!   connections are accepted but go nowhere: the dialer sees silence
//!   (timeouts), as behind a partition that drops packets;
//! * `Refuse` — every connection through the proxy is closed, new ones
//!   as soon as they are accepted: the dialer sees resets;
//! * `Delay(ms)` — each chunk waits `ms` before it is passed on.
//!
//! A node's answers to requests it received travel back over the dialer's
//! connection, so blackholing the link i→k cuts what i asks of k and the
//! answers, while k's own link to i still works: a one-way fault.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How often blocked threads look at the mode and the stop flag.
const PROXY_POLL: Duration = Duration::from_millis(10);
/// Bytes moved per read.
const PROXY_CHUNK_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    Pass,
    Blackhole,
    Refuse,
    Delay(u64),
}

impl LinkMode {
    fn encode(self) -> u64 {
        match self {
            LinkMode::Pass => 0,
            LinkMode::Blackhole => 1,
            LinkMode::Refuse => 2,
            // Delays are stored as 3 + milliseconds.
            LinkMode::Delay(ms) => 3 + ms,
        }
    }

    fn decode(v: u64) -> LinkMode {
        match v {
            0 => LinkMode::Pass,
            1 => LinkMode::Blackhole,
            2 => LinkMode::Refuse,
            ms => LinkMode::Delay(ms - 3),
        }
    }
}

struct Shared {
    mode: AtomicU64,
    stop: AtomicBool,
    /// Every open socket (both ends of each connection), to close them
    /// when the link starts refusing.
    sockets: Mutex<Vec<TcpStream>>,
}

impl Shared {
    fn mode(&self) -> LinkMode {
        LinkMode::decode(self.mode.load(Ordering::SeqCst))
    }

    fn close_all(&self) {
        for s in self.sockets.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy to `target`, passing traffic.
    pub fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a proxy port");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared {
            mode: AtomicU64::new(LinkMode::Pass.encode()),
            stop: AtomicBool::new(false),
            sockets: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = shared.clone();
            thread::spawn(move || accept_loop(listener, target, &shared))
        };
        FaultProxy {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn set(&self, mode: LinkMode) {
        self.shared.mode.store(mode.encode(), Ordering::SeqCst);
        if mode == LinkMode::Refuse {
            self.shared.close_all();
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.close_all();
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((inbound, _)) => {
                if shared.mode() == LinkMode::Refuse {
                    let _ = inbound.shutdown(Shutdown::Both);
                    continue;
                }
                let shared = shared.clone();
                thread::spawn(move || connect_and_pump(inbound, target, &shared));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(PROXY_POLL),
            Err(_) => thread::sleep(PROXY_POLL),
        }
    }
}

/// Connect to the target (while the link passes traffic), then move bytes
/// both ways until either side closes.
fn connect_and_pump(inbound: TcpStream, target: SocketAddr, shared: &Arc<Shared>) {
    let _ = inbound.set_nonblocking(false);
    // A blackholed link holds the connection without reaching the target.
    while shared.mode() == LinkMode::Blackhole {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        thread::sleep(PROXY_POLL);
    }
    if shared.mode() == LinkMode::Refuse {
        let _ = inbound.shutdown(Shutdown::Both);
        return;
    }
    let Ok(outbound) = TcpStream::connect(target) else {
        let _ = inbound.shutdown(Shutdown::Both);
        return;
    };
    let _ = outbound.set_nodelay(true);
    let _ = inbound.set_nodelay(true);
    let (Ok(in2), Ok(out2)) = (inbound.try_clone(), outbound.try_clone()) else {
        return;
    };
    {
        let mut sockets = shared.sockets.lock().unwrap();
        if let (Ok(a), Ok(b)) = (inbound.try_clone(), outbound.try_clone()) {
            sockets.push(a);
            sockets.push(b);
        }
    }
    let back = {
        let shared = shared.clone();
        thread::spawn(move || pump(out2, in2, &shared))
    };
    pump(inbound, outbound, shared);
    let _ = back.join();
}

fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let _ = from.set_read_timeout(Some(PROXY_POLL));
    let mut buf = vec![0u8; PROXY_CHUNK_BYTES];
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => match shared.mode() {
                LinkMode::Pass => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                LinkMode::Delay(ms) => {
                    thread::sleep(Duration::from_millis(ms));
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                LinkMode::Blackhole => {} // dropped on the floor
                LinkMode::Refuse => break,
            },
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if shared.mode() == LinkMode::Refuse {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
