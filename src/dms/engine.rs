//! The SyncML DM session engine: authenticates devices, answers every command with a Status,
//! and drives each device's jobs through the seed flows' steps, one message exchange at a
//! time.
//!
//! A session is keyed by (device id, SessionID). Processing a message takes the session out of
//! the map and puts it back after, so no lock is held across storage awaits and two messages of
//! one session are never processed at once. Job progress lives in SQLite (the `stage` of each
//! job): a device that drops mid-session simply continues from the stage in its next session.
//!
//! Job stages: `queued` → (`reading`: DevDetail / inventory Gets) → `choose` (build selection)
//! → `deliver` / `delivering` (in-band large object) → `acked` → `exec` / `exec_sent` (SCOMO
//! Exec with a correlator) → `awaiting_result` (Generic Alert 1226) → succeeded / failed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::ads_client::AdsPool;
use super::catalog::{self, Build};
use super::store::{now_ms, Device, DmsStore, DmsStoreError, Job, JobOp, JobState, Step};
use crate::net::guard::AuthThrottle;
use crate::scomo::{self, Operation};
use crate::syncml::auth;
use crate::syncml::codec::{self, CodecError, Limits};
use crate::syncml::codes::{AlertCode, StatusCode};
use crate::syncml::large_object::{self, Chunk};
use crate::syncml::message::*;
use crate::syncml::tree::{DevDetail, DevInfo};

/// Engine failures that are not answered in SyncML.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("not a SyncML DM message: {0}")]
    Undecodable(CodecError),
    #[error(transparent)]
    Store(#[from] DmsStoreError),
    /// Too many failed authentications from this device at this address: wait.
    #[error("authentication backoff: retry after {0:?}")]
    Backoff(Duration),
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub server_id: String,
    pub dm_url: String,
    pub allow_basic: bool,
    pub session_timeout: Duration,
    pub emi_url: Option<String>,
    pub limits: Limits,
    /// Where ADS nodes send download callbacks.
    pub ads_callback_url: String,
    /// `auto` delivery goes alternate above this size.
    pub alternate_threshold: u64,
    pub fallback_to_dm: bool,
    /// In-band deliveries a job may start before it fails (a device that drops every
    /// session must not keep the job, and its session slot, busy forever).
    pub max_delivery_attempts: u32,
    pub ticket_ttl_secs: u64,
    /// Delivery of jobs the device asks for (alternative flows 1).
    pub default_delivery: String,
}

#[derive(Debug, Clone)]
enum Pending {
    GetDetail { job: String },
    GetInventory { job: String },
    Chunk { job: String, last: bool },
    Exec { job: String },
}

#[derive(Debug)]
struct Delivery {
    job: String,
    sha256: String,
    chunks: Vec<Chunk>,
    next: usize,
    /// The device acknowledged the previous chunk; the next may go.
    ready: bool,
}

#[derive(Debug)]
struct Session {
    device: String,
    session_id: String,
    authenticated: bool,
    next_in: u32,
    next_out: u32,
    next_cmd: u32,
    max_msg: u64,
    max_obj: u64,
    outstanding: HashMap<u32, Pending>,
    delivery: Option<Delivery>,
    devinfo_seen: bool,
    last_seen: Instant,
    /// Where this message came from: the failed-auth backoff is per device and address, so
    /// a guesser elsewhere cannot lock the real device out.
    peer: Option<IpAddr>,
}

impl Session {
    fn cmd_id(&mut self) -> u32 {
        let id = self.next_cmd;
        self.next_cmd += 1;
        id
    }
}

/// The session engine. Cheap to share behind an `Arc`.
pub struct Engine {
    store: DmsStore,
    cfg: EngineConfig,
    ads: Arc<AdsPool>,
    sessions: Mutex<HashMap<(String, String), Session>>,
    wake: Arc<Notify>,
    auth_throttle: AuthThrottle,
}

fn step(job: &mut Job, name: &str, detail: Option<String>) {
    job.timeline.push(Step {
        step: name.to_string(),
        at_ms: now_ms(),
        detail,
    });
    job.updated_at_ms = now_ms();
}

fn has_step(job: &Job, name: &str) -> bool {
    job.timeline.iter().any(|s| s.step == name)
}

/// Node id of a component on the device (SCOMO `<X>`): its name, made path-safe.
pub fn node_id(component: &str) -> String {
    component
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn status_for(cmd: &Command, msg_ref: u32, code: StatusCode) -> Status {
    let target_refs = cmd
        .items()
        .iter()
        .filter_map(|i| i.target.as_ref().map(|t| t.uri.clone()))
        .take(1)
        .collect();
    Status {
        msg_ref,
        cmd_ref: cmd.cmd_id(),
        cmd: cmd.name().to_string(),
        target_refs,
        code: code.code(),
        ..Status::default()
    }
}

fn tag(data: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let s = data.find(&open)? + open.len();
    let e = data[s..].find(&close)? + s;
    Some(data[s..e].trim().to_string())
}

impl Engine {
    pub fn new(
        store: DmsStore,
        cfg: EngineConfig,
        ads: Arc<AdsPool>,
        wake: Arc<Notify>,
        auth_throttle: AuthThrottle,
    ) -> Self {
        Self {
            store,
            cfg,
            ads,
            sessions: Mutex::new(HashMap::new()),
            wake,
            auth_throttle,
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the device has a live session (then it needs no notification).
    pub fn in_session(&self, device: &str) -> bool {
        let timeout = self.cfg.session_timeout;
        self.sessions()
            .values()
            .any(|s| s.device == device && s.last_seen.elapsed() < timeout)
    }

    /// Drops sessions idle past the timeout.
    pub fn expire_sessions(&self) {
        let timeout = self.cfg.session_timeout;
        self.sessions()
            .retain(|_, s| s.last_seen.elapsed() < timeout);
    }

    fn header_for(&self, s_id: &str, device: &str, msg_id: u32) -> Header {
        Header {
            session_id: s_id.to_string(),
            msg_id,
            target: Location::uri(device),
            source: Location::uri(&self.cfg.dm_url),
            ..Header::default()
        }
    }

    fn hdr_status(in_hdr: &Header, code: StatusCode, chal: Option<Meta>) -> Status {
        Status {
            cmd_id: 1,
            msg_ref: in_hdr.msg_id,
            cmd_ref: 0,
            cmd: "SyncHdr".into(),
            target_refs: vec![in_hdr.target.uri.clone()],
            source_refs: vec![in_hdr.source.uri.clone()],
            chal,
            code: code.code(),
            ..Status::default()
        }
    }

    /// A one-status answer that leaves the session as it was.
    fn error_reply(&self, in_hdr: &Header, code: StatusCode, why: &str) -> String {
        let mut st = Self::hdr_status(in_hdr, code, None);
        st.items = vec![Item::default().with_data(why)];
        let m = Message {
            header: self.header_for(&in_hdr.session_id, &in_hdr.source.uri, 1),
            commands: vec![Command::Status(st)],
            final_: true,
        };
        codec::encode(&m)
    }

    fn chal(nonce_b64: &str) -> Meta {
        Meta {
            type_: Some(auth::AUTH_MD5.into()),
            format: Some("b64".into()),
            next_nonce: Some(nonce_b64.to_string()),
            ..Meta::default()
        }
    }

    fn throttle_key(device: &str, peer: Option<IpAddr>) -> String {
        match peer {
            Some(ip) => format!("{device}@{ip}"),
            None => device.to_string(),
        }
    }

    /// Handles one message from a device at `peer`; returns the XML answer.
    pub async fn handle(&self, body: &[u8], peer: Option<IpAddr>) -> Result<String, EngineError> {
        let msg = match codec::decode(body, &self.cfg.limits) {
            Ok(m) => m,
            Err(e) => {
                // The body is bad but perhaps the header is not: answer in SyncML, session
                // untouched, so the device can send a good message next.
                let hdr = codec::decode_header(body, &self.cfg.limits)
                    .map_err(|_| EngineError::Undecodable(e.clone()))?;
                let code = match e {
                    CodecError::TooLarge { .. } => StatusCode::RequestEntityTooLarge,
                    CodecError::UnknownCommand(_) => StatusCode::OptionalFeatureNotSupported,
                    _ => StatusCode::BadRequest,
                };
                tracing::info!(device = %hdr.source.uri, error = %e, "malformed SyncML message");
                return Ok(self.error_reply(&hdr, code, &e.to_string()));
            }
        };
        let device = msg.header.source.uri.clone();
        self.auth_throttle
            .check(&Self::throttle_key(&device, peer))
            .map_err(EngineError::Backoff)?;
        let key = (device.clone(), msg.header.session_id.clone());
        let taken = self.sessions().remove(&key);
        let taken = taken.filter(|s| s.last_seen.elapsed() < self.cfg.session_timeout);
        let mut s = match taken {
            Some(s) => s,
            None if msg.header.msg_id == 1 => Session {
                device: device.clone(),
                session_id: msg.header.session_id.clone(),
                authenticated: false,
                next_in: 1,
                next_out: 1,
                next_cmd: 1,
                max_msg: msg.header.meta.max_msg_size.unwrap_or(16 * 1024),
                max_obj: msg.header.meta.max_obj_size.unwrap_or(1 << 20),
                outstanding: HashMap::new(),
                delivery: None,
                devinfo_seen: false,
                last_seen: Instant::now(),
                peer,
            },
            None => {
                return Ok(self.error_reply(
                    &msg.header,
                    StatusCode::BadRequest,
                    "unknown or expired session; start a new one with MsgID 1",
                ))
            }
        };
        if msg.header.msg_id != s.next_in {
            let why = format!(
                "MsgID {} out of order (expected {})",
                msg.header.msg_id, s.next_in
            );
            let reply = self.error_reply(&msg.header, StatusCode::BadRequest, &why);
            self.sessions().insert(key, s);
            return Ok(reply);
        }
        s.next_in += 1;
        s.last_seen = Instant::now();
        s.peer = peer;
        let result = self.process(&mut s, &msg).await;
        match result {
            Ok((reply, keep)) => {
                if keep {
                    self.sessions().insert(key, s);
                }
                Ok(reply)
            }
            Err(e) => {
                // Keep the session: a storage hiccup should not cost the device its session.
                self.sessions().insert(key, s);
                Err(e)
            }
        }
    }

    async fn authenticate(&self, s: &mut Session, msg: &Message) -> Result<Status, EngineError> {
        let id = s.device.clone();
        let throttle_key = Self::throttle_key(&s.device, s.peer);
        let Some(dev) = self.store.run(move |st| st.device(&id)).await? else {
            // Probing for device ids counts as a failed attempt too.
            self.auth_throttle.failed(&throttle_key);
            return Ok(Self::hdr_status(&msg.header, StatusCode::Forbidden, None));
        };
        let new_nonce = auth::encode_nonce(&auth::new_nonce());
        let (code, ok) = match &msg.header.cred {
            None => (StatusCode::MissingCredentials, false),
            Some(c) => {
                let kind = c.meta.type_.as_deref().unwrap_or(auth::AUTH_BASIC);
                let ok = if kind == auth::AUTH_MD5 {
                    let user = msg.header.source.name.as_deref().unwrap_or(&dev.id);
                    auth::verify_md5(
                        &c.data,
                        user,
                        &dev.password,
                        &auth::decode_nonce(&dev.server_nonce),
                    )
                } else if kind == auth::AUTH_BASIC && (self.cfg.allow_basic || dev.auth == "basic")
                {
                    auth::basic_user(&c.data).is_some_and(|u| {
                        u == dev.id || Some(u.as_str()) == msg.header.source.name.as_deref()
                    }) && auth::verify_basic(
                        &c.data,
                        &auth::basic_user(&c.data).unwrap_or_default(),
                        &dev.password,
                    )
                } else {
                    false
                };
                if ok {
                    (StatusCode::AuthenticationAccepted, true)
                } else {
                    (StatusCode::InvalidCredentials, false)
                }
            }
        };
        // Every answer carries the nonce for the next attempt or session.
        let id = dev.id.clone();
        let nonce = new_nonce.clone();
        self.store
            .run(move |st| {
                st.update_device(&id, |d| {
                    d.server_nonce = nonce;
                    d.last_session_at_ms = Some(now_ms());
                })
            })
            .await?;
        s.authenticated = ok;
        if ok {
            self.auth_throttle.succeeded(&throttle_key);
        } else if code == StatusCode::InvalidCredentials {
            // 407 (no credentials yet) is the normal first step of a challenge, not a guess.
            let backoff = self.auth_throttle.failed(&throttle_key);
            tracing::info!(device = %dev.id, status = code.code(), backoff_ms = backoff.map(|d| d.as_millis() as u64), "device authentication failed");
        }
        Ok(Self::hdr_status(
            &msg.header,
            code,
            Some(Self::chal(&new_nonce)),
        ))
    }

    /// Processes a message; returns the answer and whether the session continues.
    async fn process(&self, s: &mut Session, msg: &Message) -> Result<(String, bool), EngineError> {
        let mut statuses: Vec<Status> = Vec::new();
        if s.authenticated {
            statuses.push(Self::hdr_status(&msg.header, StatusCode::Ok, None));
        } else {
            let st = self.authenticate(s, msg).await?;
            statuses.push(st);
            if !s.authenticated {
                // Keep the session for a retry with the new nonce, but not for an unknown
                // device: strangers must not fill the session table.
                let known = statuses
                    .first()
                    .is_some_and(|st| st.code != StatusCode::Forbidden.code());
                let reply = self.compose(s, statuses, Vec::new(), true);
                return Ok((reply, known));
            }
        }
        let msg_ref = msg.header.msg_id;
        let mut end_requested = false;
        for cmd in &msg.commands {
            match cmd {
                Command::Status(st) => self.on_status(s, st).await?,
                Command::Results(r) => self.on_results(s, r).await?,
                Command::Alert(a) => {
                    let code = match AlertCode::from_code(a.code) {
                        Some(AlertCode::Generic) => {
                            self.on_generic_alert(s, a).await?;
                            StatusCode::Ok
                        }
                        Some(AlertCode::SessionAbort) => {
                            end_requested = true;
                            StatusCode::Ok
                        }
                        Some(
                            AlertCode::ServerInitiated
                            | AlertCode::ClientInitiated
                            | AlertCode::NextMessage,
                        ) => StatusCode::Ok,
                        _ => StatusCode::OptionalFeatureNotSupported,
                    };
                    statuses.push(status_for(cmd, msg_ref, code));
                }
                Command::Replace(r) => {
                    if let Some(info) = DevInfo::from_items(&r.items) {
                        let id = s.device.clone();
                        self.store
                            .run(move |st| st.update_device(&id, |d| d.devinfo = Some(info)))
                            .await?;
                        s.devinfo_seen = true;
                    }
                    statuses.push(status_for(cmd, msg_ref, StatusCode::Ok));
                }
                other => statuses.push(status_for(other, msg_ref, StatusCode::CommandNotAllowed)),
            }
        }
        if end_requested {
            return Ok((self.compose(s, statuses, Vec::new(), true), false));
        }
        if !msg.final_ {
            // The device's package continues: ask for its next message.
            let next = Command::Alert(Alert {
                cmd_id: statuses.len() as u32 + 1,
                code: AlertCode::NextMessage.code(),
                ..Alert::default()
            });
            return Ok((self.compose(s, statuses, vec![next], true), true));
        }
        // Every command we sent was answered in this message or never will be.
        s.outstanding.clear();
        s.next_cmd = statuses.len() as u32 + 1;
        let (commands, final_) = self.drive(s).await?;
        let keep = !commands.is_empty() || !s.outstanding.is_empty();
        Ok((self.compose(s, statuses, commands, final_), keep))
    }

    /// Builds the answer: header, statuses (numbered 1..n), then the commands (numbered from
    /// n+1 by `drive`).
    fn compose(
        &self,
        s: &mut Session,
        statuses: Vec<Status>,
        commands: Vec<Command>,
        final_: bool,
    ) -> String {
        let msg_id = s.next_out;
        s.next_out += 1;
        let mut out: Vec<Command> = statuses
            .into_iter()
            .enumerate()
            .map(|(i, mut st)| {
                st.cmd_id = i as u32 + 1;
                Command::Status(st)
            })
            .collect();
        out.extend(commands);
        let m = Message {
            header: self.header_for(&s.session_id, &s.device, msg_id),
            commands: out,
            final_,
        };
        codec::encode(&m)
    }

    async fn load_job(&self, id: &str) -> Result<Option<Job>, EngineError> {
        let id = id.to_string();
        Ok(self.store.run(move |st| st.job(&id)).await?)
    }

    async fn save_job(&self, job: &Job) -> Result<(), EngineError> {
        let j = job.clone();
        self.store.run(move |st| st.put_job(&j)).await?;
        Ok(())
    }

    /// Ends a job and queues the EMI webhook in the same transaction (seed: "the DMS notifies
    /// the External Management Infrastructure").
    pub async fn finish(
        &self,
        job: &mut Job,
        ok: bool,
        result: Option<u16>,
        reason: Option<String>,
    ) -> Result<(), EngineError> {
        job.state = if ok {
            JobState::Succeeded
        } else {
            JobState::Failed
        };
        job.stage = "done".into();
        job.result_code = result;
        job.reason = reason;
        if self.cfg.emi_url.is_some() {
            step(
                job,
                "emi_notified",
                Some(if ok {
                    "succeeded".into()
                } else {
                    "failed".into()
                }),
            );
        }
        let j = job.clone();
        let url = self.cfg.emi_url.clone();
        self.store
            .run(move |st| st.finish_job(&j, url.as_deref()))
            .await?;
        self.wake.notify_one();
        tracing::info!(job = %job.id, device = %job.device, ok, result, "job finished");
        Ok(())
    }

    async fn on_status(&self, s: &mut Session, st: &Status) -> Result<(), EngineError> {
        if st.cmd_ref == 0 {
            return Ok(());
        }
        let Some(p) = s.outstanding.remove(&st.cmd_ref) else {
            return Ok(());
        };
        let code = st.code;
        match p {
            Pending::GetDetail { ref job } | Pending::GetInventory { ref job } => {
                if StatusCode::is_success(code) {
                    // The Results follow this Status in the same message.
                    s.outstanding.insert(st.cmd_ref, p);
                } else {
                    tracing::info!(%job, code, "device refused a Get; continuing without it");
                }
            }
            Pending::Chunk { job, last } => {
                let Some(mut j) = self.load_job(&job).await? else {
                    return Ok(());
                };
                match (code, last) {
                    (213, false) => {
                        if let Some(d) = s.delivery.as_mut() {
                            d.ready = true;
                        }
                    }
                    (200, true) => {
                        s.delivery = None;
                        j.stage = "acked".into();
                        self.save_job(&j).await?;
                    }
                    _ => {
                        s.delivery = None;
                        let reason =
                            format!("the device rejected the in-band delivery with status {code}");
                        step(&mut j, "device_ack", Some(format!("status {code}")));
                        self.finish(
                            &mut j,
                            false,
                            Some(scomo::ResultCode::DownloadFailed.code()),
                            Some(reason),
                        )
                        .await?;
                    }
                }
            }
            Pending::Exec { job } => {
                let Some(mut j) = self.load_job(&job).await? else {
                    return Ok(());
                };
                if j.state.is_final() {
                    return Ok(());
                }
                match code {
                    202 => {
                        j.stage = "awaiting_result".into();
                        step(&mut j, "operation_accepted", None);
                        self.save_job(&j).await?;
                    }
                    200 => {
                        step(&mut j, "device_result", Some("1200 (synchronous)".into()));
                        self.finish(&mut j, true, Some(1200), None).await?;
                    }
                    _ => {
                        step(&mut j, "device_result", Some(format!("Exec status {code}")));
                        let reason = format!("the device answered the Exec with status {code}");
                        self.finish(
                            &mut j,
                            false,
                            Some(scomo::ResultCode::ClientError.code()),
                            Some(reason),
                        )
                        .await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn on_results(&self, s: &mut Session, r: &Results) -> Result<(), EngineError> {
        let Some(p) = s.outstanding.remove(&r.cmd_ref) else {
            return Ok(());
        };
        let device = s.device.clone();
        match p {
            Pending::GetDetail { job } => {
                let detail = DevDetail::from_items(&r.items);
                if let Some(d) = detail.clone() {
                    self.store
                        .run(move |st| st.update_device(&device, |dev| dev.devdetail = Some(d)))
                        .await?;
                }
                if let Some(mut j) = self.load_job(&job).await? {
                    let fw = detail.map(|d| format!("FwV {}", d.fw_v));
                    step(&mut j, "devdetail", fw);
                    self.save_job(&j).await?;
                }
            }
            Pending::GetInventory { job } => {
                let inv = inventory_json(&r.items);
                let summary = format!(
                    "{} delivered, {} deployed",
                    inv["delivered"].as_object().map_or(0, |o| o.len()),
                    inv["deployed"].as_object().map_or(0, |o| o.len())
                );
                self.store
                    .run(move |st| st.update_device(&device, |dev| dev.inventory = Some(inv)))
                    .await?;
                if let Some(mut j) = self.load_job(&job).await? {
                    step(&mut j, "inventory", Some(summary));
                    self.save_job(&j).await?;
                }
            }
            // A Results for a Chunk or Exec is not expected; the Status carries the outcome.
            other => {
                s.outstanding.insert(r.cmd_ref, other);
            }
        }
        Ok(())
    }

    async fn on_generic_alert(&self, s: &mut Session, a: &Alert) -> Result<(), EngineError> {
        for item in &a.items {
            let kind = item.meta.type_.as_deref().unwrap_or("").trim();
            if kind == scomo::VENDOR_COMPONENT_REQUEST || kind == scomo::VENDOR_OPERATION_REQUEST {
                self.on_device_request(s, kind, item.data.as_deref().unwrap_or(""))
                    .await?;
            }
        }
        for report in scomo::operation_reports(a) {
            let job = match &report.correlator {
                Some(c) => self.load_job(c).await?,
                None => None,
            };
            let job = match job {
                Some(j) => Some(j),
                None => {
                    // No (known) correlator: match on the Exec'd node.
                    let device = s.device.clone();
                    let open = self.store.run(move |st| st.open_jobs(&device)).await?;
                    open.into_iter().find(|j| {
                        report
                            .source
                            .as_deref()
                            .is_some_and(|src| job_exec_path(j) == src)
                    })
                }
            };
            let Some(mut j) = job else {
                tracing::info!(device = %s.device, ?report, "result for no known job");
                continue;
            };
            if j.state.is_final() || j.device != s.device {
                continue;
            }
            step(&mut j, "device_result", Some(report.result.to_string()));
            let alternate = j
                .exec_path
                .as_deref()
                .is_some_and(|p| p.starts_with("./SCOMO/Download/"));
            if report.result == scomo::ResultCode::AlternateDownloadUrlExpired.code()
                && alternate
                && j.retries == 0
            {
                // The URL was spent before the device held every byte (the node counted bytes
                // still in socket buffers when the link dropped) or it expired: one more try
                // with a fresh URL, in this very session.
                j.retries += 1;
                step(
                    &mut j,
                    "download_retry",
                    Some("the device could not use the URL; minting a new one".into()),
                );
                j.stage = "mechanism".into();
                self.save_job(&j).await?;
                continue;
            }
            let ok = scomo::classify(report.result) == scomo::Outcome::Success;
            let reason = (!ok).then(|| {
                let name = scomo::ResultCode::from_code(report.result)
                    .map_or("vendor specific".to_string(), |c| format!("{c:?}"));
                format!(
                    "the device reported SCOMO result {} ({name})",
                    report.result
                )
            });
            self.finish(&mut j, ok, Some(report.result), reason).await?;
        }
        Ok(())
    }

    async fn on_device_request(
        &self,
        s: &mut Session,
        kind: &str,
        data: &str,
    ) -> Result<(), EngineError> {
        let name = tag(data, "Name").unwrap_or_else(|| data.trim().to_string());
        let op = if kind == scomo::VENDOR_COMPONENT_REQUEST {
            match tag(data, "Operation").as_deref() {
                Some("download") => JobOp::Download,
                _ => JobOp::DownloadInstall,
            }
        } else {
            match tag(data, "Operation").as_deref() {
                Some("install") => JobOp::Install,
                Some("install_inactive") => JobOp::InstallInactive,
                Some("remove") => JobOp::Remove,
                Some("activate") => JobOp::Activate,
                Some("deactivate") => JobOp::Deactivate,
                Some("download") => JobOp::Download,
                Some("download_install") => JobOp::DownloadInstall,
                Some("inventory") => JobOp::Inventory,
                other => {
                    tracing::info!(device = %s.device, ?other, "device asked for an unknown operation");
                    return Ok(());
                }
            }
        };
        let inventory_first = tag(data, "InventoryFirst").is_some_and(|v| v == "true");
        let delivery = match tag(data, "Delivery").as_deref() {
            Some(d @ ("dm" | "alternate" | "auto")) => d.to_string(),
            _ => self.cfg.default_delivery.clone(),
        };
        let mut job = new_job(
            &s.device,
            op,
            (!name.is_empty()).then_some(name),
            &delivery,
            inventory_first,
            "device",
        );
        step(&mut job, "device_request", Some(format!("{op:?}")));
        step(&mut job, "session_initiated", Some("by the device".into()));
        tracing::info!(job = %job.id, device = %s.device, ?op, "job requested by the device");
        self.save_job(&job).await
    }

    /// Emits the next commands for the device's jobs. Returns the commands and whether the
    /// message is the last of our package (false while a large object continues).
    async fn drive(&self, s: &mut Session) -> Result<(Vec<Command>, bool), EngineError> {
        let device_id = s.device.clone();
        let jobs = self.store.run(move |st| st.open_jobs(&device_id)).await?;
        let mut out = Vec::new();
        for mut job in jobs {
            if job.stage == "awaiting_result" {
                continue;
            }
            let (cmds, final_) = self.drive_job(s, &mut job).await?;
            if !cmds.is_empty() {
                out.extend(cmds);
                return Ok((out, final_));
            }
        }
        Ok((out, true))
    }

    async fn device(&self, id: &str) -> Result<Option<Device>, EngineError> {
        let id = id.to_string();
        Ok(self.store.run(move |st| st.device(&id)).await?)
    }

    async fn drive_job(
        &self,
        s: &mut Session,
        job: &mut Job,
    ) -> Result<(Vec<Command>, bool), EngineError> {
        loop {
            match job.stage.as_str() {
                "queued" => {
                    job.state = JobState::Running;
                    if !has_step(job, "session_initiated") {
                        step(
                            job,
                            "session_initiated",
                            Some(format!("session {}", s.session_id)),
                        );
                    }
                    if s.devinfo_seen && !has_step(job, "devinfo") {
                        let dev = self.device(&s.device).await?;
                        let d = dev
                            .and_then(|d| d.devinfo)
                            .map(|i| format!("{} {}", i.man, i.model));
                        step(job, "devinfo", d);
                    }
                    if job.inventory_first || job.operation == JobOp::Inventory {
                        let mut cmds = Vec::new();
                        if job.inventory_first {
                            cmds.push(self.get(
                                s,
                                "./DevDetail?list=StructData",
                                Pending::GetDetail {
                                    job: job.id.clone(),
                                },
                            ));
                        }
                        cmds.push(self.get(
                            s,
                            "./SCOMO/Inventory?list=StructData",
                            Pending::GetInventory {
                                job: job.id.clone(),
                            },
                        ));
                        job.stage = "reading".into();
                        self.save_job(job).await?;
                        return Ok((cmds, true));
                    }
                    job.stage = if job.operation.is_delivery() {
                        "choose"
                    } else {
                        "exec"
                    }
                    .into();
                }
                "reading" => {
                    if job.operation == JobOp::Inventory {
                        self.finish(job, true, Some(1200), None).await?;
                        return Ok((Vec::new(), true));
                    }
                    job.stage = if job.operation.is_delivery() {
                        "choose"
                    } else {
                        "exec"
                    }
                    .into();
                }
                "choose" => {
                    let Some(name) = job.component.clone() else {
                        self.finish(job, false, None, Some("the job names no component".into()))
                            .await?;
                        return Ok((Vec::new(), true));
                    };
                    let dev = self.device(&s.device).await?.unwrap_or_default();
                    let Some(info) = dev.devinfo.clone() else {
                        self.finish(
                            job,
                            false,
                            None,
                            Some("the device never sent its DevInfo".into()),
                        )
                        .await?;
                        return Ok((Vec::new(), true));
                    };
                    let builds = self.store.run(|st| st.builds()).await?;
                    let needs_fw = builds.iter().any(|b| b.name == name && b.needs_firmware());
                    if needs_fw && dev.devdetail.is_none() && !has_step(job, "devdetail") {
                        // Some builds depend on the firmware version: read DevDetail first.
                        let cmd = self.get(
                            s,
                            "./DevDetail?list=StructData",
                            Pending::GetDetail {
                                job: job.id.clone(),
                            },
                        );
                        job.stage = "choose".into();
                        self.save_job(job).await?;
                        return Ok((vec![cmd], true));
                    }
                    match catalog::choose(&builds, &name, &info, dev.devdetail.as_ref()) {
                        Ok(b) => {
                            step(
                                job,
                                "build_chosen",
                                Some(format!(
                                    "{} {} ({})",
                                    b.name,
                                    b.version,
                                    &b.id[..12.min(b.id.len())]
                                )),
                            );
                            job.chosen_build = Some(b.id.clone());
                            job.stage = "mechanism".into();
                        }
                        Err(e) => {
                            step(job, "build_chosen", Some("none".into()));
                            self.finish(job, false, None, Some(e.to_string())).await?;
                            return Ok((Vec::new(), true));
                        }
                    }
                }
                "mechanism" => {
                    // Seed 5.4.2 step 5: choose the download mechanism.
                    let builds = self.store.run(|st| st.builds()).await?;
                    let Some(build) = builds
                        .into_iter()
                        .find(|b| Some(&b.id) == job.chosen_build.as_ref())
                    else {
                        job.stage = "choose".into();
                        continue;
                    };
                    let alternate = match job.delivery.as_str() {
                        "alternate" => true,
                        "auto" => build.size > self.cfg.alternate_threshold && !self.ads.is_empty(),
                        _ => false,
                    };
                    if !alternate {
                        step(job, "mechanism_chosen", Some("in-band over DM".into()));
                        job.stage = "deliver".into();
                        continue;
                    }
                    if let Some(cmds) = self.prepare_alternate(s, job, &build).await? {
                        return Ok((cmds, true));
                    }
                    if self.cfg.fallback_to_dm && build.size <= s.max_obj {
                        step(
                            job,
                            "mechanism_chosen",
                            Some("in-band over DM (no ADS node available)".into()),
                        );
                        job.stage = "deliver".into();
                        continue;
                    }
                    self.finish(
                        job,
                        false,
                        Some(scomo::ResultCode::AlternateDownloadServerUnavailable.code()),
                        Some("no ADS node is available for alternate delivery".into()),
                    )
                    .await?;
                    return Ok((Vec::new(), true));
                }
                "deliver" => return self.start_delivery(s, job).await,
                "delivering" => {
                    match s.delivery.as_ref() {
                        Some(d) if d.job == job.id && d.ready => return Ok(self.next_chunk(s, job)),
                        Some(d) if d.job == job.id => return Ok((Vec::new(), true)),
                        // A new session after a drop: start the object over.
                        _ => job.stage = "deliver".into(),
                    }
                }
                "acked" => {
                    step(job, "device_ack", Some("delivery acknowledged".into()));
                    if job.operation == JobOp::Download {
                        self.finish(job, true, Some(1200), None).await?;
                        return Ok((Vec::new(), true));
                    }
                    job.stage = "exec".into();
                }
                "exec" | "exec_sent" => {
                    let path = job_exec_path(job);
                    let cmd_id = s.cmd_id();
                    s.outstanding.insert(
                        cmd_id,
                        Pending::Exec {
                            job: job.id.clone(),
                        },
                    );
                    let cmd = Command::Exec(Exec {
                        cmd_id,
                        correlator: Some(job.id.clone()),
                        items: vec![Item::target(path.clone())],
                        ..Exec::default()
                    });
                    step(job, "operation_requested", Some(path));
                    job.stage = "exec_sent".into();
                    self.save_job(job).await?;
                    return Ok((vec![cmd], true));
                }
                _ => return Ok((Vec::new(), true)),
            }
        }
    }

    /// Puts the build on a healthy ADS node (if it lacks it), mints a one-time URL and returns
    /// the commands that hand it to the device: a Replace of the Download node (URL, expected
    /// digests) and the Exec of its operation. `None` when no node could serve.
    async fn prepare_alternate(
        &self,
        s: &mut Session,
        job: &mut Job,
        build: &Build,
    ) -> Result<Option<Vec<Command>>, EngineError> {
        let path = self.store.build_path(&build.id);
        for _ in 0..self.ads.nodes.len() {
            let Some(node) = self.ads.pick() else {
                break;
            };
            let minted = async {
                node.ensure_published(&build.id, &build.name, &build.version, &path)
                    .await?;
                node.mint(
                    &build.id,
                    &s.device,
                    &self.cfg.ads_callback_url,
                    serde_json::json!({"job": job.id, "device": s.device}),
                    self.cfg.ticket_ttl_secs,
                )
                .await
            }
            .await;
            let ticket = match minted {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(node = %node.name, error = %e, "ADS node failed; trying another");
                    node.healthy
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
            };
            step(
                job,
                "mechanism_chosen",
                Some(format!("alternate download via ADS {}", node.name)),
            );
            step(
                job,
                "ticket_minted",
                Some(format!("ticket {} on {}", ticket.id, node.name)),
            );
            let pkg = node_id(&build.name);
            let dl = scomo::download_node(&pkg);
            let leaf = |k: &str, v: &str| {
                Item::target(format!("{dl}/{k}"))
                    .with_meta(Meta::format("chr"))
                    .with_data(v)
            };
            let replace = Command::Replace(ItemCommand {
                cmd_id: s.cmd_id(),
                items: vec![
                    leaf("PkgID", &pkg),
                    leaf("Name", &build.name),
                    leaf("PkgURL", &ticket.url),
                    leaf("PkgType", "application/octet-stream"),
                    // Our digests, not the ADS's: the device checks what it got against the DMS.
                    leaf("Ext/Blake3", &build.id),
                    leaf("Ext/Sha256", &build.sha256),
                ],
                ..ItemCommand::default()
            });
            let op = if job.operation == JobOp::DownloadInstall {
                Operation::DownloadInstall
            } else {
                Operation::Download
            };
            let exec_path = scomo::operation_node(&dl, op);
            let cmd_id = s.cmd_id();
            s.outstanding.insert(
                cmd_id,
                Pending::Exec {
                    job: job.id.clone(),
                },
            );
            let exec = Command::Exec(Exec {
                cmd_id,
                correlator: Some(job.id.clone()),
                items: vec![Item::target(exec_path.clone())],
                ..Exec::default()
            });
            step(job, "download_requested", Some(exec_path.clone()));
            job.exec_path = Some(exec_path);
            job.stage = "exec_sent".into();
            self.save_job(job).await?;
            return Ok(Some(vec![replace, exec]));
        }
        Ok(None)
    }

    /// Records an ADS callback on its job's timeline (once per event id). A download that
    /// ended without completing fails a job still waiting for the device.
    pub async fn on_ads_callback(&self, payload: &serde_json::Value) -> Result<(), EngineError> {
        let Some(job_id) = payload["context"]["job"].as_str().map(String::from) else {
            return Ok(());
        };
        let event_id = payload["event_id"].as_str().unwrap_or("").to_string();
        let kind = payload["event"].as_str().unwrap_or("");
        let name = match kind {
            "download.completed" => "ads_download_completed",
            "download.expired" => "ads_download_expired",
            "download.revoked" => "ads_download_revoked",
            _ => return Ok(()),
        };
        let detail = format!(
            "{} bytes sent in {} request(s) by {}",
            payload["bytes_sent"],
            payload["requests"],
            payload["node"].as_str().unwrap_or("?")
        );
        let st = Step {
            step: name.to_string(),
            at_ms: now_ms(),
            detail: Some(detail),
        };
        let (j, e) = (job_id.clone(), event_id.clone());
        let fresh = self
            .store
            .run(move |store| store.add_ads_event(&j, &e, &st))
            .await?;
        if !fresh || kind == "download.completed" {
            return Ok(());
        }
        if let Some(mut job) = self.load_job(&job_id).await? {
            if !job.state.is_final() && job.stage == "awaiting_result" {
                let reason = format!(
                    "the ADS reports the download {}",
                    kind.trim_start_matches("download.")
                );
                self.finish(
                    &mut job,
                    false,
                    Some(scomo::ResultCode::AlternateDownloadUrlExpired.code()),
                    Some(reason),
                )
                .await?;
            }
        }
        Ok(())
    }

    fn get(&self, s: &mut Session, uri: &str, p: Pending) -> Command {
        let cmd_id = s.cmd_id();
        s.outstanding.insert(cmd_id, p);
        Command::Get(ItemCommand {
            cmd_id,
            items: vec![Item::target(uri)],
            ..ItemCommand::default()
        })
    }

    async fn start_delivery(
        &self,
        s: &mut Session,
        job: &mut Job,
    ) -> Result<(Vec<Command>, bool), EngineError> {
        let Some(build_id) = job.chosen_build.clone() else {
            job.stage = "choose".into();
            return Ok((Vec::new(), true));
        };
        let builds = self.store.run(|st| st.builds()).await?;
        let Some(build) = builds.into_iter().find(|b| b.id == build_id) else {
            self.finish(
                job,
                false,
                None,
                Some("the chosen build left the catalog".into()),
            )
            .await?;
            return Ok((Vec::new(), true));
        };
        if build.size > s.max_obj {
            let reason = format!(
                "the component ({} bytes) exceeds the device's MaxObjSize ({} bytes); use alternate delivery",
                build.size, s.max_obj
            );
            self.finish(
                job,
                false,
                Some(scomo::ResultCode::DownloadFailedOutOfMemory.code()),
                Some(reason),
            )
            .await?;
            return Ok((Vec::new(), true));
        }
        let attempts = job.timeline.iter().filter(|t| t.step == "delivery").count();
        if attempts >= self.cfg.max_delivery_attempts as usize {
            let reason = format!(
                "the in-band delivery started {attempts} times and never completed; the device \
                 keeps dropping the session (max_delivery_attempts)"
            );
            self.finish(job, false, None, Some(reason)).await?;
            return Ok((Vec::new(), true));
        }
        let path = self.store.build_path(&build.id);
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|source| DmsStoreError::Io { path, source })?;
        // Leave room for the header, statuses and item markup around the chunk.
        let budget = (s.max_msg as usize).saturating_sub(2048).max(1024);
        let chunks = large_object::split_b64(&bytes, large_object::raw_per_chunk(budget));
        step(
            job,
            "delivery",
            Some(format!(
                "{} bytes over DM in {} message(s)",
                bytes.len(),
                chunks.len()
            )),
        );
        job.stage = "delivering".into();
        self.save_job(job).await?;
        s.delivery = Some(Delivery {
            job: job.id.clone(),
            sha256: build.sha256.clone(),
            chunks,
            next: 0,
            ready: true,
        });
        Ok(self.next_chunk(s, job))
    }

    fn next_chunk(&self, s: &mut Session, job: &Job) -> (Vec<Command>, bool) {
        let Some(d) = s.delivery.as_mut() else {
            return (Vec::new(), true);
        };
        let Some(chunk) = d.chunks.get(d.next).cloned() else {
            return (Vec::new(), true);
        };
        let sha256 = d.sha256.clone();
        let first = d.next == 0;
        d.next += 1;
        d.ready = false;
        let node = scomo::delivered_node(&node_id(job.component.as_deref().unwrap_or("component")));
        let mut items = Vec::new();
        if first {
            let pkg = node_id(job.component.as_deref().unwrap_or("component"));
            items.push(
                Item::target(format!("{node}/PkgID"))
                    .with_meta(Meta::format("chr"))
                    .with_data(pkg.clone()),
            );
            items.push(
                Item::target(format!("{node}/Name"))
                    .with_meta(Meta::format("chr"))
                    .with_data(job.component.clone().unwrap_or_default()),
            );
            // SCOMO 1.0 has no hash node; ours is Ext/Sha256 (see OMA-DM-NOTES.md §6).
            items.push(
                Item::target(format!("{node}/Ext/Sha256"))
                    .with_meta(Meta::format("chr"))
                    .with_data(sha256),
            );
        }
        items.push(Item {
            target: Some(Location::uri(format!("{node}/Data"))),
            meta: Meta {
                format: Some("b64".into()),
                type_: Some("application/octet-stream".into()),
                size: chunk.size,
                ..Meta::default()
            },
            data: Some(chunk.data),
            more_data: chunk.more,
            ..Item::default()
        });
        let cmd_id = s.cmd_id();
        s.outstanding.insert(
            cmd_id,
            Pending::Chunk {
                job: job.id.clone(),
                last: !chunk.more,
            },
        );
        let cmd = Command::Replace(ItemCommand {
            cmd_id,
            items,
            ..ItemCommand::default()
        });
        (vec![cmd], !chunk.more)
    }
}

/// The Operations node a job Execs.
pub fn job_exec_path(job: &Job) -> String {
    if let Some(p) = &job.exec_path {
        return p.clone();
    }
    let id = node_id(job.component.as_deref().unwrap_or("component"));
    let (node, op) = match job.operation {
        JobOp::Download | JobOp::DownloadInstall | JobOp::Install => {
            (scomo::delivered_node(&id), Operation::Install)
        }
        JobOp::InstallInactive => (scomo::delivered_node(&id), Operation::InstallInactive),
        JobOp::Remove => (scomo::deployed_node(&id), Operation::Remove),
        JobOp::Activate => (scomo::deployed_node(&id), Operation::Activate),
        JobOp::Deactivate => (scomo::deployed_node(&id), Operation::Deactivate),
        JobOp::Inventory => (scomo::ROOT.to_string(), Operation::Install),
    };
    scomo::operation_node(&node, op)
}

/// Summarizes a `Get ./SCOMO/Inventory?list=StructData` answer: components by node id with
/// their leaf values.
fn inventory_json(items: &[Item]) -> serde_json::Value {
    let mut delivered = serde_json::Map::new();
    let mut deployed = serde_json::Map::new();
    for i in items {
        let Some(src) = i.source.as_ref() else {
            continue;
        };
        let Some(data) = i.data.as_ref() else {
            continue;
        };
        for (prefix, map) in [
            ("./SCOMO/Inventory/Delivered/", &mut delivered),
            ("./SCOMO/Inventory/Deployed/", &mut deployed),
        ] {
            if let Some(rest) = src.uri.strip_prefix(prefix) {
                if let Some((id, leaf)) = rest.split_once('/') {
                    if !leaf.contains('/') {
                        let entry = map
                            .entry(id.to_string())
                            .or_insert_with(|| serde_json::json!({}));
                        entry[leaf] = serde_json::Value::from(data.clone());
                    }
                }
            }
        }
    }
    serde_json::json!({"delivered": delivered, "deployed": deployed})
}

/// A new queued job.
pub fn new_job(
    device: &str,
    op: JobOp,
    component: Option<String>,
    delivery: &str,
    inventory_first: bool,
    source: &str,
) -> Job {
    let now = now_ms();
    Job {
        id: format!("job-{:016x}", rand::random::<u64>()),
        device: device.to_string(),
        operation: op,
        component,
        delivery: delivery.to_string(),
        inventory_first,
        source: source.to_string(),
        state: JobState::Queued,
        stage: "queued".into(),
        result_code: None,
        reason: None,
        chosen_build: None,
        created_at_ms: now,
        updated_at_ms: now,
        timeline: Vec::new(),
        exec_path: None,
        retries: 0,
    }
}
