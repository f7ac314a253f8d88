//! The management commands as an operator types them, against real processes and nodes:
//! `mint` with every ticket option, `tickets`, `components` and `callbacks` on an ADS node,
//! `devices` and `jobs` on a DMS (found through `up`'s data layout too), JSON when piped, one
//! clear line on an API error, and `--log-format json`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::common::*;

/// Runs the binary; returns (success, stdout, stderr).
async fn cli(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(bin())
        .args(args)
        .env_remove("SCOMO_ADS_ADMIN_TOKEN")
        .env_remove("SCOMO_DMS_API_TOKEN")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `extra` followed by the flags naming the API (`--admin-url URL --data DIR`, ...).
fn argv(extra: &[&str], flags: &[&str]) -> Vec<String> {
    extra.iter().chain(flags).map(|s| s.to_string()).collect()
}

/// Runs `args`, expecting success and JSON on stdout.
async fn run(args: Vec<String>) -> serde_json::Value {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    json_of(&refs).await
}

async fn json_of(args: &[&str]) -> serde_json::Value {
    let (ok, out, err) = cli(args).await;
    assert!(ok, "{args:?}: {out}\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_components_and_callbacks_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let node = Proc::spawn(dir.path(), &[]);
    let admin = format!("https://{}", node.admin);
    let data = dir.path().to_str().unwrap().to_string();
    let file = dir.path().join("fw.bin");
    std::fs::write(&file, pattern(30_000, 5)).unwrap();
    let flags = ["--admin-url", admin.as_str(), "--data", data.as_str()];
    let a = |extra: &[&str]| argv(extra, &flags);
    let meta = run(a(&[
        "publish",
        file.to_str().unwrap(),
        "--name",
        "fw",
        "--version",
        "1",
    ]))
    .await;
    let id = meta["id"].as_str().unwrap().to_string();
    let minted = run(a(&[
        "mint",
        &id,
        "--ttl",
        "10m",
        "--device-id",
        "IMEI:9",
        "--max-bytes",
        "90000",
        "--max-connections",
        "3",
        "--max-deliveries",
        "2",
        "--context",
        r#"{"job":"j-9"}"#,
        "--mechanism",
        "dlota",
        "--content-type",
        "application/x-fw",
    ]))
    .await;
    assert!(minted["url"].as_str().unwrap().contains("/dd/"), "{minted}");
    let tid = minted["id"].as_str().unwrap().to_string();
    let t = run(a(&["tickets", "show", &tid])).await;
    assert_eq!(t["max_bytes"], 90000);
    assert_eq!(t["max_connections"], 3);
    assert_eq!(t["max_deliveries"], 2);
    assert_eq!(t["context"]["job"], "j-9");
    assert_eq!(t["mechanism"], "dlota");
    assert_eq!(t["content_type"], "application/x-fw");
    assert_eq!(t["device_id"], "IMEI:9");
    let listed = run(a(&[
        "tickets", "list", "--device", "IMEI:9", "--state", "issued",
    ]))
    .await;
    assert_eq!(listed["items"][0]["id"], tid.as_str());
    let revoked = run(a(&["tickets", "revoke", &tid])).await;
    assert_eq!(revoked["state"], "revoked");
    let listed = run(a(&["tickets", "list", "--state", "issued"])).await;
    assert!(listed["items"].as_array().unwrap().is_empty(), "{listed}");
    // A bad --context is refused before any request.
    let (ok, _, err) = cli(&a(&["mint", &id, "--context", "{job"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>())
    .await;
    assert!(!ok && err.contains("--context must be JSON"), "{err}");
    let comps = run(a(&["components", "list"])).await;
    assert_eq!(comps["components"][0]["id"], id.as_str());
    assert_eq!(run(a(&["components", "show", &id])).await["name"], "fw");
    assert!(
        run(a(&["callbacks", "list", "--state", "dead"])).await["callbacks"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // An API error is one clear line and a failure exit.
    let (ok, _, err) = cli(&a(&["tickets", "show", "00ff"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>())
    .await;
    assert!(!ok, "{err}");
    assert!(
        err.contains("404") && err.contains("no ticket with id 00ff"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(
        run(a(&["components", "delete", &id])).await["deleted"],
        id.as_str()
    );
    assert!(run(a(&["components", "list"])).await["components"]
        .as_array()
        .unwrap()
        .is_empty());
    // No token anywhere: the error says where one comes from.
    let empty = tempfile::tempdir().unwrap();
    let (ok, _, err) = cli(&[
        "tickets",
        "list",
        "--admin-url",
        &admin,
        "--data",
        empty.path().to_str().unwrap(),
    ])
    .await;
    assert!(
        !ok && err.contains("SCOMO_ADS_ADMIN_TOKEN") && err.contains("admin.token"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_and_jobs_from_the_command_line() {
    let dms = start_dms().await;
    dms.add_component(&[("name", "app"), ("version", "1.0")], pattern(5_000, 6))
        .await;
    // `up --data DIR` keeps the DMS in DIR/dms: the commands find its token there.
    let up_like = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(dms.dir.path(), up_like.path().join("dms")).unwrap();
    let api = dms.handle.api_url.clone();
    let data = up_like.path().to_str().unwrap().to_string();
    let flags = ["--api-url", api.as_str(), "--data", data.as_str()];
    let e = |extra: &[&str]| argv(extra, &flags);
    let d = run(e(&[
        "devices",
        "provision",
        "IMEI:42",
        "--password",
        "pw",
        "--username",
        "login-42",
        "--alternate-mechanism",
        "dlota",
    ]))
    .await;
    assert_eq!(d["id"], "IMEI:42");
    assert_eq!(d["username"], "login-42");
    assert_eq!(d["alternate_mechanism"], "dlota");
    assert!(d.get("password").is_none(), "no secret in the answer");
    assert_eq!(
        run(e(&["devices", "show", "IMEI:42"])).await["id"],
        "IMEI:42"
    );
    let listed = run(e(&["devices", "list", "--limit", "5"])).await;
    assert_eq!(listed["items"][0]["id"], "IMEI:42");
    let created = run(e(&[
        "jobs",
        "create",
        "--device",
        "IMEI:42",
        "--operation",
        "download",
        "--component",
        "app",
        "--delivery",
        "dm",
    ]))
    .await;
    let job = created["job_id"].as_str().unwrap().to_string();
    let shown = run(e(&["jobs", "show", &job])).await;
    assert_eq!(shown["device"], "IMEI:42");
    assert_eq!(shown["timeline"][0]["step"], "emi_request");
    let listed = run(e(&["jobs", "list", "--device", "IMEI:42"])).await;
    assert_eq!(listed["items"][0]["id"], job.as_str());
    let (ok, _, err) = cli(&e(&[
        "jobs",
        "create",
        "--device",
        "IMEI:42",
        "--operation",
        "download",
        "--component",
        "nope",
    ])
    .iter()
    .map(String::as_str)
    .collect::<Vec<_>>())
    .await;
    assert!(!ok && err.contains("404"), "{err}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin())
        .args([
            "serve",
            "--log-format",
            "json",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(dir.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let started = loop {
        let line = lines.next().expect("a log line").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{v}");
        if v["fields"]["message"] == "ADS node started" {
            break v;
        }
    };
    assert!(started["fields"]["download_addr"].is_string(), "{started}");
    let _ = child.kill();
    let _ = child.wait();
}

/// The variables the management commands, `health` and the log format document, each read:
/// the same calls as above with the flags left out and the environment saying it instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_environment_replaces_the_flags() {
    let dms = start_dms().await;
    let out = tokio::process::Command::new(bin())
        .args(["devices", "list"])
        .env("SCOMO_DMS_API_URL", &dms.handle.api_url)
        .env("SCOMO_DMS_API_TOKEN", &dms.handle.api_token)
        // The data directory only for the certificate: the token came from the environment.
        .env("SCOMO_DMS_DATA", dms.dir.path())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["items"].is_array(), "{v}");
    let dir = tempfile::tempdir().unwrap();
    let node = Proc::spawn(dir.path(), &[]);
    let other = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(bin())
        .args(["tickets", "list", "--cacert"])
        .arg(node.cert())
        .env("SCOMO_ADS_ADMIN_URL", format!("https://{}", node.admin))
        .env("SCOMO_ADS_ADMIN_TOKEN", node.token())
        // A data directory with no token: the environment's is the one used.
        .env("SCOMO_ADS_DATA", other.path())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tokio::process::Command::new(bin())
        .arg("health")
        .env(
            "SCOMO_HEALTH_URL",
            format!("https://{}/healthz", node.admin),
        )
        .env("SCOMO_HEALTH_CACERT", node.cert())
        .env("SCOMO_ADS_DATA", other.path())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // SCOMO_LOG_FORMAT: a command's log lines as JSON.
    let out = tokio::process::Command::new(bin())
        .args([
            "health",
            "--timeout-secs",
            "1",
            "--url",
            "https://127.0.0.1:9/healthz",
        ])
        .env("SCOMO_LOG_FORMAT", "json")
        .env("RUST_LOG", "debug")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logs: Vec<&str> = stderr.lines().filter(|l| l.starts_with('{')).collect();
    assert!(!logs.is_empty(), "no JSON log line: {stderr}");
    for l in logs {
        serde_json::from_str::<serde_json::Value>(l).unwrap();
    }
}
