//! The minimal OMA DM server (DMS): SyncML DM sessions with devices, the EMI API, the
//! component catalog and build selection, jobs with a timeline of the seed flows' steps,
//! package 0 notifications, and signed EMI webhooks through the shared outbox.

pub mod ads_client;
pub mod catalog;
pub mod emi;
pub mod engine;
pub mod job;
pub mod notify;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::DmsConfig;
use crate::net::gauge::ConnectionGauge;
use crate::net::listener::{self, ConnectionPolicy};
use crate::net::tls;
use crate::secrets;
use crate::webhook;

/// Why the DMS could not start.
#[derive(Debug, thiserror::Error)]
pub enum DmsError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Secret(#[from] secrets::SecretError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Store(#[from] store::DmsStoreError),
    #[error(transparent)]
    Outbox(#[from] webhook::outbox::OutboxError),
    #[error("invalid EMI webhook secret: {0}")]
    Secret2(#[from] webhook::sign::SignError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot build an HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    Ads(#[from] ads_client::AdsClientError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Locked(#[from] crate::datadir::LockError),
}

/// A running DMS.
pub struct DmsHandle {
    pub dm_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    pub api_addr: SocketAddr,
    /// The URL devices use (`https://…/dm`).
    pub dm_url: String,
    pub api_url: String,
    pub cert_path: PathBuf,
    pub data_dir: PathBuf,
    pub api_token: String,
    pub api_token_generated: bool,
    pub server_id: String,
    pub engine: Arc<engine::Engine>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    /// Held until the DMS has stopped (see [`crate::datadir`]).
    _lock: crate::datadir::DataDirLock,
}

impl DmsHandle {
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, DmsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DmsError::Bind { addr, source })
}

/// Starts the DMS; it runs until `shutdown` is cancelled.
pub async fn start(config: DmsConfig, shutdown: CancellationToken) -> Result<DmsHandle, DmsError> {
    config.validate()?;
    let dir = config.data_dir.clone();
    std::fs::create_dir_all(&dir).map_err(|source| DmsError::DataDir {
        path: dir.clone(),
        source,
    })?;
    let lock = crate::datadir::DataDirLock::acquire(&dir)?;
    let (api_token, api_token_generated) = match &config.api_token {
        Some(t) if !t.0.is_empty() => (t.0.clone(), false),
        _ => secrets::load_or_create(&dir.join("api.token"), secrets::random_hex32)?,
    };
    let emi_secret = match &config.emi_secret {
        Some(s) if !s.0.is_empty() => s.0.clone(),
        _ => secrets::load_or_create(&dir.join("emi.secret"), webhook::sign::generate_secret)?.0,
    };
    let signer = webhook::sign::Signer::from_secrets(&emi_secret)?;
    let identity = tls::load_or_generate_for(
        &dir,
        config.tls_cert.as_deref(),
        config.tls_key.as_deref(),
        &config.certificate_names(),
    )?;
    let tls_config = identity.config.clone();
    let store = store::DmsStore::open(&dir)?;

    let dm_listener = bind(config.listen).await?;
    let dm_addr = dm_listener.local_addr().unwrap_or(config.listen);
    let api_listener = bind(config.api_listen).await?;
    let api_addr = api_listener.local_addr().unwrap_or(config.api_listen);
    let http_listener = match config.http_listen {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let http_addr = http_listener.as_ref().and_then(|l| l.local_addr().ok());
    let dm_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("https://{dm_addr}/dm"));

    // Validated with the rest of the configuration; `dm` is the documented default.
    let default_delivery =
        job::Delivery::parse(&config.default_delivery).unwrap_or(job::Delivery::Dm);
    let wake = Arc::new(tokio::sync::Notify::new());
    let ads = Arc::new(ads_client::AdsPool::new(&config.ads_nodes)?);
    let ads_callback_url = config
        .ads_callback_url
        .clone()
        .unwrap_or_else(|| format!("https://{api_addr}/v1/ads-callbacks"));
    let engine = Arc::new(engine::Engine::new(
        store.clone(),
        engine::EngineConfig {
            server_id: config.server_id.clone(),
            dm_url: dm_url.clone(),
            allow_basic: config.allow_basic_auth,
            session_timeout: Duration::from_secs(config.session_timeout_secs),
            emi_url: config.emi_webhook_url.clone(),
            limits: crate::syncml::codec::Limits {
                max_bytes: config.max_message_bytes,
                ..Default::default()
            },
            ads_callback_url,
            alternate_threshold: config.alternate_threshold_bytes,
            fallback_to_dm: config.fallback_to_dm,
            dlota_devices: config.dlota_devices.clone(),
            max_delivery_attempts: config.max_delivery_attempts,
            max_session_messages: config.max_session_messages,
            ticket_ttl_secs: config.ticket_ttl_secs,
            default_delivery,
        },
        ads.clone(),
        wake.clone(),
        crate::net::guard::AuthThrottle::from_limits(&config.dm_limits),
    ));
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        // Signed webhooks are never forwarded by a redirect (see `webhook::deliver`).
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("scomo-ads-dms/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let state = Arc::new(emi::DmsState {
        ads: ads.clone(),
        store: store.clone(),
        engine: engine.clone(),
        http: http.clone(),
        server_id: config.server_id.clone(),
        api_token: api_token.clone(),
        max_message_bytes: config.max_message_bytes,
        max_component_bytes: config.max_component_bytes,
        default_delivery,
        dm_guard: crate::net::guard::EndpointGuard::new(&config.dm_limits),
        api_guard: crate::net::guard::EndpointGuard::new(&config.api_limits),
    });
    let policy = ConnectionPolicy {
        max_connections: 10_000,
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        handshake_timeout: Duration::from_secs(10),
        shutdown_grace: Duration::from_secs(10),
        max_connections_per_ip: config.max_connections_per_ip,
        send_buffer_bytes: 0,
        proxy_protocol: false,
        max_head_bytes: 64 * 1024,
        max_headers: 100,
        tag_peer: true,
        track_delivery: false,
    };
    let dispatcher = webhook::deliver::Dispatcher {
        outbox: Arc::new(webhook::outbox::Outbox::open(store.db_path())?),
        signer,
        http: http.clone(),
        policy: webhook::deliver::DeliveryPolicy {
            backoff_base: Duration::from_millis(config.webhook_backoff_base_ms),
            backoff_cap: Duration::from_secs(config.webhook_backoff_cap_secs),
            horizon: Duration::from_secs(config.webhook_horizon_secs),
            ..webhook::deliver::DeliveryPolicy::default()
        },
        wake,
        stats: Arc::new(webhook::deliver::DeliveryStats::default()),
    };

    let mut tasks = JoinSet::new();
    tasks.spawn(dispatcher.run(shutdown.clone()));
    tasks.spawn(tls::reload_on_sighup(
        vec![identity.cert.clone()],
        shutdown.clone(),
    ));
    if !ads.is_empty() {
        tasks.spawn(ads.clone().health_loop(
            Duration::from_secs(config.ads_health_interval_secs.max(1)),
            shutdown.clone(),
        ));
    }
    tasks.spawn(notify::renotify_loop(
        store.clone(),
        engine.clone(),
        http,
        config.server_id.clone(),
        Duration::from_secs(config.renotify_secs),
        shutdown.clone(),
    ));
    let dm_service = hyper_util::service::TowerToHyperService::new(emi::dm_router(state.clone()));
    let api_service = hyper_util::service::TowerToHyperService::new(emi::api_router(state));
    tasks.spawn(listener::serve(
        dm_listener,
        Some(tls_config.clone()),
        {
            let dm_service = dm_service.clone();
            move |_| dm_service.clone()
        },
        policy.clone(),
        Arc::new(ConnectionGauge::default()),
        shutdown.clone(),
    ));
    if let Some(l) = http_listener {
        tasks.spawn(listener::serve(
            l,
            None,
            move |_| dm_service.clone(),
            policy.clone(),
            Arc::new(ConnectionGauge::default()),
            shutdown.clone(),
        ));
    }
    tasks.spawn(listener::serve(
        api_listener,
        Some(tls_config),
        move |_| api_service.clone(),
        policy,
        Arc::new(ConnectionGauge::default()),
        shutdown.clone(),
    ));
    tracing::info!(%dm_addr, %api_addr, %dm_url, "DMS started");
    Ok(DmsHandle {
        dm_addr,
        http_addr,
        api_addr,
        dm_url,
        api_url: format!("https://{api_addr}"),
        cert_path: identity.cert_path,
        data_dir: dir,
        api_token,
        api_token_generated,
        server_id: config.server_id,
        engine,
        shutdown,
        tasks,
        _lock: lock,
    })
}
