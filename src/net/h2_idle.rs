//! HTTP/2 connections when they go quiet: their TLS buffers are released, and after the idle
//! timeout they are sent GOAWAY.
//!
//! HTTP/1.1 connections are parked (`parking`): hyper's state is dropped and rebuilt on the
//! next request. hyper's HTTP/2 connection cannot be taken apart that way (the HPACK tables,
//! settings and stream ids live inside it), so a quiet one keeps h2's own buffers, about
//! 28 KiB. What we own, the TLS stream's buffers, is freed from a [`PARK_AFTER`] after the last
//! request: [`ReleasingIo`] does it after each of hyper's reads that finds nothing, and the
//! connection's task makes such a read happen by waking up.
//!
//! Why the idle timeout is counted in requests here: on HTTP/2 bytes keep moving on an idle
//! connection (hyper's keep-alive PINGs and the client's answers), so `TimedIo`'s byte rule
//! would hold it open for as long as the client lives. Closing gracefully means GOAWAY: a
//! stream still sending finishes, and the client opens a new connection for its next request,
//! as HTTP/2 clients do.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::gauge::ConnectionGauge;
use super::parking::{Activity, TlsConn, PARK_AFTER};

/// Serves an HTTP/2 connection until it ends: once no request has started (and none has been
/// answering) for [`PARK_AFTER`], the connection is marked quiet, and [`ReleasingIo`] frees
/// the TLS buffers; once that has lasted `idle`, or on `shutdown`, it is shut down gracefully.
///
/// Looked at every [`PARK_AFTER`] while requests come, every `idle / 4` once quiet; so the
/// GOAWAY comes between `idle` and 1.25 × `idle` after the last request.
///
/// Under pressure (`gauge.shed`), a connection quiet for longer than `first_request` closes.
/// A connection that has not started a request yet gets `first_request` (the head timeout)
/// instead of `idle`: a client that completes a handshake and says nothing must not hold a
/// slot of the connection cap for the whole idle timeout.
pub async fn serve_until_idle<C: GracefulConnection>(
    conn: C,
    activity: &Activity,
    idle: Duration,
    first_request: Duration,
    gauge: &ConnectionGauge,
    shutdown: &CancellationToken,
) -> C::Output {
    let mut conn = std::pin::pin!(conn);
    let slow_tick = (idle / 4).max(PARK_AFTER);
    let mut seen = activity.requests().0;
    let mut quiet_since = Instant::now();
    let mut quiet = false;
    let mut closing = false;
    loop {
        // Before the first request the limit is the short one: tick at its pace.
        let slow = if seen == 0 {
            (first_request.min(idle) / 4).max(PARK_AFTER)
        } else {
            slow_tick
        };
        let tick = if quiet { slow } else { PARK_AFTER };
        // Every branch wakes this one task, and the next `select!` polls the connection first
        // thing: that poll is the read after which `ReleasingIo` frees the buffers.
        tokio::select! {
            out = conn.as_mut() => return out,
            _ = shutdown.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            // Under pressure, a connection quiet for longer than the head timeout makes room.
            _ = gauge.shed.notified(), if !closing => {
                let (started, answering) = activity.requests();
                if started == seen && !answering && quiet_since.elapsed() >= first_request {
                    gauge.shed_total.fetch_add(1, Ordering::Relaxed);
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            _ = tokio::time::sleep(tick), if !closing => {
                let (started, answering) = activity.requests();
                if started != seen || answering {
                    seen = started;
                    quiet_since = Instant::now();
                    quiet = false;
                } else if quiet_since.elapsed() >= PARK_AFTER {
                    // Again at every tick: bytes that were not a request (a PING's answer)
                    // ended the quiet spell at the I/O level.
                    activity.set_quiet();
                    quiet = true;
                    let limit = if started == 0 { first_request.min(idle) } else { idle };
                    if quiet_since.elapsed() >= limit {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        }
    }
}

/// The TLS stream as hyper's HTTP/2 connection sees it: while the connection is marked quiet,
/// every read that finds nothing frees the stream's empty buffers (a wake-up of an idle
/// connection allocates the incoming one again to read into); bytes arriving end the quiet
/// spell. Keeps `quiet_h2` counting the connections whose buffers it has freed.
pub struct ReleasingIo {
    /// Boxed: the stream is over a kilobyte (see `parking::ParkableIo`).
    inner: Box<TlsConn>,
    activity: Arc<Activity>,
    gauge: Arc<ConnectionGauge>,
    /// Counted in `gauge.quiet_h2`.
    released: bool,
}

impl ReleasingIo {
    pub fn new(inner: Box<TlsConn>, activity: Arc<Activity>, gauge: Arc<ConnectionGauge>) -> Self {
        Self {
            inner,
            activity,
            gauge,
            released: false,
        }
    }

    fn set_released(&mut self, released: bool) {
        if self.released != released {
            self.released = released;
            if released {
                self.gauge.quiet_h2.fetch_add(1, Ordering::Relaxed);
            } else {
                self.gauge.quiet_h2.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for ReleasingIo {
    fn drop(&mut self) {
        self.set_released(false);
    }
}

impl AsyncRead for ReleasingIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let out = Pin::new(&mut *this.inner).poll_read(cx, buf);
        match &out {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.activity.clear_quiet();
                this.set_released(false);
            }
            // Pending: nothing buffered could be delivered, so nothing is lost by freeing.
            Poll::Pending if this.activity.is_quiet() => {
                this.inner.release_idle_buffers();
                this.set_released(true);
            }
            _ => {}
        }
        out
    }
}

impl AsyncWrite for ReleasingIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}
