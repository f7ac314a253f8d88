//! Flow 5.4.1, OMA DM download of a software component, over real sockets and TLS: the DMS
//! notifies the device (package 0), reads DevInfo, chooses the build, delivers it inside the
//! DM session as a large object, the device acknowledges, and the EMI is notified.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::json;

const FW_V2: usize = 200_000; // > the device's 16 KiB MaxMsgSize: many chunks

async fn catalog(dms: &Dms) -> Vec<u8> {
    let bytes = pattern(FW_V2, 42);
    dms.add_component(
        &[
            ("name", "fw"),
            ("version", "1.0"),
            ("manufacturer", "Acme"),
            ("model", "Roadrunner"),
        ],
        pattern(1000, 1),
    )
    .await;
    dms.add_component(
        &[
            ("name", "fw"),
            ("version", "2.0"),
            ("manufacturer", "Acme"),
            ("model", "Roadrunner"),
        ],
        bytes.clone(),
    )
    .await;
    dms.add_component(
        &[
            ("name", "fw"),
            ("version", "9.0"),
            ("manufacturer", "Other"),
            ("model", "X"),
        ],
        pattern(10, 2),
    )
    .await;
    bytes
}

fn emi_event_for(dms: &Dms, job_id: &str) -> serde_json::Value {
    let got = dms.emi.delivered();
    let a = got
        .iter()
        .find(|a| a.json()["job"]["id"] == job_id)
        .unwrap_or_else(|| panic!("no EMI webhook for {job_id}"));
    assert!(
        verify_signature(&dms.dir.path().join("emi.secret"), a),
        "EMI webhook signature"
    );
    a.json()
}

async fn emi_told(dms: &Dms, job_id: &str) -> serde_json::Value {
    for _ in 0..200 {
        if dms
            .emi
            .delivered()
            .iter()
            .any(|a| a.json()["job"]["id"] == job_id)
        {
            return emi_event_for(dms, job_id);
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("EMI never told about {job_id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_flow() {
    let dms = start_dms().await;
    let bytes = catalog(&dms).await;
    let dev = start_device(&dms, "IMEI:490154203237518", Default::default()).await;
    // Step 1: the EMI asks for the download.
    let job = dms
        .create_job(json!({"device": "IMEI:490154203237518", "operation": "download", "component": "fw", "delivery": "dm"}))
        .await;
    let j = dms.wait_job(&job, 30).await;
    assert_eq!(j["state"], "succeeded", "{j:#}");
    assert_eq!(j["result_code"], 1200);
    assert_in_order(
        &steps(&j),
        &[
            "emi_request",
            "session_initiated",
            "devinfo",
            "build_chosen",
            "delivery",
            "device_ack",
            "emi_notified",
        ],
    );
    let chosen = j["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "build_chosen")
        .unwrap();
    assert!(
        chosen["detail"].as_str().unwrap().starts_with("fw 2.0"),
        "{chosen}"
    );
    // The device holds exactly the bytes, recorded as delivered.
    let tree = dev.agent.tree().await;
    assert_eq!(
        tree.value("./SCOMO/Inventory/Delivered/fw/State"),
        Some("10")
    );
    assert_eq!(
        tree.value("./SCOMO/Inventory/Delivered/fw/Name"),
        Some("fw")
    );
    let stored = std::fs::read(dev.dir.path().join("device.objects/fw")).unwrap();
    assert!(stored == bytes);
    // Step 7: the EMI got a signed webhook.
    let e = emi_told(&dms, &job).await;
    assert_eq!(e["event"], "job.succeeded");
    // The DMS recorded what the device said about itself.
    let d = dms.device("IMEI:490154203237518").await;
    assert_eq!(d["devinfo"]["model"], "Roadrunner");
    assert!(d.get("password").is_none(), "secrets never leave the API");
}
