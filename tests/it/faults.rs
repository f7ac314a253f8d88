//! Faults of the machine under the node: a full disk while uploading, the SQLite file held by
//! another process. Each gets a clear HTTP answer, nothing half-published, and the node
//! carries on once the fault is gone.

use std::path::Path;
use std::time::Duration;

use crate::common::*;

fn files_under(dir: &Path) -> usize {
    if !dir.exists() {
        return 0;
    }
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            n += files_under(&e.path());
        } else {
            n += 1;
        }
    }
    n
}

async fn upload(node: &Node, bytes: Vec<u8>, name: &str) -> reqwest::Response {
    client(&node.cert())
        .post(node.admin(&format!("/v1/components?name={name}&version=1")))
        .bearer_auth(node.token())
        .body(bytes)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_would_eat_the_free_space_reserve_gets_507_and_publishes_nothing() {
    // A reserve larger than any disk: every upload would break it.
    let node = start_with(|c| c.keep_free_bytes = u64::MAX / 4).await;
    let r = upload(&node, pattern(300_000, 1), "fw").await;
    assert_eq!(r.status(), 507);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "disk_full");
    assert!(v["error"]
        .as_str()
        .unwrap()
        .contains("nothing was published"));
    assert_eq!(node.components().await.len(), 0);
    assert_eq!(files_under(&node.dir.path().join("objects")), 0);
    assert_eq!(files_under(&node.dir.path().join("tmp")), 0);
}

/// Runs `mount ARGS...`; whether it worked (it needs CAP_SYS_ADMIN).
fn mount(args: &[&std::ffi::OsStr]) -> bool {
    std::process::Command::new("mount")
        .args(args)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Something mounted on a directory, lazily unmounted on drop.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

impl Mounted {
    /// A tmpfs of `mib` MiB on `dir`; `None` where this process may not mount.
    fn tmpfs(dir: &Path, mib: u64) -> Option<Mounted> {
        let size = std::ffi::OsString::from(format!("size={mib}m"));
        mount(&[
            "-t".as_ref(),
            "tmpfs".as_ref(),
            "-o".as_ref(),
            &size,
            "tmpfs".as_ref(),
            dir.as_os_str(),
        ])
        .then(|| Mounted(dir.to_path_buf()))
    }

    /// `dir` bind-mounted onto itself read-only; `None` where this process may not mount.
    fn read_only(dir: &Path) -> Option<Mounted> {
        if !mount(&["--bind".as_ref(), dir.as_os_str(), dir.as_os_str()]) {
            return None;
        }
        let guard = Mounted(dir.to_path_buf());
        mount(&["-o".as_ref(), "remount,ro,bind".as_ref(), dir.as_os_str()]).then_some(guard)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_really_full_disk_mid_upload_gets_507_and_the_node_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_fs) = Mounted::tmpfs(dir.path(), 6) else {
        eprintln!("SKIPPED: cannot mount a tmpfs here; the reserve test covers the 507 path");
        return;
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut config = test_config(dir.path());
    // No reserve: the kernel's ENOSPC itself must be handled.
    config.keep_free_bytes = 0;
    let handle = scomo_ads::ads::start(config, shutdown.clone())
        .await
        .unwrap();
    let node = Node {
        handle,
        dir: tempfile::tempdir().unwrap(),
        shutdown,
    };
    // `node.dir` is a dummy; the real data dir is the tmpfs.
    let http = client(&node.handle.cert_path);
    let token = node.handle.admin_token.clone();
    let post = |bytes: Vec<u8>, name: &str| {
        http.post(format!(
            "{}/v1/components?name={name}&version=1",
            node.handle.admin_url
        ))
        .bearer_auth(&token)
        .body(bytes)
        .send()
    };
    let r = post(pattern(16 << 20, 2), "big").await.unwrap();
    assert_eq!(r.status(), 507, "{:?}", r.text().await);
    assert_eq!(files_under(&dir.path().join("objects")), 0);
    assert_eq!(
        files_under(&dir.path().join("tmp")),
        0,
        "the partial upload is gone"
    );
    // The space came back with the temp file: a small component publishes and downloads.
    let small = pattern(100_000, 3);
    let r = post(small.clone(), "small").await.unwrap();
    assert_eq!(r.status(), 201);
    let meta: serde_json::Value = r.json().await.unwrap();
    let minted: serde_json::Value = http
        .post(format!("{}/v1/tickets", node.handle.admin_url))
        .bearer_auth(&token)
        .json(&serde_json::json!({"component": meta["id"], "ttl_secs": 60}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let got = http
        .get(minted["url"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got == small);
    node.shutdown.cancel();
    node.handle.wait().await;
}

/// A full disk: a mint answers 507 (nothing minted), a one-time download answers 503 with
/// Retry-After before any byte (nothing spent); once space is freed both work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gets_507_for_a_mint_and_503_for_a_download() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_fs) = Mounted::tmpfs(dir.path(), 8) else {
        if std::env::var_os("SCOMO_REQUIRE_TOOLS").is_some() {
            panic!("cannot mount a tmpfs here (SCOMO_REQUIRE_TOOLS is set)");
        }
        eprintln!("SKIPPED: cannot mount a tmpfs here");
        return;
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut config = test_config(dir.path());
    config.keep_free_bytes = 0;
    let handle = scomo_ads::ads::start(config, shutdown.clone())
        .await
        .unwrap();
    let http = client(&handle.cert_path);
    let token = handle.admin_token.clone();
    let data = pattern(300_000, 9);
    let meta: serde_json::Value = http
        .post(format!(
            "{}/v1/components?name=fw&version=1",
            handle.admin_url
        ))
        .bearer_auth(&token)
        .body(data.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mint = || {
        http.post(format!("{}/v1/tickets", handle.admin_url))
            .bearer_auth(&token)
            .json(&serde_json::json!({"component": meta["id"], "ttl_secs": 60}))
            .send()
    };
    let minted: serde_json::Value = mint().await.unwrap().json().await.unwrap();
    let url = minted["url"].as_str().unwrap().to_string();
    // Fill the disk to the last byte.
    let filler = dir.path().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let mut byte = [0u8; 1];
        while f.write_all(&byte).is_ok() {
            byte[0] = 1;
        }
        let _ = f.sync_all();
    }
    let r = mint().await.unwrap();
    assert_eq!(r.status(), 507, "{:?}", r.text().await);
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 503, "a download on a full disk");
    assert!(r.headers().contains_key("retry-after"));
    std::fs::remove_file(&filler).unwrap();
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap()[..] == data[..]);
    assert_eq!(mint().await.unwrap().status(), 201);
    shutdown.cancel();
    handle.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_by_another_process_gets_503_and_loses_nothing() {
    let node = start().await;
    // Another process (here: our own connection) takes the write lock and keeps it.
    let db = rusqlite::Connection::open(node.dir.path().join("ads.sqlite3")).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let bytes = pattern(200_000, 4);
    let r = upload(&node, bytes.clone(), "fw").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "busy");
    assert_eq!(
        files_under(&node.dir.path().join("objects")),
        0,
        "no orphan"
    );
    assert_eq!(files_under(&node.dir.path().join("tmp")), 0);
    // The node is still up and answering meanwhile.
    let health = client(&node.cert())
        .get(node.admin("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // Lock released: the same upload goes through.
    db.execute_batch("COMMIT").unwrap();
    drop(db);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = upload(&node, bytes, "fw").await;
    assert_eq!(r.status(), 201);
    assert_eq!(node.components().await.len(), 1);
}

/// How one device's download ended.
#[derive(Debug)]
enum Outcome {
    /// Every byte arrived and matches.
    Complete { requests: u32 },
    /// The node had finished sending (bytes were in the kernel's buffers when it was killed)
    /// and the ticket was complete: the DMS would re-mint. Counted, allowed.
    GoneAfter(usize),
}

/// One HTTP/1.1 GET of `/d/{token}` from byte `from`, over TLS on a socket with a small
/// receive buffer (the kernel would otherwise read megabytes ahead of a slow device), read at
/// about 2 MiB/s into `got`. Returns the status; a cut body just leaves `got` short.
async fn slow_get(
    addr: &str,
    token: &str,
    connector: &tokio_rustls::TlsConnector,
    got: &mut Vec<u8>,
) -> std::io::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(64 << 10)?;
    let addr: std::net::SocketAddr = addr.parse().map_err(std::io::Error::other)?;
    let tcp = socket.connect(addr).await?;
    let name =
        rustls_pki_types::ServerName::try_from("127.0.0.1").map_err(std::io::Error::other)?;
    let mut tls = connector.connect(name, tcp).await?;
    let range = if got.is_empty() {
        String::new()
    } else {
        format!("range: bytes={}-\r\n", got.len())
    };
    tls.write_all(
        format!("GET /d/{token} HTTP/1.1\r\nhost: x\r\n{range}connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut head = Vec::new();
    let mut buf = vec![0u8; 32 << 10];
    let body_start = loop {
        let n = tls.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let text = String::from_utf8_lossy(&head[..body_start]).to_string();
    let status: u16 = text[9..12].parse().map_err(std::io::Error::other)?;
    if status == 200 {
        got.clear();
    }
    if status != 200 && status != 206 {
        return Ok(status);
    }
    got.extend_from_slice(&head[body_start..]);
    loop {
        match tls.read(&mut buf).await {
            Ok(0) | Err(_) => return Ok(status),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        tokio::time::sleep(Duration::from_millis(16)).await;
    }
}

/// A device downloading `token` from whatever address the node currently listens on,
/// resuming with Range after every failure.
async fn throttled_resuming_fetch(
    connector: tokio_rustls::TlsConnector,
    addr: std::sync::Arc<std::sync::RwLock<String>>,
    token: String,
    want: std::sync::Arc<Vec<u8>>,
) -> Outcome {
    let mut got: Vec<u8> = Vec::with_capacity(want.len());
    for requests in 1..=600u32 {
        let current = addr.read().unwrap().clone();
        match slow_get(&current, &token, &connector, &mut got).await {
            Ok(410) => return Outcome::GoneAfter(got.len()),
            Ok(200 | 206) => {
                if got.len() == want.len() {
                    assert!(got[..] == want[..], "{token}: bytes differ");
                    return Outcome::Complete { requests };
                }
            }
            Ok(other) => panic!("{token}: unexpected HTTP {other}"),
            Err(_) => {} // the node is down: try again shortly
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{token}: gave up after 600 attempts at {} bytes", got.len());
}

/// Issue 7's figure: 100 concurrent downloads, the node killed with SIGKILL twice while they
/// run. Every ticket completes exactly once and calls back exactly once (after dedup by event
/// id); every device ends with the right bytes (or, when the node had already sent them all
/// into the kernel before dying, a 410 that the DMS answers with a new URL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_downloads_survive_two_kill_9s_with_one_completion_and_one_callback_each() {
    const DEVICES: usize = 100;
    const SIZE: usize = 8 << 20;
    let home = tempfile::tempdir().unwrap();
    let cfg = home.path().join("node.toml");
    std::fs::write(
        &cfg,
        // A small send buffer keeps what the node counts as sent close to what the devices
        // have read, so the kills land mid-download rather than mid-kernel-buffer.
        "[ads]\ncallback_backoff_base_ms = 100\ncallback_backoff_cap_secs = 1\n\
         send_buffer_bytes = 131072\n",
    )
    .unwrap();
    let data_dir = home.path().join("node");
    let rx = Receiver::start().await;
    let want = std::sync::Arc::new(pattern(SIZE, 11));
    let file = home.path().join("fw.bin");
    std::fs::write(&file, &want[..]).unwrap();

    let spawn = || Proc::spawn(&data_dir, &["--config", cfg.to_str().unwrap()]);
    let mut p = spawn();
    let meta = p
        .admin_client()
        .publish(&file, "fw", "1", |_, _| {})
        .await
        .unwrap();
    let admin = client(&p.cert());
    let mut tokens = Vec::new();
    let mut ticket_ids = Vec::new();
    for i in 0..DEVICES {
        let t: serde_json::Value = admin
            .post(format!("https://{}/v1/tickets", p.admin))
            .bearer_auth(p.token())
            .json(&serde_json::json!({
                "component": meta.id,
                "callback_url": rx.url,
                "device_id": format!("IMEI:{i}"),
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let url = t["url"].as_str().unwrap();
        tokens.push(url.rsplit_once("/d/").unwrap().1.to_string());
        ticket_ids.push(t["id"].as_str().unwrap().to_string());
    }

    let addr = std::sync::Arc::new(std::sync::RwLock::new(p.download.clone()));
    let mut tls = scomo_ads::net::tls::client_config_trusting(&p.cert()).unwrap();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let devices: Vec<_> = tokens
        .iter()
        .map(|t| {
            tokio::spawn(throttled_resuming_fetch(
                connector.clone(),
                addr.clone(),
                t.clone(),
                want.clone(),
            ))
        })
        .collect();

    for kill in 1..=2 {
        tokio::time::sleep(Duration::from_millis(1300)).await;
        p.child.kill().unwrap(); // SIGKILL
        p.child.wait().unwrap();
        let done = rx.delivered().len();
        eprintln!("kill {kill}: {done} completion callbacks so far");
        assert!(done < DEVICES, "kill {kill} came after everything finished");
        tokio::time::sleep(Duration::from_millis(200)).await;
        p = spawn();
        *addr.write().unwrap() = p.download.clone();
    }

    let mut complete = 0;
    let mut gone = 0;
    let mut requests = 0;
    for d in devices {
        match d.await.unwrap() {
            Outcome::Complete { requests: r } => {
                complete += 1;
                requests += r;
            }
            Outcome::GoneAfter(had) => {
                eprintln!("a device had {had} bytes when its ticket was already complete");
                gone += 1
            }
        }
    }
    let events = rx.wait_for(DEVICES, 30).await;
    eprintln!(
        "{complete} complete, {gone} gone after completion, {requests} requests, \
         {} callbacks ({} attempts)",
        events.len(),
        rx.all().len()
    );
    assert_eq!(complete + gone, DEVICES);
    assert!(complete >= DEVICES * 9 / 10, "most devices get every byte");
    // Each kill cut (nearly) every download: about three requests per device.
    assert!(
        requests as usize >= 2 * DEVICES + DEVICES / 2,
        "the kills did not interrupt the downloads ({requests} requests)"
    );
    // Exactly one completion event per ticket, even counting every attempt received.
    let mut per_ticket: std::collections::HashMap<String, std::collections::HashSet<String>> =
        Default::default();
    for a in rx.all() {
        let j = a.json();
        assert_eq!(j["event"], "download.completed", "{j}");
        per_ticket
            .entry(j["ticket_id"].as_str().unwrap().to_string())
            .or_default()
            .insert(a.id.clone());
    }
    assert_eq!(per_ticket.len(), DEVICES, "every ticket called back");
    assert!(
        per_ticket.values().all(|ids| ids.len() == 1),
        "a ticket completed twice"
    );
    assert_eq!(events.len(), DEVICES);
    // And the node agrees: every ticket is completed.
    let admin = client(&p.cert());
    for id in &ticket_ids {
        let t: serde_json::Value = admin
            .get(format!("https://{}/v1/tickets/{id}", p.admin))
            .bearer_auth(p.token())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(t["state"], "completed", "{t}");
    }
    drop(p);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `scomo-ads dms` on fixed ports (so devices find it again after a restart).
fn spawn_dms(data: &Path, config: &Path, dm: u16, api: u16, emi: &str) -> std::process::Child {
    use std::io::BufRead;
    let mut child = std::process::Command::new(bin())
        .args(["dms", "--data"])
        .arg(data)
        .arg("--config")
        .arg(config)
        .args(["--listen", &format!("127.0.0.1:{dm}")])
        .args(["--api-listen", &format!("127.0.0.1:{api}")])
        .args(["--emi-webhook-url", emi])
        .env_remove("SCOMO_DMS_API_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let l = lines.next().expect("ready line").unwrap();
        if l.starts_with("ready ") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    child
}

/// Issue 7's figure: the DMS killed with SIGKILL in the middle of an in-band delivery and
/// started again. The job survives in its database, the DMS re-notifies, the device's next
/// session finishes the job, and the EMI hears of it exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dms_killed_mid_session_finishes_the_job_after_restart_and_tells_the_emi_once() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("dms");
    let config = home.path().join("dms.toml");
    std::fs::write(
        &config,
        "[dms]\nrenotify_secs = 1\nsession_timeout_secs = 2\n\
         webhook_backoff_base_ms = 100\nwebhook_backoff_cap_secs = 1\n",
    )
    .unwrap();
    let emi = Receiver::start().await;
    let (dm_port, api_port) = (free_port(), free_port());
    let mut dms = spawn_dms(&data, &config, dm_port, api_port, &emi.url);
    let api = format!("https://127.0.0.1:{api_port}");
    let cert = data.join("tls/cert.pem");
    let token = std::fs::read_to_string(data.join("api.token"))
        .unwrap()
        .trim()
        .to_string();
    let http = client(&cert);
    let component = pattern(3 << 20, 21);
    let r = http
        .post(format!("{api}/v1/components"))
        .query(&[("name", "fw"), ("version", "2.0")])
        .bearer_auth(&token)
        .body(component.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // The device: provisions itself, then waits for package 0.
    let state = home.path().join("device/state.json");
    let mut device = tokio::process::Command::new(bin())
        .args(["device", "--id", "IMEI:4242"])
        .args(["--dms-url", &format!("https://127.0.0.1:{dm_port}/dm")])
        .args(["--api-url", &api])
        .args(["--notify-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--max-msg-size", "8192"])
        .arg("--cacert")
        .arg(&cert)
        .arg("--state")
        .arg(&state)
        .env("SCOMO_DMS_API_TOKEN", &token)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let device_url = format!("{api}/v1/devices/IMEI:4242");
    let mut provisioned = false;
    for _ in 0..200 {
        let r = http.get(&device_url).bearer_auth(&token).send().await;
        if r.is_ok_and(|r| r.status() == 200) {
            provisioned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(provisioned, "the device provisioned itself");

    let job: serde_json::Value = http
        .post(format!("{api}/v1/jobs"))
        .bearer_auth(&token)
        .json(
            &serde_json::json!({"device": "IMEI:4242", "operation": "download", "component": "fw"}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job_id = job["job_id"].as_str().expect("job created").to_string();
    let job_url = format!("{api}/v1/jobs/{job_id}");
    let get_job = || async {
        http.get(&job_url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    // Kill the DMS once the in-band delivery is under way.
    let mut delivering = false;
    for _ in 0..1000 {
        let j = get_job().await;
        if steps(&j).iter().any(|s| s == "delivery") {
            delivering = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(delivering, "the delivery started");
    dms.kill().unwrap(); // SIGKILL
    dms.wait().unwrap();

    let mut dms = spawn_dms(&data, &config, dm_port, api_port, &emi.url);
    let before = get_job().await;
    assert_ne!(
        before["state"], "succeeded",
        "the job finished before the kill; the test proves nothing: {before:#}"
    );
    let mut j = before;
    for _ in 0..600 {
        if j["state"] == "succeeded" || j["state"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        j = get_job().await;
    }
    assert_eq!(j["state"], "succeeded", "{j:#}");
    assert!(
        steps(&j).iter().filter(|s| *s == "delivery").count() >= 2,
        "the delivery started over in a new session: {:?}",
        steps(&j)
    );
    // The device holds the right bytes.
    let got = std::fs::read(state.with_extension("objects").join("fw")).unwrap();
    assert!(got == component, "delivered bytes differ");
    // The EMI is told exactly once, however often the webhook was attempted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let told: Vec<_> = emi
        .all()
        .into_iter()
        .filter(|a| a.json()["job"]["id"] == job_id.as_str())
        .collect();
    let ids: std::collections::HashSet<_> = told.iter().map(|a| a.id.clone()).collect();
    assert_eq!(ids.len(), 1, "one EMI event for the job: {told:?}");
    assert_eq!(told[0].json()["event"], "job.succeeded");
    let _ = device.kill().await;
    let _ = dms.kill();
    let _ = dms.wait();
}

/// A data directory on a read-only file system (a failing disk the kernel remounted `ro`,
/// found at the next start): the node refuses to start with an error naming the problem,
/// instead of panicking or serving without being able to record anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_data_directory_is_refused_at_start_with_a_clear_error() {
    let node = start().await;
    let meta = node.publish(pattern(10_000, 33), "fw", "1").await;
    let dir = node.dir.path().to_path_buf();
    node.shutdown.cancel();
    node.handle.wait().await;
    let Some(_ro) = Mounted::read_only(&dir) else {
        eprintln!("SKIPPED: cannot bind-mount read-only here");
        return;
    };
    assert!(
        std::fs::write(dir.join("probe"), b"x").is_err(),
        "the mount is read-only"
    );
    let err = match scomo_ads::ads::start(
        test_config(&dir),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    {
        Ok(_) => panic!("a node started on a read-only data directory"),
        Err(e) => e.to_string(),
    };
    eprintln!("start on a read-only dir: {err}");
    assert!(
        err.to_lowercase().contains("read-only") || err.to_lowercase().contains("readonly"),
        "the error says what is wrong: {err}"
    );
    // The data is intact for when the disk is fixed.
    drop(_ro);
    let again = scomo_ads::ads::start(
        test_config(&dir),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect("starts again once writable");
    let r = client(&again.cert_path)
        .get(format!("{}/v1/components/{}", again.admin_url, meta.id))
        .bearer_auth(&again.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
