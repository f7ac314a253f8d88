//! Flow 5.4.3, server interactions with SCOMO on the device: the EMI asks for an operation,
//! the DMS initiates a session and Execs it with a correlator, the device performs it and
//! reports the SCOMO result asynchronously (Generic Alert 1226), and the EMI is notified.

use crate::common::*;
use serde_json::json;

/// A DMS and a device that already holds component `fw` in Delivered (5.4.1 done first).
async fn delivered(id: &str, faults: scomo_ads::device::Faults) -> (Dms, Device) {
    let dms = start_dms().await;
    dms.add_component(
        &[("name", "fw"), ("version", "2.0"), ("manufacturer", "Acme")],
        pattern(50_000, 9),
    )
    .await;
    let dev = start_device(&dms, id, faults).await;
    let job = dms
        .create_job(json!({"device": id, "operation": "download", "component": "fw"}))
        .await;
    let done = dms.wait_job(&job, 30).await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    (dms, dev)
}

async fn op(
    dms: &Dms,
    device: &str,
    operation: &str,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut body = json!({"device": device, "operation": operation, "component": "fw"});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let id = dms.create_job(body).await;
    let j = dms.wait_job(&id, 30).await;
    // Step 5: the EMI hears about it, signed.
    let mut told = None;
    for _ in 0..200 {
        told = dms
            .emi
            .delivered()
            .into_iter()
            .find(|a| a.json()["job"]["id"] == id.as_str());
        if told.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let told = told.expect("EMI notified");
    assert!(verify_signature(&dms.dir.path().join("emi.secret"), &told));
    assert_eq!(told.json()["job"]["result_code"], j["result_code"]);
    j
}

const STEPS: [&str; 6] = [
    "emi_request",
    "session_initiated",
    "operation_requested",
    "operation_accepted",
    "device_result",
    "emi_notified",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_flow_every_operation_with_its_state_transitions() {
    let id = "IMEI:3001";
    let (dms, dev) = delivered(id, Default::default()).await;
    let tree = || async { dev.agent.tree().await };

    let j = op(&dms, id, "install_inactive", json!({})).await;
    assert_eq!(
        (j["state"].as_str(), j["result_code"].as_u64()),
        (Some("succeeded"), Some(1200)),
        "{j:#}"
    );
    assert_in_order(&steps(&j), &STEPS);
    assert_eq!(
        tree().await.value("./SCOMO/Inventory/Delivered/fw/State"),
        Some("20"),
        "delivered → installed"
    );
    assert_eq!(
        tree().await.value("./SCOMO/Inventory/Deployed/fw/State"),
        Some("10"),
        "deployed inactive"
    );

    let j = op(&dms, id, "activate", json!({})).await;
    assert_eq!(j["result_code"], 1200);
    assert_in_order(&steps(&j), &STEPS);
    assert_eq!(
        tree().await.value("./SCOMO/Inventory/Deployed/fw/State"),
        Some("20"),
        "active"
    );

    let j = op(&dms, id, "deactivate", json!({})).await;
    assert_eq!(j["result_code"], 1200);
    assert_eq!(
        tree().await.value("./SCOMO/Inventory/Deployed/fw/State"),
        Some("10"),
        "inactive"
    );

    let j = op(&dms, id, "remove", json!({})).await;
    assert_eq!(j["result_code"], 1200);
    assert!(
        tree().await.get("./SCOMO/Inventory/Deployed/fw").is_none(),
        "removed"
    );

    // Removing again: the node is gone, the device says so at Exec time; the EMI is told.
    let j = op(&dms, id, "remove", json!({})).await;
    assert_eq!(j["state"], "failed");
    assert!(
        j["reason"].as_str().unwrap().contains("status 404"),
        "{j:#}"
    );

    // Install (active) straight from Delivered again.
    let j = op(&dms, id, "install", json!({})).await;
    assert_eq!(j["result_code"], 1200);
    assert_eq!(
        tree().await.value("./SCOMO/Inventory/Deployed/fw/State"),
        Some("20")
    );
    assert!(
        dev.agent.pending_reports().await.is_empty(),
        "every report acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternative_1_the_device_asks_for_the_operation() {
    let id = "IMEI:3002";
    let (dms, dev) = delivered(id, Default::default()).await;
    dev.agent
        .request_operation("install", "fw", false)
        .await
        .unwrap();
    let mut job = None;
    for _ in 0..200 {
        let conn = rusqlite::Connection::open(dms.dir.path().join("dms.sqlite3")).unwrap();
        let found: Option<String> = conn
            .query_row(
                "SELECT id FROM jobs WHERE device = ?1 AND json LIKE '%\"source\":\"device\"%'",
                [id],
                |r| r.get(0),
            )
            .ok();
        if found.is_some() {
            job = found;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let j = dms
        .wait_job(&job.expect("a job from the device's request"), 30)
        .await;
    assert_eq!(j["result_code"], 1200, "{j:#}");
    assert_in_order(
        &steps(&j),
        &[
            "device_request",
            "session_initiated",
            "operation_requested",
            "operation_accepted",
            "device_result",
            "emi_notified",
        ],
    );
    assert_eq!(
        dev.agent
            .tree()
            .await
            .value("./SCOMO/Inventory/Deployed/fw/State"),
        Some("20")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternative_2_devdetail_and_inventory_first() {
    let id = "IMEI:3003";
    let (dms, dev) = delivered(id, Default::default()).await;
    let j = op(&dms, id, "install", json!({"inventory_first": true})).await;
    assert_eq!(j["result_code"], 1200, "{j:#}");
    assert_in_order(
        &steps(&j),
        &[
            "emi_request",
            "session_initiated",
            "devdetail",
            "inventory",
            "operation_requested",
            "device_result",
            "emi_notified",
        ],
    );
    let d = dms.device(id).await;
    assert_eq!(d["inventory"]["delivered"]["fw"]["Name"], "fw", "{d:#}");
    assert_eq!(
        dev.agent
            .tree()
            .await
            .value("./SCOMO/Inventory/Deployed/fw/State"),
        Some("20")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_failure_result_code_reaches_the_emi() {
    let id = "IMEI:3004";
    let faults = scomo_ads::device::Faults {
        fail_install: true,
        ..Default::default()
    };
    let (dms, dev) = delivered(id, faults).await;
    let j = op(&dms, id, "install", json!({})).await;
    assert_eq!(j["state"], "failed");
    assert_eq!(j["result_code"], 1405);
    assert!(j["reason"].as_str().unwrap().contains("1405"), "{j:#}");
    let tree = dev.agent.tree().await;
    assert_eq!(
        tree.value("./SCOMO/Inventory/Delivered/fw/Status"),
        Some("50"),
        "install failed, package kept"
    );
    assert!(tree.get("./SCOMO/Inventory/Deployed/fw").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_delivered_data_fails_validation_with_1407() {
    let id = "IMEI:3005";
    let faults = scomo_ads::device::Faults {
        corrupt_delivered: true,
        ..Default::default()
    };
    let (dms, _dev) = delivered(id, faults).await;
    let j = op(&dms, id, "install", json!({})).await;
    assert_eq!(j["result_code"], 1407, "{j:#}");
}
