//! A watcher that stops reading loses nothing — it is served from the logs
//! once it falls out of the server's ring — while the server's memory stays
//! bounded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::conn::{WatchConn, EVENT_TIMEOUT};
use crate::events::{apply, assert_same_offsets, create, ids_on_all_shards, offset_of};
use crate::support::{
    cpu_percent, flip_definition, put_machine, rss_kib, set_receive_buffer, Server,
    RCPX_HEADER_BYTES, RESPONSE_TIMEOUT, SHARDS,
};
use crate::writers::{run_writers, spawn_watcher, Load};

/// Events the server keeps in memory for watchers (`WATCH_RING_EVENTS_MAX`).
const SERVER_RING_EVENTS: usize = 65_536;

/// Largest TCP send buffer the kernel autotunes to (`tcp_wmem` max).
fn tcp_send_buffer_max() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
        .unwrap_or(4 * 1024 * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_watcher_loses_nothing_and_server_memory_stays_bounded() {
    const WRITERS: usize = 8;
    const INSTANCES_PER_WRITER: usize = 4;
    // 8 × 4 × 2,700 = 86,400 events: 20,864 past the server's 65,536-event
    // ring — more than the kernel can buffer between the server and the
    // stalled watcher (see below), so the watcher's cursor falls out of the
    // ring and it must be served from the logs.
    const APPLIES_PER_INSTANCE: usize = 2_700;
    // The stalled watcher's receive buffer: small, so that the kernel
    // (client receive buffer, autotuned up to 32 MiB otherwise, plus the
    // server's send buffer) cannot hold what the server must keep track of.
    const SLOW_RCVBUF_BYTES: usize = 64 * 1024;
    // Best-effort BATCHes of 25 applies, 4 in flight per writer: the load
    // is produced fast enough for a test even by a debug build.
    const APPLIES_PER_REQUEST: usize = 25;
    const WINDOW: usize = 4;
    // Payload `{"k":N,"pad":"xxx…"}` ≈ 200 bytes; the ctx carries it too.
    const PAD: usize = 180;
    // RSS growth allowed while the watcher is stalled: the ring of 65,536
    // events, which the server keeps whether or not anyone watches (measured
    // ≈ 1 KiB per event of this load: 16 → 82 MiB over 80,000 events with
    // no watcher at all), and allocator slack — not a second copy of the
    // undelivered stream for the stalled watcher.
    const RSS_GROWTH_MAX_MIB: u64 = 96;
    // Once the ring is full, more events must not make the server grow.
    const RSS_GROWTH_AFTER_RING_FULL_MAX_MIB: u64 = 24;

    let server = Server::start(&[]);
    let pid = server.pid().expect("server pid");
    let mut setup = server.raw();
    put_machine(&mut setup, "flip", flip_definition());
    let ids = ids_on_all_shards("slow", WRITERS * INSTANCES_PER_WRITER / SHARDS);
    for id in &ids {
        create(&mut setup, "flip", id);
    }

    // The slow watcher subscribes, then reads nothing until the load is over.
    let mut slow = WatchConn::connect(server.addr(), "slow watcher");
    set_receive_buffer(&slow.stream, SLOW_RCVBUF_BYTES);
    let sub = slow.ok("WATCH_ALL", json!({}));
    let sub_id = sub["subscription_id"].as_str().unwrap().to_string();
    // A fast watcher alongside it keeps up the whole time.
    let (ready_tx, ready_rx) = mpsc::channel();
    let (target_tx, target_rx) = mpsc::channel();
    let fast = spawn_watcher(
        server.addr(),
        "fast watcher".into(),
        json!({"include_ctx": false}),
        target_rx,
        ready_tx,
    );
    ready_rx
        .recv_timeout(RESPONSE_TIMEOUT)
        .expect("fast watcher ready");

    let mib = |kib: u64| kib as f64 / 1024.0;
    let rss = move || rss_kib(pid).expect("server VmRSS");
    let rss_before = rss();
    let mut load = Load::new(APPLIES_PER_INSTANCE, WINDOW);
    load.pad = PAD;
    load.per_request = APPLIES_PER_REQUEST;
    // Sample RSS with the number of events acknowledged at that moment.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (sampling, progress) = (sampling.clone(), load.progress.clone());
        std::thread::spawn(move || {
            let mut samples: Vec<(usize, u64)> = Vec::new();
            while sampling.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    samples.push((progress.load(Ordering::Relaxed), kib));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            samples
        })
    };
    let (acked, elapsed) = run_writers(server.addr(), &ids, WRITERS, &load, &server).await;
    let total = acked.len();
    assert!(
        total > SERVER_RING_EVENTS,
        "the load must overflow the ring"
    );
    let rss_stalled = rss();
    eprintln!(
        "slow watcher: writers made {total} applies in {:.1} s ({:.0}/s) while it was stalled; \
         server RSS {:.1} MiB before, {:.1} MiB after",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        mib(rss_before),
        mib(rss_stalled)
    );
    target_tx.send(total).expect("tell fast watcher");
    let fast_got = match fast.join().expect("fast watcher thread") {
        Ok(got) => got,
        Err(e) => panic!("{e}\nserver stderr:\n{}", server.stderr_tail()),
    };
    sampling.store(false, Ordering::Relaxed);
    let samples = sampler.join().expect("sampler");
    let rss_peak = samples
        .iter()
        .map(|(_, k)| *k)
        .max()
        .unwrap_or(rss_stalled)
        .max(rss_stalled);
    let rss_ring_full = samples
        .iter()
        .find(|(n, _)| *n >= SERVER_RING_EVENTS)
        .map_or(rss_stalled, |(_, k)| *k);
    let fast_offsets: Vec<u64> = fast_got.iter().map(|(o, _)| *o).collect();

    // Now drain the slow watcher.
    let drain_started = Instant::now();
    let mut offsets = Vec::with_capacity(total);
    let mut first = None;
    while offsets.len() < total {
        let Some(e) = slow.next_event(EVENT_TIMEOUT) else {
            let cpu = cpu_percent(pid, Duration::from_secs(1));
            // Does one more event get the stream going again?
            let before = offsets.len();
            let mut poke = server.raw();
            apply(&mut poke, "flip", &ids[0], "FLIP", None);
            while let Some(e) = slow.next_event(Duration::from_secs(5)) {
                offsets.push(offset_of(&e));
            }
            panic!(
                "slow watcher: stalled after {before} of {total} events — nothing for \
                 {EVENT_TIMEOUT:?} (last offset {:?}; server CPU meanwhile {cpu}); after one \
                 more APPLY_EVENT, {} more events arrived\nserver stderr:\n{}",
                before.checked_sub(1).map(|i| offsets[i]),
                offsets.len() - before,
                server.stderr_tail()
            );
        };
        if first.is_none() {
            assert_eq!(e["subscription_id"], sub_id.as_str(), "{e}");
            assert!(
                e["payload"]["pad"].is_string() && e["ctx"]["pad"].is_string(),
                "{e}"
            );
            first = Some(e.to_string().len() + RCPX_HEADER_BYTES);
        }
        offsets.push(offset_of(&e));
    }
    slow.expect_quiet("after every event");
    let drained_in = drain_started.elapsed();
    let rss_end = rss();

    let mut want: Vec<(u64, String)> = acked;
    want.sort();
    let want_offsets: Vec<u64> = want.iter().map(|(o, _)| *o).collect();
    assert_same_offsets(&offsets, &want_offsets, "slow watcher", &server);
    assert_same_offsets(&fast_offsets, &want_offsets, "fast watcher", &server);

    // The premise: the kernel could not have held the events the watcher
    // missed beyond the ring, so the server had to serve them from its logs.
    let event_bytes = first.unwrap_or(1);
    let kernel_bytes = tcp_send_buffer_max() + 2 * SLOW_RCVBUF_BYTES;
    let kernel_events = kernel_bytes / event_bytes;
    eprintln!(
        "slow watcher: events of {event_bytes} bytes; at most {kernel_events} fit in the \
         kernel's buffers ({kernel_bytes} bytes); {} events were beyond the ring",
        total - SERVER_RING_EVENTS
    );
    assert!(
        total - SERVER_RING_EVENTS > kernel_events,
        "test premise: the stalled watcher must fall out of the ring"
    );
    eprintln!(
        "slow watcher: {total} events ({:.0} applies/s by {WRITERS} writers while it was \
         stalled, {:.1} s); drained in {:.2} s ({:.0} events/s)\n\
         server RSS: before {:.1} MiB, ring full {:.1} MiB, end of load {:.1} MiB, \
         peak {:.1} MiB, after drain {:.1} MiB",
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        drained_in.as_secs_f64(),
        total as f64 / drained_in.as_secs_f64(),
        mib(rss_before),
        mib(rss_ring_full),
        mib(rss_stalled),
        mib(rss_peak),
        mib(rss_end)
    );
    let growth = rss_peak.saturating_sub(rss_before) / 1024;
    assert!(
        growth <= RSS_GROWTH_MAX_MIB,
        "server RSS grew by {growth} MiB (from {:.1} to a peak of {:.1} MiB) with a stalled \
         watcher; allowed {RSS_GROWTH_MAX_MIB} MiB",
        mib(rss_before),
        mib(rss_peak)
    );
    // Growth after the ring was full counts only samples taken since: RSS
    // may fall before that (CI once saw 158 MiB at the start, 86 MiB at a
    // full ring), and an earlier, higher sample is no growth.
    let rss_peak_after_ring_full = samples
        .iter()
        .filter(|(n, _)| *n >= SERVER_RING_EVENTS)
        .map(|(_, k)| *k)
        .max()
        .unwrap_or(rss_stalled)
        .max(rss_stalled);
    let late_growth = rss_peak_after_ring_full.saturating_sub(rss_ring_full) / 1024;
    assert!(
        late_growth <= RSS_GROWTH_AFTER_RING_FULL_MAX_MIB,
        "server RSS kept growing after the ring was full: {:.1} MiB at {SERVER_RING_EVENTS} \
         events, peak {:.1} MiB since, {total} events in all",
        mib(rss_ring_full),
        mib(rss_peak_after_ring_full)
    );
}
