//! A webhook receiver for the tests: a tiny_http server on a fresh port
//! whose answer the test switches at will (accept, fail with a status,
//! stall without answering), recording every attempt and every accepted
//! delivery.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How the receiver answers the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200, after `delay_ms`.
    Accept { delay_ms: u64 },
    /// This status for the next `times` requests, then `Accept`.
    FailTimes { status: u16, times: usize },
    /// This status, always.
    Fail { status: u16 },
    /// Take the request and never answer it.
    Stall,
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub body: Vec<u8>,
    pub signature: String,
    pub delivery: String,
    pub webhook: String,
    pub timestamp: String,
    pub content_type: String,
}

impl Seen {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("delivery body is JSON")
    }

    pub fn offset(&self) -> u64 {
        self.json()["wal_offset"].as_u64().expect("wal_offset")
    }
}

#[derive(Default)]
struct Log {
    attempts: Vec<Seen>,
    accepted: Vec<Seen>,
}

pub struct Receiver {
    pub url: String,
    mode: Arc<Mutex<Mode>>,
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn header(req: &tiny_http::Request, name: &str) -> String {
    req.headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str().to_string())
        .unwrap_or_default()
}

impl Receiver {
    pub fn start(mode: Mode) -> Receiver {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("receiver listens");
        let port = server.server_addr().to_ip().expect("ip address").port();
        let mode = Arc::new(Mutex::new(mode));
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (mode, log, stop) = (mode.clone(), log.clone(), stop.clone());
            std::thread::spawn(move || {
                // Stalled requests are held here, unanswered, until the end.
                let mut held = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let Ok(Some(mut req)) = server.recv_timeout(Duration::from_millis(50)) else {
                        continue;
                    };
                    let mut body = Vec::new();
                    let _ = req.as_reader().read_to_end(&mut body);
                    let seen = Seen {
                        at: Instant::now(),
                        body,
                        signature: header(&req, "x-corestate-signature"),
                        delivery: header(&req, "x-corestate-delivery"),
                        webhook: header(&req, "x-corestate-webhook"),
                        timestamp: header(&req, "x-corestate-timestamp"),
                        content_type: header(&req, "content-type"),
                    };
                    log.lock().unwrap().attempts.push(seen.clone());
                    let now = *mode.lock().unwrap();
                    let status = match now {
                        Mode::Accept { delay_ms } => {
                            std::thread::sleep(Duration::from_millis(delay_ms));
                            log.lock().unwrap().accepted.push(seen);
                            200
                        }
                        Mode::FailTimes { status, times } => {
                            *mode.lock().unwrap() = if times <= 1 {
                                Mode::Accept { delay_ms: 0 }
                            } else {
                                Mode::FailTimes {
                                    status,
                                    times: times - 1,
                                }
                            };
                            status
                        }
                        Mode::Fail { status } => status,
                        Mode::Stall => {
                            held.push(req);
                            continue;
                        }
                    };
                    let _ = req
                        .respond(tiny_http::Response::from_string("ok").with_status_code(status));
                }
            })
        };
        Receiver {
            url: format!("http://127.0.0.1:{port}/hook"),
            mode,
            log,
            stop,
            thread: Some(thread),
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn attempts(&self) -> Vec<Seen> {
        self.log.lock().unwrap().attempts.clone()
    }

    pub fn accepted(&self) -> Vec<Seen> {
        self.log.lock().unwrap().accepted.clone()
    }

    /// Offsets of the accepted deliveries, in arrival order.
    pub fn accepted_offsets(&self) -> Vec<u64> {
        self.accepted().iter().map(Seen::offset).collect()
    }

    /// Wait until `done(self)` holds; panics after `timeout`.
    #[track_caller]
    pub fn wait_until(&self, timeout: Duration, what: &str, done: impl Fn(&Receiver) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: accepted {:?}, {} attempts",
                self.accepted_offsets(),
                self.attempts().len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
