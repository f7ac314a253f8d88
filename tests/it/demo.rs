//! The newcomer's commands: `demo` runs every flow and passes; `up` serves ADS + DMS wired
//! together and prints where.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::common::*;

#[test]
fn demo_runs_every_flow_and_passes() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .arg("demo")
        .arg("--data")
        .arg(dir.path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for flow in scomo_ads::demo::FLOWS {
        for encoding in ["xml", "wbxml"] {
            let line = stdout
                .lines()
                .find(|l| {
                    l.strip_prefix(flow)
                        .is_some_and(|rest| rest.trim_start().starts_with(encoding))
                })
                .unwrap_or_else(|| panic!("no row for {flow} in {encoding}:\n{stdout}"));
            assert!(line.contains(" pass "), "{line}");
            // The mechanism column says how the component travelled.
            let want = if flow.starts_with("dlota ") {
                Some("dlota")
            } else if flow.contains("5.4.2") || flow == "resumed download" {
                Some("https")
            } else if flow.contains("5.4.1") {
                Some("dm")
            } else {
                None
            };
            if let Some(m) = want {
                assert!(
                    line.split_whitespace().nth(flow.split(' ').count() + 1) == Some(m),
                    "{flow} should show {m}: {line}"
                );
            }
        }
    }
    assert!(stdout.contains("all 46 flows passed"), "{stdout}");
    // The table is what a newcomer sees: the logs went to a file, whose path is printed.
    let log = dir.path().join("demo.log");
    assert!(
        stdout.contains(&format!("logs: {}", log.display())),
        "{stdout}"
    );
    assert!(!stdout.contains(" INFO ") && !String::from_utf8_lossy(&out.stderr).contains(" INFO "));
    assert!(std::fs::read_to_string(&log).unwrap().contains("INFO"));
}

const UP_SECRET: &str = "whsec_dXAtc2VjcmV0LWZyb20tdGhlLWVudmlyb25tZW50";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_the_ads_and_the_dms_together() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("up.toml");
    std::fs::write(
        &cfg,
        "[ads]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[dms]\nlisten = \"127.0.0.1:0\"\napi_listen = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let mut child = Command::new(bin())
        .arg("up")
        .arg("--data")
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&cfg)
        .env_remove("SCOMO_ADS_ADMIN_TOKEN")
        .env_remove("SCOMO_DMS_API_TOKEN")
        .env("SCOMO_ADS_CALLBACK_SECRET", UP_SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut api = None;
    let mut admin = None;
    let mut ready = None;
    for _ in 0..60 {
        let Some(Ok(l)) = lines.next() else { break };
        if let Some(json) = l.strip_prefix("ready ") {
            ready = Some(serde_json::from_str::<serde_json::Value>(json).unwrap());
        }
        if let Some(u) = l.strip_prefix("DMS EMI API   ") {
            api = Some(u.trim().to_string());
        }
        if let Some(u) = l.strip_prefix("ADS admin     ") {
            admin = Some(u.trim().to_string());
        }
        if api.is_some() && admin.is_some() && ready.is_some() {
            break;
        }
    }
    let (api, admin) = (
        api.expect("DMS API printed"),
        admin.expect("ADS admin printed"),
    );
    // The same machine-readable line as `serve` and `dms`, with both sets of endpoints.
    let ready = ready.expect("a ready line");
    assert_eq!(
        format!("https://{}", ready["admin"].as_str().unwrap()),
        admin
    );
    assert_eq!(ready["api"].as_str().unwrap(), api);
    assert!(
        ready["download"].is_string() && ready["dm"].is_string(),
        "{ready}"
    );
    let data = dir.path().join("data");
    // The ADS signs with the secret from the environment, and the DMS verifies with it.
    assert_eq!(
        std::fs::read_to_string(data.join("callback.secret")).unwrap(),
        UP_SECRET
    );
    for (url, cert) in [
        (api, data.join("dms/tls/cert.pem")),
        (admin, data.join("tls/cert.pem")),
    ] {
        let r = client(&cert)
            .get(format!("{url}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{url}");
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn no_secret_reaches_the_logs_of_a_full_demo_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .arg("demo")
        .arg("--data")
        .arg(dir.path())
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(out.status.success());
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        logs.len() > 1000,
        "debug logging produced too little to prove anything"
    );
    for f in [
        "admin.token",
        "mac.key",
        "callback.secret",
        "dms/api.token",
        "dms/emi.secret",
    ] {
        let secret = std::fs::read_to_string(dir.path().join(f)).unwrap();
        let secret = secret.trim();
        assert!(secret.len() >= 32, "{f}");
        // The whole secret, and for whsec_ secrets the key part alone.
        for needle in [secret, secret.trim_start_matches("whsec_")] {
            assert!(!logs.contains(needle), "{f} appears in the logs");
        }
    }
    let key = std::fs::read_to_string(dir.path().join("tls/key.pem")).unwrap();
    let body = key.lines().nth(1).unwrap();
    assert!(
        !logs.contains(body),
        "the TLS private key appears in the logs"
    );
}

/// `serve --data DIR` and `up --data DIR` lay the ADS out the same way (the DMS goes to
/// `DIR/dms`): a node first run with `serve` is the same node under `up`, its components and
/// admin token kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_up_share_one_data_layout() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let published = {
        let node = Proc::spawn(&data, &[]);
        let file = dir.path().join("c.bin");
        std::fs::write(&file, pattern(5_000, 4)).unwrap();
        let meta = node
            .admin_client()
            .publish(&file, "kept", "1", |_, _| {})
            .await
            .unwrap();
        meta.id
    };
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let cfg = dir.path().join("up.toml");
    std::fs::write(
        &cfg,
        "[ads]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[dms]\nlisten = \"127.0.0.1:0\"\napi_listen = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let mut child = Command::new(bin())
        .arg("up")
        .arg("--data")
        .arg(&data)
        .arg("--config")
        .arg(&cfg)
        .env_remove("SCOMO_ADS_ADMIN_TOKEN")
        .env_remove("SCOMO_DMS_API_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = loop {
        let l = lines.next().expect("a ready line").unwrap();
        if let Some(j) = l.strip_prefix("ready ") {
            break serde_json::from_str::<serde_json::Value>(j).unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let r = client(&data.join("tls/cert.pem"))
        .get(format!(
            "https://{}/v1/components/{published}",
            ready["admin"].as_str().unwrap()
        ))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "up serves the node serve made");
    assert!(
        data.join("dms/api.token").exists(),
        "the DMS beside it, in DIR/dms"
    );
    assert!(!data.join("ads").exists());
    let _ = child.kill();
    let _ = child.wait();
}
