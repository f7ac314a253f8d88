//! Shared helpers for the integration tests: a node on 127.0.0.1:0 in a temp dir, HTTP clients
//! over real TLS trusting its generated certificate, and upload/mint shortcuts.

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

/// A client whose connections come from `local` (any 127.x.y.z is this host): another
/// address, as far as per-address limits can tell.
pub fn client_from(cert: &Path, local: std::net::IpAddr) -> reqwest::Client {
    builder(cert).local_address(local).build().unwrap()
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

    /// GET an admin API path with `token` as the bearer.
    pub async fn admin_get(&self, path: &str, token: &str) -> reqwest::Response {
        client(&self.cert())
            .get(self.admin(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// The published components, as the admin API lists them.
    pub async fn components(&self) -> Vec<serde_json::Value> {
        let v: serde_json::Value = self
            .admin_get("/v1/components", self.token())
            .await
            .json()
            .await
            .unwrap();
        v["components"].as_array().unwrap().clone()
    }

    /// One unlabelled counter or gauge from `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self.admin_get("/metrics", "").await.text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
            .parse()
            .unwrap()
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

    /// The ticket once no response on it is in flight: every response has ended and what it
    /// sent was acknowledged by the client (or given up as maybe-delivered).
    pub async fn settled(&self, id: &str) -> serde_json::Value {
        for _ in 0..500 {
            let t = self.ticket(id).await;
            if t["active_requests"] == 0 {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("ticket {id} never settled: {}", self.ticket(id).await);
    }
}

/// Waits until the ticket's state is `want`: a delivery completes once the client's TCP stack
/// has acknowledged the last byte, a moment after the client has read it.
pub async fn state_becomes(node: &Node, id: &str, want: &str) -> serde_json::Value {
    for _ in 0..500 {
        let t = node.ticket(id).await;
        if t["state"] == want {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("ticket {id} never became {want}: {}", node.ticket(id).await);
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

// ------------------------------------------------------------------ DMS and devices

/// A DMS on loopback with an EMI webhook receiver, plus helpers to drive its API.
pub struct Dms {
    pub handle: scomo_ads::dms::DmsHandle,
    pub dir: tempfile::TempDir,
    pub emi: Receiver,
    pub shutdown: CancellationToken,
}

pub async fn start_dms() -> Dms {
    start_dms_with(|_| {}).await
}

pub async fn start_dms_with(tweak: impl FnOnce(&mut scomo_ads::config::DmsConfig)) -> Dms {
    start_dms_in(tempfile::tempdir().unwrap(), tweak).await
}

pub async fn start_dms_in(
    dir: tempfile::TempDir,
    tweak: impl FnOnce(&mut scomo_ads::config::DmsConfig),
) -> Dms {
    let emi = Receiver::start().await;
    let mut config = scomo_ads::config::DmsConfig {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        api_listen: "127.0.0.1:0".parse().unwrap(),
        emi_webhook_url: Some(emi.url.clone()),
        webhook_backoff_base_ms: 50,
        renotify_secs: 2,
        ..Default::default()
    };
    tweak(&mut config);
    let shutdown = CancellationToken::new();
    let handle = scomo_ads::dms::start(config, shutdown.clone())
        .await
        .unwrap();
    Dms {
        handle,
        dir,
        emi,
        shutdown,
    }
}

impl Dms {
    pub fn api(&self, path: &str) -> String {
        format!("{}{}", self.handle.api_url, path)
    }

    pub fn client(&self) -> reqwest::Client {
        client(&self.handle.cert_path)
    }

    pub async fn provision(&self, id: &str, password: &str, notify_url: Option<&str>) {
        let r = self
            .client()
            .put(self.api(&format!("/v1/devices/{id}")))
            .bearer_auth(&self.handle.api_token)
            .json(&serde_json::json!({"password": password, "server_password": "srv-secret", "notify_url": notify_url}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }

    pub async fn add_component(&self, query: &[(&str, &str)], bytes: Vec<u8>) -> serde_json::Value {
        let r = self
            .client()
            .post(self.api("/v1/components"))
            .query(query)
            .bearer_auth(&self.handle.api_token)
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        r.json().await.unwrap()
    }

    pub async fn create_job(&self, body: serde_json::Value) -> String {
        let r = self
            .client()
            .post(self.api("/v1/jobs"))
            .bearer_auth(&self.handle.api_token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
        let v: serde_json::Value = r.json().await.unwrap();
        v["job_id"].as_str().unwrap().to_string()
    }

    pub async fn job(&self, id: &str) -> serde_json::Value {
        self.client()
            .get(self.api(&format!("/v1/jobs/{id}")))
            .bearer_auth(&self.handle.api_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits for a job to end; returns it.
    pub async fn wait_job(&self, id: &str, secs: u64) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let j = self.job(id).await;
            if j["state"] == "succeeded" || j["state"] == "failed" {
                return j;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("job {id} did not end: {j:#}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Jobs the DMS knows for a device, through the device record (for device-initiated jobs).
    pub async fn device(&self, id: &str) -> serde_json::Value {
        self.client()
            .get(self.api(&format!("/v1/devices/{id}")))
            .bearer_auth(&self.handle.api_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// The step names of a job's timeline, in order.
pub fn steps(job: &serde_json::Value) -> Vec<String> {
    job["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap().to_string())
        .collect()
}

/// The first timeline entry of `step` in a job.
pub fn timeline_step<'a>(job: &'a serde_json::Value, step: &str) -> &'a serde_json::Value {
    job["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == step)
        .unwrap_or_else(|| panic!("no {step} on the timeline: {job:#}"))
}

/// Asserts `want` appears in `got` in this order (other steps may sit between).
pub fn assert_in_order(got: &[String], want: &[&str]) {
    let mut it = got.iter();
    for w in want {
        assert!(
            it.any(|g| g == w),
            "step {w:?} missing or out of order in {got:?}"
        );
    }
}

/// A device agent against `dms`, listening for package 0 on loopback.
pub struct Device {
    pub agent: std::sync::Arc<scomo_ads::device::Agent>,
    pub notify_url: String,
    pub dir: tempfile::TempDir,
}

pub fn device_config(
    dms: &Dms,
    id: &str,
    dir: &Path,
    faults: scomo_ads::device::Faults,
) -> scomo_ads::device::DeviceConfig {
    scomo_ads::device::DeviceConfig {
        id: id.to_string(),
        password: "dev-secret".into(),
        server_id: dms.handle.server_id.clone(),
        server_password: "srv-secret".into(),
        auth: "md5".into(),
        dms_url: dms.handle.dm_url.clone(),
        ca_certs: vec![dms.handle.cert_path.clone()],
        state_path: dir.join("device.json"),
        info: scomo_ads::syncml::tree::DevInfo {
            dev_id: id.to_string(),
            man: "Acme".into(),
            model: "Roadrunner".into(),
            dm_v: "1.2".into(),
            lang: "en".into(),
        },
        detail: scomo_ads::syncml::tree::DevDetail {
            dev_typ: "modem".into(),
            oem: "Acme".into(),
            fw_v: "5.2".into(),
            sw_v: "1.0".into(),
            hw_v: "A".into(),
            lrg_obj: true,
        },
        max_msg_size: 16 * 1024,
        max_obj_size: 4 << 20,
        faults,
        strict: Default::default(),
        encoding: Default::default(),
        dlota: false,
    }
}

pub async fn start_device(dms: &Dms, id: &str, faults: scomo_ads::device::Faults) -> Device {
    start_device_trusting(dms, id, faults, &[]).await
}

/// Stops `node` and starts a new one on the same data directory (no plain-HTTP listener).
pub async fn restart(node: Node) -> (AdsHandle, tempfile::TempDir) {
    let dir = node.dir;
    node.shutdown.cancel();
    node.handle.wait().await;
    let mut cfg = test_config(dir.path());
    cfg.http_listen = None;
    let again = scomo_ads::ads::start(cfg, CancellationToken::new())
        .await
        .unwrap();
    (again, dir)
}

/// The DMS's view of an ADS node started by a test.
pub fn ads_node_config(name: &str, node: &Node, weight: u32) -> scomo_ads::config::AdsNodeConfig {
    scomo_ads::config::AdsNodeConfig {
        name: name.into(),
        admin_url: node.handle.admin_url.clone(),
        admin_token_file: node.dir.path().join("admin.token"),
        callback_secret_file: node.dir.path().join("callback.secret"),
        ca_cert: Some(node.cert()),
        client_identity: None,
        weight,
    }
}

/// ADS nodes and a DMS wired to them, delivering through them by default with `delivery`.
/// The DMS's certificate is made first so the nodes can trust it for their callbacks.
pub async fn start_stack(weights: &[(&str, u32)], delivery: &str) -> (Dms, Vec<Node>) {
    start_stack_tweaked(weights, delivery, |_| {}, |_| {}).await
}

/// [`start_stack`] with each node's and the DMS's config adjusted first.
pub async fn start_stack_tweaked(
    weights: &[(&str, u32)],
    delivery: &str,
    ads_tweak: impl Fn(&mut AdsConfig),
    dms_tweak: impl FnOnce(&mut scomo_ads::config::DmsConfig),
) -> (Dms, Vec<Node>) {
    let dms_dir = tempfile::tempdir().unwrap();
    scomo_ads::net::tls::load_or_generate(dms_dir.path(), None, None).unwrap();
    let dms_cert = dms_dir.path().join("tls/cert.pem");
    let mut nodes = Vec::new();
    for _ in weights {
        let ca = dms_cert.clone();
        nodes.push(
            start_with(|c| {
                c.callback_ca_certs = vec![ca];
                ads_tweak(c);
            })
            .await,
        );
    }
    let cfgs: Vec<_> = weights
        .iter()
        .zip(&nodes)
        .map(|((n, w), node)| ads_node_config(n, node, *w))
        .collect();
    let delivery = delivery.to_string();
    let dms = start_dms_in(dms_dir, move |c| {
        c.ads_nodes = cfgs;
        c.default_delivery = delivery;
        c.ads_health_interval_secs = 1;
        dms_tweak(c);
    })
    .await;
    (dms, nodes)
}

/// Starts `agent`'s package 0 listener on loopback (stopped with the DMS); returns its URL.
pub async fn notify_listener(
    dms: &Dms,
    agent: &std::sync::Arc<scomo_ads::device::Agent>,
) -> String {
    let addr = scomo_ads::device::agent::listen_for_notifications(
        agent.clone(),
        "127.0.0.1:0".parse().unwrap(),
        dms.shutdown.clone(),
    )
    .await
    .unwrap();
    format!("http://{addr}/notify")
}

/// A device trusting the DMS and every given ADS node.
pub async fn start_device_trusting(
    dms: &Dms,
    id: &str,
    faults: scomo_ads::device::Faults,
    ads: &[&Node],
) -> Device {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = device_config(dms, id, dir.path(), faults);
    cfg.ca_certs.extend(ads.iter().map(|n| n.cert()));
    let agent = scomo_ads::device::Agent::new(cfg).unwrap();
    let notify_url = notify_listener(dms, &agent).await;
    dms.provision(id, "dev-secret", Some(&notify_url)).await;
    Device {
        agent,
        notify_url,
        dir,
    }
}

/// Ids of a device's jobs, oldest first, read from the DMS database.
pub fn job_ids(dms: &Dms, device: &str) -> Vec<String> {
    let conn = rusqlite::Connection::open(dms.dir.path().join("dms.sqlite3")).unwrap();
    let mut stmt = conn
        .prepare("SELECT id FROM jobs WHERE device = ?1 ORDER BY created_at_ms")
        .unwrap();
    let rows = stmt.query_map([device], |r| r.get::<_, String>(0)).unwrap();
    rows.map(|r| r.unwrap()).collect()
}

/// Waits for the DMS to hold `n` jobs for a device.
pub async fn wait_jobs(dms: &Dms, device: &str, n: usize) -> Vec<String> {
    for _ in 0..400 {
        let ids = job_ids(dms, device);
        if ids.len() >= n {
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no job for {device}");
}

/// Waits until a job's timeline holds `step`.
pub async fn wait_step(dms: &Dms, job: &str, step: &str) -> serde_json::Value {
    for _ in 0..400 {
        let j = dms.job(job).await;
        if steps(&j).iter().any(|s| s == step) {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("job {job} never recorded {step}: {:#}", dms.job(job).await);
}

/// Whether an external tool a test drives as a real peer is available. `.ci/run` installs them
/// and sets `SCOMO_REQUIRE_TOOLS=1`, which turns a missing tool into a failure; a plain
/// `cargo test` on a machine with only the Rust toolchain skips those few tests, loudly.
pub fn tool_available(probe: &[&str]) -> bool {
    let ok = Command::new(probe[0])
        .args(&probe[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var_os("SCOMO_REQUIRE_TOOLS").is_some() {
            panic!("{probe:?} is required (SCOMO_REQUIRE_TOOLS is set); .ci/run installs it");
        }
        eprintln!("SKIPPED: {probe:?} is not available on this machine (.ci/run installs it)");
    }
    ok
}
