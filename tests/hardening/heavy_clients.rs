//! Heavy and hostile clients: pipelines of big answers that are not read,
//! many readers of a huge instance, pipelined large LISTs, and headers that
//! announce 16 MiB and stall. The server stays up, its memory stays
//! bounded (read from /proc), and other clients are served meanwhile.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use corestate::protocol::frame::client::RcpxHeader;
use serde_json::{json, Value};

use crate::support::{
    auth_config, pipeline, rcpx_json, request, rss_mib, take_rcpx_frame, RawClient, Server,
};

fn counter_definition() -> Value {
    json!({"states": ["idle", "busy"], "initial": "idle",
           "transitions": [{"from": "idle", "event": "GO", "to": "busy"}]})
}

/// A machine and an instance whose context holds `pad_bytes` of text.
fn big_instance(c: &mut RawClient, id: &str, pad_bytes: usize) {
    c.ok(
        "PUT_MACHINE",
        json!({"machine": "ctr", "version": 1, "definition": counter_definition()}),
    );
    c.ok(
        "CREATE_INSTANCE",
        json!({"machine": "ctr", "version": 1, "instance_id": id,
               "initial_ctx": {"pad": "x".repeat(pad_bytes)}}),
    );
}

/// Read `count` responses from a raw socket, checking ids are in order.
fn read_answers(stream: &mut TcpStream, prefix: &str, count: usize) -> Vec<Value> {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = Vec::new();
    let mut out = Vec::with_capacity(count);
    let mut chunk = vec![0u8; 1 << 20];
    while out.len() < count {
        while let Some(frame) = take_rcpx_frame(&mut buf).expect("a valid frame") {
            let v = frame.json();
            assert_eq!(
                v["id"],
                format!("{prefix}{}", out.len()),
                "answers in order"
            );
            out.push(v);
        }
        if out.len() == count {
            break;
        }
        let n = stream.read(&mut chunk).expect("read answers");
        assert!(
            n > 0,
            "server closed after {} of {count} answers",
            out.len()
        );
        buf.extend_from_slice(&chunk[..n]);
    }
    out
}

#[test]
fn unread_pipelined_reads_of_a_big_instance_hold_bounded_memory() {
    const PAD_BYTES: usize = 256 * 1024;
    const GETS: usize = 1_100;
    let server = Server::start(&[]);
    let mut c = server.raw();
    big_instance(&mut c, "big", PAD_BYTES);
    big_instance(&mut c, "small", 10);
    let pid = server.pid().unwrap();
    let (base, _) = rss_mib(pid);
    // 1,100 GETs of a 256 KiB answer, nothing read: 275 MiB if buffered.
    let mut hog = TcpStream::connect(server.addr()).unwrap();
    let mut writer = hog.try_clone().unwrap();
    let sending = thread::spawn(move || {
        pipeline(
            &mut writer,
            "g",
            GETS,
            "GET_INSTANCE",
            &json!({"instance_id": "big"}),
        )
    });
    thread::sleep(Duration::from_secs(3));
    let (rss, _) = rss_mib(pid);
    assert!(
        rss < base + 96,
        "RSS grew from {base} to {rss} MiB with {GETS} unread answers pending"
    );
    // Everyone else is served meanwhile.
    let t = Instant::now();
    c.assert_alive();
    assert_eq!(
        c.ok("GET_INSTANCE", json!({"instance_id": "small"}))["state"],
        "idle"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // Nothing was dropped: once the client reads, every answer comes, in order.
    let answers = read_answers(&mut hog, "g", GETS);
    sending.join().unwrap();
    for a in [&answers[0], &answers[GETS - 1]] {
        assert_eq!(a["status"], "ok");
        assert_eq!(a["result"]["ctx"]["pad"].as_str().unwrap().len(), PAD_BYTES);
    }
}

#[test]
fn many_readers_of_a_huge_instance_keep_the_server_alive_past_the_watchdog_limit() {
    const PAD_BYTES: usize = 2 * 1024 * 1024;
    const CLIENTS: usize = 8;
    const IN_FLIGHT: usize = 16;
    let server = Server::start(&[]);
    let mut c = server.raw();
    big_instance(&mut c, "huge", PAD_BYTES);
    let pid = server.pid().unwrap();
    let (base, _) = rss_mib(pid);
    let deadline = Instant::now() + Duration::from_secs(7);
    let readers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let addr = server.addr();
            thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let get = rcpx_json(&request(
                    "g",
                    "GET_INSTANCE",
                    json!({"instance_id": "huge"}),
                ));
                for _ in 0..IN_FLIGHT {
                    s.write_all(&get).unwrap();
                }
                let (mut buf, mut chunk, mut answered) = (Vec::new(), vec![0u8; 1 << 20], 0u64);
                let mut outstanding = IN_FLIGHT;
                while outstanding > 0 {
                    while let Some(frame) = take_rcpx_frame(&mut buf).unwrap() {
                        assert_eq!(frame.json()["status"], "ok");
                        answered += 1;
                        outstanding -= 1;
                        if Instant::now() < deadline {
                            s.write_all(&get).unwrap();
                            outstanding += 1;
                        }
                    }
                    if outstanding == 0 {
                        break;
                    }
                    let n = s.read(&mut chunk).expect("read");
                    assert!(n > 0, "server closed the connection");
                    buf.extend_from_slice(&chunk[..n]);
                }
                answered
            })
        })
        .collect();
    let answered: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    let mut server = server;
    assert!(server.is_running(), "server died: {}", server.stderr_tail());
    let (_, peak) = rss_mib(pid);
    assert!(
        peak < base + 320,
        "peak RSS {peak} MiB (from {base}) serving {CLIENTS}x{IN_FLIGHT} GETs of 2 MiB"
    );
    assert!(answered > CLIENTS as u64 * IN_FLIGHT as u64, "{answered}");
    c.assert_alive();
    assert!(
        !server.stderr().contains("watchdog"),
        "{}",
        server.stderr_tail()
    );
}

#[test]
fn pipelined_large_lists_stay_bounded() {
    const INSTANCES: usize = 5_000;
    const LISTS: usize = 200;
    let server = Server::start(&[]);
    let mut c = server.raw();
    c.ok(
        "PUT_MACHINE",
        json!({"machine": "ctr", "version": 1, "definition": counter_definition()}),
    );
    for b in 0..INSTANCES / 100 {
        let ops: Vec<Value> = (0..100)
            .map(|i| {
                json!({"op": "CREATE_INSTANCE", "params":
                    {"machine": "ctr", "version": 1, "instance_id": format!("i{b:03}-{i:03}")}})
            })
            .collect();
        c.ok("BATCH", json!({"mode": "best_effort", "ops": ops}));
    }
    let pid = server.pid().unwrap();
    let (base, _) = rss_mib(pid);
    let mut hog = TcpStream::connect(server.addr()).unwrap();
    let mut writer = hog.try_clone().unwrap();
    let sending = thread::spawn(move || {
        pipeline(
            &mut writer,
            "l",
            LISTS,
            "LIST_INSTANCES",
            &json!({"limit": 10_000}),
        )
    });
    thread::sleep(Duration::from_secs(3));
    let (rss, _) = rss_mib(pid);
    assert!(rss < base + 128, "RSS grew from {base} to {rss} MiB");
    c.assert_alive();
    let answers = read_answers(&mut hog, "l", LISTS);
    sending.join().unwrap();
    for a in [&answers[0], &answers[LISTS - 1]] {
        assert_eq!(a["result"]["total"], INSTANCES, "{}", a["result"]["total"]);
        assert_eq!(
            a["result"]["instances"].as_array().unwrap().len(),
            INSTANCES
        );
    }
}

/// An RCPX header announcing a 16 MiB payload, and the first bytes of it.
fn stalled_header() -> Vec<u8> {
    let header = RcpxHeader {
        version: 1,
        flags: 0,
        extension_bytes: 0,
        payload_bytes: 16 * 1024 * 1024,
        crc: 0,
    };
    let mut out = header.to_bytes().to_vec();
    out.extend_from_slice(b"{\"type\":\"");
    out
}

#[test]
fn headers_announcing_16_mib_reserve_nothing_and_close_before_authentication() {
    const STALLERS: usize = 50;
    let server = Server::start(&[]);
    let pid = server.pid().unwrap();
    let (base, _) = rss_mib(pid);
    let stallers: Vec<TcpStream> = (0..STALLERS)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr()).unwrap();
            s.write_all(&stalled_header()).unwrap();
            s
        })
        .collect();
    thread::sleep(Duration::from_secs(1));
    let (rss, _) = rss_mib(pid);
    assert!(
        rss < base + 32,
        "{STALLERS} stalled 16 MiB headers took RSS from {base} to {rss} MiB"
    );
    server.raw().assert_alive();
    drop(stallers);

    // With authentication required, such a message is refused at once.
    let (_dir, config) = auth_config();
    let guarded = Server::start(&["--config", config.to_str().unwrap()]);
    let mut s = TcpStream::connect(guarded.addr()).unwrap();
    s.write_all(&stalled_header()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut byte = [0u8; 1];
    let t = Instant::now();
    match s.read(&mut byte) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection closed, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(3));
    guarded.raw().assert_alive();
}
