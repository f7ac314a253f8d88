//! One admitted request on a ticket (`RequestGuard`): it holds a connection slot and a byte
//! reservation until dropped, records its planned ranges as an intent before the first body
//! byte, credits acknowledged bytes, and completes the ticket when the coverage says so
//! ([`completes`], pure).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::coverage::Coverage;
use super::live::{now_ms, LiveTicket};
use super::persist::Op;
use super::record::{TicketState, SHARED_PERSIST_EVERY};
use super::Tickets;
use crate::ads::store::StoreError;
use crate::webhook::event::DownloadEventKind;

/// One admitted request: counts toward the ticket's connection limit and byte reservation
/// until dropped, and records what it delivered.
pub struct RequestGuard {
    ticket: Arc<LiveTicket>,
    tickets: Tickets,
    req: u64,
    reserved: u64,
    planned: u64,
    sent: u64,
    /// This request's completion already persisted its progress and settled its intent.
    settled: bool,
    /// The bytes whose credit completed a delivery of the ticket (in memory; durable once
    /// acknowledged), held back with the final frame until then.
    completed_by: Option<(u64, u64)>,
}

impl RequestGuard {
    /// A guard for an admitted request `req` planning `len` body bytes (the admission already
    /// counted it on the ticket).
    pub(super) fn new(ticket: Arc<LiveTicket>, tickets: Tickets, req: u64, len: u64) -> Self {
        RequestGuard {
            ticket,
            tickets,
            req,
            reserved: len,
            planned: len,
            sent: 0,
            settled: false,
            completed_by: None,
        }
    }

    /// Records the planned ranges as an intent; the returned receiver resolves once that is
    /// durable. No body byte may leave before it does: after a crash, the intent says which
    /// bytes may have reached the device (its tentative coverage). No intent (`None`) for
    /// shared links, which nobody waits on.
    pub fn begin(&self, ranges: &Coverage) -> Option<oneshot::Receiver<Result<(), StoreError>>> {
        if self.ticket.record.is_shared() {
            return None;
        }
        let (ack, rx) = oneshot::channel();
        let op = Op::Begin {
            ticket: self.ticket.record.id,
            req: self.req,
            ranges: ranges.to_text(),
            ack,
        };
        if let Err(e) = self.tickets.inner.writer.send(op) {
            let (ack, rx) = oneshot::channel();
            let _ = ack.send(Err(e));
            return Some(rx);
        }
        Some(rx)
    }

    /// The ticket is a shared link (see [`super::TicketRecord::is_shared`]).
    pub fn is_shared(&self) -> bool {
        self.ticket.record.is_shared()
    }

    /// Object bytes `[start, end)` were handed to the connection but never acknowledged by
    /// the device (the connection ended first): they count as sent, and as *tentative*
    /// coverage: maybe delivered, so a device resuming from what it really has can still
    /// complete the ticket with a response that runs to its end.
    pub fn unconfirmed(&mut self, start: u64, end: u64) {
        if end <= start {
            return;
        }
        let mut p = self.ticket.lock();
        p.snap.bytes_sent += end - start;
        if p.snap.state == TicketState::Downloading {
            p.snap.tentative.insert(start, end);
        }
    }

    /// Credits object bytes `[start, end)` as acknowledged by the device. If this completes
    /// the ticket, returns a receiver that resolves once the completion (and its callback
    /// event) is durable.
    pub fn credit(
        &mut self,
        start: u64,
        end: u64,
    ) -> Option<oneshot::Receiver<Result<(), StoreError>>> {
        let n = end.saturating_sub(start);
        self.sent += n;
        let finished = self.sent >= self.planned;
        let now = now_ms();
        let t = &self.ticket;
        let mut p = t.lock();
        p.snap.bytes_sent += n;
        if n > 0 {
            p.snap.first_byte_at_ms.get_or_insert(now);
            p.snap.last_byte_at_ms = Some(now);
        }
        p.snap.coverage.insert(start, end);
        if p.snap.state != TicketState::Downloading {
            // Completed (or revoked) while this response was in flight: it finishes normally
            // but cannot complete the ticket a second time.
            return None;
        }
        let size = t.object.size;
        if !completes(&p.snap.coverage, &p.snap.tentative, size, finished) {
            return None;
        }
        p.snap.deliveries += 1;
        p.snap.completed_at_ms = Some(now);
        let event = t.event(
            DownloadEventKind::Completed,
            &p.snap,
            &self.tickets.inner.policy.node,
        );
        if p.snap.deliveries >= t.record.max_deliveries {
            p.snap.state = TicketState::Completed;
        } else {
            // A multi-delivery ticket starts its next delivery from scratch.
            p.snap.coverage = Coverage::new();
            p.snap.tentative = Coverage::new();
        }
        self.tickets
            .inner
            .metrics
            .tickets_completed
            .fetch_add(1, Ordering::Relaxed);
        if t.record.is_shared() {
            let ended = p.snap.state == TicketState::Completed;
            if ended || u64::from(p.snap.deliveries) % SHARED_PERSIST_EVERY == 0 {
                let _ = self.tickets.inner.writer.send(Op::Transition {
                    ticket: t.record.id,
                    snapshot: Box::new(p.snap.clone()),
                    event: None,
                    ack: None,
                    settles: None,
                });
            }
            return None;
        }
        self.completed_by = Some((start, end));
        let snapshot = Box::new(p.snap.clone());
        let (ack, rx) = oneshot::channel();
        // Sent while holding the lock so the writer sees snapshots in the order they were taken.
        // A request that ends the ticket with its last byte needs no separate `End`.
        let settles = (finished && p.snap.state == TicketState::Completed).then_some(self.req);
        self.settled = settles.is_some();
        let sent = self.tickets.inner.writer.send(Op::Transition {
            ticket: t.record.id,
            snapshot,
            event,
            ack: Some(ack),
            settles,
        });
        drop(p);
        if sent.is_err() {
            tracing::error!("ticket writer gone; completion not persisted");
        }
        Some(rx)
    }

    /// The completion this request caused was not made durable (its commit failed): the
    /// delivery is taken back in memory too, so that memory agrees with storage and the
    /// device's retry can complete the ticket instead of finding it spent. The held frame's
    /// bytes never left, so they leave the coverage again.
    pub fn completion_failed(&mut self) {
        let Some((start, end)) = self.completed_by.take() else {
            return;
        };
        self.settled = false;
        let mut p = self.ticket.lock();
        p.snap.coverage.remove(start, end);
        p.snap.bytes_sent = p.snap.bytes_sent.saturating_sub(end - start);
        p.snap.deliveries = p.snap.deliveries.saturating_sub(1);
        p.snap.completed_at_ms = None;
        if p.snap.state == TicketState::Completed {
            p.snap.state = TicketState::Downloading;
        }
        self.tickets
            .inner
            .metrics
            .tickets_completed
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let t = &self.ticket;
        let mut p = t.lock();
        p.active = p.active.saturating_sub(1);
        p.reserved_bytes = p.reserved_bytes.saturating_sub(self.reserved);
        if self.settled || (t.record.is_shared() && p.snap.requests % SHARED_PERSIST_EVERY != 0) {
            return;
        }
        let snapshot = Box::new(p.snap.clone());
        let _ = self.tickets.inner.writer.send(Op::End {
            ticket: t.record.id,
            req: self.req,
            snapshot,
        });
    }
}

/// Whether a ticket's object of `size` bytes is delivered: its acknowledged `coverage` covers
/// it (an empty object by any response that ran to its end). After an unclean stop, bytes of
/// interrupted responses may or may not have arrived (`tentative`); a device resumes from what
/// it really has, so the object then counts as delivered once known + maybe-delivered bytes
/// cover it *and* a response since the restart has run to its end (`finished`).
pub fn completes(coverage: &Coverage, tentative: &Coverage, size: u64, finished: bool) -> bool {
    if tentative.is_empty() {
        coverage.covers(size) && (size > 0 || finished)
    } else {
        let mut union = coverage.clone();
        union.merge(tentative);
        finished && union.covers(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cov(ranges: &[(u64, u64)]) -> Coverage {
        let mut c = Coverage::new();
        for &(a, b) in ranges {
            c.insert(a, b);
        }
        c
    }

    #[test]
    fn delivery_is_complete_when_acknowledged_bytes_cover_the_object() {
        let none = Coverage::new();
        assert!(completes(&cov(&[(0, 100)]), &none, 100, false));
        assert!(!completes(&cov(&[(0, 99)]), &none, 100, true));
        assert!(!completes(&cov(&[(0, 50), (51, 100)]), &none, 100, true));
        // An empty object: any response that ran to its end delivers it.
        assert!(!completes(&none, &none, 0, false));
        assert!(completes(&none, &none, 0, true));
    }

    #[test]
    fn after_an_unclean_stop_maybe_delivered_bytes_count_with_a_finished_response() {
        let maybe = cov(&[(0, 60)]);
        let resumed = cov(&[(60, 100)]);
        assert!(
            !completes(&resumed, &maybe, 100, false),
            "the resume must run to its end"
        );
        assert!(completes(&resumed, &maybe, 100, true));
        assert!(
            !completes(&cov(&[(70, 100)]), &maybe, 100, true),
            "a hole stays a hole"
        );
    }
}
