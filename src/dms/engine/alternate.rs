//! Alternate delivery (flow 5.4.2): the DMS chooses the mechanism for the device (a signed
//! HTTPS URL, or an OMA Download OTA descriptor naming one), the build goes on a healthy ADS
//! node, a one-time ticket is minted for the device, and the device is told to fetch it (a
//! Download node and its Exec). The node's signed callbacks land on the job's timeline; one
//! that says the URL ended unused, or a DLOTA failure report, fails a job still waiting for
//! the device.

use super::session::Session;
use super::{Engine, EngineError};
use crate::dms::ads_client::Mechanism;
use crate::dms::catalog::Build;
use crate::dms::job::{node_id, Job, JobOp, NodeWrite, Stage, Step, TicketRef, TimelineEntry};
use crate::dms::store::{now_ms, Device, MechanismChoice};
use crate::scomo::{self, Operation};
pub use crate::webhook::event::DownloadEvent as AdsEvent;
use crate::webhook::event::DownloadEventKind;

impl Engine {
    /// Puts the build on a healthy ADS node (if it lacks it), mints a one-time URL and plans
    /// the writes that hand it to the device: the Download node (URL, expected digests), whose
    /// operation is Exec'd once the device has it. False when no node could serve.
    pub(super) async fn prepare_alternate(
        &self,
        s: &mut Session,
        job: &mut Job,
        build: &Build,
    ) -> Result<bool, EngineError> {
        let path = self.store.build_path(&build.id);
        let device = self.device(&s.device).await?;
        let (mechanism, why) = choose_mechanism(device.as_ref(), &self.cfg.dlota_devices);
        for _ in 0..self.ads.nodes.len() {
            let Some(node) = self.ads.pick() else {
                break;
            };
            let minted = async {
                node.ensure_published(&build.id, &build.name, &build.version, &path)
                    .await?;
                node.mint(
                    &build.id,
                    &s.device,
                    &self.cfg.ads_callback_url,
                    serde_json::json!({"job": job.id, "device": s.device}),
                    self.cfg.ticket_ttl_secs,
                    mechanism,
                )
                .await
            }
            .await;
            let ticket = match minted {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(node = %node.name, error = %e, "ADS node failed; trying another");
                    node.healthy
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
            };
            let how = match ticket.mechanism {
                Mechanism::Https => "signed HTTPS URL",
                Mechanism::Dlota => "OMA Download OTA descriptor",
            };
            job.record(
                Step::MechanismChosen,
                Some(format!(
                    "alternate download via ADS {}: {how} ({why})",
                    node.name
                )),
            );
            job.record(
                Step::TicketMinted,
                Some(format!("ticket {} on {}", ticket.id, node.name)),
            );
            let pkg = node_id(&build.name);
            let dl = scomo::download_node(&pkg);
            job.node_writes = vec![
                NodeWrite::interior(dl.clone()),
                NodeWrite::leaf(format!("{dl}/PkgID"), &pkg),
                NodeWrite::leaf(format!("{dl}/Name"), &build.name),
                NodeWrite::leaf(format!("{dl}/PkgURL"), &ticket.url),
                // What PkgURL names: the object, or a descriptor of it.
                NodeWrite::leaf(
                    format!("{dl}/PkgType"),
                    match ticket.mechanism {
                        Mechanism::Https => "application/octet-stream",
                        Mechanism::Dlota => crate::dlota::CONTENT_TYPE,
                    },
                ),
                // Our digests, not the ADS's: the device checks what it got against the DMS.
                NodeWrite::interior(format!("{dl}/Ext")),
                NodeWrite::leaf(format!("{dl}/Ext/Blake3"), &build.id),
                NodeWrite::leaf(format!("{dl}/Ext/Sha256"), &build.sha256),
            ];
            let op = if job.operation == JobOp::DownloadInstall {
                Operation::DownloadInstall
            } else {
                Operation::Download
            };
            job.exec_path = Some(scomo::operation_node(&dl, op));
            job.ticket = Some(TicketRef {
                node: node.name.clone(),
                id: ticket.id.clone(),
            });
            // The Download node first; its Exec once the device has it (stage Writing).
            job.stage = Stage::Writing;
            self.save_job(job).await?;
            return Ok(true);
        }
        Ok(false)
    }
    /// Records an ADS callback on its job's timeline (once per event id). A download that
    /// ended without completing fails a job still waiting for the device.
    pub async fn on_ads_callback(&self, event: &AdsEvent) -> Result<(), EngineError> {
        let Some(job_id) = event.job().map(String::from) else {
            return Ok(());
        };
        let step = match event.event {
            DownloadEventKind::Completed => Step::AdsDownloadCompleted,
            DownloadEventKind::Expired => Step::AdsDownloadExpired,
            DownloadEventKind::Revoked => Step::AdsDownloadRevoked,
            DownloadEventKind::Reported => Step::AdsDownloadReported,
        };
        let detail = match &event.report {
            Some(r) if event.event == DownloadEventKind::Reported => {
                let claim = if r.node_delivered {
                    "the node had delivered every byte"
                } else if r.status == crate::dlota::InstallStatus::Success.code() {
                    "a claim only: the node had not seen every byte acknowledged"
                } else {
                    "the node had not delivered every byte"
                };
                format!(
                    "the device reports {} {} to {} ({claim})",
                    r.status, r.message, event.node
                )
            }
            _ => format!(
                "{} bytes sent in {} request(s) by {}",
                event.bytes_sent, event.requests, event.node
            ),
        };
        let entry = TimelineEntry {
            step,
            at_ms: now_ms(),
            detail: Some(detail),
        };
        let (j, e) = (job_id.clone(), event.event_id.clone());
        let fresh = self
            .store
            .run(move |store| store.add_ads_event(&j, &e, &entry))
            .await?;
        if !fresh || event.event == DownloadEventKind::Completed {
            return Ok(());
        }
        if event.event == DownloadEventKind::Reported {
            return self.on_install_report(&job_id, event).await;
        }
        if let Some(mut job) = self.load_job(&job_id).await? {
            if !job.state.is_final() && job.stage == Stage::AwaitingResult {
                let ended = event.event.as_str().trim_start_matches("download.");
                let reason = format!("the ADS reports the download {ended}");
                self.finish(
                    &mut job,
                    false,
                    Some(scomo::ResultCode::AlternateDownloadUrlExpired.code()),
                    Some(reason),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// A DLOTA status report relayed by the ADS. A failure fails the job still waiting for
    /// the device's result, with the SCOMO code the report means (a device may report only
    /// there); a success is the device's claim, which its own SCOMO report confirms. A report
    /// about an earlier ticket of a retried job changes nothing.
    async fn on_install_report(&self, job_id: &str, event: &AdsEvent) -> Result<(), EngineError> {
        let Some(report) = &event.report else {
            return Ok(());
        };
        let Some(result) = crate::dlota::scomo_result(report.status) else {
            return Ok(());
        };
        let Some(mut job) = self.load_job(job_id).await? else {
            return Ok(());
        };
        let current = job.ticket.as_ref().is_some_and(|t| t.id == event.ticket_id);
        if job.state.is_final() || !current || job.stage != Stage::AwaitingResult {
            return Ok(());
        }
        let name = crate::dlota::InstallStatus::from_code(report.status)
            .map_or("vendor specific", |s| s.text());
        let reason = format!(
            "the device reported {} ({name}) to the ADS's install-notify URI",
            report.status
        );
        self.revoke_ticket(&mut job).await;
        self.finish(&mut job, false, Some(result.code()), Some(reason))
            .await
    }
}

/// The mechanism for a device's alternate download and why: the EMI's choice on the device
/// record, else a descriptor for devices the `dlota_devices` rule names (by DevInfo
/// `Man/Mod`, or DevDetail `OEM/DevTyp`), else the signed URL.
pub(super) fn choose_mechanism(device: Option<&Device>, rules: &[String]) -> (Mechanism, String) {
    let choice = device.map_or(MechanismChoice::Auto, |d| d.alternate_mechanism);
    match choice {
        MechanismChoice::Https => return (Mechanism::Https, "the device record says https".into()),
        MechanismChoice::Dlota => return (Mechanism::Dlota, "the device record says dlota".into()),
        MechanismChoice::Auto => {}
    }
    let names = device
        .into_iter()
        .flat_map(|d| {
            let info = d
                .devinfo
                .as_ref()
                .map(|i| ("DevInfo", format!("{}/{}", i.man, i.model)));
            let detail = d
                .devdetail
                .as_ref()
                .map(|x| ("DevDetail", format!("{}/{}", x.oem, x.dev_typ)));
            info.into_iter().chain(detail)
        })
        .collect::<Vec<_>>();
    for (source, name) in &names {
        if let Some(rule) = rules.iter().find(|r| pattern_matches(r, name)) {
            return (
                Mechanism::Dlota,
                format!("{source} {name} matches dlota_devices \"{rule}\""),
            );
        }
    }
    let who = names
        .first()
        .map_or("an unknown device".to_string(), |(_, n)| n.clone());
    (
        Mechanism::Https,
        format!("auto: no dlota_devices rule names {who}"),
    )
}

/// `Acme/R1` matches `Acme/R1`; `Acme/*` and `Acme/R*` match it too (case-insensitive).
fn pattern_matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.to_ascii_lowercase(), name.to_ascii_lowercase());
    match p.strip_suffix('*') {
        Some(prefix) => n.starts_with(prefix),
        None => p == n,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::syncml::tree::{DevDetail, DevInfo};

    fn device(choice: MechanismChoice) -> Device {
        Device {
            id: "d".into(),
            alternate_mechanism: choice,
            devinfo: Some(DevInfo {
                man: "Acme".into(),
                model: "R1".into(),
                ..DevInfo::default()
            }),
            ..Device::default()
        }
    }

    #[test]
    fn the_record_then_the_rule_then_the_url() {
        let rules = vec!["acme/r*".to_string()];
        let (m, why) = choose_mechanism(Some(&device(MechanismChoice::Auto)), &rules);
        assert_eq!(m, Mechanism::Dlota);
        assert!(why.contains("DevInfo Acme/R1 matches"), "{why}");
        let (m, why) = choose_mechanism(Some(&device(MechanismChoice::Https)), &rules);
        assert_eq!(
            (m, why.as_str()),
            (Mechanism::Https, "the device record says https")
        );
        let (m, _) = choose_mechanism(Some(&device(MechanismChoice::Dlota)), &[]);
        assert_eq!(m, Mechanism::Dlota);
        let (m, why) = choose_mechanism(Some(&device(MechanismChoice::Auto)), &[]);
        assert_eq!(m, Mechanism::Https);
        assert!(why.contains("no dlota_devices rule names Acme/R1"), "{why}");
        assert_eq!(choose_mechanism(None, &rules).0, Mechanism::Https);
        // DevDetail, once read, is matched too.
        let mut d = device(MechanismChoice::Auto);
        d.devdetail = Some(DevDetail {
            oem: "Modems Inc".into(),
            dev_typ: "router".into(),
            ..DevDetail::default()
        });
        let (m, why) = choose_mechanism(Some(&d), &["Modems Inc/router".into()]);
        assert_eq!(m, Mechanism::Dlota);
        assert!(why.starts_with("DevDetail"), "{why}");
        assert!(!pattern_matches("Acme/R", "Acme/R1"));
        assert!(pattern_matches("*", "x/y"));
    }
}
