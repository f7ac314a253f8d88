//! The one in-memory copy of a ticket in use: its record, its object, and its progress under a
//! short-held mutex (never across an await), found again through a weak registry while any
//! response holds it; and the callback event of a state change, built from its snapshot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use super::persist::NewEvent;
use super::record::{Snapshot, TicketRecord, TicketState};
use crate::ads::object::ServedObject;
use crate::ads::token::TicketId;
use crate::webhook::event::{DownloadEvent, DownloadEventKind};

#[derive(Debug)]
pub(super) struct Progress {
    pub(super) snap: Snapshot,
    pub(super) active: u32,
    pub(super) reserved_bytes: u64,
}

/// A ticket in use: its record, its object, and its progress under a short-held mutex.
pub struct LiveTicket {
    pub record: TicketRecord,
    pub object: Arc<ServedObject>,
    pub(super) progress: Mutex<Progress>,
    pub(super) registry: Arc<Registry>,
}

impl std::fmt::Debug for LiveTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveTicket")
            .field("id", &self.record.id)
            .finish()
    }
}

pub(super) type Registry = Mutex<HashMap<TicketId, Weak<LiveTicket>>>;

impl Drop for LiveTicket {
    fn drop(&mut self) {
        let mut reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = reg.get(&self.record.id) {
            if w.strong_count() == 0 {
                reg.remove(&self.record.id);
            }
        }
    }
}

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn rfc3339_ms(ms: Option<u64>) -> Option<String> {
    ms.map(|ms| {
        humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        )
        .to_string()
    })
}

impl LiveTicket {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        // Progress updates are single assignments; a panic mid-update cannot leave it torn in
        // a way that matters more than refusing service would.
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A consistent copy of the ticket's progress.
    pub fn snapshot(&self) -> (Snapshot, u32) {
        let p = self.lock();
        (p.snap.clone(), p.active)
    }

    /// The state the API should show (see [`TicketRecord::effective_state`]).
    pub fn effective_state(&self, snap: &Snapshot, now: u64, grace: u64) -> TicketState {
        self.record.effective_state(snap, now, grace)
    }

    pub(super) fn event(
        &self,
        kind: DownloadEventKind,
        snap: &Snapshot,
        node: &str,
    ) -> Option<NewEvent> {
        let url = self.record.callback_url.clone()?;
        let event_id = crate::webhook::outbox::new_event_id();
        let mut event = DownloadEvent {
            event: kind,
            event_id: event_id.clone(),
            ticket_id: self.record.id.to_hex(),
            component_id: self.record.component_id.clone(),
            device_id: self.record.device_id.clone(),
            size: self.object.size,
            bytes_sent: snap.bytes_sent,
            requests: snap.requests,
            first_byte_at: rfc3339_ms(snap.first_byte_at_ms),
            node: node.to_string(),
            context: self.record.context.clone(),
            completed_at: None,
            delivery: None,
            ended_at: None,
            bytes_delivered: None,
            ranges: None,
            report: None,
        };
        if kind == DownloadEventKind::Completed {
            event.completed_at = rfc3339_ms(snap.completed_at_ms);
            event.delivery = Some(snap.deliveries);
        } else if kind == DownloadEventKind::Reported {
            let r = snap.report.as_ref()?;
            let mut delivered = snap.coverage.clone();
            delivered.merge(&snap.tentative);
            event.bytes_delivered = Some(delivered.covered());
            event.report = Some(crate::webhook::event::InstallNotify {
                status: r.status,
                message: r.message.clone(),
                reported_at: rfc3339_ms(Some(r.at_ms)).unwrap_or_default(),
                node_delivered: r.node_delivered,
            });
        } else {
            let mut delivered = snap.coverage.clone();
            delivered.merge(&snap.tentative);
            event.ended_at = rfc3339_ms(Some(now_ms()));
            event.bytes_delivered = Some(delivered.covered());
            event.ranges = Some(delivered.intervals().to_vec());
        }
        Some(NewEvent {
            event_id,
            kind: kind.as_str(),
            url,
            payload: serde_json::to_string(&event).unwrap_or_default(),
        })
    }
}
