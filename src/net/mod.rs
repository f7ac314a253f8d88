//! Network plumbing shared by every listener: TLS configuration, the accept loop with its
//! connection caps and timeouts, the progress-based I/O timeout wrapper, what quiet HTTP/1.1
//! (`parking`) and HTTP/2 (`h2_idle`) connections keep, and the per-client request-rate and
//! failed-auth limits of command endpoints, and (`wire`) what a download connection's peer has
//! acknowledged. Arrows point one way: `listener` uses `h2_idle` and `parking`, which use
//! `gauge`, `timed_io`, `tls_stream` and `wire`; none imports the accept loop (checked by
//! `tests/it/tidy.rs`).

pub mod early_response;
pub mod gauge;
pub mod guard;
pub mod h2_idle;
pub mod listener;
pub mod parking;
pub mod proxy_header;
pub mod tcp_info;
pub mod timed_io;
pub mod tls;
pub mod tls_stream;
pub mod wire;
