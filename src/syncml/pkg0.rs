//! Package 0: the general notification that triggers a server-initiated session
//! (`application/vnd.syncml.notification`, OMA-DM-NOTES.md §3). Pure.
//!
//! ```text
//! digest (16, raw MD5) | version 10b | ui-mode 2b | initiator 1b | future 27b | session id 16b
//!                      | server id length 8b | server id | vendor body
//! digest = MD5( B64(MD5(server-id ":" password)) ":" nonce ":" B64(MD5(trigger)) )
//! ```
//! where trigger is everything after the digest.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use md5::{Digest, Md5};

/// MIME type of package 0.
pub const CONTENT_TYPE: &str = "application/vnd.syncml.notification";
/// The version field (DM 1.1 notification format, version × 10); field clients accept 11.
pub const VERSION: u16 = 11;

/// How the device should involve its user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UiMode {
    Unspecified = 0,
    Background = 1,
    Informative = 2,
    UserInteraction = 3,
}

/// Who started the management action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Initiator {
    ClientOrUser = 0,
    Server = 1,
}

/// A decoded notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub version: u16,
    pub ui_mode: UiMode,
    pub initiator: Initiator,
    /// The SessionID the client must use (sent in the session as uppercase hex).
    pub session_id: u16,
    pub server_id: String,
    pub body: Vec<u8>,
}

/// Why a notification was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Pkg0Error {
    #[error("package 0 is truncated ({0} bytes)")]
    Truncated(usize),
    #[error("package 0 server id is not UTF-8")]
    BadServerId,
    #[error("package 0 server id is longer than 255 bytes")]
    ServerIdTooLong,
    #[error("package 0 digest does not verify")]
    BadDigest,
    #[error("package 0 is from server {0}, not the expected one")]
    WrongServer(String),
}

const DIGEST_LEN: usize = 16;
const HEADER_LEN: usize = 8;

fn md5(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// The digest over `trigger` (header + body).
pub fn digest(server_id: &str, password: &str, nonce: &[u8], trigger: &[u8]) -> [u8; 16] {
    let cred = STANDARD.encode(md5(&[server_id.as_bytes(), b":", password.as_bytes()]));
    let trig = STANDARD.encode(md5(&[trigger]));
    md5(&[cred.as_bytes(), b":", nonce, b":", trig.as_bytes()])
}

impl Notification {
    /// A server-initiated, background notification for `session_id`.
    pub fn new(server_id: &str, session_id: u16) -> Self {
        Self {
            version: VERSION,
            ui_mode: UiMode::Background,
            initiator: Initiator::Server,
            session_id,
            server_id: server_id.to_string(),
            body: Vec::new(),
        }
    }

    /// The SessionID as the session must carry it: uppercase hex without leading zeros.
    pub fn session_id_hex(&self) -> String {
        format!("{:X}", self.session_id)
    }

    fn trigger(&self) -> Result<Vec<u8>, Pkg0Error> {
        let id = self.server_id.as_bytes();
        let len = u8::try_from(id.len()).map_err(|_| Pkg0Error::ServerIdTooLong)?;
        let word: u64 = (u64::from(self.version & 0x3ff) << 54)
            | ((self.ui_mode as u64) << 52)
            | ((self.initiator as u64) << 51)
            | (u64::from(self.session_id) << 8)
            | u64::from(len);
        let mut out = Vec::with_capacity(HEADER_LEN + id.len() + self.body.len());
        out.extend_from_slice(&word.to_be_bytes());
        out.extend_from_slice(id);
        out.extend_from_slice(&self.body);
        Ok(out)
    }

    /// Encodes and signs with the server's credentials and the device's current nonce.
    pub fn encode(&self, password: &str, nonce: &[u8]) -> Result<Vec<u8>, Pkg0Error> {
        let trigger = self.trigger()?;
        let d = digest(&self.server_id, password, nonce, &trigger);
        let mut out = Vec::with_capacity(DIGEST_LEN + trigger.len());
        out.extend_from_slice(&d);
        out.extend_from_slice(&trigger);
        Ok(out)
    }
}

/// Parses a notification without checking its digest; returns it with the digest it carried.
pub fn decode(bytes: &[u8]) -> Result<(Notification, [u8; 16]), Pkg0Error> {
    if bytes.len() < DIGEST_LEN + HEADER_LEN {
        return Err(Pkg0Error::Truncated(bytes.len()));
    }
    let mut d = [0u8; DIGEST_LEN];
    d.copy_from_slice(&bytes[..DIGEST_LEN]);
    let mut w = [0u8; HEADER_LEN];
    w.copy_from_slice(&bytes[DIGEST_LEN..DIGEST_LEN + HEADER_LEN]);
    let word = u64::from_be_bytes(w);
    let id_len = (word & 0xff) as usize;
    let id_start = DIGEST_LEN + HEADER_LEN;
    let Some(id) = bytes.get(id_start..id_start + id_len) else {
        return Err(Pkg0Error::Truncated(bytes.len()));
    };
    let server_id = std::str::from_utf8(id)
        .map_err(|_| Pkg0Error::BadServerId)?
        .to_string();
    let ui_mode = match (word >> 52) & 0b11 {
        1 => UiMode::Background,
        2 => UiMode::Informative,
        3 => UiMode::UserInteraction,
        _ => UiMode::Unspecified,
    };
    let initiator = if (word >> 51) & 1 == 1 {
        Initiator::Server
    } else {
        Initiator::ClientOrUser
    };
    Ok((
        Notification {
            version: (word >> 54) as u16,
            ui_mode,
            initiator,
            session_id: ((word >> 8) & 0xffff) as u16,
            server_id,
            body: bytes[id_start + id_len..].to_vec(),
        },
        d,
    ))
}

/// Parses and verifies a notification from `expected_server` with its password, trying each
/// nonce in turn (the stored one, then the reset forms clients fall back to).
pub fn verify(
    bytes: &[u8],
    expected_server: &str,
    password: &str,
    nonces: &[&[u8]],
) -> Result<Notification, Pkg0Error> {
    let (n, d) = decode(bytes)?;
    if n.server_id != expected_server {
        return Err(Pkg0Error::WrongServer(n.server_id));
    }
    let trigger = &bytes[DIGEST_LEN..];
    for nonce in nonces {
        let want = digest(&n.server_id, password, nonce, trigger);
        if crate::secrets::ct_eq(&want, &d) {
            return Ok(n);
        }
    }
    Err(Pkg0Error::BadDigest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_matches_the_notes() {
        let n = Notification::new("dms.example", 0x1A2B);
        let bytes = n.encode("secret", b"nonce").unwrap();
        // version 11 | ui 1 | initiator 1 | session 0x1A2B | len 11
        assert_eq!(
            &bytes[16..24],
            &[0x02, 0xD8, 0x00, 0x00, 0x00, 0x1A, 0x2B, 11]
        );
        assert_eq!(&bytes[24..], b"dms.example");
        assert_eq!(n.session_id_hex(), "1A2B");
        // Digest computed independently with Python's hashlib/base64 (see the module doc formula).
        assert_eq!(
            bytes[..16]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            "a028c8ac353fe93a049e4e320b0d85dd"
        );
    }

    #[test]
    fn verify_accepts_the_right_nonce_and_rejects_tampering() {
        let n = Notification::new("srv", 7);
        let bytes = n.encode("pw", b"abc").unwrap();
        assert_eq!(verify(&bytes, "srv", "pw", &[b"xyz", b"abc"]).unwrap(), n);
        assert_eq!(
            verify(&bytes, "srv", "bad", &[b"abc"]),
            Err(Pkg0Error::BadDigest)
        );
        assert!(matches!(
            verify(&bytes, "other", "pw", &[b"abc"]),
            Err(Pkg0Error::WrongServer(_))
        ));
        let mut t = bytes.clone();
        t[22] ^= 1; // session id
        assert_eq!(
            verify(&t, "srv", "pw", &[b"abc"]),
            Err(Pkg0Error::BadDigest)
        );
        assert!(matches!(decode(&bytes[..20]), Err(Pkg0Error::Truncated(_))));
        assert!(matches!(decode(&bytes[..26]), Err(Pkg0Error::Truncated(_))));
    }

    proptest! {
        #[test]
        fn round_trip(session in any::<u16>(), id in "[a-zA-Z0-9.:/-]{0,60}", body in proptest::collection::vec(any::<u8>(), 0..64), ui in 0u8..4, srv in any::<bool>()) {
            let n = Notification {
                version: VERSION,
                ui_mode: [UiMode::Unspecified, UiMode::Background, UiMode::Informative, UiMode::UserInteraction][ui as usize],
                initiator: if srv { Initiator::Server } else { Initiator::ClientOrUser },
                session_id: session,
                server_id: id.clone(),
                body,
            };
            let bytes = n.encode("pw", b"n").unwrap();
            prop_assert_eq!(verify(&bytes, &id, "pw", &[b"n"]).unwrap(), n);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = decode(&bytes);
        }
    }
}
