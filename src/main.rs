//! The `scomo-ads` binary: parses the command line, installs logging, and calls one library
//! function per subcommand. No logic of its own.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use scomo_ads::cli::{Cli, Command, DemoArgs, DeviceArgs, DmsArgs, OutputArgs, ServeArgs};
use scomo_ads::config::{AdsConfig, Config, DmsConfig};
use scomo_ads::manage;

/// `println!` that never panics: a closed stdout (`scomo-ads serve | head -1`) must not take
/// the node down, nor stop it from shutting down on SIGTERM. What cannot be written is dropped.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `print!` that never panics (see [`say!`]).
macro_rules! say_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

/// jemalloc, configured (`.cargo/config.toml`) to hand freed pages back to the OS within about
/// a second: an edge node's memory follows its busy connections down when they go quiet.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let demo_log = install_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            complain(&format!("error: cannot start the async runtime: {e}"));
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, demo_log)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            complain(&format!("error: {}", error_line(&e)));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Writes `line` to stderr; a closed stderr is ignored.
fn complain(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The error and its causes on one line, each said once: a cause whose text its parent's
/// message already includes (`cannot listen on X: Address already in use`) is not repeated.
fn error_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Logs go to stderr; `demo` without `RUST_LOG` writes them to a file instead (returned), so
/// its result table is what a newcomer sees.
fn install_logging(cli: &Cli) -> Option<std::path::PathBuf> {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let demo_log = match &cli.command {
        Command::Demo(args) if std::env::var_os("RUST_LOG").is_none() => Some(match &args.data {
            Some(dir) => {
                let _ = std::fs::create_dir_all(dir);
                dir.join("demo.log")
            }
            None => std::env::temp_dir().join(format!("scomo-ads-demo-{}.log", std::process::id())),
        }),
        _ => None,
    };
    if let Some((path, file)) =
        demo_log.and_then(|p| std::fs::File::create(&p).ok().map(|f| (p, f)))
    {
        tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .log_internal_errors(false)
            .init();
        return Some(path);
    }
    if cli.log_format == "json" {
        // One object per line: timestamp, level, target, fields, the span's fields.
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .log_internal_errors(false)
            .init();
        return None;
    }
    // Colours only for a person at a terminal: log files and pipelines get plain text.
    let colours = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_ansi(colours)
        .with_writer(std::io::stderr)
        // A closed stderr must not turn into a panic (tracing's own complaint goes to stderr).
        .log_internal_errors(false)
        .init();
    None
}

async fn run(cli: Cli, demo_log: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Up(args) => up(args).await,
        Command::Dms(args) => dms(args).await,
        Command::Device(args) => device(*args).await,
        Command::Demo(args) => demo(args, demo_log).await,
        Command::Publish(args) => {
            let client = scomo_ads::manage::admin_client(&args.admin)?;
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
            say!("{}", serde_json::to_string_pretty(&meta)?);
            Ok(())
        }
        Command::Mint(args) => {
            let client = scomo_ads::manage::admin_client(&args.admin)?;
            let minted = client
                .mint_with(&scomo_ads::manage::mint_body(&args)?)
                .await?;
            say!("{}", serde_json::to_string_pretty(&minted)?);
            Ok(())
        }
        Command::Tickets(a) => answer(manage::tickets(&a.action, &a.admin).await?, &a.output),
        Command::Components(a) => answer(manage::components(&a.action, &a.admin).await?, &a.output),
        Command::Callbacks(a) => answer(manage::callbacks(&a.action, &a.admin).await?, &a.output),
        Command::Jobs(a) => answer(manage::jobs(&a.action, &a.emi).await?, &a.output),
        Command::Devices(a) => answer(manage::devices(&a.action, &a.emi).await?, &a.output),
        Command::Health(h) => {
            manage::health(&h).await?;
            say!("ok");
            Ok(())
        }
    }
}

/// Prints a management command's answer: JSON when asked or piped, a table at a terminal.
fn answer(a: manage::Answer, out: &OutputArgs) -> anyhow::Result<()> {
    if out.json || !std::io::stdout().is_terminal() {
        say!("{}", serde_json::to_string_pretty(&a.json)?);
    } else {
        say_raw!("{}", a.table);
    }
    Ok(())
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

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = AdsConfig::from_args(args)?;
    let shutdown = scomo_ads::net::listener::shutdown_on_signals();
    let node = scomo_ads::ads::start(config, shutdown)
        .await
        .context("starting the ADS node")?;
    print_ads(&node);
    say!("ready {}", ads_ready(&node));
    node.wait().await;
    Ok(())
}

fn print_ads(node: &scomo_ads::ads::AdsHandle) {
    if node.mints {
        say!("ADS download  {}", node.public_url);
    } else {
        say!(
            "ADS download  {} (no public URL: set --public-url or SCOMO_ADS_PUBLIC_URL to mint URLs)",
            node.public_url
        );
    }
    say!("ADS admin     {}", node.admin_url);
    if let Some(h) = node.http_addr {
        say!("ADS plain     http://{h}");
    }
    say!("certificate   {}", node.cert_path.display());
    let token_file = node.data_dir.join("admin.token");
    if node.admin_token_generated {
        // Shown once, at first start, on stdout only (never through the log).
        say!(
            "admin token   {} (saved to {})",
            node.admin_token,
            token_file.display()
        );
    } else {
        say!("admin token   in {}", token_file.display());
    }
}

fn print_dms(h: &scomo_ads::dms::DmsHandle) {
    say!("DMS devices   {}", h.dm_url);
    say!("DMS EMI API   {}", h.api_url);
    let token_file = h.data_dir.join("api.token");
    if h.api_token_generated {
        say!(
            "API token     {} (saved to {})",
            h.api_token,
            token_file.display()
        );
    } else {
        say!("API token     in {}", token_file.display());
    }
}

async fn dms(args: DmsArgs) -> anyhow::Result<()> {
    let config = DmsConfig::from_args(args)?;
    let shutdown = scomo_ads::net::listener::shutdown_on_signals();
    let h = scomo_ads::dms::start(config, shutdown)
        .await
        .context("starting the DMS")?;
    print_dms(&h);
    say!("certificate   {}", h.cert_path.display());
    say!("ready {}", dms_ready(&h));
    h.wait().await;
    Ok(())
}

async fn device(args: DeviceArgs) -> anyhow::Result<()> {
    use scomo_ads::device::fleet::{self, FleetConfig};
    let cfg = FleetConfig::from_args(&args)?;
    let shutdown = scomo_ads::net::listener::shutdown_on_signals();
    let has_request = cfg.request.is_some();
    let (report, _agents) = fleet::run(cfg, shutdown.clone()).await?;
    if has_request {
        say!(
            "{} device(s): {} succeeded, {} failed in {:.2}s; {:.1} completions/s, p50 {} ms, p99 {} ms",
            report.agents,
            report.succeeded,
            report.failed,
            report.elapsed.as_secs_f64(),
            report.per_second(),
            report.percentile(50.0).as_millis(),
            report.percentile(99.0).as_millis()
        );
        if args.once {
            if report.failed > 0 {
                anyhow::bail!("{} device(s) failed", report.failed);
            }
            return Ok(());
        }
    }
    say!("listening for package 0; Ctrl-C to stop");
    shutdown.cancelled().await;
    Ok(())
}

async fn demo(args: DemoArgs, log: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    if let Some(path) = &log {
        say!("logs: {}", path.display());
    }
    let tmp;
    let dir = match args.data {
        Some(d) => d,
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    say!("starting ADS, DMS, EMI receiver and devices on loopback ...");
    let rows = scomo_ads::demo::run(&dir).await?;
    say_raw!("{}", scomo_ads::demo::table(&rows));
    let failed = rows.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} flows failed", rows.len());
    }
    say!("all {} flows passed", rows.len());
    Ok(())
}

async fn up(args: ServeArgs) -> anyhow::Result<()> {
    let root = args
        .data
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("./data"));
    let mut dmsc = Config::load(args.config.as_deref())?.dms;
    dmsc.read_env_secrets();
    let ads = AdsConfig::from_args(args)?;
    let shutdown = scomo_ads::net::listener::shutdown_on_signals();
    let (node, dms) = scomo_ads::stack::start(&root, ads, dmsc, shutdown)
        .await
        .context("starting the ADS and the DMS")?;
    print_ads(&node);
    print_dms(&dms);
    say!("");
    say!("Try it (another terminal):");
    say!("  echo hello > /tmp/c.bin");
    say!(
        "  cargo run --release -- publish /tmp/c.bin --name demo --version 1 --data {} --admin-url {}",
        node.data_dir.display(),
        node.admin_url
    );
    say!(
        "  cargo run --release -- mint <id printed above> --ttl 10m --data {} --admin-url {}",
        node.data_dir.display(),
        node.admin_url
    );
    say!(
        "  curl --cacert {} -O -J <url printed above>",
        node.cert_path.display()
    );
    say!(
        "  curl --cacert {} -H \"Authorization: Bearer $(cat {})\" {}/v1/components",
        dms.cert_path.display(),
        dms.data_dir.join("api.token").display(),
        dms.api_url
    );
    // The same machine-readable line as `serve` and `dms`, both sets of endpoints in one.
    let mut ready = ads_ready(&node);
    if let (Some(all), serde_json::Value::Object(dms_part)) =
        (ready.as_object_mut(), dms_ready(&dms))
    {
        all.extend(dms_part.into_iter().map(|(k, v)| {
            let key = if k == "http" {
                "dms_http".to_string()
            } else {
                k
            };
            (key, v)
        }));
    }
    say!("ready {ready}");
    tokio::join!(node.wait(), dms.wait());
    Ok(())
}

/// The ADS part of the `ready {...}` line.
fn ads_ready(node: &scomo_ads::ads::AdsHandle) -> serde_json::Value {
    serde_json::json!({
        "download": node.download_addr.to_string(),
        "admin": node.admin_addr.to_string(),
        "http": node.http_addr.map(|a| a.to_string()),
        "public_url": node.public_url,
    })
}

/// The DMS part of the `ready {...}` line.
fn dms_ready(h: &scomo_ads::dms::DmsHandle) -> serde_json::Value {
    serde_json::json!({"dm": h.dm_url, "api": h.api_url, "http": h.http_addr.map(|a| a.to_string())})
}
