//! Configuration: one serde tree, filled from defaults, then a TOML file (`--config`), then
//! environment variables, then command-line flags (each later source wins). Secrets are never
//! read from the TOML file or flags (which end up in shells' history and `ps`), only from the
//! environment or the data directory, and never printed by `Debug`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cli::{DmsArgs, ServeArgs};

mod device;

pub use crate::net::guard::EndpointLimits;

/// A config error with the file it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

/// A secret string whose `Debug` output is redacted.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The whole configuration file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub ads: AdsConfig,
    pub dms: DmsConfig,
}

/// The DMS's settings (`[dms]` in the TOML file).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DmsConfig {
    /// Data directory: SQLite, catalog bytes, generated secrets and certificate.
    pub data_dir: PathBuf,
    /// HTTPS listener for devices (`POST /dm`).
    pub listen: SocketAddr,
    /// Optional plain-HTTP listener for devices (many field clients use it).
    pub http_listen: Option<SocketAddr>,
    /// HTTPS listener for the EMI API.
    pub api_listen: SocketAddr,
    /// The DM URL devices are given (default: `https://<listen>/dm`).
    pub public_url: Option<String>,
    /// Our server identifier (package 0, credentials).
    pub server_id: String,
    /// PEM certificate chain; with `tls_key`. Default: generated into `data_dir/tls/`.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// More names for a generated certificate, beside localhost and the public URL's host.
    pub tls_names: Vec<String>,
    /// Accept `syncml:auth-basic` from devices provisioned with it.
    pub allow_basic_auth: bool,
    /// A session idle this long is dropped (its job resumes in the next session).
    pub session_timeout_secs: u64,
    /// Devices with work waiting and no session are notified again after this long.
    pub renotify_secs: u64,
    /// Where job-end webhooks go (none: no webhooks).
    pub emi_webhook_url: Option<String>,
    /// Largest SyncML message accepted from a device.
    pub max_message_bytes: usize,
    /// Largest component accepted into the catalog.
    pub max_component_bytes: u64,
    /// Delivery when a job does not say (`dm`, `alternate`, `auto`).
    pub default_delivery: String,
    /// Webhook retry policy (see the ADS keys of the same names).
    pub webhook_backoff_base_ms: u64,
    pub webhook_backoff_cap_secs: u64,
    pub webhook_horizon_secs: u64,
    /// ADS nodes for alternate delivery (flow 5.4.2).
    pub ads_nodes: Vec<AdsNodeConfig>,
    /// Where ADS nodes POST download callbacks (default: `https://<api_listen>/v1/ads-callbacks`).
    pub ads_callback_url: Option<String>,
    /// `auto` delivery goes through an ADS above this size, in-band below.
    pub alternate_threshold_bytes: u64,
    /// When no ADS node is healthy, deliver in-band instead of failing the job.
    pub fallback_to_dm: bool,
    /// Devices given an OMA Download OTA descriptor instead of a plain URL when their record
    /// says `alternate_mechanism: "auto"`: `Manufacturer/Model` patterns matched against
    /// DevInfo (and `OEM/DevTyp` against DevDetail, once read), `*` at the end matching any
    /// rest (`"Acme/*"`).
    pub dlota_devices: Vec<String>,
    /// In-band deliveries one job may start (each dropped session starts over) before it fails.
    pub max_delivery_attempts: u32,
    /// Messages one DM session may take beyond the chunks of an in-band delivery; past it the
    /// DMS ends the session (a device stuck in a loop must not hold it forever).
    pub max_session_messages: u32,
    /// How often ADS nodes' `/healthz` is checked.
    pub ads_health_interval_secs: u64,
    /// Lifetime of minted download URLs.
    pub ticket_ttl_secs: u64,
    /// Open connections one client IP may hold on each listener; 0 = no limit.
    pub max_connections_per_ip: usize,
    /// Request rate and failed-auth backoff of `/dm` (per IP; auth backoff per device and IP).
    pub dm_limits: EndpointLimits,
    /// Request rate and failed-auth backoff of the EMI API.
    pub api_limits: EndpointLimits,
    /// EMI API bearer token; from `SCOMO_DMS_API_TOKEN`, else `data_dir/api.token`.
    #[serde(skip)]
    pub api_token: Option<Secret>,
    /// EMI webhook secret (`whsec_…`); from `SCOMO_DMS_EMI_SECRET`, else `data_dir/emi.secret`.
    #[serde(skip)]
    pub emi_secret: Option<Secret>,
}

/// One ADS node the DMS may use (`[[dms.ads_nodes]]`). Secrets are read from files.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdsNodeConfig {
    pub name: String,
    /// The node's admin API base URL.
    pub admin_url: String,
    /// File holding the node's admin token (its `DIR/admin.token`).
    pub admin_token_file: PathBuf,
    /// File holding the node's callback secret (its `DIR/callback.secret`), to verify callbacks.
    pub callback_secret_file: PathBuf,
    /// CA certificate to trust for the node (admin API and, for devices, downloads).
    pub ca_cert: Option<PathBuf>,
    /// PEM file with our client certificate and its private key, for a node whose admin API
    /// requires mutual TLS (`admin_client_ca` on the node).
    #[serde(default)]
    pub client_identity: Option<PathBuf>,
    /// Relative share of new downloads.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

impl Default for DmsConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data/dms"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8445)),
            http_listen: None,
            api_listen: SocketAddr::from(([127, 0, 0, 1], 8446)),
            public_url: None,
            server_id: "scomo-ads-dms".into(),
            tls_cert: None,
            tls_key: None,
            tls_names: Vec::new(),
            allow_basic_auth: false,
            session_timeout_secs: 120,
            renotify_secs: 60,
            emi_webhook_url: None,
            max_message_bytes: 1 << 20,
            max_component_bytes: 256 << 20,
            default_delivery: "dm".into(),
            webhook_backoff_base_ms: 1000,
            webhook_backoff_cap_secs: 3600,
            webhook_horizon_secs: 3 * 24 * 3600,
            ads_nodes: Vec::new(),
            ads_callback_url: None,
            alternate_threshold_bytes: 1 << 20,
            fallback_to_dm: true,
            dlota_devices: Vec::new(),
            max_delivery_attempts: 5,
            max_session_messages: 40,
            ads_health_interval_secs: 5,
            ticket_ttl_secs: 3600,
            max_connections_per_ip: 1024,
            dm_limits: EndpointLimits {
                requests_per_sec: 200,
                burst: 400,
                ..EndpointLimits::default()
            },
            api_limits: EndpointLimits::default(),
            api_token: None,
            emi_secret: None,
        }
    }
}

/// The ADS node's settings (`[ads]` in the TOML file).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdsConfig {
    /// Data directory: SQLite, objects, generated secrets and certificate.
    pub data_dir: PathBuf,
    /// HTTPS download listener.
    pub listen: SocketAddr,
    /// HTTPS admin API listener.
    pub admin_listen: SocketAddr,
    /// Optional plain-HTTP download listener (benchmarks, trusted networks).
    pub http_listen: Option<SocketAddr>,
    /// Scheme, host and port put into minted URLs (default: the HTTPS listener's address).
    pub public_url: Option<String>,
    /// PEM certificate chain; with `tls_key`. Default: generated into `data_dir/tls/`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key; with `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// More names for a generated certificate, beside localhost and the public URL's host
    /// (the names peers reach the node by, e.g. `ads` in a compose network).
    pub tls_names: Vec<String>,
    /// Memory budget of the chunk cache, in bytes.
    pub cache_bytes: u64,
    /// Chunk size of the cache and of body frames, in bytes.
    pub chunk_bytes: u32,
    /// Largest component accepted by `POST /v1/components`, in bytes.
    pub max_upload_bytes: u64,
    /// Ticket lifetime when the mint request gives none, in seconds.
    pub default_ttl_secs: u64,
    /// Longest ticket lifetime a mint request may ask for, in seconds.
    pub max_ttl_secs: u64,
    /// A ticket minted without `max_bytes` may send this many copies of its object per
    /// delivery (resumes and parallel ranges re-send some bytes); 0 = no default budget.
    pub default_max_bytes_copies: u64,
    /// The default budget is never below this many bytes (tiny objects, retried requests).
    pub min_default_max_bytes: u64,
    /// Concurrent requests a ticket minted without `max_connections` allows; 0 = no limit.
    pub default_max_connections: u32,
    /// Most ranges served as multipart after coalescing; more and the Range header is ignored.
    pub max_ranges: usize,
    /// Concurrent connections per listener; beyond it new ones wait in the accept backlog.
    pub max_connections: usize,
    /// The request head must arrive within this many seconds of the connection starting to
    /// wait for it (the previous response's end, or the first byte after a quiet spell).
    pub header_read_timeout_secs: u64,
    /// A connection with no byte moving either way for this long is closed (idle keep-alive,
    /// or a reader that stopped reading). Progress resets it: slow devices are never cut off.
    /// Idle HTTP/1.1 keep-alive connections wait this long, parked (`net::parking`). An HTTP/2
    /// connection over TLS is sent GOAWAY once no request has started for this long: its
    /// keep-alive PINGs keep bytes moving, so the byte rule alone would never close it. Plain
    /// HTTP/2 gets no PINGs, so the byte rule does.
    pub idle_timeout_secs: u64,
    /// TLS handshakes must finish within this many seconds.
    pub handshake_timeout_secs: u64,
    /// On SIGTERM/Ctrl-C, in-flight responses get this long to finish.
    pub shutdown_grace_secs: u64,
    /// Log one line per download request (target `access`).
    pub access_log: bool,
    /// Seconds after a ticket's expiry during which a ticket that has already delivered bytes
    /// may still be resumed (slow devices resume long after they started).
    pub expiry_grace_secs: u64,
    /// How often expired tickets are swept (and their `download.expired` callbacks queued).
    pub sweep_interval_secs: u64,
    /// Hosts that ticket callback URLs may point at (`"*"`: any host).
    pub callback_allow_hosts: Vec<String>,
    /// First callback retry delay in milliseconds; doubles per attempt, with jitter.
    pub callback_backoff_base_ms: u64,
    /// Longest delay between two callback attempts, in seconds.
    pub callback_backoff_cap_secs: u64,
    /// A callback still failing this long after its event was created is kept as dead.
    pub callback_horizon_secs: u64,
    /// Per-attempt callback timeout, in seconds.
    pub callback_timeout_secs: u64,
    /// Callback deliveries in flight at once.
    pub callback_concurrency: usize,
    /// The `node` field of callbacks (default: the public URL).
    pub node_name: Option<String>,
    /// Extra CA certificates to trust when delivering callbacks (a DMS with a private CA).
    pub callback_ca_certs: Vec<PathBuf>,
    /// SO_SNDBUF of download connections in bytes; 0 = the kernel's autotuning (fastest on
    /// long fat links). A fixed size bounds kernel memory per slow device and makes a
    /// ticket's completion ("every byte sent") closer to "every byte received".
    pub send_buffer_bytes: usize,
    /// Largest request head (request line + headers) on the download listeners; more gets
    /// 431. Every open connection holds a read buffer this size, idle or not.
    pub max_request_head_bytes: usize,
    /// Most header fields in one download request; more gets 431.
    pub max_request_headers: usize,
    /// Tickets kept in memory, about 2 KiB each: the default allows up to ~2 GiB, reached only
    /// by a million tickets minted within an hour. Lower it on small nodes; colder tickets are
    /// reloaded from SQLite through the writer thread, which is much slower (one-time downloads
    /// of ~65 000 pre-minted URLs: 21 000 req/s with 100 000 here, 48 000 with 1 000 000).
    pub ticket_cache_entries: u64,
    /// Download listeners expect a PROXY protocol header (v1/v2) on every connection, from an
    /// L4 load balancer in front: per-IP limits then see devices, not the balancer.
    /// Connections without one are closed, so enable it only behind such a balancer.
    pub proxy_protocol: bool,
    /// Free bytes an upload must leave on the data file system; uploads that would eat into
    /// it are refused with 507 (0 = only the kernel's ENOSPC stops them).
    pub keep_free_bytes: u64,
    /// Open connections one client IP may hold on each listener; 0 = no limit. Devices behind
    /// a carrier's NAT share addresses, so this is generous.
    pub max_connections_per_ip: usize,
    /// Request rate and failed-auth backoff of the admin API.
    pub admin_limits: EndpointLimits,
    /// PEM CA whose client certificates the admin API requires (mutual TLS for DMS→ADS);
    /// unset = bearer token only.
    pub admin_client_ca: Option<PathBuf>,
    /// Admin bearer token; from `SCOMO_ADS_ADMIN_TOKEN`, else `data_dir/admin.token`.
    #[serde(skip)]
    pub admin_token: Option<Secret>,
    /// Callback signing secrets (`whsec_…`, space-separated during a rotation); from
    /// `SCOMO_ADS_CALLBACK_SECRET`, else `data_dir/callback.secret`.
    #[serde(skip)]
    pub callback_secret: Option<Secret>,
}

impl Default for AdsConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 8444)),
            http_listen: None,
            public_url: None,
            tls_cert: None,
            tls_key: None,
            tls_names: Vec::new(),
            cache_bytes: 256 << 20,
            chunk_bytes: 128 << 10,
            max_upload_bytes: 8 << 30,
            default_ttl_secs: 3600,
            max_ttl_secs: 30 * 24 * 3600,
            default_max_bytes_copies: 3,
            min_default_max_bytes: 1 << 20,
            default_max_connections: 8,
            max_ranges: 16,
            max_connections: 20_000,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 60,
            handshake_timeout_secs: 10,
            shutdown_grace_secs: 30,
            access_log: false,
            expiry_grace_secs: 24 * 3600,
            sweep_interval_secs: 30,
            callback_allow_hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            callback_backoff_base_ms: 1000,
            callback_backoff_cap_secs: 3600,
            callback_horizon_secs: 3 * 24 * 3600,
            callback_timeout_secs: 10,
            callback_concurrency: 16,
            node_name: None,
            callback_ca_certs: Vec::new(),
            keep_free_bytes: crate::content::DEFAULT_KEEP_FREE_BYTES,
            proxy_protocol: false,
            ticket_cache_entries: 1_000_000,
            max_request_head_bytes: 8192,
            max_request_headers: 64,
            send_buffer_bytes: 0,
            max_connections_per_ip: 1024,
            admin_limits: EndpointLimits::default(),
            admin_client_ca: None,
            admin_token: None,
            callback_secret: None,
        }
    }
}

/// The host of `public_url`, then `extra`: the names a generated certificate adds.
fn certificate_names(public_url: Option<&str>, extra: &[String]) -> Vec<String> {
    let host = public_url.and_then(crate::net::tls::url_host);
    host.into_iter().chain(extra.iter().cloned()).collect()
}

impl DmsConfig {
    /// What a generated certificate names beside localhost: the public DM URL's host and
    /// `tls_names`.
    pub fn certificate_names(&self) -> Vec<String> {
        certificate_names(self.public_url.as_deref(), &self.tls_names)
    }

    /// Checks values that would make the DMS misbehave.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.max_delivery_attempts == 0 {
            return bad("max_delivery_attempts must be at least 1");
        }
        if self.max_session_messages < 4 {
            return bad("max_session_messages must be at least 4");
        }
        if self.session_timeout_secs == 0 || self.renotify_secs == 0 {
            return bad("session_timeout_secs and renotify_secs must be at least 1");
        }
        if self.max_message_bytes < 4096 {
            return bad("max_message_bytes must be at least 4096");
        }
        if !matches!(self.default_delivery.as_str(), "dm" | "alternate" | "auto") {
            return bad("default_delivery must be dm, alternate or auto");
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("tls_cert and tls_key must be given together");
        }
        Ok(())
    }
}

impl AdsConfig {
    /// Checks values that would make the node misbehave.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.chunk_bytes < 4096 || self.chunk_bytes > (16 << 20) {
            return bad("chunk_bytes must be between 4096 and 16777216");
        }
        if self.max_connections == 0 {
            return bad("max_connections must be at least 1");
        }
        if self.default_ttl_secs == 0 || self.default_ttl_secs > self.max_ttl_secs {
            return bad("default_ttl_secs must be between 1 and max_ttl_secs");
        }
        if self.max_request_head_bytes < 8192 || self.max_request_head_bytes > (1 << 20) {
            return bad("max_request_head_bytes must be between 8192 and 1048576");
        }
        if self.max_request_headers == 0 {
            return bad("max_request_headers must be at least 1");
        }
        if self.max_ranges == 0 {
            return bad("max_ranges must be at least 1");
        }
        if let Some(url) = &self.public_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return bad("public_url must start with https:// or http://");
            }
            let unspecified = crate::net::tls::url_host(url)
                .and_then(|h| h.parse::<std::net::IpAddr>().ok())
                .is_some_and(|ip| ip.is_unspecified());
            if unspecified {
                return bad("public_url names 0.0.0.0 or [::], which no device can reach: give the address devices use");
            }
        }
        if self.sweep_interval_secs == 0 || self.callback_concurrency == 0 {
            return bad("sweep_interval_secs and callback_concurrency must be at least 1");
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("tls_cert and tls_key must be given together");
        }
        Ok(())
    }
}

impl AdsConfig {
    /// What a generated certificate names beside localhost: the public URL's host and
    /// `tls_names`.
    pub fn certificate_names(&self) -> Vec<String> {
        certificate_names(self.public_url.as_deref(), &self.tls_names)
    }

    /// The node's configuration for `serve` / `up`: the file named by `--config` over the
    /// defaults, then the flags (which clap already merged with their environment
    /// variables), then the secrets from the environment.
    pub fn from_args(args: ServeArgs) -> Result<Self, ConfigError> {
        let mut c = Config::load(args.config.as_deref())?.ads;
        c.merge_flags(args);
        c.read_env_secrets();
        Ok(c)
    }

    /// Flags given override the file; flags not given leave it alone.
    pub fn merge_flags(&mut self, args: ServeArgs) {
        let c = self;
        if let Some(v) = args.data {
            c.data_dir = v;
        }
        if let Some(v) = args.listen {
            c.listen = v;
        }
        if let Some(v) = args.admin_listen {
            c.admin_listen = v;
        }
        if args.http_listen.is_some() {
            c.http_listen = args.http_listen;
        }
        if args.public_url.is_some() {
            c.public_url = args.public_url;
        }
        if args.tls_cert.is_some() {
            c.tls_cert = args.tls_cert;
        }
        if args.tls_key.is_some() {
            c.tls_key = args.tls_key;
        }
        if let Some(mb) = args.cache_mb {
            c.cache_bytes = mb << 20;
        }
        if args.access_log {
            c.access_log = true;
        }
    }

    /// `SCOMO_ADS_ADMIN_TOKEN` and `SCOMO_ADS_CALLBACK_SECRET` (never from files or flags).
    pub fn read_env_secrets(&mut self) {
        self.admin_token = std::env::var("SCOMO_ADS_ADMIN_TOKEN").ok().map(Secret);
        self.callback_secret = std::env::var("SCOMO_ADS_CALLBACK_SECRET").ok().map(Secret);
    }
}

impl DmsConfig {
    /// The DMS's configuration for `dms`: file, flags, then secrets from the environment.
    pub fn from_args(args: DmsArgs) -> Result<Self, ConfigError> {
        let mut c = Config::load(args.config.as_deref())?.dms;
        c.merge_flags(args);
        c.read_env_secrets();
        Ok(c)
    }

    /// Flags given override the file; flags not given leave it alone.
    pub fn merge_flags(&mut self, args: DmsArgs) {
        let c = self;
        if let Some(v) = args.data {
            c.data_dir = v;
        }
        if let Some(v) = args.listen {
            c.listen = v;
        }
        if args.http_listen.is_some() {
            c.http_listen = args.http_listen;
        }
        if let Some(v) = args.api_listen {
            c.api_listen = v;
        }
        if args.public_url.is_some() {
            c.public_url = args.public_url;
        }
        if args.emi_webhook_url.is_some() {
            c.emi_webhook_url = args.emi_webhook_url;
        }
        if args.allow_basic_auth {
            c.allow_basic_auth = true;
        }
    }

    /// `SCOMO_DMS_API_TOKEN` and `SCOMO_DMS_EMI_SECRET` (never from files or flags).
    pub fn read_env_secrets(&mut self) {
        self.api_token = std::env::var("SCOMO_DMS_API_TOKEN").ok().map(Secret);
        self.emi_secret = std::env::var("SCOMO_DMS_EMI_SECRET").ok().map(Secret);
    }
}

impl Config {
    /// Reads `path` (TOML) over the defaults; no file means defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// Flags given win over the file; flags left out keep the file's values.
    #[test]
    fn flags_override_the_file_and_only_the_flags_given() {
        let cli = |argv: &[&str]| crate::cli::Cli::try_parse_from(argv).unwrap().command;
        let mut ads: AdsConfig =
            toml::from_str::<Config>("[ads]\nlisten = \"127.0.0.1:1\"\ncache_bytes = 7\n")
                .unwrap()
                .ads;
        let crate::cli::Command::Serve(args) = cli(&[
            "scomo-ads",
            "serve",
            "--admin-listen",
            "127.0.0.1:2",
            "--cache-mb",
            "3",
        ]) else {
            panic!("serve")
        };
        ads.merge_flags(args);
        assert_eq!(
            ads.listen,
            "127.0.0.1:1".parse().unwrap(),
            "kept from the file"
        );
        assert_eq!(ads.admin_listen, "127.0.0.1:2".parse().unwrap());
        assert_eq!(ads.cache_bytes, 3 << 20);
        let mut dms = DmsConfig::default();
        let crate::cli::Command::Dms(args) = cli(&[
            "scomo-ads",
            "dms",
            "--public-url",
            "https://dms.example/dm",
            "--allow-basic-auth",
        ]) else {
            panic!("dms")
        };
        dms.merge_flags(args);
        assert_eq!(dms.public_url.as_deref(), Some("https://dms.example/dm"));
        assert!(dms.allow_basic_auth);
        assert_eq!(dms.listen, DmsConfig::default().listen);
    }

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_keys() {
        let c: Config = toml::from_str("[ads]\ncache_bytes = 1024\nmax_ranges = 3\n").unwrap();
        assert_eq!(c.ads.cache_bytes, 1024);
        assert_eq!(c.ads.max_ranges, 3);
        assert_eq!(c.ads.chunk_bytes, AdsConfig::default().chunk_bytes);
        assert!(toml::from_str::<Config>("[ads]\ncache_byte = 1\n").is_err());
    }

    #[test]
    fn secrets_are_redacted() {
        let c = AdsConfig {
            admin_token: Some(Secret("hunter2".into())),
            ..AdsConfig::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn validation() {
        let mut c = AdsConfig::default();
        assert!(c.validate().is_ok());
        c.chunk_bytes = 10;
        assert!(c.validate().is_err());
        let c = AdsConfig {
            max_request_head_bytes: 100,
            ..AdsConfig::default()
        };
        assert!(c.validate().is_err());
        assert!(DmsConfig::default().validate().is_ok());
        let d = DmsConfig {
            max_delivery_attempts: 0,
            ..DmsConfig::default()
        };
        assert!(d.validate().is_err());
        let d = DmsConfig {
            default_delivery: "carrier-pigeon".into(),
            ..DmsConfig::default()
        };
        assert!(d.validate().is_err());
    }
}
