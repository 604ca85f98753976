//! The hostile connections themselves and the thread that drives them:
//! one poll(2) loop over non-blocking sockets, waking when a socket takes
//! more bytes, a slowloris byte is due or a `biglist` reader has earned
//! its next read, and at least every [`POLL_TIMEOUT_MAX`] to see the end.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{
    HostileKind, ANSWER_HEAD_BYTES, BIGLIST_LIMIT_ROWS, BIGLIST_READ_BURST_BYTES,
    BIGLIST_READ_BYTES_PER_SEC, BIGLIST_READ_CHUNK_BYTES, POLL_TIMEOUT_MAX, REQUESTS_PER_REFILL,
    SLOWLORIS_ANNOUNCED_PAYLOAD_BYTES, SLOWLORIS_FIRST_BYTES, SLOWLORIS_TRICKLE_INTERVAL,
    WRITES_PER_WAKE_MAX,
};
use crate::frame;
use crate::stats;

/// Counts the answers in a byte stream read piecewise, keeping the start
/// of the first one.
#[derive(Debug, Default)]
pub(super) struct AnswerCounter {
    header: Vec<u8>,
    /// Bytes of the current frame's payload not yet seen.
    remaining: usize,
    pub(super) answers: u64,
    pub(super) answer_bytes_max: u64,
    pub(super) first_head: Vec<u8>,
    /// Set when the stream is not RCPX: counting stops.
    garbled: bool,
}

impl AnswerCounter {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.garbled {
            if self.remaining == 0 {
                let take = (frame::HEADER_BYTES - self.header.len()).min(bytes.len());
                self.header.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if self.header.len() < frame::HEADER_BYTES {
                    return;
                }
                if self.header[0..4] != frame::MAGIC {
                    self.garbled = true;
                    return;
                }
                let field = |at: usize, len: usize| {
                    self.header[at..at + len]
                        .iter()
                        .fold(0usize, |n, &b| n << 8 | b as usize)
                };
                let payload = field(8, 2) + field(10, 4);
                self.header.clear();
                self.answer_bytes_max = self.answer_bytes_max.max(payload as u64);
                if payload == 0 {
                    self.answers += 1;
                }
                self.remaining = payload;
            } else {
                let take = self.remaining.min(bytes.len());
                if self.answers == 0 && self.first_head.len() < ANSWER_HEAD_BYTES {
                    let keep = (ANSWER_HEAD_BYTES - self.first_head.len()).min(take);
                    self.first_head.extend_from_slice(&bytes[..keep]);
                }
                bytes = &bytes[take..];
                self.remaining -= take;
                if self.remaining == 0 {
                    self.answers += 1;
                }
            }
        }
    }
}

/// What one hostile connection did.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub(super) bytes_sent: u64,
    pub(super) requests_sent: u64,
    pub(super) bytes_read: u64,
    /// When the server closed it (since the hostile thread started), and why.
    pub(super) closed: Option<(Duration, String)>,
}

/// One hostile connection.
pub(super) struct Hostile {
    pub(super) kind: HostileKind,
    stream: Option<TcpStream>,
    /// The op and params every request of this connection carries
    /// (none for slowloris).
    request: Option<(&'static str, String)>,
    out: Vec<u8>,
    out_at: usize,
    /// Where each rendered request ends in `out`.
    frame_ends: VecDeque<usize>,
    next_id: u64,
    next_trickle: Instant,
    read_allowance_bytes: f64,
    allowance_at: Instant,
    pub(super) answers: AnswerCounter,
    pub(super) tally: Tally,
}

impl Hostile {
    pub(super) fn new(kind: HostileKind, stream: TcpStream, big_instance: Option<&str>) -> Hostile {
        let request = match kind {
            HostileKind::Slowloris => None,
            HostileKind::Unread => Some((
                "GET_INSTANCE",
                json!({"instance_id": big_instance.expect("prepared with unread > 0")}).to_string(),
            )),
            HostileKind::Biglist => Some((
                "LIST_INSTANCES",
                json!({"limit": BIGLIST_LIMIT_ROWS}).to_string(),
            )),
        };
        let mut out = Vec::new();
        if kind == HostileKind::Slowloris {
            out.extend_from_slice(&frame::header(SLOWLORIS_ANNOUNCED_PAYLOAD_BYTES as u32, 0));
            out.extend_from_slice(SLOWLORIS_FIRST_BYTES);
        }
        let now = Instant::now();
        Hostile {
            kind,
            stream: Some(stream),
            request,
            out,
            out_at: 0,
            frame_ends: VecDeque::new(),
            next_id: 1,
            next_trickle: now + SLOWLORIS_TRICKLE_INTERVAL,
            read_allowance_bytes: 0.0,
            allowance_at: now,
            answers: AnswerCounter::default(),
            tally: Tally::default(),
        }
    }

    /// Does what is due at `now`; how long until something else is due.
    fn prepare(&mut self, now: Instant) -> Duration {
        match self.kind {
            HostileKind::Slowloris => {
                if now >= self.next_trickle {
                    self.out.push(b' ');
                    self.next_trickle += SLOWLORIS_TRICKLE_INTERVAL;
                }
                self.next_trickle.saturating_duration_since(now)
            }
            HostileKind::Unread => POLL_TIMEOUT_MAX,
            HostileKind::Biglist => {
                let earned = now.duration_since(self.allowance_at).as_secs_f64()
                    * BIGLIST_READ_BYTES_PER_SEC;
                self.allowance_at = now;
                self.read_allowance_bytes =
                    (self.read_allowance_bytes + earned).min(BIGLIST_READ_BURST_BYTES as f64);
                // Once it may read a chunk it waits for answers (POLLIN).
                let missing = BIGLIST_READ_CHUNK_BYTES as f64 - self.read_allowance_bytes;
                if missing <= 0.0 {
                    POLL_TIMEOUT_MAX
                } else {
                    Duration::from_secs_f64(missing / BIGLIST_READ_BYTES_PER_SEC)
                }
            }
        }
    }

    fn wants_write(&self) -> bool {
        self.request.is_some() || self.out_at < self.out.len()
    }

    fn wants_read(&self) -> bool {
        self.kind == HostileKind::Biglist
            && self.read_allowance_bytes >= BIGLIST_READ_CHUNK_BYTES as f64
    }

    /// Appends the next requests; false when this kind sends none.
    fn render(&mut self) -> bool {
        let Some((op, params)) = &self.request else {
            return false;
        };
        for _ in 0..REQUESTS_PER_REFILL {
            let body = format!(
                r#"{{"type":"request","id":"h{}","op":"{op}","params":{params}}}"#,
                self.next_id
            );
            self.next_id += 1;
            frame::encode(&mut self.out, body.as_bytes());
            self.frame_ends.push_back(self.out.len());
        }
        true
    }

    /// Writes what the socket takes.
    fn write_some(&mut self) -> Result<(), String> {
        for _ in 0..WRITES_PER_WAKE_MAX {
            if self.out_at == self.out.len() {
                self.out.clear();
                self.out_at = 0;
                self.frame_ends.clear();
                if !self.render() {
                    return Ok(());
                }
            }
            let Some(stream) = self.stream.as_mut() else {
                return Ok(());
            };
            match stream.write(&self.out[self.out_at..]) {
                Ok(0) => return Err("the socket took no bytes".into()),
                Ok(n) => {
                    self.out_at += n;
                    self.tally.bytes_sent += n as u64;
                    while self
                        .frame_ends
                        .front()
                        .is_some_and(|&end| end <= self.out_at)
                    {
                        self.frame_ends.pop_front();
                        self.tally.requests_sent += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        Ok(())
    }

    /// Reads at most the allowance.
    fn read_some(&mut self, scratch: &mut [u8]) -> Result<(), String> {
        let want = (self.read_allowance_bytes as usize).min(scratch.len());
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        match stream.read(&mut scratch[..want]) {
            Ok(0) => Err("closed by the server".into()),
            Ok(n) => {
                self.read_allowance_bytes -= n as f64;
                self.tally.bytes_read += n as u64;
                self.answers.feed(&scratch[..n]);
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(format!("read: {e}")),
        }
    }

    fn on_ready(&mut self, revents: libc::c_short, scratch: &mut [u8]) -> Result<(), String> {
        if revents & libc::POLLERR != 0 {
            let error = self
                .stream
                .as_ref()
                .and_then(|s| s.take_error().ok().flatten());
            return Err(error.map_or("socket error".into(), |e| e.to_string()));
        }
        if revents & libc::POLLOUT != 0 {
            self.write_some()?;
        }
        if revents & libc::POLLIN != 0 && self.wants_read() {
            self.read_some(scratch)?;
        }
        if revents & (libc::POLLRDHUP | libc::POLLHUP) != 0 {
            return Err("closed by the server".into());
        }
        Ok(())
    }
}

/// The hostile thread: drives every connection until `stop`, then closes
/// them. Returns them with the thread's CPU seconds and how long they were
/// open.
pub(super) fn drive(mut conns: Vec<Hostile>, stop: &AtomicBool) -> (Vec<Hostile>, f64, Duration) {
    let started = Instant::now();
    let mut scratch = vec![0u8; BIGLIST_READ_BURST_BYTES];
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(conns.len());
    let mut polled: Vec<usize> = Vec::with_capacity(conns.len());
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        let mut wait = POLL_TIMEOUT_MAX;
        fds.clear();
        polled.clear();
        for (i, c) in conns.iter_mut().enumerate() {
            let Some(fd) = c.stream.as_ref().map(AsRawFd::as_raw_fd) else {
                continue;
            };
            wait = wait.min(c.prepare(now));
            let mut events = libc::POLLRDHUP;
            if c.wants_write() {
                events |= libc::POLLOUT;
            }
            if c.wants_read() {
                events |= libc::POLLIN;
            }
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
            polled.push(i);
        }
        let timeout_ms = wait.as_micros().div_ceil(1000) as libc::c_int;
        // SAFETY: `fds` is a live array of `fds.len()` pollfd structs.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if ready < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            // Not expected; never spin on it.
            std::thread::sleep(POLL_TIMEOUT_MAX);
        }
        if ready <= 0 {
            continue;
        }
        for (fd, &i) in fds.iter().zip(&polled) {
            if fd.revents == 0 {
                continue;
            }
            let c = &mut conns[i];
            if let Err(why) = c.on_ready(fd.revents, &mut scratch) {
                c.stream = None;
                c.tally.closed = Some((started.elapsed(), why));
            }
        }
    }
    let open = started.elapsed();
    for c in &mut conns {
        c.stream = None;
    }
    (conns, stats::thread_cpu_seconds(), open)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn answers_are_counted_across_arbitrary_read_boundaries() {
        let mut stream = Vec::new();
        frame::encode(
            &mut stream,
            br#"{"type":"response","id":"h1","status":"ok"}"#,
        );
        frame::encode(&mut stream, &vec![b'x'; 5000]);
        frame::encode(&mut stream, b"");
        for piece in [1, 7, 18, 100, stream.len()] {
            let mut counter = AnswerCounter::default();
            for chunk in stream.chunks(piece) {
                counter.feed(chunk);
            }
            assert_eq!(counter.answers, 3, "pieces of {piece}");
            assert_eq!(counter.answer_bytes_max, 5000);
            assert!(counter
                .first_head
                .starts_with(br#"{"type":"response","id":"h1""#));
            assert!(!counter.garbled);
        }
        let mut counter = AnswerCounter::default();
        counter.feed(&[b'{'; 40]);
        assert!(counter.garbled);
        assert_eq!(counter.answers, 0);
    }

    #[test]
    fn a_slowloris_announces_the_largest_payload_and_never_completes_it() {
        let (client, _server) = socket_pair();
        let mut h = Hostile::new(HostileKind::Slowloris, client, None);
        let header = frame::decode(&h.out);
        assert!(matches!(header, Ok(None)), "an incomplete frame");
        assert_eq!(&h.out[10..14], &(16u32 * 1024 * 1024).to_be_bytes());
        h.write_some().unwrap();
        assert_eq!(h.tally.requests_sent, 0);
        assert_eq!(
            h.tally.bytes_sent as usize,
            frame::HEADER_BYTES + SLOWLORIS_FIRST_BYTES.len()
        );
        assert!(!h.wants_write());
        let later = h.next_trickle;
        assert_eq!(h.prepare(later), SLOWLORIS_TRICKLE_INTERVAL);
        assert!(h.wants_write());
        h.write_some().unwrap();
        assert_eq!(
            h.tally.bytes_sent as usize,
            frame::HEADER_BYTES + SLOWLORIS_FIRST_BYTES.len() + 1
        );
    }

    #[test]
    fn an_unread_client_writes_until_the_socket_is_full() {
        let (client, server) = socket_pair();
        let mut h = Hostile::new(HostileKind::Unread, client, Some("big"));
        for _ in 0..10_000 {
            h.write_some().unwrap();
        }
        assert!(h.tally.requests_sent > REQUESTS_PER_REFILL as u64);
        let mut first = Vec::new();
        (&server).take(512).read_to_end(&mut first).unwrap();
        let d = frame::decode(&first).unwrap().unwrap();
        let request: Value =
            serde_json::from_slice(&first[d.payload_start..d.payload_end]).unwrap();
        assert_eq!(request["op"], "GET_INSTANCE");
        assert_eq!(request["params"]["instance_id"], "big");
    }

    #[test]
    fn a_biglist_reader_earns_its_reads_at_the_set_rate() {
        let (client, _server) = socket_pair();
        let mut h = Hostile::new(HostileKind::Biglist, client, None);
        let start = h.allowance_at;
        let chunk_secs = BIGLIST_READ_CHUNK_BYTES as f64 / BIGLIST_READ_BYTES_PER_SEC;
        let wait = h.prepare(start + Duration::from_secs_f64(chunk_secs / 4.0));
        assert!(!h.wants_read());
        assert!(
            (wait.as_secs_f64() - 0.75 * chunk_secs).abs() < 1e-3,
            "{wait:?}"
        );
        assert_eq!(
            h.prepare(start + Duration::from_secs_f64(chunk_secs)),
            POLL_TIMEOUT_MAX
        );
        assert!(h.wants_read());
        h.prepare(start + Duration::from_secs(3600));
        assert_eq!(h.read_allowance_bytes, BIGLIST_READ_BURST_BYTES as f64);
    }

    fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.set_nonblocking(true).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }
}
