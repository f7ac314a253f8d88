//! Tickets: minting signed URLs, and the one-time delivery state machine.
//!
//! ```text
//! issued ──first GET──► downloading ──every byte sent once──► completed
//!    │                      │
//!    └──expiry──► expired ◄─┘ (expiry + grace, once started)       any ──DELETE──► revoked
//! ```
//!
//! The authoritative state of a ticket in use is one in-memory [`LiveTicket`] (a mutex around
//! its progress, never held across an await). A weak registry guarantees there is never a
//! second copy: a ticket evicted from the moka cache while a response still holds it is found
//! again through the registry instead of being reloaded. Every change is persisted through the
//! [`persist::Writer`]; completion, expiry and revocation are persisted together with their
//! callback event.

pub mod coverage;
pub mod persist;
pub mod sweeper;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use self::coverage::Coverage;
use self::persist::{NewEvent, Op, Writer};
use super::metrics::Metrics;
use super::object::{CorruptMeta, ServedObject};
use super::store::{ComponentMeta, Store, StoreError};
use super::token::{Keyring, TicketId};
use crate::webhook::event::{DownloadEvent, DownloadEventKind};

/// Why a ticket could not be minted, found or changed.
#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    #[error("no component with id {0}")]
    UnknownComponent(String),
    #[error("ttl_secs must be between 1 and {max} (got {got})")]
    BadTtl { got: u64, max: u64 },
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "callback_url host {0} is not in the node's callback allow-list (callback_allow_hosts)"
    )]
    CallbackHostNotAllowed(String),
    #[error("the ticket is already {0}")]
    AlreadyEnded(TicketState),
    #[error(
        "this node listens on an unspecified address and has no public URL, so a minted URL \
         would name no reachable host: start it with --public-url (SCOMO_ADS_PUBLIC_URL)"
    )]
    NoPublicUrl,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Corrupt(#[from] CorruptMeta),
}

/// Ticket lifecycle states.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TicketState {
    #[default]
    Issued,
    Downloading,
    Completed,
    Expired,
    Revoked,
}

impl TicketState {
    pub fn as_str(self) -> &'static str {
        match self {
            TicketState::Issued => "issued",
            TicketState::Downloading => "downloading",
            TicketState::Completed => "completed",
            TicketState::Expired => "expired",
            TicketState::Revoked => "revoked",
        }
    }

    /// A state by its API name (`None` for anything else).
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "issued" => TicketState::Issued,
            "downloading" => TicketState::Downloading,
            "completed" => TicketState::Completed,
            "expired" => TicketState::Expired,
            "revoked" => TicketState::Revoked,
            _ => return None,
        })
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "downloading" => TicketState::Downloading,
            "completed" => TicketState::Completed,
            "expired" => TicketState::Expired,
            "revoked" => TicketState::Revoked,
            _ => TicketState::Issued,
        }
    }

    /// No request will ever be served again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TicketState::Completed | TicketState::Expired | TicketState::Revoked
        )
    }
}

impl std::fmt::Display for TicketState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the device is handed the ticket (seed step 5.4.2.5, "an appropriate alternate download
/// mechanism").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mechanism {
    /// The signed object URL itself.
    #[default]
    Https,
    /// An OMA Download OTA 1.0 descriptor (`/dd/{token}`) naming the object URL, with an
    /// install-notify URI (`/dn/{token}`) for the device's status report.
    Dlota,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Https => "https",
            Mechanism::Dlota => "dlota",
        }
    }

    /// Reads a stored name; anything unknown is the plain URL (the column's default).
    pub fn parse(s: &str) -> Self {
        match s {
            "dlota" => Mechanism::Dlota,
            _ => Mechanism::Https,
        }
    }
}

/// What never changes about a ticket.
#[derive(Clone, Debug)]
pub struct TicketRecord {
    pub id: TicketId,
    pub component_id: String,
    pub device_id: Option<String>,
    pub created_at: u64,
    pub expires_at: u64,
    pub callback_url: Option<String>,
    pub context: Option<serde_json::Value>,
    pub max_deliveries: u32,
    pub max_connections: Option<u32>,
    pub max_bytes: Option<u64>,
    pub mechanism: Mechanism,
    /// The object's media type as the descriptor names it (DLOTA tickets; default
    /// `application/octet-stream`).
    pub content_type: Option<String>,
}

impl TicketRecord {
    /// The state the API should show: a ticket past its expiry (plus grace when started) is
    /// expired even before the sweeper has recorded it.
    pub fn effective_state(&self, snap: &Snapshot, now: u64, grace: u64) -> TicketState {
        match snap.state {
            TicketState::Issued if now > self.expires_at => TicketState::Expired,
            TicketState::Downloading if now > self.expires_at + grace => TicketState::Expired,
            s => s,
        }
    }

    /// A shared link: several deliveries and nobody to call back (load tests, shared links).
    /// Its progress is persisted lazily (every [`SHARED_PERSIST_EVERY`] requests or
    /// deliveries, and when it ends) without holding responses back: a crash may lose the last
    /// few counts, which nobody is waiting for. One-time tickets and tickets with a callback
    /// keep the full write-ahead discipline.
    pub fn is_shared(&self) -> bool {
        self.max_deliveries > 1 && self.callback_url.is_none()
    }
}

/// A ticket as the admin API shows it: its record, its progress (the live copy's when the
/// ticket is in memory), responses in flight, and its object's size.
pub struct TicketView {
    pub record: TicketRecord,
    pub snapshot: Snapshot,
    pub active: u32,
    pub size: u64,
}

/// How often a shared link's progress is written.
pub const SHARED_PERSIST_EVERY: u64 = 1024;

/// What changes as a ticket is used (persisted as a whole).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub state: TicketState,
    pub deliveries: u32,
    pub bytes_sent: u64,
    pub requests: u64,
    pub first_byte_at_ms: Option<u64>,
    pub last_byte_at_ms: Option<u64>,
    pub completed_at_ms: Option<u64>,
    pub coverage: Coverage,
    /// Ranges of responses in flight when the node last stopped uncleanly: maybe delivered.
    pub tentative: Coverage,
    /// The device's install-notify report (DLOTA tickets), once it came.
    pub report: Option<InstallReport>,
}

/// A device's DLOTA status report as the node recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallReport {
    pub status: u16,
    pub message: String,
    pub at_ms: u64,
    /// Whether the node had seen every byte acknowledged when the report came: a 900 without
    /// it is only the device's claim.
    pub node_delivered: bool,
}

/// What became of an install-notify report.
#[derive(Debug, PartialEq, Eq)]
pub enum ReportOutcome {
    /// Recorded now (and its callback queued, when the ticket has a callback URL).
    Recorded,
    /// The same report came before: nothing new is recorded or sent.
    Repeated,
}

/// Why an install-notify report is refused.
#[derive(Debug, thiserror::Error)]
pub enum ReportRefusal {
    #[error("this download URL has no descriptor (it was minted for plain HTTPS)")]
    NotDlota,
    #[error("this download already has report {0}; a download has one report")]
    Conflict(u16),
    #[error("the report window of this download has closed")]
    Closed,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug)]
struct Progress {
    snap: Snapshot,
    active: u32,
    reserved_bytes: u64,
}

/// A ticket in use: its record, its object, and its progress under a short-held mutex.
pub struct LiveTicket {
    pub record: TicketRecord,
    pub object: Arc<ServedObject>,
    progress: Mutex<Progress>,
    registry: Arc<Registry>,
}

impl std::fmt::Debug for LiveTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveTicket")
            .field("id", &self.record.id)
            .finish()
    }
}

type Registry = Mutex<HashMap<TicketId, Weak<LiveTicket>>>;

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

/// Why a request on a ticket is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 410: completed, revoked, or expired.
    Gone(&'static str),
    /// 429: the ticket's concurrent-connection limit is reached.
    TooManyConnections,
    /// 403: serving this would exceed the ticket's byte budget.
    OverBudget,
}

fn now_ms() -> u64 {
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
    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
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

    fn event(&self, kind: DownloadEventKind, snap: &Snapshot, node: &str) -> Option<NewEvent> {
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

    /// The ticket is a shared link (see [`TicketRecord::is_shared`]).
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
        let whole = if p.snap.tentative.is_empty() {
            p.snap.coverage.covers(size) && (size > 0 || finished)
        } else {
            // After an unclean stop, bytes of interrupted responses may or may not have
            // arrived. A device resumes from what it really has, so the object counts as
            // delivered once known + maybe-delivered bytes cover it *and* a response since
            // the restart has run to its end.
            let mut union = p.snap.coverage.clone();
            union.merge(&p.snap.tentative);
            finished && union.covers(size)
        };
        if !whole {
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

/// The byte budget of a ticket minted without one: `copies` × size per delivery, at least
/// the floor; `None` when the policy sets no default.
fn default_budget(policy: &TicketPolicy, size: u64, deliveries: u32) -> Option<u64> {
    if policy.default_max_bytes_copies == 0 {
        return None;
    }
    let per_delivery = size
        .saturating_mul(policy.default_max_bytes_copies)
        .max(policy.min_default_max_bytes);
    Some(per_delivery.saturating_mul(u64::from(deliveries)))
}

/// `POST /v1/tickets` request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintRequest {
    pub component: String,
    pub ttl_secs: Option<u64>,
    pub device_id: Option<String>,
    pub callback_url: Option<String>,
    pub context: Option<serde_json::Value>,
    /// Complete deliveries allowed (default 1: the one-time URL).
    pub max_deliveries: Option<u32>,
    /// Concurrent requests allowed on this ticket.
    pub max_connections: Option<u32>,
    /// Total bytes that may be sent for this ticket, re-sent overlap included.
    pub max_bytes: Option<u64>,
    /// `https` (default): `url` is the object URL; `dlota`: `url` is an OMA Download OTA
    /// descriptor naming the object URL.
    pub mechanism: Option<Mechanism>,
    /// The object's media type in the descriptor (default `application/octet-stream`).
    pub content_type: Option<String>,
}

/// `POST /v1/tickets` response body.
#[derive(Debug, Serialize, Deserialize)]
pub struct Minted {
    pub id: String,
    /// What the device is given: the object URL, or the descriptor URL of a DLOTA ticket.
    pub url: String,
    /// The one-time object URL (`/d/{token}`), the same as `url` for plain HTTPS.
    pub object_url: String,
    pub mechanism: Mechanism,
    /// RFC 3339.
    pub expires_at: String,
    pub expires_at_unix: u64,
    pub size: u64,
    pub blake3: String,
    pub sha256: String,
}

/// Settings of the ticket service.
#[derive(Clone, Debug)]
pub struct TicketPolicy {
    /// Scheme, host and port of minted URLs; `None` when the node listens on an unspecified
    /// address (0.0.0.0) and was given none: it then refuses to mint, since no device could
    /// reach `https://0.0.0.0:8443`.
    pub public_url: Option<String>,
    pub node: String,
    pub default_ttl: u64,
    pub max_ttl: u64,
    /// Copies of the object per delivery a ticket may send when minted without `max_bytes`
    /// (0: unbounded), and the floor of that default budget.
    pub default_max_bytes_copies: u64,
    pub min_default_max_bytes: u64,
    /// Concurrent requests per ticket minted without `max_connections` (0: unbounded).
    pub default_max_connections: u32,
    /// Seconds after expiry during which a started ticket may still be resumed.
    pub grace: u64,
    /// Hosts callback URLs may point at; `*` allows any.
    pub callback_allow_hosts: Vec<String>,
    /// Tickets kept in memory (about 2 KiB each); colder ones reload from SQLite on use.
    pub cache_entries: u64,
}

struct Inner {
    store: Store,
    keyring: Keyring,
    policy: TicketPolicy,
    writer: Writer,
    live: moka::sync::Cache<TicketId, Arc<LiveTicket>>,
    objects: moka::sync::Cache<String, Arc<ServedObject>>,
    metas: moka::sync::Cache<String, Arc<ComponentMeta>>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    next_req: AtomicU64,
}

/// Ticket minting, lookup and lifecycle. Cheap to clone.
#[derive(Clone)]
pub struct Tickets {
    inner: Arc<Inner>,
}

/// Cache-miss marker for moka's single-flight loader.
#[derive(Debug)]
enum LoadMiss {
    NotFound,
    Failed(String),
}

impl Tickets {
    pub fn new(
        store: Store,
        keyring: Keyring,
        policy: TicketPolicy,
        writer: Writer,
        metrics: Arc<Metrics>,
    ) -> Self {
        let cache_entries = policy.cache_entries.max(1);
        Self {
            inner: Arc::new(Inner {
                store,
                keyring,
                policy,
                writer,
                live: moka::sync::Cache::builder()
                    .max_capacity(cache_entries)
                    .time_to_idle(std::time::Duration::from_secs(3600))
                    .support_invalidation_closures()
                    .build(),
                objects: moka::sync::Cache::builder().max_capacity(100_000).build(),
                metas: moka::sync::Cache::builder().max_capacity(100_000).build(),
                registry: Arc::new(Mutex::new(HashMap::new())),
                metrics,
                next_req: AtomicU64::new(rand::random::<u32>() as u64),
            }),
        }
    }

    /// Tickets held in the in-memory cache (after its pending evictions ran).
    pub fn cached(&self) -> u64 {
        self.inner.live.run_pending_tasks();
        self.inner.live.entry_count()
    }

    pub fn policy(&self) -> &TicketPolicy {
        &self.inner.policy
    }

    fn served(&self, meta: &ComponentMeta) -> Result<Arc<ServedObject>, CorruptMeta> {
        if let Some(o) = self.inner.objects.get(&meta.id) {
            return Ok(o);
        }
        let o = Arc::new(ServedObject::new(
            meta,
            self.inner.store.object_path(&meta.id),
        )?);
        self.inner.objects.insert(meta.id.clone(), o.clone());
        Ok(o)
    }

    fn adopt(
        &self,
        record: TicketRecord,
        snap: Snapshot,
        object: Arc<ServedObject>,
    ) -> Arc<LiveTicket> {
        let id = record.id;
        let t = Arc::new(LiveTicket {
            record,
            object,
            progress: Mutex::new(Progress {
                snap,
                active: 0,
                reserved_bytes: 0,
            }),
            registry: self.inner.registry.clone(),
        });
        self.inner
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Arc::downgrade(&t));
        t
    }

    fn validate_callback(&self, url: &str) -> Result<(), TicketError> {
        use crate::webhook::allow::{AllowList, NotAllowed};
        let list = AllowList::new(self.inner.policy.callback_allow_hosts.clone());
        match list.check_url(url) {
            Ok(_) => Ok(()),
            Err(NotAllowed::Host(host)) => Err(TicketError::CallbackHostNotAllowed(host)),
            Err(e) => Err(TicketError::BadRequest(e.to_string())),
        }
    }

    /// Mints a ticket and its URL; returns once the ticket is durable.
    pub async fn mint(&self, req: MintRequest, now: u64) -> Result<Minted, TicketError> {
        let policy = &self.inner.policy;
        // Refused before anything is stored: a URL nobody can reach is no ticket.
        let base = policy
            .public_url
            .as_deref()
            .ok_or(TicketError::NoPublicUrl)?;
        let ttl = req.ttl_secs.unwrap_or(policy.default_ttl);
        if ttl == 0 || ttl > policy.max_ttl {
            return Err(TicketError::BadTtl {
                got: ttl,
                max: policy.max_ttl,
            });
        }
        if let Some(d) = &req.device_id {
            if d.is_empty() || d.chars().count() > 200 || d.chars().any(char::is_control) {
                return Err(TicketError::BadRequest(
                    "device_id must be 1-200 printable characters".into(),
                ));
            }
        }
        if let Some(url) = &req.callback_url {
            self.validate_callback(url)?;
        }
        if let Some(ctx) = &req.context {
            if ctx.to_string().len() > 4096 {
                return Err(TicketError::BadRequest(
                    "context must serialize to at most 4096 bytes".into(),
                ));
            }
        }
        if let Some(t) = &req.content_type {
            let token = |p: &str| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
            };
            let valid = t.len() <= 127
                && t.split_once('/')
                    .is_some_and(|(ty, sub)| token(ty) && token(sub));
            if !valid {
                return Err(TicketError::BadRequest(
                    "content_type must be a media type such as application/octet-stream".into(),
                ));
            }
        }
        let mechanism = req.mechanism.unwrap_or_default();
        if mechanism == Mechanism::Https && req.content_type.is_some() {
            return Err(TicketError::BadRequest(
                "content_type names the descriptor's type: it goes with mechanism \"dlota\"".into(),
            ));
        }
        let max_deliveries = req.max_deliveries.unwrap_or(1);
        if max_deliveries == 0 {
            return Err(TicketError::BadRequest(
                "max_deliveries must be at least 1".into(),
            ));
        }
        if req.max_connections == Some(0) {
            return Err(TicketError::BadRequest(
                "max_connections must be at least 1".into(),
            ));
        }
        let expires_at = (now + ttl).min(u64::from(u32::MAX));
        // Components are immutable: minting reads their metadata from memory after the first
        // ticket (deletion invalidates it).
        let meta = self.component_meta(&req.component).await?;
        if let Some(b) = req.max_bytes {
            if b < meta.size {
                return Err(TicketError::BadRequest(format!(
                    "max_bytes ({b}) is smaller than the component ({} bytes): it could never complete",
                    meta.size
                )));
            }
        }
        let object = self.served(&meta)?;
        // A leaked one-time URL must not pull unbounded copies: unless the DMS says otherwise,
        // a ticket may send a few copies per delivery, over a few connections at a time.
        let max_bytes = req
            .max_bytes
            .or_else(|| default_budget(policy, meta.size, max_deliveries));
        // Shared links (several deliveries) are meant for many clients at once: no default
        // connection limit for them.
        let max_connections = req
            .max_connections
            .or((policy.default_max_connections > 0 && max_deliveries == 1)
                .then_some(policy.default_max_connections));
        let record = TicketRecord {
            id: TicketId::random(),
            component_id: meta.id.clone(),
            device_id: req.device_id,
            created_at: now,
            expires_at,
            callback_url: req.callback_url,
            context: req.context,
            max_deliveries,
            max_connections,
            max_bytes,
            mechanism,
            content_type: req.content_type,
        };
        let id = record.id;
        let (ack, rx) = oneshot::channel();
        self.inner.writer.send(Op::Mint {
            record: Box::new(record.clone()),
            ack,
        })?;
        rx.await.map_err(|_| StoreError::WorkerGone)??;
        let live = self.adopt(record, Snapshot::default(), object);
        self.inner.live.insert(id, live);
        self.inner
            .metrics
            .tickets_minted
            .fetch_add(1, Ordering::Relaxed);
        let token = self.inner.keyring.mint(id, expires_at as u32);
        let base = base.trim_end_matches('/');
        let object_url = format!("{base}/d/{token}");
        Ok(Minted {
            id: id.to_hex(),
            url: match mechanism {
                Mechanism::Https => object_url.clone(),
                Mechanism::Dlota => format!("{base}/dd/{token}"),
            },
            object_url,
            mechanism,
            expires_at: humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(expires_at),
            )
            .to_string(),
            expires_at_unix: expires_at,
            size: meta.size,
            blake3: meta.blake3.clone(),
            sha256: meta.sha256.clone(),
        })
    }

    /// The one live copy of ticket `id`, from the cache, the registry, or storage.
    pub async fn lookup(&self, id: TicketId) -> Result<Option<Arc<LiveTicket>>, TicketError> {
        if let Some(t) = self.inner.live.get(&id) {
            return Ok(Some(t));
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.lookup_blocking(id))
            .await
            .map_err(|_| StoreError::WorkerGone)?
    }

    fn lookup_blocking(&self, id: TicketId) -> Result<Option<Arc<LiveTicket>>, TicketError> {
        // moka runs one loader per key at a time: concurrent misses share one load.
        let got = self.inner.live.try_get_with(id, || self.load_blocking(id));
        match got {
            Ok(t) => Ok(Some(t)),
            Err(e) => match &*e {
                LoadMiss::NotFound => Ok(None),
                LoadMiss::Failed(msg) => Err(TicketError::Store(StoreError::Io {
                    path: "ticket store".into(),
                    source: std::io::Error::other(msg.clone()),
                })),
            },
        }
    }

    fn load_blocking(&self, id: TicketId) -> Result<Arc<LiveTicket>, LoadMiss> {
        let existing = self
            .inner
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .and_then(Weak::upgrade);
        if let Some(t) = existing {
            return Ok(t);
        }
        let (reply, rx) = std::sync::mpsc::sync_channel(1);
        self.inner
            .writer
            .send(Op::Load { ticket: id, reply })
            .map_err(|e| LoadMiss::Failed(e.to_string()))?;
        let loaded = rx
            .recv()
            .map_err(|_| LoadMiss::Failed("ticket writer stopped".into()))?
            .map_err(|e| LoadMiss::Failed(e.to_string()))?
            .ok_or(LoadMiss::NotFound)?;
        let component = loaded.record.component_id.clone();
        let meta = self
            .inner
            .store
            .component(&component)
            .map_err(|e| LoadMiss::Failed(e.to_string()))?
            .ok_or(LoadMiss::NotFound)?;
        let object = self
            .served(&meta)
            .map_err(|e| LoadMiss::Failed(e.to_string()))?;
        Ok(self.adopt(loaded.record, loaded.snapshot, object))
    }

    /// Admits a request on `t` for `len` body bytes (`token_expired`: the URL's expiry has
    /// passed, which only a started ticket inside its grace period survives).
    pub fn admit(
        &self,
        t: &Arc<LiveTicket>,
        len: u64,
        token_expired: bool,
        now: u64,
    ) -> Result<RequestGuard, Refusal> {
        let mut p = t.lock();
        match p.snap.state {
            TicketState::Completed => {
                return Err(Refusal::Gone("this download URL has already been used"))
            }
            TicketState::Revoked => return Err(Refusal::Gone("this download URL was revoked")),
            TicketState::Expired => return Err(Refusal::Gone("this download URL has expired")),
            TicketState::Issued if token_expired => {
                return Err(Refusal::Gone("this download URL has expired"))
            }
            TicketState::Downloading
                if token_expired && now > t.record.expires_at + self.inner.policy.grace =>
            {
                return Err(Refusal::Gone("this download URL has expired"))
            }
            _ => {}
        }
        if let Some(max) = t.record.max_connections {
            if p.active >= max {
                return Err(Refusal::TooManyConnections);
            }
        }
        if let Some(max) = t.record.max_bytes {
            if p.snap.bytes_sent + p.reserved_bytes + len > max {
                return Err(Refusal::OverBudget);
            }
        }
        p.active += 1;
        p.reserved_bytes += len;
        p.snap.requests += 1;
        p.snap.state = TicketState::Downloading;
        drop(p);
        Ok(RequestGuard {
            ticket: t.clone(),
            tickets: self.clone(),
            req: self.inner.next_req.fetch_add(1, Ordering::Relaxed),
            reserved: len,
            planned: len,
            sent: 0,
            settled: false,
            completed_by: None,
        })
    }

    /// Checks, without admitting, whether a bodiless request (HEAD, 304, 416) may be answered.
    pub fn check(&self, t: &LiveTicket, token_expired: bool, now: u64) -> Result<(), Refusal> {
        let p = t.lock();
        match p.snap.state {
            TicketState::Completed | TicketState::Revoked | TicketState::Expired => {
                Err(Refusal::Gone("this download URL is no longer valid"))
            }
            TicketState::Issued if token_expired => {
                Err(Refusal::Gone("this download URL has expired"))
            }
            TicketState::Downloading
                if token_expired && now > t.record.expires_at + self.inner.policy.grace =>
            {
                Err(Refusal::Gone("this download URL has expired"))
            }
            _ => Ok(()),
        }
    }

    /// Ends a ticket without completion (revoked, or expired), persisting the change with its
    /// callback event. `only_if_due` (the sweeper) leaves a ticket alone that is not past its
    /// deadline or still has a response in flight.
    async fn end(
        &self,
        id: TicketId,
        to: TicketState,
        now: u64,
        only_if_due: bool,
    ) -> Result<Option<Snapshot>, TicketError> {
        let Some(t) = self.lookup(id).await? else {
            return Ok(None);
        };
        let (ack, rx) = oneshot::channel();
        let snap = {
            let mut p = t.lock();
            if p.snap.state.is_final() {
                if only_if_due {
                    return Ok(None);
                }
                return Err(TicketError::AlreadyEnded(p.snap.state));
            }
            if only_if_due {
                let due = t.effective_state(&p.snap, now, self.inner.policy.grace)
                    == TicketState::Expired;
                if !due || p.active > 0 {
                    return Ok(None);
                }
            }
            p.snap.state = to;
            let kind = if to == TicketState::Revoked {
                DownloadEventKind::Revoked
            } else {
                DownloadEventKind::Expired
            };
            let event = t.event(kind, &p.snap, &self.inner.policy.node);
            let snap = p.snap.clone();
            self.inner.writer.send(Op::Transition {
                ticket: id,
                snapshot: Box::new(snap.clone()),
                event,
                ack: Some(ack),
                settles: None,
            })?;
            snap
        };
        rx.await.map_err(|_| StoreError::WorkerGone)??;
        Ok(Some(snap))
    }

    /// Revokes a ticket: 410 from now on; a `download.revoked` callback if it has a callback URL.
    pub async fn revoke(&self, id: TicketId, now: u64) -> Result<Option<Snapshot>, TicketError> {
        self.end(id, TicketState::Revoked, now, false).await
    }

    /// Expires every ticket past its deadline (the sweeper's pass). Returns how many.
    pub async fn expire_due(&self, now: u64) -> Result<usize, TicketError> {
        let (reply, rx) = oneshot::channel();
        self.inner.writer.send(Op::ExpiryCandidates {
            now,
            grace: self.inner.policy.grace,
            reply,
        })?;
        let ids = rx.await.map_err(|_| StoreError::WorkerGone)?;
        let mut n = 0;
        for id in ids {
            if self
                .end(id, TicketState::Expired, now, true)
                .await?
                .is_some()
            {
                n += 1;
            }
        }
        Ok(n)
    }

    /// A page of tickets, newest first, matching `filter`; tickets in memory show their live
    /// progress (storage may lag it by the responses in flight).
    pub async fn list(
        &self,
        filter: persist::TicketFilter,
        page: crate::paging::Page,
    ) -> Result<crate::paging::Listed<TicketView>, TicketError> {
        let (reply, rx) = oneshot::channel();
        self.inner.writer.send(Op::List {
            filter,
            page,
            reply,
        })?;
        let listed = rx.await.map_err(|_| StoreError::WorkerGone)??;
        let registry = self
            .inner
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let items = listed
            .items
            .into_iter()
            .map(|t| {
                let live = registry.get(&t.record.id).and_then(Weak::upgrade);
                let (snapshot, active) = match &live {
                    Some(l) => l.snapshot(),
                    None => (t.snapshot, 0),
                };
                TicketView {
                    record: t.record,
                    snapshot,
                    active,
                    size: t.size,
                }
            })
            .collect();
        Ok(crate::paging::Listed {
            items,
            next: listed.next,
        })
    }

    /// The metadata of a ticket's component (memory first; it never changes).
    pub async fn component_meta(&self, id: &str) -> Result<Arc<ComponentMeta>, TicketError> {
        if let Some(m) = self.inner.metas.get(id) {
            return Ok(m);
        }
        let wanted = id.to_string();
        let found = self
            .inner
            .store
            .run(move |s| s.component(&wanted))
            .await?
            .ok_or_else(|| TicketError::UnknownComponent(id.to_string()))?;
        let m = Arc::new(found);
        self.inner.metas.insert(m.id.clone(), m.clone());
        Ok(m)
    }

    /// Records a device's install-notify report on a DLOTA ticket, with its
    /// `download.reported` callback in the same commit. A download has one report: the same
    /// one again is acknowledged without a second callback, another is a conflict. Reports
    /// are taken until the ticket's expiry plus its grace period, whatever its state (a
    /// device reports after its download completed the ticket).
    pub async fn report(
        &self,
        t: &Arc<LiveTicket>,
        report: &crate::dlota::Report,
        now_unix: u64,
    ) -> Result<ReportOutcome, ReportRefusal> {
        if t.record.mechanism != Mechanism::Dlota {
            return Err(ReportRefusal::NotDlota);
        }
        let (ack, rx) = oneshot::channel();
        {
            let mut p = t.lock();
            if let Some(prev) = &p.snap.report {
                return if prev.status == report.status {
                    Ok(ReportOutcome::Repeated)
                } else {
                    Err(ReportRefusal::Conflict(prev.status))
                };
            }
            if now_unix > t.record.expires_at + self.inner.policy.grace {
                return Err(ReportRefusal::Closed);
            }
            p.snap.report = Some(InstallReport {
                status: report.status,
                message: report.message.clone(),
                at_ms: now_ms(),
                node_delivered: p.snap.state == TicketState::Completed,
            });
            let event = t.event(
                DownloadEventKind::Reported,
                &p.snap,
                &self.inner.policy.node,
            );
            // Sent under the lock, like every snapshot, so the writer sees them in order.
            if let Err(e) = self.inner.writer.send(Op::Transition {
                ticket: t.record.id,
                snapshot: Box::new(p.snap.clone()),
                event,
                ack: Some(ack),
                settles: None,
            }) {
                p.snap.report = None;
                return Err(e.into());
            }
        }
        match rx.await.map_err(|_| StoreError::WorkerGone) {
            Ok(Ok(())) => Ok(ReportOutcome::Recorded),
            Ok(Err(e)) | Err(e) => {
                // Not durable: forget it in memory too, so the device's retry is recorded.
                t.lock().snap.report = None;
                Err(e.into())
            }
        }
    }

    /// Forgets cached state of a deleted component.
    pub fn forget_component(&self, id: &str) {
        self.inner.objects.invalidate(id);
        self.inner.metas.invalidate(id);
        let id = id.to_string();
        let _ = self
            .inner
            .live
            .invalidate_entries_if(move |_, t| t.object.id == id);
    }
}
