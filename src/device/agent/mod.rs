//! The DM client: the agent's settings, state and entry points (sessions it opens, requests it
//! makes). Its parts:
//! - `session`: one DM session with the DMS and the commands it answers from its tree;
//! - `operations`: the SCOMO operations the server Exec'd, performed after the session;
//! - `notifications`: package 0, verified, and the listener that receives it.
//!
//! Sessions are serialized per agent (one at a time, as on a real device). Operations Exec'd by
//! the server are answered 202 and performed after the session; their results are reported in a
//! new client-initiated session (Alert 1201 + Generic Alert 1226) and kept in the state file
//! until the server acknowledges them with 200.

mod notifications;
mod operations;
mod session;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Mutex;

pub use self::notifications::listen_for_notifications;
use super::state::{DeviceState, PendingReport};
use crate::scomo;
use crate::syncml::codec;
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
    /// Every `Add` is refused with 405 (as by an ACL that lets the server replace nodes but
    /// create none).
    pub refuse_adds: bool,
    /// With `dlota`: the user cancels every download at its descriptor (902, SCOMO 1401).
    pub cancel_downloads: bool,
}

/// Behaviours of strict devices in the field, for tests that must not flatter the DMS. All
/// off by default.
#[derive(Clone, Debug, Default)]
pub struct Strict {
    /// The DM account requires the server's credentials: every server message must carry
    /// `Cred` (MD5 over the server id, server password and our nonce); without it, the header
    /// gets 401/407 with a `Chal` and every command 401/407, not executed.
    pub require_server_auth: bool,
    /// Messages start with SyncML's public DOCTYPE.
    pub doctype: bool,
    /// The first MD5 credential uses the empty nonce (a factory-fresh device).
    pub empty_first_nonce: bool,
    /// The DM account's user name, when it is not the device id.
    pub username: Option<String>,
    /// `Get` with `?list=` is answered 406 (many clients do not implement it).
    pub refuse_list: bool,
    /// Writes as the DM tree defines them: `Add` needs an existing parent and is refused with
    /// 418 for an existing node; `Replace` of a node that does not exist gets 404.
    pub strict_writes: bool,
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
    pub strict: Strict,
    /// How our messages are encoded (the server answers in the same).
    pub encoding: crate::syncml::Encoding,
    /// An OMA Download OTA client: `PkgURL` names a download descriptor, and the outcome is
    /// reported to its install-notify URI (`device::dlota`).
    pub dlota: bool,
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
    #[error("the server did not authenticate itself (we answered {0} to its messages)")]
    ServerNotAuthenticated(u16),
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

/// The device agent.
pub struct Agent {
    pub cfg: DeviceConfig,
    http: reqwest::Client,
    state: Mutex<DeviceState>,
    /// Held for the length of a session: one session at a time.
    session_lock: Mutex<()>,
    /// Download cuts still to inject.
    cuts_left: Arc<std::sync::atomic::AtomicU32>,
    /// SyncML bytes sent and received over all sessions (bodies, both ways).
    dm_bytes: std::sync::atomic::AtomicU64,
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
                server_nonce: if cfg.strict.empty_first_nonce {
                    String::new()
                } else {
                    INITIAL_NONCE.into()
                },
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
            dm_bytes: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    /// SyncML bytes this agent sent and received so far (message bodies, both ways).
    pub fn dm_bytes(&self) -> u64 {
        self.dm_bytes.load(std::sync::atomic::Ordering::Relaxed)
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
}
