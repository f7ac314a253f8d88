//! Abuse limits for the endpoints that take commands rather than bytes (the ADS admin API, the
//! DMS's `/dm` endpoint and its EMI API): requests per second per client IP, answered with
//! `429 Too Many Requests` and `Retry-After` when exceeded, and an exponential backoff after
//! repeated failed authentication, so a leaked URL or a guessing client costs us little.
//!
//! Both tables live in bounded moka caches (an attacker with many addresses evicts old entries
//! instead of growing memory); the rate algorithm itself is governor's GCRA.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};

/// Most distinct clients (or auth identities) tracked at once; beyond it the least recently
/// seen are forgotten.
const TRACKED: u64 = 100_000;

/// The limits of one command endpoint (`[ads.admin_limits]`, `[dms.dm_limits]`,
/// `[dms.api_limits]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointLimits {
    /// Sustained requests per second from one client IP; 0 turns the limit off.
    pub requests_per_sec: u32,
    /// Requests one client IP may send at once before the sustained rate applies.
    pub burst: u32,
    /// Consecutive failed authentications tolerated before backoff starts.
    pub auth_free_failures: u32,
    /// The first backoff; each further failure doubles it.
    pub auth_backoff_base_ms: u64,
    /// The longest backoff.
    pub auth_backoff_cap_secs: u64,
}

impl Default for EndpointLimits {
    fn default() -> Self {
        Self {
            requests_per_sec: 1000,
            burst: 2000,
            auth_free_failures: 5,
            auth_backoff_base_ms: 1000,
            auth_backoff_cap_secs: 300,
        }
    }
}

/// Requests per second per client IP.
pub struct RateLimit {
    quota: Option<Quota>,
    clients: moka::sync::Cache<IpAddr, Arc<DefaultDirectRateLimiter>>,
    clock: DefaultClock,
}

impl RateLimit {
    /// A limit of `per_sec` sustained with bursts of `burst`; `per_sec == 0` admits everything.
    pub fn new(per_sec: u32, burst: u32) -> Self {
        let quota = NonZeroU32::new(per_sec).map(|rate| {
            Quota::per_second(rate).allow_burst(NonZeroU32::new(burst).unwrap_or(rate))
        });
        Self {
            quota,
            clients: moka::sync::Cache::builder()
                .max_capacity(TRACKED)
                // An idle client's bucket is full again long before this; forgetting it is exact.
                .time_to_idle(Duration::from_secs(60))
                .build(),
            clock: DefaultClock::default(),
        }
    }

    /// `Err(wait)` when `ip` must wait before its next request.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let Some(quota) = self.quota else {
            return Ok(());
        };
        let limiter = self
            .clients
            .get_with(ip, || Arc::new(RateLimiter::direct(quota)));
        limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

#[derive(Debug)]
struct Failures {
    consecutive: u32,
    blocked_until: Option<Instant>,
}

/// Exponential backoff after failed authentication, per identity (an IP, or a device id with
/// its IP). While an identity is backing off its requests are refused before any credential is
/// looked at, so guessing runs at the backoff's pace, not the network's.
pub struct AuthThrottle {
    free: u32,
    base: Duration,
    cap: Duration,
    identities: moka::sync::Cache<String, Arc<Mutex<Failures>>>,
}

impl AuthThrottle {
    /// A throttle that tolerates `free` consecutive failures, then waits `base`, doubling up
    /// to `cap`.
    pub fn new(free: u32, base: Duration, cap: Duration) -> Self {
        Self {
            free,
            base,
            cap,
            identities: moka::sync::Cache::builder()
                .max_capacity(TRACKED)
                .time_to_idle(cap.max(Duration::from_secs(60)) * 2)
                .build(),
        }
    }

    /// From an endpoint's limits.
    pub fn from_limits(l: &EndpointLimits) -> Self {
        Self::new(
            l.auth_free_failures,
            Duration::from_millis(l.auth_backoff_base_ms),
            Duration::from_secs(l.auth_backoff_cap_secs),
        )
    }

    /// `Err(wait)` while `identity` is backing off.
    pub fn check(&self, identity: &str) -> Result<(), Duration> {
        let Some(entry) = self.identities.get(identity) else {
            return Ok(());
        };
        let failures = entry.lock().unwrap_or_else(|p| p.into_inner());
        match failures.blocked_until {
            Some(until) => {
                let now = Instant::now();
                if until > now {
                    Err(until - now)
                } else {
                    Ok(())
                }
            }
            None => Ok(()),
        }
    }

    /// Records a failed authentication; returns the backoff it started, if any.
    pub fn failed(&self, identity: &str) -> Option<Duration> {
        let entry = self.identities.get_with(identity.to_string(), || {
            Arc::new(Mutex::new(Failures {
                consecutive: 0,
                blocked_until: None,
            }))
        });
        let mut failures = entry.lock().unwrap_or_else(|p| p.into_inner());
        failures.consecutive = failures.consecutive.saturating_add(1);
        let over = failures.consecutive.checked_sub(self.free)?;
        if over == 0 {
            return None;
        }
        let wait = self
            .base
            .saturating_mul(1u32 << (over - 1).min(20))
            .min(self.cap);
        failures.blocked_until = Some(Instant::now() + wait);
        Some(wait)
    }

    /// Forgets an identity's failures after it authenticated (nothing to do, the common
    /// case, when it had none).
    pub fn succeeded(&self, identity: &str) {
        if self.identities.contains_key(identity) {
            self.identities.invalidate(identity);
        }
    }
}

/// The guard state an axum router's middleware uses.
pub struct EndpointGuard {
    pub rate: RateLimit,
    pub auth: AuthThrottle,
    /// What the guard refused, for `/metrics`.
    pub refused: GuardCounters,
}

/// Counters of what an endpoint's guard refused.
#[derive(Default, Debug)]
pub struct GuardCounters {
    /// 429s for the request rate.
    pub rate_limited: AtomicU64,
    /// Wrong or missing credentials (401).
    pub bad_credentials: AtomicU64,
    /// 429s while an identity was backing off after failures.
    pub auth_backoff: AtomicU64,
}

impl EndpointGuard {
    /// Guard for an endpoint with these limits.
    pub fn new(limits: &EndpointLimits) -> Arc<Self> {
        Arc::new(Self {
            rate: RateLimit::new(limits.requests_per_sec, limits.burst),
            auth: AuthThrottle::from_limits(limits),
            refused: GuardCounters::default(),
        })
    }

    /// Checks a bearer token under the failed-auth backoff of the client's address:
    /// `Err(None)` for a wrong or missing token, `Err(Some(wait))` while backing off (the token
    /// is then not even compared).
    pub fn bearer(
        &self,
        ip: Option<IpAddr>,
        authorization: Option<&str>,
        token: &str,
    ) -> Result<(), Option<Duration>> {
        let identity = ip.map(|ip| ip.to_string()).unwrap_or_default();
        if let Err(wait) = self.auth.check(&identity) {
            self.refused.auth_backoff.fetch_add(1, Ordering::Relaxed);
            return Err(Some(wait));
        }
        if crate::secrets::bearer_matches(authorization, token) {
            self.auth.succeeded(&identity);
            Ok(())
        } else {
            self.refused.bad_credentials.fetch_add(1, Ordering::Relaxed);
            let backoff = self.auth.failed(&identity);
            tracing::info!(client = %identity, backoff_ms = backoff.map(|d| d.as_millis() as u64), "bearer token refused");
            Err(None)
        }
    }
}

/// The client's IP as the listener recorded it (absent only when a router is driven without
/// our listener, as in unit tests: then nothing is limited).
pub fn client_ip(req: &Request) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip())
}

/// `429 Too Many Requests` with `Retry-After` in whole seconds (at least 1), and the JSON
/// error body the admin and EMI APIs use everywhere else.
pub fn too_many(wait: Duration, what: &str) -> Response {
    let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
    (
        http::StatusCode::TOO_MANY_REQUESTS,
        [(http::header::RETRY_AFTER, secs.to_string())],
        axum::Json(serde_json::json!({
            "error": format!("{what}; retry after {secs} s"),
            "code": "too_many_requests",
        })),
    )
        .into_response()
}

/// axum middleware: refuses a client over its request rate with 429 before any work is done.
pub async fn limit_rate(
    State(guard): State<Arc<EndpointGuard>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(ip) = client_ip(&req) {
        if let Err(wait) = guard.rate.check(ip) {
            guard.refused.rate_limited.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%ip, ?wait, "request rate limit");
            return too_many(wait, "too many requests from this address");
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_allows_the_burst_then_refuses_with_a_wait() {
        let r = RateLimit::new(1, 3);
        let ip: IpAddr = [10, 0, 0, 1].into();
        for _ in 0..3 {
            assert!(r.check(ip).is_ok());
        }
        let wait = r.check(ip).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        // Another client is not affected.
        assert!(r.check([10, 0, 0, 2].into()).is_ok());
        // Off means off.
        let off = RateLimit::new(0, 0);
        for _ in 0..10_000 {
            assert!(off.check(ip).is_ok());
        }
    }

    #[test]
    fn auth_backoff_starts_after_the_free_failures_and_doubles() {
        let t = AuthThrottle::new(2, Duration::from_secs(1), Duration::from_secs(3));
        assert_eq!(t.failed("a"), None);
        assert_eq!(t.failed("a"), None);
        assert!(t.check("a").is_ok());
        assert_eq!(t.failed("a"), Some(Duration::from_secs(1)));
        assert!(t.check("a").is_err());
        assert_eq!(t.failed("a"), Some(Duration::from_secs(2)));
        assert_eq!(t.failed("a"), Some(Duration::from_secs(3)), "capped");
        assert!(t.check("b").is_ok(), "identities are separate");
        t.succeeded("a");
        assert!(t.check("a").is_ok());
        assert_eq!(t.failed("a"), None, "success resets the count");
    }
}
