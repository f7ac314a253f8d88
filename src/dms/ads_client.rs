//! The DMS's side of the ADS: a pool of nodes with health checks and weights, publishing a
//! build to the chosen node if it lacks it (by content id), minting tickets, and verifying the
//! nodes' download callbacks.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

pub use crate::ads::tickets::Mechanism;
use crate::config::AdsNodeConfig;
use crate::webhook::sign::Signer;

/// ADS client failures.
#[derive(Debug, thiserror::Error)]
pub enum AdsClientError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Trust(#[from] crate::net::tls::TrustError),
    #[error("ADS node {node}: {source}")]
    Http {
        node: String,
        source: reqwest::Error,
    },
    #[error("ADS node {node} answered {status}: {body}")]
    Status {
        node: String,
        status: u16,
        body: String,
    },
    #[error("invalid callback secret for ADS node {0}")]
    BadSecret(String),
}

/// Failed health checks in a row that make a node unhealthy.
pub const UNHEALTHY_AFTER: u32 = 3;

/// One node.
pub struct AdsNode {
    pub name: String,
    pub admin_url: String,
    token: String,
    pub weight: u32,
    pub healthy: AtomicBool,
    /// Health checks failed in a row; the node is unhealthy from [`UNHEALTHY_AFTER`] on.
    failed_checks: std::sync::atomic::AtomicU32,
    signer: Signer,
    http: reqwest::Client,
}

/// A ticket as the ADS mints it.
#[derive(Debug, Deserialize)]
pub struct Ticket {
    pub id: String,
    /// What the device is given (`PkgURL`): the object URL, or a DLOTA descriptor's.
    pub url: String,
    #[serde(default)]
    pub mechanism: Mechanism,
    pub blake3: String,
    pub sha256: String,
    pub size: u64,
}

fn read(path: &Path) -> Result<String, AdsClientError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| AdsClientError::Read {
            path: path.to_path_buf(),
            source,
        })
}

impl AdsNode {
    pub fn new(cfg: &AdsNodeConfig) -> Result<Self, AdsClientError> {
        let b = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(Duration::from_secs(300))
            .connect_timeout(Duration::from_secs(5));
        let mut b = crate::net::tls::trust(b, cfg.ca_cert.as_slice())?;
        if let Some(path) = &cfg.client_identity {
            b = crate::net::tls::present(b, path)?;
        }
        let http = b.build().map_err(|source| AdsClientError::Http {
            node: cfg.name.clone(),
            source,
        })?;
        let signer = Signer::from_secrets(&read(&cfg.callback_secret_file)?)
            .map_err(|_| AdsClientError::BadSecret(cfg.name.clone()))?;
        Ok(Self {
            name: cfg.name.clone(),
            admin_url: cfg.admin_url.trim_end_matches('/').to_string(),
            token: read(&cfg.admin_token_file)?,
            weight: cfg.weight.max(1),
            healthy: AtomicBool::new(true),
            failed_checks: std::sync::atomic::AtomicU32::new(0),
            signer,
            http,
        })
    }

    fn err(&self, source: reqwest::Error) -> AdsClientError {
        AdsClientError::Http {
            node: self.name.clone(),
            source,
        }
    }

    async fn check(&self, resp: reqwest::Response) -> Result<reqwest::Response, AdsClientError> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(AdsClientError::Status {
            node: self.name.clone(),
            status: resp.status().as_u16(),
            body: resp
                .text()
                .await
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect(),
        })
    }

    /// Whether the node's `/healthz` answers with success now (nothing recorded).
    pub async fn answers_health(&self) -> bool {
        matches!(
            self.http
                .get(format!("{}/healthz", self.admin_url))
                .timeout(Duration::from_secs(2))
                .send()
                .await,
            Ok(r) if r.status().is_success()
        )
    }

    /// Checks `/healthz` and records the outcome: a node is unhealthy after
    /// [`UNHEALTHY_AFTER`] failed checks in a row (a node busy under load may miss one
    /// answer; that must not divert its jobs), healthy again at the first success. Returns
    /// the node's health after the check.
    pub async fn probe(&self) -> bool {
        let ok = if self.answers_health().await {
            self.failed_checks.store(0, Ordering::Relaxed);
            true
        } else {
            let failed = self.failed_checks.fetch_add(1, Ordering::Relaxed) + 1;
            if failed < UNHEALTHY_AFTER {
                tracing::info!(node = %self.name, failed, "ADS node missed a health check");
            }
            failed < UNHEALTHY_AFTER && self.healthy.load(Ordering::Relaxed)
        };
        let was = self.healthy.swap(ok, Ordering::Relaxed);
        if was != ok {
            tracing::warn!(node = %self.name, healthy = ok, "ADS node health changed");
        }
        ok
    }

    /// Publishes the build at `path` unless the node already holds it (content-addressed id).
    pub async fn ensure_published(
        &self,
        id: &str,
        name: &str,
        version: &str,
        path: &Path,
    ) -> Result<(), AdsClientError> {
        let r = self
            .http
            .get(format!("{}/v1/components/{id}", self.admin_url))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| self.err(e))?;
        if r.status().is_success() {
            return Ok(());
        }
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| AdsClientError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let r = self
            .http
            .post(format!("{}/v1/components", self.admin_url))
            .query(&[("name", name), ("version", version)])
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(body)
            .send()
            .await
            .map_err(|e| self.err(e))?;
        self.check(r).await?;
        Ok(())
    }

    /// Revokes a ticket (its URL answers 410 from now on).
    pub async fn revoke(&self, ticket: &str) -> Result<(), AdsClientError> {
        let r = self
            .http
            .delete(format!("{}/v1/tickets/{ticket}", self.admin_url))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| self.err(e))?;
        self.check(r).await?;
        Ok(())
    }

    /// Mints a one-time URL for `component`, handed to the device by `mechanism`.
    pub async fn mint(
        &self,
        component: &str,
        device: &str,
        callback_url: &str,
        context: serde_json::Value,
        ttl_secs: u64,
        mechanism: Mechanism,
    ) -> Result<Ticket, AdsClientError> {
        let r = self
            .http
            .post(format!("{}/v1/tickets", self.admin_url))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({
                "component": component,
                "ttl_secs": ttl_secs,
                "device_id": device,
                "callback_url": callback_url,
                "context": context,
                "mechanism": mechanism,
            }))
            .send()
            .await
            .map_err(|e| self.err(e))?;
        let r = self.check(r).await?;
        r.json().await.map_err(|e| self.err(e))
    }
}

/// The configured nodes.
pub struct AdsPool {
    pub nodes: Vec<Arc<AdsNode>>,
}

impl AdsPool {
    pub fn new(cfgs: &[AdsNodeConfig]) -> Result<Self, AdsClientError> {
        Ok(Self {
            nodes: cfgs
                .iter()
                .map(|c| AdsNode::new(c).map(Arc::new))
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// A healthy node, chosen at random in proportion to the weights.
    pub fn pick(&self) -> Option<Arc<AdsNode>> {
        let healthy: Vec<&Arc<AdsNode>> = self
            .nodes
            .iter()
            .filter(|n| n.healthy.load(Ordering::Relaxed))
            .collect();
        let total: u32 = healthy.iter().map(|n| n.weight).sum();
        if total == 0 {
            return None;
        }
        let mut x = rand::random::<u32>() % total;
        for n in healthy {
            if x < n.weight {
                return Some(n.clone());
            }
            x -= n.weight;
        }
        None
    }

    /// Verifies a callback against every node's secret; returns the node that signed it.
    pub fn verify(
        &self,
        id: &str,
        ts: u64,
        body: &[u8],
        sig: &str,
        now: u64,
    ) -> Option<Arc<AdsNode>> {
        self.nodes
            .iter()
            .find(|n| n.signer.verify(id, ts, body, sig, now, 300).is_ok())
            .cloned()
    }

    /// Probes every node now, then every `every` until `shutdown`.
    pub async fn health_loop(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        loop {
            for n in &self.nodes {
                n.probe().await;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {},
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// A node that misses a health check or two under load stays in the pool; three misses
    /// in a row take it out, and one answer brings it back.
    #[tokio::test]
    async fn a_node_is_unhealthy_only_after_consecutive_failed_checks() {
        let answering = Arc::new(AtomicBool::new(true));
        let a = answering.clone();
        let app = axum::Router::new().route(
            "/healthz",
            axum::routing::get(move || {
                let a = a.clone();
                async move {
                    if a.load(Ordering::Relaxed) {
                        (axum::http::StatusCode::OK, "ok")
                    } else {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "busy")
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "t").unwrap();
        std::fs::write(
            dir.path().join("secret"),
            crate::webhook::sign::generate_secret(),
        )
        .unwrap();
        let node = AdsNode::new(&AdsNodeConfig {
            name: "n".into(),
            admin_url: format!("http://{addr}"),
            admin_token_file: dir.path().join("token"),
            callback_secret_file: dir.path().join("secret"),
            ca_cert: None,
            client_identity: None,
            weight: 1,
        })
        .unwrap();
        assert!(node.probe().await);
        answering.store(false, Ordering::Relaxed);
        assert!(node.probe().await, "one miss");
        assert!(node.probe().await, "two misses");
        assert!(!node.probe().await, "three in a row");
        assert!(!node.healthy.load(Ordering::Relaxed));
        answering.store(true, Ordering::Relaxed);
        assert!(node.probe().await, "back at the first answer");
        answering.store(false, Ordering::Relaxed);
        assert!(node.probe().await, "the count started over");
    }
}
