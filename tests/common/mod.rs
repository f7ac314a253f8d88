//! Shared helpers for the integration tests: a node on 127.0.0.1:0 in a temp dir, HTTP clients
//! over real TLS trusting its generated certificate, and upload/mint shortcuts.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

/// The real binary as a child process, with its ready line parsed.
pub struct Proc {
    pub child: Child,
    pub dir: std::path::PathBuf,
    pub download: String,
    pub admin: String,
}

impl Proc {
    /// Starts `scomo-ads serve` on `dir` (which the caller keeps, so it can restart on it).
    pub fn spawn(dir: &Path, extra: &[&str]) -> Proc {
        let mut child = Command::new(bin())
            .arg("serve")
            .arg("--data")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(extra)
            .env_remove("SCOMO_ADS_ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let ready = loop {
            let line = lines.next().expect("ready line").unwrap();
            if let Some(json) = line.strip_prefix("ready ") {
                break serde_json::from_str::<serde_json::Value>(json).unwrap();
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Proc {
            child,
            dir: dir.to_path_buf(),
            download: ready["download"].as_str().unwrap().to_string(),
            admin: ready["admin"].as_str().unwrap().to_string(),
        }
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dir.join("admin.token"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn cert(&self) -> std::path::PathBuf {
        self.dir.join("tls/cert.pem")
    }

    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub fn admin_client(&self) -> scomo_ads::client::AdminClient {
        let target = scomo_ads::client::AdminTarget::resolve(
            &format!("https://{}", self.admin),
            Some(self.token()),
            &self.dir,
            None,
        )
        .unwrap();
        scomo_ads::client::AdminClient::new(target).unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGKILL: also what the crash tests use to stop a node uncleanly.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a callback receiver saw on one attempt.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub id: String,
    pub timestamp: u64,
    pub signature: String,
    pub body: Vec<u8>,
    pub answered: u16,
}

impl Attempt {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A programmable webhook receiver on 127.0.0.1:0: answers `fail_next` attempts with 500
/// (or 429 + Retry-After: 1 for `throttle_next`), then 204.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    pub attempts: std::sync::Arc<std::sync::Mutex<Vec<Attempt>>>,
    pub fail_next: std::sync::Arc<std::sync::atomic::AtomicI64>,
    pub throttle_next: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        use std::sync::atomic::Ordering;
        let r = Receiver {
            url: String::new(),
            attempts: Default::default(),
            fail_next: Default::default(),
            throttle_next: Default::default(),
        };
        let state = r.clone();
        let app = axum::Router::new().route(
            "/cb",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let state = state.clone();
                    async move {
                        let h = |n: &str| {
                            headers
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string()
                        };
                        let (status, retry) =
                            if state.throttle_next.fetch_sub(1, Ordering::SeqCst) > 0 {
                                (429u16, true)
                            } else if state.fail_next.fetch_sub(1, Ordering::SeqCst) > 0 {
                                (500, false)
                            } else {
                                (204, false)
                            };
                        state.attempts.lock().unwrap().push(Attempt {
                            id: h("webhook-id"),
                            timestamp: h("webhook-timestamp").parse().unwrap_or(0),
                            signature: h("webhook-signature"),
                            body: body.to_vec(),
                            answered: status,
                        });
                        let mut resp = axum::http::Response::new(axum::body::Body::empty());
                        *resp.status_mut() = axum::http::StatusCode::from_u16(status).unwrap();
                        if retry {
                            resp.headers_mut()
                                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
                        }
                        resp
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url: format!("http://{addr}/cb"),
            ..r
        }
    }

    /// Attempts answered 2xx, deduplicated by event id (at-least-once → exactly once).
    pub fn delivered(&self) -> Vec<Attempt> {
        let mut seen = std::collections::HashSet::new();
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.answered < 300 && seen.insert(a.id.clone()))
            .cloned()
            .collect()
    }

    pub fn all(&self) -> Vec<Attempt> {
        self.attempts.lock().unwrap().clone()
    }

    /// Waits until `n` distinct events were delivered.
    pub async fn wait_for(&self, n: usize, secs: u64) -> Vec<Attempt> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let d = self.delivered();
            if d.len() >= n || tokio::time::Instant::now() > deadline {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Verifies a Standard Webhooks signature independently of the crate's own signer: HMAC-SHA256
/// over "id.timestamp.body" with the key inside `whsec_…`.
pub fn verify_signature(secret_file: &Path, a: &Attempt) -> bool {
    use base64::Engine;
    use hmac::Mac;
    let secret = std::fs::read_to_string(secret_file).unwrap();
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim().strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", a.id, a.timestamp).as_bytes());
    mac.update(&a.body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    a.signature
        .split(' ')
        .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
}
