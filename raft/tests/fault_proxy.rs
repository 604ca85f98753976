//! The fault proxy's own tests: each mode does what the transport tests
//! rely on it to do, against a std echo server.

#[path = "support/fault_proxy.rs"]
mod fault_proxy;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use fault_proxy::{Direction, FaultProxy, Mode};

/// How long a test waits for bytes it expects not to arrive.
const SILENCE_MS: u64 = 200;

/// An echo server on a fresh port that counts the bytes it received.
fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo");
    let addr = listener.local_addr().expect("addr");
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let counter = counter.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                    counter.fetch_add(n, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, received)
}

fn dial(proxy: &FaultProxy) -> TcpStream {
    let stream = TcpStream::connect(proxy.addr()).expect("connect to proxy");
    stream
        .set_read_timeout(Some(Duration::from_millis(SILENCE_MS)))
        .expect("timeout");
    stream
}

/// What a read saw: bytes, a close, or silence.
#[derive(Debug, PartialEq, Eq)]
enum Heard {
    Bytes(Vec<u8>),
    Closed,
    Silence,
}

fn listen(stream: &mut TcpStream) -> Heard {
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => Heard::Closed,
        Ok(n) => Heard::Bytes(buf[..n].to_vec()),
        Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Heard::Silence
        }
        Err(_) => Heard::Closed,
    }
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn pass_forwards_both_ways() {
    let (echo, _) = echo_server();
    let proxy = FaultProxy::start(echo);
    let mut stream = dial(&proxy);
    stream.write_all(b"ping").expect("write");
    assert_eq!(listen(&mut stream), Heard::Bytes(b"ping".to_vec()));
}

#[test]
fn drop_closes_current_connections_and_refuses_new_ones() {
    let (echo, _) = echo_server();
    let proxy = FaultProxy::start(echo);
    let mut before = dial(&proxy);
    before.write_all(b"a").expect("write");
    assert_eq!(listen(&mut before), Heard::Bytes(b"a".to_vec()));

    proxy.set_mode(Mode::Drop);
    assert_eq!(listen(&mut before), Heard::Closed);
    let mut after = dial(&proxy);
    let _ = after.write_all(b"b");
    assert_eq!(listen(&mut after), Heard::Closed);

    proxy.set_mode(Mode::Pass);
    let mut healed = dial(&proxy);
    healed.write_all(b"c").expect("write");
    assert_eq!(listen(&mut healed), Heard::Bytes(b"c".to_vec()));
}

#[test]
fn blackhole_reads_and_forwards_nothing_then_heals_with_a_new_connection() {
    let (echo, received) = echo_server();
    let proxy = FaultProxy::start(echo);
    let mut stream = dial(&proxy);
    proxy.set_mode(Mode::Blackhole);
    stream
        .write_all(b"lost")
        .expect("the proxy accepts the bytes");
    assert_eq!(listen(&mut stream), Heard::Silence, "nothing comes back");
    assert_eq!(
        received.load(Ordering::SeqCst),
        0,
        "nothing reached the server"
    );

    // The connection that lost bytes is closed on heal; new ones work.
    proxy.set_mode(Mode::Pass);
    assert_eq!(listen(&mut stream), Heard::Closed);
    let mut fresh = dial(&proxy);
    fresh.write_all(b"back").expect("write");
    assert_eq!(listen(&mut fresh), Heard::Bytes(b"back".to_vec()));
}

#[test]
fn one_way_forwards_only_its_direction() {
    let (echo, received) = echo_server();
    let proxy = FaultProxy::start(echo);
    proxy.set_mode(Mode::OneWay(Direction::Forward));
    let mut stream = dial(&proxy);
    stream.write_all(b"12345").expect("write");
    wait_for("the server to receive", || {
        received.load(Ordering::SeqCst) == 5
    });
    assert_eq!(
        listen(&mut stream),
        Heard::Silence,
        "the echo is not forwarded back"
    );

    let (echo, received) = echo_server();
    let proxy = FaultProxy::start(echo);
    proxy.set_mode(Mode::OneWay(Direction::Backward));
    let mut stream = dial(&proxy);
    stream.write_all(b"12345").expect("write");
    assert_eq!(listen(&mut stream), Heard::Silence);
    assert_eq!(
        received.load(Ordering::SeqCst),
        0,
        "the request is not forwarded"
    );
}

#[test]
fn delay_holds_bytes_back() {
    let (echo, _) = echo_server();
    let proxy = FaultProxy::start(echo);
    proxy.set_mode(Mode::Delay(Duration::from_millis(100)));
    let mut stream = dial(&proxy);
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let start = Instant::now();
    stream.write_all(b"slow").expect("write");
    assert_eq!(listen(&mut stream), Heard::Bytes(b"slow".to_vec()));
    // One delay each way.
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "round trip took {:?}",
        start.elapsed()
    );
}

#[test]
fn a_dropped_proxy_releases_its_port() {
    let (echo, _) = echo_server();
    let proxy = FaultProxy::start(echo);
    let addr = proxy.addr();
    drop(proxy);
    // Nobody listens there any more.
    assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(SILENCE_MS)).is_err());
}
