//! What the device's answers mean for its jobs: Statuses for the commands we sent, Results of
//! our Gets (DevDetail, inventory), and Generic Alerts (a SCOMO operation's result, or the
//! device asking for a component or an operation).

use super::session::{Pending, Session};
use super::{Engine, EngineError};
use crate::dms::job::{Delivery, Job, JobOp, JobSource, Stage, Step};
use crate::scomo::{self, tag};
use crate::syncml::message::*;

impl Engine {
    pub(super) async fn on_status(&self, s: &mut Session, st: &Status) -> Result<(), EngineError> {
        if st.cmd_ref == 0 {
            return Ok(());
        }
        let Some(p) = s.outstanding.remove(&st.cmd_ref) else {
            return Ok(());
        };
        let code = st.code;
        match p {
            Pending::Read { .. } => self.on_read_status(s, st, p).await?,
            Pending::WalkGet { .. } => Self::on_walk_status(s, st, p),
            Pending::Write { .. } => Self::on_write_status(s, st, p),
            Pending::Chunk { job, last } => {
                let Some(mut j) = self.load_job(&job).await? else {
                    return Ok(());
                };
                match (code, last) {
                    (213, false) => {
                        if let Some(d) = s.delivery.as_mut() {
                            d.ready = true;
                        }
                    }
                    (200, true) => {
                        s.delivery = None;
                        j.stage = Stage::Acked;
                        self.save_job(&j).await?;
                    }
                    _ => {
                        s.delivery = None;
                        let reason =
                            format!("the device rejected the in-band delivery with status {code}");
                        j.record(
                            Step::DeviceRefused,
                            Some(format!(
                                "Add {}/Data: status {code}",
                                scomo::delivered_node(&j.node_id())
                            )),
                        );
                        self.finish(
                            &mut j,
                            false,
                            Some(scomo::ResultCode::DownloadFailed.code()),
                            Some(reason),
                        )
                        .await?;
                    }
                }
            }
            Pending::Exec { job } => {
                let Some(mut j) = self.load_job(&job).await? else {
                    return Ok(());
                };
                if j.state.is_final() {
                    return Ok(());
                }
                match code {
                    202 => {
                        j.stage = Stage::AwaitingResult;
                        j.record(Step::OperationAccepted, None);
                        self.save_job(&j).await?;
                    }
                    200 => {
                        j.record(Step::DeviceResult, Some("1200 (synchronous)".into()));
                        self.finish(&mut j, true, Some(1200), None).await?;
                    }
                    _ => {
                        j.record(
                            Step::DeviceRefused,
                            Some(format!("Exec {}: status {code}", j.exec_path())),
                        );
                        let reason = format!("the device answered the Exec with status {code}");
                        self.finish(
                            &mut j,
                            false,
                            Some(scomo::ResultCode::ClientError.code()),
                            Some(reason),
                        )
                        .await?;
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) async fn on_results(&self, s: &mut Session, r: &Results) -> Result<(), EngineError> {
        let Some(p) = s.outstanding.remove(&r.cmd_ref) else {
            return Ok(());
        };
        match p {
            Pending::Read { .. } | Pending::WalkGet { .. } => {
                self.on_read_results(s, r, p).await?;
            }
            // A Results for a Chunk or Exec is not expected; the Status carries the outcome.
            other => {
                s.outstanding.insert(r.cmd_ref, other);
            }
        }
        Ok(())
    }

    pub(super) async fn on_generic_alert(
        &self,
        s: &mut Session,
        a: &Alert,
    ) -> Result<(), EngineError> {
        for item in &a.items {
            let kind = item.meta.type_.as_deref().unwrap_or("").trim();
            if kind == scomo::VENDOR_COMPONENT_REQUEST || kind == scomo::VENDOR_OPERATION_REQUEST {
                self.on_device_request(s, kind, item.data.as_deref().unwrap_or(""))
                    .await?;
            }
        }
        for report in scomo::operation_reports(a) {
            let job = match &report.correlator {
                Some(c) => self.load_job(c).await?,
                None => None,
            };
            let job = match job {
                Some(j) => Some(j),
                None => {
                    // No (known) correlator: match on the Exec'd node.
                    let device = s.device.clone();
                    let open = self.store.run(move |st| st.open_jobs(&device)).await?;
                    open.into_iter().find(|j| {
                        report
                            .source
                            .as_deref()
                            .is_some_and(|src| j.exec_path() == src)
                    })
                }
            };
            let Some(mut j) = job else {
                tracing::info!(device = %s.device, ?report, "result for no known job");
                continue;
            };
            if j.state.is_final() || j.device != s.device {
                continue;
            }
            j.record(Step::DeviceResult, Some(report.result.to_string()));
            let alternate = j
                .exec_path
                .as_deref()
                .is_some_and(|p| p.starts_with("./SCOMO/Download/"));
            if report.result == scomo::ResultCode::AlternateDownloadUrlExpired.code()
                && alternate
                && j.retries == 0
            {
                // The URL was spent before the device held every byte (the node counted bytes
                // still in socket buffers when the link dropped) or it expired: one more try
                // with a fresh URL, in this very session.
                j.retries += 1;
                j.record(
                    Step::DownloadRetry,
                    Some("the device could not use the URL; minting a new one".into()),
                );
                j.stage = Stage::Mechanism;
                self.save_job(&j).await?;
                continue;
            }
            let ok = scomo::classify(report.result) == scomo::Outcome::Success;
            let reason = (!ok).then(|| {
                let name = scomo::ResultCode::from_code(report.result)
                    .map_or("vendor specific".to_string(), |c| format!("{c:?}"));
                format!(
                    "the device reported SCOMO result {} ({name})",
                    report.result
                )
            });
            self.finish(&mut j, ok, Some(report.result), reason).await?;
        }
        Ok(())
    }

    /// Alternative flows 1: the device asks for a component or an operation; a job is queued
    /// and runs in this very session.
    async fn on_device_request(
        &self,
        s: &mut Session,
        kind: &str,
        data: &str,
    ) -> Result<(), EngineError> {
        let name = tag(data, "Name").unwrap_or_else(|| data.trim().to_string());
        let asked = tag(data, "Operation");
        let op = if kind == scomo::VENDOR_COMPONENT_REQUEST {
            match asked.as_deref() {
                Some("download") => JobOp::Download,
                _ => JobOp::DownloadInstall,
            }
        } else {
            match asked.as_deref().and_then(JobOp::parse) {
                Some(op) => op,
                None => {
                    tracing::info!(device = %s.device, operation = asked, "device asked for an unknown operation");
                    return Ok(());
                }
            }
        };
        let inventory_first = tag(data, "InventoryFirst").is_some_and(|v| v == "true");
        let delivery = tag(data, "Delivery")
            .as_deref()
            .and_then(Delivery::parse)
            .unwrap_or(self.cfg.default_delivery);
        let mut job = Job::new(
            &s.device,
            op,
            (!name.is_empty()).then_some(name),
            delivery,
            inventory_first,
            JobSource::Device,
        );
        job.record(Step::DeviceRequest, Some(format!("{op:?}")));
        job.record(Step::SessionInitiated, Some("by the device".into()));
        tracing::info!(job = %job.id, device = %s.device, ?op, "job requested by the device");
        let url = self.cfg.emi_url.clone();
        self.store
            .run(move |st| st.put_device_job(&job, url.as_deref()))
            .await?;
        self.wake.notify_one();
        Ok(())
    }
}

/// Summarizes a `Get ./SCOMO/Inventory?list=StructData` answer: components by node id with
/// their leaf values.
pub(super) fn inventory_json(items: &[Item]) -> serde_json::Value {
    let mut delivered = serde_json::Map::new();
    let mut deployed = serde_json::Map::new();
    for i in items {
        let Some(src) = i.source.as_ref() else {
            continue;
        };
        let Some(data) = i.data.as_ref() else {
            continue;
        };
        for (prefix, map) in [
            ("./SCOMO/Inventory/Delivered/", &mut delivered),
            ("./SCOMO/Inventory/Deployed/", &mut deployed),
        ] {
            if let Some(rest) = src.uri.strip_prefix(prefix) {
                if let Some((id, leaf)) = rest.split_once('/') {
                    if !leaf.contains('/') {
                        let entry = map
                            .entry(id.to_string())
                            .or_insert_with(|| serde_json::json!({}));
                        entry[leaf] = serde_json::Value::from(data.clone());
                    }
                }
            }
        }
    }
    serde_json::json!({"delivered": delivered, "deployed": deployed})
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn vendor_alert_tags() {
        let d = "<Operation>remove</Operation><Name> app </Name>";
        assert_eq!(tag(d, "Operation").as_deref(), Some("remove"));
        assert_eq!(tag(d, "Name").as_deref(), Some("app"));
        assert_eq!(tag(d, "Delivery"), None);
        assert_eq!(tag("<Name>unterminated", "Name"), None);
    }

    #[test]
    fn inventory_groups_leaves_by_component() {
        let leaf = |uri: &str, v: &str| Item {
            source: Some(Location::uri(uri)),
            data: Some(v.into()),
            ..Item::default()
        };
        let inv = inventory_json(&[
            leaf("./SCOMO/Inventory/Deployed/app/Version", "1.0"),
            leaf("./SCOMO/Inventory/Deployed/app/State", "20"),
            leaf("./SCOMO/Inventory/Delivered/new/Name", "new"),
            leaf("./SCOMO/Inventory/Deployed/app/Ext/Deep", "ignored"),
            leaf("./DevInfo/Man", "ignored"),
        ]);
        assert_eq!(inv["deployed"]["app"]["Version"], "1.0");
        assert_eq!(inv["deployed"]["app"]["State"], "20");
        assert_eq!(inv["delivered"]["new"]["Name"], "new");
        assert!(inv["deployed"]["app"].get("Ext").is_none());
    }
}
