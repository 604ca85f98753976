//! The peer listener against bad input, spoken to by a raw std socket: a
//! wrong token is refused with an error frame, an oversize length, bad
//! bytes or a bad checksum close the connection, and a request for a group
//! the node does not have is answered, not left hanging.

#[path = "support/memlock.rs"]
mod memlock;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use corestate_raft::net::frame::{encode_frame, FrameKind, FRAME_HEADER_BYTES};
use corestate_raft::net::wire::{ErrorBody, ErrorCode, Hello};
use corestate_raft::net::{ClusterCredentials, GroupDirectory, PeerServer};
use corestate_raft::GlommioRuntime;
use openraft::AsyncRuntime;

const TOKEN: &str = "right-token";
const CLUSTER: &str = "wire-tests";
const LISTENER_NODE: u64 = 1;

/// Longer than any answer takes; a test that waits this long has failed.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// A peer listener on its own executor thread, with no groups.
struct Listener {
    addr: SocketAddr,
    stop: Option<flume::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Listener {
    fn start() -> Listener {
        let (bound_tx, bound) = flume::bounded(1);
        let (stop, stopped) = flume::bounded::<()>(1);
        let thread = thread::spawn(move || {
            memlock::raise_memlock_limit();
            let mut rt = GlommioRuntime::new(1);
            rt.block_on(async move {
                let me = ClusterCredentials::new(CLUSTER, TOKEN, LISTENER_NODE);
                let server = PeerServer::start("127.0.0.1:0", me, Arc::new(GroupDirectory::new()))
                    .expect("bind");
                bound_tx.send(server.local_addr()).expect("report");
                let _ = stopped.recv_async().await;
                drop(server);
            });
        });
        let addr = bound.recv_timeout(ANSWER_TIMEOUT).expect("listener bound");
        Listener {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn dial(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).expect("connect");
        stream
            .set_read_timeout(Some(ANSWER_TIMEOUT))
            .expect("timeout");
        stream
    }

    /// A connection that passed the handshake.
    fn dial_welcomed(&self) -> TcpStream {
        let mut stream = self.dial();
        stream.write_all(&hello(TOKEN)).expect("hello");
        let (kind, _, _) = read_frame(&mut stream).expect("an answer to hello");
        assert_eq!(
            kind,
            FrameKind::Welcome as u8,
            "the right token is welcomed"
        );
        stream
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            thread.join().expect("listener thread");
        }
    }
}

fn hello(token: &str) -> Vec<u8> {
    let hello = Hello {
        cluster_name: CLUSTER.to_string(),
        cluster_token: token.to_string(),
        node_id: 2,
        protocol_version: corestate_raft::net::frame::PROTOCOL_VERSION,
    };
    encode_frame(
        FrameKind::Hello,
        0,
        0,
        &serde_json::to_vec(&hello).expect("json"),
    )
}

/// Reads one frame: (kind, request id, body), or `None` if the listener
/// closed the connection. Panics if it neither answers nor closes.
fn read_frame(stream: &mut TcpStream) -> Option<(u8, u64, Vec<u8>)> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    if let Err(err) = stream.read_exact(&mut header) {
        assert!(
            !matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "the listener neither answered nor closed within {ANSWER_TIMEOUT:?}"
        );
        return None;
    }
    let request_id = u64::from_le_bytes(header[8..16].try_into().expect("8"));
    let len = u32::from_le_bytes(header[24..28].try_into().expect("4")) as usize;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).ok()?;
    Some((header[5], request_id, body))
}

fn assert_closed(stream: &mut TcpStream, what: &str) {
    assert_eq!(read_frame(stream), None, "{what} closes the connection");
}

#[test]
fn a_wrong_token_is_refused_with_an_error_frame_then_closed() {
    let listener = Listener::start();
    let mut stream = listener.dial();
    stream.write_all(&hello("wrong-token")).expect("hello");
    let (kind, _, body) = read_frame(&mut stream).expect("a refusal");
    assert_eq!(kind, FrameKind::Error as u8);
    let error: ErrorBody = serde_json::from_slice(&body).expect("error body");
    assert_eq!(error.code, ErrorCode::HandshakeRefused);
    assert!(error.message.contains("token"), "{error:?}");
    assert_closed(&mut stream, "a refused handshake");
}

#[test]
fn an_oversize_frame_length_closes_the_connection_without_reading_a_body() {
    let listener = Listener::start();
    let mut stream = listener.dial_welcomed();
    let mut frame = encode_frame(FrameKind::Vote, 1, 7, b"");
    frame[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
    // Only the header is sent: a listener that waited for 4 GiB of body
    // would neither answer nor close, and the read below would time out.
    stream.write_all(&frame).expect("header");
    assert_closed(&mut stream, "an oversize length");
}

#[test]
fn garbage_closes_the_connection_before_and_after_the_handshake() {
    let listener = Listener::start();
    let garbage: Vec<u8> = (0..200u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect();

    let mut stream = listener.dial();
    stream.write_all(&garbage).expect("garbage");
    assert_closed(&mut stream, "garbage instead of a hello");

    let mut stream = listener.dial_welcomed();
    stream.write_all(&garbage).expect("garbage");
    assert_closed(&mut stream, "garbage instead of a request");

    let mut stream = listener.dial_welcomed();
    let mut frame = encode_frame(FrameKind::Vote, 1, 7, b"{}");
    let last = frame.len() - 1;
    frame[last] ^= 0xff;
    stream.write_all(&frame).expect("damaged frame");
    assert_closed(&mut stream, "a body that fails its checksum");
}

#[test]
fn a_request_for_an_unknown_group_is_answered_with_an_error() {
    let listener = Listener::start();
    let mut stream = listener.dial_welcomed();
    for request_id in [42, 43] {
        stream
            .write_all(&encode_frame(FrameKind::Vote, request_id, 99, b"{}"))
            .expect("request");
        let (kind, answered_id, body) = read_frame(&mut stream).expect("an answer, not a hang");
        assert_eq!(kind, FrameKind::Error as u8);
        assert_eq!(answered_id, request_id, "the answer names its request");
        let error: ErrorBody = serde_json::from_slice(&body).expect("error body");
        assert_eq!(error.code, ErrorCode::UnknownGroup);
    }
}
