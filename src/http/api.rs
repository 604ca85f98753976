//! One HTTP request of the API: route, bearer check, body, the RCP
//! operation behind the route (or the webhook operation), the JSON answer.
//!
//! The operation runs through `dispatch::run_request` — the code RCP
//! connections use — with a reply channel of its own, so semantics,
//! durability (the answer comes only once the write is durable) and error
//! messages are those of RCP. A session is not kept between requests: the
//! bearer token is checked on every request, against the same `TokenSet`
//! as RCP's AUTH.
//!
//! hyper calls the service for one request of a connection at a time and
//! writes answers in order, so a connection has at most one request in
//! flight and requests of one connection run in the order sent (RCP's
//! per-connection order, PROTOCOL.md §3.8).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::Value;
use shards::shard::ReplyTo;
use shards::{EngineError, EngineResult, ErrorCode};

use super::errors::HttpError;
use super::io::ReadClock;
use super::routes::{self, Action, BodyUse, Inputs, NoRoute, WebhookOp};
use super::{openapi, HTTP_BODY_BYTES_MAX, HTTP_REQUEST_READ_TIMEOUT_MS};
use crate::protocol::frame::OutputMode;
use crate::protocol::op::Op;
use crate::protocol::request::parse_json_document;
use crate::server::context::ServerCtx;
use crate::server::dispatch::run_request;
use crate::server::refusals::RefusalCause;
use crate::server::session::Session;
use crate::watch::subscription::ConnWatch;

const CONTENT_TYPE_JSON: &str = "application/json";

/// What every request of one connection shares.
pub struct ConnState {
    pub ctx: Rc<ServerCtx>,
    pub clock: Rc<ReadClock>,
    pub peer: Option<SocketAddr>,
    /// Set by a `GET /v1/watch` answered `101`: the WebSocket to run on the
    /// socket once hyper hands it back.
    pub upgrade: RefCell<Option<super::ws::Plan>>,
}

/// A successful answer: status and JSON body.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
}

/// Answer one request. Never fails: every error is a JSON error answer.
pub async fn respond(conn: &ConnState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let special = routes::find(req.method(), req.uri().path())
        .ok()
        .map(|m| m.route.action);
    let announces_body = announces_body(req.headers());
    let mut body_read = false;
    let result = match special {
        Some(Action::Watch) => {
            let response = super::ws::upgrade(conn, req).await;
            conn.clock
                .arm(Duration::from_millis(HTTP_REQUEST_READ_TIMEOUT_MS));
            return response;
        }
        Some(Action::Page(asset)) => return super::page::response(asset),
        _ => handle(conn, req, &mut body_read).await,
    };
    // From here the client has the read timeout to take the answer and to
    // send its next request.
    conn.clock
        .arm(Duration::from_millis(HTTP_REQUEST_READ_TIMEOUT_MS));
    let mut response = match result {
        Ok(answer) => json_response(answer.status, answer.body),
        Err(e) => error_response(&e),
    };
    if announces_body && !body_read {
        // Answered before its body was read (refused authentication, no
        // such route): the connection cannot carry another request, and
        // hyper closes it. Say so, or a client that pools connections
        // sends its next request into a closing socket.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Whether the request's head says a body follows.
fn announces_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

async fn handle(
    conn: &ConnState,
    req: Request<Incoming>,
    body_read: &mut bool,
) -> Result<Answer, HttpError> {
    let matched = routes::find(req.method(), req.uri().path()).map_err(no_route)?;
    let route = matched.route;
    if route.auth {
        authorize(conn, req.headers())?;
    }
    let op = match route.action {
        Action::Health => return Ok(ok(br#"{"status":"ok"}"#.to_vec())),
        Action::OpenApi => return Ok(ok(openapi::DOCUMENT.as_bytes().to_vec())),
        Action::Webhook(op) => return webhook(conn, op, matched.path_params, req).await,
        Action::Op(op) => op,
        // Answered by `respond` before coming here.
        Action::Watch | Action::Page(_) => return Err(no_route(NoRoute::NotFound)),
    };
    let query = routes::parse_query(req.uri().query().unwrap_or(""))?;
    let idempotency_key = if route.idempotency_key {
        idempotency_key(req.headers())?
    } else {
        None
    };
    let body = match route.body {
        BodyUse::None => Value::Null,
        BodyUse::Params | BodyUse::Definition => {
            let mut bytes = read_body(req.into_body()).await?;
            *body_read = true;
            if bytes.is_empty() {
                Value::Null
            } else {
                parse_json_document(&mut bytes, route.body.levels_around())?
            }
        }
    };
    // The whole request is here: the server works, the client waits.
    conn.clock.disarm();
    let params = routes::build_params(
        route,
        Inputs {
            path_params: matched.path_params,
            query,
            body,
            idempotency_key,
        },
    )?;
    let started = Instant::now();
    let result = execute(&conn.ctx, op, params, conn.peer).await;
    conn.ctx.metrics.request_answered(
        Some(op),
        started.elapsed(),
        result.as_ref().err().map(|e| e.code),
    );
    let body = result?;
    Ok(Answer {
        status: success_status(op, &body),
        body,
    })
}

/// A webhook route (`crate::webhooks`): no query parameters; the body, if
/// the route reads one, is a JSON object.
async fn webhook(
    conn: &ConnState,
    op: WebhookOp,
    path_params: Vec<(&'static str, String)>,
    req: Request<Incoming>,
) -> Result<Answer, HttpError> {
    if req.uri().query().is_some_and(|q| !q.is_empty()) {
        return Err(HttpError::bad_request(
            "unknown query parameter (this route takes: none)",
        ));
    }
    let body = if op == WebhookOp::Create {
        let mut bytes = read_body(req.into_body()).await?;
        if bytes.is_empty() {
            Value::Null
        } else {
            parse_json_document(&mut bytes, BodyUse::Params.levels_around())?
        }
    } else {
        Value::Null
    };
    conn.clock.disarm();
    let Some(hooks) = conn.ctx.webhooks.clone() else {
        return Err(HttpError::rcp(EngineError::internal(
            "webhooks are served by core 0 only",
        )));
    };
    let id = path_params
        .iter()
        .find(|(name, _)| *name == "id")
        .map_or("", |(_, v)| v.as_str());
    let (status, value) = match op {
        WebhookOp::Create => (
            StatusCode::CREATED,
            hooks
                .create(&conn.ctx, &body)
                .await
                .map_err(HttpError::rcp)?,
        ),
        WebhookOp::List => (StatusCode::OK, hooks.list()),
        WebhookOp::Get => (StatusCode::OK, hooks.view(id).map_err(HttpError::rcp)?),
        WebhookOp::Delete => (
            StatusCode::OK,
            hooks.delete(id).await.map_err(HttpError::rcp)?,
        ),
        WebhookOp::Resume => (
            StatusCode::OK,
            hooks.resume(id).await.map_err(HttpError::rcp)?,
        ),
    };
    Ok(Answer {
        status,
        body: serde_json::to_vec(&value).unwrap_or_default(),
    })
}

fn ok(body: Vec<u8>) -> Answer {
    Answer {
        status: StatusCode::OK,
        body,
    }
}

/// 201 for what a request created; 200 otherwise.
fn success_status(op: Op, body: &[u8]) -> StatusCode {
    let created = match op {
        Op::CreateInstance => true,
        Op::PutMachine => serde_json::from_slice::<Value>(body)
            .is_ok_and(|v| v.get("created") == Some(&Value::Bool(true))),
        _ => false,
    };
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

/// Run `op` as RCP would and wait for its answer. The operation runs in a
/// task of its own: hyper drops a request's future when its client goes
/// away, and a PUT_MACHINE being installed on every shard or an atomic
/// batch between prepare and commit must not be cut off half-way (over
/// RCP, too, a request once dispatched runs to its end).
pub async fn execute(
    ctx: &Rc<ServerCtx>,
    op: Op,
    mut params: Value,
    peer: Option<SocketAddr>,
) -> EngineResult<Vec<u8>> {
    let (tx, rx) = flume::bounded(1);
    let ctx = ctx.clone();
    glommio::spawn_local(async move {
        // The bearer token was checked for this request; HTTP keeps no
        // session.
        let mut session = Session {
            authenticated: true,
            jsonl: false,
        };
        // No route of the API watches; the operations still want a place.
        let watch = Rc::new(RefCell::new(ConnWatch::new(OutputMode::Rcpx)));
        let reply = ReplyTo::internal(tx, 0);
        run_request(&ctx, &mut session, &watch, op, &mut params, reply, peer).await;
    })
    .detach();
    match rx.recv_async().await {
        Ok(reply) => reply.body,
        Err(_) => Err(EngineError::internal(
            "the operation ended without an answer",
        )),
    }
}

fn no_route(why: NoRoute) -> HttpError {
    match why {
        NoRoute::NotFound => {
            HttpError::http(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such route")
        }
        NoRoute::BadPath => HttpError::bad_request("the path is not valid percent-encoded UTF-8"),
        NoRoute::MethodNotAllowed(verbs) => {
            let allow: Vec<&str> = verbs.iter().map(|v| v.as_str()).collect();
            let mut e = HttpError::http(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::BadRequest,
                format!("method not allowed here (allowed: {})", allow.join(", ")),
            );
            e.header = Some((header::ALLOW, allow.join(", ")));
            e
        }
    }
}

/// `Authorization: Bearer <token>` when the server requires authentication.
fn authorize(conn: &ConnState, headers: &HeaderMap) -> Result<(), HttpError> {
    let tokens = &conn.ctx.tokens;
    if !tokens.required() {
        return Ok(());
    }
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized(EngineError::new(
            ErrorCode::Unauthorized,
            "authentication required",
        )));
    };
    let text = value.to_str().unwrap_or("");
    let (scheme, token) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
    match tokens.check(&scheme.to_ascii_lowercase(), token.trim()) {
        Ok(()) => Ok(()),
        Err(e) => {
            conn.ctx
                .refusals
                .refuse(RefusalCause::AuthFailed, conn.peer, || {
                    format!("HTTP API: {}", e.message)
                });
            Err(unauthorized(e))
        }
    }
}

fn unauthorized(e: EngineError) -> HttpError {
    let mut e = HttpError::rcp(e);
    e.header = Some((header::WWW_AUTHENTICATE, "Bearer".into()));
    e
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, HttpError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(value) => match value.to_str() {
            Ok(key) if !key.is_empty() => Ok(Some(key.to_string())),
            _ => Err(HttpError::bad_request(
                "the Idempotency-Key header must be non-empty visible ASCII",
            )),
        },
    }
}

/// The whole body, at most `HTTP_BODY_BYTES_MAX` bytes (413 beyond; a
/// declared `Content-Length` over it is refused before anything is read).
async fn read_body(body: Incoming) -> Result<Vec<u8>, HttpError> {
    let too_large = || {
        HttpError::http(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BadRequest,
            format!("the request body is larger than {HTTP_BODY_BYTES_MAX} bytes"),
        )
    };
    if body.size_hint().lower() > HTTP_BODY_BYTES_MAX as u64 {
        return Err(too_large());
    }
    match Limited::new(body, HTTP_BODY_BYTES_MAX).collect().await {
        // Without a copy when the body arrived in one piece.
        Ok(collected) => Ok(Vec::from(collected.to_bytes())),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(HttpError::bad_request(format_args!(
            "cannot read the request body: {e}"
        ))),
    }
}

pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE_JSON),
    );
    response
}

pub fn error_response(e: &HttpError) -> Response<Full<Bytes>> {
    let mut response = json_response(e.status, e.body());
    if let Some((name, value)) = &e.header {
        if let Ok(value) = HeaderValue::from_str(value) {
            response.headers_mut().insert(name.clone(), value);
        }
    }
    response
}
