//! Minting: the `POST /v1/tickets` request and answer, the checks on what may be minted, the
//! default byte budget, and the mint itself (durable before the URL is handed out).

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::persist::Op;
use super::record::{Mechanism, Snapshot, TicketRecord};
use super::{TicketError, TicketPolicy, Tickets};
use crate::ads::store::StoreError;
use crate::ads::token::TicketId;

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

impl Tickets {
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
}
