//! The DM client: sessions with the DMS, the commands it answers from its tree, the simulated
//! SCOMO operations, and the package 0 listener.
//!
//! Sessions are serialized per agent (one at a time, as on a real device). Operations Exec'd by
//! the server are answered 202 and performed after the session; their results are reported in a
//! new client-initiated session (Alert 1201 + Generic Alert 1226) and kept in the state file
//! until the server acknowledges them with 200.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::Digest;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::state::{DeviceState, PendingReport};
use crate::scomo::{self, DeliveredState, DeployedState, Operation, ResultCode};
use crate::syncml::auth;
use crate::syncml::codec::{self, Limits};
use crate::syncml::codes::{AlertCode, StatusCode};
use crate::syncml::large_object::{Progress, Reassembly};
use crate::syncml::message::*;
use crate::syncml::pkg0;
use crate::syncml::tree::{DevDetail, DevInfo, Tree};

/// Failure paths made testable.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Installs fail with 1405.
    pub fail_install: bool,
    /// A byte of every delivered object is flipped on arrival (validation then fails: 1407).
    pub corrupt_delivered: bool,
    /// Drop the connection (stop answering) after sending this many messages in a session.
    pub drop_after_messages: Option<u32>,
    /// How many sessions to drop that way in all (0 counts as 1).
    pub drop_sessions: u32,
    /// Cut alternate downloads this many times in all (each must resume).
    pub interrupt_downloads: u32,
}

/// The agent's settings.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    pub id: String,
    pub password: String,
    pub server_id: String,
    pub server_password: String,
    /// `md5` or `basic`.
    pub auth: String,
    pub dms_url: String,
    /// Extra CAs to trust (the DMS's and ADS nodes' generated certificates).
    pub ca_certs: Vec<PathBuf>,
    /// State file; delivered objects are kept beside it.
    pub state_path: PathBuf,
    pub info: DevInfo,
    pub detail: DevDetail,
    pub max_msg_size: u64,
    pub max_obj_size: u64,
    pub faults: Faults,
}

/// Agent failures.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot reach the DMS: {0}")]
    Http(#[from] reqwest::Error),
    #[error("the DMS answered HTTP {0}")]
    HttpStatus(u16),
    #[error("the DMS sent an undecodable message: {0}")]
    Decode(#[from] codec::CodecError),
    #[error("the DMS refused our credentials (status {0})")]
    AuthFailed(u16),
    #[error("state file {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the connection was dropped (fault injection)")]
    Dropped,
    #[error("the session did not end after {0} messages")]
    Runaway(u32),
    #[error("package 0 refused: {0}")]
    Notification(#[from] pkg0::Pkg0Error),
    #[error(transparent)]
    Trust(#[from] crate::net::tls::TrustError),
}

/// What opens a session.
#[derive(Clone, Debug)]
pub enum Trigger {
    /// Package 0 told us to open this session.
    Server { session_id: String },
    /// We open it ourselves, with these request alerts (may be empty when only reporting).
    Client { requests: Vec<Item> },
}

/// An operation the server Exec'd, performed after the session.
#[derive(Clone, Debug)]
struct QueuedOp {
    correlator: Option<String>,
    exec_path: String,
    node: String,
    op: Operation,
}

/// The device agent.
pub struct Agent {
    pub cfg: DeviceConfig,
    http: reqwest::Client,
    state: Mutex<DeviceState>,
    /// Held for the length of a session: one session at a time.
    session_lock: Mutex<()>,
    /// Download cuts still to inject.
    cuts_left: Arc<std::sync::atomic::AtomicU32>,
}

const INITIAL_NONCE: &str = "AAAAAA==";

fn objects_dir(state_path: &Path) -> PathBuf {
    let mut p = state_path.to_path_buf();
    p.set_extension("objects");
    p
}

impl Agent {
    /// Loads (or initializes) the device's state and builds its HTTP client.
    pub fn new(cfg: DeviceConfig) -> Result<Arc<Self>, DeviceError> {
        let state_err = |source| DeviceError::State {
            path: cfg.state_path.clone(),
            source,
        };
        let mut state = DeviceState::load(&cfg.state_path)
            .map_err(state_err)?
            .unwrap_or_else(|| DeviceState {
                tree: Tree::new(),
                server_nonce: INITIAL_NONCE.into(),
                client_nonce: INITIAL_NONCE.into(),
                ..DeviceState::default()
            });
        // DevInfo and DevDetail describe this device as configured now.
        let _ = cfg.info.write(&mut state.tree);
        let _ = cfg.detail.write(&mut state.tree);
        let _ = state.tree.add_interior("./SCOMO/Download");
        let _ = state.tree.add_interior("./SCOMO/Inventory/Delivered");
        let _ = state.tree.add_interior("./SCOMO/Inventory/Deployed");
        let builder =
            crate::net::tls::trust(reqwest::Client::builder().use_rustls_tls(), &cfg.ca_certs)?;
        let http = builder
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        Ok(Arc::new(Self {
            cuts_left: Arc::new(std::sync::atomic::AtomicU32::new(
                cfg.faults.interrupt_downloads,
            )),
            cfg,
            http,
            state: Mutex::new(state),
            session_lock: Mutex::new(()),
        }))
    }

    /// A copy of the device's current tree (for tests and status output).
    pub async fn tree(&self) -> Tree {
        self.state.lock().await.tree.clone()
    }

    /// Results not yet acknowledged by the server.
    pub async fn pending_reports(&self) -> Vec<PendingReport> {
        self.state.lock().await.pending_reports.clone()
    }

    async fn save(&self) -> Result<(), DeviceError> {
        let st = self.state.lock().await.clone();
        st.save(&self.cfg.state_path)
            .map_err(|source| DeviceError::State {
                path: self.cfg.state_path.clone(),
                source,
            })
    }

    /// Verifies a package 0 and runs the session it asks for.
    pub async fn on_notification(
        self: &Arc<Self>,
        bytes: &[u8],
    ) -> Result<pkg0::Notification, DeviceError> {
        let client_nonce = auth::decode_nonce(&self.state.lock().await.client_nonce);
        // Clients retry with a reset nonce; field implementations disagree on its form.
        let n = pkg0::verify(
            bytes,
            &self.cfg.server_id,
            &self.cfg.server_password,
            &[&client_nonce, &[0, 0, 0, 0], b"0x00000000"],
        )?;
        Ok(n)
    }

    /// Asks the DMS for a component (alternative flow 1 of 5.4.1 / 5.4.2).
    pub async fn request_component(
        self: &Arc<Self>,
        name: &str,
        inventory_first: bool,
    ) -> Result<(), DeviceError> {
        self.request_component_via(name, inventory_first, None)
            .await
    }

    /// Like [`Agent::request_component`], asking for a delivery mechanism (`dm`, `alternate`).
    pub async fn request_component_via(
        self: &Arc<Self>,
        name: &str,
        inventory_first: bool,
        delivery: Option<&str>,
    ) -> Result<(), DeviceError> {
        let mut data = format!("<Name>{}</Name>", quick_xml::escape::escape(name));
        if let Some(d) = delivery {
            data.push_str(&format!(
                "<Delivery>{}</Delivery>",
                quick_xml::escape::escape(d)
            ));
        }
        self.vendor_request(scomo::VENDOR_COMPONENT_REQUEST, data, inventory_first)
            .await
    }

    /// Asks the DMS for an operation on a component (alternative flow 1 of 5.4.3).
    pub async fn request_operation(
        self: &Arc<Self>,
        op: &str,
        name: &str,
        inventory_first: bool,
    ) -> Result<(), DeviceError> {
        let data = format!(
            "<Operation>{}</Operation><Name>{}</Name>",
            quick_xml::escape::escape(op),
            quick_xml::escape::escape(name)
        );
        self.vendor_request(scomo::VENDOR_OPERATION_REQUEST, data, inventory_first)
            .await
    }

    /// Opens a session carrying one of our vendor Generic Alerts.
    async fn vendor_request(
        self: &Arc<Self>,
        kind: &str,
        mut data: String,
        inventory_first: bool,
    ) -> Result<(), DeviceError> {
        if inventory_first {
            data.push_str("<InventoryFirst>true</InventoryFirst>");
        }
        let item = Item {
            meta: Meta {
                type_: Some(kind.into()),
                format: Some("xml".into()),
                ..Meta::default()
            },
            data: Some(data),
            ..Item::default()
        };
        self.run(Trigger::Client {
            requests: vec![item],
        })
        .await
    }

    /// Runs a session, then performs what it asked for and reports the results in follow-up
    /// sessions until nothing is left to report.
    pub async fn run(self: &Arc<Self>, trigger: Trigger) -> Result<(), DeviceError> {
        let _one = self.session_lock.lock().await;
        let ops = self.session(trigger).await?;
        self.perform(ops).await?;
        // Report results (retried in later sessions if this one fails).
        for _ in 0..3 {
            if self.state.lock().await.pending_reports.is_empty() {
                break;
            }
            let ops = self
                .session(Trigger::Client {
                    requests: Vec::new(),
                })
                .await?;
            self.perform(ops).await?;
        }
        Ok(())
    }

    fn cred(&self, st: &DeviceState) -> Cred {
        if self.cfg.auth == "basic" {
            return Cred {
                meta: Meta {
                    type_: Some(auth::AUTH_BASIC.into()),
                    format: Some("b64".into()),
                    ..Meta::default()
                },
                data: auth::basic(&self.cfg.id, &self.cfg.password),
            };
        }
        Cred {
            meta: Meta {
                type_: Some(auth::AUTH_MD5.into()),
                format: Some("b64".into()),
                ..Meta::default()
            },
            data: auth::md5_digest(
                &self.cfg.id,
                &self.cfg.password,
                &auth::decode_nonce(&st.server_nonce),
            ),
        }
    }

    async fn post(&self, url: &str, m: &Message) -> Result<Message, DeviceError> {
        let body = codec::encode(m);
        let mut attempts = 0;
        let resp = loop {
            let resp = self
                .http
                .post(url)
                .header("content-type", crate::syncml::CONTENT_TYPE)
                .body(body.clone())
                .send()
                .await?;
            // 429 means the server refused the message before reading it (rate limit or auth
            // backoff): the same message, same MsgID, is still the right one to send.
            if resp.status() != reqwest::StatusCode::TOO_MANY_REQUESTS || attempts == 3 {
                break resp;
            }
            attempts += 1;
            let wait = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(1)
                .min(30);
            tracing::info!(wait_secs = wait, "the DMS asked us to slow down");
            tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
        };
        if !resp.status().is_success() {
            return Err(DeviceError::HttpStatus(resp.status().as_u16()));
        }
        let bytes = resp.bytes().await?;
        Ok(codec::decode(
            &bytes,
            &Limits {
                max_bytes: (self.cfg.max_msg_size as usize).max(64 * 1024) * 4,
                ..Limits::default()
            },
        )?)
    }

    /// One session; returns the operations the server Exec'd.
    async fn session(&self, trigger: Trigger) -> Result<Vec<QueuedOp>, DeviceError> {
        let (session_id, alert, requests) = match trigger {
            Trigger::Server { session_id } => (session_id, AlertCode::ServerInitiated, Vec::new()),
            Trigger::Client { requests } => (
                format!("{:X}", rand::random::<u16>().max(1)),
                AlertCode::ClientInitiated,
                requests,
            ),
        };
        let mut st = self.state.lock().await.clone();
        let mut package1 = vec![Command::Alert(Alert {
            cmd_id: 1,
            code: alert.code(),
            ..Alert::default()
        })];
        package1.push(Command::Replace(ItemCommand {
            cmd_id: 2,
            items: self.cfg.info.items(),
            ..ItemCommand::default()
        }));
        let mut next_cmd = 3u32;
        let mut report_cmds: Vec<(u32, PendingReport)> = Vec::new();
        for r in &st.pending_reports {
            package1.push(Command::Alert(Alert {
                cmd_id: next_cmd,
                correlator: r.correlator.clone(),
                code: AlertCode::Generic.code(),
                items: vec![scomo::operation_complete_item(
                    &r.source,
                    r.target.as_deref(),
                    r.result,
                    r.identifier.as_deref(),
                )],
                ..Alert::default()
            }));
            report_cmds.push((next_cmd, r.clone()));
            next_cmd += 1;
        }
        if !requests.is_empty() {
            package1.push(Command::Alert(Alert {
                cmd_id: next_cmd,
                code: AlertCode::Generic.code(),
                items: requests,
                ..Alert::default()
            }));
        }
        let header = |msg_id: u32, cred: Option<Cred>| Header {
            session_id: session_id.clone(),
            msg_id,
            target: Location::uri(&self.cfg.dms_url),
            source: Location {
                uri: self.cfg.id.clone(),
                name: Some(self.cfg.id.clone()),
            },
            cred,
            meta: Meta {
                max_msg_size: Some(self.cfg.max_msg_size),
                max_obj_size: Some(self.cfg.max_obj_size),
                ..Meta::default()
            },
            ..Header::default()
        };
        let mut msg_id = 1u32;
        let mut out = Message {
            header: header(msg_id, Some(self.cred(&st))),
            commands: package1.clone(),
            final_: true,
        };
        let mut url = self.cfg.dms_url.clone();
        let mut auth_tries = 0;
        let mut authenticated = false;
        let mut ops = Vec::new();
        let mut reassembly: Option<Reassembly> = None;
        let mut sent = 0u32;
        // Enough messages for the largest object we accept in chunks of our message size,
        // twice over (status round trips), plus the session's own traffic; no more.
        let chunks = self.cfg.max_obj_size / self.cfg.max_msg_size.max(1024);
        let max_messages =
            u32::try_from(chunks.saturating_mul(2).saturating_add(200)).unwrap_or(u32::MAX);
        loop {
            if sent >= max_messages {
                return Err(DeviceError::Runaway(sent));
            }
            if let Some(n) = self.cfg.faults.drop_after_messages {
                if sent >= n && st.drops_done < self.cfg.faults.drop_sessions.max(1) {
                    st.drops_done += 1;
                    let mut live = self.state.lock().await;
                    live.drops_done = st.drops_done;
                    drop(live);
                    self.save().await?;
                    tracing::info!(device = %self.cfg.id, "fault injection: dropping the session");
                    return Err(DeviceError::Dropped);
                }
            }
            let reply = self.post(&url, &out).await?;
            sent += 1;
            if let Some(r) = &reply.header.resp_uri {
                url = r.clone();
            }
            // The header's status: authentication.
            let hdr_status = reply.commands.iter().find_map(|c| match c {
                Command::Status(s) if s.cmd_ref == 0 => Some(s.clone()),
                _ => None,
            });
            if let Some(hs) = &hdr_status {
                if let Some(n) = hs.chal.as_ref().and_then(|c| c.next_nonce.clone()) {
                    st.server_nonce = n;
                }
                match hs.code {
                    200 | 212 => authenticated = true,
                    401 | 407 if !authenticated && auth_tries < 2 => {
                        auth_tries += 1;
                        msg_id += 1;
                        out = Message {
                            header: header(msg_id, Some(self.cred(&st))),
                            commands: package1.clone(),
                            final_: true,
                        };
                        continue;
                    }
                    code if !authenticated => {
                        self.state.lock().await.server_nonce = st.server_nonce.clone();
                        self.save().await?;
                        return Err(DeviceError::AuthFailed(code));
                    }
                    _ => {}
                }
            }
            // Acknowledged reports leave the queue.
            for c in &reply.commands {
                if let Command::Status(s) = c {
                    if s.code == 200 && s.msg_ref == 1 {
                        if let Some((_, r)) = report_cmds.iter().find(|(id, _)| *id == s.cmd_ref) {
                            st.pending_reports.retain(|p| p != r);
                        }
                    }
                }
            }
            // Answer the server's commands.
            let mut answers: Vec<Command> = Vec::new();
            let mut needs_reply = false;
            let msg_ref = reply.header.msg_id;
            for c in &reply.commands {
                self.answer(
                    c,
                    msg_ref,
                    &mut st,
                    &mut reassembly,
                    &mut ops,
                    &mut answers,
                    &mut needs_reply,
                );
            }
            if !needs_reply && reply.final_ {
                break;
            }
            if !reply.final_ {
                answers.push(Command::Alert(Alert {
                    code: AlertCode::NextMessage.code(),
                    ..Alert::default()
                }));
            }
            msg_id += 1;
            let mut hdr_ack = Status {
                msg_ref,
                cmd_ref: 0,
                cmd: "SyncHdr".into(),
                target_refs: vec![reply.header.target.uri.clone()],
                source_refs: vec![reply.header.source.uri.clone()],
                code: StatusCode::Ok.code(),
                ..Status::default()
            };
            hdr_ack.cmd_id = 1;
            let mut commands = vec![Command::Status(hdr_ack)];
            commands.extend(answers);
            for (i, c) in commands.iter_mut().enumerate() {
                c.set_cmd_id(i as u32 + 1);
            }
            out = Message {
                header: header(msg_id, None),
                commands,
                final_: true,
            };
        }
        // Commit the session's effects.
        let mut live = self.state.lock().await;
        *live = st;
        drop(live);
        self.save().await?;
        Ok(ops)
    }

    #[allow(clippy::too_many_arguments)]
    fn answer(
        &self,
        c: &Command,
        msg_ref: u32,
        st: &mut DeviceState,
        reassembly: &mut Option<Reassembly>,
        ops: &mut Vec<QueuedOp>,
        out: &mut Vec<Command>,
        needs_reply: &mut bool,
    ) {
        let status = |code: StatusCode| {
            Command::Status(Status {
                msg_ref,
                cmd_ref: c.cmd_id(),
                cmd: c.name().to_string(),
                target_refs: c
                    .items()
                    .iter()
                    .filter_map(|i| i.target.as_ref().map(|t| t.uri.clone()))
                    .take(1)
                    .collect(),
                code: code.code(),
                ..Status::default()
            })
        };
        match c {
            Command::Status(_) | Command::Results(_) => {}
            Command::Alert(_) => {
                *needs_reply = true;
                out.push(status(StatusCode::Ok));
            }
            Command::Get(g) => {
                *needs_reply = true;
                let mut items = Vec::new();
                let mut code = StatusCode::Ok;
                for i in &g.items {
                    let uri = i.target.as_ref().map(|t| t.uri.as_str()).unwrap_or("");
                    match st.tree.get_items(uri) {
                        Ok(found) => items.extend(found),
                        Err(e) => code = e.status(),
                    }
                }
                out.push(status(code));
                if code == StatusCode::Ok {
                    out.push(Command::Results(Results {
                        msg_ref: Some(msg_ref),
                        cmd_ref: g.cmd_id,
                        items,
                        ..Results::default()
                    }));
                }
            }
            Command::Replace(r) | Command::Add(r) => {
                *needs_reply = true;
                let mut code = StatusCode::Ok;
                for i in &r.items {
                    let Some(target) = i.target.as_ref().map(|t| t.uri.clone()) else {
                        code = StatusCode::BadRequest;
                        continue;
                    };
                    let is_data = target.starts_with("./SCOMO/Inventory/Delivered/")
                        && target.ends_with("/Data");
                    if is_data && (i.more_data || reassembly.is_some() || i.meta.size.is_some()) {
                        let progress = match reassembly.as_mut() {
                            Some(r) => r.push(i),
                            None => Reassembly::start(i, self.cfg.max_obj_size).map(|(r, p)| {
                                *reassembly = Some(r);
                                p
                            }),
                        };
                        code = match progress {
                            Ok(Progress::NeedMore) => StatusCode::ChunkAccepted,
                            Ok(Progress::Complete(bytes)) => {
                                *reassembly = None;
                                self.store_delivered(st, &target, bytes)
                            }
                            Err(e) => {
                                *reassembly = None;
                                e.status()
                            }
                        };
                        continue;
                    }
                    let format = i.meta.format.as_deref().unwrap_or("chr");
                    let value = i.data.clone().unwrap_or_default();
                    let res = if format == "node" {
                        st.tree.add_interior(&target)
                    } else {
                        st.tree.set(&target, format, value)
                    };
                    if let Err(e) = res {
                        code = e.status();
                    }
                }
                out.push(status(code));
            }
            Command::Delete(d) => {
                *needs_reply = true;
                let mut code = StatusCode::Ok;
                for i in &d.items {
                    let uri = i.target.as_ref().map(|t| t.uri.as_str()).unwrap_or("");
                    if let Err(e) = st.tree.delete(uri) {
                        code = e.status();
                    }
                }
                out.push(status(code));
            }
            Command::Exec(e) => {
                *needs_reply = true;
                let target = e
                    .items
                    .first()
                    .and_then(|i| i.target.as_ref())
                    .map(|t| t.uri.clone())
                    .unwrap_or_default();
                let code = match scomo::parse_operation_path(&target) {
                    Some((node, op)) if st.tree.get(&node).is_some() => {
                        ops.push(QueuedOp {
                            correlator: e.correlator.clone(),
                            exec_path: target.clone(),
                            node,
                            op,
                        });
                        StatusCode::Accepted
                    }
                    Some(_) => StatusCode::NotFound,
                    None => StatusCode::CommandNotAllowed,
                };
                out.push(status(code));
            }
            Command::Sequence(s) | Command::Atomic(s) => {
                *needs_reply = true;
                out.push(status(StatusCode::Ok));
                for inner in &s.commands {
                    self.answer(inner, msg_ref, st, reassembly, ops, out, needs_reply);
                }
            }
            Command::Copy(_) => {
                *needs_reply = true;
                out.push(status(StatusCode::OptionalFeatureNotSupported));
            }
        }
    }

    /// Keeps a delivered object beside the state file and records it in the tree.
    fn store_delivered(
        &self,
        st: &mut DeviceState,
        data_path: &str,
        mut bytes: Vec<u8>,
    ) -> StatusCode {
        let Some(node) = data_path.strip_suffix("/Data") else {
            return StatusCode::BadRequest;
        };
        let id = node.rsplit('/').next().unwrap_or("pkg").to_string();
        if self.cfg.faults.corrupt_delivered && !bytes.is_empty() {
            bytes[0] ^= 0xff;
        }
        let dir = objects_dir(&self.cfg.state_path);
        if std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::write(dir.join(&id), &bytes))
            .is_err()
        {
            return StatusCode::DeviceFull;
        }
        let pkg = st
            .tree
            .value(&format!("{node}/PkgID"))
            .unwrap_or(&id)
            .to_string();
        let name = st
            .tree
            .value(&format!("{node}/Name"))
            .unwrap_or(&id)
            .to_string();
        if scomo::write_delivered(&mut st.tree, &id, &pkg, &name).is_err() {
            return StatusCode::CommandFailed;
        }
        let _ = st.tree.set(
            &format!("{node}/Data"),
            "bin",
            format!("{} bytes", bytes.len()),
        );
        StatusCode::Ok
    }

    /// Alternate download (5.4.2): fetch `Download/<X>/PkgURL`, verify against the DMS's
    /// `Ext/Blake3`, keep it as `Inventory/Delivered/<X>`; install too for the install variants.
    async fn download(&self, op: &QueuedOp) -> (u16, Option<String>) {
        let id = op.node.rsplit('/').next().unwrap_or("pkg").to_string();
        let (url, blake3, sha256, name) = {
            let mut st = self.state.lock().await;
            let t = &mut st.tree;
            let _ = t.set(
                &format!("{}/Status", op.node),
                "int",
                scomo::DownloadStatus::DownloadProgressing
                    .code()
                    .to_string(),
            );
            let v = |k: &str| t.value(&format!("{}/{k}", op.node)).map(String::from);
            (v("PkgURL"), v("Ext/Blake3"), v("Ext/Sha256"), v("Name"))
        };
        let Some(url) = url else {
            return (ResultCode::DownloadFailed.code(), None);
        };
        let dest = objects_dir(&self.cfg.state_path).join(&id);
        let policy = super::download::FetchPolicy {
            interrupts: self.cuts_left.clone(),
            ..Default::default()
        };
        let fetched =
            super::download::fetch(&self.http, &url, &dest, blake3.as_deref(), &policy).await;
        let mut st = self.state.lock().await;
        let t = &mut st.tree;
        match fetched {
            Err(e) => {
                tracing::info!(device = %self.cfg.id, error = %e, "alternate download failed");
                let _ = t.set(
                    &format!("{}/Status", op.node),
                    "int",
                    scomo::DownloadStatus::DownloadFailed.code().to_string(),
                );
                (e.result_code(), None)
            }
            Ok(stats) => {
                tracing::info!(device = %self.cfg.id, bytes = stats.bytes, requests = stats.requests, resumes = stats.resumes, "alternate download complete");
                if self.cfg.faults.corrupt_delivered {
                    if let Ok(mut b) = std::fs::read(&dest) {
                        if let Some(x) = b.first_mut() {
                            *x ^= 0xff;
                        }
                        let _ = std::fs::write(&dest, b);
                    }
                }
                let _ = t.set(
                    &format!("{}/Status", op.node),
                    "int",
                    scomo::DownloadStatus::DownloadComplete.code().to_string(),
                );
                let name = name.unwrap_or_else(|| id.clone());
                let _ = scomo::write_delivered(t, &id, &id, &name);
                let delivered = scomo::delivered_node(&id);
                if let Some(h) = sha256 {
                    let _ = t.set(&format!("{delivered}/Ext/Sha256"), "chr", h);
                }
                let install = match op.op {
                    Operation::DownloadInstall => Some(Operation::Install),
                    Operation::DownloadInstallInactive => Some(Operation::InstallInactive),
                    _ => None,
                };
                match install {
                    None => (ResultCode::Successful.code(), Some(delivered)),
                    Some(i) => self.simulate(
                        &mut st,
                        &QueuedOp {
                            correlator: op.correlator.clone(),
                            exec_path: op.exec_path.clone(),
                            node: delivered,
                            op: i,
                        },
                    ),
                }
            }
        }
    }

    /// Performs queued operations and queues their reports.
    async fn perform(&self, ops: Vec<QueuedOp>) -> Result<(), DeviceError> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut results = Vec::new();
        for op in &ops {
            if op.node.starts_with("./SCOMO/Download/") {
                results.push(Some(self.download(op).await));
            } else {
                results.push(None);
            }
        }
        let mut st = self.state.lock().await;
        for (op, done) in ops.into_iter().zip(results) {
            let (result, target) = match done {
                Some(r) => r,
                None => self.simulate(&mut st, &op),
            };
            tracing::info!(device = %self.cfg.id, op = ?op.op, node = %op.node, result, "operation performed");
            st.pending_reports.push(PendingReport {
                correlator: op.correlator.clone(),
                source: op.exec_path.clone(),
                target,
                result,
                identifier: op.node.rsplit('/').next().map(String::from),
            });
        }
        drop(st);
        self.save().await
    }

    fn simulate(&self, st: &mut DeviceState, q: &QueuedOp) -> (u16, Option<String>) {
        let t = &mut st.tree;
        let id = q.node.rsplit('/').next().unwrap_or("").to_string();
        let delivered = q.node.starts_with("./SCOMO/Inventory/Delivered/");
        match q.op {
            Operation::Install | Operation::InstallInactive if delivered => {
                let file = objects_dir(&self.cfg.state_path).join(&id);
                let Ok(bytes) = std::fs::read(&file) else {
                    return (ResultCode::InstallFailed.code(), None);
                };
                if let Some(want) = t.value(&format!("{}/Ext/Sha256", q.node)) {
                    let got: String = sha2::Sha256::digest(&bytes)
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    if !want.eq_ignore_ascii_case(&got) {
                        return (ResultCode::FailedPackageValidation.code(), None);
                    }
                }
                if self.cfg.faults.fail_install {
                    let _ = t.set(
                        &format!("{}/Status", q.node),
                        "int",
                        scomo::DeliveredStatus::InstallFailedKept.code().to_string(),
                    );
                    return (ResultCode::InstallFailed.code(), None);
                }
                let name = t
                    .value(&format!("{}/Name", q.node))
                    .unwrap_or(&id)
                    .to_string();
                let pkg = t
                    .value(&format!("{}/PkgID", q.node))
                    .unwrap_or(&id)
                    .to_string();
                let _ = t.set(
                    &format!("{}/State", q.node),
                    "int",
                    DeliveredState::Installed.code().to_string(),
                );
                let active = q.op == Operation::Install;
                let _ = scomo::write_deployed(t, &id, &pkg, &name, "1", active);
                (
                    ResultCode::Successful.code(),
                    Some(scomo::deployed_node(&id)),
                )
            }
            Operation::Remove => {
                if t.delete(&q.node).is_err() {
                    return (ResultCode::RemoveFailed.code(), None);
                }
                if delivered {
                    let _ = std::fs::remove_file(objects_dir(&self.cfg.state_path).join(&id));
                }
                (ResultCode::Successful.code(), None)
            }
            Operation::Activate | Operation::Deactivate => {
                let (state, fail) = if q.op == Operation::Activate {
                    (DeployedState::Active, ResultCode::ActivateFailed)
                } else {
                    (DeployedState::Inactive, ResultCode::DeactivateFailed)
                };
                if t.get(&q.node).is_none()
                    || t.set(
                        &format!("{}/State", q.node),
                        "int",
                        state.code().to_string(),
                    )
                    .is_err()
                {
                    return (fail.code(), None);
                }
                (ResultCode::Successful.code(), Some(q.node.clone()))
            }
            _ => (ResultCode::NotImplemented.code(), None),
        }
    }
}

/// Serves package 0 notifications on `addr` (plain HTTP `POST /notify`), running the
/// requested sessions in the background. Returns the bound address.
pub async fn listen_for_notifications(
    agent: Arc<Agent>,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    use axum::routing::post;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/notify",
        post(move |body: axum::body::Bytes| {
            let agent = agent.clone();
            async move {
                match agent.on_notification(&body).await {
                    Ok(n) => {
                        let session_id = n.session_id_hex();
                        tokio::spawn(async move {
                            if let Err(e) = agent.run(Trigger::Server { session_id }).await {
                                tracing::warn!(device = %agent.cfg.id, error = %e, "session failed");
                            }
                        });
                        axum::http::StatusCode::ACCEPTED
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "package 0 refused");
                        axum::http::StatusCode::UNAUTHORIZED
                    }
                }
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok(bound)
}
