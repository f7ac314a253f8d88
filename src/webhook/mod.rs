//! Webhooks shared by every part that notifies someone: Standard Webhooks signing
//! ([`sign`]), a durable SQLite outbox written inside the caller's own transaction
//! ([`outbox`]), and the background dispatcher that delivers at least once with backoff
//! ([`deliver`]), and where callbacks may go ([`allow`]). The ADS's download callbacks and the
//! DMS's EMI webhooks use it; the download callback itself is one typed event ([`event`]).

pub mod allow;
pub mod deliver;
pub mod event;
pub mod outbox;
pub mod sign;
