//! SyncML DM credentials (OMA-DM-NOTES.md §4): `syncml:auth-basic` and `syncml:auth-md5`, in
//! both directions (the same formulas authenticate a client to a server and a server to a
//! client), and nonces. Pure apart from the random nonce generator.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use md5::{Digest, Md5};

/// `Meta/Type` of basic credentials.
pub const AUTH_BASIC: &str = "syncml:auth-basic";
/// `Meta/Type` of MD5 digest credentials.
pub const AUTH_MD5: &str = "syncml:auth-md5";

/// How one side of a DM account authenticates (the account's `AAuthType`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthScheme {
    /// No credentials.
    None,
    /// `syncml:auth-basic`.
    Basic,
    /// `syncml:auth-md5`.
    #[default]
    Md5,
}

impl AuthScheme {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "none" => AuthScheme::None,
            "basic" => AuthScheme::Basic,
            "md5" => AuthScheme::Md5,
            _ => return None,
        })
    }

    /// The `Meta/Type` of its credentials and challenges.
    pub fn meta_type(self) -> Option<&'static str> {
        match self {
            AuthScheme::None => None,
            AuthScheme::Basic => Some(AUTH_BASIC),
            AuthScheme::Md5 => Some(AUTH_MD5),
        }
    }

    /// From a credential's or challenge's `Meta/Type` (basic when absent, as the spec says).
    pub fn from_meta_type(t: Option<&str>) -> Option<Self> {
        match t.map(str::trim) {
            None | Some(AUTH_BASIC) => Some(AuthScheme::Basic),
            Some(AUTH_MD5) => Some(AuthScheme::Md5),
            Some(_) => None,
        }
    }
}

/// The credential `user` presents with `password` under `scheme` (`None` for
/// [`AuthScheme::None`]): basic over the user and password, MD5 over those and `nonce`.
pub fn credential(scheme: AuthScheme, user: &str, password: &str, nonce: &[u8]) -> Option<String> {
    match scheme {
        AuthScheme::None => None,
        AuthScheme::Basic => Some(basic(user, password)),
        AuthScheme::Md5 => Some(md5_digest(user, password, nonce)),
    }
}

fn md5(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// `B64(user ":" password)`.
pub fn basic(user: &str, password: &str) -> String {
    STANDARD.encode(format!("{user}:{password}"))
}

/// `B64(H(B64(H(user ":" password)) ":" nonce))` with H = MD5; `nonce` is the raw nonce (the
/// bytes the peer's `NextNonce` decodes to).
pub fn md5_digest(user: &str, password: &str, nonce: &[u8]) -> String {
    let inner = STANDARD.encode(md5(&[user.as_bytes(), b":", password.as_bytes()]));
    STANDARD.encode(md5(&[inner.as_bytes(), b":", nonce]))
}

/// Checks basic credentials in constant time.
pub fn verify_basic(cred_data: &str, user: &str, password: &str) -> bool {
    crate::secrets::ct_eq(
        cred_data.trim().as_bytes(),
        basic(user, password).as_bytes(),
    )
}

/// Checks MD5 digest credentials in constant time.
pub fn verify_md5(cred_data: &str, user: &str, password: &str, nonce: &[u8]) -> bool {
    crate::secrets::ct_eq(
        cred_data.trim().as_bytes(),
        md5_digest(user, password, nonce).as_bytes(),
    )
}

/// The user name inside basic credentials (to find the account before checking). DM user
/// names are often device ids with colons (`IMEI:…`), so the split is at the last colon.
pub fn basic_user(cred_data: &str) -> Option<String> {
    let raw = STANDARD.decode(cred_data.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    text.rsplit_once(':').map(|(u, _)| u.to_string())
}

/// A fresh 16-byte nonce.
pub fn new_nonce() -> Vec<u8> {
    rand::random::<[u8; 16]>().to_vec()
}

/// A nonce as sent in `NextNonce` (Format b64).
pub fn encode_nonce(nonce: &[u8]) -> String {
    STANDARD.encode(nonce)
}

/// A received `NextNonce` (Format b64) back to raw bytes; a value that is not base64 is used
/// as its own bytes, as some clients send plain text nonces.
pub fn decode_nonce(next_nonce: &str) -> Vec<u8> {
    STANDARD
        .decode(next_nonce.trim())
        .unwrap_or_else(|_| next_nonce.trim().as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values computed independently with Python's hashlib/base64:
    /// `b64(md5(b64(md5(b"user:pass")) + b":" + nonce))`.
    #[test]
    fn md5_digest_matches_independent_values() {
        assert_eq!(
            md5_digest("IMEI:356938035643809", "devpass", b"0123456789abcdef"),
            "4wwDLhHUtM0DNucJ3/D1UQ=="
        );
        assert_eq!(
            md5_digest("dms", "srvpass", &[0, 0, 0, 0]),
            "0qx/TNzhgNQJMmK6Pk18Cw=="
        );
        assert_eq!(basic("user", "pass"), "dXNlcjpwYXNz");
    }

    #[test]
    fn verification() {
        let n = new_nonce();
        let d = md5_digest("u", "p", &n);
        assert!(verify_md5(&d, "u", "p", &n));
        assert!(!verify_md5(&d, "u", "q", &n));
        assert!(!verify_md5(&d, "u", "p", b"other"));
        assert!(verify_basic(&basic("u", "p"), "u", "p"));
        assert!(!verify_basic(&basic("u", "p"), "u", "x"));
        assert_eq!(basic_user(&basic("IMEI:1", "pw")), Some("IMEI:1".into()));
        assert_eq!(decode_nonce(&encode_nonce(&n)), n);
    }
}
