//! What an integrator lists and finds through the EMI API (issue 19): jobs by device, state and
//! result code, devices by model, firmware and last session, paged with a cursor; a delivery of
//! a component the catalog does not have is refused at once.

use crate::common::*;
use serde_json::json;

async fn get(dms: &Dms, path: &str) -> (u16, serde_json::Value) {
    let r = dms
        .client()
        .get(dms.api(path))
        .bearer_auth(&dms.handle.api_token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Every page of `path` (which has its filters), following `next_cursor`.
async fn all_pages(dms: &Dms, path: &str, limit: usize) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    for _ in 0..50 {
        let sep = if path.contains('?') { '&' } else { '?' };
        let (status, page) = get(dms, &format!("{path}{sep}limit={limit}&cursor={cursor}")).await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= limit);
        out.extend(items.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => return out,
        }
    }
    panic!("more than 50 pages")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_and_devices_list_filter_and_page() {
    let dms = start_dms().await;
    dms.add_component(
        &[
            ("name", "app"),
            ("version", "1.0"),
            ("manufacturer", "Acme"),
        ],
        pattern(5_000, 1),
    )
    .await;
    // One device that runs its jobs (and reports Roadrunner / 5.2); five that never show up.
    let _dev = start_device(&dms, "IMEI:1800", Default::default()).await;
    for i in 1..=5 {
        dms.provision(&format!("IMEI:18{i:02}"), "dev-secret", None)
            .await;
    }
    let done = dms
        .create_job(
            json!({"device": "IMEI:1800", "operation": "download", "component": "app",
                           "inventory_first": true}),
        )
        .await;
    let failed = dms
        .create_job(json!({"device": "IMEI:1800", "operation": "activate", "component": "nothing"}))
        .await;
    assert_eq!(dms.wait_job(&done, 30).await["state"], "succeeded");
    let f = dms.wait_job(&failed, 30).await;
    assert_eq!(f["state"], "failed");
    for i in 1..=5 {
        dms.create_job(json!({"device": format!("IMEI:18{i:02}"), "operation": "inventory"}))
            .await;
    }
    // All jobs, in pages of 2, newest first, each once.
    let jobs = all_pages(&dms, "/v1/jobs", 2).await;
    assert_eq!(jobs.len(), 7);
    let created: Vec<u64> = jobs
        .iter()
        .map(|j| j["created_at_ms"].as_u64().unwrap())
        .collect();
    assert!(created.windows(2).all(|w| w[0] >= w[1]), "{created:?}");
    let mut ids: Vec<&str> = jobs.iter().map(|j| j["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 7, "no job twice across pages");
    // Filters.
    let of = all_pages(&dms, "/v1/jobs?device=IMEI:1800", 10).await;
    assert_eq!(of.len(), 2);
    let ok = all_pages(&dms, "/v1/jobs?state=succeeded", 10).await;
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0]["id"], done.as_str());
    let by_code = all_pages(
        &dms,
        &format!("/v1/jobs?result_code={}", f["result_code"]),
        10,
    )
    .await;
    assert!(by_code.iter().any(|j| j["id"] == failed.as_str()));
    assert!(by_code.iter().all(|j| j["result_code"] == f["result_code"]));
    assert_eq!(all_pages(&dms, "/v1/jobs?state=queued", 10).await.len(), 5);
    // Bad parameters are named.
    let (status, body) = get(&dms, "/v1/jobs?state=lost").await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = get(&dms, "/v1/jobs?limit=0").await;
    assert_eq!(status, 400);
    let (status, _) = get(&dms, "/v1/jobs?colour=blue").await;
    assert_eq!(status, 400);

    // Devices: six, in pages of 4; the one that had a session is found by model, firmware and
    // last session.
    let devices = all_pages(&dms, "/v1/devices", 4).await;
    assert_eq!(devices.len(), 6);
    assert!(devices.iter().all(|d| d.get("password").is_none()));
    for filter in ["model=Roadrunner", "firmware=5.2", "seen_since_ms=1"] {
        let found = all_pages(&dms, &format!("/v1/devices?{filter}"), 10).await;
        assert_eq!(found.len(), 1, "{filter}: {found:?}");
        assert_eq!(found[0]["id"], "IMEI:1800");
    }
    assert!(all_pages(&dms, "/v1/devices?model=Coyote", 10)
        .await
        .is_empty());

    // A delivery of a component the catalog lacks: refused now, not failed later.
    let r = dms
        .client()
        .post(dms.api("/v1/jobs"))
        .bearer_auth(&dms.handle.api_token)
        .json(&json!({"device": "IMEI:1800", "operation": "download", "component": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("nope"));
}

/// Without an EMI webhook, the timeline says so instead of leaving the step out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emi_notified_is_recorded_as_skipped_without_a_webhook() {
    let dms = start_dms_with(|c| c.emi_webhook_url = None).await;
    let _dev = start_device(&dms, "IMEI:1810", Default::default()).await;
    let id = dms
        .create_job(json!({"device": "IMEI:1810", "operation": "inventory"}))
        .await;
    let j = dms.wait_job(&id, 30).await;
    let step = j["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "emi_notified")
        .expect("the step is there");
    assert!(
        step["detail"].as_str().unwrap().starts_with("skipped"),
        "{step}"
    );
}

/// `POST /v1/jobs` names a component by catalog id (that very build, whatever the targets
/// would pick) or by name (the build that fits the device).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_names_its_component_by_catalog_id_or_by_name() {
    let dms = start_dms().await;
    let old = dms
        .add_component(&[("name", "app"), ("version", "1.0")], pattern(4_000, 1))
        .await;
    dms.add_component(&[("name", "app"), ("version", "2.0")], pattern(4_000, 2))
        .await;
    let old_id = old["id"].as_str().unwrap().to_string();
    let _dev = start_device(&dms, "IMEI:4401", Default::default()).await;
    let by_id = dms
        .create_job(json!({"device": "IMEI:4401", "operation": "download", "component": old_id, "delivery": "dm"}))
        .await;
    let j = dms.wait_job(&by_id, 30).await;
    assert_eq!(j["state"], "succeeded", "{j:#}");
    assert_eq!(
        j["component"], "app",
        "the job names the component, not its id"
    );
    let chosen = timeline_step(&j, "build_chosen")["detail"]
        .as_str()
        .unwrap();
    assert!(
        chosen.starts_with("app 1.0") && chosen.contains("named by the EMI"),
        "{chosen}"
    );
    let by_name = dms
        .create_job(json!({"device": "IMEI:4401", "operation": "download", "component": "app", "delivery": "dm"}))
        .await;
    let j = dms.wait_job(&by_name, 30).await;
    let chosen = timeline_step(&j, "build_chosen")["detail"]
        .as_str()
        .unwrap();
    assert!(
        chosen.starts_with("app 2.0") && !chosen.contains("named by"),
        "{chosen}"
    );
    let r = dms
        .client()
        .post(dms.api("/v1/jobs"))
        .bearer_auth(&dms.handle.api_token)
        .json(
            &json!({"device": "IMEI:4401", "operation": "download", "component": "ab".repeat(32)}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("by name or id"));
}

/// A job the device asked for: the EMI hears its id at once (`job.requested`, signed like the
/// job's end) and the device record names it, so the EMI can follow it before it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_initiated_job_is_announced_and_named_on_the_device_record() {
    let dms = start_dms().await;
    dms.add_component(&[("name", "app"), ("version", "1.0")], pattern(4_000, 3))
        .await;
    let dev = start_device(&dms, "IMEI:4402", Default::default()).await;
    dev.agent
        .request_component_via("app", false, Some("dm"))
        .await
        .unwrap();
    let d = dms.device("IMEI:4402").await;
    let job = d["last_request"]["job_id"].as_str().unwrap().to_string();
    assert_eq!(d["last_request"]["operation"], "download_install");
    assert_eq!(d["last_request"]["component"], "app");
    let j = dms.wait_job(&job, 30).await;
    assert_eq!(j["state"], "succeeded", "{j:#}");
    let mut kinds = Vec::new();
    for _ in 0..200 {
        kinds = dms
            .emi
            .delivered()
            .iter()
            .filter(|a| a.json()["job"]["id"] == job.as_str())
            .map(|a| {
                assert!(verify_signature(&dms.dir.path().join("emi.secret"), a));
                a.json()["event"].as_str().unwrap().to_string()
            })
            .collect::<Vec<_>>();
        if kinds.len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    kinds.sort();
    assert_eq!(kinds, ["job.requested", "job.succeeded"]);
}
