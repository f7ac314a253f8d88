//! Where callbacks may go: the node's `callback_allow_hosts`, checked when a ticket is minted
//! and again when each callback is sent (the list may have changed since, and a name may now
//! resolve elsewhere). At send time the receiver's name is resolved, and an address no one
//! lists explicitly that is link-local (cloud metadata services live there), unspecified or
//! multicast is refused: a signed POST must not be steered into the node's own network.

use std::net::IpAddr;

/// The allowed callback hosts (`*` allows any name).
#[derive(Clone, Debug, Default)]
pub struct AllowList {
    hosts: Vec<String>,
}

/// Why a callback URL may not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NotAllowed {
    #[error("callback_url is not a URL: {0}")]
    NotAUrl(String),
    #[error("callback_url must be http:// or https://")]
    Scheme,
    #[error("callback_url has no host")]
    NoHost,
    #[error(
        "callback_url host {0} is not in the node's callback allow-list (callback_allow_hosts)"
    )]
    Host(String),
    #[error(
        "callback host {host} resolves to {addr}, which callbacks may not reach unless listed"
    )]
    Address { host: String, addr: IpAddr },
    #[error("callback host {0} does not resolve")]
    Unresolved(String),
}

impl AllowList {
    pub fn new(hosts: Vec<String>) -> Self {
        Self { hosts }
    }

    /// The URL's host, if the URL is an http(s) URL whose host the list allows.
    pub fn check_url(&self, url: &str) -> Result<(String, u16), NotAllowed> {
        let parsed = reqwest::Url::parse(url).map_err(|e| NotAllowed::NotAUrl(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(NotAllowed::Scheme);
        }
        let host = parsed
            .host_str()
            .ok_or(NotAllowed::NoHost)?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let listed = self
            .hosts
            .iter()
            .any(|h| h == "*" || h.eq_ignore_ascii_case(&host));
        if !listed {
            return Err(NotAllowed::Host(host));
        }
        Ok((host, parsed.port_or_known_default().unwrap_or(443)))
    }

    /// An address callbacks may reach: any, except link-local, unspecified and multicast
    /// ones that the list does not name literally.
    pub fn allows_addr(&self, addr: IpAddr) -> bool {
        let risky = match addr {
            IpAddr::V4(a) => a.is_link_local() || a.is_unspecified() || a.is_multicast(),
            IpAddr::V6(a) => {
                (a.segments()[0] & 0xffc0) == 0xfe80 || a.is_unspecified() || a.is_multicast()
            }
        };
        !risky || self.hosts.iter().any(|h| h.parse::<IpAddr>() == Ok(addr))
    }

    /// The send-time check: the host is still listed, and every address it resolves to is
    /// one callbacks may reach.
    pub async fn check_send(&self, url: &str) -> Result<(), NotAllowed> {
        let (host, port) = self.check_url(url)?;
        let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|_| NotAllowed::Unresolved(host.clone()))?
            .collect();
        if addrs.is_empty() {
            return Err(NotAllowed::Unresolved(host));
        }
        match addrs.iter().find(|a| !self.allows_addr(a.ip())) {
            Some(bad) => Err(NotAllowed::Address {
                host,
                addr: bad.ip(),
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_addresses() {
        let list = AllowList::new(vec!["localhost".into(), "127.0.0.1".into()]);
        assert_eq!(
            list.check_url("http://127.0.0.1:9/cb").unwrap().0,
            "127.0.0.1"
        );
        assert_eq!(
            list.check_url("http://evil.example/cb"),
            Err(NotAllowed::Host("evil.example".into()))
        );
        assert_eq!(list.check_url("ftp://localhost/"), Err(NotAllowed::Scheme));
        assert!(list.allows_addr("127.0.0.1".parse().unwrap()));
        assert!(!list.allows_addr("169.254.169.254".parse().unwrap()));
        assert!(!list.allows_addr("fe80::1".parse().unwrap()));
        assert!(!list.allows_addr("0.0.0.0".parse().unwrap()));
        let listed = AllowList::new(vec!["169.254.169.254".into()]);
        assert!(listed.allows_addr("169.254.169.254".parse().unwrap()));
    }

    #[tokio::test]
    async fn a_listed_name_that_resolves_to_a_link_local_address_is_refused_at_send() {
        // `*` allows the literal; its address is what the send-time check refuses.
        let any = AllowList::new(vec!["*".into()]);
        assert!(matches!(
            any.check_send("http://169.254.169.254/latest/meta-data")
                .await,
            Err(NotAllowed::Address { .. })
        ));
        assert!(any.check_send("http://127.0.0.1:9/cb").await.is_ok());
    }
}
