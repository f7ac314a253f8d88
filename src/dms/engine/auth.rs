//! Authentication in both directions: the device's credential (MD5 or basic, under the
//! account's user name, with the current, offered or empty nonce), our own credential toward
//! devices that require it (and re-sending when they challenge it), and what lets a message
//! continue a session (its RespURI key, or valid credentials). Refusals count toward the
//! backoff of the address they come from.

use std::net::IpAddr;

use super::session::{hdr_status, Session};
use super::{Engine, EngineError};
use crate::dms::job::{now_ms, Step};
use crate::dms::store::{Device, MAX_OFFERED_NONCES};
use crate::syncml::auth::{self, AuthScheme};
use crate::syncml::codes::StatusCode;
use crate::syncml::message::*;

/// Our side of the account: what goes in the `Cred` of every message we send.
#[derive(Debug, Clone, Default)]
pub(super) struct ServerAuth {
    pub(super) scheme: Option<AuthScheme>,
    pub(super) password: String,
    pub(super) nonce_b64: String,
}

/// A challenge: the scheme to use and, for MD5, the nonce for the next credential (which the
/// device keeps for its next session when it comes with a 212).
pub(super) fn chal(scheme: AuthScheme, nonce_b64: &str) -> Meta {
    Meta {
        type_: scheme.meta_type().map(String::from),
        format: Some("b64".into()),
        next_nonce: (scheme == AuthScheme::Md5).then(|| nonce_b64.to_string()),
        ..Meta::default()
    }
}

/// Whose failed authentications a refusal counts toward: the address it came from, so that
/// messages sent in a device's name from elsewhere never slow the real device down.
pub(super) fn throttle_key(device: &str, peer: Option<IpAddr>) -> String {
    match peer {
        Some(ip) => ip.to_string(),
        None => format!("device:{device}"),
    }
}

impl Engine {
    /// Our credential for the device: the server id and the server password, over the nonce
    /// the device gave us for MD5.
    pub(super) fn server_cred(&self, a: &ServerAuth) -> Option<Cred> {
        let scheme = a.scheme.filter(|s| *s != AuthScheme::None)?;
        let nonce = auth::decode_nonce(&a.nonce_b64);
        let data = auth::credential(scheme, &self.cfg.server_id, &a.password, &nonce)?;
        Some(Cred {
            meta: Meta {
                type_: scheme.meta_type().map(String::from),
                format: Some("b64".into()),
                ..Meta::default()
            },
            data,
        })
    }

    /// Whether a message may continue authenticated session `s`: posted to its RespURI, or
    /// carrying the device's valid credential (clients that ignore RespURI send one in every
    /// message, as the spec allows).
    pub(super) async fn continues(
        &self,
        s: &Session,
        msg: &Message,
        session_key: Option<&str>,
    ) -> Result<bool, EngineError> {
        if session_key.is_some_and(|k| crate::secrets::ct_eq(k.as_bytes(), s.key.as_bytes())) {
            return Ok(true);
        }
        let Some(cred) = &msg.header.cred else {
            return Ok(false);
        };
        let id = s.device.clone();
        let Some(dev) = self.store.run(move |st| st.device(&id)).await? else {
            return Ok(false);
        };
        Ok(self.credential_ok(&dev, cred, &msg.header))
    }

    /// Checks the device's credential. Success stores a fresh nonce for its next credential
    /// (sent in the Chal of our 212); a refusal offers one beside the current (so a stranger
    /// cannot rotate the device's nonce away) and counts toward the backoff of the address
    /// it came from.
    pub(super) async fn authenticate(
        &self,
        s: &mut Session,
        msg: &Message,
    ) -> Result<Status, EngineError> {
        let id = s.device.clone();
        let throttle_key = throttle_key(&s.device, s.peer);
        let Some(dev) = self.store.run(move |st| st.device(&id)).await? else {
            // Probing for device ids counts as a failed attempt too.
            self.auth_throttle.failed(&throttle_key);
            return Ok(hdr_status(&msg.header, StatusCode::Forbidden, None));
        };
        s.server_auth = ServerAuth {
            scheme: Some(dev.server_auth),
            password: dev.server_password.clone(),
            nonce_b64: dev.server_auth_nonce.clone(),
        };
        let (code, ok) = match &msg.header.cred {
            None => (StatusCode::MissingCredentials, false),
            Some(c) if self.credential_ok(&dev, c, &msg.header) => {
                (StatusCode::AuthenticationAccepted, true)
            }
            Some(_) => (StatusCode::InvalidCredentials, false),
        };
        let scheme = if dev.auth == "basic" {
            AuthScheme::Basic
        } else {
            AuthScheme::Md5
        };
        let fresh = auth::encode_nonce(&auth::new_nonce());
        let nonce = fresh.clone();
        let id = dev.id.clone();
        self.store
            .run(move |st| {
                st.update_device(&id, |d| {
                    if ok {
                        d.client_auth_nonce = nonce;
                        d.offered_nonces.clear();
                        d.last_auth_at_ms = Some(now_ms());
                        d.last_session_at_ms = Some(now_ms());
                    } else {
                        d.offered_nonces.push(nonce);
                        let over = d.offered_nonces.len().saturating_sub(MAX_OFFERED_NONCES);
                        d.offered_nonces.drain(..over);
                    }
                })
            })
            .await?;
        s.authenticated = ok;
        if ok {
            self.auth_throttle.succeeded(&throttle_key);
        } else {
            let backoff = self.auth_throttle.failed(&throttle_key);
            tracing::info!(device = %dev.id, status = code.code(), backoff_ms = backoff.map(|d| d.as_millis() as u64), "device authentication failed");
        }
        Ok(hdr_status(&msg.header, code, Some(chal(scheme, &fresh))))
    }

    /// Whether `cred` is the device's: MD5 over the account's user name and password with the
    /// current nonce, one we offered since, or (before the first success) the empty nonce;
    /// basic where the device (or the server) allows it.
    pub(super) fn credential_ok(&self, dev: &Device, cred: &Cred, hdr: &Header) -> bool {
        device_credential_ok(dev, cred, hdr, self.cfg.allow_basic)
    }

    /// The device refused our credentials (401/407 for our header, usually with a `Chal`):
    /// keep its nonce, and send our last commands again, numbered anew, with fresh
    /// credentials. Twice in a row ends the session and fails the jobs those commands were
    /// for, with the device's status: the device record's server password or scheme is wrong.
    pub(super) async fn resend_with_fresh_credentials(
        &self,
        s: &mut Session,
        statuses: Vec<Status>,
        refusal: &Status,
    ) -> Result<(Vec<u8>, bool), EngineError> {
        if let Some(c) = &refusal.chal {
            if let Some(scheme) = AuthScheme::from_meta_type(c.type_.as_deref()) {
                s.server_auth.scheme = Some(scheme);
            }
            if let Some(n) = c.next_nonce.clone() {
                s.server_auth.nonce_b64.clone_from(&n);
                let id = s.device.clone();
                self.store
                    .run(move |st| st.update_device(&id, |d| d.server_auth_nonce = n))
                    .await?;
            }
        }
        s.server_auth_refusals += 1;
        if s.server_auth_refusals > 2 {
            let jobs: std::collections::BTreeSet<String> = s
                .outstanding
                .values()
                .map(|p| p.job().to_string())
                .collect();
            for id in jobs {
                if let Some(mut j) = self.load_job(&id).await? {
                    if j.state.is_final() {
                        continue;
                    }
                    let why = format!(
                        "the device refused the server's credentials (status {}); check the device record's server_password and server_auth",
                        refusal.code
                    );
                    j.record(
                        Step::DeviceRefused,
                        Some(format!("SyncHdr status {}", refusal.code)),
                    );
                    self.finish(&mut j, false, None, Some(why)).await?;
                }
            }
            tracing::warn!(device = %s.device, status = refusal.code, "the device keeps refusing the server's credentials; session ended");
            return Ok((self.compose(s, statuses, Vec::new(), true), false));
        }
        tracing::info!(device = %s.device, status = refusal.code, "the device challenged the server; sending again with fresh credentials");
        let old = std::mem::take(&mut s.outstanding);
        s.next_cmd = statuses.len() as u32 + 1;
        let mut commands = std::mem::take(&mut s.last_commands);
        for c in &mut commands {
            let id = s.cmd_id();
            if let Some(p) = old.get(&c.cmd_id()) {
                s.outstanding.insert(id, p.clone());
            }
            c.set_cmd_id(id);
        }
        let final_ = s.last_final;
        Ok((self.compose(s, statuses, commands, final_), true))
    }
}

fn device_credential_ok(dev: &Device, cred: &Cred, hdr: &Header, allow_basic: bool) -> bool {
    // The account's user name; without one, the device id or the name it gives.
    let users: Vec<&str> = match dev.username.as_deref() {
        Some(u) => vec![u],
        None => std::iter::once(dev.id.as_str())
            .chain(hdr.source.name.as_deref())
            .collect(),
    };
    match AuthScheme::from_meta_type(cred.meta.type_.as_deref()) {
        Some(AuthScheme::Md5) => {
            let mut nonces: Vec<Vec<u8>> = std::iter::once(&dev.client_auth_nonce)
                .chain(&dev.offered_nonces)
                .map(|n| auth::decode_nonce(n))
                .collect();
            if dev.last_auth_at_ms.is_none() {
                nonces.push(Vec::new());
            }
            users.iter().any(|u| {
                nonces
                    .iter()
                    .any(|n| auth::verify_md5(&cred.data, u, &dev.password, n))
            })
        }
        Some(AuthScheme::Basic) if allow_basic || dev.auth == "basic" => {
            auth::basic_user(&cred.data).is_some_and(|presented| {
                users.contains(&presented.as_str())
                    && auth::verify_basic(&cred.data, &presented, &dev.password)
            })
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn md5(user: &str, password: &str, nonce: &[u8]) -> Cred {
        Cred {
            meta: Meta {
                type_: Some(auth::AUTH_MD5.into()),
                ..Meta::default()
            },
            data: auth::md5_digest(user, password, nonce),
        }
    }

    fn device() -> Device {
        Device {
            id: "IMEI:1".into(),
            password: "pw".into(),
            auth: "md5".into(),
            client_auth_nonce: auth::encode_nonce(b"current"),
            offered_nonces: vec![auth::encode_nonce(b"offered")],
            ..Device::default()
        }
    }

    #[test]
    fn md5_with_the_current_an_offered_or_before_the_first_success_the_empty_nonce() {
        let hdr = Header::default();
        let mut d = device();
        for nonce in [&b"current"[..], b"offered", b""] {
            assert!(device_credential_ok(
                &d,
                &md5("IMEI:1", "pw", nonce),
                &hdr,
                false
            ));
        }
        assert!(!device_credential_ok(
            &d,
            &md5("IMEI:1", "pw", b"other"),
            &hdr,
            false
        ));
        assert!(!device_credential_ok(
            &d,
            &md5("IMEI:1", "bad", b"current"),
            &hdr,
            false
        ));
        d.last_auth_at_ms = Some(1);
        assert!(!device_credential_ok(
            &d,
            &md5("IMEI:1", "pw", b""),
            &hdr,
            false
        ));
    }

    #[test]
    fn the_account_name_decides_whose_credential_it_is() {
        let mut hdr = Header::default();
        let mut d = device();
        d.username = Some("funky-login".into());
        assert!(device_credential_ok(
            &d,
            &md5("funky-login", "pw", b"current"),
            &hdr,
            false
        ));
        assert!(!device_credential_ok(
            &d,
            &md5("IMEI:1", "pw", b"current"),
            &hdr,
            false
        ));
        // Without a user name: the id, or the name the device gives in LocName.
        d.username = None;
        hdr.source.name = Some("alias".into());
        assert!(device_credential_ok(
            &d,
            &md5("alias", "pw", b"current"),
            &hdr,
            false
        ));
        // Basic only where allowed.
        let basic = Cred {
            meta: Meta {
                type_: Some(auth::AUTH_BASIC.into()),
                ..Meta::default()
            },
            data: auth::basic("IMEI:1", "pw"),
        };
        assert!(!device_credential_ok(&d, &basic, &hdr, false));
        assert!(device_credential_ok(&d, &basic, &hdr, true));
    }

    #[test]
    fn challenges_and_throttle_keys() {
        let c = chal(AuthScheme::Md5, "bm9uY2U=");
        assert_eq!(c.type_.as_deref(), Some(auth::AUTH_MD5));
        assert_eq!(c.next_nonce.as_deref(), Some("bm9uY2U="));
        assert_eq!(chal(AuthScheme::Basic, "x").next_nonce, None);
        assert_eq!(
            throttle_key("d", Some("10.0.0.7".parse().unwrap())),
            "10.0.0.7"
        );
        assert_eq!(throttle_key("d", None), "device:d");
    }
}
