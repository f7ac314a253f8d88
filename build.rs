//! Build script: finds which external tools the integration tests drive as real peers (curl,
//! aria2c, libwbxml's converters, the standardwebhooks Python package, hadolint) are on this
//! machine, so that a test whose tool is missing shows as `ignored` with the reason in
//! `cargo test`'s own output instead of passing silently. Under `SCOMO_REQUIRE_TOOLS` (CI)
//! every such test runs, and a missing tool fails it. Install a tool later and the next
//! build notices through `PATH`; otherwise `touch build.rs`.

use std::process::{Command, Stdio};

fn works(probe: &[&str]) -> bool {
    Command::new(probe[0])
        .args(&probe[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-env-changed=SCOMO_REQUIRE_TOOLS");
    let require = std::env::var_os("SCOMO_REQUIRE_TOOLS").is_some();
    let tools: [(&str, &[&str]); 5] = [
        ("tool_curl", &["curl", "--version"]),
        ("tool_aria2c", &["aria2c", "--version"]),
        (
            "tool_libwbxml",
            &["sh", "-c", "command -v xml2wbxml && command -v wbxml2xml"],
        ),
        (
            "tool_standardwebhooks",
            &["python3", "-c", "import standardwebhooks"],
        ),
        ("tool_hadolint", &["hadolint", "--version"]),
    ];
    for (cfg, probe) in tools {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if require || works(probe) {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
