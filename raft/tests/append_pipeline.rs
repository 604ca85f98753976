//! Pipelined AppendEntries (`net/append_pipeline.rs`): a peer link given a
//! stream of requests by openraft keeps up to `APPEND_PIPELINE_DEPTH_MAX`
//! of them on their way, in order, hands the answers back in the order of
//! the requests (whatever order they arrive in), and ends the stream at the
//! first answer that is not a full success. The follower is a fake on a
//! raw std socket that holds its answers as the test says.

// Only its type config is used here.
#[allow(dead_code)]
#[path = "support/mem_store.rs"]
mod mem_store;
#[path = "support/memlock.rs"]
mod memlock;

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use corestate_raft::net::append_pipeline::APPEND_PIPELINE_DEPTH_MAX;
use corestate_raft::net::append_wire::decode_append;
use corestate_raft::net::frame::{encode_frame, FrameKind, FRAME_HEADER_BYTES};
use corestate_raft::net::wire::to_json;
use corestate_raft::net::{ClusterCredentials, PeerPool};
use corestate_raft::GlommioRuntime;
use futures_util::StreamExt;
use mem_store::{term_one_log_id as log_id, KvSnapshot, TestConfig};
use openraft::network::RPCOption;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, StreamAppendError};
use openraft::{
    AsyncRuntime, BasicNode, Entry, EntryPayload, RaftNetworkFactory, RaftNetworkV2, Vote,
};

const TOKEN: &str = "pipeline-token";
const CLUSTER: &str = "pipeline-tests";
const GROUP: u64 = 3;

/// Longer than anything here takes; waiting this long is a failure.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the fake follower waits for a request that must not come.
const QUIET_MS: u64 = 300;

/// The requests the test sends: a full pipeline, then two more.
const REQUESTS: u64 = APPEND_PIPELINE_DEPTH_MAX as u64 + 2;

/// Request `index`: one blank entry at `index`, after `index - 1`.
fn request(index: u64) -> AppendEntriesRequest<TestConfig> {
    AppendEntriesRequest {
        vote: Vote::new_committed(1, 1),
        prev_log_id: (index > 1).then(|| log_id(index - 1)),
        leader_commit: None,
        entries: vec![Entry {
            log_id: log_id(index),
            payload: EntryPayload::Blank,
        }],
    }
}

/// One frame: (kind, request id, body); `None` on a timeout or a close.
fn read_frame(stream: &mut TcpStream) -> Option<(u8, u64, Vec<u8>)> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    if let Err(err) = stream.read_exact(&mut header) {
        assert!(
            matches!(
                err.kind(),
                ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::UnexpectedEof
            ),
            "reading a frame: {err}"
        );
        return None;
    }
    let request_id = u64::from_le_bytes(header[8..16].try_into().expect("8"));
    let len = u32::from_le_bytes(header[24..28].try_into().expect("4")) as usize;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).expect("a frame's body");
    Some((header[5], request_id, body))
}

/// The next AppendEntries: (request id, index of its one entry).
fn next_append(stream: &mut TcpStream) -> Option<(u64, u64)> {
    let (kind, request_id, body) = read_frame(stream)?;
    assert_eq!(
        kind,
        FrameKind::AppendEntries as u8,
        "only appends are sent"
    );
    let request = decode_append::<TestConfig>(&body).expect("an append body");
    let index = request.entries.last().expect("one entry").log_id.index;
    Some((request_id, index))
}

fn answer(stream: &mut TcpStream, request_id: u64, response: AppendEntriesResponse<TestConfig>) {
    let frame = encode_frame(FrameKind::Answer, request_id, GROUP, &to_json(&response));
    stream.write_all(&frame).expect("answer");
}

/// The first connection to `listener`; panics when none comes in `limit`.
fn accept_within(listener: &TcpListener, limit: Duration) -> TcpStream {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = std::time::Instant::now() + limit;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).expect("blocking");
                return stream;
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                assert!(std::time::Instant::now() < deadline, "no connection came");
                thread::sleep(Duration::from_millis(5));
            }
            Err(err) => panic!("accept: {err}"),
        }
    }
}

/// What the fake follower saw.
struct Seen {
    /// The entries' indexes, in the order the requests arrived.
    arrived: Vec<u64>,
    /// How many requests came before the first answer left.
    before_first_answer: usize,
}

/// Takes one connection: holds answers until a full pipeline of requests
/// arrived (and no more came), answers those last first, then answers the
/// next request with a conflict and the one after it with a success.
fn fake_follower(listener: TcpListener) -> Seen {
    let mut stream = accept_within(&listener, ANSWER_TIMEOUT);
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .expect("timeout");
    let (kind, _, _) = read_frame(&mut stream).expect("hello");
    assert_eq!(kind, FrameKind::Hello as u8, "the dialer opens with Hello");
    let welcome = encode_frame(FrameKind::Welcome, 0, 0, br#"{"node_id":2}"#);
    stream.write_all(&welcome).expect("welcome");

    let mut held = Vec::new();
    while held.len() < APPEND_PIPELINE_DEPTH_MAX {
        held.push(next_append(&mut stream).expect("a full pipeline arrives unanswered"));
    }
    stream
        .set_read_timeout(Some(Duration::from_millis(QUIET_MS)))
        .expect("timeout");
    let extra = next_append(&mut stream);
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .expect("timeout");
    let mut arrived: Vec<u64> = held.iter().map(|&(_, index)| index).collect();
    let before_first_answer = held.len() + usize::from(extra.is_some());
    for &(request_id, _) in held.iter().rev() {
        answer(&mut stream, request_id, AppendEntriesResponse::Success);
    }
    let mut pending = extra;
    for response in [
        AppendEntriesResponse::Conflict,
        AppendEntriesResponse::Success,
    ] {
        let Some((request_id, index)) = pending.take().or_else(|| next_append(&mut stream)) else {
            break;
        };
        arrived.push(index);
        answer(&mut stream, request_id, response);
    }
    Seen {
        arrived,
        before_first_answer,
    }
}

#[test]
fn appends_ride_in_a_pipeline_answered_in_order_until_a_conflict() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let follower = thread::spawn(move || fake_follower(listener));

    let results = thread::spawn(move || {
        memlock::raise_memlock_limit();
        let mut rt = GlommioRuntime::new(1);
        rt.block_on(async move {
            let pool = PeerPool::new(ClusterCredentials::new(CLUSTER, TOKEN, 1));
            let mut factory = pool.network::<TestConfig, KvSnapshot>(GROUP);
            let mut link = factory.new_client(2, &BasicNode::new(addr)).await;
            let (requests, input) = futures_channel::mpsc::unbounded();
            for index in 1..=REQUESTS {
                requests.unbounded_send(request(index)).expect("queued");
            }
            let option = RPCOption::new(ANSWER_TIMEOUT);
            let mut answers = link.stream_append(input, option).await.expect("a stream");
            let mut results = Vec::new();
            while let Some(item) = answers.next().await {
                results.push(match item {
                    Ok(Ok(matched)) => format!("ok {}", matched.expect("a log id").index),
                    Ok(Err(StreamAppendError::Conflict(at))) => format!("conflict {}", at.index),
                    Ok(Err(other)) => format!("refused: {other}"),
                    Err(err) => format!("error: {err}"),
                });
            }
            // Still open: the stream ended on the conflict, not on its input.
            drop(requests);
            results
        })
    })
    .join()
    .expect("leader thread");
    let seen = follower.join().expect("follower thread");

    assert_eq!(
        seen.before_first_answer, APPEND_PIPELINE_DEPTH_MAX,
        "a full pipeline and no more is on its way before any answer"
    );
    let expected_order: Vec<u64> = (1..=seen.arrived.len() as u64).collect();
    assert_eq!(seen.arrived, expected_order, "requests arrive in order");
    let mut expected: Vec<String> = (1..=APPEND_PIPELINE_DEPTH_MAX as u64)
        .map(|index| format!("ok {index}"))
        .collect();
    // Request DEPTH + 1 follows entry DEPTH: its conflict names that entry.
    expected.push(format!("conflict {APPEND_PIPELINE_DEPTH_MAX}"));
    assert_eq!(
        results, expected,
        "answers in the requests' order (they came last first), and nothing after the conflict"
    );
}
