//! The SCOMO 1.0 model (MO `urn:oma:mo:oma-scomo:1.0`, OMA-DM-NOTES.md §6): tree paths,
//! operations, status and state values, result codes, and the OperationComplete Generic Alert.
//! Shared by the DMS and the device agent. Pure.

use crate::syncml::message::{Alert, Item, Location, Meta};
use crate::syncml::tree::{Tree, TreeError};

/// Root of the SCOMO subtree.
pub const ROOT: &str = "./SCOMO";
/// Management object identifier.
pub const MO_ID: &str = "urn:oma:mo:oma-scomo:1.0";
/// Generic Alert type of every SCOMO operation result.
pub const OPERATION_COMPLETE: &str = "urn:oma:at:scomo:1.0:OperationComplete";
/// Our vendor Generic Alert type for a device asking for a component (alternative flow 1).
/// Data: `<Name>component</Name>` (or the bare name).
pub const VENDOR_COMPONENT_REQUEST: &str = "urn:scomo-ads:at:component-request:1.0";
/// Our vendor Generic Alert type for a device asking for an operation on a component.
/// Data: `<Operation>install|remove|activate|deactivate|...</Operation><Name>component</Name>`.
pub const VENDOR_OPERATION_REQUEST: &str = "urn:scomo-ads:at:operation-request:1.0";

/// SCOMO operations, run with Exec on `<node>/Operations/<Name>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Download,
    DownloadInstall,
    DownloadInstallInactive,
    Install,
    InstallInactive,
    Remove,
    Activate,
    Deactivate,
}

impl Operation {
    /// The leaf name under `Operations/`.
    pub fn leaf(self) -> &'static str {
        match self {
            Operation::Download => "Download",
            Operation::DownloadInstall => "DownloadInstall",
            Operation::DownloadInstallInactive => "DownloadInstallInactive",
            Operation::Install => "Install",
            Operation::InstallInactive => "InstallInactive",
            Operation::Remove => "Remove",
            Operation::Activate => "Activate",
            Operation::Deactivate => "Deactivate",
        }
    }

    pub fn from_leaf(s: &str) -> Option<Self> {
        Some(match s {
            "Download" => Operation::Download,
            "DownloadInstall" => Operation::DownloadInstall,
            "DownloadInstallInactive" => Operation::DownloadInstallInactive,
            "Install" => Operation::Install,
            "InstallInactive" => Operation::InstallInactive,
            "Remove" => Operation::Remove,
            "Activate" => Operation::Activate,
            "Deactivate" => Operation::Deactivate,
            _ => return None,
        })
    }
}

/// `./SCOMO/Download/<id>`.
pub fn download_node(id: &str) -> String {
    format!("{ROOT}/Download/{id}")
}

/// `./SCOMO/Inventory/Delivered/<id>`.
pub fn delivered_node(id: &str) -> String {
    format!("{ROOT}/Inventory/Delivered/{id}")
}

/// `./SCOMO/Inventory/Deployed/<id>`.
pub fn deployed_node(id: &str) -> String {
    format!("{ROOT}/Inventory/Deployed/{id}")
}

/// `<node>/Operations/<op>`.
pub fn operation_node(node: &str, op: Operation) -> String {
    format!("{node}/Operations/{}", op.leaf())
}

/// Splits an Operations path into its package/component node and operation.
pub fn parse_operation_path(path: &str) -> Option<(String, Operation)> {
    let (node, leaf) = path.trim_end_matches('/').rsplit_once("/Operations/")?;
    Some((node.to_string(), Operation::from_leaf(leaf)?))
}

macro_rules! coded_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $n:expr),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum $name { $($(#[$vm])* $v = $n),+ }
        impl $name {
            /// The spec's number.
            pub fn code(self) -> u16 { self as u16 }
            /// The value for a number, if defined.
            pub fn from_code(code: u16) -> Option<Self> {
                match code { $($n => Some(Self::$v),)+ _ => None }
            }
        }
    };
}

coded_enum!(
    /// `Download/<X>/Status`.
    DownloadStatus {
        Idle = 10,
        DownloadFailed = 20,
        DownloadProgressing = 30,
        DownloadComplete = 40,
        InstallProgressing = 50,
        InstallFailedKept = 60,
        InstallFailedDeleted = 70,
    }
);

coded_enum!(
    /// `Inventory/Delivered/<X>/Status`. Some clients send 70 for "install failed, deleted";
    /// [`DeliveredStatus::from_code`] accepts it, we send 60.
    DeliveredStatus {
        Idle = 10,
        RemoveFailed = 20,
        RemoveProgressing = 30,
        InstallProgressing = 40,
        InstallFailedKept = 50,
        InstallFailedDeleted = 60,
    }
);

impl DeliveredStatus {
    /// Like `from_code`, also accepting 70 as InstallFailedDeleted.
    pub fn from_code_lenient(code: u16) -> Option<Self> {
        if code == 70 {
            return Some(DeliveredStatus::InstallFailedDeleted);
        }
        Self::from_code(code)
    }
}

coded_enum!(
    /// `Inventory/Delivered/<X>/State`.
    DeliveredState {
        Delivered = 10,
        Installed = 20,
    }
);

coded_enum!(
    /// `Inventory/Deployed/<X>/Status`.
    DeployedStatus {
        Idle = 10,
        RemoveFailed = 20,
        RemoveProgressing = 30,
        ActivateFailed = 40,
        ActivateProgressing = 50,
        DeactivateFailed = 60,
        DeactivateProgressing = 70,
    }
);

coded_enum!(
    /// `Inventory/Deployed/<X>/State`.
    DeployedState {
        Inactive = 10,
        Active = 20,
    }
);

coded_enum!(
    /// SCOMO result codes (OMA-TS-DM-SCOMO-V1_0 §8.7). Vendor ranges (1250–1299, 1450–1499,
    /// 1550–1599) are classified by [`classify`].
    ResultCode {
        Successful = 1200,
        ClientError = 1400,
        UserCancelled = 1401,
        DownloadFailed = 1402,
        AlternateDownloadAuthenticationFailure = 1403,
        DownloadFailedOutOfMemory = 1404,
        InstallFailed = 1405,
        InstallFailedOutOfMemory = 1406,
        FailedPackageValidation = 1407,
        RemoveFailed = 1408,
        ActivateFailed = 1409,
        DeactivateFailed = 1410,
        NotImplemented = 1411,
        UndefinedError = 1412,
        OperationRejectedUnsupportedEnvironment = 1413,
        AlternateDownloadServerError = 1500,
        AlternateDownloadServerUnavailable = 1501,
        /// Vendor code (1550–1599 range) we use for an expired or consumed package URL (a 410
        /// from the ADS), as one field client does.
        AlternateDownloadUrlExpired = 1551,
    }
);

/// Broad outcome of a result code, including vendor ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    ClientError,
    DownloadServerError,
    Unknown,
}

/// Classifies any result code.
pub fn classify(code: u16) -> Outcome {
    match code {
        1200..=1299 => Outcome::Success,
        1400..=1499 => Outcome::ClientError,
        1500..=1599 => Outcome::DownloadServerError,
        _ => Outcome::Unknown,
    }
}

/// A parsed OperationComplete report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationReport {
    pub correlator: Option<String>,
    /// The Operations node that was Exec'd (Item Source).
    pub source: Option<String>,
    /// The node the result concerns (Item Target), if given.
    pub target: Option<String>,
    pub result: u16,
    pub identifier: Option<String>,
    pub mark: Option<String>,
}

/// The trimmed text of `<name>…</name>` in an alert's data (OperationComplete reports and our
/// vendor requests carry their fields this way).
pub fn tag(data: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = data.find(&open)? + open.len();
    let end = data[start..].find(&close)? + start;
    Some(data[start..end].trim().to_string())
}

/// Reads an OperationComplete from a Generic Alert's data: `<ResultCode>…</ResultCode>` (as
/// escaped text, CDATA or child elements, which all reach us as text) or a bare code.
pub fn parse_result_data(data: &str) -> Option<(u16, Option<String>)> {
    let data = data.trim();
    if let Some(code) = tag(data, "ResultCode") {
        return Some((code.parse().ok()?, tag(data, "Identifier")));
    }
    data.parse().ok().map(|c| (c, None))
}

/// Parses every OperationComplete item of a Generic Alert (alert code 1226).
pub fn operation_reports(alert: &Alert) -> Vec<OperationReport> {
    alert
        .items
        .iter()
        .filter(|i| {
            i.meta
                .type_
                .as_deref()
                .is_none_or(|t| t.trim() == OPERATION_COMPLETE)
        })
        .filter_map(|i| {
            let (result, identifier) = parse_result_data(i.data.as_deref()?)?;
            Some(OperationReport {
                correlator: alert.correlator.clone(),
                source: i.source.as_ref().map(|l| l.uri.clone()),
                target: i.target.as_ref().map(|l| l.uri.clone()),
                result,
                identifier,
                mark: i.meta.mark.clone(),
            })
        })
        .collect()
}

/// Builds the Generic Alert item reporting an operation's result.
pub fn operation_complete_item(
    exec_source: &str,
    target: Option<&str>,
    result: u16,
    identifier: Option<&str>,
) -> Item {
    let mut data = format!("<ResultCode>{result}</ResultCode>");
    if let Some(id) = identifier {
        data.push_str(&format!(
            "<Identifier>{}</Identifier>",
            quick_xml::escape::escape(id)
        ));
    }
    let mark = if classify(result) == Outcome::Success {
        "informational"
    } else {
        "critical"
    };
    Item {
        source: Some(Location::uri(exec_source)),
        target: target.map(Location::uri),
        meta: Meta {
            type_: Some(OPERATION_COMPLETE.into()),
            format: Some("xml".into()),
            mark: Some(mark.into()),
            ..Meta::default()
        },
        data: Some(data),
        more_data: false,
    }
}

/// What a Download node holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DownloadPackage {
    pub pkg_id: String,
    pub name: String,
    pub url: String,
    pub pkg_type: String,
    /// Expected digests (our convention: `Ext/Blake3`, `Ext/Sha256`; SCOMO 1.0 has no hash node).
    pub blake3: Option<String>,
    pub sha256: Option<String>,
}

/// Writes `Download/<id>` with its Operations leaves.
pub fn write_download(t: &mut Tree, id: &str, p: &DownloadPackage) -> Result<(), TreeError> {
    let n = download_node(id);
    t.set(&format!("{n}/PkgID"), "chr", &p.pkg_id)?;
    t.set(&format!("{n}/Name"), "chr", &p.name)?;
    t.set(&format!("{n}/PkgURL"), "chr", &p.url)?;
    t.set(&format!("{n}/PkgType"), "chr", &p.pkg_type)?;
    t.set(
        &format!("{n}/Status"),
        "int",
        DownloadStatus::Idle.code().to_string(),
    )?;
    if let Some(h) = &p.blake3 {
        t.set(&format!("{n}/Ext/Blake3"), "chr", h)?;
    }
    if let Some(h) = &p.sha256 {
        t.set(&format!("{n}/Ext/Sha256"), "chr", h)?;
    }
    for op in [
        Operation::Download,
        Operation::DownloadInstall,
        Operation::DownloadInstallInactive,
    ] {
        t.set(&operation_node(&n, op), "chr", "")?;
    }
    Ok(())
}

/// Writes `Inventory/Delivered/<id>` (State delivered, Status idle) with its Operations.
pub fn write_delivered(t: &mut Tree, id: &str, pkg_id: &str, name: &str) -> Result<(), TreeError> {
    let n = delivered_node(id);
    t.set(&format!("{n}/PkgID"), "chr", pkg_id)?;
    t.set(&format!("{n}/Name"), "chr", name)?;
    t.set(
        &format!("{n}/Status"),
        "int",
        DeliveredStatus::Idle.code().to_string(),
    )?;
    t.set(
        &format!("{n}/State"),
        "int",
        DeliveredState::Delivered.code().to_string(),
    )?;
    for op in [
        Operation::Install,
        Operation::InstallInactive,
        Operation::Remove,
    ] {
        t.set(&operation_node(&n, op), "chr", "")?;
    }
    Ok(())
}

/// Writes `Inventory/Deployed/<id>` with its Operations.
pub fn write_deployed(
    t: &mut Tree,
    id: &str,
    pkg_id: &str,
    name: &str,
    version: &str,
    active: bool,
) -> Result<(), TreeError> {
    let n = deployed_node(id);
    t.set(&format!("{n}/ID"), "chr", id)?;
    t.set(&format!("{n}/PkgIDRef"), "chr", pkg_id)?;
    t.set(&format!("{n}/Name"), "chr", name)?;
    t.set(&format!("{n}/Version"), "chr", version)?;
    let state = if active {
        DeployedState::Active
    } else {
        DeployedState::Inactive
    };
    t.set(&format!("{n}/State"), "int", state.code().to_string())?;
    t.set(
        &format!("{n}/Status"),
        "int",
        DeployedStatus::Idle.code().to_string(),
    )?;
    for op in [
        Operation::Activate,
        Operation::Deactivate,
        Operation::Remove,
    ] {
        t.set(&operation_node(&n, op), "chr", "")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_the_specs() {
        assert_eq!(ResultCode::FailedPackageValidation.code(), 1407);
        assert_eq!(ResultCode::AlternateDownloadServerUnavailable.code(), 1501);
        assert_eq!(
            ResultCode::from_code(1402),
            Some(ResultCode::DownloadFailed)
        );
        assert_eq!(DownloadStatus::DownloadComplete.code(), 40);
        assert_eq!(
            DeliveredStatus::from_code_lenient(70),
            Some(DeliveredStatus::InstallFailedDeleted)
        );
        assert_eq!(DeployedState::Active.code(), 20);
        assert_eq!(classify(1260), Outcome::Success);
        assert_eq!(classify(1551), Outcome::DownloadServerError);
    }

    #[test]
    fn result_data_in_every_shape_clients_send() {
        for d in [
            "<ResultCode>1200</ResultCode><Identifier>c1</Identifier>",
            " <ResultCode> 1200 </ResultCode>\n<Identifier>c1</Identifier> ",
        ] {
            assert_eq!(parse_result_data(d), Some((1200, Some("c1".into()))));
        }
        assert_eq!(parse_result_data("1407"), Some((1407, None)));
        assert_eq!(parse_result_data("garbage"), None);
    }

    #[test]
    fn operation_paths() {
        let p = operation_node(&download_node("pkg1"), Operation::DownloadInstall);
        assert_eq!(p, "./SCOMO/Download/pkg1/Operations/DownloadInstall");
        assert_eq!(
            parse_operation_path(&p),
            Some(("./SCOMO/Download/pkg1".into(), Operation::DownloadInstall))
        );
        assert_eq!(
            parse_operation_path("./SCOMO/Download/pkg1/Operations/Bogus"),
            None
        );
    }

    #[test]
    fn subtree_writers() {
        let mut t = Tree::new();
        write_download(
            &mut t,
            "p1",
            &DownloadPackage {
                url: "https://a/d/x".into(),
                blake3: Some("ab".into()),
                ..Default::default()
            },
        )
        .unwrap();
        write_delivered(&mut t, "p1", "p1", "fw").unwrap();
        write_deployed(&mut t, "c1", "p1", "fw", "1.0", true).unwrap();
        assert_eq!(t.value("./SCOMO/Download/p1/PkgURL"), Some("https://a/d/x"));
        assert_eq!(t.value("./SCOMO/Download/p1/Ext/Blake3"), Some("ab"));
        assert_eq!(t.value("./SCOMO/Inventory/Delivered/p1/State"), Some("10"));
        assert_eq!(t.value("./SCOMO/Inventory/Deployed/c1/State"), Some("20"));
        assert!(t
            .get("./SCOMO/Inventory/Deployed/c1/Operations/Deactivate")
            .is_some());
        assert_eq!(
            t.children("./SCOMO/Inventory"),
            vec!["Delivered", "Deployed"]
        );
    }
}
