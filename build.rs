//! Compiles the gRPC API (`proto/twinreg/v1/registry.proto`) into server and client code, and a
//! file descriptor set for server reflection. protoc must be on PATH (or in `PROTOC`). Also
//! names the commit being built, for `twinreg_build_info` (`TWINREG_COMMIT`: the environment's
//! when set, as an image build without `.git` may do; else `git rev-parse`; else `unknown`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto/twinreg/v1/registry.proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .file_descriptor_set_path(out.join("twinreg_v1_descriptor.bin"))
        .compile_protos(&["proto/twinreg/v1/registry.proto"], &["proto"])?;
    println!("cargo:rustc-env=TWINREG_COMMIT={}", commit());
    Ok(())
}

/// The commit being built, 12 hex digits, or `unknown`.
fn commit() -> String {
    println!("cargo:rerun-if-env-changed=TWINREG_COMMIT");
    if let Ok(c) = std::env::var("TWINREG_COMMIT") {
        return c;
    }
    // A new commit moves HEAD's branch (or HEAD itself, detached): build again then. Only
    // files that exist are named, or cargo would run this script on every build.
    for f in [".git/HEAD", ".git/packed-refs"] {
        if Path::new(f).exists() {
            println!("cargo:rerun-if-changed={f}");
        }
    }
    if let Ok(head) = std::fs::read_to_string(".git/HEAD")
        && let Some(branch) = head.trim().strip_prefix("ref: ")
        && Path::new(".git").join(branch).exists()
    {
        println!("cargo:rerun-if-changed=.git/{branch}");
    }
    Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| "unknown".to_owned())
}
