//! A headless Chromium driven over W3C WebDriver (Debian's `chromedriver`)
//! with the tests' HTTP client: start it, open a page, run a script in it
//! and wait for what the script returns. A missing browser fails the test
//! with how to install it — the browser test never skips.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::client::{agent_config, wait_listening, Api};
use crate::support::fresh_port;

/// Where Debian's packages put them (`apt-get install chromium chromium-driver`).
const CHROMIUM_BIN: &str = "/usr/bin/chromium";
const CHROMEDRIVER_BIN: &str = "/usr/bin/chromedriver";
/// Longest one WebDriver command may take (starting the browser is the slowest).
const WEBDRIVER_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How often `wait_for` runs its script again.
const WAIT_POLL: Duration = Duration::from_millis(100);

pub struct Browser {
    driver: Child,
    api: Api,
    session: String,
}

fn require(path: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: the page test needs Debian's headless Chromium. \
         `bash tests/run.sh` installs it as root (apt-get install -y chromium chromium-driver)"
    );
}

impl Browser {
    /// A fresh chromedriver and a headless Chromium session.
    pub fn start() -> Browser {
        require(CHROMIUM_BIN);
        require(CHROMEDRIVER_BIN);
        let port = fresh_port();
        let driver = Command::new(CHROMEDRIVER_BIN)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER_BIN}: {e}"));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_listening(addr);
        let agent = agent_config()
            .timeout_global(Some(WEBDRIVER_COMMAND_TIMEOUT))
            .build()
            .into();
        let api = Api::new(addr, "http", agent);
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM_BIN,
                // Root in a container: no sandbox, no /dev/shm reliance.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000"]
            }
        }}});
        let mut browser = Browser {
            driver,
            api,
            session: String::new(),
        };
        let created = browser.command("POST", "/session", &capabilities);
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        browser
    }

    /// One WebDriver command; its `value`.
    fn command(&self, method: &str, path: &str, body: &Value) -> Value {
        let answer = self.api.call(method, path, Some(body));
        let value = answer.json()["value"].clone();
        assert_eq!(answer.status, 200, "WebDriver {method} {path}: {value}");
        value
    }

    pub fn open(&self, url: &str) {
        let path = format!("/session/{}/url", self.session);
        self.command("POST", &path, &json!({"url": url}));
    }

    /// Run `script` (a function body; `return` a value) in the page.
    pub fn run(&self, script: &str) -> Value {
        let path = format!("/session/{}/execute/sync", self.session);
        self.command("POST", &path, &json!({"script": script, "args": []}))
    }

    /// The page as a PNG, to look at (base64 from WebDriver, decoded here).
    pub fn screenshot(&self) -> Vec<u8> {
        let path = format!("/session/{}/screenshot", self.session);
        let answer = self.api.get(&path);
        let text = answer.json()["value"].as_str().unwrap_or("").to_string();
        decode_base64(&text)
    }

    /// Run `script` until `done` accepts what it returns; that value.
    #[track_caller]
    pub fn wait_for(&self, what: &str, script: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WEBDRIVER_COMMAND_TIMEOUT;
        loop {
            let value = self.run(script);
            if done(&value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "the page never showed {what}; last: {value}"
            );
            std::thread::sleep(WAIT_POLL);
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = self.api.request("DELETE", &path, None, &[]);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (with padding), for WebDriver's screenshots.
fn decode_base64(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| *c != b'=') {
        let Some(v) = ALPHABET.iter().position(|a| *a == c) else {
            continue;
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
