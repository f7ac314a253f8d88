//! The job stage machine: after the device's message has been answered, each open job of the
//! device moves through its [`Stage`]s until one needs the device, and that stage's commands go
//! out in the reply. One method per stage; each returns what to do [`Next`].

use super::reads::Read;
use super::session::Session;
use super::{Engine, EngineError};
use crate::dms::catalog;
use crate::dms::job::{Delivery, Job, JobOp, JobState, Stage, Step};
use crate::scomo;
use crate::syncml::message::Command;

/// What a stage decided.
#[derive(Debug)]
pub(super) enum Next {
    /// The job moved on (its stage changed): run the new stage now.
    Continue,
    /// These commands go to the device; `final_` is false while a large object continues.
    Send {
        commands: Vec<Command>,
        final_: bool,
    },
    /// Nothing for the device from this job now (it ended, or waits on the device).
    Idle,
}

impl Next {
    pub(super) fn send(commands: Vec<Command>) -> Self {
        Next::Send {
            commands,
            final_: true,
        }
    }
}

impl Engine {
    /// Emits the next commands for the device's jobs. Returns the commands and whether the
    /// message is the last of our package (false while a large object continues).
    pub(super) async fn drive(&self, s: &mut Session) -> Result<(Vec<Command>, bool), EngineError> {
        if let Some(commands) = self.continue_walks(s).await? {
            return Ok((commands, true));
        }
        let device_id = s.device.clone();
        let jobs = self.store.run(move |st| st.open_jobs(&device_id)).await?;
        // Jobs on one component of a device run one at a time, oldest first: they address the
        // same SCOMO nodes (a second delivery would overwrite the first's Download node and
        // its URL before the device fetched it).
        let mut busy = std::collections::HashSet::new();
        for mut job in jobs {
            let component = job.component.as_ref().map(|_| job.node_id());
            let waits = component
                .as_ref()
                .is_some_and(|c| busy.contains(c) && job.stage == Stage::Queued);
            if let Some(c) = component {
                busy.insert(c);
            }
            if waits || job.stage == Stage::AwaitingResult {
                continue;
            }
            if let Next::Send { commands, final_ } = self.drive_job(s, &mut job).await? {
                if !commands.is_empty() {
                    return Ok((commands, final_));
                }
            }
        }
        Ok((Vec::new(), true))
    }

    /// Runs one job's stages until one sends commands or has nothing to do.
    pub(super) async fn drive_job(
        &self,
        s: &mut Session,
        job: &mut Job,
    ) -> Result<Next, EngineError> {
        let replaces = match self.settle_writes(s, job).await? {
            Ok(replaces) => replaces,
            Err(ended) => return Ok(ended),
        };
        if !replaces.is_empty() && job.stage != Stage::Delivering {
            // Nothing that depends on them goes out before they are answered.
            return Ok(Next::send(replaces));
        }
        let next = self.run_stages(s, job).await?;
        Ok(match next {
            _ if replaces.is_empty() => next,
            Next::Send {
                mut commands,
                final_,
            } => {
                commands.splice(0..0, replaces);
                Next::Send { commands, final_ }
            }
            _ => Next::send(replaces),
        })
    }

    async fn run_stages(&self, s: &mut Session, job: &mut Job) -> Result<Next, EngineError> {
        loop {
            let next = match job.stage {
                Stage::Queued => self.stage_queued(s, job).await?,
                Stage::Reading => self.stage_reading(job).await?,
                Stage::Choose => self.stage_choose(s, job).await?,
                Stage::Mechanism => self.stage_mechanism(s, job).await?,
                Stage::Deliver => self.start_delivery(s, job).await?,
                Stage::Delivering => self.stage_delivering(s, job),
                Stage::Acked => self.stage_acked(job).await?,
                Stage::Writing => self.stage_writing(s, job).await?,
                Stage::Exec | Stage::ExecSent => self.stage_exec(s, job).await?,
                Stage::AwaitingResult | Stage::Done => Next::Idle,
            };
            if !matches!(next, Next::Continue) {
                return Ok(next);
            }
        }
    }

    /// The session has started (seed step 2) and the device sent its DevInfo (step 3); read
    /// DevDetail and the inventory first when asked (alternative flow 2).
    async fn stage_queued(&self, s: &mut Session, job: &mut Job) -> Result<Next, EngineError> {
        job.state = JobState::Running;
        if !job.has(Step::SessionInitiated) {
            job.record(
                Step::SessionInitiated,
                Some(format!("session {}", s.session_id)),
            );
        }
        if s.devinfo_seen && !job.has(Step::Devinfo) {
            let dev = self.device(&s.device).await?;
            let d = dev
                .and_then(|d| d.devinfo)
                .map(|i| format!("{} {}", i.man, i.model));
            job.record(Step::Devinfo, d);
        }
        if job.inventory_first || job.operation == JobOp::Inventory {
            let mut cmds = Vec::new();
            if job.inventory_first {
                cmds.push(self.read(s, &job.id, Read::Detail));
            }
            cmds.push(self.read(s, &job.id, Read::Inventory));
            job.stage = Stage::Reading;
            self.save_job(job).await?;
            return Ok(Next::send(cmds));
        }
        job.stage = Self::after_reading(job);
        Ok(Next::Continue)
    }

    fn after_reading(job: &Job) -> Stage {
        if job.operation.is_delivery() {
            Stage::Choose
        } else {
            Stage::Exec
        }
    }

    /// The reads are answered: an inventory job is done (if the device answered it), others
    /// go on.
    async fn stage_reading(&self, job: &mut Job) -> Result<Next, EngineError> {
        if job.operation == JobOp::Inventory {
            if job.has(Step::Inventory) {
                self.finish(job, true, Some(1200), None).await?;
            } else {
                let reason = "the device answered the inventory read with no Results".to_string();
                self.finish(
                    job,
                    false,
                    Some(scomo::ResultCode::ClientError.code()),
                    Some(reason),
                )
                .await?;
            }
            return Ok(Next::Idle);
        }
        job.stage = Self::after_reading(job);
        Ok(Next::Continue)
    }

    /// Seed step 4: the build that fits the device.
    async fn stage_choose(&self, s: &mut Session, job: &mut Job) -> Result<Next, EngineError> {
        let Some(name) = job.component.clone() else {
            self.finish(job, false, None, Some("the job names no component".into()))
                .await?;
            return Ok(Next::Idle);
        };
        let dev = self.device(&s.device).await?.unwrap_or_default();
        let Some(info) = dev.devinfo.clone() else {
            let reason = "the device never sent its DevInfo".to_string();
            self.finish(job, false, None, Some(reason)).await?;
            return Ok(Next::Idle);
        };
        let builds = self.store.run(|st| st.builds()).await?;
        let needs_fw = builds.iter().any(|b| b.name == name && b.needs_firmware());
        if needs_fw && dev.devdetail.is_none() && !job.has(Step::Devdetail) {
            // Some builds depend on the firmware version: read DevDetail first.
            let cmd = self.read(s, &job.id, Read::Detail);
            self.save_job(job).await?;
            return Ok(Next::send(vec![cmd]));
        }
        if let Some(pinned) = job.pinned_build.clone() {
            let Some(b) = builds.iter().find(|b| b.id == pinned) else {
                job.record(Step::BuildChosen, Some("none".into()));
                let reason = format!("build {pinned} the job names is no longer in the catalog");
                self.finish(job, false, None, Some(reason)).await?;
                return Ok(Next::Idle);
            };
            let short = &b.id[..12.min(b.id.len())];
            job.record(
                Step::BuildChosen,
                Some(format!(
                    "{} {} ({short}, named by the EMI)",
                    b.name, b.version
                )),
            );
            job.chosen_build = Some(b.id.clone());
            job.stage = Stage::Mechanism;
            return Ok(Next::Continue);
        }
        match catalog::choose(&builds, &name, &info, dev.devdetail.as_ref()) {
            Ok(b) => {
                let short = &b.id[..12.min(b.id.len())];
                job.record(
                    Step::BuildChosen,
                    Some(format!("{} {} ({short})", b.name, b.version)),
                );
                job.chosen_build = Some(b.id.clone());
                job.stage = Stage::Mechanism;
                Ok(Next::Continue)
            }
            Err(e) => {
                job.record(Step::BuildChosen, Some("none".into()));
                self.finish(job, false, None, Some(e.to_string())).await?;
                Ok(Next::Idle)
            }
        }
    }

    /// Seed 5.4.2 step 5: in-band or alternate.
    async fn stage_mechanism(&self, s: &mut Session, job: &mut Job) -> Result<Next, EngineError> {
        let builds = self.store.run(|st| st.builds()).await?;
        let Some(build) = builds
            .into_iter()
            .find(|b| Some(&b.id) == job.chosen_build.as_ref())
        else {
            job.stage = Stage::Choose;
            return Ok(Next::Continue);
        };
        let alternate = match job.delivery {
            Delivery::Alternate => true,
            Delivery::Auto => build.size > self.cfg.alternate_threshold && !self.ads.is_empty(),
            Delivery::Dm => false,
        };
        if !alternate {
            job.record(Step::MechanismChosen, Some("in-band over DM".into()));
            job.stage = Stage::Deliver;
            return Ok(Next::Continue);
        }
        if self.prepare_alternate(s, job, &build).await? {
            return Ok(Next::Continue);
        }
        if self.cfg.fallback_to_dm && build.size <= s.max_obj {
            job.record(
                Step::MechanismChosen,
                Some("in-band over DM (no ADS node available)".into()),
            );
            job.stage = Stage::Deliver;
            return Ok(Next::Continue);
        }
        self.finish(
            job,
            false,
            Some(scomo::ResultCode::AlternateDownloadServerUnavailable.code()),
            Some("no ADS node is available for alternate delivery".into()),
        )
        .await?;
        Ok(Next::Idle)
    }

    /// The large object continues once the device acknowledged the previous chunk.
    fn stage_delivering(&self, s: &mut Session, job: &mut Job) -> Next {
        match s.delivery.as_ref() {
            Some(d) if d.job == job.id && d.ready => self.next_chunk(s, job),
            Some(d) if d.job == job.id => Next::Idle,
            // A new session after a drop: start the object over.
            _ => {
                job.stage = Stage::Deliver;
                Next::Continue
            }
        }
    }

    /// Seed 5.4.1 step 6: the device holds the component.
    async fn stage_acked(&self, job: &mut Job) -> Result<Next, EngineError> {
        job.record(Step::DeviceAck, Some("delivery acknowledged".into()));
        if job.operation == JobOp::Download {
            self.finish(job, true, Some(1200), None).await?;
            return Ok(Next::Idle);
        }
        job.stage = Stage::Exec;
        Ok(Next::Continue)
    }

    /// Seed 5.4.3 step 2: the SCOMO operation, with the job id as correlator. An Exec sent in a
    /// session the device dropped is sent again.
    async fn stage_exec(&self, s: &mut Session, job: &mut Job) -> Result<Next, EngineError> {
        let path = job.exec_path();
        let cmd = s.exec(&job.id, &path);
        let step = if path.starts_with("./SCOMO/Download/") {
            Step::DownloadRequested
        } else {
            Step::OperationRequested
        };
        job.record(step, Some(path));
        job.stage = Stage::ExecSent;
        self.save_job(job).await?;
        Ok(Next::send(vec![cmd]))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::dms::ads_client::AdsPool;
    use crate::dms::catalog::Build;
    use crate::dms::engine::EngineConfig;
    use crate::dms::job::JobSource;
    use crate::dms::store::{Device, DmsStore};
    use crate::net::guard::AuthThrottle;
    use crate::syncml::message::{Header, Location, Message};
    use crate::syncml::tree::DevInfo;

    struct Rig {
        _dir: tempfile::TempDir,
        store: DmsStore,
        engine: Engine,
    }

    fn rig(fallback_to_dm: bool) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = DmsStore::open(dir.path()).unwrap();
        store
            .put_device(&Device {
                id: "dev".into(),
                devinfo: Some(DevInfo {
                    dev_id: "dev".into(),
                    man: "Acme".into(),
                    model: "R1".into(),
                    ..DevInfo::default()
                }),
                ..Device::default()
            })
            .unwrap();
        let bytes = vec![7u8; 3000];
        let id = blake3::hash(&bytes).to_hex().to_string();
        std::fs::write(store.build_path(&id), &bytes).unwrap();
        store
            .put_build(&Build {
                id,
                name: "app".into(),
                version: "1.0".into(),
                size: bytes.len() as u64,
                sha256: "00".into(),
                manufacturer: None,
                model: None,
                fw_min: None,
                fw_max: None,
                created_at_ms: 0,
            })
            .unwrap();
        let engine = Engine::new(
            store.clone(),
            EngineConfig {
                server_id: "dms".into(),
                dm_url: "https://dms.test/dm".into(),
                allow_basic: false,
                session_timeout: Duration::from_secs(60),
                emi_url: None,
                limits: Default::default(),
                ads_callback_url: "https://dms.test/cb".into(),
                alternate_threshold: 1 << 20,
                fallback_to_dm,
                dlota_devices: vec!["Acme/R*".into()],
                max_delivery_attempts: 2,
                max_session_messages: 40,
                ticket_ttl_secs: 60,
                default_delivery: Delivery::Dm,
            },
            Arc::new(AdsPool::new(&[]).unwrap()),
            Arc::new(tokio::sync::Notify::new()),
            AuthThrottle::new(3, Duration::from_millis(10), Duration::from_secs(1)),
        );
        Rig {
            _dir: dir,
            store,
            engine,
        }
    }

    fn session(max_msg: u64) -> Session {
        let msg = Message {
            header: Header {
                session_id: "1".into(),
                msg_id: 1,
                source: Location::uri("dev"),
                ..Header::default()
            },
            ..Message::default()
        };
        let mut s = Session::new(&msg, None, crate::syncml::Encoding::Xml);
        s.max_msg = max_msg;
        s.devinfo_seen = true;
        s
    }

    fn job(op: JobOp, delivery: Delivery, inventory_first: bool) -> Job {
        let component = (op != JobOp::Inventory).then(|| "app".to_string());
        Job::new(
            "dev",
            op,
            component,
            delivery,
            inventory_first,
            JobSource::Emi,
        )
    }

    fn sent(next: Next) -> (Vec<Command>, bool) {
        match next {
            Next::Send { commands, final_ } => (commands, final_),
            other => panic!("expected commands, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn in_band_delivery_chooses_the_build_and_sends_chunks_one_at_a_time() {
        let r = rig(false);
        let mut s = session(4096);
        let mut j = job(JobOp::DownloadInstall, Delivery::Dm, false);
        let (cmds, final_) = sent(r.engine.drive_job(&mut s, &mut j).await.unwrap());
        assert_eq!(j.stage, Stage::Delivering);
        assert_eq!(j.state, JobState::Running);
        assert!(j.has(Step::SessionInitiated) && j.has(Step::Devinfo));
        assert!(j.has(Step::BuildChosen) && j.has(Step::MechanismChosen));
        // The node, PkgID, Name, Ext and Ext/Sha256 are added, then the first chunk.
        assert_eq!(cmds.len(), 6, "{cmds:#?}");
        assert!(cmds.iter().all(|c| matches!(c, Command::Add(_))));
        assert!(
            !final_,
            "3000 bytes in 4 KiB messages take more than one chunk"
        );
        // Until the device acknowledges the chunk, nothing more goes out.
        assert!(matches!(
            r.engine.drive_job(&mut s, &mut j).await.unwrap(),
            Next::Idle
        ));
        s.delivery.as_mut().unwrap().ready = true;
        let (cmds, _) = sent(r.engine.drive_job(&mut s, &mut j).await.unwrap());
        assert_eq!(cmds.len(), 1);
        // The stage is durable: a new session starts the object over.
        let stored = r.store.job(&j.id).unwrap().unwrap();
        assert_eq!(stored.stage, Stage::Delivering);
        let mut fresh = session(4096);
        let mut j2 = stored;
        sent(r.engine.drive_job(&mut fresh, &mut j2).await.unwrap());
        assert_eq!(j2.count(Step::Delivery), 2);
        // A third start passes max_delivery_attempts (2): the job fails instead.
        let mut third = session(4096);
        j2.stage = Stage::Delivering;
        let next = r.engine.drive_job(&mut third, &mut j2).await.unwrap();
        assert!(matches!(next, Next::Idle));
        assert_eq!(j2.state, JobState::Failed);
        assert_eq!(j2.stage, Stage::Done);
    }

    #[tokio::test]
    async fn acked_download_succeeds_and_acked_install_execs() {
        let r = rig(false);
        let mut s = session(1 << 20);
        let mut j = job(JobOp::Download, Delivery::Dm, false);
        j.stage = Stage::Acked;
        r.store.put_job(&j).unwrap();
        assert!(matches!(
            r.engine.drive_job(&mut s, &mut j).await.unwrap(),
            Next::Idle
        ));
        assert_eq!(j.state, JobState::Succeeded);
        assert_eq!(j.result_code, Some(1200));
        assert_eq!(r.store.job(&j.id).unwrap().unwrap().stage, Stage::Done);

        let mut j = job(JobOp::DownloadInstall, Delivery::Dm, false);
        j.stage = Stage::Acked;
        let (cmds, final_) = sent(r.engine.drive_job(&mut s, &mut j).await.unwrap());
        assert!(final_);
        assert_eq!(j.stage, Stage::ExecSent);
        let Command::Exec(e) = &cmds[0] else {
            panic!("expected an Exec, got {cmds:?}")
        };
        assert_eq!(e.correlator.as_deref(), Some(j.id.as_str()));
        assert!(s.outstanding.contains_key(&e.cmd_id));
    }

    #[tokio::test]
    async fn inventory_first_reads_before_choosing_and_inventory_jobs_end_after_reading() {
        let r = rig(false);
        let mut s = session(1 << 20);
        let mut j = job(JobOp::Install, Delivery::Dm, true);
        let (cmds, _) = sent(r.engine.drive_job(&mut s, &mut j).await.unwrap());
        assert_eq!(cmds.len(), 2, "DevDetail and inventory Gets");
        assert!(cmds.iter().all(|c| matches!(c, Command::Get(_))));
        assert_eq!(j.stage, Stage::Reading);
        // Next message: the reads are answered, the operation goes out.
        let (cmds, _) = sent(r.engine.drive_job(&mut s, &mut j).await.unwrap());
        assert!(matches!(cmds[0], Command::Exec(_)));

        // An inventory job succeeds once the inventory was read...
        let mut inv = job(JobOp::Inventory, Delivery::Dm, false);
        r.store.put_job(&inv).unwrap();
        let (cmds, _) = sent(r.engine.drive_job(&mut s, &mut inv).await.unwrap());
        assert_eq!(cmds.len(), 1);
        inv.record(Step::Inventory, Some("1 delivered, 0 deployed".into()));
        assert!(matches!(
            r.engine.drive_job(&mut s, &mut inv).await.unwrap(),
            Next::Idle
        ));
        assert_eq!(inv.state, JobState::Succeeded);
        // ...and fails when the device sent no inventory.
        let mut inv = job(JobOp::Inventory, Delivery::Dm, false);
        r.store.put_job(&inv).unwrap();
        sent(r.engine.drive_job(&mut s, &mut inv).await.unwrap());
        r.engine.drive_job(&mut s, &mut inv).await.unwrap();
        assert_eq!(inv.state, JobState::Failed);
        assert_ne!(inv.result_code, Some(1200));
    }

    /// A device status for each write: 418 to a leaf's Add becomes a Replace, sent before
    /// anything that depends on it; any other refusal ends the job with the device's status.
    #[tokio::test]
    async fn node_writes_replace_on_418_and_fail_the_job_on_a_refusal() {
        use crate::dms::job::NodeWrite;
        use crate::syncml::message::Status;
        let r = rig(false);
        let mut s = session(1 << 20);
        let mut j = job(JobOp::Download, Delivery::Alternate, false);
        r.store.put_job(&j).unwrap();
        j.node_writes = vec![
            NodeWrite::interior("./SCOMO/Download/app"),
            NodeWrite::leaf("./SCOMO/Download/app/PkgURL", "https://ads/d/x"),
        ];
        j.exec_path = Some("./SCOMO/Download/app/Operations/Download".into());
        j.stage = Stage::Writing;
        let (cmds, _) = sent(r.engine.drive_job(&mut s, &mut j).await.unwrap());
        assert_eq!(cmds.len(), 2);
        let answer = |s: &mut Session, cmd: &Command, code: u16| {
            let st = Status {
                cmd_ref: cmd.cmd_id(),
                code,
                ..Status::default()
            };
            let p = s.outstanding.remove(&cmd.cmd_id()).unwrap();
            Engine::on_write_status(s, &st, p);
        };
        // Both exist already: the interior node is fine, the leaf is replaced.
        answer(&mut s, &cmds[0], 418);
        answer(&mut s, &cmds[1], 418);
        let (replaced, _) = sent(r.engine.drive_job(&mut s, &mut j).await.unwrap());
        assert_eq!(replaced.len(), 1, "no Exec before the Replace is answered");
        assert!(matches!(replaced[0], Command::Replace(_)));
        answer(&mut s, &replaced[0], 200);
        let (exec, _) = sent(r.engine.drive_job(&mut s, &mut j).await.unwrap());
        assert!(matches!(exec[0], Command::Exec(_)));
        assert_eq!(j.stage, Stage::ExecSent);
        assert!(j.node_writes.is_empty());

        // A refused write: the job ends with the device's status on its timeline.
        let mut j = job(JobOp::Download, Delivery::Alternate, false);
        r.store.put_job(&j).unwrap();
        j.node_writes = vec![NodeWrite::interior("./SCOMO/Download/app")];
        j.stage = Stage::Writing;
        let (cmds, _) = sent(r.engine.drive_job(&mut s, &mut j).await.unwrap());
        answer(&mut s, &cmds[0], 405);
        assert!(matches!(
            r.engine.drive_job(&mut s, &mut j).await.unwrap(),
            Next::Idle
        ));
        assert_eq!(j.state, JobState::Failed);
        let refused = j
            .timeline
            .iter()
            .find(|e| e.step == Step::DeviceRefused)
            .unwrap();
        assert_eq!(
            refused.detail.as_deref(),
            Some("Add ./SCOMO/Download/app: status 405")
        );
    }

    #[tokio::test]
    async fn alternate_without_nodes_falls_back_or_fails_with_the_scomo_code() {
        let r = rig(false);
        let mut s = session(1 << 20);
        let mut j = job(JobOp::Download, Delivery::Alternate, false);
        assert!(matches!(
            r.engine.drive_job(&mut s, &mut j).await.unwrap(),
            Next::Idle
        ));
        assert_eq!(j.state, JobState::Failed);
        assert_eq!(
            j.result_code,
            Some(scomo::ResultCode::AlternateDownloadServerUnavailable.code())
        );

        let r = rig(true);
        let mut j = job(JobOp::Download, Delivery::Alternate, false);
        sent(r.engine.drive_job(&mut s, &mut j).await.unwrap());
        assert_eq!(j.stage, Stage::Delivering);
    }

    #[tokio::test]
    async fn a_job_without_a_matching_build_fails_at_choose() {
        let r = rig(false);
        let mut s = session(1 << 20);
        let mut j = job(JobOp::Download, Delivery::Dm, false);
        j.component = Some("nothing-by-this-name".into());
        assert!(matches!(
            r.engine.drive_job(&mut s, &mut j).await.unwrap(),
            Next::Idle
        ));
        assert_eq!(j.state, JobState::Failed);
        assert!(j.has(Step::BuildChosen));
        assert!(j.reason.is_some());
    }

    /// A DLOTA report the ADS relays: a failure fails the job waiting for the device with the
    /// SCOMO code it means, even when the device never sends its own SCOMO report; a success
    /// or a report about an earlier ticket changes nothing.
    #[tokio::test]
    async fn install_notify_failures_end_the_job_with_the_mapped_scomo_code() {
        use crate::dms::job::TicketRef;
        use crate::webhook::event::{DownloadEvent, DownloadEventKind, InstallNotify};
        let r = rig(false);
        let waiting = |ticket: &str| {
            let mut j = job(JobOp::Download, Delivery::Alternate, false);
            j.stage = Stage::AwaitingResult;
            j.state = JobState::Running;
            j.ticket = Some(TicketRef {
                node: "edge-1".into(),
                id: ticket.into(),
            });
            r.store.put_job(&j).unwrap();
            j
        };
        let report = |job: &Job, ticket: &str, status: u16| DownloadEvent {
            event: DownloadEventKind::Reported,
            event_id: format!("evt-{ticket}-{status}"),
            ticket_id: ticket.into(),
            component_id: "c".into(),
            device_id: Some("dev".into()),
            size: 3000,
            bytes_sent: 0,
            requests: 0,
            first_byte_at: None,
            node: "edge-1".into(),
            context: Some(serde_json::json!({"job": job.id})),
            completed_at: None,
            delivery: None,
            ended_at: None,
            bytes_delivered: Some(0),
            ranges: None,
            report: Some(InstallNotify {
                status,
                message: String::new(),
                reported_at: String::new(),
                node_delivered: false,
            }),
        };
        let cancelled = waiting("t-1");
        r.engine
            .on_ads_callback(&report(&cancelled, "t-1", 902))
            .await
            .unwrap();
        let j = r.store.job(&cancelled.id).unwrap().unwrap();
        assert_eq!(j.state, JobState::Failed);
        assert_eq!(j.result_code, Some(1401));
        assert!(
            j.reason
                .as_deref()
                .unwrap()
                .contains("902 (User Cancelled)"),
            "{:?}",
            j.reason
        );
        let out_of_memory = waiting("t-2");
        r.engine
            .on_ads_callback(&report(&out_of_memory, "t-2", 901))
            .await
            .unwrap();
        let j = r.store.job(&out_of_memory.id).unwrap().unwrap();
        assert_eq!(j.result_code, Some(1404));
        // A success claim, and a failure about a ticket the job no longer uses, wait for the
        // device's own report.
        let claimed = waiting("t-3");
        r.engine
            .on_ads_callback(&report(&claimed, "t-3", 900))
            .await
            .unwrap();
        r.engine
            .on_ads_callback(&report(&claimed, "t-old", 905))
            .await
            .unwrap();
        let j = r.store.job(&claimed.id).unwrap().unwrap();
        assert_eq!(j.state, JobState::Running);
        assert_eq!(j.stage, Stage::AwaitingResult);
    }
}
