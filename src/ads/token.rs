//! Self-authenticating download tokens: the part of a minted URL after `/d/`.
//!
//! A token names a ticket and says until when it may be started, sealed with a keyed BLAKE3 MAC
//! under one of the node's keys. Verifying it needs no storage access, so a forged, truncated
//! or expired URL is turned away before the node spends anything on it. Pure: no I/O, no clock
//! (the caller passes "now").
//!
//! Layout (38 bytes, base64url without padding = 51 characters):
//!
//! ```text
//! version(1) | key id(1) | ticket id(16) | expires unix secs (4, big endian) | MAC(16)
//! ```
//!
//! The MAC is the first 16 bytes of `BLAKE3-keyed(key, version..expires)`; 128 bits are far
//! beyond any online forgery budget and keep the URL short (constrained clients store it).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// Token format version; bump when the layout changes.
const VERSION: u8 = 1;
const ID_LEN: usize = 16;
const MAC_LEN: usize = 16;
const BODY_LEN: usize = 1 + 1 + ID_LEN + 4;
/// Raw token length in bytes.
pub const TOKEN_LEN: usize = BODY_LEN + MAC_LEN;
/// Encoded token length in characters.
pub const ENCODED_LEN: usize = (TOKEN_LEN * 4).div_ceil(3);

/// A 128-bit random ticket id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TicketId(pub [u8; ID_LEN]);

impl TicketId {
    /// A fresh random ticket id.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// Lower-case hex, as used in the admin API and storage.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(ID_LEN * 2);
        for b in self.0 {
            s.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
            s.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
        }
        s
    }

    /// Parses the hex form; `None` unless exactly 32 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = s.as_bytes();
        if bytes.len() != ID_LEN * 2 {
            return None;
        }
        let mut out = [0u8; ID_LEN];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(Self(out))
    }
}

/// What a valid token says.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Claims {
    pub ticket: TicketId,
    /// Unix seconds after which the ticket may no longer be started.
    pub expires_at: u32,
    pub key_id: u8,
}

/// Why a token was refused. Deliberately coarse: the client learns nothing useful for forging.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the download token is malformed")]
    Malformed,
    #[error("the download token's signature does not verify")]
    BadSignature,
    #[error("the download URL expired")]
    Expired(Claims),
}

/// The node's MAC keys: one current key used for minting, plus older ones that still verify.
#[derive(Clone)]
pub struct Keyring {
    current: u8,
    keys: Vec<(u8, [u8; 32])>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Keyring")
            .field("current", &self.current)
            .field(
                "key_ids",
                &self.keys.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Keyring {
    /// A keyring with a single key, used for minting and verifying.
    pub fn single(key_id: u8, key: [u8; 32]) -> Self {
        Self {
            current: key_id,
            keys: vec![(key_id, key)],
        }
    }

    /// A keyring from `(id, key)` pairs: the first signs, all verify. `None` if empty.
    pub fn rotating(keys: Vec<(u8, [u8; 32])>) -> Option<Self> {
        let current = keys.first()?.0;
        Some(Self { current, keys })
    }

    fn key(&self, id: u8) -> Option<&[u8; 32]> {
        self.keys.iter().find(|(k, _)| *k == id).map(|(_, key)| key)
    }

    /// Seals a token for `ticket`, valid for starting until `expires_at`.
    pub fn mint(&self, ticket: TicketId, expires_at: u32) -> String {
        let mut raw = [0u8; TOKEN_LEN];
        raw[0] = VERSION;
        raw[1] = self.current;
        raw[2..2 + ID_LEN].copy_from_slice(&ticket.0);
        raw[2 + ID_LEN..BODY_LEN].copy_from_slice(&expires_at.to_be_bytes());
        let key = self.key(self.current).copied().unwrap_or([0; 32]);
        let mac = mac(&key, &raw[..BODY_LEN]);
        raw[BODY_LEN..].copy_from_slice(&mac);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Checks a token's shape, MAC and expiry. Constant-time in the MAC comparison.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Claims, TokenError> {
        if token.len() != ENCODED_LEN {
            return Err(TokenError::Malformed);
        }
        let mut raw = [0u8; TOKEN_LEN + 2];
        let n = URL_SAFE_NO_PAD
            .decode_slice(token.as_bytes(), &mut raw)
            .map_err(|_| TokenError::Malformed)?;
        if n != TOKEN_LEN || raw[0] != VERSION {
            return Err(TokenError::Malformed);
        }
        let key_id = raw[1];
        let key = self.key(key_id).ok_or(TokenError::BadSignature)?;
        let expected = mac(key, &raw[..BODY_LEN]);
        let given = &raw[BODY_LEN..TOKEN_LEN];
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], given)) {
            return Err(TokenError::BadSignature);
        }
        let mut ticket = [0u8; ID_LEN];
        ticket.copy_from_slice(&raw[2..2 + ID_LEN]);
        let mut exp = [0u8; 4];
        exp.copy_from_slice(&raw[2 + ID_LEN..BODY_LEN]);
        let claims = Claims {
            ticket: TicketId(ticket),
            expires_at: u32::from_be_bytes(exp),
            key_id,
        };
        if now_unix > u64::from(claims.expires_at) {
            return Err(TokenError::Expired(claims));
        }
        Ok(claims)
    }
}

fn mac(key: &[u8; 32], body: &[u8]) -> [u8; MAC_LEN] {
    let full = blake3::keyed_hash(key, body);
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&full.as_bytes()[..MAC_LEN]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::single(1, [7u8; 32])
    }

    #[test]
    fn round_trip() {
        let id = TicketId::random();
        let tok = ring().mint(id, 1000);
        assert_eq!(tok.len(), ENCODED_LEN);
        let c = ring().verify(&tok, 999).unwrap();
        assert_eq!(c.ticket, id);
        assert_eq!(c.expires_at, 1000);
    }

    #[test]
    fn expired_is_reported_with_claims() {
        let tok = ring().mint(TicketId([1; 16]), 1000);
        assert!(matches!(
            ring().verify(&tok, 1001),
            Err(TokenError::Expired(_))
        ));
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let tok = ring().mint(TicketId([9; 16]), 5000);
        let raw = URL_SAFE_NO_PAD.decode(&tok).unwrap();
        for i in 0..raw.len() * 8 {
            let mut bad = raw.clone();
            bad[i / 8] ^= 1 << (i % 8);
            let enc = URL_SAFE_NO_PAD.encode(&bad);
            assert!(ring().verify(&enc, 0).is_err(), "bit {i} flip accepted");
        }
    }

    #[test]
    fn other_key_and_garbage_rejected() {
        let tok = ring().mint(TicketId([9; 16]), 5000);
        let other = Keyring::single(1, [8u8; 32]);
        assert_eq!(other.verify(&tok, 0), Err(TokenError::BadSignature));
        assert_eq!(ring().verify("", 0), Err(TokenError::Malformed));
        assert_eq!(ring().verify(&tok[..50], 0), Err(TokenError::Malformed));
        assert_eq!(
            ring().verify(&"!".repeat(51), 0),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            ring().verify("ééééééééééééééééééééééééé", 0),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn rotation_old_keys_verify_until_retired() {
        let old = Keyring::single(1, [1; 32]);
        let tok = old.mint(TicketId([5; 16]), 100);
        let rotated = Keyring::rotating(vec![(2, [2; 32]), (1, [1; 32])]).unwrap();
        assert!(rotated.verify(&tok, 0).is_ok(), "old URLs still verify");
        let new_tok = rotated.mint(TicketId([6; 16]), 100);
        assert_eq!(
            rotated.verify(&new_tok, 0).unwrap().key_id,
            2,
            "new URLs use the new key"
        );
        let retired = Keyring::rotating(vec![(2, [2; 32])]).unwrap();
        assert_eq!(retired.verify(&tok, 0), Err(TokenError::BadSignature));
        assert!(retired.verify(&new_tok, 0).is_ok());
        assert!(Keyring::rotating(Vec::new()).is_none());
    }

    #[test]
    fn hex_round_trip() {
        let id = TicketId::random();
        assert_eq!(TicketId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(TicketId::from_hex("zz"), None);
        assert_eq!(TicketId::from_hex(&"g".repeat(32)), None);
    }
}
