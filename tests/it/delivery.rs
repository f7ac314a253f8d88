//! "Delivered" means the device has the bytes: a one-time ticket completes when the device's
//! TCP stack has acknowledged its last byte, not when the bytes reached the node's kernel.
//! A slow reader behind a large send buffer stops at 40 %: the ticket must not complete, the
//! callback must not fire, and the device's resume must get the missing tail and complete it.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The object: large enough that 60 % of it exceeds what the reader's small receive window
/// can hold, small enough that the node's send buffer holds all of that 60 %.
const SIZE: usize = 512 << 10;
/// What the reader's kernel may buffer (and so acknowledge) beyond what it read.
const READER_RCVBUF: usize = 16 << 10;

/// A TCP connection to `addr` with a small receive buffer, set before connecting so the window
/// the reader advertises stays small.
async fn small_window_connect(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(READER_RCVBUF).unwrap();
    socket.set_nonblocking(true).unwrap();
    let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
    socket.connect(addr).await.unwrap()
}

fn path_of(url: &str) -> String {
    let after_scheme = url.split_once("://").unwrap().1;
    after_scheme[after_scheme.find('/').unwrap()..].to_string()
}

/// Sends a GET for `path` and reads the head and then `want` body bytes; returns the body read.
async fn read_part<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    path: &str,
    want: usize,
) -> Vec<u8> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: device\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 8192];
    let head_len = loop {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before the head");
        got.extend_from_slice(&buf[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    let mut body = got.split_off(head_len);
    while body.len() < want {
        let n = s
            .read(&mut buf[..(want - body.len()).min(8192)])
            .await
            .unwrap();
        assert!(n > 0, "connection closed early");
        body.extend_from_slice(&buf[..n]);
    }
    body
}

/// The scenario over `stream`: read 40 %, stall, check, hang up, resume, check.
async fn stall_then_resume<S: AsyncRead + AsyncWrite + Unpin>(
    node: &Node,
    rx: &Receiver,
    stream: S,
    id: &str,
    url: &str,
    data: &[u8],
) {
    let mut s = stream;
    let part = read_part(&mut s, &path_of(url), SIZE * 4 / 10).await;
    assert!(part[..] == data[..part.len()]);
    // The node has long handed the rest to its kernel; the reader has not taken it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t = node.ticket(id).await;
    assert_eq!(
        t["state"], "downloading",
        "completed before the device had the bytes: {t}"
    );
    assert!(
        rx.all().is_empty(),
        "the DMS was told before the device had the bytes"
    );
    // The link drops.
    drop(s);
    let t = node.settled(id).await;
    assert_eq!(t["state"], "downloading", "{t}");
    let credited: u64 = t["coverage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[1].as_u64().unwrap() - r[0].as_u64().unwrap())
        .sum();
    assert!(
        credited <= (part.len() + READER_RCVBUF + 64 * 1024) as u64,
        "credited {credited} bytes, the reader held at most {} + its window",
        part.len()
    );
    // `curl -C -`: the device resumes from what it has; the missing tail is served (206, not
    // 410) and completes the ticket.
    let resume = client(&node.cert())
        .get(url)
        .header("range", format!("bytes={}-", part.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(resume.status(), 206);
    let tail = resume.bytes().await.unwrap();
    assert!([&part[..], &tail[..]].concat() == data);
    let read_all_at = std::time::SystemTime::now();
    let t = state_becomes(node, id, "completed").await;
    let got = rx.wait_for(1, 15).await;
    assert_eq!(got.len(), 1);
    let event = got[0].json();
    assert_eq!(event["event"], "download.completed");
    // `completed_at` follows the device's acknowledgement of the last byte, which comes
    // after the resume began (whole milliseconds, so allow the rounding).
    let completed_at = humantime::parse_rfc3339(event["completed_at"].as_str().unwrap()).unwrap();
    assert!(
        completed_at + Duration::from_secs(2) >= read_all_at,
        "completed_at {:?} long before the device had the tail",
        event["completed_at"]
    );
    assert_eq!(t["deliveries"], 1);
}

async fn setup() -> (Node, Receiver, Vec<u8>, scomo_ads::ads::tickets::Minted) {
    // A send buffer large enough for the 60 % the reader leaves.
    let node = start_with(|c| c.send_buffer_bytes = 4 << 20).await;
    let rx = Receiver::start().await;
    let data = pattern(SIZE, 41);
    let comp = node.publish(data.clone(), "fw", "1").await.id;
    let m = node
        .mint_with(json!({"component": comp, "ttl_secs": 600, "callback_url": rx.url}))
        .await;
    (node, rx, data, m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_over_tls_completes_only_once_it_has_every_byte() {
    let (node, rx, data, m) = setup().await;
    let mut config = scomo_ads::net::tls::client_config_trusting(&node.cert()).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = small_window_connect(node.handle.download_addr).await;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    stall_then_resume(&node, &rx, tls, &m.id, &m.url, &data).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_over_plain_http_completes_only_once_it_has_every_byte() {
    let (node, rx, data, m) = setup().await;
    let tcp = small_window_connect(node.handle.http_addr.unwrap()).await;
    stall_then_resume(&node, &rx, tcp, &m.id, &m.url, &data).await;
}
