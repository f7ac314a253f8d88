//! The `scomo-ads` binary: parses the command line, installs logging, and calls one library
//! function per subcommand. No logic of its own.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use scomo_ads::cli::{Cli, Command, ServeArgs};
use scomo_ads::client::{AdminClient, AdminTarget};
use scomo_ads::config::{AdsConfig, Config, Secret};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args, false).await,
        Command::Up(args) => serve(args, true).await,
        Command::Publish(args) => {
            let target = AdminTarget::resolve(
                &args.admin.admin_url,
                env_token(),
                &args.admin.data,
                args.admin.cacert,
            )?;
            let client = AdminClient::new(target)?;
            let bar = progress_bar();
            let b = bar.clone();
            let meta = client
                .publish(&args.file, &args.name, &args.version, move |sent, total| {
                    if let Some(b) = &b {
                        b.set_length(total);
                        b.set_position(sent);
                    }
                })
                .await
                .with_context(|| format!("publishing {}", args.file.display()))?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            println!("{}", serde_json::to_string_pretty(&meta)?);
            Ok(())
        }
        Command::Mint(args) => {
            let target = AdminTarget::resolve(
                &args.admin.admin_url,
                env_token(),
                &args.admin.data,
                args.admin.cacert,
            )?;
            let client = AdminClient::new(target)?;
            let minted = client
                .mint(
                    &args.component_id,
                    args.ttl.as_secs(),
                    args.device_id.as_deref(),
                )
                .await?;
            println!("{}", serde_json::to_string_pretty(&minted)?);
            Ok(())
        }
    }
}

fn env_token() -> Option<String> {
    std::env::var("SCOMO_ADS_ADMIN_TOKEN").ok()
}

fn progress_bar() -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    Some(bar)
}

fn ads_config(args: ServeArgs) -> anyhow::Result<AdsConfig> {
    let mut c = Config::load(args.config.as_deref())?.ads;
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
    c.admin_token = env_token().map(Secret);
    Ok(c)
}

async fn serve(args: ServeArgs, up: bool) -> anyhow::Result<()> {
    let config = ads_config(args)?;
    let shutdown = scomo_ads::net::listener::shutdown_on_signals();
    let node = scomo_ads::ads::start(config, shutdown)
        .await
        .context("starting the ADS node")?;
    println!("ADS download  {}", node.public_url);
    println!("ADS admin     {}", node.admin_url);
    if let Some(h) = node.http_addr {
        println!("ADS plain     http://{h}");
    }
    println!("certificate   {}", node.cert_path.display());
    let token_file = node.data_dir.join("admin.token");
    if node.admin_token_generated {
        // Shown once, at first start, on stdout only (never through the log).
        println!(
            "admin token   {} (saved to {})",
            node.admin_token,
            token_file.display()
        );
    } else {
        println!("admin token   in {}", token_file.display());
    }
    if up {
        println!();
        println!("Try it:");
        println!("  echo hello > /tmp/c.bin");
        println!(
            "  cargo run --release -- publish /tmp/c.bin --name demo --version 1 --data {} --admin-url {}",
            node.data_dir.display(),
            node.admin_url
        );
        println!(
            "  cargo run --release -- mint <id printed above> --ttl 10m --data {} --admin-url {}",
            node.data_dir.display(),
            node.admin_url
        );
        println!(
            "  curl --cacert {} -O -J <url printed above>",
            node.cert_path.display()
        );
    }
    println!(
        "ready {}",
        serde_json::json!({
            "download": node.download_addr.to_string(),
            "admin": node.admin_addr.to_string(),
            "http": node.http_addr.map(|a| a.to_string()),
            "public_url": node.public_url,
        })
    );
    node.wait().await;
    Ok(())
}
