//! The SCOMO operations the server Exec'd, performed after the session as a device would:
//! alternate downloads (fetch, verify, keep), installs with the package's digest checked,
//! removals, activation and deactivation, each ending in a SCOMO result code that is kept in
//! the state file until the server acknowledges its report.

use sha2::Digest;

use super::{objects_dir, Agent, DeviceError};
use crate::device::state::{DeviceState, PendingReport};
use crate::scomo::{self, DeliveredState, DeployedState, Operation, ResultCode};

/// An operation the server Exec'd, performed after the session.
#[derive(Clone, Debug)]
pub(super) struct QueuedOp {
    pub(super) correlator: Option<String>,
    pub(super) exec_path: String,
    pub(super) node: String,
    pub(super) op: Operation,
}

impl Agent {
    /// Alternate download (5.4.2): fetch `Download/<X>/PkgURL`, verify against the DMS's
    /// `Ext/Blake3`, keep it as `Inventory/Delivered/<X>`; install too for the install variants.
    async fn download(&self, op: &QueuedOp) -> (ResultCode, Option<String>) {
        let id = op.node.rsplit('/').next().unwrap_or("pkg").to_string();
        let (url, blake3, sha256, name) = {
            let mut st = self.state.lock().await;
            let t = &mut st.tree;
            let _ = t.set(
                &format!("{}/Status", op.node),
                "int",
                scomo::DownloadStatus::DownloadProgressing
                    .code()
                    .to_string(),
            );
            let v = |k: &str| t.value(&format!("{}/{k}", op.node)).map(String::from);
            (v("PkgURL"), v("Ext/Blake3"), v("Ext/Sha256"), v("Name"))
        };
        let Some(url) = url else {
            return (ResultCode::DownloadFailed, None);
        };
        let dest = objects_dir(&self.cfg.state_path).join(&id);
        let policy = crate::device::download::FetchPolicy {
            interrupts: self.cuts_left.clone(),
            ..Default::default()
        };
        let fetched = if self.cfg.dlota {
            let profile = crate::device::dlota::ClientProfile {
                accept_types: crate::device::dlota::DEFAULT_ACCEPT
                    .iter()
                    .map(|t| t.to_string())
                    .collect(),
                free_bytes: self.cfg.max_obj_size,
                cancel: self.cfg.faults.cancel_downloads,
            };
            crate::device::dlota::download(
                &self.http,
                &url,
                &dest,
                blake3.as_deref(),
                &policy,
                &profile,
            )
            .await
            .map_err(|f| (f.result, f.why))
        } else {
            crate::device::download::fetch(&self.http, &url, &dest, blake3.as_deref(), &policy)
                .await
                .map_err(|e| (e.result_code(), e.to_string()))
        };
        let mut st = self.state.lock().await;
        let t = &mut st.tree;
        match fetched {
            Err((result, why)) => {
                tracing::info!(device = %self.cfg.id, error = %why, "alternate download failed");
                let _ = t.set(
                    &format!("{}/Status", op.node),
                    "int",
                    scomo::DownloadStatus::DownloadFailed.code().to_string(),
                );
                (result, None)
            }
            Ok(stats) => {
                tracing::info!(device = %self.cfg.id, bytes = stats.bytes, requests = stats.requests, resumes = stats.resumes, "alternate download complete");
                if self.cfg.faults.corrupt_delivered {
                    if let Ok(mut b) = std::fs::read(&dest) {
                        if let Some(x) = b.first_mut() {
                            *x ^= 0xff;
                        }
                        let _ = std::fs::write(&dest, b);
                    }
                }
                let _ = t.set(
                    &format!("{}/Status", op.node),
                    "int",
                    scomo::DownloadStatus::DownloadComplete.code().to_string(),
                );
                let name = name.unwrap_or_else(|| id.clone());
                let _ = scomo::write_delivered(t, &id, &id, &name);
                let delivered = scomo::delivered_node(&id);
                if let Some(h) = sha256 {
                    let _ = t.set(&format!("{delivered}/Ext/Sha256"), "chr", h);
                }
                let install = match op.op {
                    Operation::DownloadInstall => Some(Operation::Install),
                    Operation::DownloadInstallInactive => Some(Operation::InstallInactive),
                    _ => None,
                };
                match install {
                    None => (ResultCode::Successful, Some(delivered)),
                    Some(i) => self.simulate(
                        &mut st,
                        &QueuedOp {
                            correlator: op.correlator.clone(),
                            exec_path: op.exec_path.clone(),
                            node: delivered,
                            op: i,
                        },
                    ),
                }
            }
        }
    }

    /// Performs queued operations and queues their reports.
    pub(super) async fn perform(&self, ops: Vec<QueuedOp>) -> Result<(), DeviceError> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut results = Vec::new();
        for op in &ops {
            if op.node.starts_with("./SCOMO/Download/") {
                results.push(Some(self.download(op).await));
            } else {
                results.push(None);
            }
        }
        let mut st = self.state.lock().await;
        for (op, done) in ops.into_iter().zip(results) {
            let (result, target) = match done {
                Some(r) => r,
                None => self.simulate(&mut st, &op),
            };
            tracing::info!(device = %self.cfg.id, op = ?op.op, node = %op.node, result = result.code(), "operation performed");
            st.pending_reports.push(PendingReport {
                correlator: op.correlator.clone(),
                source: op.exec_path.clone(),
                target,
                result: result.code(),
                identifier: op.node.rsplit('/').next().map(String::from),
            });
        }
        drop(st);
        self.save().await
    }

    fn simulate(&self, st: &mut DeviceState, q: &QueuedOp) -> (ResultCode, Option<String>) {
        let t = &mut st.tree;
        let id = q.node.rsplit('/').next().unwrap_or("").to_string();
        let delivered = q.node.starts_with("./SCOMO/Inventory/Delivered/");
        match q.op {
            Operation::Install | Operation::InstallInactive if delivered => {
                let file = objects_dir(&self.cfg.state_path).join(&id);
                let Ok(bytes) = std::fs::read(&file) else {
                    return (ResultCode::InstallFailed, None);
                };
                if let Some(want) = t.value(&format!("{}/Ext/Sha256", q.node)) {
                    let got: String = sha2::Sha256::digest(&bytes)
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    if !want.eq_ignore_ascii_case(&got) {
                        return (ResultCode::FailedPackageValidation, None);
                    }
                }
                if self.cfg.faults.fail_install {
                    let _ = t.set(
                        &format!("{}/Status", q.node),
                        "int",
                        scomo::DeliveredStatus::InstallFailedKept.code().to_string(),
                    );
                    return (ResultCode::InstallFailed, None);
                }
                let name = t
                    .value(&format!("{}/Name", q.node))
                    .unwrap_or(&id)
                    .to_string();
                let pkg = t
                    .value(&format!("{}/PkgID", q.node))
                    .unwrap_or(&id)
                    .to_string();
                let _ = t.set(
                    &format!("{}/State", q.node),
                    "int",
                    DeliveredState::Installed.code().to_string(),
                );
                let active = q.op == Operation::Install;
                let _ = scomo::write_deployed(t, &id, &pkg, &name, "1", active);
                (ResultCode::Successful, Some(scomo::deployed_node(&id)))
            }
            Operation::Remove => {
                if t.delete(&q.node).is_err() {
                    return (ResultCode::RemoveFailed, None);
                }
                if delivered {
                    let _ = std::fs::remove_file(objects_dir(&self.cfg.state_path).join(&id));
                }
                (ResultCode::Successful, None)
            }
            Operation::Activate | Operation::Deactivate => {
                let (state, fail) = if q.op == Operation::Activate {
                    (DeployedState::Active, ResultCode::ActivateFailed)
                } else {
                    (DeployedState::Inactive, ResultCode::DeactivateFailed)
                };
                if t.get(&q.node).is_none()
                    || t.set(
                        &format!("{}/State", q.node),
                        "int",
                        state.code().to_string(),
                    )
                    .is_err()
                {
                    return (fail, None);
                }
                (ResultCode::Successful, Some(q.node.clone()))
            }
            _ => (ResultCode::NotImplemented, None),
        }
    }
}
