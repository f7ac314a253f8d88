//! The download plane over real TLS (HTTP/1.1 and HTTP/2): ranges, conditionals, HEAD,
//! multipart, resume, token rejection.

use std::time::Duration;

use crate::common::*;
use base64::Engine;
use futures_util::StreamExt;
use reqwest::StatusCode;
use sha2::Digest;

const SIZE: usize = 1_000_003; // not a multiple of the chunk size

async fn setup() -> (Node, Vec<u8>, String) {
    let node = start().await;
    let data = pattern(SIZE, 7);
    let meta = node.publish(data.clone(), "fw", "1.0").await;
    let url = node.mint(&meta.id, 600).await.url;
    (node, data, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_object_over_h1_and_h2_with_digests() {
    let (node, data, url) = setup().await;
    for (client, version) in [
        (client_h1(&node.cert()), reqwest::Version::HTTP_11),
        (client(&node.cert()), reqwest::Version::HTTP_2),
    ] {
        let resp = client.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), version);
        let h = resp.headers().clone();
        let blake = blake3::hash(&data).to_hex().to_string();
        assert_eq!(h["etag"], format!("\"{blake}\"").as_str());
        assert_eq!(h["x-blake3"], blake.as_str());
        assert_eq!(h["accept-ranges"], "bytes");
        assert_eq!(h["content-length"], SIZE.to_string().as_str());
        assert_eq!(
            h["content-disposition"],
            "attachment; filename=\"fw-1.0.bin\""
        );
        assert!(h.contains_key("last-modified"));
        let sha = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&data));
        assert_eq!(h["repr-digest"], format!("sha-256=:{sha}:").as_str());
        let body = resp.bytes().await.unwrap();
        assert!(body[..] == data[..], "body differs over {version:?}");
    }
}

async fn get_range(c: &reqwest::Client, url: &str, range: &str) -> reqwest::Response {
    c.get(url).header("range", range).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_single_range_form() {
    let (node, data, url) = setup().await;
    let n = SIZE as u64;
    for c in [client_h1(&node.cert()), client(&node.cert())] {
        for (range, start, end) in [
            ("bytes=0-0", 0, 0),
            ("bytes=0-499", 0, 499),
            ("bytes=131071-131073", 131_071, 131_073), // across a chunk boundary
            ("bytes=500000-", 500_000, n - 1),
            ("bytes=-1", n - 1, n - 1),
            ("bytes=-300000", n - 300_000, n - 1),
            ("bytes=-99999999", 0, n - 1),
            ("bytes=999000-99999999", 999_000, n - 1),
        ] {
            let resp = get_range(&c, &url, range).await;
            assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{range}");
            assert_eq!(
                resp.headers()["content-range"],
                format!("bytes {start}-{end}/{n}").as_str()
            );
            let body = resp.bytes().await.unwrap();
            assert!(body[..] == data[start as usize..=end as usize], "{range}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsatisfiable_and_malformed_ranges() {
    let (node, data, url) = setup().await;
    let c = client(&node.cert());
    for range in ["bytes=1000003-", "bytes=2000000-3000000", "bytes=-0"] {
        let resp = get_range(&c, &url, range).await;
        assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(resp.headers()["content-range"], "bytes */1000003");
    }
    // Malformed: ignored, the whole object comes back (RFC 9110 §14.2).
    for range in ["bytes=5-1", "bytes=abc", "lines=1-2", "bytes=1-2-3"] {
        let resp = get_range(&c, &url, range).await;
        assert_eq!(resp.status(), StatusCode::OK, "{range}");
        assert_eq!(resp.bytes().await.unwrap().len(), data.len());
    }
}

/// Splits a multipart/byteranges body into (content-range, bytes) parts.
fn parse_multipart(body: &[u8], boundary: &str) -> Vec<(String, Vec<u8>)> {
    let delim = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest = body;
    // Skip to the first delimiter.
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let first = find(rest, delim.as_bytes()).expect("first boundary");
    rest = &rest[first + delim.len()..];
    loop {
        if rest.starts_with(b"--") {
            break;
        }
        assert!(rest.starts_with(b"\r\n"));
        let head_end = find(rest, b"\r\n\r\n").expect("part header end");
        let head = std::str::from_utf8(&rest[2..head_end]).unwrap();
        let cr = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Range: "))
            .expect("part content-range")
            .to_string();
        let data_start = head_end + 4;
        let next = find(&rest[data_start..], format!("\r\n{delim}").as_bytes()).expect("next");
        parts.push((cr, rest[data_start..data_start + next].to_vec()));
        rest = &rest[data_start + next + 2 + delim.len()..];
    }
    parts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiple_ranges_as_multipart_byte_for_byte() {
    let (node, data, url) = setup().await;
    for c in [client_h1(&node.cert()), client(&node.cert())] {
        // Overlapping 10-29 and 20-39 coalesce; suffix -5 is the tail.
        let resp = get_range(&c, &url, "bytes=10-29, 20-39,500000-600000,-5").await;
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        let boundary = ct
            .strip_prefix("multipart/byteranges; boundary=")
            .expect("multipart content type");
        let declared: usize = resp.headers()["content-length"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let body = resp.bytes().await.unwrap();
        assert_eq!(body.len(), declared);
        let parts = parse_multipart(&body, boundary);
        let expect = [(10usize, 39usize), (500_000, 600_000), (SIZE - 5, SIZE - 1)];
        assert_eq!(parts.len(), expect.len());
        for ((cr, bytes), (s, e)) in parts.iter().zip(expect) {
            assert_eq!(cr, &format!("bytes {s}-{e}/{SIZE}"));
            assert!(bytes[..] == data[s..=e], "part {cr}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_range_match_and_mismatch() {
    let (node, data, url) = setup().await;
    let c = client(&node.cert());
    let head = c.head(&url).send().await.unwrap();
    let etag = head.headers()["etag"].to_str().unwrap().to_string();
    let lm = head.headers()["last-modified"]
        .to_str()
        .unwrap()
        .to_string();

    for validator in [etag.as_str(), lm.as_str()] {
        let resp = c
            .get(&url)
            .header("range", "bytes=100-199")
            .header("if-range", validator)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{validator}");
        assert!(resp.bytes().await.unwrap()[..] == data[100..200]);
    }
    for stale in [
        "\"0000\"",
        "W/\"whatever\"",
        "Tue, 01 Jan 2002 00:00:00 GMT",
    ] {
        let resp = c
            .get(&url)
            .header("range", "bytes=100-199")
            .header("if-range", stale)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{stale}");
        assert_eq!(resp.bytes().await.unwrap().len(), SIZE);
    }
    let resp = c
        .get(&url)
        .header("if-none-match", etag.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_has_the_same_headers_and_no_body() {
    let (node, _data, url) = setup().await;
    for c in [client_h1(&node.cert()), client(&node.cert())] {
        let get = c.get(&url).send().await.unwrap();
        let gh = get.headers().clone();
        drop(get);
        let head = c.head(&url).send().await.unwrap();
        assert_eq!(head.status(), StatusCode::OK);
        for name in [
            "etag",
            "content-length",
            "accept-ranges",
            "repr-digest",
            "x-blake3",
            "content-disposition",
            "last-modified",
            "content-type",
        ] {
            assert_eq!(head.headers()[name], gh[name], "{name}");
        }
        assert!(head.bytes().await.unwrap().is_empty());
        let ranged = c
            .head(&url)
            .header("range", "bytes=0-9")
            .send()
            .await
            .unwrap();
        assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(ranged.headers()["content-length"], "10");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_download_resumes_to_identical_bytes() {
    let (node, data, url) = setup().await;
    let c = client_h1(&node.cert());
    let cut = 1 + (rand::random::<u64>() as usize % (SIZE - 2));
    let resp = c.get(&url).send().await.unwrap();
    let etag = resp.headers()["etag"].to_str().unwrap().to_string();
    let expected_b3 = resp.headers()["x-blake3"].to_str().unwrap().to_string();
    let mut got = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.unwrap());
        if got.len() >= cut {
            got.truncate(cut);
            break;
        }
    }
    drop(stream); // the connection is cut mid-body
    let resp = c
        .get(&url)
        .header("range", format!("bytes={}-", got.len()))
        .header("if-range", etag.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    got.extend_from_slice(&resp.bytes().await.unwrap());
    assert_eq!(
        blake3::hash(&got).to_hex().as_str(),
        expected_b3,
        "cut at {cut}"
    );
    assert!(got == data);
}

#[cfg_attr(not(tool_curl), ignore = "needs curl (.ci/run installs it)")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_resumes_a_partial_file() {
    if !tool_available(&["curl", "--version"]) {
        return;
    }
    let (node, data, url) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("part.bin");
    std::fs::write(&out, &data[..123_457]).unwrap();
    let status = tokio::process::Command::new("curl")
        .args(["-sS", "--fail", "-C", "-", "--cacert"])
        .arg(node.cert())
        .arg("-o")
        .arg(&out)
        .arg(&url)
        .status()
        .await
        .expect("curl runs");
    assert!(status.success());
    assert!(std::fs::read(&out).unwrap() == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_truncated_garbage_and_expired_tokens() {
    let (node, data, url) = setup().await;
    let c = client(&node.cert());
    let (base, token) = url.rsplit_once("/d/").unwrap();
    // Flip one character of the MAC.
    let mut forged: Vec<char> = token.chars().collect();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == 'A' { 'B' } else { 'A' };
    let forged: String = forged.into_iter().collect();
    for bad in [
        forged.as_str(),
        &token[..token.len() - 1],
        "garbage",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "%00%ff",
    ] {
        let resp = c.get(format!("{base}/d/{bad}")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{bad}");
        let text = resp.text().await.unwrap();
        assert!(text.len() < 100 && !text.contains("panicked"));
    }
    // A trailing file name is allowed and ignored.
    let resp = c.get(format!("{url}/fw.bin")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().len(), data.len());
    // Wrong method.
    let resp = c.post(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    // Expired: 410 Gone.
    let meta_id = blake3::hash(&data).to_hex().to_string();
    let short = node.mint(&meta_id, 1).await.url;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let resp = c.get(&short).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::GONE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_listener_serves_the_same_bytes() {
    let (node, data, url) = setup().await;
    let http = node.handle.http_addr.unwrap();
    let token = url.rsplit_once("/d/").unwrap().1;
    let resp = reqwest::get(format!("http://{http}/d/{token}"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.bytes().await.unwrap()[..] == data[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_urls_are_compact() {
    let (_node, _data, url) = setup().await;
    assert!(url.len() < 120, "{} bytes: {url}", url.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mac_key_rotation_keeps_old_urls_until_the_old_key_is_retired() {
    let (node, data, old_url) = setup().await;
    let comp = blake3::hash(&data).to_hex().to_string();
    let dir = node.dir;
    let old_key = std::fs::read_to_string(dir.path().join("mac.key")).unwrap();
    node.shutdown.cancel();
    node.handle.wait().await;
    let restart = |dir: std::path::PathBuf| async move {
        let mut cfg = test_config(&dir);
        cfg.http_listen = None;
        scomo_ads::ads::start(cfg, tokio_util::sync::CancellationToken::new())
            .await
            .unwrap()
    };
    let token = |url: &str| url.rsplit_once("/d/").unwrap().1.to_string();
    // Rotate: a new key on top, the old one still listed.
    let new_key = "ab".repeat(32);
    std::fs::write(
        dir.path().join("mac.keys"),
        format!("2:{new_key}\n1:{}\n", old_key.trim()),
    )
    .unwrap();
    let n = restart(dir.path().to_path_buf()).await;
    let c = client(&n.cert_path);
    let r = c
        .get(format!("{}/d/{}", n.public_url, token(&old_url)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "old URLs verify during the rotation");
    let minted: serde_json::Value = c
        .post(format!("{}/v1/tickets", n.admin_url))
        .bearer_auth(&n.admin_token)
        .json(&serde_json::json!({"component": comp, "max_deliveries": 10}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_url = minted["url"].as_str().unwrap().to_string();
    n.shutdown();
    n.wait().await;
    // Retire the old key.
    std::fs::write(dir.path().join("mac.keys"), format!("2:{new_key}\n")).unwrap();
    let n = restart(dir.path().to_path_buf()).await;
    let c = client(&n.cert_path);
    let r = c
        .get(format!("{}/d/{}", n.public_url, token(&old_url)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "URLs of a retired key are refused");
    let r = c
        .get(format!("{}/d/{}", n.public_url, token(&new_url)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "URLs of the new key work");
}

/// Property, over real TLS: for random Range headers (single, suffix, open-ended, several,
/// overlapping, out of bounds), every byte the node serves is the object's byte at that offset,
/// and a 206 covers exactly the satisfiable ranges asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_set_of_ranges_serves_exactly_the_objects_slices() {
    use rand::{Rng, SeedableRng};
    let node = start().await;
    let size = 10_000u64;
    let data = pattern(size as usize, 77);
    let meta = node.publish(data.clone(), "fw", "1").await;
    let url = node
        .mint_with(serde_json::json!({"component": meta.id, "max_deliveries": 100000}))
        .await
        .url;
    let c = client_h1(&node.cert());
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5c0);
    let slice = |a: u64, b: u64| data[a as usize..=b as usize].to_vec();
    let mut seen = std::collections::BTreeSet::new();
    for case in 0..300 {
        let n = rng.gen_range(1..=5);
        let mut specs = Vec::new();
        let mut wanted = std::collections::BTreeSet::new();
        match case % 10 {
            // Nothing satisfiable: 416.
            0 => {
                for _ in 0..n {
                    let a = rng.gen_range(size..size + 500);
                    specs.push(format!("{a}-{}", a + 10));
                }
            }
            // More disjoint pieces than max_ranges (16): the node may answer 200.
            1 => {
                for i in 0..20u64 {
                    specs.push(format!("{}-{}", i * 100, i * 100));
                    wanted.insert(i * 100);
                }
            }
            _ => {}
        }
        for _ in 0..(if case % 10 < 2 { 0 } else { n }) {
            match rng.gen_range(0..4) {
                0 => {
                    let a = rng.gen_range(0..size + 50);
                    let b = a + rng.gen_range(0..3000);
                    specs.push(format!("{a}-{b}"));
                    if a < size {
                        wanted.extend(a..=b.min(size - 1));
                    }
                }
                1 => {
                    let k = rng.gen_range(1..3000u64);
                    specs.push(format!("-{k}"));
                    wanted.extend(size.saturating_sub(k)..size);
                }
                2 => {
                    let a = rng.gen_range(0..size + 50);
                    specs.push(format!("{a}-"));
                    if a < size {
                        wanted.extend(a..size);
                    }
                }
                _ => {
                    let a = rng.gen_range(0..size);
                    specs.push(format!("{a}-{a}"));
                    wanted.insert(a);
                }
            }
        }
        let header = format!("bytes={}", specs.join(","));
        let resp = get_range(&c, &url, &header).await;
        let status = resp.status();
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let content_range = resp
            .headers()
            .get("content-range")
            .map(|v| v.to_str().unwrap().to_string());
        let body = resp.bytes().await.unwrap().to_vec();
        let mut served = std::collections::BTreeSet::new();
        seen.insert(status.as_u16());
        match status {
            StatusCode::OK => {
                assert!(
                    body == data,
                    "case {case} {header}: 200 with the whole object"
                );
                served.extend(0..size);
            }
            StatusCode::PARTIAL_CONTENT => {
                let parts = match ctype.strip_prefix("multipart/byteranges; boundary=") {
                    Some(boundary) => parse_multipart(&body, boundary),
                    None => vec![(content_range.expect("content-range"), body)],
                };
                for (cr, bytes) in parts {
                    let spec = cr.strip_prefix("bytes ").unwrap();
                    let (span, total) = spec.split_once('/').unwrap();
                    assert_eq!(total, size.to_string());
                    let (a, b) = span.split_once('-').unwrap();
                    let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
                    assert!(bytes == slice(a, b), "case {case} {header}: part {cr}");
                    served.extend(a..=b);
                }
                assert_eq!(
                    served, wanted,
                    "case {case} {header}: exactly what was asked"
                );
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                assert!(
                    wanted.is_empty(),
                    "case {case} {header}: 416 for satisfiable"
                );
            }
            other => panic!("case {case} {header}: {other}"),
        }
        if status == StatusCode::OK {
            // Full answers are allowed (e.g. too many pieces after coalescing), but only for
            // requests that asked for something.
            assert!(
                !wanted.is_empty(),
                "case {case} {header}: 200 for unsatisfiable"
            );
        }
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        [200, 206, 416],
        "every kind of answer was exercised"
    );
}

/// HEAD refusals carry no body on HTTP/2 either (a DATA frame on a HEAD is a stream error to
/// curl and hyper alike).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_refusals_over_http2_have_no_body() {
    let node = start().await;
    let comp = node.publish(pattern(3000, 4), "fw", "1").await.id;
    let m = node
        .mint_with(serde_json::json!({"component": comp, "ttl_secs": 60}))
        .await;
    let c = client(&node.cert());
    let forged = format!(
        "{}/d/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        node.handle.public_url
    );
    let r = c.head(&forged).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 403);
    assert!(r.bytes().await.unwrap().is_empty());
    assert_eq!(
        c.get(&m.url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .len(),
        3000
    );
    state_becomes(&node, &m.id, "completed").await;
    let r = c.head(&m.url).send().await.unwrap();
    assert_eq!(r.status(), 410);
    assert!(r.bytes().await.unwrap().is_empty());
    let r = c.post(&m.url).send().await.unwrap();
    assert_eq!(r.status(), 405);
}
