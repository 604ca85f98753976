//! `GET /v1/watch`: a watch stream over WebSocket (RFC 6455) — WATCH_ALL or
//! WATCH_INSTANCE with their filters as query parameters, one JSON event
//! per text message.
//!
//! The stream is an RCP subscription: the same `watch_ops` create it (same
//! parameter checks, same start point, same `from_offset` replay and
//! retention check), the same `watch::deliver::deliver_events` picks its
//! events (ring while it keeps up, the shards' logs when it fell behind),
//! and the same event message (PROTOCOL.md §2.4) is sent, one per message.
//! So the slow-consumer rule is RCP's: nothing is dropped, the server holds
//! at most one delivery round per stream (`WATCH_EVENTS_PER_ROUND_MAX` ring
//! events, or one catch-up read of `WATCH_CATCHUP_BYTES_PER_SHARD_MAX` per
//! shard, plus tungstenite's write buffer) and encodes the next only once
//! the socket took it, a stream that falls behind
//! the ring is served from the logs at the pace its socket takes, and one
//! whose next event was compacted away is closed (1011, with the reason).
//!
//! The upgrade is answered by the route (`upgrade`) and the socket is taken
//! over once hyper is done with the connection (`serve`, from
//! `http::serve_connection`): see `io::drive`.
//!
//! Authentication, when the server requires it: `Authorization: Bearer` on
//! the upgrade request, or — browsers cannot set headers on a WebSocket —
//! a first text message `{"token":"…"}` within `WS_AUTH_TIMEOUT_MS`. Nothing
//! is sent before that. A wrong or missing token closes the stream with
//! 1008 (policy violation) and the reason.
//!
//! Bounds: a client message is at most `WS_CLIENT_MESSAGE_BYTES_MAX` (1009
//! beyond); the server pings every `WS_PING_INTERVAL_MS` and closes (1008) a
//! stream it heard nothing from — no pong, no message — for
//! `WS_IDLE_TIMEOUT_MS`; the stream keeps the seat its HTTP connection held
//! (`network.max_connections`) and graceful shutdown closes it with 1001
//! "server shutting down".

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message};
use async_tungstenite::{WebSocketReceiver, WebSocketSender, WebSocketStream};
use bytes::Bytes;
use futures_lite::future;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::{Map, Value};
use shards::{EngineResult, ErrorCode};

use super::api::{error_response, ConnState};
use super::errors::HttpError;
use super::io::HTTP_CLOSE_TIMEOUT_MS;
use super::routes::parse_query;
use crate::protocol::frame::{OutputMode, FRAME_PAYLOAD_MAX_BYTES};
use crate::server::connection::{ByteStream, WRITE_BUFFER_FLUSH_BYTES};
use crate::server::context::{ConnHandle, ServerCtx};
use crate::server::ops::watch_ops;
use crate::server::refusals::RefusalCause;
use crate::watch::deliver::deliver_events;
use crate::watch::subscription::ConnWatch;

/// Largest message (and frame) a client may send: the stream only expects
/// the `{"token":…}` message, pings, pongs and a close.
pub const WS_CLIENT_MESSAGE_BYTES_MAX: usize = 4 * 1024;
/// Longest the server waits for the `{"token":…}` message when the upgrade
/// request carried no `Authorization` header and a token is required.
pub const WS_AUTH_TIMEOUT_MS: u64 = 5_000;
/// The server pings a stream this often.
pub const WS_PING_INTERVAL_MS: u64 = 15_000;
/// A stream the server heard nothing from (no pong, no message) for this
/// long is closed: its client is gone or stopped reading altogether.
pub const WS_IDLE_TIMEOUT_MS: u64 = 45_000;
/// tungstenite's write buffer at most: an event message is at most one RCP
/// frame, so one whole message always fits.
pub const WS_WRITE_BUFFER_BYTES_MAX: usize = FRAME_PAYLOAD_MAX_BYTES + WRITE_BUFFER_FLUSH_BYTES;
/// A close reason is at most 123 bytes (RFC 6455 §5.5: a control frame's
/// payload is at most 125 bytes, 2 of them the code).
const WS_CLOSE_REASON_BYTES_MAX: usize = 123;

/// Query parameters of `/v1/watch`: WATCH_ALL's and WATCH_INSTANCE's.
pub const WATCH_QUERY: &[&str] = &[
    "instance_id",
    "machines",
    "from_states",
    "to_states",
    "events",
    "include_ctx",
    "from_offset",
];
const LIST_PARAMS: &[&str] = &["machines", "from_states", "to_states", "events"];

/// What the route decided for the connection, carried to `serve`.
pub struct Plan {
    params: Value,
    auth: Auth,
}

enum Auth {
    /// No token needed, or a good one in the header: subscribed already.
    Subscribed(Subscribed),
    /// A token is needed and comes as the first message.
    FirstMessage,
    /// The header's token was refused: close with this reason.
    Refused(String),
}

struct Subscribed {
    watch: Rc<RefCell<ConnWatch>>,
    /// `{"type":"subscribed",…}`: the WATCH_* result, the stream's first message.
    ack: String,
}

/// Answer a `GET /v1/watch`: `101 Switching Protocols` (and the plan for
/// `serve` in `conn.upgrade`), or an HTTP error when it is not a WebSocket
/// request or its parameters are refused.
pub async fn upgrade(conn: &ConnState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match prepare(conn, &req).await {
        Ok((plan, accept)) => {
            *conn.upgrade.borrow_mut() = Some(plan);
            switching_protocols(&accept)
        }
        Err(e) => error_response(&e),
    }
}

async fn prepare(conn: &ConnState, req: &Request<Incoming>) -> Result<(Plan, String), HttpError> {
    let accept = handshake_key(req.headers())?;
    let params = watch_params(req.uri().query().unwrap_or(""))?;
    let tokens = &conn.ctx.tokens;
    let auth = match req.headers().get(header::AUTHORIZATION) {
        _ if !tokens.required() => None,
        None => Some(Auth::FirstMessage),
        Some(value) => {
            let text = value.to_str().unwrap_or("").trim();
            let (scheme, token) = text.split_once(' ').unwrap_or((text, ""));
            match tokens.check(&scheme.to_ascii_lowercase(), token.trim()) {
                Ok(()) => None,
                Err(e) => {
                    refused(&conn.ctx, conn.peer, &e.message);
                    Some(Auth::Refused(e.message))
                }
            }
        }
    };
    let auth = match auth {
        Some(pending) => pending,
        // Subscribe before answering 101: every event committed after the
        // client saw the answer is in the stream.
        None => Auth::Subscribed(
            subscribe(&conn.ctx, &params)
                .await
                .map_err(HttpError::rcp)?,
        ),
    };
    Ok((Plan { params, auth }, accept))
}

fn refused(ctx: &ServerCtx, peer: Option<std::net::SocketAddr>, why: &str) {
    ctx.refusals.refuse(RefusalCause::AuthFailed, peer, || {
        format!("HTTP API WebSocket: {why}")
    });
}

/// The `Sec-WebSocket-Accept` value for a valid WebSocket upgrade request.
fn handshake_key(headers: &HeaderMap) -> Result<String, HttpError> {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    let upgrade_required = |why: &str| {
        let mut e = HttpError::http(
            StatusCode::UPGRADE_REQUIRED,
            ErrorCode::BadRequest,
            format!("/v1/watch is a WebSocket endpoint: {why}"),
        );
        e.header = Some((header::UPGRADE, "websocket".into()));
        e
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return Err(upgrade_required(
            "send `Connection: Upgrade` and `Upgrade: websocket`",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        let mut e = upgrade_required("only WebSocket version 13 is spoken");
        e.header = Some((header::SEC_WEBSOCKET_VERSION, "13".into()));
        return Err(e);
    }
    match headers.get(header::SEC_WEBSOCKET_KEY) {
        Some(key) if !key.is_empty() => Ok(derive_accept_key(key.as_bytes())),
        _ => Err(HttpError::bad_request("missing Sec-WebSocket-Key")),
    }
}

/// The query as WATCH_ALL / WATCH_INSTANCE params. Lists are comma
/// separated or repeated (`machines=a,b` or `machines=a&machines=b`);
/// values are passed on as text where the op wants another type, so the
/// op's own checks refuse them with RCP's messages.
fn watch_params(query: &str) -> Result<Value, HttpError> {
    let mut params = Map::new();
    for (key, value) in parse_query(query)? {
        if !WATCH_QUERY.contains(&key.as_str()) {
            return Err(HttpError::bad_request(format_args!(
                "unknown query parameter `{key}` (this route takes: {})",
                WATCH_QUERY.join(", ")
            )));
        }
        if LIST_PARAMS.contains(&key.as_str()) {
            let list = params
                .entry(key)
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(items) = list {
                items.extend(
                    value
                        .split(',')
                        .filter(|v| !v.is_empty())
                        .map(|v| Value::String(v.to_string())),
                );
            }
            continue;
        }
        let typed = match (key.as_str(), value.as_str()) {
            ("include_ctx", "true") => Value::Bool(true),
            ("include_ctx", "false") => Value::Bool(false),
            ("from_offset", v) => v
                .parse::<u64>()
                .map(Value::from)
                .unwrap_or(Value::String(value.clone())),
            _ => Value::String(value.clone()),
        };
        params.insert(key, typed);
    }
    Ok(Value::Object(params))
}

/// Create the subscription: WATCH_INSTANCE with `instance_id`, else WATCH_ALL.
async fn subscribe(ctx: &ServerCtx, params: &Value) -> EngineResult<Subscribed> {
    let watch = Rc::new(RefCell::new(ConnWatch::new(OutputMode::Jsonl)));
    let result = if params.get("instance_id").is_some() {
        watch_ops::watch_instance(ctx, &watch, params).await?
    } else {
        watch_ops::watch_all(ctx, &watch, params).await?
    };
    let mut ack = Map::new();
    ack.insert("type".into(), Value::String("subscribed".into()));
    if let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&result) {
        ack.extend(fields);
    }
    Ok(Subscribed {
        watch,
        ack: Value::Object(ack).to_string(),
    })
}

fn switching_protocols(accept: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(value) = HeaderValue::from_str(accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}

/// Why a stream ended.
enum End {
    /// The client closed, went away or broke the protocol.
    Client(Option<WsError>),
    /// Graceful shutdown.
    Shutdown,
    /// Nothing heard from the client for `WS_IDLE_TIMEOUT_MS`.
    Idle,
    /// The events it needs are gone from the logs (or cannot be encoded).
    Behind(String),
    /// The socket refused our writes.
    WriteFailed,
}

/// Run the WebSocket on the socket hyper handed back (`read_ahead`: bytes
/// hyper read past the upgrade request) until it ends.
pub async fn serve<S: ByteStream>(
    ctx: Rc<ServerCtx>,
    stream: S,
    read_ahead: Bytes,
    plan: Plan,
    handle: &ConnHandle,
) {
    let config = WebSocketConfig::default()
        .max_message_size(Some(WS_CLIENT_MESSAGE_BYTES_MAX))
        .max_frame_size(Some(WS_CLIENT_MESSAGE_BYTES_MAX))
        .max_write_buffer_size(WS_WRITE_BUFFER_BYTES_MAX);
    let ws = WebSocketStream::from_partially_read(
        stream,
        read_ahead.to_vec(),
        Role::Server,
        Some(config),
    )
    .await;
    let (mut tx, mut rx) = ws.split();
    let subscribed = match plan.auth {
        Auth::Subscribed(s) => s,
        Auth::Refused(why) => return close(&mut tx, CloseCode::Policy, &why).await,
        Auth::FirstMessage => {
            if let Err(why) = first_message_auth(&ctx, &mut rx, handle).await {
                return close(&mut tx, CloseCode::Policy, &why).await;
            }
            match subscribe(&ctx, &plan.params).await {
                Ok(s) => s,
                Err(e) => {
                    let code = 4000 + HttpError::rcp(e.clone()).status.as_u16();
                    let reason = format!("{}: {}", e.code.as_str(), e.message);
                    return close(&mut tx, CloseCode::from(code), &reason).await;
                }
            }
        }
    };
    handle.set_watch(subscribed.watch.clone());
    let end = stream_events(&ctx, &mut tx, &mut rx, &subscribed, handle).await;
    match end {
        End::Client(Some(WsError::Capacity(_))) => {
            let why = format!("messages are limited to {WS_CLIENT_MESSAGE_BYTES_MAX} bytes");
            close(&mut tx, CloseCode::Size, &why).await
        }
        End::Client(_) | End::WriteFailed => close(&mut tx, CloseCode::Normal, "").await,
        End::Shutdown => close(&mut tx, CloseCode::Away, "server shutting down").await,
        End::Idle => {
            let why = format!("nothing heard from the client for {WS_IDLE_TIMEOUT_MS} ms");
            close(&mut tx, CloseCode::Policy, &why).await
        }
        End::Behind(why) => {
            tracing::warn!("closing a WebSocket watch stream: {why}");
            close(&mut tx, CloseCode::Error, &why).await
        }
    }
}

/// Wait for `{"token":"…"}` and check it.
async fn first_message_auth<S: ByteStream>(
    ctx: &ServerCtx,
    rx: &mut WebSocketReceiver<S>,
    handle: &ConnHandle,
) -> Result<(), String> {
    let first =
        future::or(
            async {
                loop {
                    match rx.next().await {
                        Some(Ok(Message::Text(text))) => return Ok(text.to_string()),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        _ => return Err(
                            "authentication required: the first message must be {\"token\":\"…\"}"
                                .to_string(),
                        ),
                    }
                }
            },
            async {
                future::or(
                    async {
                        glommio::timer::sleep(Duration::from_millis(WS_AUTH_TIMEOUT_MS)).await;
                    },
                    handle.stopped(),
                )
                .await;
                Err(format!(
                "authentication required: no {{\"token\":…}} message within {WS_AUTH_TIMEOUT_MS} ms"
            ))
            },
        )
        .await?;
    let token = serde_json::from_str::<Value>(&first)
        .ok()
        .and_then(|v| v.get("token").and_then(Value::as_str).map(str::to_string))
        .ok_or_else(|| {
            "authentication required: the first message must be {\"token\":\"…\"}".to_string()
        })?;
    ctx.tokens.check("bearer", &token).map_err(|e| {
        refused(ctx, handle.peer, &e.message);
        e.message
    })
}

/// Send events until the stream ends; answer pings, send our own.
async fn stream_events<S: ByteStream>(
    ctx: &ServerCtx,
    tx: &mut WebSocketSender<S>,
    rx: &mut WebSocketReceiver<S>,
    subscribed: &Subscribed,
    handle: &ConnHandle,
) -> End {
    let last_heard = Cell::new(Instant::now());
    let ping_due = Cell::new(false);
    let watch = &subscribed.watch;
    let reader = async {
        loop {
            match rx.next().await {
                None => return End::Client(None),
                Some(Err(e)) => return End::Client(Some(e)),
                Some(Ok(Message::Close(_))) => return End::Client(None),
                // Pongs, pings (tungstenite answers them), anything else.
                Some(Ok(_)) => last_heard.set(Instant::now()),
            }
        }
    };
    let writer = async {
        if tx
            .send(Message::text(subscribed.ack.clone()))
            .await
            .is_err()
        {
            return End::WriteFailed;
        }
        let wake_rx = watch.borrow().wake_rx.clone();
        let mut out = Vec::with_capacity(WRITE_BUFFER_FLUSH_BYTES);
        loop {
            let more = match deliver_events(ctx, watch, &mut out).await {
                Ok(more) => more,
                Err(why) => return End::Behind(why),
            };
            for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let text = String::from_utf8_lossy(line).into_owned();
                if tx.feed(Message::text(text)).await.is_err() {
                    return End::WriteFailed;
                }
            }
            out.clear();
            if ping_due.replace(false) && tx.feed(Message::Ping(Bytes::new())).await.is_err() {
                return End::WriteFailed;
            }
            if tx.flush().await.is_err() {
                return End::WriteFailed;
            }
            if !more {
                let _ = wake_rx.recv_async().await;
            }
        }
    };
    let keepalive = async {
        loop {
            glommio::timer::sleep(Duration::from_millis(WS_PING_INTERVAL_MS)).await;
            if last_heard.get().elapsed() >= Duration::from_millis(WS_IDLE_TIMEOUT_MS) {
                return End::Idle;
            }
            ping_due.set(true);
            let _ = watch.borrow().waker.try_send(());
        }
    };
    let stop = async {
        handle.stopped().await;
        End::Shutdown
    };
    future::or(future::or(reader, writer), future::or(keepalive, stop)).await
}

/// Send a close frame (within `HTTP_CLOSE_TIMEOUT_MS`); the socket is
/// dropped after.
async fn close<S: ByteStream>(tx: &mut WebSocketSender<S>, code: CloseCode, reason: &str) {
    let mut end = reason.len().min(WS_CLOSE_REASON_BYTES_MAX);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let frame = CloseFrame {
        code,
        reason: reason[..end].to_string().into(),
    };
    future::or(
        async {
            let _ = tx.close(Some(frame)).await;
        },
        async {
            glommio::timer::sleep(Duration::from_millis(HTTP_CLOSE_TIMEOUT_MS)).await;
        },
    )
    .await;
}
