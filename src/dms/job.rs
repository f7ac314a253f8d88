//! A job and its vocabulary: what the EMI (or the device) asked for, where the engine stands
//! with it ([`Stage`]), how its component travels ([`Delivery`]) and what happened, step by
//! step ([`Step`], named after the seed flows' steps).
//!
//! Stages, deliveries and steps are enums in code and the same snake_case strings as always in
//! the stored JSON and the EMI API, so databases and integrations written before keep working.

use serde::{Deserialize, Serialize};

use crate::scomo::{self, Operation};

/// Job operations (the EMI's `operation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobOp {
    Download,
    DownloadInstall,
    Install,
    InstallInactive,
    Remove,
    Activate,
    Deactivate,
    Inventory,
}

impl JobOp {
    pub fn is_delivery(self) -> bool {
        matches!(self, JobOp::Download | JobOp::DownloadInstall)
    }

    /// The operation named in a device's request (`<Operation>` of its Generic Alert).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "download" => JobOp::Download,
            "download_install" => JobOp::DownloadInstall,
            "install" => JobOp::Install,
            "install_inactive" => JobOp::InstallInactive,
            "remove" => JobOp::Remove,
            "activate" => JobOp::Activate,
            "deactivate" => JobOp::Deactivate,
            "inventory" => JobOp::Inventory,
            _ => return None,
        })
    }
}

/// Job lifecycle as the EMI sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed)
    }
}

/// How a job's component travels to the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// In-band, inside the DM session (flow 5.4.1).
    Dm,
    /// Through an ADS node with a one-time URL (flow 5.4.2).
    Alternate,
    /// Alternate above the configured size, in-band below.
    Auto,
}

impl Delivery {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "dm" => Delivery::Dm,
            "alternate" => Delivery::Alternate,
            "auto" => Delivery::Auto,
            _ => return None,
        })
    }
}

/// Where the engine stands with a job. A job that waits for the device keeps its stage across
/// sessions: a device that drops mid-session continues from here in its next session.
///
/// `Queued` → (`Reading`: DevDetail / inventory Gets) → `Choose` (the build) → `Mechanism`
/// → in-band: `Deliver` → `Delivering` (large object) → `Acked`; alternate: `Writing` (the
/// Download node added) → its Exec → `ExecSent`. Operations: `Exec` → `ExecSent` → `AwaitingResult` (Generic
/// Alert 1226) → `Done`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Queued,
    Reading,
    Choose,
    Mechanism,
    Deliver,
    Delivering,
    Acked,
    /// Nodes an Exec depends on are being added (the alternate Download node).
    Writing,
    Exec,
    ExecSent,
    AwaitingResult,
    Done,
}

impl Stage {
    /// Whether the job needs the device in a session to go on (anything but waiting for a
    /// result the device reports on its own, or being over).
    pub fn needs_device(self) -> bool {
        !matches!(self, Stage::AwaitingResult | Stage::Done)
    }
}

/// One kind of timeline entry. Each names the seed flows' step it records (see
/// [`Step::seed`]); the stored name is the snake_case of the variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    EmiRequest,
    DeviceRequest,
    SessionInitiated,
    Devinfo,
    Devdetail,
    Inventory,
    BuildChosen,
    MechanismChosen,
    TicketMinted,
    DownloadRequested,
    DownloadRetry,
    Delivery,
    DeviceAck,
    OperationRequested,
    OperationAccepted,
    /// A command the device refused, with its status.
    DeviceRefused,
    DeviceResult,
    AdsDownloadCompleted,
    AdsDownloadExpired,
    AdsDownloadRevoked,
    /// The device's OMA Download OTA status report, as the ADS relayed it.
    AdsDownloadReported,
    EmiNotified,
}

impl Step {
    /// The seed flows' step this entry records (section 5.4 of the SCOMO spec).
    pub fn seed(self) -> &'static str {
        match self {
            Step::EmiRequest => "5.4.x step 1",
            Step::DeviceRequest => "5.4.x alternative flow 1 (step 1)",
            Step::SessionInitiated => "5.4.x step 2",
            Step::Devinfo => "5.4.1/5.4.2 step 3",
            Step::Devdetail | Step::Inventory => "5.4.x alternative flow 2",
            Step::BuildChosen => "5.4.1/5.4.2 step 4",
            Step::MechanismChosen | Step::TicketMinted => "5.4.2 step 5",
            Step::DownloadRequested | Step::DownloadRetry => "5.4.2 step 6",
            Step::Delivery => "5.4.1 step 5",
            Step::DeviceAck => "5.4.1 step 6",
            Step::OperationRequested => "5.4.3 step 2",
            Step::OperationAccepted => "5.4.3 step 3",
            Step::DeviceRefused => "the step of the refused command",
            Step::DeviceResult => "5.4.2 step 7 / 5.4.3 step 4",
            Step::AdsDownloadCompleted | Step::AdsDownloadExpired | Step::AdsDownloadRevoked => {
                "5.4.2 step 6 (the ADS's side)"
            }
            Step::AdsDownloadReported => "5.4.2 step 6 (the device's install-notify report)",
            Step::EmiNotified => "5.4.1 step 7 / 5.4.2 step 8 / 5.4.3 step 5",
        }
    }
}

/// One entry of a job's timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub step: Step,
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Who asked for a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobSource {
    Emi,
    Device,
}

/// A job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub device: String,
    pub operation: JobOp,
    pub component: Option<String>,
    pub delivery: Delivery,
    /// Alternative flow 2: read DevDetail and the inventory before choosing.
    pub inventory_first: bool,
    pub source: JobSource,
    pub state: JobState,
    pub stage: Stage,
    pub result_code: Option<u16>,
    pub reason: Option<String>,
    pub chosen_build: Option<String>,
    /// The build the EMI named by its catalog id: chosen as it is, without matching targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_build: Option<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub timeline: Vec<TimelineEntry>,
    /// The Operations node Exec'd for this job, once known (alternate delivery uses Download).
    #[serde(default)]
    pub exec_path: Option<String>,
    /// Alternate downloads retried with a fresh URL.
    #[serde(default)]
    pub retries: u32,
    /// Nodes to add on the device before the Exec that depends on them (kept here, so a
    /// session that drops mid-way writes them again in the next).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_writes: Vec<NodeWrite>,
    /// The ADS ticket minted for the job: revoked if the job fails before the device used it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<TicketRef>,
}

/// A node the DMS adds on the device (`Add`; `Replace` when it already exists).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeWrite {
    pub path: String,
    /// `node` for an interior node, else the leaf's format (`chr`, ...).
    pub format: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

impl NodeWrite {
    pub fn interior(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            format: "node".into(),
            value: None,
        }
    }

    pub fn leaf(path: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            format: "chr".into(),
            value: Some(value.into()),
        }
    }

    pub fn is_interior(&self) -> bool {
        self.format == "node"
    }
}

/// A ticket on an ADS node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketRef {
    pub node: String,
    pub id: String,
}

impl Job {
    /// A new queued job.
    pub fn new(
        device: &str,
        operation: JobOp,
        component: Option<String>,
        delivery: Delivery,
        inventory_first: bool,
        source: JobSource,
    ) -> Job {
        let now = now_ms();
        Job {
            id: format!("job-{:016x}", rand::random::<u64>()),
            device: device.to_string(),
            operation,
            component,
            delivery,
            inventory_first,
            source,
            state: JobState::Queued,
            stage: Stage::Queued,
            result_code: None,
            reason: None,
            chosen_build: None,
            pinned_build: None,
            created_at_ms: now,
            updated_at_ms: now,
            timeline: Vec::new(),
            exec_path: None,
            retries: 0,
            node_writes: Vec::new(),
            ticket: None,
        }
    }

    /// Appends a timeline entry.
    pub fn record(&mut self, step: Step, detail: Option<String>) {
        let now = now_ms();
        self.timeline.push(TimelineEntry {
            step,
            at_ms: now,
            detail,
        });
        self.updated_at_ms = now;
    }

    pub fn has(&self, step: Step) -> bool {
        self.timeline.iter().any(|s| s.step == step)
    }

    pub fn count(&self, step: Step) -> usize {
        self.timeline.iter().filter(|s| s.step == step).count()
    }

    /// The component's node id on the device.
    pub fn node_id(&self) -> String {
        node_id(self.component.as_deref().unwrap_or("component"))
    }

    /// The Operations node this job Execs.
    pub fn exec_path(&self) -> String {
        if let Some(p) = &self.exec_path {
            return p.clone();
        }
        let id = self.node_id();
        let (node, op) = match self.operation {
            JobOp::Download | JobOp::DownloadInstall | JobOp::Install => {
                (scomo::delivered_node(&id), Operation::Install)
            }
            JobOp::InstallInactive => (scomo::delivered_node(&id), Operation::InstallInactive),
            JobOp::Remove => (scomo::deployed_node(&id), Operation::Remove),
            JobOp::Activate => (scomo::deployed_node(&id), Operation::Activate),
            JobOp::Deactivate => (scomo::deployed_node(&id), Operation::Deactivate),
            JobOp::Inventory => (scomo::ROOT.to_string(), Operation::Install),
        };
        scomo::operation_node(&node, op)
    }
}

/// Node id of a component on the device (SCOMO `<X>`): its name, made path-safe.
pub fn node_id(component: &str) -> String {
    component
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Jobs stored before these enums existed used the same strings: they must still load.
    #[test]
    fn stored_strings_are_unchanged() {
        let old = r#"{"id":"job-1","device":"d","operation":"download_install","component":"app",
            "delivery":"alternate","inventory_first":false,"source":"emi","state":"running",
            "stage":"awaiting_result","result_code":null,"reason":null,"chosen_build":null,
            "created_at_ms":1,"updated_at_ms":2,
            "timeline":[{"step":"emi_request","at_ms":1},{"step":"ads_download_completed","at_ms":2,"detail":"x"}]}"#;
        let j: Job = serde_json::from_str(old).unwrap();
        assert_eq!(j.stage, Stage::AwaitingResult);
        assert_eq!(j.delivery, Delivery::Alternate);
        assert_eq!(j.source, JobSource::Emi);
        assert_eq!(j.timeline[1].step, Step::AdsDownloadCompleted);
        let again = serde_json::to_value(&j).unwrap();
        assert_eq!(again["stage"], "awaiting_result");
        assert_eq!(again["timeline"][0]["step"], "emi_request");
        assert_eq!(serde_json::to_value(Stage::ExecSent).unwrap(), "exec_sent");
        assert_eq!(serde_json::to_value(Step::Devinfo).unwrap(), "devinfo");
    }

    #[test]
    fn exec_paths_follow_the_operation() {
        let mut j = Job::new(
            "d",
            JobOp::Remove,
            Some("my app".into()),
            Delivery::Dm,
            false,
            JobSource::Emi,
        );
        assert_eq!(
            j.exec_path(),
            "./SCOMO/Inventory/Deployed/my_app/Operations/Remove"
        );
        j.operation = JobOp::Install;
        assert_eq!(
            j.exec_path(),
            "./SCOMO/Inventory/Delivered/my_app/Operations/Install"
        );
        j.exec_path = Some("./SCOMO/Download/x/Operations/Download".into());
        assert_eq!(j.exec_path(), "./SCOMO/Download/x/Operations/Download");
    }

    #[test]
    fn parse_names() {
        assert_eq!(
            JobOp::parse("install_inactive"),
            Some(JobOp::InstallInactive)
        );
        assert_eq!(JobOp::parse("reboot"), None);
        assert_eq!(Delivery::parse("auto"), Some(Delivery::Auto));
        assert_eq!(Delivery::parse("pigeon"), None);
        assert!(!Stage::AwaitingResult.needs_device());
        assert!(Stage::Queued.needs_device());
    }
}
