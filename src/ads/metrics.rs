//! Prometheus counters for the ADS, as plain atomics rendered by hand: a handful of counters
//! does not justify a metrics framework on the hot path.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::ads::cache::CacheStats;
use crate::net::gauge::ConnectionGauge;

/// Statuses counted individually on the download plane; anything else lands in "other".
const STATUSES: [u16; 12] = [200, 206, 304, 400, 403, 404, 405, 410, 416, 429, 500, 503];

/// The ADS's counters.
#[derive(Default, Debug)]
pub struct Metrics {
    requests: [AtomicU64; STATUSES.len() + 1],
    pub bytes_sent: AtomicU64,
    pub tickets_minted: AtomicU64,
    pub tickets_completed: AtomicU64,
    pub callbacks: Arc<crate::webhook::deliver::DeliveryStats>,
    pub components_published: AtomicU64,
    pub download_connections: Arc<ConnectionGauge>,
    pub admin_connections: Arc<ConnectionGauge>,
}

impl Metrics {
    /// Counts one download-plane response.
    pub fn count_status(&self, status: u16) {
        let slot = STATUSES
            .iter()
            .position(|&s| s == status)
            .unwrap_or(STATUSES.len());
        self.requests[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(
        &self,
        cache: &CacheStats,
        tickets_cached: u64,
        admin_refused: &crate::net::guard::GuardCounters,
    ) -> String {
        let mut out = String::with_capacity(2048);
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.push_str("# HELP scomo_ads_requests_total Download-plane responses by status.\n");
        out.push_str("# TYPE scomo_ads_requests_total counter\n");
        for (i, status) in STATUSES.iter().enumerate() {
            let _ = writeln!(
                out,
                "scomo_ads_requests_total{{status=\"{status}\"}} {}",
                r(&self.requests[i])
            );
        }
        let _ = writeln!(
            out,
            "scomo_ads_requests_total{{status=\"other\"}} {}",
            r(&self.requests[STATUSES.len()])
        );
        let counters = [
            (
                "scomo_ads_bytes_sent_total",
                "Object bytes handed to connections.",
                r(&self.bytes_sent),
            ),
            (
                "scomo_ads_tickets_minted_total",
                "Tickets minted.",
                r(&self.tickets_minted),
            ),
            (
                "scomo_ads_tickets_completed_total",
                "Complete deliveries.",
                r(&self.tickets_completed),
            ),
            (
                "scomo_ads_callbacks_delivered_total",
                "Callbacks delivered.",
                r(&self.callbacks.delivered),
            ),
            (
                "scomo_ads_callback_failed_attempts_total",
                "Callback attempts that failed.",
                r(&self.callbacks.failed_attempts),
            ),
            (
                "scomo_ads_callbacks_dead_total",
                "Callbacks given up on.",
                r(&self.callbacks.dead),
            ),
            (
                "scomo_ads_components_published_total",
                "New components published.",
                r(&self.components_published),
            ),
            (
                "scomo_ads_cache_hits_total",
                "Chunk cache hits.",
                r(&cache.hits),
            ),
            (
                "scomo_ads_cache_misses_total",
                "Chunk cache misses.",
                r(&cache.misses),
            ),
            (
                "scomo_ads_connections_accepted_total",
                "Download connections accepted.",
                r(&self.download_connections.accepted),
            ),
            (
                "scomo_ads_connections_refused_per_ip_total",
                "Connections closed on arrival because their client IP held its share (all listeners).",
                r(&self.download_connections.refused_per_ip)
                    + r(&self.admin_connections.refused_per_ip),
            ),
            (
                "scomo_ads_connections_shed_total",
                "Idle connections closed to make room while a listener's connection cap was nearly full.",
                r(&self.download_connections.shed_total) + r(&self.admin_connections.shed_total),
            ),
            (
                "scomo_ads_admin_rate_limited_total",
                "Admin API requests refused with 429 for their client's request rate.",
                r(&admin_refused.rate_limited),
            ),
            (
                "scomo_ads_admin_bad_credentials_total",
                "Admin API requests with a wrong or missing token.",
                r(&admin_refused.bad_credentials),
            ),
            (
                "scomo_ads_admin_auth_backoff_total",
                "Admin API requests refused with 429 while their client backed off after failed tokens.",
                r(&admin_refused.auth_backoff),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP scomo_ads_cache_budget_bytes Memory budget of the chunk cache.\n# TYPE scomo_ads_cache_budget_bytes gauge\nscomo_ads_cache_budget_bytes {}",
            r(&cache.budget_bytes)
        );
        let _ = writeln!(
            out,
            "# HELP scomo_ads_tickets_cached Tickets held in memory.\n# TYPE scomo_ads_tickets_cached gauge\nscomo_ads_tickets_cached {tickets_cached}"
        );
        type Field = fn(&ConnectionGauge) -> &AtomicU64;
        let per_listener: [(&str, &str, Field); 3] = [
            (
                "scomo_ads_open_connections",
                "Open connections by listener.",
                |g| &g.open,
            ),
            (
                "scomo_ads_parked_connections",
                "Open HTTP/1.1 connections idle between requests, holding no HTTP state.",
                |g| &g.parked,
            ),
            (
                "scomo_ads_quiet_http2_connections",
                "Open HTTP/2 connections idle between requests, their TLS buffers freed.",
                |g| &g.quiet_h2,
            ),
        ];
        for (name, help, field) in per_listener {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{listener=\"download\"}} {}\n{name}{{listener=\"admin\"}} {}",
                r(field(&self.download_connections)),
                r(field(&self.admin_connections))
            );
        }
        out
    }
}
