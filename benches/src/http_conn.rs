//! One load connection over the HTTP/JSON API (`--transport http`): an
//! HTTP/1.1 keep-alive connection (hyper's client over tokio) driven by the
//! same generator, closed loop, checker and histogram as an RCP connection.
//!
//! The generator renders an RCP request; [`to_http`] turns it into the
//! route that runs the same operation (the RCP `params` object is the body:
//! the server takes a route's params from its body, the path's
//! `instance_id` winning). A 2xx body is the RCP `result` object, so
//! [`to_envelope`] wraps it in the RCP response envelope and the RCP
//! checker verifies it; any other status is counted under the RCP code in
//! its error body.
//!
//! One request per connection at a time: hyper's client sends a
//! connection's next request only after the previous answer, and the
//! server serves a connection's requests one after the other, so
//! `--pipeline` must be 1 ([`HTTP_PIPELINE_MAX`]).

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use memchr::memmem;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::conn::{BenchError, LoadOutcome, Pending, Shared};
use crate::frame;
use crate::response::{Checker, Failure, PREVIEW_BYTES_MAX};
use crate::workload::{Expect, Generator};

/// The HTTP API's port when `--http-addr` is not given (the server's
/// default `--http-listen` is 127.0.0.1:7402).
pub const HTTP_PORT_DEFAULT: u16 = 7402;
/// Requests outstanding per HTTP connection (see the module comment).
pub const HTTP_PIPELINE_MAX: usize = 1;
/// Largest response body read; a bigger one is a failure.
pub const HTTP_RESPONSE_BYTES_MAX: usize = 1024 * 1024;
/// How long opening a connection may take.
pub const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

const INSTANCES_PATH: &str = "/v1/instances";
const PARAMS_KEY: &[u8] = br#","params":"#;
const INSTANCE_ID_KEY: &[u8] = br#""instance_id":""#;

/// An HTTP request equivalent to one rendered RCP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    pub method: Method,
    pub path: String,
    /// `None` for a GET.
    pub body: Option<Bytes>,
    /// The status a success must carry (201 for a create).
    pub success: StatusCode,
}

/// The route for the RCP request `payload` (a frame's JSON) the generator
/// rendered for `expect`. Creates, applies and gets only.
pub fn to_http(payload: &[u8], expect: Expect) -> Result<HttpCall, String> {
    let start = memmem::find(payload, PARAMS_KEY)
        .ok_or_else(|| "rendered request has no params".to_string())?
        + PARAMS_KEY.len();
    // The params object runs to the envelope's closing brace.
    let params = payload
        .get(start..payload.len().saturating_sub(1))
        .filter(|p| p.starts_with(b"{") && payload.ends_with(b"}"))
        .ok_or_else(|| "rendered request does not end with its params".to_string())?;
    let instance_path = || -> Result<String, String> {
        let at = memmem::find(params, INSTANCE_ID_KEY)
            .ok_or_else(|| "rendered request has no instance_id".to_string())?
            + INSTANCE_ID_KEY.len();
        let len = memchr::memchr(b'"', &params[at..])
            .ok_or_else(|| "unterminated instance_id".to_string())?;
        let id = std::str::from_utf8(&params[at..at + len])
            .map_err(|_| "instance_id is not UTF-8".to_string())?;
        // The harness's ids are `bi-<hex>-<n>` / `bc-<hex>-<n>-<n>`: nothing
        // to percent-encode; anything else would be a harness bug.
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!("instance_id {id:?} needs percent-encoding"));
        }
        Ok(format!("{INSTANCES_PATH}/{id}"))
    };
    let body = || Some(Bytes::copy_from_slice(params));
    Ok(match expect {
        Expect::CreatedListed(_) | Expect::CreatedUnique => HttpCall {
            method: Method::POST,
            path: INSTANCES_PATH.to_string(),
            body: body(),
            success: StatusCode::CREATED,
        },
        Expect::Applied(_) => HttpCall {
            method: Method::POST,
            path: format!("{}/events", instance_path()?),
            body: body(),
            success: StatusCode::OK,
        },
        Expect::Got(_) => HttpCall {
            method: Method::GET,
            path: instance_path()?,
            body: None,
            success: StatusCode::OK,
        },
        Expect::Batched { .. } => return Err("BATCH has no HTTP workload".into()),
    })
}

fn preview(body: &[u8]) -> String {
    let cut = body.len().min(PREVIEW_BYTES_MAX);
    let mut text = String::from_utf8_lossy(&body[..cut]).into_owned();
    if cut < body.len() {
        text.push_str("...");
    }
    text
}

/// Turns an HTTP answer into the RCP response envelope the checker reads
/// (`out` is cleared first). Success needs exactly `success` (200 or 201);
/// an error body `{"error":{"code","message"}}` becomes a server failure
/// under its RCP code; any other answer is a bad result.
pub fn to_envelope(
    status: StatusCode,
    success: StatusCode,
    body: &[u8],
    id: u64,
    out: &mut Vec<u8>,
) -> Result<(), Failure> {
    out.clear();
    if status == success {
        out.extend_from_slice(br#"{"type":"response","id":""#);
        frame::push_decimal(out, id);
        out.extend_from_slice(br#"","status":"ok","result":"#);
        out.extend_from_slice(body);
        out.push(b'}');
        return Ok(());
    }
    let error: Option<Value> = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").cloned());
    let field = |k: &str| {
        error
            .as_ref()
            .and_then(|e| e.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    match (status.is_success(), field("code"), field("message")) {
        (false, Some(code), message) => Err(Failure::Server {
            code,
            message: format!("HTTP {status}: {}", message.unwrap_or_default()),
        }),
        _ => Err(Failure::BadResult(format!(
            "HTTP {status} (expected {success}): {}",
            preview(body)
        ))),
    }
}

/// An open HTTP/1.1 keep-alive connection.
pub struct HttpConn {
    sender: http1::SendRequest<Full<Bytes>>,
    authority: String,
    authorization: Option<String>,
}

/// `--http-addr`, or the host of `--addr` with [`HTTP_PORT_DEFAULT`].
pub fn default_http_addr(rcp_addr: &str) -> String {
    let host = rcp_addr.rsplit_once(':').map_or(rcp_addr, |(host, _)| host);
    format!("{host}:{HTTP_PORT_DEFAULT}")
}

impl HttpConn {
    /// Connects and runs hyper's connection task on this thread.
    pub async fn open(addr: &str, token: Option<&str>) -> Result<HttpConn, BenchError> {
        let connect = async {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect to {addr}: {e}"))?;
            stream
                .set_nodelay(true)
                .map_err(|e| format!("TCP_NODELAY: {e}"))?;
            http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP handshake with {addr}: {e}"))
        };
        let (sender, connection) = tokio::time::timeout(HTTP_CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| {
                BenchError(format!(
                    "connect to {addr}: no answer within {HTTP_CONNECT_TIMEOUT:?}"
                ))
            })?
            .map_err(BenchError)?;
        // Ends when the sender is dropped or the server closes; its error,
        // if any, surfaces in the next request.
        tokio::task::spawn_local(async move {
            let _ = connection.await;
        });
        Ok(HttpConn {
            sender,
            authority: addr.to_string(),
            authorization: token.map(|t| format!("Bearer {t}")),
        })
    }

    /// Sends one request and reads its whole answer.
    async fn exchange(&mut self, call: HttpCall) -> Result<(StatusCode, Bytes), String> {
        let mut builder = Request::builder()
            .method(call.method)
            .uri(call.path)
            .header(HOST, &self.authority);
        if let Some(auth) = &self.authorization {
            builder = builder.header(AUTHORIZATION, auth);
        }
        if call.body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(call.body.unwrap_or_default()))
            .map_err(|e| format!("building the request: {e}"))?;
        self.sender
            .ready()
            .await
            .map_err(|e| format!("connection lost: {e}"))?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), HTTP_RESPONSE_BYTES_MAX)
            .collect()
            .await
            .map_err(|e| format!("reading the response body: {e}"))?
            .to_bytes();
        Ok((status, body))
    }

    /// The closed loop with one request outstanding, until `shared.stop`
    /// (or the generator is used up); every answer verified.
    pub async fn run_load(
        mut self,
        index: usize,
        mut generator: Generator,
        shared: &Shared,
        mut checker: Checker,
    ) -> LoadOutcome {
        let mut outcome = LoadOutcome::new();
        let mut rendered = Vec::with_capacity(4096);
        let mut envelope = Vec::with_capacity(4096);
        let mut id = 1u64;
        while !shared.stop.get() && generator.has_next() {
            rendered.clear();
            let expect = generator.render_next(id, &mut rendered);
            let stamp_ns = generator.stamp_ns();
            let payload = match frame::decode(&rendered) {
                Ok(Some(d)) => &rendered[d.payload_start..d.payload_end],
                _ => {
                    outcome.fatal = Some("the generator rendered a bad frame".into());
                    break;
                }
            };
            let call = match to_http(payload, expect) {
                Ok(call) => call,
                Err(e) => {
                    outcome.fatal = Some(e);
                    break;
                }
            };
            let success = call.success;
            let sent_at = Instant::now();
            let answer = tokio::select! {
                r = self.exchange(call) => r,
                _ = shared.abort_notify.notified() => {
                    outcome.fatal = Some(
                        "gave up waiting: 1 request never answered within the drain timeout"
                            .into(),
                    );
                    break;
                }
            };
            let (status, body) = match answer {
                Ok(answer) => answer,
                Err(e) => {
                    outcome.fatal = Some(e);
                    break;
                }
            };
            let received_at = Instant::now();
            let completed_before = outcome.completed;
            let verdict = to_envelope(status, success, &body, id, &mut envelope).and_then(|()| {
                checker.check(
                    &envelope,
                    id,
                    expect,
                    generator.templates(),
                    generator.create_prefix(),
                )
            });
            let request = Pending {
                id,
                expect,
                sent_at,
                stamp_ns,
            };
            let measured = shared.in_window(received_at);
            let stop = outcome.record(shared, index, request, received_at, measured, verdict);
            shared
                .completed
                .set(shared.completed.get() + outcome.completed - completed_before);
            if stop {
                break;
            }
            id += 1;
        }
        outcome.finish(shared, index, checker.slow_path_count);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{OpKind, Templates};
    use std::rc::Rc;

    fn rendered(kind: OpKind) -> (Vec<u8>, Expect) {
        let templates = Rc::new(Templates::new("t1", 2, 4));
        let schedule: Rc<[OpKind]> = Rc::from(vec![kind]);
        let mut gen = Generator::load(templates, schedule, 0, 1);
        let mut buf = Vec::new();
        let expect = gen.render_next(7, &mut buf);
        let d = frame::decode(&buf).unwrap().unwrap();
        (buf[d.payload_start..d.payload_end].to_vec(), expect)
    }

    fn body_json(call: &HttpCall) -> Value {
        serde_json::from_slice(call.body.as_ref().unwrap()).unwrap()
    }

    #[test]
    fn a_create_posts_its_params_to_the_instances_collection() {
        let (payload, expect) = rendered(OpKind::Create);
        let call = to_http(&payload, expect).unwrap();
        assert_eq!(
            (call.method.clone(), call.path.as_str()),
            (Method::POST, "/v1/instances")
        );
        assert_eq!(call.success, StatusCode::CREATED);
        let body = body_json(&call);
        assert_eq!(body["machine"], "corestate-bench");
        assert_eq!(body["instance_id"], "bc-t1-0-7");
        assert_eq!(body["initial_ctx"]["d"], "xxxx");
    }

    #[test]
    fn an_apply_posts_its_event_to_the_instance() {
        let (payload, expect) = rendered(OpKind::Apply);
        let call = to_http(&payload, expect).unwrap();
        assert_eq!(call.method, Method::POST);
        assert_eq!(call.path, "/v1/instances/bi-t1-0/events");
        assert_eq!(call.success, StatusCode::OK);
        let body = body_json(&call);
        assert_eq!(body["event"], "go");
        assert_eq!(body["payload"]["d"], "xxxx");
    }

    #[test]
    fn a_get_has_no_body() {
        let (payload, expect) = rendered(OpKind::Get);
        let call = to_http(&payload, expect).unwrap();
        assert_eq!(
            (call.method, call.path.as_str(), call.body),
            (Method::GET, "/v1/instances/bi-t1-0", None)
        );
    }

    #[test]
    fn a_success_body_passes_the_rcp_checker_on_its_fast_path() {
        let templates = Templates::new("t1", 2, 4);
        let mut out = Vec::new();
        let body = br#"{"applied":true,"from_state":"a","to_state":"b","wal_offset":3}"#;
        to_envelope(StatusCode::OK, StatusCode::OK, body, 9, &mut out).unwrap();
        let mut checker = Checker::new(false);
        checker
            .check(&out, 9, Expect::Applied(Some(1)), &templates, b"")
            .unwrap();
        assert_eq!(checker.slow_path_count, 0);
        // The wrong state is caught by the same checker.
        let failure = checker
            .check(&out, 9, Expect::Applied(Some(0)), &templates, b"")
            .unwrap_err();
        assert_eq!(failure.code(), "BAD_RESULT");
    }

    #[test]
    fn an_error_status_is_counted_under_its_rcp_code() {
        let mut out = Vec::new();
        let body = br#"{"error":{"code":"INSTANCE_NOT_FOUND","message":"no such instance","retryable":false}}"#;
        let failure =
            to_envelope(StatusCode::NOT_FOUND, StatusCode::OK, body, 1, &mut out).unwrap_err();
        assert_eq!(failure.code(), "INSTANCE_NOT_FOUND");
        assert!(failure.describe().contains("404"));
    }

    #[test]
    fn a_wrong_success_status_or_a_bodiless_error_is_a_bad_result() {
        let mut out = Vec::new();
        let created = br#"{"instance_id":"x","state":"a"}"#;
        let failure =
            to_envelope(StatusCode::OK, StatusCode::CREATED, created, 1, &mut out).unwrap_err();
        assert_eq!(failure.code(), "BAD_RESULT");
        let failure = to_envelope(
            StatusCode::BAD_GATEWAY,
            StatusCode::OK,
            b"<html>",
            1,
            &mut out,
        )
        .unwrap_err();
        assert_eq!(failure.code(), "BAD_RESULT");
    }

    #[test]
    fn the_http_address_defaults_to_the_rcp_host() {
        assert_eq!(default_http_addr("127.0.0.1:7401"), "127.0.0.1:7402");
        assert_eq!(default_http_addr("[::1]:9000"), "[::1]:7402");
    }
}
