//! Limits that hold (invariant 7 of docs/ARCHITECTURE.md): max connections
//! (the next one is told RATE_LIMITED "too many connections" and closed,
//! and the accepted ones keep working), the idle timeout, max in-flight
//! requests per connection (a client pipelining 100k requests without
//! reading cannot grow the server's memory), the 16 MiB frame limit and
//! max batch ops.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{
    error_code, rcpx_frame_with, rcpx_json, request, rstmdb_connect, take_rcpx_frame, Proc, Server,
    FLAG_CRC_PRESENT,
};

#[test]
fn connections_over_the_limit_are_told_and_closed_while_accepted_ones_keep_working() {
    let max = 4;
    let server = Server::start(&["--max-connections", &max.to_string()]);
    let mut accepted = server.served_connections(max);

    // The next connection: its first request is answered RATE_LIMITED, then
    // the server closes it.
    for attempt in 0..3 {
        let mut over = server.raw();
        let error = over.err_code("HELLO", json!({"protocol_version": 1}), "RATE_LIMITED");
        assert_eq!(
            error["message"],
            format!("too many connections (max {max})"),
            "attempt {attempt}"
        );
        assert_eq!(error["retryable"], true);
        over.expect_closed();
    }
    // A connection over the limit that sends nothing is closed as well.
    let mut silent = server.raw();
    silent.expect_closed();

    // Every accepted connection is still served, for real work too.
    for (i, c) in accepted.iter_mut().enumerate() {
        c.assert_alive();
        c.ok("LIST_MACHINES", json!({}));
        assert!(c.ok("INFO", Value::Null).is_object(), "connection {i}");
    }

    // Closing one makes room for one.
    drop(accepted.pop());
    let mut replacement = server.served_connections(1).pop().unwrap();
    replacement.assert_alive();
    let log = server.stderr();
    assert!(
        log.contains("too many connections (max 4") && log.contains("connection_limit"),
        "refusals must be logged:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_over_the_limit_gets_rate_limited() {
    let server = Server::start(&["--max-connections", "1"]);
    let first = loop {
        match rstmdb_connect(server.addr(), None).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let refused = rstmdb_connect(server.addr(), None).await;
    match refused {
        Err(e) => {
            assert_eq!(error_code(&e), "RATE_LIMITED", "{e}");
            assert!(
                e.to_string().contains("too many connections (max 1)"),
                "{e}"
            );
        }
        Ok(_) => panic!("a second connection must be refused"),
    }
    first
        .ping()
        .await
        .expect("the accepted connection still works");
}

#[test]
fn the_idle_timeout_closes_silent_connections_only() {
    let server = Server::start(&["--idle-timeout-secs", "1"]);
    let mut silent = server.raw();
    let mut busy = server.raw();
    let mut watcher = server.raw();
    watcher.ok("WATCH_ALL", json!({}));

    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        busy.assert_alive();
        std::thread::sleep(Duration::from_millis(250));
    }
    // Silent for 2.5 s with a 1 s limit: closed without a word.
    silent.expect_closed();
    // The watcher sent nothing either, but it is watching: kept.
    watcher.assert_alive();
    busy.assert_alive();
}

#[test]
fn a_client_that_pipelines_without_reading_cannot_grow_server_memory() {
    const REQUESTS: usize = 100_000;
    const PADDING_BYTES: usize = 1000;
    /// Allowed RSS growth while the client does not read: far below the
    /// ~100 MB the requests would take if the server buffered them.
    const RSS_GROWTH_BYTES_MAX: u64 = 40 * 1024 * 1024;

    let server = Proc::start(&[], &[]);
    let mut warm = server.raw();
    for _ in 0..100 {
        warm.assert_alive();
    }
    let before = server.rss_bytes();

    let mut writer_stream = TcpStream::connect(server.addr).expect("connect");
    writer_stream.set_nodelay(true).ok();
    let reader_stream = writer_stream.try_clone().expect("clone");
    let written = Arc::new(AtomicU64::new(0));
    let progress = written.clone();
    let padding = "x".repeat(PADDING_BYTES);
    let writer = std::thread::spawn(move || {
        let mut batch = Vec::new();
        for i in 0..REQUESTS {
            let doc = request(&format!("p{i}"), "PING", json!({"padding": padding}));
            batch.extend_from_slice(&rcpx_json(&doc));
            if batch.len() >= 64 * 1024 || i + 1 == REQUESTS {
                writer_stream.write_all(&batch).expect("write");
                progress.fetch_add(batch.len() as u64, Ordering::Relaxed);
                batch.clear();
            }
        }
    });

    // Wait until the writer is stuck: the server stopped reading.
    let mut last = 0;
    let mut stalled_since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = written.load(Ordering::Relaxed);
        if now != last {
            last = now;
            stalled_since = Instant::now();
        } else if stalled_since.elapsed() > Duration::from_millis(1000) {
            break;
        }
        assert!(
            !writer.is_finished(),
            "the server read all {REQUESTS} requests without its answers being read"
        );
    }
    let during = server.rss_bytes();
    eprintln!(
        "pipelined {last} bytes before the server stopped reading; RSS {before} -> {during} bytes"
    );
    assert!(
        during < before + RSS_GROWTH_BYTES_MAX,
        "server RSS grew from {before} to {during} bytes while the client did not read"
    );

    // Now read: every request is answered, in order.
    let mut reader_stream = reader_stream;
    reader_stream
        .set_read_timeout(Some(crate::support::RESPONSE_TIMEOUT))
        .expect("read timeout");
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 256 * 1024];
    let mut answered = 0usize;
    while answered < REQUESTS {
        while let Some(frame) = take_rcpx_frame(&mut buf).expect("RCPX frame") {
            let response = frame.json();
            assert_eq!(response["id"], format!("p{answered}"));
            assert_eq!(response["status"], "ok");
            answered += 1;
        }
        if answered == REQUESTS {
            break;
        }
        let n = reader_stream.read(&mut chunk).expect("read answers");
        assert!(n > 0, "server closed after {answered} answers");
        buf.extend_from_slice(&chunk[..n]);
    }
    writer.join().expect("writer");
}

#[test]
fn a_frame_over_16_mib_closes_only_its_connection() {
    let server = Server::start(&[]);
    let mut bystander = server.raw();
    let mut big = server.raw();
    // Header only: payload_len = 16 MiB + 1 is refused on sight.
    let header = rcpx_frame_with(1, FLAG_CRC_PRESENT, &[], &[], 0);
    let mut header = header[..18].to_vec();
    header[10..14].copy_from_slice(&((16 * 1024 * 1024 + 1) as u32).to_be_bytes());
    big.send(&header);
    big.expect_closed();
    bystander.assert_alive();
    server.raw().assert_alive();
}

#[test]
fn max_batch_ops_from_the_config_file_holds() {
    let dir = tempfile::TempDir::new().unwrap();
    let config = crate::support::write_config(
        dir.path(),
        "corestate:\n  max_batch_ops: 3\n  max_inflight_requests_per_connection: 8\n",
    );
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let mut c = server.raw();
    let op = |i: usize| json!({"op": "GET_INSTANCE", "params": {"instance_id": format!("i-{i}")}});
    let error = c.err_code(
        "BATCH",
        json!({"mode": "best_effort", "ops": (0..4).map(op).collect::<Vec<_>>()}),
        "BAD_REQUEST",
    );
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("batch size 4 exceeds limit 3"),
        "{error}"
    );
    let result = c.ok(
        "BATCH",
        json!({"mode": "best_effort", "ops": (0..3).map(op).collect::<Vec<_>>()}),
    );
    assert!(result.is_object(), "{result}");
    assert_eq!(c.ok("INFO", Value::Null)["max_batch_ops"], 3);

    // With 8 requests in flight at most, a pipeline of 500 still completes.
    let mut burst = Vec::new();
    for i in 0..500 {
        burst.extend_from_slice(&rcpx_json(&request(&format!("b{i}"), "PING", Value::Null)));
    }
    c.send(&burst);
    for i in 0..500 {
        assert_eq!(c.read_response()["id"], format!("b{i}"));
    }
}

#[test]
fn refusal_warnings_are_rate_limited_and_json_with_log_format_json() {
    use corestate::server::refusals::REFUSAL_WARNINGS_PER_WINDOW_MAX;
    const REFUSED: usize = 30;
    let server = Server::start(&["--log-format", "json", "--max-connections", "1"]);
    let mut held = server.served_connections(1);
    for _ in 0..REFUSED {
        let mut over = server.raw();
        over.err_code("PING", Value::Null, "RATE_LIMITED");
    }
    held[0].assert_alive();
    let log = server.stderr();
    let mut warnings = 0;
    for line in log.lines() {
        let entry: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        if entry["fields"]["cause"] == "connection_limit" {
            assert_eq!(entry["level"], "WARN", "{line}");
            assert!(entry["fields"]["peer"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.1:"));
            warnings += 1;
        }
    }
    // At most the window's budget is logged; the rest are only counted.
    // (The readiness probe may have been refused once as well.)
    assert_eq!(warnings, REFUSAL_WARNINGS_PER_WINDOW_MAX as usize, "{log}");
}
