//! The expiry sweeper: periodically ends tickets whose time is up (never started and past
//! expiry, or started and past expiry plus grace), which sends their `download.expired`
//! callbacks with what was delivered so far.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Tickets;

/// Runs a sweep every `every` until `shutdown`.
pub async fn run(tickets: Tickets, every: Duration, shutdown: CancellationToken) {
    loop {
        let now = crate::ads::now_unix();
        match tickets.expire_due(now).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "expired tickets"),
            Err(e) => tracing::error!(error = %e, "expiry sweep failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {},
        }
    }
}
