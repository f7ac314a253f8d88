//! Shared helpers for the integration tests: a node on 127.0.0.1:0 in a temp dir, HTTP clients
//! over real TLS trusting its generated certificate, and upload/mint shortcuts.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use scomo_ads::ads::store::ComponentMeta;
use scomo_ads::ads::tickets::Minted;
use scomo_ads::ads::AdsHandle;
use scomo_ads::config::AdsConfig;
use tokio_util::sync::CancellationToken;

pub struct Node {
    pub handle: AdsHandle,
    pub dir: tempfile::TempDir,
    pub shutdown: CancellationToken,
}

/// A config for tests: everything on ephemeral loopback ports, data in `dir`.
pub fn test_config(dir: &Path) -> AdsConfig {
    AdsConfig {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        cache_bytes: 64 << 20,
        ..AdsConfig::default()
    }
}

pub async fn start() -> Node {
    start_with(|_| {}).await
}

pub async fn start_with(tweak: impl FnOnce(&mut AdsConfig)) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    tweak(&mut config);
    let shutdown = CancellationToken::new();
    let handle = scomo_ads::ads::start(config, shutdown.clone())
        .await
        .expect("node starts");
    Node {
        handle,
        dir,
        shutdown,
    }
}

/// A client trusting the node's generated certificate (ALPN picks h2 when offered).
pub fn client(cert: &Path) -> reqwest::Client {
    builder(cert).build().unwrap()
}

/// A client limited to HTTP/1.1.
pub fn client_h1(cert: &Path) -> reqwest::Client {
    builder(cert).http1_only().build().unwrap()
}

fn builder(cert: &Path) -> reqwest::ClientBuilder {
    let pem = std::fs::read(cert).unwrap();
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(60))
}

impl Node {
    pub fn cert(&self) -> PathBuf {
        self.handle.cert_path.clone()
    }

    pub fn admin(&self, path: &str) -> String {
        format!("{}{}", self.handle.admin_url, path)
    }

    pub fn token(&self) -> &str {
        &self.handle.admin_token
    }

    pub async fn publish(&self, bytes: Vec<u8>, name: &str, version: &str) -> ComponentMeta {
        let resp = client(&self.cert())
            .post(self.admin("/v1/components"))
            .query(&[("name", name), ("version", version)])
            .bearer_auth(self.token())
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "publish: {}", resp.status());
        resp.json().await.unwrap()
    }

    /// A reusable URL (many deliveries), for tests about the download plane itself.
    pub async fn mint(&self, component: &str, ttl_secs: u64) -> Minted {
        self.mint_with(serde_json::json!({
            "component": component, "ttl_secs": ttl_secs, "max_deliveries": 1000
        }))
        .await
    }

    /// A ticket with any mint options.
    pub async fn mint_with(&self, body: serde_json::Value) -> Minted {
        let resp = client(&self.cert())
            .post(self.admin("/v1/tickets"))
            .bearer_auth(self.token())
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
        resp.json().await.unwrap()
    }

    /// A ticket's admin view.
    pub async fn ticket(&self, id: &str) -> serde_json::Value {
        client(&self.cert())
            .get(self.admin(&format!("/v1/tickets/{id}")))
            .bearer_auth(self.token())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// Deterministic pseudo-random bytes (xorshift), so failures are reproducible.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Polls `cond` every 20 ms for up to `secs` seconds.
pub async fn wait_until(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_scomo-ads")
}
