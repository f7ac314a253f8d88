//! A published component as the download plane sees it: immutable, with every per-object
//! response header computed once when it enters the ticket cache, so a request only clones
//! reference-counted header values.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use base64::Engine;
use http::HeaderValue;

use super::store::ComponentMeta;

/// Everything the hot path needs about one component.
#[derive(Debug)]
pub struct ServedObject {
    pub id: String,
    pub blake3: [u8; 32],
    pub size: u64,
    pub path: PathBuf,
    pub last_modified: SystemTime,
    pub etag: HeaderValue,
    pub last_modified_header: HeaderValue,
    pub repr_digest: HeaderValue,
    pub blake3_header: HeaderValue,
    pub content_disposition: HeaderValue,
    pub content_length: HeaderValue,
}

/// A stored component whose metadata does not make valid header values.
#[derive(Debug, thiserror::Error)]
#[error("component {0} has corrupt metadata: {1}")]
pub struct CorruptMeta(pub String, pub &'static str);

fn hex32(s: &str) -> Option<[u8; 32]> {
    crate::secrets::parse_hex32(s)
}

fn header(s: String, id: &str, what: &'static str) -> Result<HeaderValue, CorruptMeta> {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(s)).map_err(|_| CorruptMeta(id.into(), what))
}

impl ServedObject {
    pub fn new(meta: &ComponentMeta, path: PathBuf) -> Result<Self, CorruptMeta> {
        let id = meta.id.as_str();
        let blake3 = hex32(&meta.blake3).ok_or(CorruptMeta(id.into(), "blake3"))?;
        let sha256 = hex32(&meta.sha256).ok_or(CorruptMeta(id.into(), "sha256"))?;
        let last_modified = SystemTime::UNIX_EPOCH + Duration::from_secs(meta.created_at);
        let sha_b64 = base64::engine::general_purpose::STANDARD.encode(sha256);
        Ok(Self {
            id: meta.id.clone(),
            blake3,
            size: meta.size,
            path,
            last_modified,
            etag: header(format!("\"{}\"", meta.blake3), id, "etag")?,
            last_modified_header: header(httpdate::fmt_http_date(last_modified), id, "date")?,
            // RFC 9530: the digest of the whole representation, whatever part is sent.
            repr_digest: header(format!("sha-256=:{sha_b64}:"), id, "digest")?,
            blake3_header: header(meta.blake3.clone(), id, "blake3")?,
            content_disposition: header(
                format!("attachment; filename=\"{}\"", meta.filename),
                id,
                "filename",
            )?,
            content_length: HeaderValue::from(meta.size),
        })
    }
}
