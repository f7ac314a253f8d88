//! Secrets generated at first start into the data directory: written once with mode 0600,
//! read back on later starts, never logged.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Failure to read or create a secret file.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} does not hold a valid secret: {why}")]
    Invalid { path: PathBuf, why: &'static str },
}

fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SecretError> {
    let err = |source| SecretError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    // Write to a temporary name and rename, so a crash never leaves a half-written secret.
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

/// Writes a private file (mode 0600).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SecretError> {
    write_with_mode(path, bytes, 0o600)
}

/// Writes a public file (mode 0644), e.g. a certificate.
pub fn write_public(path: &Path, bytes: &[u8]) -> Result<(), SecretError> {
    write_with_mode(path, bytes, 0o644)
}

/// Returns the text secret stored at `path`, generating it with `make` on first start.
/// The boolean is true when it was generated now (so the caller may print it once).
pub fn load_or_create(
    path: &Path,
    make: impl FnOnce() -> String,
) -> Result<(String, bool), SecretError> {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let s = s.trim().to_string();
            if s.is_empty() {
                return Err(SecretError::Invalid {
                    path: path.to_path_buf(),
                    why: "the file is empty",
                });
            }
            Ok((s, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let s = make();
            write_private(path, format!("{s}\n").as_bytes())?;
            Ok((s, true))
        }
        Err(source) => Err(SecretError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// 32 random bytes as lower-case hex.
pub fn random_hex32() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 64 hex digits into 32 bytes.
pub fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim().as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Whether an `Authorization` header value is `Bearer <token>` with exactly `token`
/// (constant-time). The one check behind every bearer-protected API.
pub fn bearer_matches(authorization: Option<&str>, token: &str) -> bool {
    authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| ct_eq(t.trim().as_bytes(), token.as_bytes()))
}

/// Compares two secrets in constant time (for equal lengths).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    bool::from(subtle::ConstantTimeEq::ct_eq(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_once_with_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/admin.token");
        let (a, fresh) = load_or_create(&p, random_hex32).unwrap();
        assert!(fresh);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (b, fresh) = load_or_create(&p, random_hex32).unwrap();
        assert!(!fresh);
        assert_eq!(a, b);
        assert_eq!(parse_hex32(&a).map(|_| ()), Some(()));
    }
}
