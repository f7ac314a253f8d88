//! The ADS's component ingest: an upload received and hashed by `crate::content`, then
//! published into the content-addressed store (`objects/<2 hex>/<64 hex>`) by
//! [`Store::publish`]; the same bytes again are the same object.

use bytes::Bytes;
use futures_util::Stream;

use super::store::{ComponentMeta, Store, StoreError};
use crate::content::{receive, sanitize_filename, valid_label, ReceiveError, UploadLimits};

/// Why an upload was not published.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("query parameter `{0}` is required and must be 1-200 printable characters")]
    BadParameter(&'static str),
    #[error(transparent)]
    Receive(#[from] ReceiveError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the uploader says about the component.
#[derive(Clone, Debug)]
pub struct UploadInfo {
    pub name: String,
    pub version: String,
    pub filename: Option<String>,
    pub declared_len: Option<u64>,
}

/// Streams `body` into the store and publishes it. Returns the metadata and whether the
/// component is new (false: the same bytes were already published; no second copy is kept).
pub async fn ingest<S, E>(
    store: &Store,
    info: UploadInfo,
    limits: UploadLimits,
    now_unix: u64,
    body: S,
) -> Result<(ComponentMeta, bool), IngestError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    if !valid_label(&info.name) {
        return Err(IngestError::BadParameter("name"));
    }
    if !valid_label(&info.version) {
        return Err(IngestError::BadParameter("version"));
    }
    let received = receive(store.tmp_dir(), info.declared_len, limits, body).await?;
    let id = received.blake3.to_hex().to_string();
    let sha256 = received.sha256_hex();
    let received_len = received.size;
    let mut guard = received.temp;
    let temp_path = guard.path().map(|p| p.to_path_buf()).unwrap_or_default();

    let filename = sanitize_filename(
        info.filename
            .as_deref()
            .unwrap_or(&format!("{}-{}.bin", info.name, info.version)),
    );
    let meta = ComponentMeta {
        blake3: id.clone(),
        id,
        name: info.name,
        version: info.version,
        filename,
        size: received_len,
        sha256,
        created_at: now_unix,
    };
    let temp_for_publish = temp_path.clone();
    let result = store
        .run(move |s| s.publish(&temp_for_publish, meta))
        .await?;
    // Published (renamed away) or discarded as a duplicate: nothing left to clean up.
    guard.disarm();
    Ok(result)
}
