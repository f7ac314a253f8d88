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
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the ADS node: HTTPS downloads plus the admin API.
    Serve(ServeArgs),
    /// Run everything on the embedded default (today: the ADS node) and print the endpoints,
    /// the admin token's location and a copy-paste example.
    Up(ServeArgs),
    /// Publish a component file on an ADS through its admin API.
    Publish(PublishArgs),
    /// Mint a signed download URL for a published component.
    Mint(MintArgs),
}

/// Flags of `serve` and `up`. Each overrides the same key of the config file.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Data directory (SQLite, objects, generated secrets and certificate).
    #[arg(long, env = "SCOMO_ADS_DATA")]
    pub data: Option<PathBuf>,
    /// HTTPS download listener address.
    #[arg(long, env = "SCOMO_ADS_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// HTTPS admin API listener address.
    #[arg(long, env = "SCOMO_ADS_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Optional plain-HTTP download listener address.
    #[arg(long, env = "SCOMO_ADS_HTTP_LISTEN")]
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
        env = "SCOMO_ADS_ADMIN_URL",
        default_value = "https://127.0.0.1:8444"
    )]
    pub admin_url: String,
    /// The node's data directory, read for admin.token and tls/cert.pem when not given.
    #[arg(long, env = "SCOMO_ADS_DATA", default_value = "./data")]
    pub data: PathBuf,
    /// CA certificate to trust for the admin API (default: DATA/tls/cert.pem if present).
    #[arg(long)]
    pub cacert: Option<PathBuf>,
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
    #[command(flatten)]
    pub admin: AdminArgs,
}
