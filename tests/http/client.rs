//! A server with the HTTP API on a fresh port, and a blocking JSON client
//! for it (ureq) that returns every answer, error statuses included.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{fresh_port, Server, RESPONSE_TIMEOUT};

/// How long the HTTP listener may take to accept after the RCP one does.
const HTTP_READY_TIMEOUT: Duration = Duration::from_secs(5);

/// A test's view of the API.
pub struct Api {
    pub addr: SocketAddr,
    base: String,
    agent: ureq::Agent,
    token: Option<String>,
}

/// One answer: status, headers (lower-case names) and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub text: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {:?}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The RCP error code of an error answer.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error answer: {}", self.text))
            .to_string()
    }

    /// Assert a status, showing the body when it differs.
    #[track_caller]
    pub fn expect(self, status: u16) -> Answer {
        assert_eq!(self.status, status, "body: {}", self.text);
        self
    }
}

/// Start a server with the API on a fresh port (plus `extra` flags).
pub fn start(extra: &[&str]) -> (Server, Api) {
    let port = fresh_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["--http-listen", listen.as_str()];
    args.extend_from_slice(extra);
    let server = Server::start(&args);
    let addr: SocketAddr = listen.parse().unwrap();
    wait_listening(addr);
    (server, Api::new(addr, "http", plain_agent()))
}

/// Wait until `addr` accepts connections.
pub fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + HTTP_READY_TIMEOUT;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(50)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the HTTP API never listened on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn agent_config() -> ureq::config::ConfigBuilder<ureq::typestate::AgentScope> {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(RESPONSE_TIMEOUT))
}

fn plain_agent() -> ureq::Agent {
    agent_config().build().into()
}

impl Api {
    pub fn new(addr: SocketAddr, scheme: &str, agent: ureq::Agent) -> Api {
        Api {
            addr,
            base: format!("{scheme}://{addr}"),
            agent,
            token: None,
        }
    }

    /// The same API with `Authorization: Bearer token` on every request.
    pub fn with_token(&self, token: &str) -> Api {
        Api {
            addr: self.addr,
            base: self.base.clone(),
            agent: self.agent.clone(),
            token: Some(token.to_string()),
        }
    }

    /// Any request; `body` is sent as is.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, ureq::Error> {
        let mut builder = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(body.unwrap_or("").to_string())
            .expect("request");
        let mut response = self.agent.run(request)?;
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_ascii_lowercase(),
                    v.to_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        Ok(Answer {
            status: response.status().as_u16(),
            headers,
            text: response.body_mut().read_to_string()?,
        })
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Answer {
        let body = body.map(|b| b.to_string());
        self.request(method, path, body.as_deref(), &[])
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn get(&self, path: &str) -> Answer {
        self.call("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Answer {
        self.call("POST", path, Some(body))
    }

    pub fn put(&self, path: &str, body: &Value) -> Answer {
        self.call("PUT", path, Some(body))
    }

    pub fn delete(&self, path: &str) -> Answer {
        self.call("DELETE", path, None)
    }
}

/// Two states with a guarded transition and a plain one back.
pub fn order_definition() -> Value {
    serde_json::json!({
        "states": ["created", "paid", "shipped"],
        "initial": "created",
        "transitions": [
            {"from": "created", "event": "PAY", "to": "paid", "guard": "ctx.amount > 0"},
            {"from": "paid", "event": "SHIP", "to": "shipped"}
        ]
    })
}

/// PUT the order machine as version 1 and create `id` with `amount`.
pub fn order_instance(api: &Api, id: &str, amount: u64) -> Value {
    let put = api.put("/v1/machines/order/versions/1", &order_definition());
    assert!(put.status == 200 || put.status == 201, "{}", put.text);
    api.post(
        "/v1/instances",
        &serde_json::json!({"machine": "order", "version": 1, "instance_id": id,
            "initial_ctx": {"amount": amount}}),
    )
    .expect(201)
    .json()
}
