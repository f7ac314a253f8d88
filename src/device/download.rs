//! The device's resuming downloader for alternate delivery: fetches a one-time URL over
//! HTTPS, resumes with `Range` + `If-Range` after any interruption (bounded retries with
//! backoff), and verifies the BLAKE3 the DMS gave (never the one the ADS sends). Each failure
//! maps to the SCOMO result code the device reports.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::scomo::ResultCode;

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("the download URL is expired or already used (410)")]
    Gone,
    #[error("the ADS refused the download URL (403)")]
    Forbidden,
    #[error("the ADS is unavailable: {0}")]
    Unavailable(String),
    #[error("the downloaded bytes do not match the expected BLAKE3")]
    Validation,
    #[error("cannot store the download: {0}")]
    Io(#[from] std::io::Error),
}

impl FetchError {
    /// The SCOMO result code for this failure (OMA-DM-NOTES.md §6).
    pub fn result_code(&self) -> ResultCode {
        match self {
            FetchError::Gone => ResultCode::AlternateDownloadUrlExpired,
            FetchError::Forbidden => ResultCode::AlternateDownloadAuthenticationFailure,
            FetchError::Unavailable(_) => ResultCode::AlternateDownloadServerUnavailable,
            FetchError::Validation => ResultCode::FailedPackageValidation,
            FetchError::Io(_) => ResultCode::DownloadFailedOutOfMemory,
        }
    }
}

/// Retry policy and fault injection.
#[derive(Clone, Debug)]
pub struct FetchPolicy {
    pub attempts: u32,
    pub backoff: Duration,
    /// Fault injection: cuts left to make (each after a third of what is left), shared by
    /// every download of the device.
    pub interrupts: Arc<AtomicU32>,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        Self {
            attempts: 8,
            backoff: Duration::from_millis(200),
            interrupts: Arc::new(AtomicU32::new(0)),
        }
    }
}

/// What a fetch did.
#[derive(Debug, Default, Clone, Copy)]
pub struct FetchStats {
    pub bytes: u64,
    pub requests: u32,
    pub resumes: u32,
}

/// Downloads `url` into `dest`, resuming after interruptions, and verifies `expected_blake3`.
pub async fn fetch(
    http: &reqwest::Client,
    url: &str,
    dest: &Path,
    expected_blake3: Option<&str>,
    policy: &FetchPolicy,
) -> Result<FetchStats, FetchError> {
    if let Some(dir) = dest.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let mut file = tokio::fs::File::create(dest).await?;
    let mut have: u64 = 0;
    let mut total: Option<u64> = None;
    let mut etag: Option<String> = None;
    let mut stats = FetchStats::default();
    let mut last_error = String::from("no attempt made");
    let mut failures = 0u32;
    loop {
        if total.is_some_and(|t| have >= t) {
            break;
        }
        if failures >= policy.attempts {
            return Err(FetchError::Unavailable(last_error));
        }
        let mut req = http.get(url);
        if have > 0 {
            req = req.header("range", format!("bytes={have}-"));
            if let Some(e) = &etag {
                req = req.header("if-range", e.as_str());
            }
            stats.resumes += 1;
        }
        stats.requests += 1;
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                failures += 1;
                last_error = format!("request failed: {e}");
                tokio::time::sleep(policy.backoff * (1 << failures.min(6))).await;
                continue;
            }
        };
        match resp.status().as_u16() {
            200 => {
                // A full body: whatever we had is replaced.
                file.set_len(0).await?;
                file = tokio::fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(dest)
                    .await?;
                have = 0;
                total = resp.content_length();
            }
            206 => {
                let range = resp
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_content_range);
                match range {
                    Some((start, size)) if start == have => total = Some(size),
                    _ => {
                        // Not the piece we asked for: start over.
                        have = 0;
                        file.set_len(0).await?;
                        continue;
                    }
                }
            }
            410 => return Err(FetchError::Gone),
            403 => return Err(FetchError::Forbidden),
            code => {
                failures += 1;
                last_error = format!("the ADS answered {code}");
                tokio::time::sleep(policy.backoff * (1 << failures.min(6))).await;
                continue;
            }
        }
        if etag.is_none() {
            etag = resp
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .map(String::from);
        }
        let cut_at = if policy.interrupts.load(Ordering::Relaxed) > 0 {
            total.map(|t| have + (t - have) / 3)
        } else {
            None
        };
        let mut stream = resp.bytes_stream();
        let mut cut = false;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    last_error = format!("transfer cut: {e}");
                    failures += 1;
                    break;
                }
            };
            file.write_all(&chunk).await?;
            have += chunk.len() as u64;
            stats.bytes += chunk.len() as u64;
            if cut_at.is_some_and(|c| have >= c) && total.is_some_and(|t| have < t) {
                cut = true;
                break;
            }
        }
        file.flush().await?;
        if cut {
            policy.interrupts.fetch_sub(1, Ordering::Relaxed);
            tracing::info!(have, "fault injection: download interrupted");
        }
        if total.is_none() {
            break;
        }
    }
    file.sync_all().await?;
    drop(file);
    if let Some(want) = expected_blake3 {
        let path = dest.to_path_buf();
        let got = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            let mut h = blake3::Hasher::new();
            h.update_reader(std::fs::File::open(path)?)?;
            Ok(h.finalize().to_hex().to_string())
        })
        .await
        .map_err(|_| FetchError::Io(std::io::Error::other("hashing task failed")))??;
        if !got.eq_ignore_ascii_case(want.trim()) {
            let _ = tokio::fs::remove_file(dest).await;
            return Err(FetchError::Validation);
        }
    }
    Ok(stats)
}

/// `bytes a-b/size` → (a, size).
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, size) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    Some((start.parse().ok()?, size.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(parse_content_range("bytes 100-199/1000"), Some((100, 1000)));
        assert_eq!(parse_content_range("bytes */1000"), None);
        assert_eq!(FetchError::Gone.result_code().code(), 1551);
        assert_eq!(FetchError::Validation.result_code().code(), 1407);
        assert_eq!(
            FetchError::Unavailable(String::new()).result_code().code(),
            1501
        );
    }
}
