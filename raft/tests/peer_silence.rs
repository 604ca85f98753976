//! When the dialing side gives up on a peer connection: a peer that answers
//! later than a request's timeout (a slow disk on its side) keeps its
//! connection — the heartbeats and forwarded requests on it go on — while
//! a peer that owes answers and sends nothing for `PEER_SILENCE_BREAK_MS`
//! is dialled afresh — unless it owes a snapshot chunk, which it answers
//! only once it has installed the snapshot. The peer here is a raw std
//! socket that passes the handshake and then answers each request after a
//! delay, or never.

#[path = "support/memlock.rs"]
mod memlock;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use corestate_raft::net::client::PEER_SILENCE_BREAK_MS;
use corestate_raft::net::frame::{encode_frame, FrameKind, FRAME_HEADER_BYTES};
use corestate_raft::net::{CallError, ClusterCredentials, PeerClient};
use corestate_raft::GlommioRuntime;
use openraft::AsyncRuntime;

const TOKEN: &str = "silence-token";
const CLUSTER: &str = "silence-tests";

/// What a request's timeout is here: openraft's AppendEntries timeout (the
/// heartbeat interval) on a default cluster.
const SHORT_TIMEOUT: Duration = Duration::from_millis(50);

/// When a fake peer answers a request of a kind: that long after it came
/// (`None`: never).
type AnswerAfter = fn(u8) -> Option<Duration>;

/// A fake peer: passes every handshake, then answers each request as its
/// `AnswerAfter` says. Counts the connections it took.
struct FakePeer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl FakePeer {
    fn start(answer_after: AnswerAfter) -> FakePeer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                counted.fetch_add(1, Ordering::SeqCst);
                thread::spawn(move || serve(stream, answer_after));
            }
        });
        FakePeer { addr, accepted }
    }

    fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// One frame: (kind, request id), or `None` once the dialer closed.
fn read_frame(stream: &mut TcpStream) -> Option<(u8, u64)> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    stream.read_exact(&mut header).ok()?;
    let request_id = u64::from_le_bytes(header[8..16].try_into().expect("8"));
    let len = u32::from_le_bytes(header[24..28].try_into().expect("4")) as usize;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).ok()?;
    Some((header[5], request_id))
}

fn serve(mut stream: TcpStream, answer_after: AnswerAfter) {
    let Some((kind, _)) = read_frame(&mut stream) else {
        return;
    };
    assert_eq!(kind, FrameKind::Hello as u8, "the dialer opens with Hello");
    let welcome = encode_frame(FrameKind::Welcome, 0, 0, br#"{"node_id":2}"#);
    if stream.write_all(&welcome).is_err() {
        return;
    }
    let mut writer = stream.try_clone().expect("clone");
    let (answers, queued) = flume::unbounded::<(Instant, u64)>();
    thread::spawn(move || {
        while let Ok((due, request_id)) = queued.recv() {
            thread::sleep(due.saturating_duration_since(Instant::now()));
            let answer = encode_frame(FrameKind::Answer, request_id, 0, b"{}");
            if writer.write_all(&answer).is_err() {
                return;
            }
        }
    });
    while let Some((kind, request_id)) = read_frame(&mut stream) {
        if let Some(delay) = answer_after(kind) {
            let _ = answers.send((Instant::now() + delay, request_id));
        }
    }
}

/// Runs `f` with a client of the fake peer on a glommio executor.
fn with_client<T: Send + 'static>(
    peer: &FakePeer,
    f: impl FnOnce(Rc<PeerClient>) -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>>
        + Send
        + 'static,
) -> T {
    let addr = peer.addr.to_string();
    thread::spawn(move || {
        memlock::raise_memlock_limit();
        let mut rt = GlommioRuntime::new(1);
        rt.block_on(async move {
            let me = Rc::new(ClusterCredentials::new(CLUSTER, TOKEN, 1));
            let client = Rc::new(PeerClient::new(me, 2, addr));
            f(client).await
        })
    })
    .join()
    .expect("client thread")
}

#[test]
fn a_peer_that_answers_late_keeps_its_connection() {
    // Each answer comes 120 ms after its request: every 50 ms call times
    // out, but answers keep arriving, so the connection is never presumed
    // dead; a call given time enough is answered on the same connection.
    let peer = FakePeer::start(|_| Some(Duration::from_millis(120)));
    let (timeouts, last) = with_client(&peer, |client| {
        Box::pin(async move {
            let mut timeouts = 0;
            let started = Instant::now();
            while started.elapsed() < Duration::from_millis(3 * PEER_SILENCE_BREAK_MS) {
                match client
                    .call(FrameKind::AppendEntries, 0, b"{}", SHORT_TIMEOUT)
                    .await
                {
                    Err(CallError::Timeout) => timeouts += 1,
                    other => panic!("a 50 ms call to a 120 ms peer: {other:?}"),
                }
            }
            let last = client
                .call(FrameKind::AppendEntries, 0, b"{}", Duration::from_secs(2))
                .await;
            (timeouts, last)
        })
    });
    assert!(timeouts >= 10, "{timeouts} timeouts");
    assert_eq!(last, Ok(b"{}".to_vec()), "answered in time");
    assert_eq!(peer.connections(), 1, "the connection was never broken");
}

#[test]
fn a_peer_that_owes_answers_and_stays_silent_is_dialled_again() {
    let peer = FakePeer::start(|_| None);
    let calls = with_client(&peer, |client| {
        Box::pin(async move {
            let started = Instant::now();
            let mut calls = 0;
            while started.elapsed() < Duration::from_millis(2 * PEER_SILENCE_BREAK_MS) {
                let r = client
                    .call(FrameKind::AppendEntries, 0, b"{}", SHORT_TIMEOUT)
                    .await;
                assert!(
                    matches!(r, Err(CallError::Timeout | CallError::NotSent(_))),
                    "{r:?}"
                );
                calls += 1;
            }
            calls
        })
    });
    assert!(calls >= 10, "{calls} calls");
    let connections = peer.connections();
    assert!(
        (2..=4).contains(&connections),
        "silent for {} ms twice over: dialled again, not at every timeout ({connections} connections)",
        PEER_SILENCE_BREAK_MS
    );
}

/// How long the fake peer takes to "install" a snapshot before it answers
/// the chunk: silence well past `PEER_SILENCE_BREAK_MS`.
const INSTALL_TIME: Duration = Duration::from_millis(3 * PEER_SILENCE_BREAK_MS);

#[test]
fn a_peer_installing_a_snapshot_keeps_its_connection_while_silent() {
    // The peer answers the snapshot chunk after INSTALL_TIME and nothing
    // else meanwhile (a member installing answers no heartbeat). The
    // heartbeats time out throughout; the link stays, and the chunk's
    // answer arrives. The silence rule once broke the link here, the
    // transfer failed, and the leader sent the whole snapshot again.
    let peer =
        FakePeer::start(|kind| (kind == FrameKind::SnapshotChunk as u8).then_some(INSTALL_TIME));
    let (timeouts, chunk) = with_client(&peer, |client| {
        Box::pin(async move {
            let installing = client.clone();
            let chunk = glommio::spawn_local(async move {
                installing
                    .call(FrameKind::SnapshotChunk, 0, b"{}", 2 * INSTALL_TIME)
                    .await
            });
            let mut timeouts = 0;
            let started = Instant::now();
            while started.elapsed() < INSTALL_TIME - Duration::from_millis(100) {
                match client
                    .call(FrameKind::AppendEntries, 0, b"{}", SHORT_TIMEOUT)
                    .await
                {
                    Err(CallError::Timeout) => timeouts += 1,
                    other => panic!("a heartbeat to an installing peer: {other:?}"),
                }
            }
            (timeouts, chunk.await)
        })
    });
    assert!(timeouts >= 10, "{timeouts} timeouts");
    assert_eq!(chunk, Ok(b"{}".to_vec()), "the install was answered");
    assert_eq!(peer.connections(), 1, "the connection was never broken");
}
