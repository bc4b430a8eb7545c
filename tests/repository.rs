//! The repository keeps its own promises about itself: every file a comment points at exists
//! (nothing refers to a contract that lives outside the repository), and the product's `src/`
//! holds only twinreg.

use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, skipping build output.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        if name == "target" || name == ".git" || name == "corpus" || name == "regressions" {
            continue;
        }
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The file names a comment line mentions: tokens ending in an extension the repository uses.
fn mentioned(comment: &str) -> Vec<String> {
    const EXTENSIONS: [&str; 11] = [
        ".md", ".rs", ".sh", ".toml", ".proto", ".yml", ".yaml", ".cfg", ".hcl", ".css", ".json",
    ];
    comment
        .split(|c: char| c.is_whitespace() || "`()[],;:\"'<>*".contains(c))
        .map(|t| t.trim_end_matches(['.', '!', '?']))
        .filter(|t| !t.contains("://") && !t.starts_with('/') && !t.contains('{'))
        .filter(|t| {
            EXTENSIONS
                .iter()
                .any(|x| t.len() > x.len() && t.ends_with(x))
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_file_a_comment_points_at_exists() {
    let mut files = Vec::new();
    for d in [
        "src",
        "crates",
        "tests",
        "fuzz/src",
        "fuzz/fuzz_targets",
        "build.rs",
    ] {
        let p = root().join(d);
        if p.is_file() {
            files.push(p);
        } else {
            rust_files(&p, &mut files);
        }
    }
    assert!(files.len() > 50, "found only {} source files", files.len());
    let mut missing = Vec::new();
    let mut checked = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        // The crate a file belongs to: the nearest directory above it with a Cargo.toml.
        let krate = f
            .ancestors()
            .find(|d| d.join("Cargo.toml").is_file())
            .unwrap_or(root());
        for (n, line) in text.lines().enumerate() {
            let Some((_, comment)) = line.split_once("//") else {
                continue;
            };
            for name in mentioned(comment) {
                checked += 1;
                let here = f.parent().unwrap();
                let found = [root(), here, krate, &krate.join("src")]
                    .iter()
                    .any(|base| base.join(&name).exists());
                if !found {
                    let rel = f.strip_prefix(root()).unwrap_or(f);
                    missing.push(format!("{}:{}: {name}", rel.display(), n + 1));
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} references were checked");
    assert!(
        missing.is_empty(),
        "comments point at files that are not in the repository:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn the_product_src_holds_only_twinreg() {
    assert!(
        !root().join("src/bin").exists(),
        "src/bin/ exists: test tools and benchmarks belong in crates/"
    );
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    for tool_only in ["hdrhistogram", "serde_norway = "] {
        let deps = manifest
            .split("\n[dependencies]")
            .nth(1)
            .and_then(|d| d.split("\n[").next())
            .unwrap();
        assert!(
            !deps.contains(tool_only),
            "{tool_only} is a dependency of the product"
        );
    }
}
