//! What every listener counts about its connections, shared with the metrics endpoints and
//! with the per-connection code that parks or quiets connections (`parking`, `h2_idle`): a
//! module of its own so that those import it without importing the accept loop above them.

use std::sync::atomic::AtomicU64;

/// Open-connection gauge shared with the metrics endpoint.
#[derive(Default, Debug)]
pub struct ConnectionGauge {
    pub open: AtomicU64,
    pub accepted: AtomicU64,
    /// Connections closed on arrival because their client IP already held its share.
    pub refused_per_ip: AtomicU64,
    /// Open connections parked between requests (see [`super::parking`]).
    pub parked: AtomicU64,
    /// Open HTTP/2 connections quiet between requests, their TLS buffers freed (see
    /// [`super::h2_idle`]).
    pub quiet_h2: AtomicU64,
    /// Rung when the listener's connection cap is nearly full: idle connections that have
    /// waited longer than the head timeout close, to make room (load shedding).
    pub shed: tokio::sync::Notify,
    /// Idle connections closed that way.
    pub shed_total: AtomicU64,
}
