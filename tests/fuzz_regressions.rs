//! The fuzz targets' inputs as ordinary tests, so they run in every CI without libFuzzer: each
//! file of `fuzz/corpus/<target>/` (the seeds) and `fuzz/regressions/<target>/` (inputs that once
//! failed; see docs/fuzzing.md) goes through the same check as the target (`fuzz/src/lib.rs`).

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code, unexpected_cfgs)]
mod checks;

use std::collections::BTreeSet;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return BTreeSet::new();
    };
    entries
        .map(|e| e.expect("a readable directory entry").file_name())
        .map(|n| n.into_string().expect("a UTF-8 file name"))
        .filter(|n| !n.starts_with('.'))
        .collect()
}

/// Runs every input of `fuzz/<kind>/<target>/` through the target's check; returns how many ran.
fn run(kind: &str) -> usize {
    let mut failures = Vec::new();
    let mut ran = 0;
    let mut verdicts = std::collections::BTreeMap::<String, usize>::new();
    for (target, check) in checks::TARGETS {
        let dir = fuzz_dir().join(kind).join(target);
        for name in names_in(&dir) {
            let path = dir.join(&name);
            let data = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            ran += 1;
            match catch_unwind(AssertUnwindSafe(|| check(&data))) {
                Ok(v) => *verdicts.entry(format!("{v:?}")).or_default() += 1,
                Err(_) => failures.push(format!("{kind}/{target}/{name}")),
            }
        }
    }
    println!("fuzz/{kind}: {ran} inputs, {verdicts:?}");
    assert!(failures.is_empty(), "inputs that fail: {failures:?}");
    ran
}

#[test]
fn every_target_is_checked_here() {
    let targets: BTreeSet<String> = names_in(&fuzz_dir().join("fuzz_targets"))
        .into_iter()
        .map(|n| n.strip_suffix(".rs").expect("a .rs target").to_owned())
        .collect();
    let checked: BTreeSet<String> = checks::TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(targets, checked, "fuzz_targets/ and checks::TARGETS differ");
    for kind in ["corpus", "regressions"] {
        let unknown: Vec<String> = names_in(&fuzz_dir().join(kind))
            .into_iter()
            .filter(|d| !checked.contains(d))
            .collect();
        assert!(
            unknown.is_empty(),
            "fuzz/{kind}/ has folders of no target: {unknown:?}"
        );
    }
}

#[test]
fn every_target_has_seeds() {
    for (target, _) in checks::TARGETS {
        let n = names_in(&fuzz_dir().join("corpus").join(target)).len();
        assert!(n > 0, "fuzz/corpus/{target}/ is empty");
    }
}

#[test]
fn seed_corpus_passes() {
    assert!(run("corpus") > 0);
}

#[test]
fn regressions_pass() {
    run("regressions");
}
