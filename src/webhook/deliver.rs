//! The background dispatcher: claims due outbox events, POSTs them signed per Standard
//! Webhooks, and records the outcome. At least once: anything but a 2xx (a non-2xx status, a
//! timeout, a refused connection) is retried with exponential backoff and jitter, honouring
//! `Retry-After` on 429/503, until the give-up horizon, after which the event is kept as dead
//! (listable and replayable). Retries live in SQLite, so they survive restarts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::outbox::{Outbox, Pending};
use super::sign::Signer;

/// Retry and concurrency settings.
#[derive(Clone, Debug)]
pub struct DeliveryPolicy {
    /// First retry delay; doubles per attempt.
    pub backoff_base: Duration,
    /// Longest delay between two attempts.
    pub backoff_cap: Duration,
    /// Give up (mark dead) when the next attempt would fall this long after the event's creation.
    pub horizon: Duration,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Where callbacks may go, checked before each attempt (the ADS's allow-list); `None`
    /// for receivers the operator configured (the DMS's EMI webhook).
    pub allow: Option<super::allow::AllowList>,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        Self {
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(3600),
            horizon: Duration::from_secs(3 * 24 * 3600),
            timeout: Duration::from_secs(10),
            concurrency: 16,
            allow: None,
        }
    }
}

/// Counters for `/metrics`.
#[derive(Default, Debug)]
pub struct DeliveryStats {
    pub delivered: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub dead: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The delay before attempt number `attempts + 1`: `base * 2^(attempts-1)`, capped, with
/// jitter in `[d/2, d]` so that a receiver coming back is not hit by a synchronized herd.
pub fn backoff(policy: &DeliveryPolicy, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let full = policy
        .backoff_base
        .saturating_mul(1u32 << exp)
        .min(policy.backoff_cap);
    let half = full / 2;
    half + full.mul_f64(rand::random::<f64>() * 0.5)
}

/// Parses `Retry-After` (seconds or an HTTP date).
fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    httpdate::parse_http_date(v)
        .ok()
        .map(|t| t.duration_since(now).unwrap_or(Duration::ZERO))
}

enum Outcome {
    Delivered,
    Failed {
        error: String,
        retry_after: Option<Duration>,
    },
}

/// Delivers events from one outbox.
pub struct Dispatcher {
    pub outbox: Arc<Outbox>,
    pub signer: Signer,
    pub http: reqwest::Client,
    pub policy: DeliveryPolicy,
    /// Poked by writers after they commit a new event.
    pub wake: Arc<Notify>,
    pub stats: Arc<DeliveryStats>,
}

impl Dispatcher {
    /// Runs until `shutdown`; in-flight attempts are abandoned at shutdown and retried after
    /// their lease on the next start.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let mut inflight: JoinSet<()> = JoinSet::new();
        loop {
            let room = this.policy.concurrency.saturating_sub(inflight.len());
            if room > 0 {
                let now = now_ms();
                let lease = now + (this.policy.timeout.as_millis() as u64) * 2 + 1000;
                let outbox = this.outbox.clone();
                let claimed =
                    tokio::task::spawn_blocking(move || outbox.claim_due(now, lease, room)).await;
                match claimed {
                    Ok(Ok(events)) => {
                        for e in events {
                            let me = this.clone();
                            inflight.spawn(async move { me.attempt(e).await });
                        }
                    }
                    Ok(Err(e)) => tracing::error!(error = %e, "cannot read the outbox"),
                    Err(_) => tracing::error!("outbox worker failed"),
                }
            }
            let outbox = this.outbox.clone();
            let next_due = tokio::task::spawn_blocking(move || outbox.next_due_ms())
                .await
                .ok()
                .and_then(Result::ok)
                .flatten();
            let sleep_for = match next_due {
                Some(t) => {
                    Duration::from_millis(t.saturating_sub(now_ms())).min(Duration::from_secs(5))
                }
                None => Duration::from_secs(5),
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = this.wake.notified() => {},
                _ = tokio::time::sleep(sleep_for.max(Duration::from_millis(10))) => {},
                Some(_) = inflight.join_next(), if !inflight.is_empty() => {},
            }
        }
        inflight.abort_all();
    }

    async fn attempt(&self, event: Pending) {
        let outcome = self.send(&event).await;
        let attempts = event.attempts + 1;
        let outbox = self.outbox.clone();
        let id = event.event_id.clone();
        let now = now_ms();
        let result = match outcome {
            Outcome::Delivered => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                tokio::task::spawn_blocking(move || outbox.mark_delivered(&id, attempts, now)).await
            }
            Outcome::Failed { error, retry_after } => {
                self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                let delay = retry_after.unwrap_or_else(|| backoff(&self.policy, attempts));
                let next = now + delay.as_millis() as u64;
                let horizon_end = event.created_at_ms + self.policy.horizon.as_millis() as u64;
                if next > horizon_end {
                    self.stats.dead.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(event_id = %id, attempts, %error, "giving up on callback; kept as dead");
                    tokio::task::spawn_blocking(move || outbox.mark_dead(&id, attempts, &error))
                        .await
                } else {
                    tracing::info!(event_id = %id, attempts, %error, retry_in_ms = next - now, "callback failed; will retry");
                    tokio::task::spawn_blocking(move || {
                        outbox.reschedule(&id, attempts, next, &error)
                    })
                    .await
                }
            }
        };
        if !matches!(result, Ok(Ok(()))) {
            // The lease expires and the event is retried: at-least-once still holds.
            tracing::error!(event_id = %event.event_id, "cannot record the callback outcome");
        }
    }

    async fn send(&self, event: &Pending) -> Outcome {
        if let Some(allow) = &self.policy.allow {
            if let Err(e) = allow.check_send(&event.url).await {
                return Outcome::Failed {
                    error: e.to_string(),
                    retry_after: None,
                };
            }
        }
        let ts = now_ms() / 1000;
        let signature = self
            .signer
            .sign(&event.event_id, ts, event.payload.as_bytes());
        let resp = self
            .http
            .post(&event.url)
            .timeout(self.policy.timeout)
            .header("content-type", "application/json")
            .header("webhook-id", &event.event_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(event.payload.clone())
            .send()
            .await;
        match resp {
            Ok(r) if r.status().is_success() => Outcome::Delivered,
            Ok(r) => {
                let status = r.status();
                let retry_after = if status == 429 || status == 503 {
                    r.headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| retry_after(v, SystemTime::now()))
                } else {
                    None
                };
                let error = if status.is_redirection() {
                    format!("receiver answered {status}; redirects are not followed")
                } else {
                    format!("receiver answered {status}")
                };
                Outcome::Failed { error, retry_after }
            }
            Err(e) => Outcome::Failed {
                error: if e.is_timeout() {
                    "timed out".to_string()
                } else if e.is_connect() {
                    "connection failed".to_string()
                } else {
                    format!("request failed: {e}")
                },
                retry_after: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let p = DeliveryPolicy {
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_millis(1000),
            ..DeliveryPolicy::default()
        };
        for (attempt, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            for _ in 0..50 {
                let d = backoff(&p, attempt).as_millis() as u64;
                assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d}");
            }
        }
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::now();
        assert_eq!(retry_after("7", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        let d = retry_after(&later, now).unwrap();
        assert!(d <= Duration::from_secs(30) && d >= Duration::from_secs(28));
        assert_eq!(retry_after("soon", now), None);
    }
}
