//! Connection behaviour over real sockets: slowloris and idle timeouts (HTTP/2's counted in
//! requests, since its PINGs keep bytes moving), slow-but-steady readers never cut off, the
//! connection cap, graceful shutdown on SIGTERM, and flat memory while streaming a 1 GiB
//! component (the real binary, measured from /proc).

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn tls_connect(
    node_cert: &std::path::Path,
    addr: std::net::SocketAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut config = scomo_ads::net::tls::client_config_trusting(node_cert).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
}

/// Reads until EOF or error; true if the peer closed within `secs`.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(s: &mut S, secs: u64) -> bool {
    let mut buf = [0u8; 4096];
    let res = tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    res.is_ok()
}

/// Sends a request head that never finishes; the node (head timeout 1 s) must close the
/// connection after about a second.
async fn unfinished_head_is_cut_after_a_second<S>(s: &mut S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(b"GET /d/x HTTP/1.1\r\nhost: a\r\n")
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    assert!(closed_within(s, 5).await, "slowloris connection kept open");
    assert!(t0.elapsed() >= Duration::from_millis(800));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_header_and_idle_keepalive_are_cut() {
    let node = start_with(|c| {
        c.header_read_timeout_secs = 1;
        c.idle_timeout_secs = 30;
    })
    .await;
    // A request head that never finishes.
    let mut s = tls_connect(&node.cert(), node.handle.download_addr)
        .await
        .unwrap();
    unfinished_head_is_cut_after_a_second(&mut s).await;
    // A handshake and then silence: parked, but only for the head timeout (1 s), not the idle
    // timeout (30 s): idle TLS connections must not fill the connection cap.
    let mut s = tls_connect(&node.cert(), node.handle.download_addr)
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    assert!(
        parked_becomes(&node, 1).await,
        "a connection with no request was not parked"
    );
    assert!(
        closed_within(&mut s, 5).await,
        "a silent connection held its slot"
    );
    assert!(t0.elapsed() >= Duration::from_millis(800));
    assert!(parked_becomes(&node, 0).await);
    // The same over HTTP/2 (ALPN h2, then not even the preface): closed at the head timeout.
    let mut config = scomo_ads::net::tls::client_config_trusting(&node.cert()).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(node.handle.download_addr)
        .await
        .unwrap();
    let mut h2 = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    assert!(
        closed_within(&mut h2, 6).await,
        "a silent HTTP/2 connection held its slot"
    );
    assert!(t0.elapsed() >= Duration::from_millis(800));
    let node = start_with(|c| {
        c.header_read_timeout_secs = 30;
        c.idle_timeout_secs = 2;
    })
    .await;
    // A keep-alive connection that goes quiet after one request.
    let mut s = tls_connect(&node.cert(), node.handle.download_addr)
        .await
        .unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(std::str::from_utf8(&buf[..n])
        .unwrap()
        .starts_with("HTTP/1.1 404"));
    let t0 = std::time::Instant::now();
    assert!(closed_within(&mut s, 6).await, "idle connection kept open");
    assert!(t0.elapsed() >= Duration::from_millis(1500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_that_keeps_progressing_is_never_cut_off() {
    // Idle timeout 1 s, but the download takes several seconds: progress resets the clock.
    let node = start_with(|c| {
        c.idle_timeout_secs = 1;
        c.chunk_bytes = 16 * 1024;
    })
    .await;
    let data = pattern(2 << 20, 5);
    let meta = node.publish(data.clone(), "slow", "1").await;
    let url = node.mint(&meta.id, 600).await.url;
    let path = path_of(&url);
    let mut s = tls_connect(&node.cert(), node.handle.download_addr)
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let t0 = std::time::Instant::now();
    loop {
        // 16 KiB every 25 ms: each pause far inside the 1 s idle timeout, the whole download
        // several times longer than it.
        match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => panic!("slow reader was cut off after {} bytes: {e}", raw.len()),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        t0.elapsed() > Duration::from_secs(3),
        "download was not slow enough to prove anything"
    );
    let body_start = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let got = raw[body_start..].to_vec();
    assert!(got == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_is_dropped() {
    let node = start_with(|c| c.idle_timeout_secs = 1).await;
    let meta = node.publish(pattern(32 << 20, 1), "big", "1").await;
    let url = node.mint(&meta.id, 600).await.url;
    let path = path_of(&url);
    let mut s = tls_connect(&node.cert(), node.handle.download_addr)
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: a\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    assert!(s.read(&mut buf).await.unwrap() > 0);
    // Stop reading; the server's send buffer fills and it must give up within the timeout.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        closed_within(&mut s, 30).await,
        "stalled reader kept forever"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_a_slot() {
    let node = start_with(|c| c.max_connections = 2).await;
    let addr = node.handle.download_addr;
    let a = tls_connect(&node.cert(), addr).await.unwrap();
    let _b = tls_connect(&node.cert(), addr).await.unwrap();
    let third =
        tokio::time::timeout(Duration::from_millis(700), tls_connect(&node.cert(), addr)).await;
    assert!(
        third.is_err(),
        "a third connection was served beyond the cap"
    );
    drop(a);
    let third = tokio::time::timeout(Duration::from_secs(5), tls_connect(&node.cert(), addr)).await;
    assert!(matches!(third, Ok(Ok(_))), "slot was not released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_and_1_3_only_and_plain_http_refused_on_the_tls_port() {
    let node = start().await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(node.cert()).unwrap();
        for c in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
            roots.add(c.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(node.handle.download_addr)
            .await
            .unwrap();
        let s = connector
            .connect("localhost".try_into().unwrap(), tcp)
            .await;
        assert!(s.is_ok(), "{version:?} refused");
    }
    // Plain HTTP on the TLS port: no HTTP response comes back.
    let mut tcp = tokio::net::TcpStream::connect(node.handle.download_addr)
        .await
        .unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    assert!(
        !buf.starts_with(b"HTTP/"),
        "plain HTTP answered on the TLS port"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_responses_then_exits() {
    let home = tempfile::tempdir().unwrap();
    let mut p = Proc::spawn(home.path(), &[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.bin");
    let data = pattern(24 << 20, 4);
    std::fs::write(&file, &data).unwrap();
    let admin = p.admin_client();
    let meta = admin.publish(&file, "c", "1", |_, _| {}).await.unwrap();
    let url = admin.mint(&meta.id, 600, None).await.unwrap().url;
    let c = client_h1(&p.cert());
    let resp = c.get(&url).send().await.unwrap();
    let mut stream = resp.bytes_stream();
    let mut got = Vec::new();
    got.extend_from_slice(&stream.next().await.unwrap().unwrap());
    let kill = Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    // New connections are refused soon after the signal...
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(&p.download).await.is_err(),
        "still accepting"
    );
    // ...while the in-flight response finishes byte for byte.
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.expect("in-flight response cut by shutdown"));
    }
    assert!(got == data);
    let exited = wait_until(10, || matches!(p.child.try_wait(), Ok(Some(_)))).await;
    assert!(exited, "process did not exit after draining");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_gib_sparse_component_streams_with_flat_memory() {
    let home = tempfile::tempdir().unwrap();
    let p = Proc::spawn(home.path(), &["--cache-mb", "16"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sparse.bin");
    let size: u64 = 1 << 30;
    {
        let f = std::fs::File::create(&file).unwrap();
        f.set_len(size).unwrap(); // sparse: a hole reading as zeros
    }
    let admin = p.admin_client();
    let meta = admin.publish(&file, "big", "1", |_, _| {}).await.unwrap();
    assert_eq!(meta.size, size);
    let after_upload = p.peak_rss_kib();
    let url = admin.mint(&meta.id, 600, None).await.unwrap().url;
    let resp = client(&p.cert()).get(&url).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let mut stream = resp.bytes_stream();
    let mut hasher = blake3::Hasher::new();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        n += chunk.len() as u64;
        hasher.update(&chunk);
    }
    assert_eq!(n, size);
    assert_eq!(hasher.finalize().to_hex().as_str(), meta.blake3);
    let peak = p.peak_rss_kib();
    eprintln!("peak RSS after upload {after_upload} KiB, after download {peak} KiB");
    // 16 MiB cache budget + runtime + TLS buffers: far below the object's 1 GiB.
    assert!(peak < 160 * 1024, "peak RSS {peak} KiB for a 1 GiB object");
}

/// The path part of a download URL (`/d/...`).
fn path_of(url: &str) -> String {
    let after_host = url.split_once("127.0.0.1").unwrap().1;
    after_host[after_host.find('/').unwrap()..].to_string()
}

/// Reads one HTTP/1.1 response with a Content-Length body; returns (head, body).
async fn read_response<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> (String, Vec<u8>) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(raw[..end].to_vec()).unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            while raw.len() < end + 4 + len {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed mid-body");
                raw.extend_from_slice(&buf[..n]);
            }
            let body = raw[end + 4..end + 4 + len].to_vec();
            raw.drain(..end + 4 + len);
            assert!(raw.is_empty(), "bytes beyond one response");
            return (head, body);
        }
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before a response");
        raw.extend_from_slice(&buf[..n]);
    }
}

const PARKED: &str = "scomo_ads_parked_connections{listener=\"download\"}";

/// Polls the parked-connections gauge until it reads `want`; false if it never does in 5 s.
async fn parked_becomes(node: &Node, want: u64) -> bool {
    metric_becomes(node, PARKED, want).await
}

/// Polls a metric until it reads `want`; false if it never does in 5 s.
async fn metric_becomes(node: &Node, name: &str, want: u64) -> bool {
    for _ in 0..50 {
        if node.metric(name).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_keep_alive_connection_is_parked_and_serves_what_comes_next() {
    let node = start().await;
    let data = pattern(1024, 11);
    let meta = node.publish(data.clone(), "small", "1").await;
    let path = path_of(&node.mint(&meta.id, 600).await.url);
    let get = format!("GET {path} HTTP/1.1\r\nhost: a\r\n\r\n");
    let mut s = tls_connect(&node.cert(), node.handle.download_addr)
        .await
        .unwrap();
    s.write_all(get.as_bytes()).await.unwrap();
    let (head, body) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body == data);
    assert!(
        parked_becomes(&node, 1).await,
        "quiet connection never parked"
    );

    // A request whose head arrives in two pieces wakes it: the first piece starts a fresh
    // HTTP connection, the second completes the head.
    let (first, second) = get.split_at(10);
    s.write_all(first.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(second.as_bytes()).await.unwrap();
    let (head, body) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("connection: close"));
    assert!(body == data);
    assert!(parked_becomes(&node, 1).await, "not parked again");

    // Two pipelined requests in one write: both answered, in order, on the same connection.
    let range = format!("GET {path} HTTP/1.1\r\nhost: a\r\nrange: bytes=0-9\r\n\r\n");
    s.write_all(format!("{range}{get}").as_bytes())
        .await
        .unwrap();
    let mut both = Vec::new();
    let read_both = async {
        // The 200's body, the whole object, is the last thing on the wire.
        while !both.ends_with(&data) {
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed while pipelining");
            both.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read_both)
        .await
        .expect("pipelined responses");
    let text = String::from_utf8_lossy(&both);
    let first_status = text.find("HTTP/1.1 206").expect("no 206");
    let second_status = text.find("HTTP/1.1 200").expect("no 200");
    assert!(first_status < second_status);
    assert!(both.ends_with(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sent_a_body_is_never_parked() {
    let node = start().await;
    let mut s = tls_connect(&node.cert(), node.handle.download_addr)
        .await
        .unwrap();
    // hyper may still be draining a request body when the response is done; such a
    // connection stays with hyper rather than risk reading the rest as a new request.
    s.write_all(b"POST /healthz HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello")
        .await
        .unwrap();
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 4"), "{head}");
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(node.metric(PARKED).await, 0, "parked after a body");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_parked_connections_without_waiting_for_the_grace_period() {
    let node = start_with(|c| c.shutdown_grace_secs = 30).await;
    let mut s = tls_connect(&node.cert(), node.handle.download_addr)
        .await
        .unwrap();
    assert!(parked_becomes(&node, 1).await);
    node.shutdown.cancel();
    assert!(
        closed_within(&mut s, 5).await,
        "a parked connection held shutdown up"
    );
}

type H2Sender = hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>;

/// An HTTP/2 connection over TLS through hyper's client, which answers the node's keep-alive
/// PINGs as any HTTP/2 client does. The task ends when the node closes the connection.
async fn h2_connect(node: &Node) -> (H2Sender, tokio::task::JoinHandle<hyper::Result<()>>) {
    let mut config = scomo_ads::net::tls::client_config_trusting(&node.cert()).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(node.handle.download_addr)
        .await
        .unwrap();
    let tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    (send, tokio::spawn(conn))
}

fn h2_get(path: &str) -> http::Request<http_body_util::Empty<bytes::Bytes>> {
    http::Request::get(format!("https://localhost{path}"))
        .body(http_body_util::Empty::new())
        .unwrap()
}

/// One request on an HTTP/2 connection to a node whose idle timeout is 2 s, then nothing: the
/// node must close the connection after about the idle timeout.
async fn one_request_then_closed_as_idle(
    send: &mut H2Sender,
    conn: tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let resp = send.send_request(h2_get("/healthz")).await.unwrap();
    assert_eq!(resp.status(), 404);
    let t0 = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(
        ended.is_ok(),
        "an HTTP/2 connection with no request for 10 s (idle timeout 2 s) is still open"
    );
    assert!(t0.elapsed() >= Duration::from_millis(1500));
}

/// Bytes keep moving on an idle HTTP/2 connection (the node's PINGs and the client's
/// answers), so the byte-level idle timeout alone would hold it open for as long as the client
/// lives. With no request started for the idle timeout, the node sends GOAWAY and closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_though_it_answers_pings() {
    let node = start_with(|c| c.idle_timeout_secs = 2).await;
    let (mut send, conn) = h2_connect(&node).await;
    one_request_then_closed_as_idle(&mut send, conn).await;
}

/// The idle close of an HTTP/2 connection counts requests, not bytes: a connection asking
/// every 700 ms is never closed, and a stream still sending when the idle time runs out
/// finishes (GOAWAY stops new streams only) before the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_in_use_is_not_closed_and_its_last_stream_finishes() {
    let node = start_with(|c| {
        c.idle_timeout_secs = 2;
        c.chunk_bytes = 64 * 1024;
    })
    .await;
    let data = pattern(4 << 20, 9);
    let meta = node.publish(data.clone(), "h2slow", "1").await;
    let path = path_of(&node.mint(&meta.id, 600).await.url);
    let (mut send, conn) = h2_connect(&node).await;
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        let resp = send.send_request(h2_get("/healthz")).await.unwrap();
        assert_eq!(resp.status(), 404);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert!(!conn.is_finished(), "a connection in use was closed");
    // One slow download: 64 KiB every 100 ms, about 6.4 s, three times the idle timeout.
    let resp = send.send_request(h2_get(&path)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = Vec::new();
    let mut refused_mid_stream = false;
    let t0 = std::time::Instant::now();
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        let frame = frame.unwrap_or_else(|e| panic!("cut after {} bytes: {e}", got.len()));
        if let Some(chunk) = frame.data_ref() {
            got.extend_from_slice(chunk);
            if got.len() % (64 * 1024) < chunk.len() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // Past the idle time the node has said GOAWAY: a new stream is refused while this
        // one goes on.
        if !refused_mid_stream && t0.elapsed() > Duration::from_secs(4) && got.len() < data.len() {
            let next = send.send_request(h2_get("/healthz")).await;
            assert!(
                next.is_err(),
                "a new stream was accepted after the idle time"
            );
            refused_mid_stream = true;
        }
    }
    assert!(refused_mid_stream, "the download was not slow enough");
    assert!(got == data, "the slow stream's body differs");
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(
        ended.is_ok(),
        "the idle connection stayed open after its last stream"
    );
}

const QUIET_H2: &str = "scomo_ads_quiet_http2_connections{listener=\"download\"}";

/// A quiet HTTP/2 connection keeps h2's state but frees the TLS stream's buffers; it still
/// serves what comes next, and goes quiet again after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_http2_connection_frees_its_tls_buffers_and_still_serves() {
    let node = start_with(|c| c.idle_timeout_secs = 3).await;
    let (mut send, conn) = h2_connect(&node).await;
    for round in 0..3 {
        let resp = send.send_request(h2_get("/healthz")).await.unwrap();
        assert_eq!(resp.status(), 404, "round {round}");
        assert!(
            metric_becomes(&node, QUIET_H2, 1).await,
            "round {round}: the quiet HTTP/2 connection kept its TLS buffers"
        );
    }
    // The GOAWAY at the idle timeout ends it, and the gauge with it.
    assert!(tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .is_ok());
    assert!(metric_becomes(&node, QUIET_H2, 0).await);
}

/// Plain HTTP/2 (prior knowledge, on the plain-HTTP listener) has no request-counting idle
/// rule: the node sends it no PINGs, so an idle one goes quiet and the byte rule closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_plain_http2_connection_is_closed() {
    let node = start_with(|c| c.idle_timeout_secs = 2).await;
    let tcp = tokio::net::TcpStream::connect(node.handle.http_addr.unwrap())
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    one_request_then_closed_as_idle(&mut send, tokio::spawn(conn)).await;
}

/// With the connection cap nearly full, keep-alive connections idle for longer than the head
/// timeout are closed to make room (load shedding); under no pressure they live the idle
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nearly_full_listener_sheds_its_long_idle_connections() {
    let node = start_with(|c| {
        c.max_connections = 10;
        c.header_read_timeout_secs = 1;
        c.idle_timeout_secs = 60;
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..5 {
        let mut s = tls_connect(&node.cert(), node.handle.download_addr)
            .await
            .unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        assert!(s.read(&mut buf).await.unwrap() > 0);
        idle.push(s);
    }
    assert!(parked_becomes(&node, 5).await);
    // Idle past the head timeout, but far from the idle timeout: nothing happens by itself.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(parked_becomes(&node, 5).await, "closed without pressure");
    // Four more connections take the listener to 9 of 10: pressure.
    let mut fresh = Vec::new();
    for _ in 0..4 {
        fresh.push(
            tls_connect(&node.cert(), node.handle.download_addr)
                .await
                .unwrap(),
        );
    }
    for s in &mut idle {
        assert!(
            closed_within(s, 5).await,
            "a long-idle connection was not shed"
        );
    }
    assert!(node.metric("scomo_ads_connections_shed_total").await >= 5);
    // The fresh connections are served.
    for s in &mut fresh {
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(std::str::from_utf8(&buf[..n])
            .unwrap()
            .starts_with("HTTP/1.1 404"));
    }
}
