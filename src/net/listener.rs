//! The accept loop every listener shares: a cap on concurrent connections, a TLS handshake
//! timeout, hyper-util's auto (HTTP/1.1 + HTTP/2) connection with a header-read timeout, the
//! progress-based idle timeout of [`TimedIo`], and graceful shutdown that lets in-flight
//! responses finish.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::timed_io::TimedIo;

/// Per-listener connection policy.
#[derive(Clone, Debug)]
pub struct ConnectionPolicy {
    /// Connections beyond this wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// Whole request head must arrive within this (slowloris defence).
    pub header_read_timeout: Duration,
    /// A connection with no byte moving either way for this long is closed.
    pub idle_timeout: Duration,
    /// TLS handshake must complete within this.
    pub handshake_timeout: Duration,
    /// How long shutdown waits for in-flight responses.
    pub shutdown_grace: Duration,
}

/// Open-connection gauge shared with the metrics endpoint.
#[derive(Default, Debug)]
pub struct ConnectionGauge {
    pub open: AtomicU64,
    pub accepted: AtomicU64,
}

/// Serves `service` on `listener` until `shutdown` fires, then drains for up to the grace period.
pub async fn serve<S, B>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    service: S,
    policy: ConnectionPolicy,
    gauge: Arc<ConnectionGauge>,
    shutdown: CancellationToken,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(policy.header_read_timeout)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(128)
        .max_header_list_size(32 * 1024)
        .keep_alive_interval(Some(policy.idle_timeout / 2))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(policy.max_connections));
    let graceful = GracefulShutdown::new();

    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        gauge.accepted.fetch_add(1, Ordering::Relaxed);
        gauge.open.fetch_add(1, Ordering::Relaxed);
        let gauge = gauge.clone();
        let builder = builder.clone();
        let service = service.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let policy = policy.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _open = OpenGuard(gauge);
            match tls {
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(
                        policy.handshake_timeout,
                        acceptor.accept(TimedIo::new(stream, policy.idle_timeout)),
                    )
                    .await;
                    let tls_stream = match handshake {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = builder
                        .serve_connection(TokioIo::new(tls_stream), service)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                None => {
                    let io = TokioIo::new(TimedIo::new(stream, policy.idle_timeout));
                    let conn = builder.serve_connection(io, service).into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(policy.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period over; dropping remaining connections");
    }
}

struct OpenGuard(Arc<ConnectionGauge>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A shutdown signal fired by SIGTERM or Ctrl-C.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        t.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested; finishing in-flight responses");
        t.cancel();
    });
    token
}
