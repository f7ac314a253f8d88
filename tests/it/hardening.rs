//! Abuse limits over real sockets: per-IP connection caps, per-IP request rates (429 with
//! Retry-After) on the admin API and `/dm`, failed-auth backoff on both, legacy TLS versions
//! refused at the handshake, certificate reload on SIGHUP, and mutual TLS for the admin API.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;
use scomo_ads::config::EndpointLimits;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn retry_after(r: &reqwest::Response) -> u64 {
    r.headers()
        .get("retry-after")
        .expect("429 carries Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_answers_429_with_retry_after_over_the_request_rate() {
    let node = start_with(|c| {
        c.admin_limits = EndpointLimits {
            requests_per_sec: 2,
            burst: 5,
            ..EndpointLimits::default()
        }
    })
    .await;
    let http = client(&node.cert());
    let mut codes = Vec::new();
    let mut waits = Vec::new();
    for _ in 0..12 {
        let r = node.admin_get("/v1/components", node.token()).await;
        if r.status() == 429 {
            waits.push(retry_after(&r));
        }
        codes.push(r.status().as_u16());
    }
    assert_eq!(&codes[..5], &[200; 5], "the burst passes: {codes:?}");
    assert!(codes[5..].contains(&429), "{codes:?}");
    assert!(waits.iter().all(|w| (1..=2).contains(w)), "{waits:?}");
    assert_eq!(
        node.metric("scomo_ads_admin_rate_limited_total").await,
        waits.len() as u64,
        "every 429 counted"
    );
    // Health checks are not rate limited (load balancers poll them).
    for _ in 0..10 {
        let r = http.get(node.admin("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // The budget refills.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = node.admin_get("/v1/components", node.token()).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_admin_tokens_start_a_backoff_that_even_the_right_token_waits_out() {
    let node = start_with(|c| {
        c.admin_limits = EndpointLimits {
            auth_free_failures: 2,
            auth_backoff_base_ms: 1500,
            ..EndpointLimits::default()
        }
    })
    .await;
    let http = client(&node.cert());
    let get = |token: &'static str| {
        http.get(node.admin("/v1/components"))
            .bearer_auth(token)
            .send()
    };
    for _ in 0..3 {
        assert_eq!(get("guess").await.unwrap().status(), 401);
    }
    // The third failure started a 1.5 s backoff: the real token is not even looked at.
    let r = node.admin_get("/v1/components", node.token()).await;
    assert_eq!(r.status(), 429);
    assert!(
        (1..=2).contains(&retry_after(&r)),
        "the 1.5 s backoff, rounded up"
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let r = node.admin_get("/v1/components", node.token()).await;
    assert_eq!(r.status(), 200, "after the backoff the right token works");
    assert_eq!(
        node.metric("scomo_ads_admin_bad_credentials_total").await,
        3
    );
    assert_eq!(node.metric("scomo_ads_admin_auth_backoff_total").await, 1);
    // Success forgets the failures: two more guesses are free again.
    for _ in 0..2 {
        assert_eq!(get("guess").await.unwrap().status(), 401);
    }
}

/// Whether the server closes a fresh TCP connection from `local` within a second (a refused
/// one) instead of waiting for our ClientHello (an accepted one).
async fn closed_at_accept(to: SocketAddr, local: [u8; 4]) -> (bool, TcpStream) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((local, 0))).unwrap();
    let mut s = socket.connect(to).await.unwrap();
    let mut buf = [0u8; 16];
    let closed = matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    );
    (closed, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_ip_cannot_hold_more_than_its_share_of_connections() {
    let node = start_with(|c| c.max_connections_per_ip = 3).await;
    let to = node.handle.download_addr;
    let mut held = Vec::new();
    for _ in 0..3 {
        let (closed, s) = closed_at_accept(to, [127, 0, 0, 1]).await;
        assert!(!closed, "within the share");
        held.push(s);
    }
    let (closed, _) = closed_at_accept(to, [127, 0, 0, 1]).await;
    assert!(closed, "the fourth connection from the same IP is closed");
    // Another client address is unaffected.
    let (closed, _other) = closed_at_accept(to, [127, 0, 0, 2]).await;
    assert!(!closed, "127.0.0.2 has its own share");
    assert_eq!(
        node.metric("scomo_ads_connections_refused_per_ip_total")
            .await,
        1
    );
    // Closing one frees its slot.
    drop(held.pop());
    let mut ok = false;
    for _ in 0..20 {
        let (closed, s) = closed_at_accept(to, [127, 0, 0, 1]).await;
        if !closed {
            ok = true;
            held.push(s);
            break;
        }
    }
    assert!(ok, "a freed slot is reusable");
    // Real downloads still work from the other address space once slots are free.
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let meta = node.publish(pattern(1000, 3), "fw", "1").await;
    let url = node.mint(&meta.id, 60).await.url;
    let r = client(&node.cert()).get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// A ClientHello offering only `version` (no supported_versions extension), as a TLS 1.0 or
/// 1.1 client sends it; with `modern` extensions and AEAD suites, a valid TLS 1.2 hello.
fn client_hello(minor: u8, modern: bool) -> Vec<u8> {
    let mut body = vec![3, minor];
    body.extend([0x42u8; 32]); // random
    body.push(0); // no session id
    let suites: &[u16] = if modern {
        &[0xc02b, 0xc02f, 0xcca9, 0xcca8]
    } else {
        &[0xc013, 0xc014, 0x002f, 0x0035, 0x000a]
    };
    body.extend(((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend(s.to_be_bytes());
    }
    body.extend([1, 0]); // compression: null
    let mut ext = Vec::new();
    let mut add = |kind: u16, data: &[u8]| {
        ext.extend(kind.to_be_bytes());
        ext.extend((data.len() as u16).to_be_bytes());
        ext.extend(data);
    };
    // supported_groups: x25519, secp256r1
    add(0x000a, &[0, 4, 0x00, 0x1d, 0x00, 0x17]);
    // ec_point_formats: uncompressed
    add(0x000b, &[1, 0]);
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256
    add(0x000d, &[0, 6, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01]);
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut hs = vec![1];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut record = vec![0x16, 3, 1];
    record.extend((hs.len() as u16).to_be_bytes());
    record.extend(hs);
    record
}

/// The first record type the server answers `hello` with (0x16 handshake, 0x15 alert), or
/// `None` if it just closes.
async fn first_record(to: SocketAddr, hello: &[u8]) -> Option<(u8, Vec<u8>)> {
    let mut s = TcpStream::connect(to).await.unwrap();
    s.write_all(hello).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("the server answers or closes")
        .unwrap_or(0);
    (n > 0).then(|| (buf[0], buf[..n].to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_0_and_1_1_are_refused_at_the_handshake_on_every_tls_listener() {
    let node = start().await;
    for to in [node.handle.download_addr, node.handle.admin_addr] {
        // Control: the same hand-made hello at TLS 1.2 gets a ServerHello, so the refusals
        // below are about the version, not a malformed probe.
        let (kind, bytes) = first_record(to, &client_hello(3, true)).await.unwrap();
        assert_eq!(kind, 0x16, "TLS 1.2 gets a handshake record");
        assert_eq!(bytes[5], 2, "ServerHello");
        for minor in [1u8, 2] {
            for modern in [false, true] {
                let (kind, bytes) = first_record(to, &client_hello(minor, modern))
                    .await
                    .expect("an alert, not a silent close");
                // A fatal (2) protocol_version (70) alert.
                assert_eq!(
                    (kind, bytes[5], bytes[6]),
                    (0x15, 2, 70),
                    "TLS 1.{} modern={modern}",
                    minor - 1
                );
            }
        }
    }
}

fn wrong_password_alert(
    client: &reqwest::Client,
    dms: &Dms,
    device: &str,
    session: u32,
) -> reqwest::RequestBuilder {
    use scomo_ads::syncml::message::{Alert, Command, Cred, Header, Location, Message, Meta};
    let msg = Message {
        header: Header {
            session_id: session.to_string(),
            msg_id: 1,
            target: Location::uri(&dms.handle.dm_url),
            source: Location::uri(device),
            cred: Some(Cred {
                meta: Meta {
                    type_: Some("syncml:auth-md5".into()),
                    format: Some("b64".into()),
                    ..Meta::default()
                },
                data: scomo_ads::syncml::auth::md5_digest(device, "guess", b"nonce"),
            }),
            ..Default::default()
        },
        commands: vec![Command::Alert(Alert {
            cmd_id: 1,
            code: 1201,
            ..Default::default()
        })],
        final_: true,
    };
    client
        .post(&dms.handle.dm_url)
        .header("content-type", scomo_ads::syncml::CONTENT_TYPE)
        .body(scomo_ads::syncml::codec::encode(&msg))
}

/// Guesses count toward the address they come from (issue 16, item 10): the guesser is held
/// back whichever device it names, and the real device, elsewhere, is not held back at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guessing_on_dm_backs_off_the_guessing_address_not_the_device() {
    let dms = start_dms_with(|c| {
        c.dm_limits = EndpointLimits {
            requests_per_sec: 0,
            auth_free_failures: 2,
            auth_backoff_base_ms: 1500,
            ..EndpointLimits::default()
        }
    })
    .await;
    dms.provision("IMEI:7001", "dev-secret", None).await;
    dms.provision("IMEI:7002", "dev-secret", None).await;
    let guesser = client_from(&dms.handle.cert_path, "127.0.0.2".parse().unwrap());
    let mut statuses = Vec::new();
    for session in 1..=4 {
        let r = wrong_password_alert(&guesser, &dms, "IMEI:7001", session)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            assert!(
                (1..=2).contains(&retry_after(&r)),
                "the 1.5 s backoff, rounded up"
            );
        }
    }
    // Two free failures answered in SyncML (401 inside a 200), the third starts the backoff,
    // the fourth is refused before the engine looks at it.
    assert_eq!(statuses, [200, 200, 200, 429]);
    // Naming another device does not help the guesser: its address is backing off.
    let r = wrong_password_alert(&guesser, &dms, "IMEI:7002", 9)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    // The device's own address is not backing off: its messages reach the engine...
    let r = wrong_password_alert(&dms.client(), &dms, "IMEI:7001", 10)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "answered in SyncML, not refused with 429");
    // ...and the real device runs its session.
    let dir = tempfile::tempdir().unwrap();
    let cfg = device_config(&dms, "IMEI:7001", dir.path(), Default::default());
    let agent = scomo_ads::device::Agent::new(cfg).unwrap();
    agent
        .run(scomo_ads::device::agent::Trigger::Client {
            requests: Vec::new(),
        })
        .await
        .expect("the real device is not held back by guesses made elsewhere");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dm_over_its_request_rate_gets_429_and_the_device_agent_slows_down_to_finish() {
    let dms = start_dms_with(|c| {
        c.dm_limits = EndpointLimits {
            requests_per_sec: 1,
            burst: 1,
            ..EndpointLimits::default()
        }
    })
    .await;
    dms.add_component(
        &[
            ("name", "fw"),
            ("version", "2.0"),
            ("manufacturer", "Acme"),
            ("model", "Roadrunner"),
        ],
        pattern(2000, 5),
    )
    .await;
    dms.provision("IMEI:7003", "dev-secret", None).await;
    // Two messages at once from one address: the second waits.
    let a = wrong_password_alert(&dms.client(), &dms, "IMEI:7003", 1)
        .send()
        .await
        .unwrap();
    let b = wrong_password_alert(&dms.client(), &dms, "IMEI:7003", 2)
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), 200);
    assert_eq!(b.status(), 429);
    assert_eq!(retry_after(&b), 1);
    // A whole session (several messages) completes at one message per second.
    let dev = start_device(&dms, "IMEI:7003", Default::default()).await;
    dev.agent.request_component("fw", false).await.unwrap();
    let jobs = wait_jobs(&dms, "IMEI:7003", 1).await;
    let j = dms.wait_job(&jobs[0], 30).await;
    assert_eq!(j["state"], "succeeded", "{j:#}");
}

/// A self-signed certificate for 127.0.0.1 written to `dir/name.{cert,key}.pem`.
fn self_signed(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let c =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert = dir.join(format!("{name}.cert.pem"));
    let key = dir.join(format!("{name}.key.pem"));
    std::fs::write(&cert, c.cert.pem()).unwrap();
    std::fs::write(&key, c.key_pair.serialize_pem()).unwrap();
    (cert, key)
}

/// Replaces `to` with `from` atomically (as an operator's deploy tool would).
fn install(from: &std::path::Path, to: &std::path::Path) {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// A TLS connection to `addr` trusting only `ca`; `None` when the handshake fails.
async fn tls_to(
    addr: &str,
    ca: &std::path::Path,
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut config = scomo_ads::net::tls::client_config_trusting(ca).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    connector.connect(name, tcp).await.ok()
}

/// One HTTP/1.1 request on an open connection; the status line's code.
async fn status_on(s: &mut tokio_rustls::client::TlsStream<TcpStream>) -> u16 {
    s.write_all(b"GET /nothing-here HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed");
        got.extend_from_slice(&buf[..n]);
    }
    // Drain the (small) body so the next request starts clean.
    let head = String::from_utf8_lossy(&got).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let body_start = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut have = got.len() - body_start;
    while have < len {
        have += s.read(&mut buf).await.unwrap();
    }
    head[9..12].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_without_dropping_open_connections() {
    let home = tempfile::tempdir().unwrap();
    let (a_cert, a_key) = self_signed(home.path(), "a");
    let (b_cert, b_key) = self_signed(home.path(), "b");
    let (live_cert, live_key) = (home.path().join("live.cert"), home.path().join("live.key"));
    install(&a_cert, &live_cert);
    install(&a_key, &live_key);
    let data = home.path().join("data");
    let mut node = Proc::spawn(
        &data,
        &[
            "--tls-cert",
            live_cert.to_str().unwrap(),
            "--tls-key",
            live_key.to_str().unwrap(),
        ],
    );
    let mut old = tls_to(&node.download, &a_cert).await.expect("serves A");
    assert_eq!(status_on(&mut old).await, 404);
    assert!(tls_to(&node.download, &b_cert).await.is_none());

    install(&b_cert, &live_cert);
    install(&b_key, &live_key);
    let hup = |pid: u32| {
        std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
    };
    assert!(hup(node.child.id()).success());
    let mut switched = false;
    for _ in 0..50 {
        if tls_to(&node.download, &b_cert).await.is_some() {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(switched, "new handshakes present B after SIGHUP");
    assert!(
        tls_to(&node.download, &a_cert).await.is_none(),
        "A is retired"
    );
    assert!(
        tls_to(&node.admin, &b_cert).await.is_some(),
        "admin listener too"
    );
    // The connection opened under A is still up and serving.
    assert_eq!(status_on(&mut old).await, 404);

    // A broken file on reload keeps the current pair (and the process).
    std::fs::write(&live_cert, "not a certificate").unwrap();
    assert!(hup(node.child.id()).success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(node.child.try_wait().unwrap().is_none(), "still running");
    assert!(tls_to(&node.download, &b_cert).await.is_some(), "still B");
    let _ = node.child.kill();
}

/// A CA and a client certificate it issued, the client's cert and key in one PEM file.
fn client_ca(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client = CertificateParams::new(vec!["dms.example".into()])
        .unwrap()
        .signed_by(&client_key, &ca, &ca_key)
        .unwrap();
    let ca_path = dir.join(format!("{name}-ca.pem"));
    let identity = dir.join(format!("{name}-client.pem"));
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(
        &identity,
        format!("{}{}", client.pem(), client_key.serialize_pem()),
    )
    .unwrap();
    (ca_path, identity)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_can_require_client_certificates_from_the_dms() {
    let home = tempfile::tempdir().unwrap();
    let (ca, dms_identity) = client_ca(home.path(), "ours");
    let (_, stranger_identity) = client_ca(home.path(), "stranger");
    let node = start_with(|c| c.admin_client_ca = Some(ca.clone())).await;
    let with_identity = |pem: Option<&std::path::Path>| {
        let mut cfg = ads_node_config("edge", &node, 1);
        cfg.client_identity = pem.map(|p| p.to_path_buf());
        scomo_ads::dms::ads_client::AdsNode::new(&cfg).unwrap()
    };
    assert!(
        with_identity(Some(&dms_identity)).answers_health().await,
        "our DMS gets in"
    );
    assert!(
        !with_identity(None).answers_health().await,
        "no client certificate, no admin API"
    );
    assert!(
        !with_identity(Some(&stranger_identity))
            .answers_health()
            .await,
        "a certificate from another CA is refused"
    );
    // Even the right bearer token does not help without the certificate.
    let r = client(&node.cert())
        .get(node.admin("/v1/components"))
        .bearer_auth(node.token())
        .send()
        .await;
    assert!(r.is_err(), "{r:?}");
    // The operator's CLI presents the identity too (`--client-identity`), and fails without.
    let file = home.path().join("fw.bin");
    std::fs::write(&file, pattern(700, 8)).unwrap();
    let publish = |identity: Option<&std::path::Path>| {
        let mut cmd = std::process::Command::new(bin());
        cmd.arg("publish")
            .arg(&file)
            .args(["--name", "cli", "--version", "1"])
            .args(["--admin-url", &node.handle.admin_url])
            .arg("--data")
            .arg(node.dir.path())
            .env_remove("SCOMO_ADS_ADMIN_TOKEN")
            .env_remove("SCOMO_ADS_CLIENT_IDENTITY");
        if let Some(p) = identity {
            cmd.arg("--client-identity").arg(p);
        }
        cmd.output().unwrap()
    };
    let out = publish(Some(&dms_identity));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!publish(None).status.success());
    // Downloads stay open to devices without client certificates.
    let pem = std::fs::read(&dms_identity).unwrap();
    let admin = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(node.cert()).unwrap()).unwrap(),
        )
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let meta: serde_json::Value = admin
        .post(node.admin("/v1/components?name=fw&version=1"))
        .bearer_auth(node.token())
        .body(pattern(500, 9))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let minted: serde_json::Value = admin
        .post(node.admin("/v1/tickets"))
        .bearer_auth(node.token())
        .json(&serde_json::json!({"component": meta["id"], "ttl_secs": 60}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = client(&node.cert())
        .get(minted["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_get_431_and_the_cap_is_configurable() {
    let node = start().await;
    let meta = node.publish(pattern(1000, 5), "fw", "1").await;
    let minted = node
        .mint_with(json!({"component": meta.id, "max_deliveries": 100}))
        .await;
    let url = minted.url.clone();
    let h1 = client_h1(&node.cert());
    let get = |extra: Vec<(String, String)>, url: String| {
        let mut req = h1.get(url);
        for (k, v) in extra {
            req = req.header(k, v);
        }
        req.send()
    };
    // Within the default 8 KiB head: served.
    let r = get(vec![("x-pad".into(), "a".repeat(6000))], url.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // One big header, many headers, a long URL: refused before any ticket work.
    let r = get(vec![("x-pad".into(), "a".repeat(9000))], url.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    let many = (0..70).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let r = get(many, url.clone()).await.unwrap();
    assert_eq!(r.status(), 431);
    let long = format!("{url}?{}", "q".repeat(9000));
    let r = get(vec![], long).await.unwrap();
    assert!([414, 431].contains(&r.status().as_u16()), "{}", r.status());
    // Over HTTP/2 the same cap applies to the header list.
    let r = client(&node.cert())
        .get(&url)
        .header("x-pad", "a".repeat(9000))
        .send()
        .await;
    assert_eq!(r.unwrap().status(), 431, "h2 oversize header list");
    // The shared link counted only the one request that was served.
    let t = node.ticket(&minted.id).await;
    assert_eq!(t["requests"], 1, "{t}");

    let roomy = start_with(|c| c.max_request_head_bytes = 16 * 1024).await;
    let meta = roomy.publish(pattern(1000, 5), "fw", "1").await;
    let url = roomy
        .mint_with(json!({"component": meta.id, "max_deliveries": 100}))
        .await
        .url;
    let r = client_h1(&roomy.cert())
        .get(&url)
        .header("x-pad", "a".repeat(9000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a 16 KiB cap admits a 9 KiB header");
}

/// A TLS connection to `addr` that first sends `header` (a PROXY protocol header, as a load
/// balancer would); `None` when the node closes it instead of completing the handshake.
async fn tls_after_header(
    addr: std::net::SocketAddr,
    header: &[u8],
    ca: &std::path::Path,
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut config = scomo_ads::net::tls::client_config_trusting(ca).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(header).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    connector.connect(name, tcp).await.ok()
}

fn proxy_v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x20 | command);
    h.push(family);
    h.extend((addresses.len() as u16).to_be_bytes());
    h.extend(addresses);
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_balancer_the_proxy_header_names_the_client_for_per_ip_limits() {
    let node = start_with(|c| {
        c.proxy_protocol = true;
        c.max_connections_per_ip = 1;
    })
    .await;
    let to = node.handle.download_addr;
    let ca = node.cert();
    let v1 = |ip: &str| format!("PROXY TCP4 {ip} 127.0.0.1 40000 443\r\n").into_bytes();
    // The first device behind the balancer: served.
    let mut a = tls_after_header(to, &v1("203.0.113.7"), &ca)
        .await
        .expect("v1 header accepted");
    assert_eq!(status_on(&mut a).await, 404);
    // The same device again: over its share of one, although the TCP peer is the same
    // balancer address for everyone.
    assert!(tls_after_header(to, &v1("203.0.113.7"), &ca)
        .await
        .is_none());
    // Another device through the same balancer: served.
    let mut c = tls_after_header(to, &v1("198.51.100.9"), &ca)
        .await
        .expect("another client");
    assert_eq!(status_on(&mut c).await, 404);
    // v2 (binary), IPv6 client.
    let mut addrs = Vec::new();
    addrs.extend(
        "2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    addrs.extend(std::net::Ipv6Addr::LOCALHOST.octets());
    addrs.extend(40000u16.to_be_bytes());
    addrs.extend(443u16.to_be_bytes());
    let mut d = tls_after_header(to, &proxy_v2(1, 0x21, &addrs), &ca)
        .await
        .expect("v2 header accepted");
    assert_eq!(status_on(&mut d).await, 404);
    // The balancer's own health check (v2 LOCAL): the TCP peer stands, and it is served.
    let mut e = tls_after_header(to, &proxy_v2(0, 0x00, &[]), &ca)
        .await
        .expect("LOCAL accepted");
    assert_eq!(status_on(&mut e).await, 404);
    // A connection without a header (something bypassing the balancer) is closed.
    assert!(tls_after_header(to, b"", &ca).await.is_none());
    assert!(tls_after_header(to, b"GARBAGE\r\n", &ca).await.is_none());
    // The earlier connections are all still up.
    assert_eq!(status_on(&mut a).await, 404);
    assert_eq!(
        node.metric("scomo_ads_connections_refused_per_ip_total")
            .await,
        1
    );
}
