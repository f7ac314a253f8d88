//! Flow 5.4.1, OMA DM download of a software component, over real sockets and TLS: the DMS
//! notifies the device (package 0), reads DevInfo, chooses the build, delivers it inside the
//! DM session as a large object, the device acknowledges, and the EMI is notified.

use crate::common::*;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternative_1_the_device_asks_for_the_component() {
    let dms = start_dms().await;
    let bytes = catalog(&dms).await;
    let dev = start_device(&dms, "IMEI:1001", Default::default()).await;
    // Step 1 (alt 1): the device opens the session and asks; it also installs (download_install).
    dev.agent.request_component("fw", false).await.unwrap();
    let jobs = wait_device_jobs(&dms, "IMEI:1001", 1).await;
    let j = dms.wait_job(&jobs[0], 30).await;
    assert_eq!(j["state"], "succeeded", "{j:#}");
    assert_eq!(j["source"], "device");
    assert_in_order(
        &steps(&j),
        &[
            "device_request",
            "session_initiated",
            "devinfo",
            "build_chosen",
            "delivery",
            "device_ack",
            "operation_requested",
            "device_result",
            "emi_notified",
        ],
    );
    let tree = dev.agent.tree().await;
    assert_eq!(
        tree.value("./SCOMO/Inventory/Deployed/fw/State"),
        Some("20"),
        "installed and active"
    );
    assert!(std::fs::read(dev.dir.path().join("device.objects/fw")).unwrap() == bytes);
    emi_told(&dms, j["id"].as_str().unwrap()).await;
}

/// The DMS's open and finished jobs for a device come from its timeline store; the test finds
/// device-initiated jobs through the EMI webhooks or by polling the store directly.
async fn wait_device_jobs(dms: &Dms, device: &str, n: usize) -> Vec<String> {
    for _ in 0..400 {
        let ids: Vec<String> = job_ids_for(dms, device);
        if ids.len() >= n {
            return ids;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("the device's request created no job");
}

fn job_ids_for(dms: &Dms, device: &str) -> Vec<String> {
    let conn = rusqlite::Connection::open(dms.dir.path().join("dms.sqlite3")).unwrap();
    let mut stmt = conn
        .prepare("SELECT id FROM jobs WHERE device = ?1 ORDER BY created_at_ms")
        .unwrap();
    let rows = stmt.query_map([device], |r| r.get::<_, String>(0)).unwrap();
    rows.map(|r| r.unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternative_2_devdetail_and_inventory_choose_the_build() {
    let dms = start_dms().await;
    catalog(&dms).await;
    // A build only for firmware 5.x: needs DevDetail to be chosen.
    let fw5 = pattern(30_000, 5);
    dms.add_component(
        &[
            ("name", "fw"),
            ("version", "2.5"),
            ("manufacturer", "Acme"),
            ("model", "Roadrunner"),
            ("fw_min", "5.0"),
            ("fw_max", "5.9"),
        ],
        fw5.clone(),
    )
    .await;
    let dev = start_device(&dms, "IMEI:1002", Default::default()).await;
    let job = dms
        .create_job(json!({"device": "IMEI:1002", "operation": "download", "component": "fw", "inventory_first": true}))
        .await;
    let j = dms.wait_job(&job, 30).await;
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
        chosen["detail"].as_str().unwrap().starts_with("fw 2.5"),
        "{chosen}"
    );
    assert!(std::fs::read(dev.dir.path().join("device.objects/fw")).unwrap() == fw5);
    let d = dms.device("IMEI:1002").await;
    assert_eq!(d["devdetail"]["fw_v"], "5.2");
    assert!(d["inventory"]["delivered"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fitting_build_fails_the_job_with_a_reason_the_emi_sees() {
    let dms = start_dms().await;
    dms.add_component(
        &[
            ("name", "fw"),
            ("version", "9.0"),
            ("manufacturer", "Other"),
        ],
        pattern(10, 2),
    )
    .await;
    let _dev = start_device(&dms, "IMEI:1003", Default::default()).await;
    let job = dms
        .create_job(json!({"device": "IMEI:1003", "operation": "download", "component": "fw"}))
        .await;
    let j = dms.wait_job(&job, 30).await;
    assert_eq!(j["state"], "failed");
    assert!(
        j["reason"]
            .as_str()
            .unwrap()
            .contains("no build of \"fw\" fits"),
        "{j:#}"
    );
    let e = emi_told(&dms, &job).await;
    assert_eq!(e["event"], "job.failed");
    assert_eq!(e["job"]["reason"], j["reason"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_then_the_right_one_recovers_with_the_new_nonce() {
    let dms = start_dms().await;
    catalog(&dms).await;
    let dir = tempfile::tempdir().unwrap();
    dms.provision("IMEI:1004", "dev-secret", None).await;
    let mut cfg = device_config(&dms, "IMEI:1004", dir.path(), Default::default());
    cfg.password = "wrong".into();
    let bad = scomo_ads::device::Agent::new(cfg.clone()).unwrap();
    let err = bad.request_component("fw", false).await.unwrap_err();
    assert!(
        matches!(err, scomo_ads::device::DeviceError::AuthFailed(401)),
        "{err}"
    );
    assert!(
        job_ids_for(&dms, "IMEI:1004").is_empty(),
        "nothing done for an unauthenticated device"
    );
    // The right password, with the nonce the server's Chal gave (kept in the state file).
    cfg.password = "dev-secret".into();
    let good = scomo_ads::device::Agent::new(cfg).unwrap();
    good.request_component("fw", false).await.unwrap();
    let jobs = wait_device_jobs(&dms, "IMEI:1004", 1).await;
    assert_eq!(dms.wait_job(&jobs[0], 30).await["state"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_credentials_get_407_with_a_challenge() {
    let dms = start_dms().await;
    dms.provision("IMEI:1005", "dev-secret", None).await;
    let s = bare_alert_status(
        &dms,
        "IMEI:1005",
        "application/vnd.syncml.dm+xml; charset=utf-8",
    )
    .await;
    assert_eq!((s.cmd.as_str(), s.code), ("SyncHdr", 407));
    let chal = s.chal.as_ref().unwrap();
    assert_eq!(chal.type_.as_deref(), Some("syncml:auth-md5"));
    assert!(chal.next_nonce.as_ref().is_some_and(|n| !n.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_drops_every_session_fails_its_job_after_max_delivery_attempts() {
    let dms = start_dms_with(|c| {
        c.renotify_secs = 1;
        c.session_timeout_secs = 1;
        c.max_delivery_attempts = 3;
    })
    .await;
    catalog(&dms).await;
    let faults = scomo_ads::device::Faults {
        drop_after_messages: Some(3),
        drop_sessions: u32::MAX,
        ..Default::default()
    };
    let _dev = start_device(&dms, "IMEI:1007", faults).await;
    let job = dms
        .create_job(json!({"device": "IMEI:1007", "operation": "download", "component": "fw"}))
        .await;
    let j = dms.wait_job(&job, 40).await;
    assert_eq!(j["state"], "failed", "{j:#}");
    assert_eq!(
        steps(&j).iter().filter(|s| *s == "delivery").count(),
        3,
        "{:?}",
        steps(&j)
    );
    assert!(
        j["reason"]
            .as_str()
            .unwrap()
            .contains("max_delivery_attempts"),
        "{j:#}"
    );
    let e = emi_told(&dms, &job).await;
    assert_eq!(e["event"], "job.failed");
    // Told once, and nothing more happens to the job.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let told = dms
        .emi
        .delivered()
        .iter()
        .filter(|a| a.json()["job"]["id"] == job.as_str())
        .count();
    assert_eq!(told, 1);
    assert_eq!(dms.job(&job).await["timeline"], j["timeline"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_drops_mid_session_finishes_in_its_next_session() {
    let dms = start_dms_with(|c| {
        c.renotify_secs = 1;
        // The DMS learns of a dropped session by its silence.
        c.session_timeout_secs = 2;
    })
    .await;
    let bytes = catalog(&dms).await;
    let faults = scomo_ads::device::Faults {
        drop_after_messages: Some(3),
        ..Default::default()
    };
    let dev = start_device(&dms, "IMEI:1006", faults).await;
    let job = dms
        .create_job(json!({"device": "IMEI:1006", "operation": "download", "component": "fw"}))
        .await;
    // The first session dies after 3 messages (mid-delivery); the DMS re-notifies and the
    // delivery starts over in a new session.
    let j = dms.wait_job(&job, 40).await;
    assert_eq!(j["state"], "succeeded", "{j:#}");
    assert!(
        steps(&j).iter().filter(|s| *s == "delivery").count() >= 2,
        "{:?}",
        steps(&j)
    );
    assert!(std::fs::read(dev.dir.path().join("device.objects/fw")).unwrap() == bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_message_gets_a_syncml_error_and_the_session_survives() {
    let dms = start_dms().await;
    dms.provision("IMEI:1007", "dev-secret", None).await;
    let c = dms.client();
    let post = |body: String| {
        c.post(&dms.handle.dm_url)
            .header("content-type", "application/vnd.syncml+xml")
            .body(body)
            .send()
    };
    let cred = scomo_ads::syncml::auth::md5_digest("IMEI:1007", "dev-secret", &[0, 0, 0, 0]);
    let hdr = |msg_id: u32, cred: &str| {
        format!(
        "<SyncHdr><VerDTD>1.2</VerDTD><VerProto>DM/1.2</VerProto><SessionID>A1</SessionID><MsgID>{msg_id}</MsgID>\
         <Target><LocURI>{}</LocURI></Target><Source><LocURI>IMEI:1007</LocURI></Source>{cred}</SyncHdr>",
        dms.handle.dm_url
    )
    };
    let cred_xml = format!("<Cred><Meta><Type xmlns='syncml:metinf'>syncml:auth-md5</Type><Format xmlns='syncml:metinf'>b64</Format></Meta><Data>{cred}</Data></Cred>");
    // A session that stays open: message 1 asks for an inventory, so the DMS sends a Get.
    let request = "&lt;Operation&gt;inventory&lt;/Operation&gt;";
    let m1b = format!(
        "<SyncML xmlns='SYNCML:SYNCML1.2'>{}<SyncBody><Alert><CmdID>1</CmdID><Data>1201</Data></Alert>\
         <Alert><CmdID>2</CmdID><Data>1226</Data><Item><Meta><Type xmlns='syncml:metinf'>urn:scomo-ads:at:operation-request:1.0</Type></Meta>\
         <Data>{request}</Data></Item></Alert><Final/></SyncBody></SyncML>",
        hdr(1, &cred_xml).replace("<SessionID>A1</SessionID>", "<SessionID>B2</SessionID>")
    );
    let r = post(m1b).await.unwrap();
    let reply =
        scomo_ads::syncml::codec::decode(&r.bytes().await.unwrap(), &Default::default()).unwrap();
    let get_id = reply
        .commands
        .iter()
        .find_map(|c| match c {
            scomo_ads::syncml::message::Command::Get(g) => Some(g.cmd_id),
            _ => None,
        })
        .expect("the DMS asks for the inventory");
    let resp_uri = reply.header.resp_uri.clone().expect("a RespURI");
    let hdr2 = hdr(2, "").replace("<SessionID>A1</SessionID>", "<SessionID>B2</SessionID>");
    // Message 2, malformed: a SyncML error status, not a dropped request.
    let bad = format!("<SyncML xmlns='SYNCML:SYNCML1.2'>{hdr2}<SyncBody><Exec><CmdID>oops</CmdID></Exec><Final/></SyncBody></SyncML>");
    let r = post(bad).await.unwrap();
    assert_eq!(r.status(), 200);
    let reply =
        scomo_ads::syncml::codec::decode(&r.bytes().await.unwrap(), &Default::default()).unwrap();
    let scomo_ads::syncml::message::Command::Status(s) = &reply.commands[0] else {
        panic!()
    };
    assert_eq!(s.code, 400);
    assert!(
        s.items[0].data.as_deref().unwrap().contains("CmdID"),
        "{s:?}"
    );
    // A replayed message 1 without credentials is refused (407) and leaves the session
    // alone: only a start that authenticates replaces a held session.
    let replay = format!(
        "<SyncML xmlns='SYNCML:SYNCML1.2'>{}<SyncBody><Final/></SyncBody></SyncML>",
        hdr(1, "").replace("<SessionID>A1</SessionID>", "<SessionID>B2</SessionID>")
    );
    let r = post(replay).await.unwrap();
    let reply =
        scomo_ads::syncml::codec::decode(&r.bytes().await.unwrap(), &Default::default()).unwrap();
    assert!(
        matches!(&reply.commands[0], scomo_ads::syncml::message::Command::Status(s) if s.code == 407)
    );
    // Message 2 again, well formed: the session was not corrupted and the job completes.
    let good = format!(
        "<SyncML xmlns='SYNCML:SYNCML1.2'>{hdr2}<SyncBody>\
         <Status><CmdID>1</CmdID><MsgRef>1</MsgRef><CmdRef>0</CmdRef><Cmd>SyncHdr</Cmd><Data>200</Data></Status>\
         <Status><CmdID>2</CmdID><MsgRef>1</MsgRef><CmdRef>{get_id}</CmdRef><Cmd>Get</Cmd><Data>200</Data></Status>\
         <Results><CmdID>3</CmdID><MsgRef>1</MsgRef><CmdRef>{get_id}</CmdRef></Results><Final/></SyncBody></SyncML>"
    );
    // (At the session's RespURI: the session is bound to its key, not to its SessionID.)
    let r = c
        .post(&resp_uri)
        .header("content-type", "application/vnd.syncml+xml")
        .body(good)
        .send()
        .await
        .unwrap();
    let reply =
        scomo_ads::syncml::codec::decode(&r.bytes().await.unwrap(), &Default::default()).unwrap();
    assert!(
        matches!(&reply.commands[0], scomo_ads::syncml::message::Command::Status(s) if s.code == 200)
    );
    let jobs = job_ids_for(&dms, "IMEI:1007");
    assert_eq!(dms.wait_job(&jobs[0], 10).await["state"], "succeeded");
    // Garbage that is not SyncML at all: HTTP 400 with a message; wrong content type: 415.
    let r = post("hello".into()).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(&dms.handle.dm_url)
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_only_where_allowed() {
    let dms = start_dms().await;
    catalog(&dms).await;
    let dir = tempfile::tempdir().unwrap();
    dms.provision("IMEI:1008", "dev-secret", None).await;
    let mut cfg = device_config(&dms, "IMEI:1008", dir.path(), Default::default());
    cfg.auth = "basic".into();
    // Provisioned for MD5 and basic not allowed by config: refused.
    let agent = scomo_ads::device::Agent::new(cfg.clone()).unwrap();
    let err = agent.request_component("fw", false).await.unwrap_err();
    assert!(
        matches!(err, scomo_ads::device::DeviceError::AuthFailed(401)),
        "{err}"
    );
    // Provisioned for basic: accepted.
    let r = dms
        .client()
        .put(dms.api("/v1/devices/IMEI:1008"))
        .bearer_auth(&dms.handle.api_token)
        .json(&json!({"password": "dev-secret", "auth": "basic"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    agent.request_component("fw", false).await.unwrap();
    let jobs = wait_device_jobs(&dms, "IMEI:1008", 1).await;
    assert_eq!(dms.wait_job(&jobs[0], 30).await["state"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_0_with_a_bad_digest_starts_no_session() {
    let dms = start_dms().await;
    let dev = start_device(&dms, "IMEI:1009", Default::default()).await;
    let n = scomo_ads::syncml::pkg0::Notification::new(&dms.handle.server_id, 0x42);
    let forged = n.encode("not-the-server-password", &[0, 0, 0, 0]).unwrap();
    let r = reqwest::Client::new()
        .post(&dev.notify_url)
        .header("content-type", scomo_ads::syncml::pkg0::CONTENT_TYPE)
        .body(forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let genuine = n.encode("srv-secret", &[0, 0, 0, 0]).unwrap();
    let r = reqwest::Client::new()
        .post(&dev.notify_url)
        .header("content-type", scomo_ads::syncml::pkg0::CONTENT_TYPE)
        .body(genuine)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // The genuine one opened a session: the DMS now knows the device's DevInfo.
    for _ in 0..100 {
        if dms.device("IMEI:1009").await["devinfo"]["man"] == "Acme" {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("no session after a genuine package 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_device_is_refused_and_leaves_no_session_behind() {
    let dms = start_dms().await;
    let s = bare_alert_status(&dms, "IMEI:stranger", "application/vnd.syncml.dm+xml").await;
    assert_eq!(s.code, 403);
    assert!(!dms.handle.engine.in_session("IMEI:stranger"));
}

/// Posts package 1 of a client-initiated session without credentials, the way a minimal client
/// would, and returns the DMS's status for the header.
async fn bare_alert_status(
    dms: &Dms,
    device: &str,
    content_type: &str,
) -> scomo_ads::syncml::message::Status {
    use scomo_ads::syncml::message::{Alert, Command, Header, Location, Message};
    let msg = Message {
        header: Header {
            session_id: "77".into(),
            msg_id: 1,
            target: Location::uri(&dms.handle.dm_url),
            source: Location::uri(device),
            ..Default::default()
        },
        commands: vec![Command::Alert(Alert {
            cmd_id: 1,
            code: 1201,
            ..Default::default()
        })],
        final_: true,
    };
    let r = dms
        .client()
        .post(&dms.handle.dm_url)
        .header("content-type", content_type)
        .body(scomo_ads::syncml::codec::encode(&msg))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let reply =
        scomo_ads::syncml::codec::decode(&r.bytes().await.unwrap(), &Default::default()).unwrap();
    match reply.commands.into_iter().next() {
        Some(Command::Status(s)) => s,
        other => panic!("expected the header's status, got {other:?}"),
    }
}
