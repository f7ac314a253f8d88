//! The admin API (axum, on its own TLS listener): components, tickets, `/metrics`, `/healthz`.
//! Every `/v1` route needs `Authorization: Bearer <admin token>`, compared in constant time.
//! Error bodies are JSON `{"error": "...", "code": "..."}` with a message an integrator can act on.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::content::{self, IngestError, UploadInfo};
use super::store::{ComponentMeta, ComponentName, StoreError};
use super::tickets::persist::TicketFilter;
use super::tickets::{LiveTicket, MintRequest, TicketError, TicketState, TicketView};
use super::token::TicketId;
use super::AdsState;
use crate::net::guard;
use crate::paging::Page;

/// An admin API error: status, stable code, human message.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after_secs: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    /// 503 for a database another process holds: the request changed nothing; retry.
    fn busy() -> Self {
        tracing::warn!("the database is locked by another process; answered 503");
        Self {
            retry_after_secs: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "the node's database is locked by another process; nothing was changed, retry",
            )
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(json!({"error": self.message, "code": self.code})),
        )
            .into_response();
        if let Some(secs) = self.retry_after_secs {
            r.headers_mut()
                .insert(header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        r
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            e if e.is_busy() => ApiError::busy(),
            e if e.is_full() => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "disk_full",
                "the node's disk is full; nothing was recorded, retry once space is freed",
            ),
            StoreError::InUse(..) => ApiError::new(StatusCode::CONFLICT, "in_use", e.to_string()),
            other => {
                tracing::error!(error = %other, "storage failure");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "storage",
                    "storage failure; see the node's log",
                )
            }
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        if let IngestError::Store(s) = e {
            return s.into();
        }
        use crate::content::ReceiveError as R;
        let (status, code) = match &e {
            IngestError::Receive(R::TooLarge { .. }) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
            }
            IngestError::Receive(R::LengthMismatch { .. }) => {
                (StatusCode::BAD_REQUEST, "length_mismatch")
            }
            IngestError::Receive(R::Incomplete { .. }) => (StatusCode::BAD_REQUEST, "incomplete"),
            IngestError::BadParameter(_) => (StatusCode::BAD_REQUEST, "bad_parameter"),
            IngestError::Receive(R::DiskFull) => (StatusCode::INSUFFICIENT_STORAGE, "disk_full"),
            IngestError::Receive(R::Io(_)) => (StatusCode::INTERNAL_SERVER_ERROR, "io"),
            IngestError::Receive(R::WorkerGone) | IngestError::Store(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "storage")
            }
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "upload failed");
        }
        ApiError::new(status, code, e.to_string())
    }
}

impl From<TicketError> for ApiError {
    fn from(e: TicketError) -> Self {
        match e {
            TicketError::UnknownComponent(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_component", e.to_string())
            }
            TicketError::BadTtl { .. } | TicketError::BadRequest(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string())
            }
            TicketError::CallbackHostNotAllowed(_) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "callback_not_allowed",
                e.to_string(),
            ),
            TicketError::AlreadyEnded(_) => {
                ApiError::new(StatusCode::CONFLICT, "already_ended", e.to_string())
            }
            TicketError::NoPublicUrl => {
                ApiError::new(StatusCode::CONFLICT, "no_public_url", e.to_string())
            }
            TicketError::Store(s) => s.into(),
            TicketError::Corrupt(c) => {
                tracing::error!(error = %c, "corrupt component metadata");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "corrupt", c.to_string())
            }
        }
    }
}

/// Builds the admin router.
pub fn router(state: Arc<AdsState>) -> Router {
    let v1 = Router::new()
        .route("/v1/components", post(upload).get(list_components))
        .route(
            "/v1/components/{id}",
            get(get_component).delete(delete_component),
        )
        .route("/v1/tickets", post(mint).get(list_tickets))
        .route("/v1/tickets/{id}", get(get_ticket).delete(revoke_ticket))
        .route("/v1/callbacks", get(list_callbacks))
        .route("/v1/callbacks/{id}/retry", post(retry_callback))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .route_layer(middleware::from_fn_with_state(
            state.admin_guard.clone(),
            guard::limit_rate,
        ));
    Router::new()
        .merge(v1)
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint")
        })
        // Outermost: a refusal before the body is read still reaches HTTP/2 clients.
        .layer(middleware::from_fn(
            crate::net::early_response::drain_refused_bodies,
        ))
        .with_state(state)
}

async fn require_token(
    State(state): State<Arc<AdsState>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match state
        .admin_guard
        .bearer(guard::client_ip(&req), presented, &state.admin_token)
    {
        Ok(()) => Ok(next.run(req).await),
        Err(Some(wait)) => Ok(guard::too_many(wait, "too many failed authentications")),
        Err(None) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong admin token: send Authorization: Bearer <token from DIR/admin.token>",
        )),
    }
}

#[derive(Deserialize)]
struct UploadQuery {
    name: Option<String>,
    version: Option<String>,
    filename: Option<String>,
}

async fn upload(
    State(state): State<Arc<AdsState>>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let declared_len = match headers.get(header::CONTENT_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_length",
                        "invalid Content-Length",
                    )
                })?,
        ),
    };
    let info = UploadInfo {
        name: q.name.unwrap_or_default(),
        version: q.version.unwrap_or_default(),
        filename: q.filename,
        declared_len,
    };
    let (meta, created) = content::ingest(
        &state.store,
        info,
        crate::content::UploadLimits {
            max_bytes: state.config.max_upload_bytes,
            keep_free_bytes: state.config.keep_free_bytes,
        },
        super::now_unix(),
        body.into_data_stream(),
    )
    .await?;
    let status = if created {
        state
            .metrics
            .components_published
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(id = %meta.id, name = %meta.name, version = %meta.version, size = meta.size, "component published");
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let id = meta.id.clone();
    let names = state.store.run(move |s| s.names(&id)).await?;
    Ok((status, Json(with_names(&meta, names))).into_response())
}

/// A component's metadata with every name/version it was published under.
fn with_names(meta: &ComponentMeta, names: Vec<ComponentName>) -> serde_json::Value {
    let mut v = serde_json::to_value(meta).unwrap_or_default();
    v["names"] = serde_json::to_value(names).unwrap_or_default();
    v
}

async fn list_components(State(state): State<Arc<AdsState>>) -> Result<Response, ApiError> {
    let all = state
        .store
        .run(|s| {
            s.components()?
                .into_iter()
                .map(|m| Ok(with_names(&m, s.names(&m.id)?)))
                .collect::<Result<Vec<_>, StoreError>>()
        })
        .await?;
    Ok(Json(json!({ "components": all })).into_response())
}

async fn get_component(
    State(state): State<Arc<AdsState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let lookup = id.clone();
    let found = state
        .store
        .run(move |s| match s.component(&lookup)? {
            Some(m) => Ok(Some(with_names(&m, s.names(&m.id)?))),
            None => Ok(None),
        })
        .await?;
    match found {
        Some(meta) => Ok(Json(meta).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_component",
            format!("no component with id {id}"),
        )),
    }
}

async fn delete_component(
    State(state): State<Arc<AdsState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let target = id.clone();
    let now = super::now_unix();
    let grace = state.config.expiry_grace_secs;
    let deleted = state
        .store
        .run(move |s| s.delete_component(&target, now, grace))
        .await?;
    if !deleted {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_component",
            format!("no component with id {id}"),
        ));
    }
    state.tickets.forget_component(&id);
    if let Some(key) = crate::secrets::parse_hex32(&id) {
        state.cache.forget(key);
    }
    tracing::info!(%id, "component deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn mint(
    State(state): State<Arc<AdsState>>,
    body: Result<Json<MintRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) =
        body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_json", e.body_text()))?;
    let minted = state.tickets.mint(req, super::now_unix()).await?;
    Ok((StatusCode::CREATED, Json(minted)).into_response())
}

fn unknown_ticket(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_ticket",
        format!("no ticket with id {id}"),
    )
}

fn ticket_id(id: &str) -> Result<TicketId, ApiError> {
    TicketId::from_hex(id).ok_or_else(|| unknown_ticket(id))
}

fn ticket_json(t: &TicketView, grace: u64) -> serde_json::Value {
    let (r, snap) = (&t.record, &t.snapshot);
    json!({
        "id": r.id.to_hex(),
        "component": r.component_id,
        "device_id": r.device_id,
        "state": r.effective_state(snap, super::now_unix(), grace),
        "size": t.size,
        "bytes_sent": snap.bytes_sent,
        "bytes_delivered": snap.coverage.covered(),
        "coverage": snap.coverage.intervals(),
        "tentative": snap.tentative.intervals(),
        "requests": snap.requests,
        "active_requests": t.active,
        "deliveries": snap.deliveries,
        "max_deliveries": r.max_deliveries,
        "max_connections": r.max_connections,
        "max_bytes": r.max_bytes,
        "first_byte_at_ms": snap.first_byte_at_ms,
        "last_byte_at_ms": snap.last_byte_at_ms,
        "completed_at_ms": snap.completed_at_ms,
        "created_at": r.created_at,
        "expires_at": r.expires_at,
        "callback_url": r.callback_url,
        "context": r.context,
        "mechanism": r.mechanism,
        "content_type": r.content_type,
        "report": snap.report,
    })
}

fn live_view(t: &LiveTicket) -> TicketView {
    let (snapshot, active) = t.snapshot();
    TicketView {
        record: t.record.clone(),
        snapshot,
        active,
        size: t.object.size,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TicketQuery {
    state: Option<String>,
    component: Option<String>,
    device: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /v1/tickets`: newest first, filtered by (effective) state, component and device.
async fn list_tickets(
    State(state): State<Arc<AdsState>>,
    q: Result<Query<TicketQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_parameter", m);
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let wanted = match q.state.as_deref() {
        None => None,
        Some(s) => Some(TicketState::from_name(s).ok_or_else(|| {
            bad("state must be issued, downloading, completed, expired or revoked".into())
        })?),
    };
    let page = Page::new(q.limit, q.cursor).map_err(|e| bad(e.to_string()))?;
    let grace = state.config.expiry_grace_secs;
    let filter = TicketFilter {
        state: wanted,
        component: q.component,
        device: q.device,
        now: super::now_unix(),
        grace,
    };
    let listed = state.tickets.list(filter, page).await?;
    let items: Vec<_> = listed.items.iter().map(|t| ticket_json(t, grace)).collect();
    Ok(Json(json!({"items": items, "next_cursor": listed.next})).into_response())
}

async fn get_ticket(
    State(state): State<Arc<AdsState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tid = ticket_id(&id)?;
    let t = state
        .tickets
        .lookup(tid)
        .await?
        .ok_or_else(|| unknown_ticket(&id))?;
    Ok(Json(ticket_json(&live_view(&t), state.config.expiry_grace_secs)).into_response())
}

async fn revoke_ticket(
    State(state): State<Arc<AdsState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tid = ticket_id(&id)?;
    match state.tickets.revoke(tid, super::now_unix()).await? {
        Some(_) => {
            tracing::info!(ticket = %id, "ticket revoked");
            let t = state
                .tickets
                .lookup(tid)
                .await?
                .ok_or_else(|| unknown_ticket(&id))?;
            Ok(Json(ticket_json(&live_view(&t), state.config.expiry_grace_secs)).into_response())
        }
        None => Err(unknown_ticket(&id)),
    }
}

#[derive(Deserialize)]
struct CallbackQuery {
    state: Option<String>,
    limit: Option<usize>,
}

async fn list_callbacks(
    State(state): State<Arc<AdsState>>,
    Query(q): Query<CallbackQuery>,
) -> Result<Response, ApiError> {
    if let Some(s) = &q.state {
        if !matches!(s.as_str(), "pending" | "delivered" | "dead") {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_state",
                "state must be pending, delivered or dead",
            ));
        }
    }
    let outbox = state.outbox.clone();
    let limit = q.limit.unwrap_or(100).min(1000);
    let events = tokio::task::spawn_blocking(move || outbox.list(q.state.as_deref(), limit))
        .await
        .map_err(|_| StoreError::WorkerGone)?
        .map_err(outbox_error)?;
    Ok(Json(json!({ "callbacks": events })).into_response())
}

async fn retry_callback(
    State(state): State<Arc<AdsState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let outbox = state.outbox.clone();
    let event = id.clone();
    let now = crate::ads::now_unix() * 1000;
    let found = tokio::task::spawn_blocking(move || outbox.retry(&event, now))
        .await
        .map_err(|_| StoreError::WorkerGone)?
        .map_err(outbox_error)?;
    if !found {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_dead_callback",
            format!("no dead callback with id {id}"),
        ));
    }
    state.callback_wake.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"event_id": id, "state": "pending"})),
    )
        .into_response())
}

fn outbox_error(e: crate::webhook::outbox::OutboxError) -> ApiError {
    tracing::error!(error = %e, "outbox failure");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "storage",
        "storage failure; see the node's log",
    )
}

async fn metrics(State(state): State<Arc<AdsState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(
            state.cache.stats(),
            state.tickets.cached(),
            &state.admin_guard.refused,
        ),
    )
        .into_response()
}
