//! HTTP/1.1 over TLS with idle keep-alive connections "parked": when a connection has been
//! quiet for a while, hyper's per-connection state (an 8 KiB read buffer, an 8 KiB write
//! buffer, the cached header map, the dispatcher) is dropped and only the TLS stream is kept,
//! with its own buffers released too (`tls_stream`), waiting for the socket to become
//! readable. The next byte from the client starts a fresh hyper connection on the same stream.
//!
//! Why: an edge node holds tens of thousands of devices' keep-alive connections that sit idle
//! between a poll and the next download. Parked, one costs the TLS session and the socket;
//! served, it also costs hyper's buffers, about twice as much (figures in `bench/RESULTS.md`).
//!
//! How a connection is parked without hyper's help: we ask hyper to shut the connection down
//! gracefully, which it does at once when it is idle, and make the I/O wrapper's `shutdown` a
//! no-op for that one request, so the TLS stream and the socket stay open. hyper hands back the
//! stream and any bytes it had read but not parsed ([`hyper::server::conn::http1::Parts`]).
//!
//! When it is safe to ask: no request is being answered (the service future is done, so the
//! response head is already encoded), no byte of a new request has been read for a whole
//! [`PARK_AFTER`] period, and the connection never carried a request body (hyper may still be
//! draining one, and a half-drained body must never be read as the next request).
//!
//! Timeouts keep their meaning: while parked, the connection is closed at the idle deadline of
//! its [`TimedIo`] (no byte either way for `idle_timeout`); a request head must complete within
//! `header_read_timeout` of the moment hyper starts waiting for it, as before.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::gauge::ConnectionGauge;
use super::timed_io::TimedIo;
use super::tls_stream::TlsStream;

/// A connection quiet for between one and two of these is parked.
pub const PARK_AFTER: Duration = Duration::from_millis(250);

/// The TLS stream every download and admin connection is served on.
pub type TlsConn = TlsStream<TimedIo<TcpStream>>;

/// What the connection task needs to know about hyper's progress, shared with the I/O wrapper
/// and the service (both owned by hyper while it runs). Relaxed atomics: on HTTP/1.1 they are
/// only touched from the connection's own task; on HTTP/2 the streams' tasks count requests
/// too, and a stale read there only moves a buffer release or the idle GOAWAY by one tick
/// (both safe at any time: only empty buffers are freed, and GOAWAY lets streams finish).
#[derive(Default, Debug)]
pub struct Activity {
    /// Reads that returned bytes.
    reads: AtomicU64,
    /// Requests hyper handed the service, ever.
    requests: AtomicU64,
    /// HTTP/2: no request for a while; the TLS stream's buffers are freed after each read
    /// that finds nothing, until bytes arrive (`h2_idle`).
    quiet: AtomicBool,
    /// Service futures not yet resolved.
    in_flight: AtomicU32,
    /// A request carried a body: never park this connection.
    had_body: AtomicBool,
    /// We asked hyper to close in order to park: `shutdown` must not touch the stream.
    parking: AtomicBool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Snapshot {
    reads: u64,
    in_flight: u32,
}

impl Activity {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            reads: self.reads.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }

    /// Called by the service wrapper for each request hyper hands it.
    pub(crate) fn request_started(self: &Arc<Self>, has_body: bool) -> InFlight {
        if has_body {
            self.had_body.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// HTTP/2: marks the connection quiet (see the field).
    pub(crate) fn set_quiet(&self) {
        self.quiet.store(true, Ordering::Relaxed);
    }

    /// HTTP/2: whether the connection is marked quiet.
    pub(crate) fn is_quiet(&self) -> bool {
        self.quiet.load(Ordering::Relaxed)
    }

    /// HTTP/2: bytes arrived; the connection is no longer quiet.
    pub(crate) fn clear_quiet(&self) {
        // Load first: a read on a busy connection must not write a shared cache line.
        if self.quiet.load(Ordering::Relaxed) {
            self.quiet.store(false, Ordering::Relaxed);
        }
    }

    /// Requests started so far, and whether one is still being answered (its response head
    /// not yet handed to hyper): the HTTP/2 idle rule's view (`h2_idle::serve_until_idle`).
    pub(crate) fn requests(&self) -> (u64, bool) {
        (
            self.requests.load(Ordering::Relaxed),
            self.in_flight.load(Ordering::Relaxed) > 0,
        )
    }
}

/// One request being answered; dropped when its service future resolves (or is dropped).
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A service future that holds its [`InFlight`] mark until it resolves.
    pub struct Tracked<F> {
        #[pin]
        inner: F,
        mark: Option<InFlight>,
    }
}

impl<F> Tracked<F> {
    pub(crate) fn new(inner: F, mark: Option<InFlight>) -> Self {
        Self { inner, mark }
    }
}

impl<F: Future> Future for Tracked<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        // hyper encodes the response head in the same poll that sees this future resolve, so
        // once the mark is gone no head can be waiting to be written.
        this.mark.take();
        Poll::Ready(out)
    }
}

/// The TLS stream as hyper sees it: bytes hyper had read but not parsed before the connection
/// was parked are replayed first; reads are counted; `shutdown` is skipped while parking.
pub struct ParkableIo {
    /// Boxed: the stream is over a kilobyte, and every future that moves it would otherwise
    /// carry it (async fns keep their arguments and their locals apart).
    inner: Box<TlsConn>,
    replay: Bytes,
    activity: Arc<Activity>,
}

impl AsyncRead for ParkableIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.advance(n);
            this.activity.reads.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.reads.fetch_add(1, Ordering::Relaxed);
        }
        res
    }
}

impl AsyncWrite for ParkableIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.activity.parking.load(Ordering::Relaxed) {
            // Flushed, but kept open: the connection is being parked, not closed.
            return Pin::new(&mut this.inner).poll_flush(cx);
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Serves HTTP/1.1 on `tls` until the client closes, a timeout fires or `shutdown` is
/// cancelled, parking the connection whenever it goes quiet. `S` must record each request with
/// `activity` (see `listener::Tagged`).
pub async fn serve_http1<S, B>(
    tls: Box<TlsConn>,
    builder: &http1::Builder,
    mut service: S,
    activity: Arc<Activity>,
    first_request: Duration,
    gauge: &ConnectionGauge,
    shutdown: &CancellationToken,
) -> Result<(), hyper::Error>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Until its first request, a connection waits only as long as a request head may take:
    // one that completes a handshake and says nothing must not hold a slot for `idle_timeout`.
    let first_deadline = tokio::time::Instant::now() + first_request;
    let mut io = ParkableIo {
        inner: tls,
        replay: Bytes::new(),
        activity,
    };
    loop {
        match serve_until_quiet(io, builder, service, shutdown).await? {
            Some((back, svc)) => (io, service) = (back, svc),
            None => return Ok(()),
        }
        // A request began arriving as hyper stopped: serve it at once.
        let first = (io.activity.requests().0 == 0).then_some(first_deadline);
        if io.replay.is_empty()
            && !wait_for_next_request(&mut io, first, first_request, gauge, shutdown).await
        {
            return Ok(());
        }
    }
}

/// Runs one hyper connection on `io`. `None` when the connection is over; the stream and
/// the service back (with any unparsed bytes to replay) when it went quiet and was parked.
async fn serve_until_quiet<S, B>(
    io: ParkableIo,
    builder: &http1::Builder,
    service: S,
    shutdown: &CancellationToken,
) -> Result<Option<(ParkableIo, S)>, hyper::Error>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let activity = io.activity.clone();
    activity.parking.store(false, Ordering::Relaxed);
    // Boxed, and dropped before this returns: a parked connection keeps none of it.
    let mut conn = Box::new(builder.serve_connection(TokioIo::new(io), service));
    let start = tokio::time::Instant::now() + PARK_AFTER;
    let mut tick = tokio::time::interval_at(start, PARK_AFTER);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = activity.snapshot();
    let mut closing = false;
    loop {
        tokio::select! {
            ended = &mut *conn => {
                ended?;
                break;
            }
            _ = shutdown.cancelled(), if !closing => {
                closing = true;
                activity.parking.store(false, Ordering::Relaxed);
                Pin::new(&mut *conn).graceful_shutdown();
            }
            _ = tick.tick(), if !closing => {
                let now = activity.snapshot();
                let quiet = now == last && now.in_flight == 0;
                if quiet && !activity.had_body.load(Ordering::Relaxed) {
                    closing = true;
                    activity.parking.store(true, Ordering::Relaxed);
                    Pin::new(&mut *conn).graceful_shutdown();
                }
                last = now;
            }
        }
    }
    if !activity.parking.load(Ordering::Relaxed) {
        return Ok(None);
    }
    let parts = conn.into_parts();
    let mut io = parts.io.into_inner();
    // Even empty, this `Bytes` holds hyper's whole read buffer: keep it only if needed.
    if !parts.read_buf.is_empty() {
        io.replay = parts.read_buf;
    }
    Ok(Some((io, parts.service)))
}

/// Waits, parked, for the client's next bytes: true when they arrive, false when the
/// connection should close (idle deadline, shutdown, socket error).
///
/// Under pressure (the listener rings `gauge.shed`), a connection parked for longer than
/// `shed_after` closes at once.
async fn wait_for_next_request(
    io: &mut ParkableIo,
    first_deadline: Option<tokio::time::Instant>,
    shed_after: Duration,
    gauge: &ConnectionGauge,
    shutdown: &CancellationToken,
) -> bool {
    // Decrypted bytes, a whole record or a close_notify already inside the TLS stream would
    // never make the socket readable again: hand them to hyper at once. (hyper reads until it would block before
    // it goes idle, so this is a guard, not a path we expect.)
    if io.inner.has_buffered_input() {
        return true;
    }
    tracing::trace!("keep-alive connection parked");
    io.inner.release_idle_buffers();
    let timed = io.inner.get_ref();
    let deadline = first_deadline.map_or(timed.idle_deadline(), |d| d.min(timed.idle_deadline()));
    gauge.parked.fetch_add(1, Ordering::Relaxed);
    let parked_at = tokio::time::Instant::now();
    let woke = loop {
        tokio::select! {
            r = timed.get_ref().readable() => break Some(r.is_ok()),
            _ = tokio::time::sleep_until(deadline) => break None,
            _ = shutdown.cancelled() => break Some(false),
            _ = gauge.shed.notified() => {
                if parked_at.elapsed() >= shed_after {
                    gauge.shed_total.fetch_add(1, Ordering::Relaxed);
                    break None;
                }
            }
        }
    };
    gauge.parked.fetch_sub(1, Ordering::Relaxed);
    if let Some(go_on) = woke {
        tracing::trace!(go_on, "parked connection woke");
        return go_on;
    }
    // Quiet for the whole idle timeout: close politely (close_notify, FIN).
    let _ = tokio::time::timeout(Duration::from_secs(1), io.inner.shutdown()).await;
    false
}
