//! The listening side: one peer listener per node, on its own port and on
//! one executor. Each accepted connection is handshaken, then its requests
//! are read one frame at a time (at most [`PEER_REQUESTS_IN_FLIGHT_MAX`]
//! unanswered), each sent to its group's mailbox (the hop in
//! `directory.rs`) and answered, in whatever order the groups answer.
//!
//! A frame that is not a well-formed request closes the connection; a
//! request for a group this node does not have is answered with an
//! `UnknownGroup` error and the connection stays up.
//!
//! With TLS configured every connection must open with a TLS handshake
//! (no plaintext fallback); one that fails it, or takes longer than
//! `PEER_TLS_HANDSHAKE_TIMEOUT_MS`, is closed without a word.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use futures_channel::oneshot;
use futures_util::future::select;
use futures_util::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use futures_util::FutureExt;
use glommio::net::{TcpListener, TcpStream};

use super::client::PEER_REQUESTS_IN_FLIGHT_MAX;
use super::directory::{GroupCall, GroupDirectory};
use super::frame::{encode_frame, read_frame, write_frame, FrameKind, FRAME_BODY_MAX_BYTES};
use super::handshake::{self, ClusterCredentials};
use super::tls::PeerTls;
use super::wire::{to_json, ErrorBody, ErrorCode};

/// A running peer listener. Dropping it closes the listening socket and
/// every connection it accepted.
pub struct PeerServer {
    local_addr: SocketAddr,
    _accepting: glommio::Task<()>,
    /// Dropped with the server: every connection task is waiting on it.
    _stop: oneshot::Sender<()>,
}

impl PeerServer {
    /// Binds `addr` (port 0 picks a free port) and serves plain TCP on the
    /// calling executor.
    pub fn start(
        addr: &str,
        me: ClusterCredentials,
        directory: Arc<GroupDirectory>,
    ) -> io::Result<PeerServer> {
        PeerServer::start_with_tls(addr, me, directory, None)
    }

    /// As [`PeerServer::start`], over TLS when `tls` is set.
    pub fn start_with_tls(
        addr: &str,
        me: ClusterCredentials,
        directory: Arc<GroupDirectory>,
        tls: Option<PeerTls>,
    ) -> io::Result<PeerServer> {
        let listener = TcpListener::bind(addr)?;
        let local_addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = stopped.shared();
        let me = Rc::new(me);
        let accepting = glommio::spawn_local(async move {
            loop {
                let Ok(stream) = listener.accept().await else {
                    // Out of descriptors or similar: keep serving the
                    // connections we have and try again.
                    glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (me, directory, stopped) = (me.clone(), directory.clone(), stopped.clone());
                let tls = tls.clone();
                glommio::spawn_local(async move {
                    let serving = std::pin::pin!(serve_accepted(stream, tls, me, directory));
                    // Either the peer goes away or the server stops.
                    let _ = select(serving, stopped).await;
                })
                .detach();
            }
        });
        Ok(PeerServer {
            local_addr,
            _accepting: accepting,
            _stop: stop,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

/// Serves one accepted TCP connection, inside TLS when `tls` is set.
async fn serve_accepted(
    stream: TcpStream,
    tls: Option<PeerTls>,
    me: Rc<ClusterCredentials>,
    directory: Arc<GroupDirectory>,
) {
    match tls {
        None => serve_connection(stream, me, directory).await,
        Some(tls) => {
            // A failed TLS handshake just closes: the dialer's TLS stack
            // has already been told why by an alert.
            if let Ok(stream) = tls.accept(stream).await {
                serve_connection(stream, me, directory).await;
            }
        }
    }
}

/// Serves one connection (plain or already inside TLS) until it closes or
/// misbehaves.
pub async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin + 'static>(
    mut stream: S,
    me: Rc<ClusterCredentials>,
    directory: Arc<GroupDirectory>,
) {
    let Ok(from_node) = handshake::accept(&mut stream, &me).await else {
        return;
    };
    let (mut read_half, mut write_half) = stream.split();
    let (answers, queued) = flume::bounded::<Vec<u8>>(PEER_REQUESTS_IN_FLIGHT_MAX);
    let slots = Rc::new(glommio::sync::Semaphore::new(
        PEER_REQUESTS_IN_FLIGHT_MAX as u64,
    ));

    let writing = async move {
        while let Ok(encoded) = queued.recv_async().await {
            if write_frame(&mut write_half, &encoded).await.is_err() {
                return;
            }
        }
    };
    let reading = async move {
        loop {
            let Ok(slot) = slots.clone().acquire_static_permit(1).await else {
                return;
            };
            let Ok(frame) = read_frame(&mut read_half, FRAME_BODY_MAX_BYTES).await else {
                return;
            };
            if !frame.kind.is_request() {
                return;
            }
            let (request_id, group_id) = (frame.request_id, frame.group_id);
            let answers = answers.clone();
            let Some(mailbox) = directory.mailbox(group_id).cloned() else {
                let body = ErrorBody::new(
                    ErrorCode::UnknownGroup,
                    format!("node {} has no group {group_id}", me.node_id),
                );
                let frame = encode_frame(FrameKind::Error, request_id, group_id, &to_json(&body));
                if answers.send_async(frame).await.is_err() {
                    return;
                }
                drop(slot);
                continue;
            };
            glommio::spawn_local(async move {
                let (reply, answer) = oneshot::channel();
                let call = GroupCall {
                    from_node,
                    kind: frame.kind,
                    body: frame.body,
                    reply,
                };
                let answer = match mailbox.send(call).await {
                    Err(_) => Err(ErrorBody::new(ErrorCode::GroupStopped, "the group stopped")),
                    Ok(()) => answer.await.unwrap_or_else(|_| {
                        Err(ErrorBody::new(ErrorCode::GroupStopped, "the group stopped"))
                    }),
                };
                // Handlers size their answers below the limit; one that did
                // not is refused here rather than stopping the node.
                let answer = answer.and_then(|body| {
                    let max = FrameKind::Answer.body_max_bytes() as usize;
                    if body.len() > max {
                        return Err(ErrorBody::new(
                            ErrorCode::BadRequest,
                            format!("an answer of {} bytes (a frame holds {max})", body.len()),
                        ));
                    }
                    Ok(body)
                });
                let frame = match answer {
                    Ok(body) => encode_frame(FrameKind::Answer, request_id, group_id, &body),
                    Err(error) => {
                        encode_frame(FrameKind::Error, request_id, group_id, &to_json(&error))
                    }
                };
                let _ = answers.send_async(frame).await;
                drop(slot);
            })
            .detach();
        }
    };
    // The connection ends when either side stops; dropping the other
    // half closes the socket.
    let _ = select(std::pin::pin!(reading), std::pin::pin!(writing)).await;
}
