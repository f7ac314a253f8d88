//! Several agents in one process with distinct identities: each provisioned on the DMS (when
//! an API URL is given), listening for package 0 on its own port, optionally asking for a
//! component or operation; with a summary of outcomes and end-to-end latency.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::agent::{listen_for_notifications, Agent, DeviceConfig, DeviceError};

/// What each agent asks for, if anything.
#[derive(Clone, Debug)]
pub enum Request {
    Component(String),
    Operation(String, String),
}

/// Fleet settings.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    pub base: DeviceConfig,
    pub count: u32,
    pub notify_listen: SocketAddr,
    /// EMI API URL and token, to provision each device.
    pub provision: Option<(String, String)>,
    pub request: Option<Request>,
    pub inventory_first: bool,
    /// Delivery to ask for with a component request (`dm`, `alternate`, `auto`).
    pub delivery: Option<String>,
}

/// The outcome of a fleet run.
#[derive(Clone, Debug, Default)]
pub struct FleetReport {
    pub agents: u32,
    pub succeeded: u32,
    pub failed: u32,
    /// Why each failed device failed, for the operator (and a test) to read.
    pub errors: Vec<String>,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
}

impl FleetReport {
    /// The p-th percentile latency (0..=100).
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let mut v = self.latencies.clone();
        v.sort();
        let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        v[idx.min(v.len() - 1)]
    }

    pub fn per_second(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s == 0.0 {
            0.0
        } else {
            f64::from(self.succeeded) / s
        }
    }
}

fn agent_config(base: &DeviceConfig, i: u32, count: u32) -> DeviceConfig {
    let mut c = base.clone();
    if count > 1 {
        c.id = format!("{}-{i}", base.id);
        c.info.dev_id = c.id.clone();
        c.state_path = base.state_path.with_file_name(format!("device-{i}.json"));
    }
    c
}

async fn provision(
    http: &reqwest::Client,
    api: &str,
    token: &str,
    cfg: &DeviceConfig,
    notify: &str,
) -> Result<(), DeviceError> {
    // A fleet provisioning itself meets the EMI API's request rate: a 429 is waited out as
    // its Retry-After says, a few times, like every other call the device makes.
    let mut attempts = 0;
    loop {
        let r = http
            .put(format!(
                "{}/v1/devices/{}",
                api.trim_end_matches('/'),
                cfg.id
            ))
            .bearer_auth(token)
            .json(&serde_json::json!({
                "password": cfg.password,
                "server_password": cfg.server_password,
                "notify_url": notify,
                "auth": cfg.auth,
            }))
            .send()
            .await?;
        if r.status().is_success() {
            return Ok(());
        }
        match crate::device::retry_wait(&r) {
            Some(wait) if attempts < 5 => {
                attempts += 1;
                tracing::info!(device = %cfg.id, wait_secs = wait.as_secs(), "the EMI API asked us to slow down");
                tokio::time::sleep(wait).await;
            }
            _ => return Err(DeviceError::HttpStatus(r.status().as_u16())),
        }
    }
}

/// Starts the agents, runs their requests concurrently, and returns the summary; the agents
/// keep answering notifications until `shutdown`.
pub async fn run(
    cfg: FleetConfig,
    shutdown: CancellationToken,
) -> Result<(FleetReport, Vec<Arc<Agent>>), DeviceError> {
    let mut agents = Vec::new();
    let http = crate::net::tls::trust(
        reqwest::Client::builder().use_rustls_tls(),
        &cfg.base.ca_certs,
    )?;
    let http = http.build()?;
    for i in 1..=cfg.count {
        let c = agent_config(&cfg.base, i, cfg.count);
        let agent = Agent::new(c.clone())?;
        let addr = listen_for_notifications(agent.clone(), cfg.notify_listen, shutdown.clone())
            .await
            .map_err(|source| DeviceError::State {
                path: c.state_path.clone(),
                source,
            })?;
        if let Some((api, token)) = &cfg.provision {
            provision(&http, api, token, &c, &format!("http://{addr}/notify")).await?;
        }
        agents.push(agent);
    }
    let mut report = FleetReport {
        agents: cfg.count,
        ..FleetReport::default()
    };
    let Some(request) = cfg.request.clone() else {
        return Ok((report, agents));
    };
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for a in &agents {
        let a = a.clone();
        let request = request.clone();
        let inv = cfg.inventory_first;
        let delivery = cfg.delivery.clone();
        set.spawn(async move {
            let t0 = Instant::now();
            let r = match &request {
                Request::Component(name) => {
                    a.request_component_via(name, inv, delivery.as_deref())
                        .await
                }
                Request::Operation(op, name) => a.request_operation(op, name, inv).await,
            };
            (r, t0.elapsed())
        });
    }
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((Ok(()), took)) => {
                report.succeeded += 1;
                report.latencies.push(took);
            }
            Ok((Err(e), _)) => {
                report.failed += 1;
                tracing::warn!(error = %e, "fleet device failed");
                report.errors.push(e.to_string());
            }
            Err(e) => {
                report.failed += 1;
                report
                    .errors
                    .push(format!("device task ended abnormally: {e}"));
            }
        }
    }
    report.elapsed = start.elapsed();
    Ok((report, agents))
}
