//! The ADS's download callback as one typed event: the node serializes it, the DMS (or any
//! integrator's receiver written in Rust) deserializes it. The JSON is the one documented in
//! the README's callback table; fields that only one kind carries are optional.

use serde::{Deserialize, Serialize};

/// What happened to a ticket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DownloadEventKind {
    /// Every byte of the object was acknowledged by the device.
    #[serde(rename = "download.completed")]
    Completed,
    /// The ticket ran out of time before a complete delivery.
    #[serde(rename = "download.expired")]
    Expired,
    /// The operator (or the DMS) revoked the ticket.
    #[serde(rename = "download.revoked")]
    Revoked,
    /// The device POSTed its OMA Download OTA status report (DLOTA tickets). The node's own
    /// completion, not this claim, decides `download.completed`.
    #[serde(rename = "download.reported")]
    Reported,
}

impl DownloadEventKind {
    /// The `event` string (also the webhook's type in the outbox).
    pub fn as_str(self) -> &'static str {
        match self {
            DownloadEventKind::Completed => "download.completed",
            DownloadEventKind::Expired => "download.expired",
            DownloadEventKind::Revoked => "download.revoked",
            DownloadEventKind::Reported => "download.reported",
        }
    }
}

/// One download callback.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DownloadEvent {
    pub event: DownloadEventKind,
    /// Receivers deduplicate on it (delivery is at least once).
    pub event_id: String,
    pub ticket_id: String,
    pub component_id: String,
    pub device_id: Option<String>,
    pub size: u64,
    /// Bytes handed to the network for this ticket, resends included.
    pub bytes_sent: u64,
    pub requests: u64,
    /// RFC 3339 with milliseconds.
    pub first_byte_at: Option<String>,
    /// The node's name.
    pub node: String,
    /// What the minter attached (the DMS puts its job id here).
    pub context: Option<serde_json::Value>,
    /// `download.completed`: when the last byte was acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// `download.completed`: which delivery of the ticket this is (1 for one-time tickets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<u32>,
    /// `expired` / `revoked`: when the ticket ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// `expired` / `revoked` / `reported`: bytes the device has, or may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_delivered: Option<u64>,
    /// `expired` / `revoked`: those bytes as `[start, end)` intervals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranges: Option<Vec<(u64, u64)>>,
    /// `download.reported`: what the device reported to the install-notify URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<InstallNotify>,
}

/// A device's install-notify report as the callback carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallNotify {
    /// The DLOTA status code (900 success, 901-954 failures).
    pub status: u16,
    /// The text the device sent after the code.
    pub message: String,
    /// RFC 3339 with milliseconds.
    pub reported_at: String,
    /// Whether the node had seen every byte acknowledged by the device when the report came.
    pub node_delivered: bool,
}

impl DownloadEvent {
    /// The job id the DMS put in the ticket's context.
    pub fn job(&self) -> Option<&str> {
        self.context.as_ref()?.get("job")?.as_str()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn round_trips_with_the_documented_names() {
        let e = DownloadEvent {
            event: DownloadEventKind::Expired,
            event_id: "evt_1".into(),
            ticket_id: "ab".into(),
            component_id: "c".into(),
            device_id: None,
            size: 10,
            bytes_sent: 4,
            requests: 1,
            first_byte_at: None,
            node: "n1".into(),
            context: Some(serde_json::json!({"job": "job-1"})),
            completed_at: None,
            delivery: None,
            ended_at: Some("2026-12-02T00:00:00.000Z".into()),
            bytes_delivered: Some(4),
            ranges: Some(vec![(0, 4)]),
            report: None,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "download.expired");
        assert_eq!(v["ranges"], serde_json::json!([[0, 4]]));
        assert!(v.get("completed_at").is_none());
        let back: DownloadEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.job(), Some("job-1"));
        assert!(serde_json::to_value(&e).unwrap().get("report").is_none());
        let mut reported = e.clone();
        reported.event = DownloadEventKind::Reported;
        reported.report = Some(InstallNotify {
            status: 902,
            message: "User Cancelled".into(),
            reported_at: "2026-12-02T00:00:00.000Z".into(),
            node_delivered: false,
        });
        let v = serde_json::to_value(&reported).unwrap();
        assert_eq!(v["event"], "download.reported");
        assert_eq!(v["report"]["status"], 902);
        assert_eq!(
            serde_json::from_value::<DownloadEvent>(v).unwrap(),
            reported
        );
        // An unknown kind is an error, not a silently ignored event.
        let mut bad = serde_json::to_value(&e).unwrap();
        bad["event"] = "download.teleported".into();
        assert!(serde_json::from_value::<DownloadEvent>(bad).is_err());
    }
}
