//! The workspace's own binaries (twinreg, mini-consul), built and found through cargo.
//!
//! A test of one package cannot name another package's binary (`CARGO_BIN_EXE_*` covers only its
//! own), and a binary merely found in `target/` may be stale. So the first call runs
//! `cargo build --bin NAME` (the cargo that runs the tests, from `$CARGO`) and takes the path cargo
//! reports: up to date, or a clear failure. Cargo does not hold its build lock while tests run, so
//! this works from inside `cargo test`; when everything is built it costs a fraction of a second.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn build(package: &str, bin: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let out = Command::new(&cargo)
        .args([
            "build",
            "--quiet",
            "--message-format=json",
            "-p",
            package,
            "--bin",
            bin,
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .output()
        .unwrap_or_else(|e| panic!("running {cargo} build -p {package}: {e}"));
    assert!(
        out.status.success(),
        "cargo build -p {package} --bin {bin} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == bin)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo build -p {package} reported no executable for {bin}"))
}

/// The twinreg binary.
pub fn twinreg() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build("twinreg", "twinreg"))
}

/// The mini-consul binary.
pub fn mini_consul() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build("mini-consul", "mini-consul"))
}

/// A `twinreg` command with a clean environment: no `TWINREG_*` from the caller's shell, which
/// twinreg would read as configuration.
pub fn twinreg_command() -> Command {
    let mut cmd = Command::new(twinreg());
    for (k, _) in std::env::vars() {
        if k.starts_with("TWINREG_") {
            cmd.env_remove(k);
        }
    }
    cmd
}
