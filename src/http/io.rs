//! hyper on glommio: an adapter from futures-io streams (glommio's
//! `TcpStream`, and the rustls stream over it) to hyper's own I/O traits,
//! and the driver that runs one hyper connection on the executor with a
//! read deadline and a stop request.
//!
//! hyper 1.x brings no runtime: it needs `hyper::rt::Read`/`Write` for its
//! socket, and a `hyper::rt::Timer` only for its own timeouts. We use none
//! of hyper's timeouts (their timer must be `Send`, glommio's are not);
//! instead `drive` enforces a `ReadClock` deadline that the service arms and
//! disarms, which bounds the same things hyper's `header_read_timeout` does
//! and more: a request (head and body) must arrive within the deadline of
//! the connection opening or of the previous answer, an idle keep-alive
//! connection is closed after it, and so is one whose client stops reading
//! its answer.
//!
//! The adapter copies through a small scratch buffer instead of reading into
//! hyper's uninitialised buffer, so there is no `unsafe` here; the copy is
//! of at most `HTTP_READ_CHUNK_BYTES` per read.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite};
use hyper::body::Incoming;
use hyper::rt::ReadBufCursor;
use hyper::server::conn::http1;
use hyper::service::HttpService;

use crate::server::context::ConnHandle;

/// Bytes read from the socket at most per read (the adapter's scratch buffer).
pub const HTTP_READ_CHUNK_BYTES: usize = 16 * 1024;
/// Longest the shutdown of a finished connection's socket may take.
pub const HTTP_CLOSE_TIMEOUT_MS: u64 = 1_000;

/// A futures-io stream as hyper's I/O.
pub struct HyperIo<S> {
    pub stream: S,
    scratch: Box<[u8]>,
}

impl<S> HyperIo<S> {
    pub fn new(stream: S) -> Self {
        HyperIo {
            stream,
            scratch: vec![0u8; HTTP_READ_CHUNK_BYTES].into_boxed_slice(),
        }
    }
}

impl<S: AsyncRead + Unpin> hyper::rt::Read for HyperIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let want = buf.remaining().min(this.scratch.len());
        if want == 0 {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut this.stream).poll_read(cx, &mut this.scratch[..want]) {
            Poll::Ready(Ok(n)) => {
                buf.put_slice(&this.scratch[..n]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> hyper::rt::Write for HyperIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_close(cx)
    }
}

/// When the connection must have made progress by: set while the server
/// waits for the client (a request to arrive, an answer to be taken),
/// cleared while the server itself works on a request.
#[derive(Debug, Default)]
pub struct ReadClock {
    deadline: Cell<Option<Instant>>,
}

impl ReadClock {
    /// A clock that runs out `timeout` from now.
    pub fn started(timeout: Duration) -> Self {
        let clock = ReadClock::default();
        clock.arm(timeout);
        clock
    }

    /// The client has `timeout` from now.
    pub fn arm(&self, timeout: Duration) {
        self.deadline.set(Some(Instant::now() + timeout));
    }

    /// The server is working: no deadline until armed again.
    pub fn disarm(&self) {
        self.deadline.set(None);
    }

    fn deadline(&self) -> Option<Instant> {
        self.deadline.get()
    }
}

/// The client did not keep to the `ReadClock`: the connection was dropped.
#[derive(Debug, PartialEq, Eq)]
pub struct TimedOut;

/// Run one hyper connection until hyper is done with it, and give back
/// its parts: the socket (not shut down), the bytes read past the last
/// request, and the service. A connection whose last answer was an upgrade
/// (`101 Switching Protocols`) goes on with those parts — this is hyper's
/// upgrade path for a socket that is not `Send`, as glommio's are not — and
/// any other is closed by the caller (`close`).
///
/// When `stop` (the connection's registration) asks the connection to
/// stop, hyper is told to finish the request in progress and end. When the
/// clock runs out the connection is dropped at once.
pub async fn drive<I, S, B>(
    conn: http1::Connection<I, S>,
    clock: &ReadClock,
    stop: Option<&ConnHandle>,
) -> Result<http1::Parts<I, S>, TimedOut>
where
    S: HttpService<Incoming, ResBody = B> + Unpin,
    S::Future: Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut conn = Some(conn);
    let mut stopping = false;
    // The timer for the deadline it was made for.
    let mut timer: Option<(Instant, glommio::timer::Timer)> = None;
    futures_lite::future::poll_fn(move |cx| {
        let Some(live) = conn.as_mut() else {
            return Poll::Ready(Err(TimedOut));
        };
        if !stopping {
            if let Some(handle) = stop {
                if handle.poll_stop(cx).is_ready() {
                    stopping = true;
                    Pin::new(&mut *live).graceful_shutdown();
                }
            }
        }
        if let Poll::Ready(result) = live.poll_without_shutdown(cx) {
            if let Err(e) = result {
                tracing::debug!("HTTP connection ended: {e}");
            }
            return match conn.take() {
                Some(done) => Poll::Ready(Ok(done.into_parts())),
                None => Poll::Ready(Err(TimedOut)),
            };
        }
        loop {
            let Some(deadline) = clock.deadline() else {
                timer = None;
                return Poll::Pending;
            };
            let now = Instant::now();
            if now >= deadline {
                conn = None;
                return Poll::Ready(Err(TimedOut));
            }
            if timer.as_ref().map(|(at, _)| *at) != Some(deadline) {
                timer = Some((deadline, glommio::timer::Timer::new(deadline - now)));
            }
            let Some((_, t)) = timer.as_mut() else {
                return Poll::Pending;
            };
            match Pin::new(t).poll(cx) {
                // Fired: look at the (possibly moved) deadline again.
                Poll::Ready(_) => timer = None,
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

/// Shut the socket down (a TLS stream sends its close_notify), bounded by
/// `HTTP_CLOSE_TIMEOUT_MS`.
pub async fn close<S: AsyncWrite + Unpin>(io: &mut HyperIo<S>) {
    let shutdown = futures_lite::future::poll_fn(|cx| Pin::new(&mut io.stream).poll_close(cx));
    futures_lite::future::or(
        async {
            let _ = shutdown.await;
        },
        async {
            glommio::timer::sleep(Duration::from_millis(HTTP_CLOSE_TIMEOUT_MS)).await;
        },
    )
    .await;
}
