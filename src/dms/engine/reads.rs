//! Reading the device's tree for a job: DevDetail (build selection by firmware) and the SCOMO
//! inventory (alternative flows 2, inventory jobs). One `Get …?list=StructData` when the device
//! supports it; when it answers 406 (many do not implement `?list=`), a bounded walk of the
//! subtree, node by node, whose leaves are read as the `?list=` answer would have listed them.
//! Any other refusal ends the read with the device's status on the job's timeline.

use std::collections::VecDeque;

use super::session::{Pending, Session};
use super::{Engine, EngineError};
use crate::dms::job::{JobOp, Step};
use crate::scomo;
use crate::syncml::message::*;
use crate::syncml::tree::DevDetail;

/// What a read is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Read {
    Detail,
    Inventory,
}

impl Read {
    /// The one-command read: the subtree with its leaves' values.
    pub(super) fn list_uri(self) -> String {
        format!("{}?list=StructData", self.root())
    }

    pub(super) fn root(self) -> &'static str {
        match self {
            Read::Detail => "./DevDetail",
            Read::Inventory => "./SCOMO/Inventory",
        }
    }
}

/// A walk of a subtree without `?list=`: nodes still to Get, leaves read so far.
#[derive(Debug)]
pub(super) struct Walk {
    job: String,
    what: Read,
    queue: VecDeque<String>,
    leaves: Vec<Item>,
    gets: usize,
}

/// Gets one walk may send in all (a DevDetail is a dozen nodes; an inventory a few per
/// component): a device whose tree never ends does not keep the session busy.
const MAX_WALK_GETS: usize = 512;
/// Gets per message.
const WALK_BATCH: usize = 16;

impl Engine {
    /// The Get that reads `what` for `job` in one command.
    pub(super) fn read(&self, s: &mut Session, job: &str, what: Read) -> Command {
        s.get(
            &what.list_uri(),
            Pending::Read {
                job: job.to_string(),
                what,
            },
        )
    }

    /// The device's Status for a read: success waits for its Results; 406 to `?list=` starts
    /// a walk; anything else ends the read with that status.
    pub(super) async fn on_read_status(
        &self,
        s: &mut Session,
        st: &Status,
        pending: Pending,
    ) -> Result<(), EngineError> {
        let Pending::Read { job, what } = pending else {
            return Ok(());
        };
        match st.code {
            200 => {
                // The Results follow this Status in the same message.
                s.outstanding
                    .insert(st.cmd_ref, Pending::Read { job, what });
            }
            406 => {
                tracing::info!(%job, device = %s.device, uri = %what.list_uri(), "?list= not supported; reading node by node");
                s.walks.push_back(Walk {
                    job,
                    what,
                    queue: VecDeque::from([what.root().to_string()]),
                    leaves: Vec::new(),
                    gets: 0,
                });
            }
            code => self.read_refused(&job, what, code).await?,
        }
        Ok(())
    }

    /// A Get of one node of a walk: its failure only leaves that node out.
    pub(super) fn on_walk_status(s: &mut Session, st: &Status, pending: Pending) {
        if st.code == 200 {
            s.outstanding.insert(st.cmd_ref, pending);
        }
    }

    /// The Results of a read (`?list=`) or of one node of a walk.
    pub(super) async fn on_read_results(
        &self,
        s: &mut Session,
        r: &Results,
        pending: Pending,
    ) -> Result<(), EngineError> {
        match pending {
            Pending::Read { job, what, .. } => self.apply_read(s, &job, what, &r.items).await,
            Pending::WalkGet { job } => {
                let Some(walk) = s.walks.iter_mut().find(|w| w.job == job) else {
                    return Ok(());
                };
                for item in &r.items {
                    let Some(src) = item.source.as_ref().map(|l| l.uri.clone()) else {
                        continue;
                    };
                    if item.meta.format.as_deref() == Some("node") {
                        let children = item.data.as_deref().unwrap_or("");
                        for child in children.split('/').filter(|c| !c.is_empty()) {
                            // Names only: a child that names a path is not ours to follow.
                            if !child.contains("..") && !child.contains('?') {
                                walk.queue.push_back(format!("{src}/{child}"));
                            }
                        }
                    } else {
                        walk.leaves.push(item.clone());
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The next Gets of the oldest walk; a walk with nothing left to read is applied as if
    /// its `?list=` had been answered. `None` when no walk needs the device.
    pub(super) async fn continue_walks(
        &self,
        s: &mut Session,
    ) -> Result<Option<Vec<Command>>, EngineError> {
        while let Some(walk) = s.walks.front_mut() {
            if !walk.queue.is_empty() && walk.gets < MAX_WALK_GETS {
                let n = WALK_BATCH
                    .min(walk.queue.len())
                    .min(MAX_WALK_GETS - walk.gets);
                walk.gets += n;
                let job = walk.job.clone();
                let uris: Vec<String> = walk.queue.drain(..n).collect();
                let cmds = uris
                    .iter()
                    .map(|u| s.get(u, Pending::WalkGet { job: job.clone() }))
                    .collect();
                return Ok(Some(cmds));
            }
            let Some(done) = s.walks.pop_front() else {
                break;
            };
            if !done.queue.is_empty() {
                tracing::warn!(job = %done.job, gets = done.gets, "tree walk cut at its limit");
            }
            self.apply_read(s, &done.job, done.what, &done.leaves)
                .await?;
        }
        Ok(None)
    }

    /// What was read goes on the device record and the job's timeline.
    async fn apply_read(
        &self,
        s: &mut Session,
        job: &str,
        what: Read,
        items: &[Item],
    ) -> Result<(), EngineError> {
        let device = s.device.clone();
        let (step, summary) = match what {
            Read::Detail => {
                let detail = DevDetail::from_items(items);
                let summary = detail.as_ref().map(|d| format!("FwV {}", d.fw_v));
                if let Some(d) = detail {
                    self.store
                        .run(move |st| st.update_device(&device, |dev| dev.devdetail = Some(d)))
                        .await?;
                }
                (Step::Devdetail, summary)
            }
            Read::Inventory => {
                let inv = super::answers::inventory_json(items);
                let summary = format!(
                    "{} delivered, {} deployed",
                    inv["delivered"].as_object().map_or(0, |o| o.len()),
                    inv["deployed"].as_object().map_or(0, |o| o.len())
                );
                self.store
                    .run(move |st| st.update_device(&device, |dev| dev.inventory = Some(inv)))
                    .await?;
                (Step::Inventory, Some(summary))
            }
        };
        if let Some(mut j) = self.load_job(job).await? {
            j.record(step, summary);
            self.save_job(&j).await?;
        }
        Ok(())
    }

    /// The device refused a read: the job's timeline says which and how; an inventory job
    /// fails (it has nothing to report), others go on without what they could not read.
    async fn read_refused(&self, job: &str, what: Read, code: u16) -> Result<(), EngineError> {
        let Some(mut j) = self.load_job(job).await? else {
            return Ok(());
        };
        if j.state.is_final() {
            return Ok(());
        }
        let uri = what.list_uri();
        j.record(
            Step::DeviceRefused,
            Some(format!("Get {uri}: status {code}")),
        );
        let step = match what {
            Read::Detail => Step::Devdetail,
            Read::Inventory => Step::Inventory,
        };
        j.record(step, Some(format!("not read (status {code})")));
        if what == Read::Inventory && j.operation == JobOp::Inventory {
            let reason =
                format!("the device refused the inventory read (Get {uri}: status {code})");
            return self
                .finish(
                    &mut j,
                    false,
                    Some(scomo::ResultCode::ClientError.code()),
                    Some(reason),
                )
                .await;
        }
        self.save_job(&j).await
    }
}
