//! Alternate delivery (flow 5.4.2): the build goes on a healthy ADS node, a one-time URL is
//! minted for the device, and the device is told to fetch it (a Download node and its Exec).
//! The node's signed callbacks land on the job's timeline; one that says the URL ended unused
//! fails a job still waiting for the device.

use super::session::Session;
use super::{Engine, EngineError};
use crate::dms::catalog::Build;
use crate::dms::job::{node_id, Job, JobOp, NodeWrite, Stage, Step, TicketRef, TimelineEntry};
use crate::dms::store::now_ms;
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
            job.record(
                Step::MechanismChosen,
                Some(format!("alternate download via ADS {}", node.name)),
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
                NodeWrite::leaf(format!("{dl}/PkgType"), "application/octet-stream"),
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
        };
        let detail = format!(
            "{} bytes sent in {} request(s) by {}",
            event.bytes_sent, event.requests, event.node
        );
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
}
