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
use super::store::StoreError;
use super::tickets::{MintRequest, TicketError};
use super::token::TicketId;
use super::AdsState;

/// An admin API error: status, stable code, human message.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": self.message, "code": self.code})),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
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
        let (status, code) = match &e {
            IngestError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            IngestError::LengthMismatch { .. } => (StatusCode::BAD_REQUEST, "length_mismatch"),
            IngestError::Incomplete { .. } => (StatusCode::BAD_REQUEST, "incomplete"),
            IngestError::BadParameter(_) => (StatusCode::BAD_REQUEST, "bad_parameter"),
            IngestError::DiskFull => (StatusCode::INSUFFICIENT_STORAGE, "disk_full"),
            IngestError::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "io"),
            IngestError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
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
            TicketError::BadTtl { .. } | TicketError::BadDeviceId => {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string())
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
        .route("/v1/tickets", post(mint))
        .route("/v1/tickets/{id}", get(get_ticket))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(v1)
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint")
        })
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
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(token) if crate::secrets::ct_eq(token.as_bytes(), state.admin_token.as_bytes()) => {
            Ok(next.run(req).await)
        }
        _ => Err(ApiError::new(
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
        state.config.max_upload_bytes,
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
    Ok((status, Json(meta)).into_response())
}

async fn list_components(State(state): State<Arc<AdsState>>) -> Result<Response, ApiError> {
    let all = state.store.run(|s| s.components()).await?;
    Ok(Json(json!({ "components": all })).into_response())
}

async fn get_component(
    State(state): State<Arc<AdsState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let lookup = id.clone();
    match state.store.run(move |s| s.component(&lookup)).await? {
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
    let deleted = state
        .store
        .run(move |s| s.delete_component(&target, now))
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

async fn get_ticket(
    State(state): State<Arc<AdsState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_ticket",
            format!("no ticket with id {id}"),
        )
    };
    let tid = TicketId::from_hex(&id).ok_or_else(not_found)?;
    let row = state.tickets.row(tid).await?.ok_or_else(not_found)?;
    let now = super::now_unix();
    let ticket_state = if now > row.expires_at {
        "expired"
    } else {
        "issued"
    };
    Ok(Json(json!({
        "id": id,
        "component": row.component_id,
        "device_id": row.device_id,
        "state": ticket_state,
        "created_at": row.created_at,
        "expires_at": row.expires_at,
    }))
    .into_response())
}

async fn metrics(State(state): State<Arc<AdsState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(state.cache.stats()),
    )
        .into_response()
}
