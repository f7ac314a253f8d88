//! An I/O wrapper that fails a connection which makes no progress for too long.
//!
//! Slow devices on constrained links take hours over one download; that is fine as long as
//! bytes keep moving. What we cut off is a peer that stops reading (a full send buffer with no
//! progress) or stops talking (an idle keep-alive connection). The timer is measured from the
//! last byte that moved in either direction, never from the start of a response.
//!
//! The deadline is re-armed lazily: progress only records an `Instant`; the timer is touched
//! when an operation would block, so the hot path pays one clock read per read or write.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::wire::Wire;

/// Wraps `T`, failing reads and writes with `TimedOut` after `limit` without progress.
pub struct TimedIo<T> {
    inner: T,
    limit: Duration,
    last_progress: Instant,
    timer: Pin<Box<Sleep>>,
    /// Told of every byte written, when this is the layer that writes plaintext to the socket
    /// (plain HTTP download connections).
    wire: Option<Arc<Wire>>,
}

impl<T> TimedIo<T> {
    pub fn new(inner: T, limit: Duration) -> Self {
        let now = Instant::now();
        Self {
            inner,
            limit,
            last_progress: now,
            timer: Box::pin(tokio::time::sleep_until(now + limit)),
            wire: None,
        }
    }

    /// Reports what is written and flushed to `wire` (see [`Wire`]).
    pub fn with_wire(mut self, wire: Option<Arc<Wire>>) -> Self {
        self.wire = wire;
        self
    }

    fn wrote(&mut self, n: usize) {
        if n > 0 {
            self.progressed();
            if let Some(wire) = &self.wire {
                wire.wrote(n, n, None);
            }
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// When the connection will have gone `limit` without progress.
    pub fn idle_deadline(&self) -> Instant {
        self.last_progress + self.limit
    }

    fn progressed(&mut self) {
        self.last_progress = Instant::now();
    }

    /// Called when the inner operation is pending: fails if the stall budget is spent,
    /// otherwise makes sure we are woken when it would be.
    fn check_stall(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let deadline = self.last_progress + self.limit;
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no progress on the connection within the idle timeout",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

use std::future::Future;

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.progressed();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.check_stall(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.wrote(n);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.check_stall(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                this.wrote(n);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.check_stall(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => match this.check_stall(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
            Poll::Ready(Ok(())) => {
                if let Some(wire) = &this.wire {
                    wire.flushed();
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
