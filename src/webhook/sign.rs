//! Standard Webhooks 1.0 signing and verification. Pure.
//!
//! A secret is `whsec_<base64 key>`; the signed content is `"{id}.{timestamp}.{body}"`; the
//! signature header holds `v1,<base64 HMAC-SHA256>` once per active secret, space-separated,
//! so receivers keep verifying through a secret rotation.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Problems with a secret or a signature.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error("a webhook secret must look like whsec_<base64> with a key of at least 16 bytes")]
    BadSecret,
    #[error("no webhook signature matches")]
    NoMatch,
    #[error("the webhook timestamp is outside the tolerance window")]
    Stale,
}

/// One or more signing keys; the first is current, the rest are being rotated out (or in).
#[derive(Clone)]
pub struct Signer {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} keys, <redacted>)", self.keys.len())
    }
}

/// Decodes one `whsec_…` secret into its key bytes.
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, SignError> {
    let b64 = secret
        .trim()
        .strip_prefix("whsec_")
        .ok_or(SignError::BadSecret)?;
    let key = STANDARD.decode(b64).map_err(|_| SignError::BadSecret)?;
    if key.len() < 16 {
        return Err(SignError::BadSecret);
    }
    Ok(key)
}

/// A new random secret in `whsec_` form.
pub fn generate_secret() -> String {
    let key: [u8; 32] = rand::random();
    format!("whsec_{}", STANDARD.encode(key))
}

impl Signer {
    /// From a space- or comma-separated list of `whsec_` secrets.
    pub fn from_secrets(secrets: &str) -> Result<Self, SignError> {
        let keys = secrets
            .split([' ', ','])
            .filter(|s| !s.is_empty())
            .map(decode_secret)
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(SignError::BadSecret);
        }
        Ok(Self { keys })
    }

    /// The `webhook-signature` header value for this message.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        self.keys
            .iter()
            .map(|k| format!("v1,{}", STANDARD.encode(mac(k, id, timestamp, body))))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Verifies a received message: some `v1` signature must match one of our keys (constant
    /// time) and the timestamp must be within `tolerance_secs` of `now`.
    pub fn verify(
        &self,
        id: &str,
        timestamp: u64,
        body: &[u8],
        signature_header: &str,
        now: u64,
        tolerance_secs: u64,
    ) -> Result<(), SignError> {
        if now.abs_diff(timestamp) > tolerance_secs {
            return Err(SignError::Stale);
        }
        for sig in signature_header.split(' ') {
            let Some(b64) = sig.strip_prefix("v1,") else {
                continue;
            };
            let Ok(given) = STANDARD.decode(b64) else {
                continue;
            };
            for k in &self.keys {
                let expected = mac(k, id, timestamp, body);
                if crate::secrets::ct_eq(&expected, &given) {
                    return Ok(());
                }
            }
        }
        Err(SignError::NoMatch)
    }
}

fn mac(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut m = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    m.update(id.as_bytes());
    m.update(b".");
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from the Standard Webhooks specification's test vectors.
    #[test]
    fn matches_the_reference_vector() {
        let signer = Signer::from_secrets("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = signer.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn rotation_signs_with_every_key_and_verifies_with_any() {
        let a = generate_secret();
        let b = generate_secret();
        let both = Signer::from_secrets(&format!("{a} {b}")).unwrap();
        let sig = both.sign("id", 100, b"body");
        assert_eq!(sig.split(' ').count(), 2);
        for one in [&a, &b] {
            let s = Signer::from_secrets(one).unwrap();
            assert_eq!(s.verify("id", 100, b"body", &sig, 100, 300), Ok(()));
            assert_eq!(
                s.verify("id", 100, b"bodx", &sig, 100, 300),
                Err(SignError::NoMatch)
            );
            assert_eq!(
                s.verify("id", 100, b"body", &sig, 1000, 300),
                Err(SignError::Stale)
            );
        }
        assert!(Signer::from_secrets("nope").is_err());
        assert!(Signer::from_secrets("whsec_!!").is_err());
    }
}
