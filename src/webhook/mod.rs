//! Webhooks shared by every part that notifies someone: Standard Webhooks signing
//! ([`sign`]), a durable SQLite outbox written inside the caller's own transaction
//! ([`outbox`]), and the background dispatcher that delivers at least once with backoff
//! ([`deliver`]), and where callbacks may go ([`allow`]). The ADS's download callbacks use it; the DMS's EMI webhooks will too.

pub mod allow;
pub mod deliver;
pub mod outbox;
pub mod sign;
