//! What a ticket is: its lifecycle state, how it is handed out (`Mechanism`), what never
//! changes (`TicketRecord`), what does (`Snapshot`, persisted as a whole), and the refusals and
//! report outcomes the service answers with. Data only, and the pure rules on it.

use serde::{Deserialize, Serialize};

use super::coverage::Coverage;
use crate::ads::store::StoreError;
use crate::ads::token::TicketId;

/// Ticket lifecycle states.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TicketState {
    #[default]
    Issued,
    Downloading,
    Completed,
    Expired,
    Revoked,
}

impl TicketState {
    pub fn as_str(self) -> &'static str {
        match self {
            TicketState::Issued => "issued",
            TicketState::Downloading => "downloading",
            TicketState::Completed => "completed",
            TicketState::Expired => "expired",
            TicketState::Revoked => "revoked",
        }
    }

    /// A state by its API name (`None` for anything else).
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "issued" => TicketState::Issued,
            "downloading" => TicketState::Downloading,
            "completed" => TicketState::Completed,
            "expired" => TicketState::Expired,
            "revoked" => TicketState::Revoked,
            _ => return None,
        })
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "downloading" => TicketState::Downloading,
            "completed" => TicketState::Completed,
            "expired" => TicketState::Expired,
            "revoked" => TicketState::Revoked,
            _ => TicketState::Issued,
        }
    }

    /// No request will ever be served again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TicketState::Completed | TicketState::Expired | TicketState::Revoked
        )
    }
}

impl std::fmt::Display for TicketState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the device is handed the ticket (seed step 5.4.2.5, "an appropriate alternate download
/// mechanism").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mechanism {
    /// The signed object URL itself.
    #[default]
    Https,
    /// An OMA Download OTA 1.0 descriptor (`/dd/{token}`) naming the object URL, with an
    /// install-notify URI (`/dn/{token}`) for the device's status report.
    Dlota,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Https => "https",
            Mechanism::Dlota => "dlota",
        }
    }

    /// Reads a stored name; anything unknown is the plain URL (the column's default).
    pub fn parse(s: &str) -> Self {
        match s {
            "dlota" => Mechanism::Dlota,
            _ => Mechanism::Https,
        }
    }
}

/// What never changes about a ticket.
#[derive(Clone, Debug)]
pub struct TicketRecord {
    pub id: TicketId,
    pub component_id: String,
    pub device_id: Option<String>,
    pub created_at: u64,
    pub expires_at: u64,
    pub callback_url: Option<String>,
    pub context: Option<serde_json::Value>,
    pub max_deliveries: u32,
    pub max_connections: Option<u32>,
    pub max_bytes: Option<u64>,
    pub mechanism: Mechanism,
    /// The object's media type as the descriptor names it (DLOTA tickets; default
    /// `application/octet-stream`).
    pub content_type: Option<String>,
}

impl TicketRecord {
    /// The state the API should show: a ticket past its expiry (plus grace when started) is
    /// expired even before the sweeper has recorded it.
    pub fn effective_state(&self, snap: &Snapshot, now: u64, grace: u64) -> TicketState {
        match snap.state {
            TicketState::Issued if now > self.expires_at => TicketState::Expired,
            TicketState::Downloading if now > self.expires_at + grace => TicketState::Expired,
            s => s,
        }
    }

    /// A shared link: several deliveries and nobody to call back (load tests, shared links).
    /// Its progress is persisted lazily (every [`SHARED_PERSIST_EVERY`] requests or
    /// deliveries, and when it ends) without holding responses back: a crash may lose the last
    /// few counts, which nobody is waiting for. One-time tickets and tickets with a callback
    /// keep the full write-ahead discipline.
    pub fn is_shared(&self) -> bool {
        self.max_deliveries > 1 && self.callback_url.is_none()
    }
}

/// A ticket as the admin API shows it: its record, its progress (the live copy's when the
/// ticket is in memory), responses in flight, and its object's size.
pub struct TicketView {
    pub record: TicketRecord,
    pub snapshot: Snapshot,
    pub active: u32,
    pub size: u64,
}

/// How often a shared link's progress is written.
pub const SHARED_PERSIST_EVERY: u64 = 1024;

/// What changes as a ticket is used (persisted as a whole).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub state: TicketState,
    pub deliveries: u32,
    pub bytes_sent: u64,
    pub requests: u64,
    pub first_byte_at_ms: Option<u64>,
    pub last_byte_at_ms: Option<u64>,
    pub completed_at_ms: Option<u64>,
    pub coverage: Coverage,
    /// Ranges of responses in flight when the node last stopped uncleanly: maybe delivered.
    pub tentative: Coverage,
    /// The device's install-notify report (DLOTA tickets), once it came.
    pub report: Option<InstallReport>,
}

/// A device's DLOTA status report as the node recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallReport {
    pub status: u16,
    pub message: String,
    pub at_ms: u64,
    /// Whether the node had seen every byte acknowledged when the report came: a 900 without
    /// it is only the device's claim.
    pub node_delivered: bool,
}

/// What became of an install-notify report.
#[derive(Debug, PartialEq, Eq)]
pub enum ReportOutcome {
    /// Recorded now (and its callback queued, when the ticket has a callback URL).
    Recorded,
    /// The same report came before: nothing new is recorded or sent.
    Repeated,
}

/// Why an install-notify report is refused.
#[derive(Debug, thiserror::Error)]
pub enum ReportRefusal {
    #[error("this download URL has no descriptor (it was minted for plain HTTPS)")]
    NotDlota,
    #[error("this download already has report {0}; a download has one report")]
    Conflict(u16),
    #[error("the report window of this download has closed")]
    Closed,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a request on a ticket is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 410: completed, revoked, or expired.
    Gone(&'static str),
    /// 429: the ticket's concurrent-connection limit is reached.
    TooManyConnections,
    /// 403: serving this would exceed the ticket's byte budget.
    OverBudget,
}

/// Whether a ticket in `state` may serve a request now: the one gate admission (a request
/// with a body) and the bodiless check (HEAD, 304, 416) share. `token_expired`: the URL's
/// expiry has passed, which only a started ticket inside its grace period survives.
pub fn gate(
    state: TicketState,
    token_expired: bool,
    now: u64,
    expires_at: u64,
    grace: u64,
) -> Result<(), Refusal> {
    match state {
        TicketState::Completed => Err(Refusal::Gone("this download URL has already been used")),
        TicketState::Revoked => Err(Refusal::Gone("this download URL was revoked")),
        TicketState::Expired => Err(Refusal::Gone("this download URL has expired")),
        TicketState::Issued if token_expired => Err(Refusal::Gone("this download URL has expired")),
        TicketState::Downloading if token_expired && now > expires_at + grace => {
            Err(Refusal::Gone("this download URL has expired"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_lets_started_tickets_resume_within_the_grace_period() {
        use TicketState::*;
        assert_eq!(gate(Issued, false, 10, 100, 50), Ok(()));
        assert!(
            gate(Issued, true, 110, 100, 50).is_err(),
            "never started: expiry is final"
        );
        assert_eq!(
            gate(Downloading, true, 140, 100, 50),
            Ok(()),
            "inside the grace"
        );
        assert!(gate(Downloading, true, 151, 100, 50).is_err());
        for s in [Completed, Revoked, Expired] {
            assert!(matches!(gate(s, false, 0, 100, 50), Err(Refusal::Gone(_))));
        }
        assert_eq!(
            gate(Completed, false, 0, 100, 50),
            Err(Refusal::Gone("this download URL has already been used"))
        );
    }

    #[test]
    fn states_read_back_by_name() {
        for s in [
            TicketState::Issued,
            TicketState::Downloading,
            TicketState::Completed,
            TicketState::Expired,
            TicketState::Revoked,
        ] {
            assert_eq!(TicketState::from_name(s.as_str()), Some(s));
            assert_eq!(TicketState::parse(s.as_str()), s);
        }
        assert_eq!(TicketState::from_name("lost"), None);
        assert_eq!(Mechanism::parse("dlota"), Mechanism::Dlota);
        assert_eq!(Mechanism::parse("anything"), Mechanism::Https);
    }
}
