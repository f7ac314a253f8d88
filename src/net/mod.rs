//! Network plumbing shared by every listener: TLS configuration, the accept loop with its
//! connection cap and timeouts, and the progress-based I/O timeout wrapper.

pub mod listener;
pub mod timed_io;
pub mod tls;
