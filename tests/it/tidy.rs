//! House rules, checked: every source file opens with a `//!` doc saying what it is for, and
//! the pure modules (`syncml/`, `scomo/`, tokens, ranges, coverage, signing) name no I/O crate.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn every_module_has_a_doc_comment() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    assert!(files.len() > 20);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            text.starts_with("//!"),
            "{} does not start with a //! module doc",
            f.display()
        );
    }
}

#[test]
fn pure_modules_do_no_io() {
    let mut files = Vec::new();
    rust_files(&src().join("syncml"), &mut files);
    rust_files(&src().join("scomo"), &mut files);
    for f in [
        "ads/token.rs",
        "ads/download/range.rs",
        "ads/download/conditional.rs",
        "ads/tickets/coverage.rs",
        "webhook/sign.rs",
    ] {
        files.push(src().join(f));
    }
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for forbidden in [
            "tokio", "hyper", "rusqlite", "reqwest", "axum", "std::fs", "std::net",
        ] {
            assert!(
                !text.contains(forbidden),
                "{} is a pure module but names {forbidden}",
                f.display()
            );
        }
    }
}
