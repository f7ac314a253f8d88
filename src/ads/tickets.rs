//! Tickets: minting signed download URLs and finding a ticket's object on the hot path.
//!
//! A ticket row lives in SQLite; the hot path asks a moka cache first, which minting fills, so
//! a freshly minted URL is served without any storage access. Served objects (with their
//! precomputed headers) are shared by all tickets of one component.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::metrics::Metrics;
use super::object::{CorruptMeta, ServedObject};
use super::store::{ComponentMeta, Store, StoreError, TicketRow};
use super::token::{Keyring, TicketId};

/// Why a ticket could not be minted or found.
#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    #[error("no component with id {0}")]
    UnknownComponent(String),
    #[error("ttl_secs must be between 1 and {max} (got {got})")]
    BadTtl { got: u64, max: u64 },
    #[error("device_id must be 1-200 printable characters")]
    BadDeviceId,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Corrupt(#[from] CorruptMeta),
}

/// `POST /v1/tickets` request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintRequest {
    pub component: String,
    pub ttl_secs: Option<u64>,
    pub device_id: Option<String>,
}

/// `POST /v1/tickets` response body.
#[derive(Debug, Serialize, Deserialize)]
pub struct Minted {
    pub id: String,
    pub url: String,
    /// RFC 3339.
    pub expires_at: String,
    pub expires_at_unix: u64,
    pub size: u64,
    pub blake3: String,
    pub sha256: String,
}

/// What the download plane needs of a ticket.
#[derive(Debug)]
pub struct LiveTicket {
    pub id: TicketId,
    pub object: Arc<ServedObject>,
    pub expires_at: u64,
}

/// Ticket minting and lookup. Cheap to clone.
#[derive(Clone)]
pub struct Tickets {
    store: Store,
    keyring: Keyring,
    public_url: Arc<str>,
    default_ttl: u64,
    max_ttl: u64,
    live: moka::sync::Cache<TicketId, Arc<LiveTicket>>,
    objects: moka::sync::Cache<String, Arc<ServedObject>>,
    metrics: Arc<Metrics>,
}

impl Tickets {
    pub fn new(
        store: Store,
        keyring: Keyring,
        public_url: &str,
        default_ttl: u64,
        max_ttl: u64,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            keyring,
            public_url: public_url.trim_end_matches('/').into(),
            default_ttl,
            max_ttl,
            live: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_idle(std::time::Duration::from_secs(3600))
                .support_invalidation_closures()
                .build(),
            objects: moka::sync::Cache::builder().max_capacity(100_000).build(),
            metrics,
        }
    }

    fn served(&self, meta: &ComponentMeta) -> Result<Arc<ServedObject>, CorruptMeta> {
        if let Some(o) = self.objects.get(&meta.id) {
            return Ok(o);
        }
        let o = Arc::new(ServedObject::new(meta, self.store.object_path(&meta.id))?);
        self.objects.insert(meta.id.clone(), o.clone());
        Ok(o)
    }

    /// Mints a ticket and its URL.
    pub async fn mint(&self, req: MintRequest, now: u64) -> Result<Minted, TicketError> {
        let ttl = req.ttl_secs.unwrap_or(self.default_ttl);
        if ttl == 0 || ttl > self.max_ttl {
            return Err(TicketError::BadTtl {
                got: ttl,
                max: self.max_ttl,
            });
        }
        if let Some(d) = &req.device_id {
            if d.is_empty() || d.chars().count() > 200 || d.chars().any(char::is_control) {
                return Err(TicketError::BadDeviceId);
            }
        }
        let expires_at = (now + ttl).min(u64::from(u32::MAX));
        let component = req.component.clone();
        let meta = self
            .store
            .run(move |s| s.component(&component))
            .await?
            .ok_or_else(|| TicketError::UnknownComponent(req.component.clone()))?;
        let object = self.served(&meta)?;
        let row = TicketRow {
            id: TicketId::random(),
            component_id: meta.id.clone(),
            device_id: req.device_id,
            created_at: now,
            expires_at,
        };
        let id = row.id;
        self.store.run(move |s| s.insert_ticket(&row)).await?;
        self.live.insert(
            id,
            Arc::new(LiveTicket {
                id,
                object,
                expires_at,
            }),
        );
        self.metrics.tickets_minted.fetch_add(1, Ordering::Relaxed);
        let token = self.keyring.mint(id, expires_at as u32);
        Ok(Minted {
            id: id.to_hex(),
            url: format!("{}/d/{}", self.public_url, token),
            expires_at: humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(expires_at),
            )
            .to_string(),
            expires_at_unix: expires_at,
            size: meta.size,
            blake3: meta.blake3,
            sha256: meta.sha256,
        })
    }

    /// The ticket with this id, from the cache or SQLite. `None` if no such ticket exists.
    pub async fn lookup(&self, id: TicketId) -> Result<Option<Arc<LiveTicket>>, TicketError> {
        if let Some(t) = self.live.get(&id) {
            return Ok(Some(t));
        }
        let found = self
            .store
            .run(move |s| {
                let Some(row) = s.ticket(id)? else {
                    return Ok(None);
                };
                Ok(s.component(&row.component_id)?.map(|meta| (row, meta)))
            })
            .await?;
        let Some((row, meta)) = found else {
            return Ok(None);
        };
        let ticket = Arc::new(LiveTicket {
            id,
            object: self.served(&meta)?,
            expires_at: row.expires_at,
        });
        self.live.insert(id, ticket.clone());
        Ok(Some(ticket))
    }

    /// The stored ticket row, for the admin API.
    pub async fn row(&self, id: TicketId) -> Result<Option<TicketRow>, TicketError> {
        Ok(self.store.run(move |s| s.ticket(id)).await?)
    }

    /// Forgets cached state of a deleted component.
    pub fn forget_component(&self, id: &str) {
        self.objects.invalidate(id);
        let id = id.to_string();
        let _ = self
            .live
            .invalidate_entries_if(move |_, t| t.object.id == id);
    }
}
