//! WBXML against an independent implementation (issue 17): Debian's `libwbxml2-utils`
//! (`xml2wbxml`, `wbxml2xml`, libwbxml 0.11). Our WBXML read back by `wbxml2xml` is our XML;
//! `xml2wbxml`'s encoding of our XML is read by our codec as the same message. And every flow
//! runs with a device that speaks WBXML.

use std::path::Path;
use std::process::Command as Process;

use base64::Engine as _;
use scomo_ads::syncml::codec::{self, Limits};
use scomo_ads::syncml::message::*;
use scomo_ads::syncml::wbxml;
use serde_json::json;

use crate::common::*;

fn tools() -> bool {
    tool_available(&["sh", "-c", "command -v xml2wbxml && command -v wbxml2xml"])
}

/// Runs `tool -o out in` on `input` in `dir`; returns `out`.
fn convert(dir: &Path, tool: &str, input: &[u8], n: usize) -> Vec<u8> {
    let (i, o) = (dir.join(format!("in{n}")), dir.join(format!("out{n}")));
    std::fs::write(&i, input).unwrap();
    let out = Process::new(tool)
        .arg("-o")
        .arg(&o)
        .arg(&i)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{tool}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&o).unwrap()
}

/// `wbxml2xml` writes item data as CDATA, OPAQUE bytes raw: the bytes of a `bin` item (its
/// next CDATA) become base64 in a `b64` item, as our model (and XML form) carries them.
fn binary_items_as_base64(xml: &[u8]) -> Vec<u8> {
    let bin = &b"<Format xmlns=\"syncml:metinf\">bin</Format>"[..];
    let (open, close) = (&b"<![CDATA["[..], &b"]]>"[..]);
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(f) = find(rest, bin) {
        out.extend_from_slice(&rest[..f]);
        out.extend_from_slice(b"<Format xmlns=\"syncml:metinf\">b64</Format>");
        rest = &rest[f + bin.len()..];
        let s = find(rest, open).unwrap();
        out.extend_from_slice(&rest[..s]);
        let body = &rest[s + open.len()..];
        let e = find(body, close).unwrap();
        out.extend_from_slice(
            base64::engine::general_purpose::STANDARD
                .encode(&body[..e])
                .as_bytes(),
        );
        rest = &body[e + close.len()..];
    }
    out.extend_from_slice(rest);
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The golden messages and the kinds of message the DMS and the agent send.
fn messages() -> Vec<Message> {
    let mut out: Vec<Message> = std::fs::read_dir("tests/fixtures/syncml")
        .unwrap()
        .map(|e| {
            let bytes = std::fs::read(e.unwrap().path()).unwrap();
            codec::decode(&bytes, &Limits::default()).unwrap()
        })
        .collect();
    assert_eq!(out.len(), 3);
    let header = |msg_id| Header {
        session_id: "7F".into(),
        msg_id,
        target: Location::uri("IMEI:356938035643809"),
        source: Location::uri("https://dms.example/dm"),
        resp_uri: Some("https://dms.example/dm?s=0123456789abcdef0123456789abcdef".into()),
        cred: Some(Cred {
            meta: Meta {
                type_: Some("syncml:auth-md5".into()),
                format: Some("b64".into()),
                ..Meta::default()
            },
            data: "4wwDLhHUtM0DNucJ3/D1UQ==".into(),
        }),
        ..Header::default()
    };
    let status = Command::Status(Status {
        cmd_id: 1,
        msg_ref: 1,
        cmd_ref: 0,
        cmd: "SyncHdr".into(),
        target_refs: vec!["https://dms.example/dm".into()],
        source_refs: vec!["IMEI:356938035643809".into()],
        chal: Some(Meta {
            type_: Some("syncml:auth-md5".into()),
            format: Some("b64".into()),
            next_nonce: Some("bm9uY2Utbm9uY2U=".into()),
            ..Meta::default()
        }),
        code: 212,
        ..Status::default()
    });
    let leaf = |path: &str, v: &str| {
        Item::target(path)
            .with_meta(Meta::format("chr"))
            .with_data(v)
    };
    out.push(Message {
        header: header(2),
        commands: vec![
            status.clone(),
            Command::Add(ItemCommand {
                cmd_id: 2,
                items: vec![Item::target("./SCOMO/Download/fw").with_meta(Meta::format("node"))],
                ..ItemCommand::default()
            }),
            Command::Add(ItemCommand {
                cmd_id: 3,
                items: vec![leaf("./SCOMO/Download/fw/PkgURL", "https://ads/d/AbC_-x")],
                ..ItemCommand::default()
            }),
            Command::Get(ItemCommand {
                cmd_id: 4,
                items: vec![Item::target("./DevDetail?list=StructData")],
                ..ItemCommand::default()
            }),
            Command::Exec(Exec {
                cmd_id: 5,
                correlator: Some("job-00000000000000ff".into()),
                items: vec![Item::target(
                    "./SCOMO/Download/fw/Operations/DownloadInstall",
                )],
                ..Exec::default()
            }),
        ],
        final_: true,
    });
    // An in-band chunk: binary bytes (none forms "]]>").
    let bytes: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    out.push(Message {
        header: header(3),
        commands: vec![
            status,
            Command::Add(ItemCommand {
                cmd_id: 2,
                items: vec![Item {
                    target: Some(Location::uri("./SCOMO/Inventory/Delivered/fw/Data")),
                    meta: Meta {
                        format: Some("b64".into()),
                        type_: Some("application/octet-stream".into()),
                        size: Some(90_000),
                        ..Meta::default()
                    },
                    data: Some(base64::engine::general_purpose::STANDARD.encode(&bytes)),
                    more_data: true,
                    ..Item::default()
                }],
                ..ItemCommand::default()
            }),
        ],
        final_: false,
    });
    out
}

#[cfg_attr(
    not(tool_libwbxml),
    ignore = "needs libwbxml2-utils' xml2wbxml and wbxml2xml (.ci/run installs them)"
)]
#[test]
fn our_wbxml_is_our_xml_to_libwbxml_and_theirs_decodes_to_the_same_message() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (n, m) in messages().into_iter().enumerate() {
        // Ours, read by libwbxml, is our message.
        let theirs_xml = convert(dir.path(), "wbxml2xml", &wbxml::encode(&m), 2 * n);
        let xml = binary_items_as_base64(&theirs_xml);
        let back = codec::decode(&xml, &Limits::default())
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&xml)));
        assert_eq!(back, m, "wbxml2xml of our WBXML, message {n}");
        // Theirs (string table, OPAQUE text), read by us, is the same message.
        let theirs = convert(
            dir.path(),
            "xml2wbxml",
            codec::encode(&m).as_bytes(),
            2 * n + 1,
        );
        assert_eq!(
            wbxml::decode(&theirs, &Limits::default()).unwrap(),
            m,
            "xml2wbxml of our XML, message {n}"
        );
    }
}

/// The sizes an integrator asks about: the same messages, in bytes.
#[test]
fn wbxml_is_smaller_than_xml() {
    for m in messages() {
        let (x, w) = (codec::encode(&m).len(), wbxml::encode(&m).len());
        assert!(w < x, "{w} bytes of WBXML vs {x} of XML");
    }
}

/// Every kind of flow with a device that speaks WBXML: in-band delivery (raw OPAQUE chunks),
/// alternate delivery, an operation, an inventory read; the DMS answers in WBXML.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flow_runs_in_wbxml() {
    let (dms, mut nodes) = start_stack(&[("edge-1", 1)], "dm").await;
    let ads = nodes.remove(0);
    dms.add_component(
        &[
            ("name", "app"),
            ("version", "1.0"),
            ("manufacturer", "Acme"),
        ],
        pattern(100_000, 5),
    )
    .await;
    dms.add_component(
        &[("name", "fw"), ("version", "2.0"), ("manufacturer", "Acme")],
        pattern(300_000, 6),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = device_config(&dms, "IMEI:1700", dir.path(), Default::default());
    cfg.encoding = scomo_ads::syncml::Encoding::Wbxml;
    cfg.ca_certs.push(ads.cert());
    let agent = scomo_ads::device::Agent::new(cfg).unwrap();
    let notify_url = notify_listener(&dms, &agent).await;
    dms.provision("IMEI:1700", "dev-secret", Some(&notify_url))
        .await;
    for body in [
        json!({"operation": "download_install", "component": "app", "delivery": "dm"}),
        json!({"operation": "download_install", "component": "fw", "delivery": "alternate"}),
        json!({"operation": "deactivate", "component": "app"}),
        json!({"operation": "inventory", "inventory_first": true}),
    ] {
        let mut body = body;
        body["device"] = json!("IMEI:1700");
        let id = dms.create_job(body.clone()).await;
        let j = dms.wait_job(&id, 60).await;
        assert_eq!(j["state"], "succeeded", "{body}: {j:#}");
    }
    let d = dms.device("IMEI:1700").await;
    assert_eq!(d["inventory"]["deployed"]["fw"]["Name"], "fw", "{d:#}");
    // A WBXML request is answered in WBXML; an unknown type is refused with the types.
    let r = dms
        .client()
        .post(&dms.handle.dm_url)
        .header("content-type", "application/vnd.syncml+wbxml")
        .body(wbxml::encode(&messages()[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], wbxml::CONTENT_TYPE);
    let r = dms
        .client()
        .post(&dms.handle.dm_url)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert!(r.text().await.unwrap().contains("wbxml"));
}

/// Every message of real WBXML sessions (both directions), captured between the agent and the
/// DMS, reads the same through libwbxml as through our codec.
#[cfg_attr(
    not(tool_libwbxml),
    ignore = "needs libwbxml2-utils' xml2wbxml and wbxml2xml (.ci/run installs them)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_of_a_wbxml_session_reads_the_same_through_libwbxml() {
    if !tools() {
        return;
    }
    use axum::extract::{RawQuery, State};
    use std::sync::{Arc, Mutex};
    type Captured = Arc<Mutex<Vec<Vec<u8>>>>;
    // A recording proxy in front of the DMS: the DMS's public URL (and so every RespURI)
    // points at it.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}/dm", proxy.local_addr().unwrap());
    let dms = start_dms_with(|c| c.public_url = Some(proxy_url.clone())).await;
    let captured: Captured = Arc::default();
    let upstream = format!("https://{}/dm", dms.handle.dm_addr);
    let http = dms.client();
    let forward = move |State(cap): State<Captured>,
                        RawQuery(q): RawQuery,
                        headers: axum::http::HeaderMap,
                        body: axum::body::Bytes| {
        let (http, upstream) = (http.clone(), upstream.clone());
        async move {
            let url = match q {
                Some(q) => format!("{upstream}?{q}"),
                None => upstream,
            };
            let r = http
                .post(url)
                .header("content-type", headers["content-type"].clone())
                .body(body.to_vec())
                .send()
                .await
                .unwrap();
            let ct = r.headers()["content-type"].clone();
            let reply = r.bytes().await.unwrap().to_vec();
            cap.lock().unwrap().extend([body.to_vec(), reply.clone()]);
            ([(axum::http::header::CONTENT_TYPE, ct)], reply)
        }
    };
    let app = axum::Router::new()
        .route("/dm", axum::routing::post(forward))
        .with_state(captured.clone());
    tokio::spawn(async move { axum::serve(proxy, app).await });

    dms.add_component(
        &[
            ("name", "app"),
            ("version", "1.0"),
            ("manufacturer", "Acme"),
        ],
        pattern(40_000, 5),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = device_config(&dms, "IMEI:1710", dir.path(), Default::default());
    cfg.encoding = scomo_ads::syncml::Encoding::Wbxml;
    let agent = scomo_ads::device::Agent::new(cfg).unwrap();
    let notify_url = notify_listener(&dms, &agent).await;
    dms.provision("IMEI:1710", "dev-secret", Some(&notify_url))
        .await;
    for body in [
        json!({"operation": "download_install", "component": "app", "inventory_first": true}),
        json!({"operation": "remove", "component": "app"}),
    ] {
        let mut body = body;
        body["device"] = json!("IMEI:1710");
        let j = dms.wait_job(&dms.create_job(body).await, 30).await;
        assert_eq!(j["state"], "succeeded", "{j:#}");
    }
    let messages = captured.lock().unwrap().clone();
    assert!(messages.len() >= 10, "{} messages", messages.len());
    let work = tempfile::tempdir().unwrap();
    for (n, w) in messages.iter().enumerate() {
        let ours = wbxml::decode(w, &Limits::default()).unwrap();
        let theirs = binary_items_as_base64(&convert(work.path(), "wbxml2xml", w, n));
        assert_eq!(
            codec::decode(&theirs, &Limits::default()).unwrap(),
            ours,
            "message {n} of the sessions"
        );
    }
}
