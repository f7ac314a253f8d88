//! Faults of the machine under the node: a full disk while uploading, the SQLite file held by
//! another process. Each gets a clear HTTP answer, nothing half-published, and the node
//! carries on once the fault is gone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

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

async fn listed(node: &Node) -> usize {
    let v: serde_json::Value = client(&node.cert())
        .get(node.admin("/v1/components"))
        .bearer_auth(node.token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v.as_array()
        .or_else(|| v["components"].as_array())
        .map_or(0, Vec::len)
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
    assert_eq!(listed(&node).await, 0);
    assert_eq!(files_under(&node.dir.path().join("objects")), 0);
    assert_eq!(files_under(&node.dir.path().join("tmp")), 0);
}

/// A tmpfs of `mib` MiB mounted on `dir`, unmounted on drop; `None` where this process may
/// not mount (no CAP_SYS_ADMIN).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: u64) -> Option<Tmpfs> {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_really_full_disk_mid_upload_gets_507_and_the_node_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_fs) = Tmpfs::mount(dir.path(), 6) else {
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
    assert_eq!(listed(&node).await, 1);
}
