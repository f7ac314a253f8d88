//! Command-line definitions (clap): every subcommand, flag, environment name and default. No
//! logic here; `main.rs` turns these into library calls.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// scomo-ads: Alternate Download Server for OMA DM SCOMO software delivery.
#[derive(Debug, Parser)]
#[command(name = "scomo-ads", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log lines as text, or as one JSON object per line (for log pipelines).
    #[arg(long, global = true, env = "SCOMO_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the ADS node: HTTPS downloads plus the admin API.
    Serve(ServeArgs),
    /// Run the ADS and the DMS together on the embedded default and print every endpoint, the
    /// tokens' locations and copy-paste examples.
    Up(ServeArgs),
    /// Run the DMS alone.
    Dms(DmsArgs),
    /// Run one device agent, or a fleet of them.
    Device(Box<DeviceArgs>),
    /// Start everything on loopback, run every flow and its alternatives, print a table; exit
    /// non-zero if any failed.
    Demo(DemoArgs),
    /// Publish a component file on an ADS through its admin API.
    Publish(PublishArgs),
    /// Mint a signed download URL for a published component.
    Mint(MintArgs),
    /// Tickets on an ADS node: list, show, revoke (admin API).
    Tickets(TicketsArgs),
    /// Components on an ADS node: list, show, delete (admin API).
    Components(ComponentsArgs),
    /// An ADS node's callback outbox: list, retry a dead one (admin API).
    Callbacks(CallbacksArgs),
    /// Jobs on the DMS: create, list, show (EMI API).
    Jobs(JobsArgs),
    /// Devices on the DMS: list, show, provision (EMI API).
    Devices(DevicesArgs),
    /// Exit 0 when a node answers its /healthz with ok (a container's HEALTHCHECK).
    Health(HealthArgs),
}

/// `scomo-ads health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The health URL (the ADS admin listener's by default; a DMS's is on its EMI listener).
    #[arg(
        long,
        env = "SCOMO_HEALTH_URL",
        default_value = "https://127.0.0.1:8444/healthz"
    )]
    pub url: String,
    /// The data directory whose tls/cert.pem to trust (a generated certificate).
    #[arg(long, env = "SCOMO_ADS_DATA", default_value = "./data")]
    pub data: PathBuf,
    /// CA certificate to trust instead.
    #[arg(long, env = "SCOMO_HEALTH_CACERT")]
    pub cacert: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 5)]
    pub timeout_secs: u64,
}

/// How a management command prints its answer.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Print the API's JSON (the default when stdout is not a terminal); else a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `scomo-ads tickets ...`
#[derive(Debug, Args)]
pub struct TicketsArgs {
    #[command(subcommand)]
    pub action: TicketsAction,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum TicketsAction {
    /// Tickets newest first, filtered and paged.
    List {
        /// issued, downloading, completed, expired or revoked.
        #[arg(long)]
        state: Option<String>,
        /// Component id.
        #[arg(long)]
        component: Option<String>,
        /// Device id.
        #[arg(long)]
        device: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// One ticket: state, coverage, requests, report.
    Show { id: String },
    /// Revoke a ticket: its URL answers 410 from now on.
    Revoke { id: String },
}

/// `limit` and `cursor` of a list.
#[derive(Debug, Args)]
pub struct PageArgs {
    /// Items on the page (1 to 500; default 50).
    #[arg(long)]
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    #[arg(long)]
    pub cursor: Option<String>,
}

/// `scomo-ads components ...`
#[derive(Debug, Args)]
pub struct ComponentsArgs {
    #[command(subcommand)]
    pub action: ComponentsAction,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum ComponentsAction {
    /// Published components, newest first.
    List,
    /// One component's metadata.
    Show { id: String },
    /// Delete a component (refused while a live ticket needs it).
    Delete { id: String },
}

/// `scomo-ads callbacks ...`
#[derive(Debug, Args)]
pub struct CallbacksArgs {
    #[command(subcommand)]
    pub action: CallbacksAction,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum CallbacksAction {
    /// The outbox, newest first.
    List {
        /// pending, delivered or dead.
        #[arg(long)]
        state: Option<String>,
        /// At most this many (default 100).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Send a dead callback again (same event id).
    Retry { event_id: String },
}

/// Where the DMS's EMI API is and how to reach it.
#[derive(Debug, Args)]
pub struct EmiArgs {
    /// EMI API base URL.
    #[arg(
        long,
        global = true,
        env = "SCOMO_DMS_API_URL",
        default_value = "https://127.0.0.1:8446"
    )]
    pub api_url: String,
    /// The DMS's data directory (or `up`'s), read for api.token and tls/cert.pem when not given.
    #[arg(long, global = true, env = "SCOMO_DMS_DATA", default_value = "./data")]
    pub data: PathBuf,
    /// CA certificate to trust for the EMI API (default: the data directory's tls/cert.pem).
    #[arg(long, global = true)]
    pub cacert: Option<PathBuf>,
}

/// `scomo-ads jobs ...`
#[derive(Debug, Args)]
pub struct JobsArgs {
    #[command(subcommand)]
    pub action: JobsAction,
    #[command(flatten)]
    pub emi: EmiArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum JobsAction {
    /// Queue a job; prints its id.
    Create {
        #[arg(long)]
        device: String,
        /// download, download_install, install, install_inactive, remove, activate,
        /// deactivate or inventory.
        #[arg(long)]
        operation: String,
        /// Component name or catalog id.
        #[arg(long)]
        component: Option<String>,
        /// dm, alternate or auto.
        #[arg(long)]
        delivery: Option<String>,
        /// Read DevDetail and the inventory first (alternative flow 2).
        #[arg(long)]
        inventory_first: bool,
    },
    /// Jobs newest first, filtered and paged.
    List {
        #[arg(long)]
        device: Option<String>,
        /// queued, running, succeeded or failed.
        #[arg(long)]
        state: Option<String>,
        /// SCOMO result code.
        #[arg(long)]
        result_code: Option<u16>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// One job with its timeline.
    Show { id: String },
}

/// `scomo-ads devices ...`
#[derive(Debug, Args)]
pub struct DevicesArgs {
    #[command(subcommand)]
    pub action: DevicesAction,
    #[command(flatten)]
    pub emi: EmiArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum DevicesAction {
    /// Devices by id, filtered and paged.
    List {
        /// DevInfo model.
        #[arg(long)]
        model: Option<String>,
        /// DevDetail firmware version.
        #[arg(long)]
        firmware: Option<String>,
        /// Only devices with a session since (ms since the epoch).
        #[arg(long)]
        seen_since_ms: Option<u64>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// One device: DevInfo, DevDetail, inventory, last session.
    Show { id: String },
    /// Create or update a device's record.
    Provision {
        id: String,
        /// The device's DM password.
        #[arg(long, env = "SCOMO_DEVICE_PASSWORD")]
        password: String,
        /// Our password toward the device (package 0, server credentials).
        #[arg(long)]
        server_password: Option<String>,
        /// The DM account's user name, when it is not the device id.
        #[arg(long)]
        username: Option<String>,
        /// md5 or basic.
        #[arg(long)]
        auth: Option<String>,
        /// none, basic or md5.
        #[arg(long)]
        server_auth: Option<String>,
        /// Where package 0 is POSTed.
        #[arg(long)]
        notify_url: Option<String>,
        /// auto, https or dlota.
        #[arg(long)]
        alternate_mechanism: Option<String>,
    },
}

/// Flags of `serve` and `up`. Each overrides the same key of the config file.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Data directory (SQLite, objects, generated secrets and certificate).
    #[arg(long, env = "SCOMO_ADS_DATA")]
    pub data: Option<PathBuf>,
    /// HTTPS download listener address.
    #[arg(long, env = "SCOMO_ADS_LISTEN", value_parser = listen_addr)]
    pub listen: Option<SocketAddr>,
    /// HTTPS admin API listener address.
    #[arg(long, env = "SCOMO_ADS_ADMIN_LISTEN", value_parser = listen_addr)]
    pub admin_listen: Option<SocketAddr>,
    /// Optional plain-HTTP download listener address.
    #[arg(long, env = "SCOMO_ADS_HTTP_LISTEN", value_parser = listen_addr)]
    pub http_listen: Option<SocketAddr>,
    /// Scheme://host:port used in minted URLs (the address devices reach, behind NAT/proxies).
    #[arg(long, env = "SCOMO_ADS_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// TOML config file (see README for every key).
    #[arg(long, env = "SCOMO_ADS_CONFIG")]
    pub config: Option<PathBuf>,
    /// PEM certificate chain (with --tls-key); default: generated self-signed.
    #[arg(long, env = "SCOMO_ADS_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (with --tls-cert).
    #[arg(long, env = "SCOMO_ADS_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Chunk cache budget in MiB.
    #[arg(long, env = "SCOMO_ADS_CACHE_MB")]
    pub cache_mb: Option<u64>,
    /// Log one line per download request.
    #[arg(long)]
    pub access_log: bool,
}

/// Where the admin API is and how to reach it.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Admin API base URL.
    #[arg(
        long,
        global = true,
        env = "SCOMO_ADS_ADMIN_URL",
        default_value = "https://127.0.0.1:8444"
    )]
    pub admin_url: String,
    /// The node's data directory, read for admin.token and tls/cert.pem when not given.
    #[arg(long, global = true, env = "SCOMO_ADS_DATA", default_value = "./data")]
    pub data: PathBuf,
    /// CA certificate to trust for the admin API (default: DATA/tls/cert.pem if present).
    #[arg(long, global = true)]
    pub cacert: Option<PathBuf>,
    /// PEM file with a client certificate and its key, for an admin API that requires
    /// mutual TLS (the node's `admin_client_ca`).
    #[arg(long, global = true, env = "SCOMO_ADS_CLIENT_IDENTITY")]
    pub client_identity: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The component file.
    pub file: PathBuf,
    /// Component name.
    #[arg(long)]
    pub name: String,
    /// Component version.
    #[arg(long)]
    pub version: String,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Args)]
pub struct MintArgs {
    /// Component id (BLAKE3 hex, as `publish` printed it).
    pub component_id: String,
    /// Lifetime of the URL, e.g. 30m, 1h, 2days.
    #[arg(long, default_value = "1h")]
    pub ttl: humantime::Duration,
    /// Device the ticket is for.
    #[arg(long)]
    pub device_id: Option<String>,
    /// Where the node POSTs the ticket's signed callbacks.
    #[arg(long)]
    pub callback_url: Option<String>,
    /// Total bytes the ticket may send (re-sent overlap included).
    #[arg(long)]
    pub max_bytes: Option<u64>,
    /// Concurrent requests the ticket allows.
    #[arg(long)]
    pub max_connections: Option<u32>,
    /// Complete deliveries allowed (default 1: a one-time URL).
    #[arg(long)]
    pub max_deliveries: Option<u32>,
    /// JSON attached to the ticket and echoed in its callbacks, e.g. '{"job":"j-1"}'.
    #[arg(long)]
    pub context: Option<String>,
    /// https (the object URL) or dlota (an OMA Download OTA descriptor URL).
    #[arg(long)]
    pub mechanism: Option<String>,
    /// With --mechanism dlota: the media type the descriptor names.
    #[arg(long)]
    pub content_type: Option<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Flags of `dms`. Each overrides the same key of the config file's `[dms]` table.
#[derive(Debug, Args)]
pub struct DmsArgs {
    /// Data directory (SQLite, catalog, generated secrets and certificate).
    #[arg(long, env = "SCOMO_DMS_DATA")]
    pub data: Option<PathBuf>,
    /// HTTPS listener for devices (`POST /dm`).
    #[arg(long, env = "SCOMO_DMS_LISTEN", value_parser = listen_addr)]
    pub listen: Option<SocketAddr>,
    /// Optional plain-HTTP listener for devices.
    #[arg(long, env = "SCOMO_DMS_HTTP_LISTEN", value_parser = listen_addr)]
    pub http_listen: Option<SocketAddr>,
    /// HTTPS listener for the EMI API.
    #[arg(long, env = "SCOMO_DMS_API_LISTEN", value_parser = listen_addr)]
    pub api_listen: Option<SocketAddr>,
    /// The DM URL given to devices.
    #[arg(long, env = "SCOMO_DMS_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Where job-end webhooks go.
    #[arg(long, env = "SCOMO_DMS_EMI_WEBHOOK_URL")]
    pub emi_webhook_url: Option<String>,
    /// Accept syncml:auth-basic from any device.
    #[arg(long)]
    pub allow_basic_auth: bool,
    /// TOML config file (see README for every key).
    #[arg(long, env = "SCOMO_ADS_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Flags of `device`.
#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// Device id (DevInfo/DevId, the DM user name).
    #[arg(long, default_value = "IMEI:356938035643809")]
    pub id: String,
    /// The device's DM password.
    #[arg(long, env = "SCOMO_DEVICE_PASSWORD", default_value = "device-secret")]
    pub password: String,
    /// The DMS's server id.
    #[arg(long, default_value = "scomo-ads-dms")]
    pub server_id: String,
    /// The server password (verifies package 0).
    #[arg(
        long,
        env = "SCOMO_DEVICE_SERVER_PASSWORD",
        default_value = "server-secret"
    )]
    pub server_password: String,
    /// The DMS's DM URL.
    #[arg(
        long,
        env = "SCOMO_DEVICE_DMS_URL",
        default_value = "https://127.0.0.1:8445/dm"
    )]
    pub dms_url: String,
    /// CA certificates to trust (the DMS's and ADS nodes' generated certificates); repeatable.
    #[arg(long)]
    pub cacert: Vec<PathBuf>,
    /// State file (tree, nonces, pending reports); fleets use one per device beside it.
    #[arg(long, default_value = "./data/device/state.json")]
    pub state: PathBuf,
    /// Where to listen for package 0 (plain HTTP, `POST /notify`).
    #[arg(long, default_value = "127.0.0.1:0", value_parser = listen_addr)]
    pub notify_listen: SocketAddr,
    /// Provision the device(s) on the DMS through its EMI API first (URL of the API).
    #[arg(long)]
    pub api_url: Option<String>,
    /// EMI API token for `--api-url`.
    #[arg(long, env = "SCOMO_DMS_API_TOKEN")]
    pub api_token: Option<String>,
    /// Manufacturer (DevInfo/Man).
    #[arg(long, default_value = "Acme")]
    pub man: String,
    /// Model (DevInfo/Mod).
    #[arg(long, default_value = "Roadrunner")]
    pub model: String,
    /// Firmware version (DevDetail/FwV).
    #[arg(long, default_value = "5.2")]
    pub fw_version: String,
    /// Ask the DMS for this component (alternative flow 1), then keep running.
    #[arg(long)]
    pub request: Option<String>,
    /// Ask the DMS for an operation, as OPERATION:COMPONENT (e.g. install:fw).
    #[arg(long)]
    pub request_op: Option<String>,
    /// With --request: the delivery to ask for (dm, alternate, auto).
    #[arg(long)]
    pub delivery: Option<String>,
    /// With --request/--request-op: ask the DMS to read DevDetail and inventory first.
    #[arg(long)]
    pub inventory_first: bool,
    /// Exit after the requested session instead of listening for notifications.
    #[arg(long)]
    pub once: bool,
    /// Fault injection: installs fail (1405).
    #[arg(long)]
    pub fail_install: bool,
    /// Fault injection: delivered data is corrupted (validation fails, 1407).
    #[arg(long)]
    pub corrupt_delivered: bool,
    /// Fault injection: drop the connection after this many messages, once.
    #[arg(long)]
    pub drop_after: Option<u32>,
    /// Fault injection: with --drop-after, drop this many sessions in all (default 1).
    #[arg(long, default_value_t = 1)]
    pub drop_sessions: u32,
    /// Fault injection: cut each alternate download this many times (it resumes).
    #[arg(long, default_value_t = 0)]
    pub interrupt_downloads: u32,
    /// Strict device: require the server's credentials (MD5 over --server-id, the server
    /// password and our nonce) in every message; challenge it otherwise.
    #[arg(long)]
    pub require_server_auth: bool,
    /// Strict device: start every message with SyncML's public DOCTYPE.
    #[arg(long)]
    pub doctype: bool,
    /// Strict device: the first MD5 credential uses the empty nonce (factory-fresh).
    #[arg(long)]
    pub empty_first_nonce: bool,
    /// The DM account's user name, when it is not the device id.
    #[arg(long)]
    pub username: Option<String>,
    /// How messages are encoded: xml or wbxml.
    #[arg(long, default_value = "xml", value_parser = ["xml", "wbxml"])]
    pub encoding: String,
    /// Strict device: answer 406 to Gets with `?list=`.
    #[arg(long)]
    pub refuse_list: bool,
    /// Strict device: Add only under existing parents (418 if the node exists), Replace only
    /// existing nodes (404).
    #[arg(long)]
    pub strict_writes: bool,
    /// Behave as an OMA Download OTA client: PkgURL names a download descriptor; the outcome
    /// is POSTed to its install-notify URI.
    #[arg(long)]
    pub dlota: bool,
    /// Fault injection (with --dlota): the user cancels every download at its descriptor
    /// (status 902, SCOMO 1401).
    #[arg(long)]
    pub cancel_downloads: bool,
    /// Run N agents in this process (ids get -1 … -N appended).
    #[arg(long)]
    pub fleet: Option<u32>,
    /// MaxMsgSize advertised to the DMS.
    #[arg(long, default_value_t = 16384)]
    pub max_msg_size: u64,
    /// MaxObjSize advertised to the DMS.
    #[arg(long, default_value_t = 8 << 20)]
    pub max_obj_size: u64,
}

/// Flags of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the demo's data here (default: a temporary directory, removed afterwards).
    #[arg(long)]
    pub data: Option<PathBuf>,
}

/// A listen address: `IP:PORT`, or `HOST:PORT` with a host name that resolves
/// (`localhost:8443`); the first address the name resolves to is used.
pub fn listen_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    use std::net::ToSocketAddrs;
    text.to_socket_addrs()
        .map_err(|e| format!("{text}: not IP:PORT or HOST:PORT ({e})"))?
        .next()
        .ok_or_else(|| format!("{text}: the host name resolves to no address"))
}
