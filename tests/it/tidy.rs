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
        "dlota.rs",
        "paging.rs",
        "table.rs",
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

/// The modules of `dir` that each module there imports (`super::x` or `crate::<prefix>::x`).
fn sibling_imports(dir: &Path, prefix: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut graph = std::collections::BTreeMap::new();
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            let stem = p.file_stem()?.to_str()?.to_string();
            (p.extension()? == "rs" && stem != "mod").then_some(stem)
        })
        .collect();
    for n in &names {
        let text = std::fs::read_to_string(dir.join(format!("{n}.rs"))).unwrap();
        // Tests may use anything; the module's own code is what the rule is about.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let uses: Vec<String> = names
            .iter()
            .filter(|m| *m != n)
            .filter(|m| {
                code.contains(&format!("super::{m}::"))
                    || code.contains(&format!("super::{m};"))
                    || code.contains(&format!("super::{m}::{{"))
                    || code.contains(&format!("{prefix}::{m}::"))
            })
            .cloned()
            .collect();
        graph.insert(n.clone(), uses);
    }
    graph
}

/// `net/`'s modules import each other one way only: no circle (issue 15), so each can be read,
/// and tested, with only what is below it.
#[test]
fn net_modules_import_one_way() {
    let graph = sibling_imports(&src().join("net"), "crate::net");
    assert!(graph.len() > 8, "{graph:?}");
    // Depth-first search for a back edge.
    fn visit<'a>(
        n: &'a str,
        graph: &'a std::collections::BTreeMap<String, Vec<String>>,
        path: &mut Vec<&'a str>,
        done: &mut std::collections::BTreeSet<&'a str>,
    ) {
        if done.contains(n) {
            return;
        }
        if let Some(i) = path.iter().position(|p| *p == n) {
            panic!(
                "net/ modules import each other in a circle: {:?}",
                &path[i..]
            );
        }
        path.push(n);
        for m in &graph[n] {
            visit(m, graph, path, done);
        }
        path.pop();
        done.insert(n);
    }
    let mut done = std::collections::BTreeSet::new();
    for n in graph.keys() {
        visit(n, &graph, &mut Vec::new(), &mut done);
    }
    // The accept loop is on top: nothing below imports it.
    for (n, uses) in &graph {
        assert!(
            !uses.contains(&"listener".to_string()),
            "{n} imports the listener above it"
        );
    }
}

/// The README's command table names every flag of every command and subcommand (the global
/// `--log-format` is documented once, under the table), so a flag added in `cli.rs` and left
/// out of the README fails here.
#[test]
fn every_flag_of_every_command_is_in_the_readme() {
    use clap::CommandFactory;
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let table =
        &readme[readme.find("## Commands").unwrap()..readme.find("On start the node").unwrap()];
    assert!(readme.contains("--log-format text|json"));
    fn flags(c: &clap::Command, out: &mut Vec<String>) {
        for a in c.get_arguments() {
            if let Some(long) = a.get_long() {
                if !["help", "version", "log-format"].contains(&long) {
                    out.push(format!("--{long}"));
                }
            }
        }
        for s in c.get_subcommands() {
            flags(s, out);
        }
    }
    let cli = scomo_ads::cli::Cli::command();
    let mut checked = 0;
    for cmd in cli.get_subcommands() {
        let name = cmd.get_name();
        let rows: String = table
            .lines()
            .filter(|l| {
                l.starts_with(&format!("| `scomo-ads {name} "))
                    || l.starts_with(&format!("| `scomo-ads {name}`"))
            })
            .collect();
        assert!(!rows.is_empty(), "no README row for `scomo-ads {name}`");
        let mut all = Vec::new();
        flags(cmd, &mut all);
        for f in all {
            assert!(
                rows.contains(&f),
                "README's `scomo-ads {name}` row lacks {f}"
            );
            checked += 1;
        }
    }
    assert!(checked > 80, "{checked}");
}
