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
mod guard;
mod live;
mod mint;
pub mod persist;
mod record;
pub mod sweeper;

pub use self::guard::RequestGuard;
pub use self::live::LiveTicket;
pub use self::mint::{MintRequest, Minted};
pub use self::record::{
    InstallReport, Mechanism, Refusal, ReportOutcome, ReportRefusal, Snapshot, TicketRecord,
    TicketState, TicketView, SHARED_PERSIST_EVERY,
};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::oneshot;

use self::live::{now_ms, Progress, Registry};
use self::persist::{Op, Writer};
use super::metrics::Metrics;
use super::object::{CorruptMeta, ServedObject};
use super::store::{ComponentMeta, Store, StoreError};
use super::token::{Keyring, TicketId};
use crate::webhook::event::DownloadEventKind;

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
        record::gate(
            p.snap.state,
            token_expired,
            now,
            t.record.expires_at,
            self.inner.policy.grace,
        )?;
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
        let req = self.inner.next_req.fetch_add(1, Ordering::Relaxed);
        Ok(RequestGuard::new(t.clone(), self.clone(), req, len))
    }

    /// Checks, without admitting, whether a bodiless request (HEAD, 304, 416) may be answered.
    pub fn check(&self, t: &LiveTicket, token_expired: bool, now: u64) -> Result<(), Refusal> {
        let state = t.lock().snap.state;
        record::gate(
            state,
            token_expired,
            now,
            t.record.expires_at,
            self.inner.policy.grace,
        )
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
