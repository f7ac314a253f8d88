//! The `dms` and `device` commands as operators run them: real processes, a fleet of three
//! devices provisioning themselves, asking for a component, and reporting a summary.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_devices_asks_a_dms_process_for_a_component() {
    let home = tempfile::tempdir().unwrap();
    let mut dms = Command::new(bin())
        .args([
            "dms",
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(home.path().join("dms"))
        .env_remove("SCOMO_DMS_API_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(dms.stdout.take().unwrap()).lines();
    let ready = loop {
        let l = lines.next().unwrap().unwrap();
        if let Some(j) = l.strip_prefix("ready ") {
            break serde_json::from_str::<serde_json::Value>(j).unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let api = ready["api"].as_str().unwrap().to_string();
    let dm = ready["dm"].as_str().unwrap().to_string();
    let cert = home.path().join("dms/tls/cert.pem");
    let token = std::fs::read_to_string(home.path().join("dms/api.token"))
        .unwrap()
        .trim()
        .to_string();
    let r = client(&cert)
        .post(format!("{api}/v1/components"))
        .query(&[("name", "fw"), ("version", "1.0")])
        .bearer_auth(&token)
        .body(pattern(40_000, 3))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let out = tokio::process::Command::new(bin())
        .args([
            "device",
            "--id",
            "IMEI:77",
            "--fleet",
            "3",
            "--request",
            "fw",
            "--once",
        ])
        .args(["--dms-url", &dm, "--api-url", &api])
        .arg("--cacert")
        .arg(&cert)
        .arg("--state")
        .arg(home.path().join("fleet/state.json"))
        .env("SCOMO_DMS_API_TOKEN", &token)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("3 device(s): 3 succeeded, 0 failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("completions/s") && stdout.contains("p99"),
        "{stdout}"
    );
    // Each device got its own identity and state file, and holds the component installed.
    for i in 1..=3 {
        let state: serde_json::Value = serde_json::from_slice(
            &std::fs::read(home.path().join(format!("fleet/device-{i}.json"))).unwrap(),
        )
        .unwrap();
        let nodes = state["tree"]["nodes"].as_object().unwrap();
        assert_eq!(nodes["./DevInfo/DevId"]["value"], format!("IMEI:77-{i}"));
        assert_eq!(nodes["./SCOMO/Inventory/Deployed/fw/State"]["value"], "20");
    }
    let _ = dms.kill();
    let _ = dms.wait();
}

/// A fleet provisioning itself faster than the EMI API's request rate waits out each 429 as
/// its Retry-After says, instead of failing devices on the API's own limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_honours_retry_after_from_the_emi_api() {
    let dms = start_dms_with(|c| {
        c.api_limits.requests_per_sec = 1;
        c.api_limits.burst = 1;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut base = device_config(&dms, "IMEI:880", dir.path(), Default::default());
    base.state_path = dir.path().join("state.json");
    let cfg = scomo_ads::device::fleet::FleetConfig {
        base,
        count: 3,
        notify_listen: "127.0.0.1:0".parse().unwrap(),
        provision: Some((dms.handle.api_url.clone(), dms.handle.api_token.clone())),
        request: None,
        inventory_first: false,
        delivery: None,
    };
    let (_, agents) = scomo_ads::device::fleet::run(cfg, dms.shutdown.clone())
        .await
        .expect("every device provisioned despite the 429s");
    assert_eq!(agents.len(), 3);
    let conn = rusqlite::Connection::open(dms.dir.path().join("dms.sqlite3")).unwrap();
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM devices", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 3);
}
