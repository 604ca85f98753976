//! The accept loop, on core 0: each accepted connection goes to the
//! acceptor core with the fewest open connections (`crate::server::cores`),
//! where one task serves it.
//!
//! * TLS: the handshake runs inside the connection's task, bounded by
//!   `TLS_HANDSHAKE_TIMEOUT_MS`, so the loop goes straight back to
//!   `accept`. A failed handshake (plain TCP on a TLS port, no or a wrong
//!   client certificate) closes that socket and logs a rate-limited warning.
//! * Connection limit: at most `max_connections` connections are open on
//!   all cores together (handshaking ones included). One over the limit is not just dropped,
//!   as rstmdb 0.3 does, which both official clients report as an
//!   unexplained "connection closed": it gets the answer `RATE_LIMITED`
//!   "too many connections (max N)" to its first request (the clients' HELLO),
//!   then a close. The Python client raises `ConnectionError("Handshake
//!   failed: too many connections (max N)")`, the Rust client
//!   `ClientError::ServerError { code: RATE_LIMITED, .. }`. Waiting for that
//!   first request is bounded: at most `REFUSALS_IN_PROGRESS_MAX` such
//!   sockets at once (beyond, closed at once), each for at most
//!   `REFUSAL_FIRST_REQUEST_WAIT_MS` and `REFUSAL_READ_BYTES_MAX` bytes.
//! * Shutdown: the loop ends when shutdown is requested; the listening
//!   socket is closed by the caller dropping it.

use std::cell::Cell;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future::{self, poll_fn};
use futures_rustls::TlsAcceptor;
use glommio::net::{TcpListener, TcpStream};
use shards::{EngineError, ErrorCode};

use super::connection::{self, ByteStream};
use super::context::{ConnRegistration, ServerCtx};
use super::cores::{Handoff, Seat};
use super::refusals::RefusalCause;
use super::tls;
use crate::protocol::frame::FrameDecoder;
use crate::protocol::request::parse_request;
use crate::protocol::response::write_response;

/// Connections over the limit being answered at once; more are closed
/// without an answer.
pub const REFUSALS_IN_PROGRESS_MAX: usize = 64;
/// How long a connection over the limit may take to send its first request.
pub const REFUSAL_FIRST_REQUEST_WAIT_MS: u64 = 2_000;
/// Bytes read from a connection over the limit while looking for its first
/// request.
pub const REFUSAL_READ_BYTES_MAX: usize = 64 * 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors).
pub const ACCEPT_ERROR_BACKOFF_MS: u64 = 10;

/// Accept connections until shutdown is requested; returns the signal name.
pub async fn accept_loop(
    ctx: Rc<ServerCtx>,
    listener: &TcpListener,
    tls: Option<TlsAcceptor>,
    shutdown: &crate::shutdown::ShutdownRequest,
) -> &'static str {
    future::or(accept_forever(ctx, listener, tls), shutdown.requested()).await
}

async fn accept_forever(
    ctx: Rc<ServerCtx>,
    listener: &TcpListener,
    tls: Option<TlsAcceptor>,
) -> &'static str {
    let refusing = Rc::new(Cell::new(0usize));
    loop {
        let (stream, peer) = next_connection(listener, "").await;
        if let Some(max) = over_connection_limit(&ctx, peer, "") {
            if refusing.get() >= REFUSALS_IN_PROGRESS_MAX {
                drop(stream);
                continue;
            }
            refusing.set(refusing.get() + 1);
            let refusing = refusing.clone();
            let tls = tls.clone();
            glommio::spawn_local(async move {
                match tls {
                    None => refuse_over_limit(stream, max).await,
                    Some(acceptor) => {
                        if let Ok(stream) = tls::handshake(&acceptor, stream).await {
                            refuse_over_limit(stream, max).await;
                        }
                    }
                }
                refusing.set(refusing.get() - 1);
            })
            .detach();
            continue;
        }
        let seat = ctx.cores.take_seat();
        if seat.core == ctx.core {
            serve_accepted(&ctx, stream, peer, seat, tls.clone());
            continue;
        }
        let handed = Handoff::new(stream, peer, seat)
            .map_err(|e| e.to_string())
            .and_then(|h| {
                if ctx.cores.hand_off(h) {
                    Ok(())
                } else {
                    Err("its core stopped".to_string())
                }
            });
        if let Err(e) = handed {
            tracing::warn!("closed an accepted connection: cannot hand it to a core: {e}");
        }
    }
}

/// The next connection from `listener` (`TCP_NODELAY` set) and its peer. A
/// failed accept (out of descriptors, say) is logged and retried after
/// `ACCEPT_ERROR_BACKOFF_MS`. `what` prefixes the log line ("" for RCP).
pub async fn next_connection(
    listener: &TcpListener,
    what: &str,
) -> (TcpStream, Option<SocketAddr>) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let peer = stream.peer_addr().ok();
                let _ = stream.set_nodelay(true);
                return (stream, peer);
            }
            Err(e) => {
                tracing::warn!("{what}accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(ACCEPT_ERROR_BACKOFF_MS)).await;
            }
        }
    }
}

/// `Some(limit)` when every connection seat of the server is taken: the
/// refusal is counted and logged (rate-limited) and the caller answers it.
pub fn over_connection_limit(
    ctx: &ServerCtx,
    peer: Option<SocketAddr>,
    what: &str,
) -> Option<usize> {
    let max = ctx.limits.max_connections;
    if ctx.cores.open_total() < max {
        return None;
    }
    ctx.refusals
        .refuse(RefusalCause::ConnectionLimit, peer, || {
            format!("{what}too many connections (max {max}, max_connections)")
        });
    Some(max)
}

/// Serve a connection on this core: register it (shutdown and metrics see
/// it), then a task runs the TLS handshake, if any, and the connection.
pub fn serve_accepted(
    ctx: &Rc<ServerCtx>,
    stream: TcpStream,
    peer: Option<SocketAddr>,
    seat: Seat,
    tls: Option<TlsAcceptor>,
) {
    ctx.metrics.connection_accepted();
    let registration = ConnRegistration::new(ctx, peer, seat);
    let ctx = ctx.clone();
    glommio::spawn_local(async move {
        let conn = registration.handle.clone();
        match tls {
            None => {
                let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
                connection::serve(ctx, stream, conn, Some(fd)).await
            }
            Some(acceptor) => {
                let shaken = future::or(
                    async { Some(tls::handshake(&acceptor, stream).await) },
                    async {
                        conn.stopped().await;
                        None
                    },
                )
                .await;
                match shaken {
                    Some(Ok(stream)) => connection::serve(ctx, stream, conn, None).await,
                    Some(Err(e)) => ctx.refusals.refuse(RefusalCause::TlsHandshake, peer, || {
                        format!("TLS handshake failed: {e}")
                    }),
                    None => {}
                }
            }
        }
        drop(registration);
    })
    .detach();
}

/// Answer the first request of a connection over the limit with
/// `RATE_LIMITED`, then close. Bounded in time and bytes.
async fn refuse_over_limit<S: ByteStream>(mut stream: S, max: usize) {
    let first = future::or(first_request_id(&mut stream), async {
        glommio::timer::sleep(Duration::from_millis(REFUSAL_FIRST_REQUEST_WAIT_MS)).await;
        None
    })
    .await;
    if let Some((id_json, mode)) = first {
        let error: Result<Vec<u8>, EngineError> = Err(EngineError::new(
            ErrorCode::RateLimited,
            format!("too many connections (max {max})"),
        ));
        let mut out = Vec::new();
        if write_response(&mut out, mode, &id_json, &error).is_ok() {
            let write = async {
                let mut buf = &out[..];
                while !buf.is_empty() {
                    match poll_fn(|cx| Pin::new(&mut stream).poll_write(cx, buf)).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf = &buf[n..],
                    }
                }
                let _ = poll_fn(|cx| Pin::new(&mut stream).poll_flush(cx)).await;
            };
            future::or(write, async {
                glommio::timer::sleep(Duration::from_millis(REFUSAL_FIRST_REQUEST_WAIT_MS)).await;
            })
            .await;
        }
    }
    let _ = poll_fn(|cx| Pin::new(&mut stream).poll_close(cx)).await;
}

/// The id (as JSON) and output mode of the first complete request.
async fn first_request_id<S: ByteStream>(
    stream: &mut S,
) -> Option<(Vec<u8>, crate::protocol::frame::OutputMode)> {
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; REFUSAL_READ_BYTES_MAX];
    let mut filled = 0usize;
    loop {
        if let Some(decoded) = decoder.decode(&buf[..filled]).ok()? {
            let payload = &mut buf[decoded.payload];
            let id_json = match parse_request(payload) {
                Ok(req) => req.id_json,
                Err(bad) => bad.id_json,
            };
            return Some((id_json, decoder.output_mode_for_binary()));
        }
        if filled == buf.len() {
            return None;
        }
        let n = poll_fn(|cx| Pin::new(&mut *stream).poll_read(cx, &mut buf[filled..]))
            .await
            .ok()?;
        if n == 0 {
            return None;
        }
        filled += n;
    }
}
