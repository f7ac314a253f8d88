//! The second alternate download mechanism, OMA Download OTA 1.0, over real sockets: the node
//! serves a DD 1.0 descriptor for a DLOTA ticket (checked against the DD element rules by an
//! independent XML reader), takes the device's install-notify report once and turns it into
//! one signed `download.reported` callback; the DMS chooses the mechanism per device (record,
//! then rule), and a descriptor-driven device runs every 5.4.2 variant with it, including a
//! descriptor whose size lies (905 → 1407) and a user who cancels (902 → 1401).

use std::time::Duration;

use crate::common::*;
use scomo_ads::dlota::{Descriptor, CONTENT_TYPE};
use serde_json::json;

async fn fast_node() -> Node {
    start_with(|c| {
        c.callback_backoff_base_ms = 50;
        c.callback_backoff_cap_secs = 1;
    })
    .await
}

/// The DD 1.0 element rules, checked by Python's own XML reader rather than ours: root `media`
/// in the OMA namespace, `objectURI`, `size` and `type` present, only DD 1.0 elements in its
/// namespace, each but `type` at most once, `size` a number, `DDVersion` 1.x.
const DD_RULES: &str = r#"
import sys, xml.etree.ElementTree as ET
NS = '{http://www.openmobilealliance.org/xmlns/dd}'
root = ET.fromstring(sys.stdin.buffer.read())
assert root.tag == NS + 'media', 'root is ' + root.tag
allowed = {'DDVersion', 'name', 'objectURI', 'size', 'type', 'vendor', 'description',
           'installNotifyURI', 'nextURL', 'infoURL', 'iconURI', 'installParam'}
for child in root:
    if child.tag.startswith(NS):
        assert child.tag[len(NS):] in allowed, 'not a DD 1.0 element: ' + child.tag
for name in ('objectURI', 'size', 'type'):
    assert root.find(NS + name) is not None, 'missing ' + name
for name in allowed - {'type'}:
    assert len(root.findall(NS + name)) <= 1, 'repeated ' + name
int(root.find(NS + 'size').text)
v = root.find(NS + 'DDVersion')
assert v is None or v.text.startswith('1.'), 'DDVersion ' + v.text
print('dd-1.0-ok')
"#;

fn check_dd_rules(xml: &str) {
    if !tool_available(&["python3", "--version"]) {
        return;
    }
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .args(["-c", DD_RULES])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(xml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("dd-1.0-ok"),
        "the descriptor breaks DD 1.0's rules: {}\n{xml}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dlota_ticket_serves_a_dd_1_0_descriptor_naming_its_one_time_object_url() {
    let node = fast_node().await;
    let data = pattern(200_000, 11);
    let meta = node.publish(data.clone(), "modem-fw", "2.1").await;
    let m = node
        .mint_with(
            json!({"component": meta.id, "ttl_secs": 60, "mechanism": "dlota",
                          "content_type": "application/vnd.acme.fw"}),
        )
        .await;
    assert!(m.url.contains("/dd/"), "{}", m.url);
    assert!(m.object_url.contains("/d/") && m.url.len() < 255);
    let c = client(&node.cert());
    let head = c.head(&m.url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let resp = c.get(&m.url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], CONTENT_TYPE);
    let xml = resp.text().await.unwrap();
    check_dd_rules(&xml);
    let dd = Descriptor::parse(xml.as_bytes()).unwrap();
    assert_eq!(dd.object_uri, m.object_url);
    assert_eq!(dd.size, 200_000);
    assert_eq!(dd.types, ["application/vnd.acme.fw"]);
    assert_eq!(dd.name.as_deref(), Some("modem-fw"));
    assert_eq!(dd.dd_version.as_deref(), Some("1.0"));
    assert_eq!(dd.blake3.as_deref(), Some(meta.blake3.as_str()));
    assert_eq!(dd.sha256.as_deref(), Some(meta.sha256.as_str()));
    let notify = dd.install_notify_uri.clone().unwrap();
    assert!(notify.contains("/dn/"), "{notify}");
    // Fetching the descriptor counts nothing toward the one-time delivery.
    let t = node.ticket(&m.id).await;
    assert_eq!(
        (t["state"].as_str(), t["bytes_sent"].as_u64()),
        (Some("issued"), Some(0))
    );
    assert_eq!(t["mechanism"], "dlota");
    // The object URL keeps every rule of one-time delivery.
    let got = c
        .get(&dd.object_uri)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got == data);
    state_becomes(&node, &m.id, "completed").await;
    assert_eq!(c.get(&dd.object_uri).send().await.unwrap().status(), 410);
    assert_eq!(
        c.get(&m.url).send().await.unwrap().status(),
        410,
        "nor its descriptor"
    );
    // A plain ticket has no descriptor; content_type belongs to DLOTA tickets only.
    let plain = node
        .mint_with(json!({"component": meta.id, "ttl_secs": 60}))
        .await;
    assert_eq!(plain.url, plain.object_url);
    let dd_of_plain = plain.url.replace("/d/", "/dd/");
    assert_eq!(c.get(&dd_of_plain).send().await.unwrap().status(), 404);
    let r = c
        .post(node.admin("/v1/tickets"))
        .bearer_auth(node.token())
        .json(&json!({"component": meta.id, "content_type": "text/plain"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(node.admin("/v1/tickets"))
        .bearer_auth(node.token())
        .json(&json!({"component": meta.id, "mechanism": "dlota", "content_type": "no type"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(node.admin("/v1/tickets"))
        .bearer_auth(node.token())
        .json(&json!({"component": meta.id, "mechanism": "carrier-pigeon"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

/// A node, a callback receiver, and a DLOTA ticket for a `size`-byte component calling back
/// to it (with `extra` mint options).
async fn dlota_ticket(
    size: usize,
    seed: u64,
    extra: serde_json::Value,
) -> (
    Node,
    Receiver,
    scomo_ads::ads::tickets::Minted,
    reqwest::Client,
) {
    let node = fast_node().await;
    let rx = Receiver::start().await;
    let meta = node.publish(pattern(size, seed), "fw", "1").await;
    let mut body = json!({"component": meta.id, "ttl_secs": 60, "mechanism": "dlota",
                          "callback_url": rx.url});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let m = node.mint_with(body).await;
    let c = client(&node.cert());
    (node, rx, m, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_posted_twice_becomes_one_signed_callback() {
    let (node, rx, m, c) = dlota_ticket(100_000, 12, json!({"context": {"job": "job-7"}})).await;
    let xml = c.get(&m.url).send().await.unwrap().text().await.unwrap();
    let dd = Descriptor::parse(xml.as_bytes()).unwrap();
    c.get(&dd.object_uri)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    state_becomes(&node, &m.id, "completed").await;
    let notify = dd.install_notify_uri.unwrap();
    for _ in 0..2 {
        let r = c.post(&notify).body("900 Success").send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    // Another report after it is a conflict and changes nothing.
    let r = c
        .post(&notify)
        .body("902 User Cancelled")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let got = rx.wait_for(2, 10).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = rx.delivered();
    let kinds: Vec<_> = all.iter().map(|a| a.json()["event"].clone()).collect();
    assert_eq!(got.len(), 2, "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| *k == "download.reported").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| *k == "download.completed").count(),
        1
    );
    let reported = all
        .iter()
        .find(|a| a.json()["event"] == "download.reported")
        .unwrap();
    assert!(verify_signature(
        &node.dir.path().join("callback.secret"),
        reported
    ));
    let e = reported.json();
    assert_eq!(e["report"]["status"], 900);
    assert_eq!(e["report"]["message"], "Success");
    assert_eq!(e["report"]["node_delivered"], true);
    assert_eq!(e["context"]["job"], "job-7");
    assert_eq!(e["ticket_id"], m.id.as_str());
    let t = node.ticket(&m.id).await;
    assert_eq!(t["report"]["status"], 900);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_claimed_before_delivery_is_recorded_as_a_claim() {
    let (node, rx, m, c) = dlota_ticket(50_000, 13, json!({})).await;
    let notify = m.url.replace("/dd/", "/dn/");
    let r = c.post(&notify).body("900 Success").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let got = rx.wait_for(1, 10).await;
    let e = got[0].json();
    assert_eq!(e["event"], "download.reported");
    assert_eq!(e["report"]["node_delivered"], false);
    assert_eq!(e["bytes_delivered"], 0);
    // The device's claim completes nothing: the object is still there to fetch, once.
    assert_eq!(node.ticket(&m.id).await["state"], "issued");
    assert_eq!(c.get(&m.object_url).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_notify_refuses_forged_tokens_and_bad_reports() {
    let (node, rx, m, c) = dlota_ticket(10_000, 14, json!({})).await;
    let notify = m.url.replace("/dd/", "/dn/");
    // A forged token: one character of the MAC changed.
    let mut forged = notify.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let r = c.post(&forged).body("900 Success").send().await.unwrap();
    assert_eq!(r.status(), 403);
    let truncated = &notify[..notify.len() - 4];
    assert_eq!(
        c.post(truncated).body("900").send().await.unwrap().status(),
        403
    );
    assert_eq!(c.get(&notify).send().await.unwrap().status(), 405);
    let r = c.post(&notify).body("all good!").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("900 Success"));
    let r = c
        .post(&notify)
        .body(vec![b'9'; 64 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let comp = node.ticket(&m.id).await["component"]
        .as_str()
        .unwrap()
        .to_string();
    // The report URL of a plain ticket is not one.
    let plain = node
        .mint_with(json!({"component": comp, "ttl_secs": 60}))
        .await;
    let r = c
        .post(plain.url.replace("/d/", "/dn/"))
        .body("900 Success")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Nothing was recorded, nothing was sent.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.all().is_empty());
    assert!(node.ticket(&m.id).await["report"].is_null());
}

// ---- The DMS and a descriptor-driven device ----------------------------------------------

const SIZE: usize = 1 << 20;

async fn catalog(dms: &Dms) -> Vec<u8> {
    let bytes = pattern(SIZE, 21);
    dms.add_component(
        &[("name", "fw"), ("version", "3.0"), ("manufacturer", "Acme")],
        bytes.clone(),
    )
    .await;
    bytes
}

/// A device agent, descriptor-driven when `dlota`, provisioned with `mechanism` on its record
/// (`None`: leave the DMS's rule to decide).
async fn device(
    dms: &Dms,
    id: &str,
    dlota: bool,
    mechanism: Option<&str>,
    faults: scomo_ads::device::Faults,
    ads: &Node,
) -> Device {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = device_config(dms, id, dir.path(), faults);
    cfg.ca_certs.push(ads.cert());
    cfg.dlota = dlota;
    let agent = scomo_ads::device::Agent::new(cfg).unwrap();
    let notify_url = notify_listener(dms, &agent).await;
    let mut record = json!({"password": "dev-secret", "server_password": "srv-secret",
                            "notify_url": notify_url});
    if let Some(m) = mechanism {
        record["alternate_mechanism"] = json!(m);
    }
    let r = dms
        .client()
        .put(dms.api(&format!("/v1/devices/{id}")))
        .bearer_auth(&dms.handle.api_token)
        .json(&record)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    Device {
        agent,
        notify_url,
        dir,
    }
}

#[derive(Clone, Copy, Debug)]
enum Variant {
    Normal,
    DeviceInitiated,
    InventoryFirst,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_5_4_2_variant_with_each_mechanism() {
    // DevInfo Acme/Roadrunner is named by the rule; devices that must not get descriptors say
    // so on their record.
    let (dms, mut nodes) = start_stack_tweaked(
        &[("edge-1", 1)],
        "alternate",
        |_| {},
        |c| c.dlota_devices = vec!["Acme/Road*".into()],
    )
    .await;
    let ads = nodes.remove(0);
    let bytes = catalog(&dms).await;
    let mut n = 0;
    for variant in [
        Variant::Normal,
        Variant::DeviceInitiated,
        Variant::InventoryFirst,
    ] {
        for dlota in [true, false] {
            n += 1;
            let id = format!("IMEI:77{n}");
            // Normal: the record decides; the others: the rule (or the record's https).
            let record = match (variant, dlota) {
                (Variant::Normal, true) => Some("dlota"),
                (_, false) => Some("https"),
                (_, true) => None,
            };
            let dev = device(&dms, &id, dlota, record, Default::default(), &ads).await;
            let job = match variant {
                Variant::DeviceInitiated => {
                    dev.agent.request_component("fw", false).await.unwrap();
                    wait_jobs(&dms, &id, 1).await.remove(0)
                }
                _ => {
                    dms.create_job(json!({"device": id, "operation": "download_install",
                        "component": "fw",
                        "inventory_first": matches!(variant, Variant::InventoryFirst)}))
                        .await
                }
            };
            let j = dms.wait_job(&job, 60).await;
            let what = format!("{variant:?} dlota={dlota}");
            assert_eq!(j["state"], "succeeded", "{what}: {j:#}");
            assert_eq!(j["result_code"], 1200, "{what}");
            let mut want = vec![
                if matches!(variant, Variant::DeviceInitiated) {
                    "device_request"
                } else {
                    "emi_request"
                },
                "session_initiated",
                "devinfo",
            ];
            if matches!(variant, Variant::InventoryFirst) {
                want.extend(["devdetail", "inventory"]);
            }
            want.extend([
                "build_chosen",
                "mechanism_chosen",
                "ticket_minted",
                "download_requested",
                "operation_accepted",
                "device_result",
                "emi_notified",
            ]);
            assert_in_order(&steps(&j), &want);
            let chosen = timeline_step(&j, "mechanism_chosen")["detail"]
                .as_str()
                .unwrap()
                .to_string();
            let tree = dev.agent.tree().await;
            let url = tree
                .value("./SCOMO/Download/fw/PkgURL")
                .unwrap()
                .to_string();
            assert!(std::fs::read(dev.dir.path().join("device.objects/fw")).unwrap() == bytes);
            let j = wait_step(&dms, &job, "ads_download_completed").await;
            if dlota {
                assert!(
                    chosen.contains("OMA Download OTA descriptor"),
                    "{what}: {chosen}"
                );
                let why = if record.is_some() {
                    "the device record says dlota"
                } else {
                    "DevInfo Acme/Roadrunner matches dlota_devices"
                };
                assert!(chosen.contains(why), "{what}: {chosen}");
                assert!(url.contains("/dd/"), "{url}");
                assert_eq!(
                    tree.value("./SCOMO/Download/fw/PkgType"),
                    Some(CONTENT_TYPE)
                );
                // The device's report reached the DMS through the node, as a success the
                // node confirms.
                let j = wait_step(&dms, &job, "ads_download_reported").await;
                let detail = timeline_step(&j, "ads_download_reported")["detail"]
                    .as_str()
                    .unwrap()
                    .to_string();
                assert!(detail.contains("900 Success"), "{detail}");
                assert!(detail.contains("had delivered every byte"), "{detail}");
            } else {
                assert!(chosen.contains("signed HTTPS URL"), "{what}: {chosen}");
                assert!(chosen.contains("the device record says https"), "{chosen}");
                assert!(url.contains("/d/") && !url.contains("/dd/"), "{url}");
                assert!(!steps(&j).iter().any(|s| s == "ads_download_reported"));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_cancels_reports_902_and_the_job_fails_with_1401() {
    let (dms, mut nodes) = start_stack(&[("edge-1", 1)], "alternate").await;
    let ads = nodes.remove(0);
    catalog(&dms).await;
    let faults = scomo_ads::device::Faults {
        cancel_downloads: true,
        ..Default::default()
    };
    let dev = device(&dms, "IMEI:7902", true, Some("dlota"), faults, &ads).await;
    let job = dms
        .create_job(json!({"device": "IMEI:7902", "operation": "download", "component": "fw"}))
        .await;
    let j = dms.wait_job(&job, 60).await;
    assert_eq!(j["state"], "failed", "{j:#}");
    assert_eq!(j["result_code"], 1401, "user cancelled: {j:#}");
    let j = wait_step(&dms, &job, "ads_download_reported").await;
    let detail = timeline_step(&j, "ads_download_reported")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(detail.contains("902"), "{detail}");
    // Nothing was downloaded.
    assert!(!dev.dir.path().join("device.objects/fw").exists());
    let t = ads
        .ticket(
            timeline_step(&j, "ticket_minted")["detail"]
                .as_str()
                .unwrap()
                .split_whitespace()
                .nth(1)
                .unwrap(),
        )
        .await;
    assert_eq!(t["report"]["status"], 902);
    assert_eq!(t["bytes_sent"], 0);
}

/// A plain-HTTP front for a node that rewrites every descriptor's `size` to one byte more:
/// what a device sees when a descriptor does not describe its object.
fn lying_front(listener: tokio::net::TcpListener, upstream: std::net::SocketAddr) {
    let http = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let http = http.clone();
        async move {
            let path = req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            let mut up = http.request(req.method().clone(), format!("http://{upstream}{path}"));
            for h in ["range", "if-range", "content-type"] {
                if let Some(v) = req.headers().get(h) {
                    up = up.header(h, v.clone());
                }
            }
            let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                .await
                .unwrap();
            let resp = up.body(body).send().await.unwrap();
            let status = resp.status();
            let mut headers = axum::http::HeaderMap::new();
            for h in ["content-type", "content-range", "etag", "accept-ranges"] {
                if let Some(v) = resp.headers().get(h) {
                    headers.insert(h, v.clone());
                }
            }
            let mut bytes = resp.bytes().await.unwrap().to_vec();
            if path.starts_with("/dd/") {
                let text = String::from_utf8(bytes).unwrap();
                let start = text.find("<size>").unwrap() + "<size>".len();
                let end = text[start..].find('<').unwrap() + start;
                let size: u64 = text[start..end].parse().unwrap();
                bytes = format!("{}{}{}", &text[..start], size + 1, &text[end..]).into_bytes();
            }
            (status, headers, bytes)
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_descriptor_whose_size_does_not_match_fails_with_905_and_1407() {
    // The node mints URLs for its front; the front forwards to the node's plain listener.
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = front.local_addr().unwrap();
    let (dms, mut nodes) = start_stack_tweaked(
        &[("edge-1", 1)],
        "alternate",
        |c| c.public_url = Some(format!("http://{front_addr}")),
        |_| {},
    )
    .await;
    let ads = nodes.remove(0);
    lying_front(front, ads.handle.http_addr.unwrap());
    catalog(&dms).await;
    let dev = device(
        &dms,
        "IMEI:7905",
        true,
        Some("dlota"),
        Default::default(),
        &ads,
    )
    .await;
    let job = dms
        .create_job(json!({"device": "IMEI:7905", "operation": "download", "component": "fw"}))
        .await;
    let j = dms.wait_job(&job, 60).await;
    assert_eq!(j["state"], "failed", "{j:#}");
    assert_eq!(j["result_code"], 1407, "failed package validation: {j:#}");
    let j = wait_step(&dms, &job, "ads_download_reported").await;
    let detail = timeline_step(&j, "ads_download_reported")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(detail.contains("905"), "{detail}");
    let tree = dev.agent.tree().await;
    assert_eq!(tree.value("./SCOMO/Download/fw/Status"), Some("20"));
}
