//! The device as an OMA Download OTA 1.0 client (`device --dlota`): `PkgURL` names a download
//! descriptor, not the object. The client fetches the descriptor, checks it against what it
//! can take (DD 1.0 rules, DDVersion, the media type, its free space), fetches the object from
//! `objectURI` with the resuming downloader, checks the object against the descriptor's
//! `size`, and POSTs its status report (`900 Success`, `905 Attribute mismatch`, ...) to
//! `installNotifyURI`. The SCOMO result it then reports to the DMS says the same thing as the
//! status report (`dlota::scomo_result`), so whichever reaches the DMS first decides alike.
//!
//! Where the object URL itself refused us (410 spent or expired, 403) there is nothing to
//! report to a node that ended the ticket: the SCOMO result says it (1551 asks the DMS for a
//! fresh URL), as in the plain mechanism.

use std::path::Path;

use futures_util::StreamExt;

use super::download::{fetch, FetchError, FetchPolicy, FetchStats};
use crate::dlota::{self, Descriptor, InstallStatus, Report};
use crate::scomo::ResultCode;

/// What the client accepts and how it behaves.
#[derive(Clone, Debug)]
pub struct ClientProfile {
    /// Media types it can install (a descriptor naming none of them gets 953).
    pub accept_types: Vec<String>,
    /// Bytes it has room for (a larger object gets 901).
    pub free_bytes: u64,
    /// Fault injection: the user cancels at the descriptor (902).
    pub cancel: bool,
}

/// Why a descriptor-driven download failed: the status reported to the node (when there was
/// a descriptor to report to), the SCOMO result for the DMS, and a sentence for the log.
#[derive(Debug)]
pub struct Failure {
    pub reported: Option<InstallStatus>,
    pub result: ResultCode,
    pub why: String,
}

impl Failure {
    fn unreported(result: ResultCode, why: impl Into<String>) -> Self {
        Failure {
            reported: None,
            result,
            why: why.into(),
        }
    }
}

/// Media types every profile accepts unless told otherwise.
pub const DEFAULT_ACCEPT: &[&str] = &["application/octet-stream"];

/// Downloads through the descriptor at `dd_url` into `dest`; `expected_blake3` is the DMS's
/// digest (never the descriptor's or the node's).
pub async fn download(
    http: &reqwest::Client,
    dd_url: &str,
    dest: &Path,
    expected_blake3: Option<&str>,
    policy: &FetchPolicy,
    profile: &ClientProfile,
) -> Result<FetchStats, Failure> {
    let dd = match fetch_descriptor(http, dd_url, policy).await {
        Ok(dd) => dd,
        Err(f) => return Err(f),
    };
    let notify = dd.install_notify_uri.clone();
    let fail = |status: InstallStatus, why: String| async move {
        if let Some(uri) = &notify {
            post_report(http, uri, status).await;
        }
        Err(Failure {
            reported: Some(status),
            result: dlota::scomo_result(status.code()).unwrap_or(ResultCode::DownloadFailed),
            why,
        })
    };
    if profile.cancel {
        return fail(
            InstallStatus::UserCancelled,
            "the user cancelled at the descriptor (fault injection)".into(),
        )
        .await;
    }
    if !dd.types.iter().any(|t| {
        profile
            .accept_types
            .iter()
            .any(|a| a.eq_ignore_ascii_case(t))
    }) {
        let why = format!("the descriptor's type {:?} is not one we install", dd.types);
        return fail(InstallStatus::NonAcceptableContent, why).await;
    }
    if dd.size > profile.free_bytes {
        let why = format!(
            "the object ({} bytes) does not fit in {} free bytes",
            dd.size, profile.free_bytes
        );
        return fail(InstallStatus::InsufficientMemory, why).await;
    }
    let stats = match fetch(http, &dd.object_uri, dest, expected_blake3, policy).await {
        Ok(s) => s,
        Err(e @ (FetchError::Gone | FetchError::Forbidden)) => {
            return Err(Failure::unreported(e.result_code(), e.to_string()))
        }
        Err(e) => {
            let status = match e {
                FetchError::Validation => InstallStatus::AttributeMismatch,
                FetchError::Io(_) => InstallStatus::InsufficientMemory,
                _ => InstallStatus::LossOfService,
            };
            return fail(status, e.to_string()).await;
        }
    };
    let got = tokio::fs::metadata(dest)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    if got != dd.size {
        let why = format!(
            "the object has {got} bytes where the descriptor says {}",
            dd.size
        );
        return fail(InstallStatus::AttributeMismatch, why).await;
    }
    if let Some(uri) = &dd.install_notify_uri {
        post_report(http, uri, InstallStatus::Success).await;
    }
    Ok(stats)
}

/// GETs and checks the descriptor (retrying network failures and 5xx like the object fetch).
async fn fetch_descriptor(
    http: &reqwest::Client,
    url: &str,
    policy: &FetchPolicy,
) -> Result<Descriptor, Failure> {
    let invalid = |why: String| {
        Failure::unreported(
            dlota::scomo_result(InstallStatus::InvalidDescriptor.code())
                .unwrap_or(ResultCode::FailedPackageValidation),
            why,
        )
    };
    let mut last = String::from("no attempt made");
    for attempt in 1..=policy.attempts.max(1) {
        let resp = match http.get(url).send().await {
            Ok(r) => r,
            Err(e) => {
                last = format!("descriptor request failed: {e}");
                tokio::time::sleep(policy.backoff * (1 << attempt.min(6))).await;
                continue;
            }
        };
        match resp.status().as_u16() {
            200 => {}
            410 => {
                return Err(Failure::unreported(
                    ResultCode::AlternateDownloadUrlExpired,
                    "the descriptor URL is expired or used (410)",
                ))
            }
            403 => {
                return Err(Failure::unreported(
                    ResultCode::AlternateDownloadAuthenticationFailure,
                    "the ADS refused the descriptor URL (403)",
                ))
            }
            code if code >= 500 || code == 429 => {
                last = format!("the ADS answered {code} for the descriptor");
                tokio::time::sleep(policy.backoff * (1 << attempt.min(6))).await;
                continue;
            }
            code => return Err(invalid(format!("the descriptor URL answered {code}"))),
        }
        let media = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if media != dlota::CONTENT_TYPE {
            return Err(invalid(format!(
                "PkgURL names {media:?}, not a download descriptor ({})",
                dlota::CONTENT_TYPE
            )));
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    last = format!("descriptor transfer cut: {e}");
                    body.clear();
                    break;
                }
            };
            if body.len() + chunk.len() > dlota::MAX_DESCRIPTOR_BYTES {
                return Err(invalid("the descriptor is too large".into()));
            }
            body.extend_from_slice(&chunk);
        }
        if body.is_empty() {
            continue;
        }
        return Descriptor::parse(&body).map_err(|e| {
            Failure::unreported(
                dlota::scomo_result(e.status().code())
                    .unwrap_or(ResultCode::FailedPackageValidation),
                e.to_string(),
            )
        });
    }
    Err(Failure::unreported(
        ResultCode::AlternateDownloadServerUnavailable,
        last,
    ))
}

/// POSTs a status report, retrying network failures and 5xx a few times. A report that
/// cannot be delivered is logged: the SCOMO result still tells the DMS.
async fn post_report(http: &reqwest::Client, uri: &str, status: InstallStatus) {
    let body = Report::new(status).to_body();
    for attempt in 1..=3u32 {
        match http
            .post(uri)
            .header("content-type", "text/plain; charset=utf-8")
            .body(body.clone())
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                tracing::info!(status = status.code(), "install-notify report delivered");
                return;
            }
            Ok(r) if r.status().is_client_error() => {
                tracing::warn!(
                    status = status.code(),
                    answer = r.status().as_u16(),
                    "install-notify report refused"
                );
                return;
            }
            Ok(r) => tracing::info!(
                answer = r.status().as_u16(),
                attempt,
                "install-notify report not taken; retrying"
            ),
            Err(e) => tracing::info!(error = %e, attempt, "install-notify report failed; retrying"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt))).await;
    }
}
