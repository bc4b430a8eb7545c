//! The gRPC API's definition: `buf lint` (STANDARD, with the exceptions buf.yaml gives for the
//! names the API contract fixes) passes, and the committed Go stubs are what the proto gives.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `buf`: BUF_BIN, PATH, or where scripts/setup.sh --test installs it; missing fails the test.
fn buf() -> PathBuf {
    if let Some(p) = std::env::var_os("BUF_BIN") {
        return PathBuf::from(p);
    }
    if let Ok(out) = Command::new("buf").arg("--version").output()
        && out.status.success()
    {
        return PathBuf::from("buf");
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .expect("HOME is set");
    let bin = cache.join("twinreg/buf/node_modules/.bin/buf");
    assert!(
        bin.is_file(),
        "buf is not installed ({} is missing, and it is not on PATH nor in BUF_BIN): run \
         scripts/setup.sh --test, which installs the npm package @bufbuild/buf",
        bin.display()
    );
    bin
}

#[test]
fn buf_lint_passes() {
    let out = Command::new(buf())
        .arg("lint")
        .current_dir(root())
        .output()
        .expect("running buf");
    assert!(
        out.status.success(),
        "buf lint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_go_stubs_are_what_the_proto_gives() {
    let out = Command::new(root().join("scripts/gen-go.sh"))
        .arg("--check")
        .current_dir(root())
        .output()
        .expect("running scripts/gen-go.sh");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
