//! The real binary as an operator runs it: one process per data directory, a shutdown that
//! does not depend on anyone reading its output, errors said once, and every documented
//! environment variable taking effect.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use serde_json::json;

/// Starts `scomo-ads serve` on `dir` with `envs`, reads up to the ready line; returns the child
/// and the parsed ready line. Stdout stays piped (the caller decides whether to keep reading).
fn serve_with_env(
    dir: &std::path::Path,
    envs: &[(&str, &str)],
    args: &[&str],
) -> (
    std::process::Child,
    serde_json::Value,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
) {
    let mut cmd = Command::new(bin());
    cmd.arg("serve")
        .env_remove("SCOMO_ADS_ADMIN_TOKEN")
        .env_remove("SCOMO_ADS_CALLBACK_SECRET")
        .env_remove("RUST_LOG")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if !envs.iter().any(|(k, _)| *k == "SCOMO_ADS_DATA") {
        cmd.arg("--data").arg(dir);
    }
    if !envs.iter().any(|(k, _)| *k == "SCOMO_ADS_LISTEN") {
        cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = loop {
        let line = lines.next().expect("ready line").unwrap();
        if let Some(json) = line.strip_prefix("ready ") {
            break serde_json::from_str::<serde_json::Value>(json).unwrap();
        }
    };
    (child, ready, lines)
}

fn wait_exit(child: &mut std::process::Child, secs: u64) -> Option<std::process::ExitStatus> {
    for _ in 0..secs * 20 {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn a_second_node_on_the_same_data_directory_is_refused_with_the_first_ones_pid() {
    let dir = tempfile::tempdir().unwrap();
    let first = Proc::spawn(dir.path(), &[]);
    let out = Command::new(bin())
        .args(["serve", "--data"])
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("is in use by pid {}", first.child.id())),
        "{stderr}"
    );
    // The DMS and `up` take their directories the same way.
    let dms_dir = tempfile::tempdir().unwrap();
    let dms_args = |d: &std::path::Path| {
        let mut c = Command::new(bin());
        c.args(["dms", "--data"])
            .arg(d)
            .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        c
    };
    let mut dms = dms_args(dms_dir.path()).spawn().unwrap();
    let mut lines = BufReader::new(dms.stdout.take().unwrap()).lines();
    while !lines.next().unwrap().unwrap().starts_with("ready ") {}
    let second = dms_args(dms_dir.path())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("is in use by pid"));
    let _ = dms.kill();
    let _ = dms.wait();
}

#[test]
fn sigterm_stops_the_node_even_when_nobody_reads_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--data"])
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // `serve 2>&1 | head -1`: the reader of both streams goes away before the banner.
    drop(child.stdout.take());
    drop(child.stderr.take());
    assert!(
        wait_exit(&mut child, 0).is_none(),
        "exited at once with its output closed"
    );
    for _ in 0..100 {
        if dir.path().join("admin.token").exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the node died writing to a closed stdout: {:?}",
        child.try_wait()
    );
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = wait_exit(&mut child, 15).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("the node ignored SIGTERM with its output pipes closed");
    });
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_busy_port_is_reported_once_and_clearly() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["serve", "--data"])
        .arg(dir.path())
        .args(["--listen", &addr, "--admin-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().find(|l| l.starts_with("error:")).unwrap();
    assert_eq!(line.matches("Address already in use").count(), 1, "{line}");
    assert!(line.contains(&addr), "{line}");
}

/// Every environment variable the README documents for `serve`, at once, each checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_serve_variable_takes_effect() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("from-env");
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "[ads]\ndefault_ttl_secs = 777\n").unwrap();
    // A certificate of our own for SCOMO_ADS_TLS_CERT / _KEY.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_file, key_file) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let token = "env-admin-token-0123456789";
    let rx = Receiver::start().await;
    let (cert_s, key_s, config_s) = (
        cert_file.to_str().unwrap(),
        key_file.to_str().unwrap(),
        config.to_str().unwrap(),
    );
    let (mut child, ready, lines) = serve_with_env(
        dir.path(),
        &[
            ("SCOMO_ADS_DATA", data.to_str().unwrap()),
            ("SCOMO_ADS_LISTEN", "127.0.0.1:0"),
            ("SCOMO_ADS_ADMIN_LISTEN", "127.0.0.1:0"),
            ("SCOMO_ADS_HTTP_LISTEN", "127.0.0.1:0"),
            ("SCOMO_ADS_PUBLIC_URL", "https://edge.example.net:9443"),
            ("SCOMO_ADS_CONFIG", config_s),
            ("SCOMO_ADS_TLS_CERT", cert_s),
            ("SCOMO_ADS_TLS_KEY", key_s),
            ("SCOMO_ADS_CACHE_MB", "3"),
            ("SCOMO_ADS_ADMIN_TOKEN", token),
            ("SCOMO_ADS_CALLBACK_SECRET", secret),
        ],
        &[],
    );
    std::thread::spawn(move || for _ in lines {});
    assert!(data.join("lock").exists(), "SCOMO_ADS_DATA");
    assert!(ready["http"].is_string(), "SCOMO_ADS_HTTP_LISTEN: {ready}");
    assert_eq!(ready["public_url"], "https://edge.example.net:9443");
    assert!(
        !data.join("admin.token").exists(),
        "the env token is not written"
    );
    assert!(
        !data.join("callback.secret").exists(),
        "the env secret is not written"
    );
    let admin = format!("https://{}", ready["admin"].as_str().unwrap());
    let c = client(&cert_file);
    let meta: serde_json::Value = c
        .post(format!("{admin}/v1/components?name=fw&version=1"))
        .bearer_auth(token)
        .body(pattern(5000, 7))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let minted: serde_json::Value = c
        .post(format!("{admin}/v1/tickets"))
        .bearer_auth(token)
        .json(&json!({"component": meta["id"], "callback_url": rx.url}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = minted["url"].as_str().unwrap();
    assert!(url.starts_with("https://edge.example.net:9443/d/"), "{url}");
    let ttl = minted["expires_at_unix"].as_u64().unwrap() - ads_now();
    assert!((770..=777).contains(&ttl), "SCOMO_ADS_CONFIG: ttl {ttl}");
    let metrics = c
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!("scomo_ads_cache_budget_bytes {}", 3 << 20)),
        "SCOMO_ADS_CACHE_MB"
    );
    // Download through the node's own address (the public URL names a balancer).
    let path = url.split_once("/d/").unwrap().1;
    let got = c
        .get(format!(
            "https://localhost:{}/d/{path}",
            ready["download"]
                .as_str()
                .unwrap()
                .rsplit_once(':')
                .unwrap()
                .1
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.status(),
        200,
        "served with SCOMO_ADS_TLS_CERT's certificate"
    );
    assert_eq!(got.bytes().await.unwrap().len(), 5000);
    let attempts = rx.wait_for(1, 15).await;
    let secret_file = dir.path().join("expected.secret");
    std::fs::write(&secret_file, secret).unwrap();
    assert!(
        verify_signature(&secret_file, &attempts[0]),
        "the callback is signed with SCOMO_ADS_CALLBACK_SECRET"
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn ads_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn a_device_with_an_api_url_but_no_token_refuses_to_start() {
    let out = Command::new(bin())
        .args(["device", "--api-url", "https://127.0.0.1:1", "--once"])
        .env_remove("SCOMO_DMS_API_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--api-url needs --api-token or SCOMO_DMS_API_TOKEN"),
        "{stderr}"
    );
}

#[test]
fn logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin())
        .args(["serve", "--data"])
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while !lines.next().unwrap().unwrap().starts_with("ready ") {}
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ADS node started"), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "ANSI codes in a piped log: {stderr:?}"
    );
    // Values are logged as values: an absent one is left out, not written `None`.
    assert!(
        !stderr.contains("Some(") && !stderr.contains("=None"),
        "{stderr}"
    );
}

#[test]
fn listen_addresses_may_name_a_host() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, ready, _lines) = serve_with_env(
        dir.path(),
        &[
            ("SCOMO_ADS_LISTEN", "localhost:0"),
            ("SCOMO_ADS_ADMIN_LISTEN", "localhost:0"),
        ],
        &[],
    );
    let download: std::net::SocketAddr = ready["download"].as_str().unwrap().parse().unwrap();
    assert!(download.ip().is_loopback(), "{ready}");
    let _ = child.kill();
    let _ = child.wait();
    let out = Command::new(bin())
        .args(["serve", "--listen", "no-such-host.invalid:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-host.invalid:1"));
}
