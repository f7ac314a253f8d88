//! Streamed, hash-verified receipt of uploaded components, shared by the ADS (its component
//! store, `ads::content`) and the DMS (its catalog).
//!
//! The body goes to a temp file while BLAKE3 and SHA-256 are computed over the same buffers;
//! only a complete body of the declared length is fsynced and handed back, for the caller to
//! rename into place. Anything else (client gone mid-way, over the size limit, wrong
//! `Content-Length`, disk full) removes the temp file, so nothing partial is ever published.
//! Memory per upload is one write buffer, whatever the component size.

use std::io::Write;
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use sha2::Digest;

/// Writes to disk in blocks of this size (hashing happens on the same blocks, off the runtime).
const WRITE_BLOCK: usize = 1 << 20;

/// Why an upload was not received.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("the component is larger than the {limit}-byte upload limit")]
    TooLarge { limit: u64 },
    #[error("Content-Length said {declared} bytes but the body had {received}")]
    LengthMismatch { declared: u64, received: u64 },
    #[error("the upload was cut off after {received} bytes: {reason}")]
    Incomplete { received: u64, reason: String },
    #[error(
        "the data disk is full (or down to its keep_free_bytes reserve); nothing was published"
    )]
    DiskFull,
    #[error("writing the upload failed: {0}")]
    Io(std::io::Error),
    #[error("the blocking pool went away while writing the upload")]
    WorkerGone,
}

/// A temp file removed on drop unless persisted (on error, or if the request future is
/// dropped because the client went away).
pub struct TempFile(Option<PathBuf>);

impl TempFile {
    pub fn path(&self) -> Option<&std::path::Path> {
        self.0.as_deref()
    }

    /// Moves the file to `dest` (same file system) and makes the rename durable.
    pub fn persist(mut self, dest: &std::path::Path) -> std::io::Result<()> {
        let Some(src) = self.0.take() else {
            return Ok(());
        };
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if let Err(e) = std::fs::rename(&src, dest) {
            self.0 = Some(src);
            return Err(e);
        }
        if let Some(dir) = dest.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Stops the guard from deleting the file (someone else took it over).
    pub fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A fully received, fsynced body in a temp file, with its digests.
pub struct Received {
    pub temp: TempFile,
    pub size: u64,
    pub blake3: blake3::Hash,
    pub sha256: [u8; 32],
}

impl Received {
    pub fn sha256_hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Checks a name or version: non-empty, at most 200 characters, no control characters.
pub fn valid_label(s: &str) -> bool {
    !s.is_empty() && s.chars().count() <= 200 && !s.chars().any(char::is_control)
}

/// Makes a safe file name for `Content-Disposition`: ASCII letters, digits and `._-+` only,
/// never starting with a dot, at most 100 characters.
pub fn sanitize_filename(raw: &str) -> String {
    let mut out: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    while out.starts_with('.') {
        out.replace_range(..1, "_");
    }
    if out.is_empty() {
        out.push_str("component.bin");
    }
    out
}

fn io_error(e: std::io::Error) -> ReceiveError {
    if e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28) {
        ReceiveError::DiskFull
    } else {
        ReceiveError::Io(e)
    }
}

struct Writer {
    file: std::fs::File,
    blake3: blake3::Hasher,
    sha256: sha2::Sha256,
}

impl Writer {
    fn write_block(&mut self, block: &[u8]) -> std::io::Result<()> {
        self.file.write_all(block)?;
        self.blake3.update(block);
        self.sha256.update(block);
        Ok(())
    }
}

/// The free space an upload leaves by default (ADS `keep_free_bytes`, and the DMS catalog).
pub const DEFAULT_KEEP_FREE_BYTES: u64 = 64 << 20;

/// How much an upload may take.
#[derive(Clone, Copy, Debug)]
pub struct UploadLimits {
    /// Largest accepted body.
    pub max_bytes: u64,
    /// Free space the upload must leave on the data file system (for SQLite, logs and the
    /// uploads already running): below it the upload stops with [`ReceiveError::DiskFull`]
    /// before the kernel's ENOSPC would.
    pub keep_free_bytes: u64,
}

/// Bytes available to us on the file system holding `dir`; `None` if it cannot be asked.
fn available_bytes(dir: &std::path::Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Whether writing `more` bytes into `dir` would eat into the reserve.
fn would_break_reserve(dir: &std::path::Path, more: u64, keep_free: u64) -> bool {
    keep_free > 0
        && available_bytes(dir).is_some_and(|avail| avail < more.saturating_add(keep_free))
}

/// Streams `body` into a temp file under `tmp_dir`, hashing as it goes, enforcing the size
/// limit, the free-space reserve and the declared length; fsyncs it. The temp file is removed
/// again unless persisted.
pub async fn receive<S, E>(
    tmp_dir: &std::path::Path,
    declared_len: Option<u64>,
    limits: UploadLimits,
    body: S,
) -> Result<Received, ReceiveError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let max_bytes = limits.max_bytes;
    if let Some(declared) = declared_len {
        if declared > max_bytes {
            return Err(ReceiveError::TooLarge { limit: max_bytes });
        }
    }
    if would_break_reserve(tmp_dir, declared_len.unwrap_or(0), limits.keep_free_bytes) {
        return Err(ReceiveError::DiskFull);
    }
    let temp_path = tmp_dir.join(format!("upload-{:032x}", rand::random::<u128>()));
    let guard = TempFile(Some(temp_path.clone()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp_path)
        .map_err(io_error)?;
    let mut writer = Some(Writer {
        file,
        blake3: blake3::Hasher::new(),
        sha256: sha2::Sha256::new(),
    });
    let mut buf = BytesMut::with_capacity(WRITE_BLOCK);
    let mut received: u64 = 0;
    let mut body = body;

    loop {
        let next = body.next().await;
        let done = match next {
            Some(Ok(chunk)) => {
                received += chunk.len() as u64;
                if received > max_bytes {
                    return Err(ReceiveError::TooLarge { limit: max_bytes });
                }
                if let Some(declared) = declared_len {
                    if received > declared {
                        return Err(ReceiveError::LengthMismatch { declared, received });
                    }
                }
                buf.extend_from_slice(&chunk);
                false
            }
            Some(Err(e)) => {
                return Err(ReceiveError::Incomplete {
                    received,
                    reason: e.to_string(),
                })
            }
            None => true,
        };
        if buf.len() >= WRITE_BLOCK || (done && !buf.is_empty()) {
            let block = buf.split().freeze();
            if would_break_reserve(tmp_dir, block.len() as u64, limits.keep_free_bytes) {
                return Err(ReceiveError::DiskFull);
            }
            let mut w = writer.take().ok_or(ReceiveError::WorkerGone)?;
            let (w, res) = tokio::task::spawn_blocking(move || {
                let r = w.write_block(&block);
                (w, r)
            })
            .await
            .map_err(|_| ReceiveError::WorkerGone)?;
            res.map_err(io_error)?;
            writer = Some(w);
            buf.reserve(WRITE_BLOCK);
        }
        if done {
            break;
        }
    }
    if let Some(declared) = declared_len {
        if received != declared {
            return Err(ReceiveError::LengthMismatch { declared, received });
        }
    }
    let w = writer.take().ok_or(ReceiveError::WorkerGone)?;
    let (file, blake3, sha256) = (w.file, w.blake3.finalize(), w.sha256.finalize());
    tokio::task::spawn_blocking(move || file.sync_all())
        .await
        .map_err(|_| ReceiveError::WorkerGone)?
        .map_err(io_error)?;
    Ok(Received {
        temp: guard,
        size: received,
        blake3,
        sha256: sha256.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_are_sanitized() {
        assert_eq!(sanitize_filename("../../etc/passwd"), "_._.._etc_passwd");
        assert_eq!(sanitize_filename("fw \"v1\".bin"), "fw__v1_.bin");
        assert_eq!(sanitize_filename(""), "component.bin");
        assert_eq!(sanitize_filename(".hidden"), "_hidden");
        assert_eq!(sanitize_filename("a\r\nb"), "a__b");
    }
}
