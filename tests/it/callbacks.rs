//! Download-complete callbacks: signed per Standard Webhooks (checked by our own HMAC and by
//! the `standardwebhooks` Python package), delivered at least once through failures and
//! throttling, expired/revoked events, dead events replayed, validation, a race on the last
//! range, and survival of `kill -9` mid-download and mid-retry.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use crate::common::*;
use reqwest::StatusCode;
use serde_json::json;

async fn fast_node() -> Node {
    start_with(|c| {
        c.callback_backoff_base_ms = 50;
        c.callback_backoff_cap_secs = 1;
    })
    .await
}

fn secret_file(node: &Node) -> std::path::PathBuf {
    node.dir.path().join("callback.secret")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_sends_one_signed_event_with_the_ticket_facts() {
    let node = fast_node().await;
    let rx = Receiver::start().await;
    let data = pattern(300_000, 1);
    let comp = node.publish(data.clone(), "fw", "1").await.id;
    let m = node
        .mint_with(json!({
            "component": comp, "ttl_secs": 60, "device_id": "IMEI:35",
            "callback_url": rx.url, "context": {"job": "j-1"}
        }))
        .await;
    let c = client(&node.cert());
    c.get(&m.url).send().await.unwrap().bytes().await.unwrap();
    let got = rx.wait_for(1, 10).await;
    assert_eq!(got.len(), 1);
    let a = &got[0];
    assert!(verify_signature(&secret_file(&node), a), "bad signature");
    let e = a.json();
    assert_eq!(e["event"], "download.completed");
    assert_eq!(e["event_id"], a.id.as_str());
    assert_eq!(e["ticket_id"], m.id.as_str());
    assert_eq!(e["component_id"], comp.as_str());
    assert_eq!(e["device_id"], "IMEI:35");
    assert_eq!(e["size"], 300_000);
    assert_eq!(e["bytes_sent"], 300_000);
    assert_eq!(e["requests"], 1);
    assert_eq!(e["context"], json!({"job": "j-1"}));
    assert!(e["completed_at"].is_string() && e["first_byte_at"].is_string());
    assert_eq!(e["node"], node.handle.public_url.as_str());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.all().len(), 1, "delivered once, not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_then_throttling_receiver_gets_every_event_exactly_once() {
    let node = fast_node().await;
    let rx = Receiver::start().await;
    rx.fail_next.store(4, std::sync::atomic::Ordering::SeqCst);
    rx.throttle_next
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let comp = node.publish(pattern(10_000, 2), "fw", "1").await.id;
    let c = client(&node.cert());
    let mut tickets = Vec::new();
    for _ in 0..5 {
        let m = node
            .mint_with(json!({"component": comp, "callback_url": rx.url}))
            .await;
        c.get(&m.url).send().await.unwrap().bytes().await.unwrap();
        tickets.push(m.id);
    }
    let got = rx.wait_for(5, 20).await;
    assert_eq!(
        got.len(),
        5,
        "attempts: {:?}",
        rx.all().iter().map(|a| a.answered).collect::<Vec<_>>()
    );
    let mut seen: Vec<String> = got
        .iter()
        .map(|a| a.json()["ticket_id"].as_str().unwrap().into())
        .collect();
    seen.sort();
    tickets.sort();
    assert_eq!(seen, tickets);
    for a in &got {
        assert!(verify_signature(&secret_file(&node), a));
    }
    let all = rx.all();
    assert!(all.iter().any(|a| a.answered == 500) && all.iter().any(|a| a.answered == 429));
    let list: serde_json::Value = c
        .get(node.admin("/v1/callbacks?state=delivered"))
        .bearer_auth(node.token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["callbacks"].as_array().unwrap().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_expired_events_report_how_far_the_device_got() {
    let node = start_with(|c| {
        c.expiry_grace_secs = 1;
        c.sweep_interval_secs = 1;
        c.callback_backoff_base_ms = 50;
    })
    .await;
    let rx = Receiver::start().await;
    let comp = node.publish(pattern(50_000, 3), "fw", "1").await.id;
    let c = client(&node.cert());
    let revoked = node
        .mint_with(json!({"component": comp, "ttl_secs": 60, "callback_url": rx.url}))
        .await;
    let expired = node
        .mint_with(json!({"component": comp, "ttl_secs": 1, "callback_url": rx.url}))
        .await;
    for m in [&revoked, &expired] {
        let r = c
            .get(&m.url)
            .header("range", "bytes=1000-1999")
            .send()
            .await
            .unwrap();
        assert_eq!(r.bytes().await.unwrap().len(), 1000);
        node.settled(&m.id).await;
    }
    let r = c
        .delete(node.admin(&format!("/v1/tickets/{}", revoked.id)))
        .bearer_auth(node.token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = rx.wait_for(2, 15).await;
    assert_eq!(got.len(), 2);
    for a in &got {
        let e = a.json();
        let want = if e["ticket_id"] == revoked.id.as_str() {
            "download.revoked"
        } else {
            "download.expired"
        };
        assert_eq!(e["event"], want);
        assert_eq!(e["ranges"], json!([[1000, 2000]]));
        assert_eq!(e["bytes_delivered"], 1000);
        assert_eq!(e["bytes_sent"], 1000);
        assert!(verify_signature(&secret_file(&node), a));
    }
    assert_eq!(node.ticket(&expired.id).await["state"], "expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_past_the_horizon_are_kept_dead_and_can_be_replayed() {
    let node = start_with(|c| {
        c.callback_backoff_base_ms = 100;
        c.callback_horizon_secs = 1;
    })
    .await;
    let rx = Receiver::start().await;
    rx.fail_next
        .store(1_000_000, std::sync::atomic::Ordering::SeqCst);
    let comp = node.publish(pattern(1000, 4), "fw", "1").await.id;
    let m = node
        .mint_with(json!({"component": comp, "callback_url": rx.url}))
        .await;
    let c = client(&node.cert());
    c.get(&m.url).send().await.unwrap().bytes().await.unwrap();
    let list_dead = || async {
        let v: serde_json::Value = c
            .get(node.admin("/v1/callbacks?state=dead"))
            .bearer_auth(node.token())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["callbacks"].as_array().unwrap().clone()
    };
    let mut dead = Vec::new();
    for _ in 0..100 {
        dead = list_dead().await;
        if !dead.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dead.len(), 1, "event never declared dead");
    assert!(dead[0]["attempts"].as_u64().unwrap() >= 2);
    assert_eq!(dead[0]["payload"]["ticket_id"], m.id.as_str());
    assert!(rx.delivered().is_empty());
    // The receiver is fixed; the operator replays the event.
    rx.fail_next.store(0, std::sync::atomic::Ordering::SeqCst);
    let id = dead[0]["event_id"].as_str().unwrap();
    let r = c
        .post(node.admin(&format!("/v1/callbacks/{id}/retry")))
        .bearer_auth(node.token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let got = rx.wait_for(1, 10).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, id, "the replay keeps the event id for dedup");
    assert!(list_dead().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_urls_are_validated_at_minting() {
    let node = start().await;
    let comp = node.publish(pattern(10, 5), "fw", "1").await.id;
    let c = client(&node.cert());
    for (url, code) in [
        ("ftp://127.0.0.1/x", "bad_request"),
        ("not a url", "bad_request"),
        ("https://dms.example.com/cb", "callback_not_allowed"),
        ("http://10.0.0.1/cb", "callback_not_allowed"),
    ] {
        let r = c
            .post(node.admin("/v1/tickets"))
            .bearer_auth(node.token())
            .json(&json!({"component": comp, "callback_url": url}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{url}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["code"], code, "{url}");
    }
}

#[cfg_attr(
    not(tool_standardwebhooks),
    ignore = "needs the standardwebhooks Python package (.ci/run installs it)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standardwebhooks_library_verifies_our_callbacks() {
    if !tool_available(&["python3", "-c", "import standardwebhooks"]) {
        return;
    }
    let node = fast_node().await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("verified.jsonl");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/standardwebhooks_receiver.py"
    );
    let mut py = std::process::Command::new("python3")
        .arg(script)
        .arg(secret_file(&node))
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut port = String::new();
    BufReader::new(py.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let port: u16 = port.trim().parse().unwrap_or_else(|_| {
        let _ = py.kill();
        panic!("receiver did not start; is `standardwebhooks` installed? (.ci/run installs it)")
    });
    let comp = node.publish(pattern(20_000, 6), "fw", "1").await.id;
    let m = node
        .mint_with(json!({"component": comp, "callback_url": format!("http://127.0.0.1:{port}/")}))
        .await;
    client(&node.cert())
        .get(&m.url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let ok = wait_until(15, || {
        std::fs::read_to_string(&out)
            .map(|s| !s.is_empty())
            .unwrap_or(false)
    })
    .await;
    let _ = py.kill();
    let _ = py.wait();
    assert!(ok, "the standardwebhooks receiver accepted nothing");
    let line = std::fs::read_to_string(&out).unwrap();
    let e: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(e["event"], "download.completed");
    assert_eq!(e["ticket_id"], m.id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_racing_on_the_last_range_complete_it_once() {
    let node = fast_node().await;
    let rx = Receiver::start().await;
    let size = 1_000_000;
    let data = pattern(size, 7);
    let comp = node.publish(data.clone(), "fw", "1").await.id;
    // Room for every racer at once (one-time tickets default to 8 connections).
    let m = node
        .mint_with(json!({"component": comp, "callback_url": rx.url, "max_connections": 32}))
        .await;
    let c = client_h1(&node.cert());
    let head = c
        .get(&m.url)
        .header("range", "bytes=0-998999")
        .send()
        .await
        .unwrap();
    assert_eq!(head.bytes().await.unwrap().len(), 999_000);
    let mut racers = Vec::new();
    for _ in 0..16 {
        let (c, url) = (client_h1(&node.cert()), m.url.clone());
        racers.push(tokio::spawn(async move {
            let r = c
                .get(&url)
                .header("range", "bytes=-1000")
                .send()
                .await
                .unwrap();
            let status = r.status();
            let body = r.bytes().await.unwrap();
            (status, body)
        }));
    }
    let mut served = 0;
    for r in racers {
        let (status, body) = r.await.unwrap();
        match status {
            StatusCode::PARTIAL_CONTENT => {
                served += 1;
                assert!(body[..] == data[size - 1000..]);
            }
            StatusCode::GONE => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert!(served >= 1);
    let got = rx.wait_for(1, 10).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(rx.all().len(), 1, "exactly one completion event");
    let t = node.ticket(&m.id).await;
    assert_eq!(t["deliveries"], 1);
    let metrics = c
        .get(node.admin("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("scomo_ads_tickets_completed_total 1\n"),
        "{metrics}"
    );
}

fn fast_config(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("fast.toml");
    std::fs::write(
        &p,
        "[ads]\ncallback_backoff_base_ms = 100\ncallback_backoff_cap_secs = 1\n",
    )
    .unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_download_the_resumed_download_still_completes_and_calls_back() {
    let home = tempfile::tempdir().unwrap();
    let cfg = fast_config(home.path());
    let data_dir = home.path().join("node");
    let rx = Receiver::start().await;
    let size = 32 << 20;
    let data = pattern(size, 8);
    let file = home.path().join("c.bin");
    std::fs::write(&file, &data).unwrap();

    let mut p = Proc::spawn(&data_dir, &["--config", cfg.to_str().unwrap()]);
    let admin = p.admin_client();
    let meta = admin.publish(&file, "fw", "1", |_, _| {}).await.unwrap();
    let ticket = client(&p.cert())
        .post(format!("https://{}/v1/tickets", p.admin))
        .bearer_auth(p.token())
        .json(&json!({"component": meta.id, "callback_url": rx.url}))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let url = ticket["url"].as_str().unwrap().to_string();
    let token = url.rsplit_once("/d/").unwrap().1.to_string();
    // Download part of it, then the node dies.
    let resp = client_h1(&p.cert()).get(&url).send().await.unwrap();
    let mut stream = futures_util::StreamExt::fuse(resp.bytes_stream());
    let mut got = Vec::new();
    while got.len() < 4 << 20 {
        let chunk = futures_util::StreamExt::next(&mut stream)
            .await
            .unwrap()
            .unwrap();
        got.extend_from_slice(&chunk);
    }
    p.child.kill().unwrap(); // SIGKILL
    p.child.wait().unwrap();
    // Whatever else was already in flight reaches us until the socket closes.
    while let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut stream).await {
        got.extend_from_slice(&chunk);
    }
    assert!(
        got.len() < size,
        "the whole object arrived before the kill; test proves nothing"
    );
    assert!(got[..] == data[..got.len()]);

    // The node comes back (new ports); the device resumes from what it has.
    let p2 = Proc::spawn(&data_dir, &["--config", cfg.to_str().unwrap()]);
    let resumed = client_h1(&p2.cert())
        .get(format!("https://{}/d/{token}", p2.download))
        .header("range", format!("bytes={}-", got.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), StatusCode::PARTIAL_CONTENT);
    got.extend_from_slice(&resumed.bytes().await.unwrap());
    assert!(got == data);
    let events = rx.wait_for(1, 15).await;
    assert_eq!(events.len(), 1, "no completion callback after the restart");
    assert_eq!(events[0].json()["event"], "download.completed");
    let again = client_h1(&p2.cert())
        .get(format!("https://{}/d/{token}", p2.download))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::GONE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_retry_the_callback_is_still_delivered_once() {
    let home = tempfile::tempdir().unwrap();
    let cfg = fast_config(home.path());
    let data_dir = home.path().join("node");
    let rx = Receiver::start().await;
    rx.fail_next
        .store(1_000_000, std::sync::atomic::Ordering::SeqCst);
    let file = home.path().join("c.bin");
    std::fs::write(&file, pattern(100_000, 9)).unwrap();

    let mut p = Proc::spawn(&data_dir, &["--config", cfg.to_str().unwrap()]);
    let meta = p
        .admin_client()
        .publish(&file, "fw", "1", |_, _| {})
        .await
        .unwrap();
    let ticket = client(&p.cert())
        .post(format!("https://{}/v1/tickets", p.admin))
        .bearer_auth(p.token())
        .json(&json!({"component": meta.id, "callback_url": rx.url}))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let url = ticket["url"].as_str().unwrap();
    client(&p.cert())
        .get(url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        wait_until(10, || rx.all().len() >= 2).await,
        "no retries seen"
    );
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    let failed_before = rx.all().len();
    rx.fail_next.store(0, std::sync::atomic::Ordering::SeqCst);

    let _p2 = Proc::spawn(&data_dir, &["--config", cfg.to_str().unwrap()]);
    let got = rx.wait_for(1, 15).await;
    assert_eq!(got.len(), 1, "the pending callback was lost in the crash");
    assert_eq!(got[0].json()["ticket_id"], ticket["id"]);
    assert!(verify_signature(&data_dir.join("callback.secret"), &got[0]));
    assert!(failed_before >= 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.delivered().len(), 1);
}

/// An allowed receiver that answers 307 does not get the signed callback sent on to the host
/// it names: a redirect is a failed attempt, retried at the allowed receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirecting_receiver_does_not_forward_the_signed_callback() {
    let node = start_with(|c| c.callback_backoff_base_ms = 100).await;
    let elsewhere = Receiver::start().await;
    let target = elsewhere.url.clone();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().route(
        "/cb",
        axum::routing::post(move || {
            let target = target.clone();
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                axum::http::Response::builder()
                    .status(307)
                    .header("location", target)
                    .body(axum::body::Body::empty())
                    .unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let comp = node.publish(pattern(2000, 5), "fw", "1").await.id;
    let m = node
        .mint_with(json!({"component": comp, "callback_url": format!("http://{addr}/cb")}))
        .await;
    let c = client(&node.cert());
    assert_eq!(
        c.get(&m.url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .len(),
        2000
    );
    assert!(
        wait_until(15, || hits.load(std::sync::atomic::Ordering::SeqCst) >= 2).await,
        "the redirect is retried at the allowed receiver"
    );
    assert!(
        elsewhere.all().is_empty(),
        "the callback followed the redirect"
    );
    let list: serde_json::Value = c
        .get(node.admin("/v1/callbacks?state=pending"))
        .bearer_auth(node.token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let error = list["callbacks"][0]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("redirects are not followed"), "{list}");
}

/// The allow-list is checked again when each callback is sent: a receiver dropped from
/// `callback_allow_hosts` after minting gets nothing more, and the outbox says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allow_list_is_checked_again_at_send_time() {
    let node = start_with(|c| c.callback_backoff_base_ms = 300).await;
    let rx = Receiver::start().await;
    rx.fail_next.store(1, std::sync::atomic::Ordering::SeqCst);
    let comp = node.publish(pattern(1000, 5), "fw", "1").await.id;
    let m = node
        .mint_with(json!({"component": comp, "callback_url": rx.url}))
        .await;
    let c = client(&node.cert());
    assert_eq!(
        c.get(&m.url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .len(),
        1000
    );
    // The first attempt fails (500); the retry is due in ~300 ms, after the restart.
    assert!(wait_until(10, || !rx.all().is_empty()).await);
    let dir = node.dir;
    node.shutdown.cancel();
    node.handle.wait().await;
    let mut cfg = test_config(dir.path());
    cfg.callback_allow_hosts = vec!["localhost".into()];
    cfg.callback_backoff_base_ms = 300;
    let again = scomo_ads::ads::start(cfg, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        rx.all().len(),
        1,
        "a callback went to a host no longer allowed"
    );
    let list: serde_json::Value = client(&again.cert_path)
        .get(format!("{}/v1/callbacks?state=pending", again.admin_url))
        .bearer_auth(&again.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let error = list["callbacks"][0]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("not in the node's callback allow-list"),
        "{list}"
    );
}
