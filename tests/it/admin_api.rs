//! The admin API over real TLS: authentication, streamed idempotent uploads that publish
//! nothing partial, deletion rules, minting, metrics, and the CLI driving it.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use crate::common::*;
use reqwest::StatusCode;
use tokio::io::AsyncWriteExt;

fn objects_in(dir: &std::path::Path) -> usize {
    walk(&dir.join("objects"))
}

fn walk(p: &std::path::Path) -> usize {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.map(|e| {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            walk(&e.path())
        } else {
            1
        }
    })
    .sum()
}

fn tmp_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("tmp")).unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_v1_route_needs_the_token() {
    // Two dozen refusals in a row: beyond the failed-auth backoff's free tries, which
    // hardening.rs covers.
    let node = start_with(|c| c.admin_limits.auth_free_failures = 1000).await;
    let c = client(&node.cert());
    let routes = [
        ("GET", "/v1/components"),
        ("POST", "/v1/components?name=a&version=1"),
        ("GET", "/v1/components/abc"),
        ("DELETE", "/v1/components/abc"),
        ("POST", "/v1/tickets"),
        ("GET", "/v1/tickets/abc"),
    ];
    for (method, path) in routes {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Basic Zm9vOmJhcg=="),
            Some("Bearer "),
        ] {
            let mut req = c.request(method.parse().unwrap(), node.admin(path));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let resp = req.body("x").send().await.unwrap();
            assert_eq!(
                resp.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} {auth:?}"
            );
            let v: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(v["code"], "unauthorized");
        }
    }
    assert_eq!(
        objects_in(node.dir.path()),
        0,
        "nothing published without a token"
    );
    // Health and metrics are open on the admin listener.
    let resp = c.get(node.admin("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_generated_0600_and_reused() {
    let node = start().await;
    for f in ["admin.token", "mac.key", "tls/key.pem"] {
        let mode = std::fs::metadata(node.dir.path().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let token = node.token().to_string();
    assert!(node.handle.admin_token_generated);
    let dir = node.dir;
    node.shutdown.cancel();
    node.handle.wait().await;
    // Second start on the same directory: same token, same certificate, not "generated".
    let cert_before = std::fs::read(dir.path().join("tls/cert.pem")).unwrap();
    let again = scomo_ads::ads::start(
        test_config(dir.path()),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(again.admin_token, token);
    assert!(!again.admin_token_generated);
    assert_eq!(
        std::fs::read(dir.path().join("tls/cert.pem")).unwrap(),
        cert_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_bytes_twice_same_id_one_copy() {
    let node = start().await;
    let c = client(&node.cert());
    let data = pattern(300_000, 3);
    let mut ids = Vec::new();
    for (i, expect) in [(1, StatusCode::CREATED), (2, StatusCode::OK)] {
        let resp = c
            .post(node.admin("/v1/components"))
            .query(&[("name", "fw"), ("version", &i.to_string())])
            .bearer_auth(node.token())
            .body(data.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), expect);
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["size"], 300_000);
        assert_eq!(v["blake3"], blake3::hash(&data).to_hex().as_str());
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids[0], ids[1]);
    assert_eq!(objects_in(node.dir.path()), 1);
    assert_eq!(tmp_files(node.dir.path()), 0);
    let list: serde_json::Value = c
        .get(node.admin("/v1/components"))
        .bearer_auth(node.token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["components"].as_array().unwrap().len(), 1);
    let one = c
        .get(node.admin(&format!("/v1/components/{}", ids[0])))
        .bearer_auth(node.token())
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    let missing = c
        .get(node.admin("/v1/components/0000"))
        .bearer_auth(node.token())
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

/// Opens a raw TLS connection to the admin listener.
async fn raw_tls(node: &Node) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut config = scomo_ads::net::tls::client_config_trusting(&node.cert()).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(node.handle.admin_addr)
        .await
        .unwrap();
    connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_cut_off_midway_publishes_nothing() {
    let node = start().await;
    let mut tls = raw_tls(&node).await;
    let head = format!(
        "POST /v1/components?name=fw&version=1 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-length: 5000000\r\n\r\n",
        node.token()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&pattern(2_500_000, 1)).await.unwrap();
    tls.flush().await.unwrap();
    // The server has started writing a temp file...
    assert!(wait_until(10, || tmp_files(node.dir.path()) == 1).await);
    // ...and the client vanishes.
    drop(tls);
    assert!(
        wait_until(10, || tmp_files(node.dir.path()) == 0).await,
        "temp file left behind"
    );
    assert_eq!(objects_in(node.dir.path()), 0);
    assert!(node.components().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_size_limit_and_bad_parameters_are_4xx() {
    let node = start_with(|c| c.max_upload_bytes = 100_000).await;
    let c = client(&node.cert());
    // Declared too large: refused before reading.
    let resp = c
        .post(node.admin("/v1/components?name=a&version=1"))
        .bearer_auth(node.token())
        .body(vec![0u8; 100_001])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Chunked (no Content-Length) and too large: cut off while streaming.
    let stream = futures_util::stream::iter(
        (0..10).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![1u8; 20_000]))),
    );
    let resp = c
        .post(node.admin("/v1/components?name=a&version=1"))
        .bearer_auth(node.token())
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    for q in [
        "version=1",
        "name=a",
        "name=&version=1",
        "name=a%0Ab&version=1",
    ] {
        let resp = c
            .post(node.admin(&format!("/v1/components?{q}")))
            .bearer_auth(node.token())
            .body("abc")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{q}");
    }
    assert!(wait_until(5, || tmp_files(node.dir.path()) == 0).await);
    assert_eq!(objects_in(node.dir.path()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_is_refused_while_a_live_ticket_needs_the_component() {
    let node = start().await;
    let c = client(&node.cert());
    let a = node.publish(pattern(1000, 1), "a", "1").await;
    let b = node.publish(pattern(1000, 2), "b", "1").await;
    let ticket = node.mint(&a.id, 600).await;
    let resp = c
        .delete(node.admin(&format!("/v1/components/{}", a.id)))
        .bearer_auth(node.token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert_eq!(c.get(&ticket.url).send().await.unwrap().status(), 200);
    let resp = c
        .delete(node.admin(&format!("/v1/components/{}", b.id)))
        .bearer_auth(node.token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(objects_in(node.dir.path()), 1);
    let resp = c
        .delete(node.admin(&format!("/v1/components/{}", b.id)))
        .bearer_auth(node.token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minting_validates_and_reports_the_ticket() {
    let node = start().await;
    let c = client(&node.cert());
    let meta = node.publish(pattern(5000, 1), "a", "1").await;
    let post = |body: serde_json::Value| {
        c.post(node.admin("/v1/tickets"))
            .bearer_auth(node.token())
            .json(&body)
            .send()
    };
    let r = post(serde_json::json!({"component": "00ff", "ttl_secs": 60}))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    for bad in [
        serde_json::json!({"component": meta.id, "ttl_secs": 0}),
        serde_json::json!({"component": meta.id, "ttl_secs": 99_999_999_999u64}),
        serde_json::json!({"component": meta.id, "tll_secs": 5}),
        serde_json::json!({"ttl_secs": 5}),
    ] {
        let r = post(bad.clone()).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let r = post(serde_json::json!({"component": meta.id, "ttl_secs": 60, "device_id": "IMEI:1"}))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["size"], 5000);
    assert_eq!(v["sha256"], meta.sha256.as_str());
    assert!(v["url"].as_str().unwrap().len() < 255);
    let t: serde_json::Value = c
        .get(node.admin(&format!("/v1/tickets/{}", v["id"].as_str().unwrap())))
        .bearer_auth(node.token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(t["state"], "issued");
    assert_eq!(t["device_id"], "IMEI:1");
    assert_eq!(t["component"], meta.id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_bytes_and_cache() {
    let node = start().await;
    let c = client(&node.cert());
    let meta = node.publish(pattern(10_000, 1), "a", "1").await;
    let url = node.mint(&meta.id, 60).await.url;
    for _ in 0..3 {
        c.get(&url).send().await.unwrap().bytes().await.unwrap();
    }
    c.get(format!("{url}x")).send().await.unwrap();
    let text = c
        .get(node.admin("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("scomo_ads_requests_total{status=\"200\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("scomo_ads_requests_total{status=\"403\"} 1"),
        "{text}"
    );
    assert!(text.contains("scomo_ads_bytes_sent_total 30000"), "{text}");
    assert!(text.contains("scomo_ads_cache_hits_total 2"), "{text}");
    assert!(text.contains("scomo_ads_cache_misses_total 1"), "{text}");
    assert!(text.contains("scomo_ads_open_connections{listener=\"download\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_mint_commands_drive_the_admin_api() {
    let node = start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.bin");
    let data = pattern(200_000, 9);
    std::fs::File::create(&file)
        .unwrap()
        .write_all(&data)
        .unwrap();
    let out = tokio::process::Command::new(bin())
        .arg("publish")
        .arg(&file)
        .args(["--name", "cli", "--version", "2"])
        .arg("--data")
        .arg(node.dir.path())
        .args(["--admin-url", &node.handle.admin_url])
        .env_remove("SCOMO_ADS_ADMIN_TOKEN")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(meta["id"], blake3::hash(&data).to_hex().as_str());
    let out = tokio::process::Command::new(bin())
        .arg("mint")
        .arg(meta["id"].as_str().unwrap())
        .args(["--ttl", "10m"])
        .arg("--data")
        .arg(node.dir.path())
        .args(["--admin-url", &node.handle.admin_url])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let minted: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let url = minted["url"].as_str().unwrap();
    let got = client(&node.cert())
        .get(url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got[..] == data[..]);
    // A wrong token is reported, not panicked on.
    let out = tokio::process::Command::new(bin())
        .arg("mint")
        .arg(meta["id"].as_str().unwrap())
        .args(["--admin-url", &node.handle.admin_url])
        .arg("--data")
        .arg(node.dir.path())
        .env("SCOMO_ADS_ADMIN_TOKEN", "nope")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401"), "{err}");
}

/// A refused upload over HTTP/2 is answered and then read to its end, not reset: curl 7.88
/// (Debian 12's) drops an answer followed by RST_STREAM and fails with "stream error in the
/// HTTP/2 framing layer" (exit 92), so an operator with a mistyped token would never see the
/// 401. Checked at the frame level: the 401 arrives while the body is still being sent, and
/// the rest of the body is still accepted afterwards (the stream was not reset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upload_over_http2_is_answered_then_read_not_reset() {
    let node = start().await;
    let mut config = scomo_ads::net::tls::client_config_trusting(&node.cert()).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(node.handle.admin_addr)
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::post(node.admin("/v1/components?name=fw&version=1"))
        .header("authorization", "Bearer wrong")
        .header("content-length", "300000")
        .body(())
        .unwrap();
    let (response, mut upload) = client.send_request(req, false).unwrap();
    upload
        .send_data(bytes::Bytes::from(pattern(50_000, 1)), false)
        .unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 401);
    // The answer is complete; the node now reads the rest instead of resetting the stream.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let rest = bytes::Bytes::from(pattern(250_000, 2));
    upload.reserve_capacity(rest.len());
    let sent = upload.send_data(rest, true);
    let reset = std::future::poll_fn(|cx| match upload.poll_reset(cx) {
        std::task::Poll::Pending => std::task::Poll::Ready(None),
        std::task::Poll::Ready(r) => std::task::Poll::Ready(Some(r)),
    })
    .await;
    assert!(
        sent.is_ok() && reset.is_none(),
        "the node reset the stream: {sent:?} {reset:?}"
    );
    let mut body = response.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = body.data().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert!(String::from_utf8_lossy(&got).contains("unauthorized"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_a_directory_says_so_in_one_line() {
    let node = start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(bin())
        .arg("publish")
        .arg(dir.path())
        .args(["--name", "cli", "--version", "2"])
        .arg("--data")
        .arg(node.dir.path())
        .args(["--admin-url", &node.handle.admin_url])
        .env_remove("SCOMO_ADS_ADMIN_TOKEN")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<_> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("is not a regular file"), "{stderr}");
    assert!(node.components().await.is_empty(), "nothing was published");
}

/// `GET /v1/tickets`: newest first, paged with the same `limit` / `cursor` as the DMS's lists,
/// filtered by effective state, component and device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_are_listed_newest_first_filtered_and_paged() {
    let node = start_with(|c| c.sweep_interval_secs = 3600).await;
    let a = node.publish(pattern(10_000, 1), "a", "1").await.id;
    let b = node.publish(pattern(20_000, 2), "b", "1").await.id;
    let mut minted = Vec::new();
    for (comp, device, ttl) in [
        (&a, Some("IMEI:1"), 60),
        (&a, None, 1),
        (&b, Some("IMEI:1"), 60),
        (&b, Some("IMEI:2"), 60),
        (&a, Some("IMEI:2"), 60),
    ] {
        let mut body = serde_json::json!({"component": comp, "ttl_secs": ttl});
        if let Some(d) = device {
            body["device_id"] = d.into();
        }
        minted.push(node.mint_with(body).await.id);
        // Tickets of one second keep a stable newest-first order.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    let c = client(&node.cert());
    let done = node
        .mint_with(serde_json::json!({"component": b, "ttl_secs": 60}))
        .await;
    c.get(&done.url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    state_becomes(&node, &done.id, "completed").await;
    let revoked = &minted[3];
    let r = c
        .delete(node.admin(&format!("/v1/tickets/{revoked}")))
        .bearer_auth(node.token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let list = |query: &str| {
        let c = c.clone();
        let url = node.admin(&format!("/v1/tickets?{query}"));
        let token = node.token().to_string();
        async move {
            let r = c.get(url).bearer_auth(token).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect()
    };
    // Two at a time, every ticket once, newest first.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    for _ in 0..10 {
        let (status, page) = list(&format!("limit=2&cursor={cursor}")).await;
        assert_eq!(status, 200, "{page}");
        assert!(page["items"].as_array().unwrap().len() <= 2);
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    let mut want: Vec<String> = minted.clone();
    want.push(done.id.clone());
    want.reverse();
    assert_eq!(seen, want);
    let (_, v) = list("state=revoked").await;
    assert_eq!(ids(&v), std::slice::from_ref(revoked));
    let (_, v) = list("state=completed").await;
    assert_eq!(ids(&v), std::slice::from_ref(&done.id));
    assert_eq!(v["items"][0]["bytes_delivered"], 20_000);
    // Past its expiry, a ticket lists as expired before the sweeper ended it.
    let (_, v) = list("state=expired").await;
    assert_eq!(ids(&v), [minted[1].clone()]);
    let (_, v) = list("state=issued").await;
    assert_eq!(
        ids(&v),
        [minted[4].clone(), minted[2].clone(), minted[0].clone()]
    );
    let (_, v) = list(&format!("component={a}")).await;
    assert_eq!(
        ids(&v),
        [minted[4].clone(), minted[1].clone(), minted[0].clone()]
    );
    let (_, v) = list(&format!("component={b}&device=IMEI:2")).await;
    assert_eq!(ids(&v), [minted[3].clone()]);
    assert_eq!(v["items"][0]["state"], "revoked");
    let (status, v) = list("state=lost").await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("issued, downloading"));
    assert_eq!(list("limit=0").await.0, 400);
    assert_eq!(list("limit=501").await.0, 400);
    assert_eq!(list("colour=red").await.0, 400);
    let r = c.get(node.admin("/v1/tickets")).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

/// The same bytes published under another name/version record that name on the same object
/// (200, same id), instead of answering with the first publication's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_bytes_under_a_new_name_record_that_name() {
    let node = start().await;
    let bytes = pattern(12_000, 9);
    let c = client(&node.cert());
    let put = |name: &'static str, version: &'static str| {
        let c = c.clone();
        let url = node.admin("/v1/components");
        let token = node.token().to_string();
        let bytes = bytes.clone();
        async move {
            let r = c
                .post(url)
                .query(&[("name", name), ("version", version)])
                .bearer_auth(token)
                .body(bytes)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (s1, first) = put("modem-fw", "2.1").await;
    assert_eq!(s1, 201);
    let (s2, again) = put("modem-fw-eu", "2.1.1").await;
    assert_eq!(s2, 200, "same bytes: nothing new stored");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(
        (again["name"].as_str(), again["version"].as_str()),
        (Some("modem-fw-eu"), Some("2.1.1"))
    );
    let (s3, _) = put("modem-fw-eu", "2.1.1").await;
    assert_eq!(s3, 200);
    let id = first["id"].as_str().unwrap();
    let shown = node
        .admin_get(&format!("/v1/components/{id}"), node.token())
        .await;
    let shown: serde_json::Value = shown.json().await.unwrap();
    assert_eq!(
        shown["names"],
        serde_json::json!([{"name": "modem-fw", "version": "2.1"}, {"name": "modem-fw-eu", "version": "2.1.1"}])
    );
    let all = node.components().await;
    assert_eq!(all.len(), 1, "one object: {all:?}");
    assert_eq!(all[0]["names"].as_array().unwrap().len(), 2);
    // One object on disk.
    let objects = walk_files(&node.dir.path().join("objects"));
    assert_eq!(objects, 1);
}

fn walk_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk_files(&p)
            } else {
                1
            }
        })
        .sum()
}
