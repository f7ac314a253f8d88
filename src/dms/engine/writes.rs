//! Writing nodes on the device the way strict devices require: SCOMO nodes the server creates
//! (`./SCOMO/Download/<X>`, a delivered component's node) do not exist until it adds them, so
//! they go out as `Add`, one command per node (interior nodes with `Format node` first), and
//! as `Replace` only when the device answers 418 (already exists). An Exec that depends on the
//! writes goes out only once all of them succeeded, in a later message; a refused write ends
//! the job with the device's status and revokes the ADS ticket minted for it.

use super::session::{Pending, Session, WriteBatch};
use super::stages::Next;
use super::{Engine, EngineError};
use crate::dms::job::{Job, NodeWrite, Stage, Step};
use crate::scomo;
use crate::syncml::message::*;

/// The command item of a node write.
fn item(w: &NodeWrite) -> Item {
    let item = Item::target(w.path.clone()).with_meta(Meta::format(&w.format));
    match &w.value {
        Some(v) => item.with_data(v.clone()),
        None => item,
    }
}

impl Engine {
    /// `Add` commands for `writes`, remembered in the job's batch.
    pub(super) fn add_commands(s: &mut Session, job: &str, writes: &[NodeWrite]) -> Vec<Command> {
        writes
            .iter()
            .map(|w| {
                let cmd_id = s.cmd_id();
                s.outstanding.insert(
                    cmd_id,
                    Pending::Write {
                        job: job.to_string(),
                        write: w.clone(),
                        replace: false,
                    },
                );
                s.writes.entry(job.to_string()).or_default().awaiting += 1;
                Command::Add(ItemCommand {
                    cmd_id,
                    items: vec![item(w)],
                    ..ItemCommand::default()
                })
            })
            .collect()
    }

    /// The device's Status for a write: 418 to an `Add` means the node is there already
    /// (fine for an interior node; a leaf is then replaced); anything but 200 is a refusal.
    pub(super) fn on_write_status(s: &mut Session, st: &Status, pending: Pending) {
        let Pending::Write {
            job,
            write,
            replace,
        } = pending
        else {
            return;
        };
        let batch = s.writes.entry(job).or_default();
        batch.awaiting = batch.awaiting.saturating_sub(1);
        match st.code {
            200 => {}
            418 if !replace && write.is_interior() => {}
            418 if !replace => batch.replaces.push(write),
            code => {
                let cmd = if replace { "Replace" } else { "Add" };
                batch
                    .failed
                    .get_or_insert((format!("{cmd} {}", write.path), code));
            }
        }
    }

    /// Before a job's stage runs: a refused write fails the job (`Err(Next)`); writes the
    /// device answered 418 go out again as `Replace` (`Ok(commands)`), alone in their message
    /// unless a large object is on its way (its next chunk travels with them).
    pub(super) async fn settle_writes(
        &self,
        s: &mut Session,
        job: &mut Job,
    ) -> Result<Result<Vec<Command>, Next>, EngineError> {
        let Some(batch) = s.writes.get_mut(&job.id) else {
            return Ok(Ok(Vec::new()));
        };
        if let Some((what, code)) = batch.failed.take() {
            s.writes.remove(&job.id);
            if s.delivery.as_ref().is_some_and(|d| d.job == job.id) {
                s.delivery = None;
            }
            job.record(Step::DeviceRefused, Some(format!("{what}: status {code}")));
            self.revoke_ticket(job).await;
            let reason = format!("the device refused {what} with status {code}");
            let result = if job
                .exec_path
                .as_deref()
                .is_some_and(|p| p.starts_with("./SCOMO/Download/"))
            {
                scomo::ResultCode::DownloadFailed
            } else {
                scomo::ResultCode::ClientError
            };
            self.finish(job, false, Some(result.code()), Some(reason))
                .await?;
            return Ok(Err(Next::Idle));
        }
        if batch.awaiting > 0 {
            // Never answered (the device's message had no Status for them): write again.
            s.writes.remove(&job.id);
            return Ok(Ok(Vec::new()));
        }
        if batch.replaces.is_empty() {
            if job.stage != Stage::Writing {
                s.writes.remove(&job.id);
            }
            return Ok(Ok(Vec::new()));
        }
        let replaces = std::mem::take(&mut batch.replaces);
        let commands = replaces
            .into_iter()
            .map(|w| {
                let cmd_id = s.cmd_id();
                let it = item(&w);
                s.outstanding.insert(
                    cmd_id,
                    Pending::Write {
                        job: job.id.clone(),
                        write: w,
                        replace: true,
                    },
                );
                Command::Replace(ItemCommand {
                    cmd_id,
                    items: vec![it],
                    ..ItemCommand::default()
                })
            })
            .collect::<Vec<_>>();
        s.writes.entry(job.id.clone()).or_default().awaiting += commands.len();
        Ok(Ok(commands))
    }

    /// Stage `Writing`: the job's nodes are added; once every write succeeded, its Exec.
    pub(super) async fn stage_writing(
        &self,
        s: &mut Session,
        job: &mut Job,
    ) -> Result<Next, EngineError> {
        match s.writes.get(&job.id) {
            None => {
                let writes = job.node_writes.clone();
                s.writes.insert(job.id.clone(), WriteBatch::default());
                Ok(Next::send(Self::add_commands(s, &job.id, &writes)))
            }
            Some(b) if b.awaiting > 0 => Ok(Next::Idle),
            Some(_) => {
                s.writes.remove(&job.id);
                job.node_writes.clear();
                job.stage = Stage::Exec;
                Ok(Next::Continue)
            }
        }
    }

    /// Revokes the job's ADS ticket, if it has one (best effort: the ticket expires anyway).
    pub(super) async fn revoke_ticket(&self, job: &mut Job) {
        let Some(t) = job.ticket.take() else {
            return;
        };
        let Some(node) = self.ads.nodes.iter().find(|n| n.name == t.node) else {
            return;
        };
        match node.revoke(&t.id).await {
            Ok(()) => {
                tracing::info!(job = %job.id, ticket = %t.id, node = %t.node, "ticket revoked")
            }
            Err(e) => {
                tracing::warn!(job = %job.id, ticket = %t.id, error = %e, "could not revoke the ticket; it expires on its own")
            }
        }
    }
}
