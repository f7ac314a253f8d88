//! The DMS's HTTP surfaces: `POST /dm` for devices (SyncML DM over HTTP(S)), and the EMI API
//! (bearer token, JSON): devices, catalog, jobs.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};

use crate::net::early_response;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::catalog::Build;
use super::engine::{AdsEvent, Engine, EngineError};
use super::job::{Delivery, Job, JobOp, JobSource, Step};
use super::notify;
use super::store::{
    now_ms, Device, DeviceFilter, DmsStore, JobFilter, Listed, MechanismChoice, Page,
};
use crate::content::{self, ReceiveError};
use crate::net::guard::{self, EndpointGuard};
use crate::syncml::auth::AuthScheme;
use crate::syncml::Encoding;
use crate::webhook::event::DownloadEventKind;
use base64::Engine as _;

/// Shared state of the DMS routers.
pub struct DmsState {
    pub ads: Arc<super::ads_client::AdsPool>,
    pub store: DmsStore,
    pub engine: Arc<Engine>,
    pub http: reqwest::Client,
    pub server_id: String,
    pub api_token: String,
    pub max_message_bytes: usize,
    pub max_component_bytes: u64,
    pub default_delivery: Delivery,
    /// Request rate of `/dm`.
    pub dm_guard: Arc<EndpointGuard>,
    /// Request rate and token backoff of the EMI API.
    pub api_guard: Arc<EndpointGuard>,
}

fn err(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into(), "code": code}))).into_response()
}

fn storage(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "DMS storage failure");
    err(
        StatusCode::INTERNAL_SERVER_ERROR,
        "storage",
        "storage failure; see the DMS log",
    )
}

/// The device-facing router (`POST /dm`).
pub fn dm_router(state: Arc<DmsState>) -> Router {
    Router::new()
        .route("/dm", post(dm))
        .route_layer(middleware::from_fn_with_state(
            state.dm_guard.clone(),
            guard::limit_rate,
        ))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(middleware::from_fn(early_response::drain_refused_bodies))
        .with_state(state)
}

async fn dm(State(state): State<Arc<DmsState>>, req: Request) -> Response {
    let peer = guard::client_ip(&req);
    let (parts, body) = req.into_parts();
    // The session key of a RespURI (`/dm?s=…`).
    let session_key = parts.uri.query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("s="))
            .map(String::from)
    });
    let encoding = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(Encoding::from_content_type);
    let Some(encoding) = encoding else {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send application/vnd.syncml.dm+xml or application/vnd.syncml.dm+wbxml\n",
        )
            .into_response();
    };
    let bytes = match axum::body::to_bytes(body, state.max_message_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                "SyncML message too large or cut off\n",
            )
                .into_response()
        }
    };
    tracing::debug!(target: "scomo_ads::dm_messages", peer = ?peer, message = %for_log(&bytes), "SyncML from a device");
    match state
        .engine
        .handle(&bytes, encoding, peer, session_key.as_deref())
        .await
    {
        Ok(reply) => {
            tracing::debug!(target: "scomo_ads::dm_messages", peer = ?peer, message = %for_log(&reply), "SyncML to the device");
            ([(header::CONTENT_TYPE, encoding.content_type())], reply).into_response()
        }
        Err(EngineError::Backoff(wait)) => guard::too_many(
            wait,
            "too many failed authentications for this device from this address",
        ),
        Err(EngineError::Undecodable(e)) => (
            StatusCode::BAD_REQUEST,
            format!("not a SyncML DM message: {e}\n"),
        )
            .into_response(),
        Err(e) => storage(e),
    }
}

/// A SyncML message as logged (`RUST_LOG=scomo_ads::dm_messages=debug`): credentials
/// redacted (a basic one is the password in base64), at most 4 KiB.
fn for_log(bytes: &[u8]) -> String {
    const MAX: usize = 4096;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]);
    let mut out = String::with_capacity(text.len());
    let mut rest: &str = &text;
    while let Some(start) = rest.find("<Cred>") {
        out.push_str(&rest[..start]);
        out.push_str("<Cred>(redacted)</Cred>");
        rest = match rest[start..].find("</Cred>") {
            Some(end) => &rest[start + end + "</Cred>".len()..],
            None => "",
        };
    }
    out.push_str(rest);
    if bytes.len() > MAX {
        out.push_str(&format!("… ({} bytes in all)", bytes.len()));
    }
    out
}

/// The EMI router.
pub fn api_router(state: Arc<DmsState>) -> Router {
    Router::new()
        .route("/v1/devices", get(list_devices))
        .route("/v1/devices/{id}", put(put_device).get(get_device))
        .route("/v1/components", post(add_component).get(list_components))
        .route("/v1/jobs", post(create_job).get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        // Authenticated by its Standard Webhooks signature, not the EMI token.
        .route("/v1/ads-callbacks", post(ads_callback))
        .route_layer(middleware::from_fn_with_state(
            state.api_guard.clone(),
            guard::limit_rate,
        ))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(middleware::from_fn(early_response::drain_refused_bodies))
        .with_state(state)
}

async fn ads_callback(
    State(state): State<Arc<DmsState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let ts: u64 = h("webhook-timestamp").parse().unwrap_or(0);
    let now = now_ms() / 1000;
    let Some(node) = state
        .ads
        .verify(&h("webhook-id"), ts, &body, &h("webhook-signature"), now)
    else {
        return err(
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "the callback signature does not verify against any configured ADS node",
        );
    };
    let event = match serde_json::from_slice::<AdsEvent>(&body) {
        Ok(e) => e,
        Err(e) => {
            // A newer node may send kinds we do not know yet: acknowledge and ignore them
            // (a refusal would only make the node retry them until they die).
            let kind = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("event")?.as_str().map(String::from));
            let known = |k: &str| serde_json::from_value::<DownloadEventKind>(json!(k)).is_ok();
            if let Some(kind) = kind.filter(|k| !known(k)) {
                tracing::info!(node = %node.name, event = %kind, error = %e, "ADS callback of an unknown kind ignored");
                return StatusCode::NO_CONTENT.into_response();
            }
            return err(
                StatusCode::BAD_REQUEST,
                "bad_json",
                format!("the callback body is not a download event: {e}"),
            );
        }
    };
    tracing::info!(node = %node.name, event = event.event.as_str(), "ADS callback");
    match state.engine.on_ads_callback(&event).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => storage(e),
    }
}

async fn require_token(State(state): State<Arc<DmsState>>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match state
        .api_guard
        .bearer(guard::client_ip(&req), presented, &state.api_token)
    {
        Ok(()) => next.run(req).await,
        Err(Some(wait)) => guard::too_many(wait, "too many failed authentications"),
        Err(None) => err(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API token: send Authorization: Bearer <token from DIR/api.token>",
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceBody {
    password: String,
    server_password: Option<String>,
    /// The DM account's user name, when it is not the device id.
    username: Option<String>,
    auth: Option<String>,
    /// `none`, `basic` or `md5`; md5 when a server password is given, else none.
    server_auth: Option<String>,
    /// The nonce the device starts its MD5 credential with (base64, `""` for empty).
    client_auth_nonce: Option<String>,
    /// The nonce we start ours (and package 0's digest) with (base64).
    server_auth_nonce: Option<String>,
    notify_url: Option<String>,
    /// `auto`, `https` or `dlota`; absent keeps the device's current choice.
    alternate_mechanism: Option<String>,
}

/// The nonce both sides start from (four zero bytes, the reset form), before the first Chal.
pub const INITIAL_NONCE: &str = "AAAAAA==";

async fn put_device(
    State(state): State<Arc<DmsState>>,
    Path(id): Path<String>,
    body: Result<Json<DeviceBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => return err(StatusCode::BAD_REQUEST, "bad_json", e.body_text()),
    };
    if id.is_empty() || id.len() > 200 || b.password.is_empty() {
        return err(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "device id and password are required",
        );
    }
    let auth = b.auth.unwrap_or_else(|| "md5".into());
    if auth != "md5" && auth != "basic" {
        return err(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "auth must be md5 or basic",
        );
    }
    let server_auth = match b.server_auth.as_deref() {
        None if b.server_password.is_some() => AuthScheme::Md5,
        None => AuthScheme::None,
        Some(name) => match AuthScheme::parse(name) {
            Some(scheme) => scheme,
            None => {
                return err(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "server_auth must be none, basic or md5",
                )
            }
        },
    };
    for (name, nonce) in [
        ("client_auth_nonce", &b.client_auth_nonce),
        ("server_auth_nonce", &b.server_auth_nonce),
    ] {
        let valid = nonce.as_deref().is_none_or(|n| {
            n.len() <= 512 && base64::engine::general_purpose::STANDARD.decode(n).is_ok()
        });
        if !valid {
            return err(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("{name} must be base64 (\"\" for the empty nonce)"),
            );
        }
    }
    let mechanism = match b.alternate_mechanism.as_deref() {
        None => None,
        Some(name) => match MechanismChoice::parse(name) {
            Some(m) => Some(m),
            None => {
                return err(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "alternate_mechanism must be auto, https or dlota",
                )
            }
        },
    };
    if b.username
        .as_deref()
        .is_some_and(|u| u.is_empty() || u.len() > 200)
    {
        return err(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "username must be 1 to 200 characters",
        );
    }
    let res = state
        .store
        .run(move |s| {
            let new = || Device {
                id: id.clone(),
                client_auth_nonce: INITIAL_NONCE.into(),
                server_auth_nonce: INITIAL_NONCE.into(),
                ..Device::default()
            };
            s.upsert_device(&id, new, |d| {
                d.password = b.password;
                d.server_password = b.server_password.unwrap_or_else(|| d.password.clone());
                d.username = b.username;
                d.auth = auth;
                d.server_auth = server_auth;
                if let Some(n) = b.client_auth_nonce {
                    // A re-provisioned device starts over: the nonce it was given, its first
                    // credential possibly with the empty nonce.
                    d.client_auth_nonce = n;
                    d.offered_nonces.clear();
                    d.last_auth_at_ms = None;
                }
                if let Some(n) = b.server_auth_nonce {
                    d.server_auth_nonce = n;
                }
                d.notify_url = b.notify_url;
                if let Some(m) = mechanism {
                    d.alternate_mechanism = m;
                }
            })
        })
        .await;
    match res {
        Ok(d) => (StatusCode::OK, Json(d)).into_response(),
        Err(e) => storage(e),
    }
}

async fn get_device(State(state): State<Arc<DmsState>>, Path(id): Path<String>) -> Response {
    let lookup = id.clone();
    match state.store.run(move |s| s.device(&lookup)).await {
        Ok(Some(d)) => Json(d).into_response(),
        Ok(None) => err(
            StatusCode::NOT_FOUND,
            "unknown_device",
            format!("no device {id}"),
        ),
        Err(e) => storage(e),
    }
}

#[derive(Deserialize)]
struct ComponentQuery {
    name: Option<String>,
    version: Option<String>,
    manufacturer: Option<String>,
    model: Option<String>,
    fw_min: Option<String>,
    fw_max: Option<String>,
}

async fn add_component(
    State(state): State<Arc<DmsState>>,
    Query(q): Query<ComponentQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (Some(name), Some(version)) = (
        q.name.filter(|n| !n.is_empty()),
        q.version.filter(|v| !v.is_empty()),
    ) else {
        return err(
            StatusCode::BAD_REQUEST,
            "bad_parameter",
            "name and version are required",
        );
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let tmp = state.store.catalog_dir().join("tmp");
    if let Err(e) = std::fs::create_dir_all(&tmp) {
        return storage(e);
    }
    let received = match content::receive(
        &tmp,
        declared,
        content::UploadLimits {
            max_bytes: state.max_component_bytes,
            keep_free_bytes: content::DEFAULT_KEEP_FREE_BYTES,
        },
        body.into_data_stream(),
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            let status = match e {
                ReceiveError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                ReceiveError::DiskFull => StatusCode::INSUFFICIENT_STORAGE,
                ReceiveError::Io(_) | ReceiveError::WorkerGone => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::BAD_REQUEST,
            };
            return err(status, "upload", e.to_string());
        }
    };
    let build = Build {
        id: received.blake3.to_hex().to_string(),
        name,
        version,
        size: received.size,
        sha256: received.sha256_hex(),
        manufacturer: q.manufacturer.filter(|s| !s.is_empty()),
        model: q.model.filter(|s| !s.is_empty()),
        fw_min: q.fw_min.filter(|s| !s.is_empty()),
        fw_max: q.fw_max.filter(|s| !s.is_empty()),
        created_at_ms: now_ms(),
    };
    let dest = state.store.build_path(&build.id);
    if let Err(e) = received.temp.persist(&dest) {
        return storage(e);
    }
    let b = build.clone();
    match state.store.run(move |s| s.put_build(&b)).await {
        Ok(()) => (StatusCode::CREATED, Json(build)).into_response(),
        Err(e) => storage(e),
    }
}

/// Paging of the list endpoints (`crate::paging`). (A `Response` error, like every handler
/// here returns.)
#[allow(clippy::result_large_err)]
fn page(limit: Option<usize>, cursor: Option<String>) -> Result<Page, Response> {
    Page::new(limit, cursor)
        .map_err(|e| err(StatusCode::BAD_REQUEST, "bad_parameter", e.to_string()))
}

fn listed<T: serde::Serialize>(l: Listed<T>) -> Response {
    Json(json!({"items": l.items, "next_cursor": l.next})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobQuery {
    device: Option<String>,
    state: Option<String>,
    result_code: Option<u16>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /v1/jobs`: newest first, filtered by device, state and SCOMO result code.
async fn list_jobs(
    State(state): State<Arc<DmsState>>,
    q: Result<Query<JobQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return err(StatusCode::BAD_REQUEST, "bad_parameter", e.body_text()),
    };
    if q.state
        .as_deref()
        .is_some_and(|s| !matches!(s, "queued" | "running" | "succeeded" | "failed"))
    {
        return err(
            StatusCode::BAD_REQUEST,
            "bad_parameter",
            "state must be queued, running, succeeded or failed",
        );
    }
    let page = match page(q.limit, q.cursor) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let filter = JobFilter {
        device: q.device,
        state: q.state,
        result_code: q.result_code,
    };
    match state.store.run(move |s| s.list_jobs(&filter, &page)).await {
        Ok(l) => listed(l),
        Err(e) => storage(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceQuery {
    model: Option<String>,
    firmware: Option<String>,
    seen_since_ms: Option<u64>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /v1/devices`: by id, filtered by model, firmware version and last session.
async fn list_devices(
    State(state): State<Arc<DmsState>>,
    q: Result<Query<DeviceQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return err(StatusCode::BAD_REQUEST, "bad_parameter", e.body_text()),
    };
    let page = match page(q.limit, q.cursor) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let filter = DeviceFilter {
        model: q.model,
        firmware: q.firmware,
        seen_since_ms: q.seen_since_ms,
    };
    match state
        .store
        .run(move |s| s.list_devices(&filter, &page))
        .await
    {
        Ok(l) => listed(l),
        Err(e) => storage(e),
    }
}

async fn list_components(State(state): State<Arc<DmsState>>) -> Response {
    match state.store.run(|s| s.builds()).await {
        Ok(b) => Json(json!({"components": b})).into_response(),
        Err(e) => storage(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobBody {
    device: String,
    operation: JobOp,
    component: Option<String>,
    delivery: Option<String>,
    #[serde(default)]
    inventory_first: bool,
}

async fn create_job(
    State(state): State<Arc<DmsState>>,
    body: Result<Json<JobBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => return err(StatusCode::BAD_REQUEST, "bad_json", e.body_text()),
    };
    let Some(delivery) = b
        .delivery
        .as_deref()
        .map_or(Some(state.default_delivery), Delivery::parse)
    else {
        return err(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "delivery must be dm, alternate or auto",
        );
    };
    if b.operation != JobOp::Inventory && b.component.as_deref().is_none_or(str::is_empty) {
        return err(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "this operation needs a component",
        );
    }
    // The component by catalog id (that very build) or by name (the build that fits).
    let mut component = b.component.clone();
    let mut pinned = None;
    if let Some(asked) = b.component.clone().filter(|c| !c.is_empty()) {
        let lookup = asked.clone();
        let found = state
            .store
            .run(move |s| {
                let builds = s.builds()?;
                let by_id = builds
                    .iter()
                    .find(|x| x.id == lookup)
                    .map(|x| x.name.clone());
                let by_name = builds.iter().any(|x| x.name == lookup);
                Ok((by_id, by_name))
            })
            .await;
        match found {
            Ok((Some(name), _)) => {
                component = Some(name);
                pinned = Some(asked);
            }
            Ok((None, true)) => {}
            // A delivery needs a build of the component: an unknown one is refused now, not
            // after a session with the device. (Other operations name what the device holds.)
            Ok((None, false)) if b.operation.is_delivery() => {
                return err(
                    StatusCode::NOT_FOUND,
                    "unknown_component",
                    format!(
                        "no component {asked} in the catalog, by name or id (GET /v1/components lists them)"
                    ),
                )
            }
            Ok((None, false)) => {}
            Err(e) => return storage(e),
        }
    }
    let dev = b.device.clone();
    match state.store.run(move |s| s.device(&dev)).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return err(
                StatusCode::NOT_FOUND,
                "unknown_device",
                format!("no device {}", b.device),
            )
        }
        Err(e) => return storage(e),
    }
    let mut job = Job::new(
        &b.device,
        b.operation,
        component,
        delivery,
        b.inventory_first,
        JobSource::Emi,
    );
    job.pinned_build = pinned;
    job.record(Step::EmiRequest, Some(format!("{:?}", b.operation)));
    let j = job.clone();
    if let Err(e) = state.store.run(move |s| s.put_job(&j)).await {
        return storage(e);
    }
    tracing::info!(job = %job.id, device = %job.device, "job created by the EMI");
    // Seed step 2: initiate a session (package 0), without holding up the answer.
    let st = state.clone();
    let device = job.device.clone();
    tokio::spawn(async move {
        let _ = notify::notify(&st.store, &st.engine, &st.http, &st.server_id, &device).await;
    });
    (StatusCode::ACCEPTED, Json(json!({"job_id": job.id}))).into_response()
}

async fn get_job(State(state): State<Arc<DmsState>>, Path(id): Path<String>) -> Response {
    let lookup = id.clone();
    match state.store.run(move |s| s.job_with_events(&lookup)).await {
        Ok(Some(j)) => Json(j).into_response(),
        Ok(None) => err(StatusCode::NOT_FOUND, "unknown_job", format!("no job {id}")),
        Err(e) => storage(e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn logged_messages_carry_no_credentials_and_stay_short() {
        let m = b"<SyncHdr><Cred><Meta>basic</Meta><Data>dXNlcjpwYXNz</Data></Cred></SyncHdr><Cred>x</Cred>";
        let logged = for_log(m);
        assert!(!logged.contains("dXNlcjpwYXNz"), "{logged}");
        assert_eq!(
            logged,
            "<SyncHdr><Cred>(redacted)</Cred></SyncHdr><Cred>(redacted)</Cred>"
        );
        // Cut in the middle of a credential: nothing after its start is shown.
        let mut long = b"<SyncML>".to_vec();
        long.extend(std::iter::repeat_n(b'a', 5000));
        let logged = for_log(&long);
        assert!(
            logged.len() < 4200 && logged.ends_with("(5008 bytes in all)"),
            "{}",
            logged.len()
        );
        assert_eq!(
            for_log(b"<a><Cred><Data>secret"),
            "<a><Cred>(redacted)</Cred>"
        );
    }
}
