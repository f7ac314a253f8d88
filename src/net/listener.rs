//! The accept loop every listener shares: a cap on concurrent connections (in all and per
//! client IP, the client optionally named by a PROXY header), SO_SNDBUF and head-size limits,
//! a TLS handshake timeout, hyper with a header-read timeout (HTTP/1.1 over TLS through
//! [`parking`], HTTP/2 and plain HTTP through hyper-util's auto builder), the progress-based
//! idle timeout of [`TimedIo`], and graceful shutdown that lets in-flight responses finish.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::gauge::ConnectionGauge;
use super::h2_idle::{serve_until_idle, ReleasingIo};
use super::parking::{self, Activity, Tracked};
use super::proxy_header;
use super::timed_io::TimedIo;
use super::tls_stream;
use super::wire::Wire;

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
    /// Open connections one client IP may hold; more are closed at accept. 0 = no limit.
    pub max_connections_per_ip: usize,
    /// SO_SNDBUF for accepted connections; 0 leaves the kernel's autotuning. A fixed size
    /// bounds kernel memory per slow device, at the cost of long-fat-pipe speed. (A ticket's
    /// completion counts what the device acknowledged, whatever the buffer: see `wire`.)
    pub send_buffer_bytes: usize,
    /// Largest request head (request line + headers) in bytes; bigger gets 431. Also hyper's
    /// read buffer size, which every open connection holds even while idle, so the download
    /// plane keeps it small. At least 8192.
    pub max_head_bytes: usize,
    /// Most header fields in one request; more gets 431.
    pub max_headers: usize,
    /// Each connection starts with a PROXY protocol header (v1 or v2) from a load balancer;
    /// its client address replaces the TCP peer. Connections without one are closed.
    pub proxy_protocol: bool,
    /// Record the peer address in each request's extensions (as axum's `ConnectInfo`), for
    /// the per-IP request limits of command endpoints. Off on the download plane, where it
    /// would cost an allocation per request and nothing reads it.
    pub tag_peer: bool,
    /// Keep a [`Wire`] per connection, so that responses can tell what the peer has
    /// acknowledged (the download plane: "delivered" means the device has the bytes).
    pub track_delivery: bool,
}

/// Below this share of free slots (1/10) the listener sheds its long-idle connections.
const SHED_BELOW_FREE_TENTHS: usize = 1;

/// Open connections per client IP. A std mutex: held for one map update, never across an await.
#[derive(Default)]
struct PerIp {
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    /// Takes a slot for `ip`, or `None` when it already holds `max`.
    fn enter(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PerIpSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PerIpSlot {
            table: self.clone(),
            ip,
        })
    }
}

struct PerIpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for PerIpSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Serves on `listener` until `shutdown` fires, then drains for up to the grace period. Each
/// connection gets the service `make_service` returns for it, given the connection's [`Wire`]
/// when the policy tracks delivery.
pub async fn serve<M, S, B>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    make_service: M,
    policy: ConnectionPolicy,
    gauge: Arc<ConnectionGauge>,
    shutdown: CancellationToken,
) where
    M: Fn(Option<Arc<Wire>>) -> S + Send + Sync + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + Unpin
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
        .max_headers(policy.max_headers)
        .max_buf_size(policy.max_head_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(128)
        .max_header_list_size(u32::try_from(policy.max_head_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(policy.idle_timeout / 2))
        .keep_alive_timeout(Duration::from_secs(20));
    if tls.is_none() {
        // Plain HTTP/2 (prior knowledge) is closed by `TimedIo`'s byte rule alone, with no
        // `h2_idle` to count requests: PINGs of ours, answered, would keep an idle connection
        // open for as long as its client lives. A dead peer is still found by that rule.
        builder.http2().keep_alive_interval(None);
    }
    let builder = Arc::new(builder);
    // HTTP/1.1 over TLS is served directly by hyper's http1 connection, configured as the
    // auto builder's, so that idle keep-alive connections can be parked (see `parking`).
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(policy.header_read_timeout)
        .max_headers(policy.max_headers)
        .max_buf_size(policy.max_head_bytes.max(8192));
    let http1 = Arc::new(http1);
    let slots = Arc::new(Semaphore::new(policy.max_connections));
    let policy = Arc::new(policy);
    let per_ip = Arc::new(PerIp::default());
    let graceful = GracefulShutdown::new();
    let make_service = Arc::new(make_service);

    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        // Nearly full: idle connections make way for new ones, the longest-idle first (each
        // checks its own idle time against the head timeout).
        if slots.available_permits() * 10 < policy.max_connections * SHED_BELOW_FREE_TENTHS {
            gauge.shed.notify_waiters();
        }
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
        if policy.send_buffer_bytes > 0 {
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(policy.send_buffer_bytes);
        }
        gauge.accepted.fetch_add(1, Ordering::Relaxed);
        gauge.open.fetch_add(1, Ordering::Relaxed);
        let gauge = gauge.clone();
        let builder = builder.clone();
        let http1 = http1.clone();
        let shutdown = shutdown.clone();
        let make_service = make_service.clone();
        let per_ip = per_ip.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let policy = policy.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _open = OpenGuard(gauge.clone());
            let (mut stream, mut peer) = (stream, peer);
            // Behind a balancer the TCP peer is the balancer: the client is in the header.
            if policy.proxy_protocol {
                let header = Box::pin(tokio::time::timeout(
                    policy.handshake_timeout,
                    proxy_header::read_client(&mut stream),
                ))
                .await;
                match header {
                    Ok(Ok(Some(client))) => peer = client,
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "PROXY header refused; closing");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "no PROXY header in time; closing");
                        return;
                    }
                }
            }
            let _ip_slot = if policy.max_connections_per_ip > 0 {
                match per_ip.enter(peer.ip(), policy.max_connections_per_ip) {
                    Some(slot) => Some(slot),
                    None => {
                        gauge.refused_per_ip.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer, "per-IP connection limit; closing");
                        return;
                    }
                }
            } else {
                None
            };
            // Only a connection that is kept gets a ledger (a duplicated descriptor).
            let wire = policy
                .track_delivery
                .then(|| Arc::new(Wire::for_socket(&stream)));
            // However this task ends, the wire learns that nothing more will be written.
            let _wire_closed = WireClosed(wire.clone());
            let mut service = Tagged {
                inner: make_service(wire.clone()),
                peer: policy.tag_peer.then_some(peer),
                activity: None,
            };
            // Every state this task awaits in sizes every connection's task for its whole
            // life, parked or not: the large ones (the handshake, hyper's connections, the
            // TLS stream) are boxed, and no local holding one lives across an await.
            let served = match tls {
                Some(config) => {
                    let handshake = Box::pin(tokio::time::timeout(
                        policy.handshake_timeout,
                        tls_stream::accept(config, TimedIo::new(stream, policy.idle_timeout), wire),
                    ));
                    let tls_stream = match handshake.await {
                        Ok(Ok(s)) => Box::new(s),
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    // Counted by the graceful drain until this task ends.
                    let _watcher = watcher;
                    // Parking and `h2_idle` read the activity; plain connections do not pay
                    // for recording it on every request.
                    let activity = Arc::new(Activity::default());
                    service.activity = Some(activity.clone());
                    if tls_stream.alpn_protocol() == Some(b"h2") {
                        let io = TokioIo::new(ReleasingIo::new(
                            tls_stream,
                            activity.clone(),
                            gauge.clone(),
                        ));
                        let conn = builder.serve_connection(io, service).into_owned();
                        Box::pin(serve_until_idle(
                            conn,
                            &activity,
                            policy.idle_timeout,
                            policy.header_read_timeout,
                            &gauge,
                            &shutdown,
                        ))
                        .await
                    } else {
                        let first_request = policy.header_read_timeout;
                        parking::serve_http1(
                            tls_stream,
                            &http1,
                            service,
                            activity,
                            first_request,
                            &gauge,
                            &shutdown,
                        )
                        .await
                        .map_err(Into::into)
                    }
                }
                None => {
                    let io =
                        TokioIo::new(TimedIo::new(stream, policy.idle_timeout).with_wire(wire));
                    Box::pin(watcher.watch(builder.serve_connection(io, service).into_owned()))
                        .await
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
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

/// The service with the peer address added to each request when the policy asks for it, and
/// each request recorded in the connection's [`Activity`] when it is parked (HTTP/1.1 over TLS)
/// or closed when idle (HTTP/2).
#[derive(Clone)]
struct Tagged<S> {
    inner: S,
    peer: Option<SocketAddr>,
    activity: Option<Arc<Activity>>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tagged<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = Tracked<S::Future>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        if let Some(peer) = self.peer {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
        }
        let mark = self.activity.as_ref().map(|a| {
            let has_body = !http_body::Body::is_end_stream(req.body());
            a.request_started(has_body)
        });
        Tracked::new(self.inner.call(req), mark)
    }
}

struct OpenGuard(Arc<ConnectionGauge>);

struct WireClosed(Option<Arc<Wire>>);

impl Drop for WireClosed {
    fn drop(&mut self) {
        if let Some(wire) = self.0.take() {
            // Alone with it, dropping it closes the duplicate like the connection's own
            // descriptor; a response still settling holds it, and needs the FIN sent.
            match Arc::try_unwrap(wire) {
                Ok(_) => {}
                Err(shared) => shared.close(),
            }
        }
    }
}

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
        // Cancel first: shutting down must never depend on a log line being written.
        t.cancel();
        tracing::info!("shutdown requested; finishing in-flight responses");
    });
    token
}
