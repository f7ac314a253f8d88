//! Flow 5.4.2, download through an Alternate Download Server: DMS + ADS + device over real
//! sockets and TLS. The DMS chooses the build and the mechanism, publishes to an ADS node,
//! mints a one-time URL, writes it into the device's SCOMO Download node and Execs the
//! download; the device fetches (resuming on faults, verifying the DMS's hash) and reports;
//! the ADS's callback and the device's report both reach the DMS; the EMI is told once.

use crate::common::*;
use serde_json::json;

const SIZE: usize = 3 << 20;

async fn catalog(dms: &Dms) -> (Vec<u8>, String) {
    let bytes = pattern(SIZE, 77);
    let b = dms
        .add_component(
            &[("name", "fw"), ("version", "3.0"), ("manufacturer", "Acme")],
            bytes.clone(),
        )
        .await;
    (bytes, b["id"].as_str().unwrap().to_string())
}

async fn emi_events_for(dms: &Dms, job: &str) -> Vec<serde_json::Value> {
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    dms.emi
        .delivered()
        .into_iter()
        .filter(|a| a.json()["job"]["id"] == job)
        .map(|a| {
            assert!(verify_signature(&dms.dir.path().join("emi.secret"), &a));
            a.json()
        })
        .collect()
}

const SEED: [&str; 10] = [
    "emi_request",       // 1
    "session_initiated", // 2
    "devinfo",           // 3
    "build_chosen",      // 4
    "mechanism_chosen",  // 5
    "ticket_minted",
    "download_requested", // 6 (DMS asks the device to retrieve)
    "operation_accepted",
    "device_result", // 7 (device acknowledges)
    "emi_notified",  // 8
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_flow() {
    let (dms, mut nodes) = start_stack(&[("edge-1", 1)], "dm").await;
    let ads = nodes.remove(0);
    let (bytes, build) = catalog(&dms).await;
    let dev = start_device_trusting(&dms, "IMEI:5001", Default::default(), &[&ads]).await;
    let job = dms
        .create_job(json!({"device": "IMEI:5001", "operation": "download_install", "component": "fw", "delivery": "alternate"}))
        .await;
    let j = dms.wait_job(&job, 60).await;
    assert_eq!(j["state"], "succeeded", "{j:#}");
    assert_eq!(j["result_code"], 1200);
    assert_in_order(&steps(&j), &SEED);
    // The ADS's callback reached the DMS too (6': the device retrieved it from the ADS).
    let j = wait_step(&dms, &job, "ads_download_completed").await;
    assert_eq!(
        steps(&j)
            .iter()
            .filter(|s| *s == "ads_download_completed")
            .count(),
        1
    );
    // The device: bytes in Delivered, verified, installed and active; Download node complete.
    let tree = dev.agent.tree().await;
    assert_eq!(tree.value("./SCOMO/Download/fw/Status"), Some("40"));
    assert_eq!(
        tree.value("./SCOMO/Download/fw/Ext/Blake3"),
        Some(build.as_str())
    );
    assert_eq!(
        tree.value("./SCOMO/Inventory/Deployed/fw/State"),
        Some("20")
    );
    assert!(std::fs::read(dev.dir.path().join("device.objects/fw")).unwrap() == bytes);
    // The URL is spent: reuse by anyone else is refused and changes nothing.
    let url = tree
        .value("./SCOMO/Download/fw/PkgURL")
        .unwrap()
        .to_string();
    assert!(url.len() < 255);
    let second = client(&ads.cert()).get(&url).send().await.unwrap();
    assert_eq!(second.status(), 410);
    let events = emi_events_for(&dms, &job).await;
    assert_eq!(events.len(), 1, "the EMI is told once");
    assert_eq!(events[0]["event"], "job.succeeded");
    assert_eq!(dms.job(&job).await["state"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternative_1_device_initiated() {
    let (dms, mut nodes) = start_stack(&[("edge-1", 1)], "alternate").await;
    let ads = nodes.remove(0);
    let (bytes, _) = catalog(&dms).await;
    let dev = start_device_trusting(&dms, "IMEI:5002", Default::default(), &[&ads]).await;
    dev.agent.request_component("fw", false).await.unwrap();
    let jobs = wait_jobs(&dms, "IMEI:5002", 1).await;
    let j = dms.wait_job(&jobs[0], 60).await;
    assert_eq!(j["state"], "succeeded", "{j:#}");
    let mut want = SEED.to_vec();
    want[0] = "device_request";
    assert_in_order(&steps(&j), &want);
    assert!(std::fs::read(dev.dir.path().join("device.objects/fw")).unwrap() == bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternative_2_devdetail_and_inventory_first() {
    let (dms, mut nodes) = start_stack(&[("edge-1", 1)], "alternate").await;
    let ads = nodes.remove(0);
    catalog(&dms).await;
    let _dev = start_device_trusting(&dms, "IMEI:5003", Default::default(), &[&ads]).await;
    let job = dms
        .create_job(json!({"device": "IMEI:5003", "operation": "download", "component": "fw", "inventory_first": true}))
        .await;
    let j = dms.wait_job(&job, 60).await;
    assert_eq!(j["state"], "succeeded", "{j:#}");
    assert_in_order(
        &steps(&j),
        &[
            "emi_request",
            "session_initiated",
            "devinfo",
            "devdetail",
            "inventory",
            "build_chosen",
            "mechanism_chosen",
            "download_requested",
            "device_result",
            "emi_notified",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_interrupted_twice_resumes_and_completes() {
    let (dms, mut nodes) = start_stack(&[("edge-1", 1)], "alternate").await;
    let ads = nodes.remove(0);
    catalog(&dms).await;
    // Large enough that a cut at a third leaves bytes the node has not yet handed to the
    // socket (loopback buffers hold several MiB), so the resume is a real resume.
    let bytes = pattern(32 << 20, 78);
    dms.add_component(
        &[("name", "fw"), ("version", "4.0"), ("manufacturer", "Acme")],
        bytes.clone(),
    )
    .await;
    let faults = scomo_ads::device::Faults {
        interrupt_downloads: 2,
        ..Default::default()
    };
    let dev = start_device_trusting(&dms, "IMEI:5004", faults, &[&ads]).await;
    let job = dms
        .create_job(json!({"device": "IMEI:5004", "operation": "download", "component": "fw"}))
        .await;
    let j = dms.wait_job(&job, 60).await;
    assert_eq!(j["state"], "succeeded", "{j:#}");
    assert!(std::fs::read(dev.dir.path().join("device.objects/fw")).unwrap() == bytes);
    // The ADS saw at least three requests for the one ticket, and completed it once.
    let j = wait_step(&dms, &job, "ads_download_completed").await;
    let detail = j["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "ads_download_completed")
        .unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_string();
    let requests: u64 = detail
        .split(" in ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(requests >= 3, "{detail}");
    assert!(
        !steps(&j).contains(&"download_retry".to_string()),
        "resumed on the one URL: {:?}",
        steps(&j)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_object_on_the_ads_ends_in_validation_failed_at_the_emi() {
    let (dms, mut nodes) = start_stack(&[("edge-1", 1)], "alternate").await;
    let ads = nodes.remove(0);
    let (bytes, build) = catalog(&dms).await;
    // The ADS already holds the component (same id), and its file then rots on disk.
    let meta = ads.publish(bytes.clone(), "fw", "3.0").await;
    assert_eq!(meta.id, build);
    let path = ads
        .dir
        .path()
        .join("objects")
        .join(&build[..2])
        .join(&build);
    let mut rotten = std::fs::read(&path).unwrap();
    rotten[SIZE / 2] ^= 0x55;
    std::fs::write(&path, rotten).unwrap();
    let _dev = start_device_trusting(&dms, "IMEI:5005", Default::default(), &[&ads]).await;
    let job = dms
        .create_job(
            json!({"device": "IMEI:5005", "operation": "download_install", "component": "fw"}),
        )
        .await;
    let j = dms.wait_job(&job, 60).await;
    assert_eq!(j["state"], "failed");
    assert_eq!(j["result_code"], 1407, "{j:#}");
    let events = emi_events_for(&dms, &job).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["job"]["result_code"], 1407);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ads_node_down_means_the_other_node_is_used() {
    // The down node would win almost every pick by weight.
    let (dms, mut nodes) = start_stack(&[("edge-down", 100), ("edge-up", 1)], "alternate").await;
    let up = nodes.pop().unwrap();
    let down = nodes.pop().unwrap();
    catalog(&dms).await;
    down.shutdown.cancel();
    // Wait for the health check to notice.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let _dev = start_device_trusting(&dms, "IMEI:5006", Default::default(), &[&down, &up]).await;
    let job = dms
        .create_job(json!({"device": "IMEI:5006", "operation": "download", "component": "fw"}))
        .await;
    let j = dms.wait_job(&job, 60).await;
    assert_eq!(j["state"], "succeeded", "{j:#}");
    let mech = j["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "mechanism_chosen")
        .unwrap();
    assert!(
        mech["detail"].as_str().unwrap().contains("edge-up"),
        "{mech}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_before_after_and_twice_are_recorded_once_and_the_emi_told_once() {
    let (dms, mut nodes) = start_stack(&[("edge-1", 1)], "alternate").await;
    let ads = nodes.remove(0);
    catalog(&dms).await;
    let _dev = start_device_trusting(&dms, "IMEI:5007", Default::default(), &[&ads]).await;
    let job = dms
        .create_job(json!({"device": "IMEI:5007", "operation": "download", "component": "fw"}))
        .await;
    let done = dms.wait_job(&job, 60).await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let j = wait_step(&dms, &job, "ads_download_completed").await;
    // The ADS delivered its callback; replay the very same event (at-least-once delivery).
    let events: serde_json::Value = client(&ads.cert())
        .get(ads.admin("/v1/callbacks?state=delivered"))
        .bearer_auth(ads.token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let event = &events["callbacks"][0];
    let body = event["payload"].to_string();
    let signer = scomo_ads::webhook::sign::Signer::from_secrets(
        std::fs::read_to_string(ads.dir.path().join("callback.secret"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let post = |id: String, body: String| {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let sig = signer.sign(&id, ts, body.as_bytes());
        dms.client()
            .post(dms.api("/v1/ads-callbacks"))
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .body(body)
            .send()
    };
    let id = event["event_id"].as_str().unwrap().to_string();
    assert_eq!(post(id.clone(), body.clone()).await.unwrap().status(), 204);
    let again = dms.job(&job).await;
    assert_eq!(
        steps(&again)
            .iter()
            .filter(|s| *s == "ads_download_completed")
            .count(),
        1,
        "a replayed callback is recorded once"
    );
    assert_eq!(steps(&again).len(), steps(&j).len());
    // A completion callback arriving after the device's report (a new event): recorded, after.
    let mut late = event["payload"].clone();
    late["event_id"] = json!("evt_late");
    assert_eq!(
        post("evt_late".into(), late.to_string())
            .await
            .unwrap()
            .status(),
        204
    );
    let after = dms.job(&job).await;
    let s = steps(&after);
    assert_eq!(
        s.iter().filter(|x| *x == "ads_download_completed").count(),
        2
    );
    assert_eq!(
        s.last().map(String::as_str),
        Some("ads_download_completed"),
        "{s:?}"
    );
    assert_eq!(after["state"], "succeeded");
    // A forged callback is refused.
    let forged = dms
        .client()
        .post(dms.api("/v1/ads-callbacks"))
        .header("webhook-id", "evt_x")
        .header("webhook-timestamp", "1")
        .header("webhook-signature", "v1,AAAA")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    assert_eq!(
        emi_events_for(&dms, &job).await.len(),
        1,
        "the EMI is told once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_spent_before_the_device_had_every_byte_is_reminted_once() {
    let (dms, mut nodes) = start_stack(&[("edge-1", 1)], "alternate").await;
    let ads = nodes.remove(0);
    let (bytes, _) = catalog(&dms).await;
    // 3 MiB fits in loopback socket buffers: the node hands every byte to the connection and
    // completes the ticket, while the device, cut at a third, keeps only part of them.
    let faults = scomo_ads::device::Faults {
        interrupt_downloads: 1,
        ..Default::default()
    };
    let dev = start_device_trusting(&dms, "IMEI:5008", faults, &[&ads]).await;
    let job = dms
        .create_job(json!({"device": "IMEI:5008", "operation": "download", "component": "fw"}))
        .await;
    let j = dms.wait_job(&job, 60).await;
    assert_eq!(j["state"], "succeeded", "{j:#}");
    let s = steps(&j);
    eprintln!("steps: {s:?}");
    if s.contains(&"download_retry".to_string()) {
        assert_in_order(
            &s,
            &[
                "ticket_minted",
                "device_result",
                "download_retry",
                "ticket_minted",
                "device_result",
                "emi_notified",
            ],
        );
    }
    assert!(std::fs::read(dev.dir.path().join("device.objects/fw")).unwrap() == bytes);
    assert_eq!(emi_events_for(&dms, &job).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_downloads_through_the_ads() {
    let (dms, mut nodes) = start_stack(&[("edge-1", 1)], "dm").await;
    let ads = nodes.remove(0);
    catalog(&dms).await;
    let dir = tempfile::tempdir().unwrap();
    let mut base = device_config(
        &dms,
        "IMEI:fleet",
        &dir.path().join("state.json"),
        Default::default(),
    );
    base.state_path = dir.path().join("state.json");
    base.ca_certs.push(ads.cert());
    let cfg = scomo_ads::device::fleet::FleetConfig {
        base,
        count: 6,
        notify_listen: "127.0.0.1:0".parse().unwrap(),
        provision: Some((dms.handle.api_url.clone(), dms.handle.api_token.clone())),
        request: Some(scomo_ads::device::fleet::Request::Component("fw".into())),
        inventory_first: false,
        delivery: Some("alternate".into()),
    };
    let (report, _agents) = scomo_ads::device::fleet::run(cfg, dms.shutdown.clone())
        .await
        .unwrap();
    assert_eq!(
        (report.succeeded, report.failed),
        (6, 0),
        "{:?}",
        report.errors
    );
    assert!(report.per_second() > 0.0 && report.percentile(99.0) >= report.percentile(50.0));
    let metrics = client(&ads.cert())
        .get(ads.admin("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("scomo_ads_tickets_completed_total 6\n"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ads_node_down_falls_back_in_band_or_fails_clearly() {
    // Fallback allowed (the default): delivered over DM instead.
    let (dms, mut nodes) = start_stack(&[("edge-1", 1)], "alternate").await;
    let ads = nodes.remove(0);
    let (bytes, _) = catalog(&dms).await;
    ads.shutdown.cancel();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let dev = start_device_trusting(&dms, "IMEI:5009", Default::default(), &[&ads]).await;
    let job = dms
        .create_job(json!({"device": "IMEI:5009", "operation": "download", "component": "fw"}))
        .await;
    let j = dms.wait_job(&job, 60).await;
    assert_eq!(j["state"], "succeeded", "{j:#}");
    let mech = j["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "mechanism_chosen")
        .unwrap();
    assert!(
        mech["detail"]
            .as_str()
            .unwrap()
            .contains("no ADS node available"),
        "{mech}"
    );
    assert!(std::fs::read(dev.dir.path().join("device.objects/fw")).unwrap() == bytes);

    // Fallback not allowed: the job fails with 1501 and a reason the EMI sees.
    let dms2_dir = tempfile::tempdir().unwrap();
    let cfg = ads_node_config("edge-1", &ads, 1);
    let dms2 = start_dms_in(dms2_dir, move |c| {
        c.ads_nodes = vec![cfg];
        c.fallback_to_dm = false;
        c.ads_health_interval_secs = 1;
    })
    .await;
    catalog(&dms2).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let _dev2 = start_device_trusting(&dms2, "IMEI:5010", Default::default(), &[&ads]).await;
    let job = dms2
        .create_job(json!({"device": "IMEI:5010", "operation": "download", "component": "fw", "delivery": "alternate"}))
        .await;
    let j = dms2.wait_job(&job, 60).await;
    assert_eq!(j["state"], "failed");
    assert_eq!(j["result_code"], 1501);
    assert!(
        j["reason"].as_str().unwrap().contains("no ADS node"),
        "{j:#}"
    );
    assert_eq!(emi_events_for(&dms2, &job).await.len(), 1);
}

/// Two deliveries of one component queued for a device run one after the other: each writes
/// the device's Download node with its own URL only once the other is over, so each ticket is
/// used by its own download (none left unused, no URL found spent and re-minted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deliveries_of_one_component_take_turns() {
    let (dms, mut nodes) = start_stack(&[("edge-1", 1)], "alternate").await;
    let ads = nodes.remove(0);
    catalog(&dms).await;
    // Both jobs exist before the device's first session.
    dms.provision("IMEI:5020", "dev-secret", None).await;
    let first = dms
        .create_job(json!({"device": "IMEI:5020", "operation": "download", "component": "fw"}))
        .await;
    let second = dms
        .create_job(json!({"device": "IMEI:5020", "operation": "download", "component": "fw"}))
        .await;
    let _dev = start_device_trusting(&dms, "IMEI:5020", Default::default(), &[&ads]).await;
    let mut tickets = Vec::new();
    for job in [&first, &second] {
        let j = dms.wait_job(job, 60).await;
        assert_eq!(j["state"], "succeeded", "{j:#}");
        assert!(
            !steps(&j).iter().any(|s| s == "download_retry"),
            "its URL was never taken by the other job: {j:#}"
        );
        let minted = timeline_step(&j, "ticket_minted")["detail"]
            .as_str()
            .unwrap();
        tickets.push(minted.split_whitespace().nth(1).unwrap().to_string());
    }
    assert_ne!(tickets[0], tickets[1]);
    for t in &tickets {
        state_becomes(&ads, t, "completed").await;
    }
    // The second started only after the first was over.
    let j1 = dms.job(&first).await;
    let j2 = dms.job(&second).await;
    let at = |j: &serde_json::Value, step: &str| timeline_step(j, step)["at_ms"].as_u64().unwrap();
    assert!(
        at(&j2, "ticket_minted") >= at(&j1, "device_result"),
        "{j1:#}\n{j2:#}"
    );
}
