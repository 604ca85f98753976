//! The HTTP/JSON API (`--http-listen`, default 127.0.0.1:7402): hyper's
//! HTTP/1.1 server on core 0's executor, in front of the same
//! dispatch, shards, durability, tokens and TLS settings as RCP.
//!
//! * `routes.rs` — the route table and how a route becomes RCP params;
//! * `api.rs` — one request: bearer check, body, the operation, the answer;
//! * `errors.rs` — the one table from RCP error code to HTTP status;
//! * `io.rs` — hyper's I/O on glommio streams, and the connection driver;
//! * `openapi.rs` — the OpenAPI 3 document served at `/openapi.json`;
//! * `ws.rs` — `GET /v1/watch`, watch streams over WebSocket;
//! * `page.rs` — the live page at `/` (files in `page/`).
//!
//! Bounds:
//! * connections: HTTP connections are client connections like RCP ones —
//!   registered with the server (`ServerCtx::conns`), counted against the
//!   same `network.max_connections`, stopped by the same graceful shutdown.
//!   One over the limit is answered `429 RATE_LIMITED` and closed (at most
//!   `HTTP_REFUSALS_IN_PROGRESS_MAX` such answers at once, each within
//!   `HTTP_REFUSAL_TIMEOUT_MS`; beyond, it is closed unanswered);
//! * requests in flight: one per connection (HTTP/1.1 answers in order and
//!   hyper serves a connection's requests one after the other), so at most
//!   `max_connections` in all;
//! * request head: `HTTP_REQUEST_HEAD_BYTES_MAX`, give or take the last
//!   socket read (`io::HTTP_READ_CHUNK_BYTES`; hyper checks its buffer
//!   between reads and answers 431 beyond);
//! * request body: `HTTP_BODY_BYTES_MAX` (413 beyond);
//! * time: a request must arrive — head and body — within
//!   `HTTP_REQUEST_READ_TIMEOUT_MS` of the connection opening or of the
//!   previous answer, which also closes idle keep-alive connections and
//!   those whose client does not take its answer (`io::ReadClock`).
//!
//! Upgrades: hyper's `with_upgrades` needs a `Send` socket, which glommio's
//! is not; `io::drive` instead runs the connection with hyper's
//! `poll_without_shutdown` and hands back its parts (socket and bytes read
//! ahead) when hyper is done, so a route that answers `101 Switching
//! Protocols` (a WebSocket `GET /v1/watch`) can take the socket over there.

pub mod api;
pub mod errors;
pub mod io;
pub mod openapi;
pub mod page;
pub mod routes;
pub mod ws;

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future::{self, BoxedLocal};
use futures_rustls::TlsAcceptor;
use glommio::net::TcpListener;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::StatusCode;
use shards::ErrorCode;

use self::errors::HttpError;
use self::io::{drive, HyperIo, ReadClock};
use crate::protocol::frame::FRAME_PAYLOAD_MAX_BYTES;
use crate::server::acceptor::{next_connection, over_connection_limit};
use crate::server::connection::ByteStream;
use crate::server::context::{ConnHandle, ConnRegistration, ServerCtx};
use crate::server::refusals::RefusalCause;
use crate::server::tls;

/// Largest request body: the largest RCP message.
pub const HTTP_BODY_BYTES_MAX: usize = FRAME_PAYLOAD_MAX_BYTES;
/// Largest request head (request line and headers): hyper's read buffer.
pub const HTTP_REQUEST_HEAD_BYTES_MAX: usize = 64 * 1024;
/// Longest a client may take to send a request (head and body), counted
/// from the connection opening or from the previous answer.
pub const HTTP_REQUEST_READ_TIMEOUT_MS: u64 = 10_000;
/// Connections over the limit being answered at once; more are closed.
pub const HTTP_REFUSALS_IN_PROGRESS_MAX: usize = 64;
/// Longest a connection over the limit is served its refusal.
pub const HTTP_REFUSAL_TIMEOUT_MS: u64 = 2_000;

/// Serve the API on `listener` until `stop` is dropped or sent to (the
/// listener is closed then); connections already open end with the
/// server's graceful shutdown.
pub async fn serve(
    ctx: Rc<ServerCtx>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    stop: flume::Receiver<()>,
) {
    future::or(accept_forever(ctx, &listener, tls), async {
        let _ = stop.recv_async().await;
    })
    .await;
}

async fn accept_forever(ctx: Rc<ServerCtx>, listener: &TcpListener, tls: Option<TlsAcceptor>) {
    let refusing = Rc::new(Cell::new(0usize));
    loop {
        let (stream, peer) = next_connection(listener, "HTTP API: ").await;
        if let Some(max) = over_connection_limit(&ctx, peer, "HTTP API: ") {
            if refusing.get() >= HTTP_REFUSALS_IN_PROGRESS_MAX {
                continue;
            }
            refusing.set(refusing.get() + 1);
            let refusing = refusing.clone();
            let tls = tls.clone();
            glommio::spawn_local(async move {
                let refusal = async {
                    match tls {
                        None => refuse_over_limit(stream, max).await,
                        Some(acceptor) => {
                            if let Ok(stream) = tls::handshake(&acceptor, stream).await {
                                refuse_over_limit(stream, max).await;
                            }
                        }
                    }
                };
                future::or(refusal, async {
                    glommio::timer::sleep(Duration::from_millis(HTTP_REFUSAL_TIMEOUT_MS)).await;
                })
                .await;
                refusing.set(refusing.get() - 1);
            })
            .detach();
            continue;
        }
        ctx.metrics.connection_accepted();
        let registration = ConnRegistration::new(&ctx, peer, ctx.cores.seat_on(ctx.core));
        let ctx = ctx.clone();
        let tls = tls.clone();
        glommio::spawn_local(async move {
            let handle = registration.handle.clone();
            match tls {
                None => serve_connection(ctx, stream, &handle, peer).await,
                Some(acceptor) => {
                    let shaken = future::or(
                        async { Some(tls::handshake(&acceptor, stream).await) },
                        async {
                            handle.stopped().await;
                            None
                        },
                    )
                    .await;
                    match shaken {
                        Some(Ok(stream)) => serve_connection(ctx, stream, &handle, peer).await,
                        Some(Err(e)) => {
                            ctx.refusals.refuse(RefusalCause::TlsHandshake, peer, || {
                                format!("HTTP API: TLS handshake failed: {e}")
                            })
                        }
                        None => {}
                    }
                }
            }
            drop(registration);
        })
        .detach();
    }
}

/// Serve one connection's requests until it ends, times out or the server
/// stops it.
async fn serve_connection<S: ByteStream>(
    ctx: Rc<ServerCtx>,
    stream: S,
    handle: &ConnHandle,
    peer: Option<SocketAddr>,
) {
    if handle.stopping() {
        return;
    }
    let clock = Rc::new(ReadClock::started(Duration::from_millis(
        HTTP_REQUEST_READ_TIMEOUT_MS,
    )));
    let state = Rc::new(api::ConnState {
        ctx: ctx.clone(),
        clock: clock.clone(),
        peer,
        upgrade: RefCell::new(None),
    });
    let served = state.clone();
    let service = service_fn(move |req| {
        let state = served.clone();
        let answer: BoxedLocal<Result<_, Infallible>> =
            Box::pin(async move { Ok(api::respond(&state, req).await) });
        answer
    });
    let conn = http1::Builder::new()
        .max_buf_size(HTTP_REQUEST_HEAD_BYTES_MAX)
        .serve_connection(HyperIo::new(stream), service);
    let driven = drive(conn, &clock, Some(handle)).await;
    let upgrade = state.upgrade.borrow_mut().take();
    match driven {
        Ok(mut parts) => match upgrade {
            // The last answer was `101 Switching Protocols`: the socket is
            // a WebSocket now.
            Some(plan) => ws::serve(ctx, parts.io.stream, parts.read_buf, plan, handle).await,
            None => io::close(&mut parts.io).await,
        },
        Err(io::TimedOut) => {
            tracing::debug!("HTTP API: closing a connection that kept to no deadline")
        }
    }
}

/// Answer every request of a connection over the limit with 429 and close.
async fn refuse_over_limit<S: ByteStream>(stream: S, max: usize) {
    let service = service_fn(move |_req| async move {
        let e = HttpError::http(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            format!("too many connections (max {max})"),
        );
        Ok::<_, Infallible>(api::error_response(&e))
    });
    let conn = http1::Builder::new()
        .keep_alive(false)
        .max_buf_size(HTTP_REQUEST_HEAD_BYTES_MAX)
        .serve_connection(HyperIo::new(stream), service);
    let _ = conn.await;
}
