//! The device agent: a DM client with DevInfo, DevDetail and the SCOMO tree, persisted to a
//! state file; it answers package 0 notifications, opens sessions on its own to ask for
//! components or operations and to report results, and simulates SCOMO operations with the
//! right state transitions and result codes (with fault injection for the failure paths).

pub mod agent;
pub mod dlota;
pub mod download;
pub mod fleet;
pub mod state;

pub use agent::{Agent, DeviceConfig, DeviceError, Faults, Strict};

/// How long a server that answered 429 (or 503) asks us to wait before the same request:
/// its `Retry-After` in seconds (1 when it gives none, at most 30); `None` for any other
/// answer. Every call the device makes, to the DMS and its EMI API alike, honours it.
pub fn retry_wait(resp: &reqwest::Response) -> Option<std::time::Duration> {
    let status = resp.status().as_u16();
    if status != 429 && status != 503 {
        return None;
    }
    let secs = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(1)
        .min(30);
    Some(std::time::Duration::from_secs(secs))
}
