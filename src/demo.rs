//! `scomo-ads demo`: the whole system on loopback. Starts the ADS and the DMS, an EMI webhook
//! receiver and one device agent per scenario, runs every seed flow with its alternatives plus
//! a resumed download and a rejected URL reuse, the 5.4.2 variants again with an OMA Download
//! OTA (descriptor-driven) device, checks each against the seed's steps, and prints a table
//! with the delivery mechanism each flow used. Returns whether everything passed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::config::{AdsConfig, DmsConfig};
use crate::device::{Agent, DeviceConfig, Faults, Strict};
use crate::syncml::tree::{DevDetail, DevInfo};
use crate::syncml::Encoding;

/// One scenario's outcome.
#[derive(Debug, Clone)]
pub struct Row {
    pub flow: String,
    /// `xml` or `wbxml`: how the device encoded its messages.
    pub encoding: &'static str,
    /// SyncML bytes on the wire in the flow's sessions (both ways).
    pub dm_bytes: u64,
    /// How the component travelled: `dm` (in the session), `https` (a signed URL), `dlota`
    /// (a download descriptor naming one), or `-` (an operation without a delivery).
    pub mechanism: &'static str,
    pub steps: String,
    pub ok: bool,
    pub detail: String,
    pub took: Duration,
}

/// Demo failures that stop it before any scenario ran.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Stack(#[from] crate::stack::StackError),
    #[error("demo setup failed: {0}")]
    Setup(String),
}

struct Ctx {
    dir: PathBuf,
    api: String,
    dm_url: String,
    token: String,
    server_id: String,
    http: reqwest::Client,
    cas: Vec<PathBuf>,
    emi_url: String,
    emi: Arc<Mutex<Vec<Value>>>,
    shutdown: CancellationToken,
}

fn setup_err(e: impl std::fmt::Display) -> DemoError {
    DemoError::Setup(e.to_string())
}

async fn emi_receiver(
    shutdown: CancellationToken,
) -> Result<(String, Arc<Mutex<Vec<Value>>>), DemoError> {
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/emi",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                    sink.lock().unwrap_or_else(|p| p.into_inner()).push(v);
                }
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(setup_err)?;
    let addr = l.local_addr().map_err(setup_err)?;
    tokio::spawn(async move {
        let _ = axum::serve(l, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok((format!("http://{addr}/emi"), got))
}

impl Ctx {
    async fn api_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.api))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(format!("{status}: {v}"));
        }
        Ok(v)
    }

    async fn add_component(&self, name: &str, version: &str, bytes: Vec<u8>) -> Result<(), String> {
        let r = self
            .http
            .post(format!("{}/v1/components", self.api))
            .query(&[
                ("name", name),
                ("version", version),
                ("manufacturer", "Acme"),
            ])
            .bearer_auth(&self.token)
            .body(bytes)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(format!("catalog refused {name}: {}", r.status()))
        }
    }

    /// A device agent provisioned on the DMS; `strict` turns on every strict mode of
    /// [`Strict`] (as field devices behave) with the record those need.
    async fn device(
        &self,
        id: &str,
        faults: Faults,
        strict: bool,
        dlota: bool,
        encoding: Encoding,
    ) -> Result<Arc<Agent>, String> {
        let login = format!("login-{id}");
        let cfg = DeviceConfig {
            id: id.into(),
            password: "demo-device".into(),
            server_id: self.server_id.clone(),
            server_password: "demo-server".into(),
            auth: "md5".into(),
            dms_url: self.dm_url.clone(),
            ca_certs: self.cas.clone(),
            state_path: self
                .dir
                .join("devices")
                .join(format!("{}.json", id.replace(':', "_"))),
            info: DevInfo {
                dev_id: id.into(),
                man: "Acme".into(),
                model: "Roadrunner".into(),
                dm_v: "1.2".into(),
                lang: "en".into(),
            },
            detail: DevDetail {
                dev_typ: "modem".into(),
                oem: "Acme".into(),
                fw_v: "5.2".into(),
                sw_v: "1.0".into(),
                hw_v: "A".into(),
                lrg_obj: true,
            },
            max_msg_size: 16 * 1024,
            max_obj_size: 64 << 20,
            faults,
            strict: if strict {
                Strict {
                    require_server_auth: true,
                    doctype: true,
                    empty_first_nonce: true,
                    username: Some(login.clone()),
                    refuse_list: true,
                    strict_writes: true,
                }
            } else {
                Strict::default()
            },
            encoding,
            dlota,
        };
        let agent = Agent::new(cfg).map_err(|e| e.to_string())?;
        let addr = crate::device::agent::listen_for_notifications(
            agent.clone(),
            "127.0.0.1:0".parse().map_err(|_| "addr")?,
            self.shutdown.clone(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut record = json!({"password": "demo-device", "server_password": "demo-server", "notify_url": format!("http://{addr}/notify")});
        if strict {
            record["username"] = json!(login);
            record["client_auth_nonce"] = json!("");
        }
        if dlota {
            record["alternate_mechanism"] = json!("dlota");
        }
        self.api_call(
            reqwest::Method::PUT,
            &format!("/v1/devices/{id}"),
            Some(record),
        )
        .await?;
        Ok(agent)
    }

    async fn wait_job(&self, id: &str) -> Result<Value, String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let j = self
                .api_call(reqwest::Method::GET, &format!("/v1/jobs/{id}"), None)
                .await?;
            if j["state"] == "succeeded" || j["state"] == "failed" {
                return Ok(j);
            }
            if Instant::now() > deadline {
                return Err(format!("job {id} did not end"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn job(&self, body: Value) -> Result<Value, String> {
        let v = self
            .api_call(reqwest::Method::POST, "/v1/jobs", Some(body))
            .await?;
        let id = v["job_id"].as_str().ok_or("no job id")?.to_string();
        self.wait_job(&id).await
    }

    /// The job the device's request created: the newest job of that device.
    async fn device_job(&self, device: &str) -> Result<Value, String> {
        let conn = rusqlite::Connection::open(self.dir.join("dms/dms.sqlite3"))
            .map_err(|e| e.to_string())?;
        let id: String = conn
            .query_row(
                "SELECT id FROM jobs WHERE device = ?1 ORDER BY created_at_ms DESC LIMIT 1",
                [device],
                |r| r.get(0),
            )
            .map_err(|e| format!("no job for {device}: {e}"))?;
        self.wait_job(&id).await
    }

    /// How many times the EMI heard of the job's end (a device's request is also announced,
    /// as `job.requested`, which this does not count).
    fn emi_told(&self, job: &str) -> usize {
        self.emi
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|e| e["job"]["id"] == job && e["event"] != "job.requested")
            .count()
    }
}

/// Counts how many of `want` appear in order in the job's timeline.
fn seen(job: &Value, want: &[String]) -> usize {
    let got: Vec<&str> = job["timeline"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["step"].as_str()).collect())
        .unwrap_or_default();
    let mut it = got.into_iter();
    want.iter().take_while(|w| it.any(|g| g == **w)).count()
}

const S541: &[&str] = &[
    "session_initiated",
    "devinfo",
    "build_chosen",
    "delivery",
    "device_ack",
    "emi_notified",
];
const S542: &[&str] = &[
    "session_initiated",
    "devinfo",
    "build_chosen",
    "mechanism_chosen",
    "download_requested",
    "device_result",
    "emi_notified",
];
const S543: &[&str] = &[
    "session_initiated",
    "operation_requested",
    "device_result",
    "emi_notified",
];

fn with_first<'a>(first: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![first];
    v.extend_from_slice(rest);
    v
}

fn with_alt2<'a>(first: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut v = with_first(first, rest);
    let at = v
        .iter()
        .position(|s| *s == "build_chosen" || *s == "operation_requested")
        .unwrap_or(v.len());
    v.insert(at, "inventory");
    v.insert(at, "devdetail");
    v
}

async fn scenario(
    ctx: &Ctx,
    flow: &str,
    encoding: Encoding,
) -> Result<(Value, Vec<String>, u64), String> {
    let n = format!(
        "{}-{}",
        flow.replace([' ', '.'], "-"),
        encoding_name(encoding)
    );
    // A "strict" row is the same flow with a device in every strict mode; a "dlota" row with
    // a descriptor-driven device whose record asks for descriptors.
    let (strict, flow) = match flow.strip_prefix("strict ") {
        Some(base) => (true, base),
        None => (false, flow),
    };
    let (dlota, flow) = match flow.strip_prefix("dlota ") {
        Some(base) => (true, base),
        None => (false, flow),
    };
    let dev_id = format!("IMEI:demo-{n}");
    let faults = if flow == "resumed download" {
        Faults {
            interrupt_downloads: 2,
            ..Faults::default()
        }
    } else {
        Faults::default()
    };
    let dev = ctx.device(&dev_id, faults, strict, dlota, encoding).await?;
    let (job, want) = run_flow(ctx, flow, &dev, &dev_id).await?;
    Ok((job, want, dev.dm_bytes()))
}

/// One flow's steps on `dev`; returns the job and the timeline it must show.
async fn run_flow(
    ctx: &Ctx,
    flow: &str,
    dev: &Arc<Agent>,
    dev_id: &str,
) -> Result<(Value, Vec<String>), String> {
    let job = |op: &str, component: &str, delivery: &str, inv: bool| json!({"device": dev_id, "operation": op, "component": component, "delivery": delivery, "inventory_first": inv});
    let own = |v: Vec<&str>| -> Vec<String> { v.into_iter().map(String::from).collect() };
    Ok(match flow {
        "5.4.1 normal" => (
            ctx.job(job("download", "app", "dm", false)).await?,
            own(with_first("emi_request", S541)),
        ),
        "5.4.1 alt 1" => {
            dev.request_component_via("app", false, Some("dm"))
                .await
                .map_err(|e| e.to_string())?;
            // The device asked for the component: download and install.
            let mut want = with_first("device_request", S541);
            want.insert(want.len() - 1, "device_result");
            (ctx.device_job(dev_id).await?, own(want))
        }
        "5.4.1 alt 2" => (
            ctx.job(job("download", "app", "dm", true)).await?,
            own(with_alt2("emi_request", S541)),
        ),
        "5.4.2 normal" => (
            ctx.job(job("download_install", "fw", "alternate", false))
                .await?,
            own(with_first("emi_request", S542)),
        ),
        "5.4.2 alt 1" => {
            dev.request_component_via("fw", false, Some("alternate"))
                .await
                .map_err(|e| e.to_string())?;
            (
                ctx.device_job(dev_id).await?,
                own(with_first("device_request", S542)),
            )
        }
        "5.4.2 alt 2" => (
            ctx.job(job("download", "fw", "alternate", true)).await?,
            own(with_alt2("emi_request", S542)),
        ),
        "5.4.3 normal" | "5.4.3 alt 1" | "5.4.3 alt 2" => {
            let first = ctx.job(job("download", "app", "dm", false)).await?;
            if first["state"] != "succeeded" {
                return Err(format!("setup download failed: {}", first["reason"]));
            }
            match flow {
                "5.4.3 normal" => (
                    ctx.job(job("install", "app", "dm", false)).await?,
                    own(with_first("emi_request", S543)),
                ),
                "5.4.3 alt 1" => {
                    dev.request_operation("install", "app", false)
                        .await
                        .map_err(|e| e.to_string())?;
                    (
                        ctx.device_job(dev_id).await?,
                        own(with_first("device_request", S543)),
                    )
                }
                _ => (
                    ctx.job(job("install_inactive", "app", "dm", true)).await?,
                    own(with_alt2("emi_request", S543)),
                ),
            }
        }
        "resumed download" => (
            ctx.job(job("download", "fw-big", "alternate", false))
                .await?,
            own(with_first("emi_request", S542)),
        ),
        "rejected URL reuse" => {
            let j = ctx.job(job("download", "fw", "alternate", false)).await?;
            let url = dev
                .tree()
                .await
                .value("./SCOMO/Download/fw/PkgURL")
                .map(String::from)
                .ok_or("no PkgURL on the device")?;
            let status = ctx
                .http
                .get(&url)
                .send()
                .await
                .map_err(|e| e.to_string())?
                .status();
            if status != 410 {
                return Err(format!("reusing the URL got {status}, not 410"));
            }
            (j, own(with_first("emi_request", S542)))
        }
        other => return Err(format!("unknown scenario {other}")),
    })
}

/// Every scenario, in table order: each flow variant with our agent, the two fault rows, the
/// 5.4.2 variants with an OMA Download OTA device, then each flow variant again with a strict
/// device (server credentials required, DOCTYPE, empty first nonce, a login name, no
/// `?list=`, strict Add/Replace).
pub const FLOWS: [&str; 23] = [
    "5.4.1 normal",
    "5.4.1 alt 1",
    "5.4.1 alt 2",
    "5.4.2 normal",
    "5.4.2 alt 1",
    "5.4.2 alt 2",
    "5.4.3 normal",
    "5.4.3 alt 1",
    "5.4.3 alt 2",
    "resumed download",
    "rejected URL reuse",
    "dlota 5.4.2 normal",
    "dlota 5.4.2 alt 1",
    "dlota 5.4.2 alt 2",
    "strict 5.4.1 normal",
    "strict 5.4.1 alt 1",
    "strict 5.4.1 alt 2",
    "strict 5.4.2 normal",
    "strict 5.4.2 alt 1",
    "strict 5.4.2 alt 2",
    "strict 5.4.3 normal",
    "strict 5.4.3 alt 1",
    "strict 5.4.3 alt 2",
];

/// Runs the demo with its data under `dir`; returns the table rows.
pub async fn run(dir: &Path) -> Result<Vec<Row>, DemoError> {
    let shutdown = CancellationToken::new();
    let (emi_url, emi) = emi_receiver(shutdown.clone()).await?;
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().map_err(setup_err)?;
    let ads = AdsConfig {
        listen: any,
        admin_listen: any,
        admin_token: None,
        ..AdsConfig::default()
    };
    let dms = DmsConfig {
        listen: any,
        api_listen: any,
        emi_webhook_url: Some(emi_url.clone()),
        renotify_secs: 2,
        webhook_backoff_base_ms: 100,
        ..DmsConfig::default()
    };
    let (node, d) = crate::stack::start(dir, ads, dms, shutdown.clone()).await?;
    let mut http = reqwest::Client::builder().use_rustls_tls();
    for ca in [&node.cert_path, &d.cert_path] {
        let pem = std::fs::read(ca).map_err(setup_err)?;
        http = http.add_root_certificate(reqwest::Certificate::from_pem(&pem).map_err(setup_err)?);
    }
    let ctx = Ctx {
        dir: dir.to_path_buf(),
        api: d.api_url.clone(),
        dm_url: d.dm_url.clone(),
        token: d.api_token.clone(),
        server_id: d.server_id.clone(),
        http: http.build().map_err(setup_err)?,
        cas: vec![node.cert_path.clone(), d.cert_path.clone()],
        emi_url,
        emi,
        shutdown: shutdown.clone(),
    };
    let pattern = |len: usize, seed: u8| -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    };
    ctx.add_component("app", "1.0", pattern(120_000, 1))
        .await
        .map_err(DemoError::Setup)?;
    ctx.add_component("fw", "2.0", pattern(2 << 20, 2))
        .await
        .map_err(DemoError::Setup)?;
    ctx.add_component("fw-big", "2.0", pattern(24 << 20, 3))
        .await
        .map_err(DemoError::Setup)?;

    let mut rows = Vec::new();
    for (encoding, flow) in [Encoding::Xml, Encoding::Wbxml]
        .into_iter()
        .flat_map(|e| FLOWS.into_iter().map(move |f| (e, f)))
    {
        let t0 = Instant::now();
        let row = match scenario(&ctx, flow, encoding).await {
            Ok((job, want, dm_bytes)) => {
                let n = seen(&job, &want);
                let id = job["id"].as_str().unwrap_or("").to_string();
                // The EMI hears about each job exactly once.
                let mut told = 0;
                for _ in 0..100 {
                    told = ctx.emi_told(&id);
                    if told > 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let ok = job["state"] == "succeeded" && n == want.len() && told == 1;
                Row {
                    flow: flow.to_string(),
                    encoding: encoding_name(encoding),
                    dm_bytes,
                    mechanism: mechanism_of(&job),
                    steps: format!("{n}/{}", want.len()),
                    ok,
                    detail: if ok {
                        format!("result {}", job["result_code"])
                    } else {
                        format!(
                            "state {} result {} reason {} EMI told {told}",
                            job["state"], job["result_code"], job["reason"]
                        )
                    },
                    took: t0.elapsed(),
                }
            }
            Err(e) => Row {
                flow: flow.to_string(),
                encoding: encoding_name(encoding),
                dm_bytes: 0,
                mechanism: "-",
                steps: "-".into(),
                ok: false,
                detail: e,
                took: t0.elapsed(),
            },
        };
        rows.push(row);
    }
    let _ = &ctx.emi_url;
    shutdown.cancel();
    Ok(rows)
}

/// The mechanism a job's timeline shows it used.
fn mechanism_of(job: &Value) -> &'static str {
    let steps = job["timeline"].as_array().cloned().unwrap_or_default();
    let chosen = steps
        .iter()
        .filter(|s| s["step"] == "mechanism_chosen")
        .filter_map(|s| s["detail"].as_str())
        .next_back()
        .unwrap_or("");
    if chosen.contains("Download OTA") {
        "dlota"
    } else if chosen.contains("HTTPS") {
        "https"
    } else if chosen.contains("in-band") || steps.iter().any(|s| s["step"] == "delivery") {
        "dm"
    } else {
        "-"
    }
}

fn encoding_name(e: Encoding) -> &'static str {
    match e {
        Encoding::Xml => "xml",
        Encoding::Wbxml => "wbxml",
    }
}

/// The table as text.
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<20} {:<8} {:<9} {:>6}  {:<6} {:>8} {:>9}  {}\n",
        "flow", "encoding", "mechanism", "steps", "result", "time", "DM bytes", "detail"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<20} {:<8} {:<9} {:>6}  {:<6} {:>6}ms {:>9}  {}\n",
            r.flow,
            r.encoding,
            r.mechanism,
            r.steps,
            if r.ok { "pass" } else { "FAIL" },
            r.took.as_millis(),
            r.dm_bytes,
            r.detail
        ));
    }
    out
}
