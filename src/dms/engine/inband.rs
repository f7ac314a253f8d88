//! In-band delivery (flow 5.4.1): the component travels inside the DM session as a large
//! object, one chunk per message, each sent once the device acknowledged the previous one
//! (213), the last acknowledged with 200.

use super::session::{Pending, Session};
use super::stages::Next;
use super::{Engine, EngineError};
use crate::dms::job::{Job, NodeWrite, Stage, Step};
use crate::dms::store::DmsStoreError;
use crate::scomo;
use crate::syncml::large_object::{self, Chunk};
use crate::syncml::message::*;
use crate::syncml::Encoding;

/// A large object on its way to the device, kept in the session.
#[derive(Debug)]
pub(super) struct InbandDelivery {
    pub(super) job: String,
    sha256: String,
    chunks: Vec<Chunk>,
    next: usize,
    /// The device acknowledged the previous chunk; the next may go.
    pub(super) ready: bool,
}

impl Engine {
    /// Seed 5.4.1 step 5: checks the build fits the device, splits it into chunks that fit
    /// the device's MaxMsgSize and sends the first.
    pub(super) async fn start_delivery(
        &self,
        s: &mut Session,
        job: &mut Job,
    ) -> Result<Next, EngineError> {
        let Some(build_id) = job.chosen_build.clone() else {
            job.stage = Stage::Choose;
            return Ok(Next::Idle);
        };
        let builds = self.store.run(|st| st.builds()).await?;
        let Some(build) = builds.into_iter().find(|b| b.id == build_id) else {
            let reason = "the chosen build left the catalog".to_string();
            self.finish(job, false, None, Some(reason)).await?;
            return Ok(Next::Idle);
        };
        if build.size > s.max_obj {
            let reason = format!(
                "the component ({} bytes) exceeds the device's MaxObjSize ({} bytes); use alternate delivery",
                build.size, s.max_obj
            );
            self.finish(
                job,
                false,
                Some(scomo::ResultCode::DownloadFailedOutOfMemory.code()),
                Some(reason),
            )
            .await?;
            return Ok(Next::Idle);
        }
        let attempts = job.count(Step::Delivery);
        if attempts >= self.cfg.max_delivery_attempts as usize {
            let reason = format!(
                "the in-band delivery started {attempts} times and never completed; the device \
                 keeps dropping the session (max_delivery_attempts)"
            );
            self.finish(job, false, None, Some(reason)).await?;
            return Ok(Next::Idle);
        }
        let path = self.store.build_path(&build.id);
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|source| DmsStoreError::Io { path, source })?;
        // Leave room for the header, statuses and item markup around the chunk.
        let budget = (s.max_msg as usize).saturating_sub(2048).max(1024);
        // In XML a chunk travels as base64 (4/3 of its bytes); in WBXML as raw OPAQUE bytes.
        let raw_per_chunk = match s.encoding {
            Encoding::Xml => large_object::raw_per_chunk(budget),
            Encoding::Wbxml => budget,
        };
        let chunks = large_object::split_b64(&bytes, raw_per_chunk);
        job.record(
            Step::Delivery,
            Some(format!(
                "{} bytes over DM in {} message(s)",
                bytes.len(),
                chunks.len()
            )),
        );
        job.stage = Stage::Delivering;
        self.save_job(job).await?;
        // Each chunk takes a message: they do not count toward the session's cap.
        s.expected_messages = s
            .expected_messages
            .saturating_add(u32::try_from(chunks.len()).unwrap_or(u32::MAX));
        s.delivery = Some(InbandDelivery {
            job: job.id.clone(),
            sha256: build.sha256.clone(),
            chunks,
            next: 0,
            ready: true,
        });
        Ok(self.next_chunk(s, job))
    }

    /// The next chunk as an Add of the Delivered node's `Data` (the first message also adds
    /// the node, its package id, name and digest).
    pub(super) fn next_chunk(&self, s: &mut Session, job: &Job) -> Next {
        let Some(d) = s.delivery.as_mut() else {
            return Next::Idle;
        };
        let Some(chunk) = d.chunks.get(d.next).cloned() else {
            return Next::Idle;
        };
        let sha256 = d.sha256.clone();
        let first = d.next == 0;
        d.next += 1;
        d.ready = false;
        let pkg = job.node_id();
        let node = scomo::delivered_node(&pkg);
        let mut commands = Vec::new();
        if first {
            // The component's node does not exist on the device until we add it.
            let writes = [
                NodeWrite::interior(node.clone()),
                NodeWrite::leaf(format!("{node}/PkgID"), pkg.clone()),
                NodeWrite::leaf(
                    format!("{node}/Name"),
                    job.component.clone().unwrap_or_default(),
                ),
                // SCOMO 1.0 has no hash node; ours is Ext/Sha256 (see OMA-DM-NOTES.md §6).
                NodeWrite::interior(format!("{node}/Ext")),
                NodeWrite::leaf(format!("{node}/Ext/Sha256"), sha256),
            ];
            commands = Self::add_commands(s, &job.id, &writes);
        }
        let mut items = Vec::new();
        items.push(Item {
            target: Some(Location::uri(format!("{node}/Data"))),
            meta: Meta {
                format: Some("b64".into()),
                type_: Some("application/octet-stream".into()),
                size: chunk.size,
                ..Meta::default()
            },
            data: Some(chunk.data),
            more_data: chunk.more,
            ..Item::default()
        });
        let cmd_id = s.cmd_id();
        s.outstanding.insert(
            cmd_id,
            Pending::Chunk {
                job: job.id.clone(),
                last: !chunk.more,
            },
        );
        // Every chunk of the object travels in the same command, an Add of its Data leaf.
        commands.push(Command::Add(ItemCommand {
            cmd_id,
            items,
            ..ItemCommand::default()
        }));
        Next::Send {
            commands,
            final_: !chunk.more,
        }
    }
}
