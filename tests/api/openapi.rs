//! The OpenAPI description: served on the admin listener, committed as docs/openapi.json, and
//! held to what a live twinreg answers by schemathesis (PyPI), which generates requests from it.

use std::path::{Path, PathBuf};
use std::process::Command;

use testkit::find_binary;
use testkit::gateway::Options;
use twinreg::certs::ClientNames;

use crate::Env;

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");

#[tokio::test]
async fn the_admin_listener_serves_the_committed_description() {
    let env = Env::start().await;
    let (status, headers, served) = env.gw.admin_get_full("/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    let committed = std::fs::read_to_string(COMMITTED).unwrap();
    assert!(
        served == committed,
        "docs/openapi.json is not what twinreg serves: regenerate it with \
         `cargo run -- openapi > docs/openapi.json` and commit it"
    );
    let doc: serde_json::Value = serde_json::from_str(&served).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    // The binary prints the same.
    let printed = Command::new(testkit::binaries::twinreg())
        .arg("openapi")
        .output()
        .unwrap();
    assert!(printed.status.success());
    assert!(
        printed.stdout == committed.as_bytes(),
        "`twinreg openapi` differs"
    );
}

/// schemathesis, from `SCHEMATHESIS_BIN`, PATH, or the virtual environment scripts/setup.sh
/// makes; a missing one fails the test.
fn schemathesis() -> PathBuf {
    if let Some(p) = find_binary("SCHEMATHESIS_BIN", "schemathesis") {
        return p;
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .expect("HOME is set");
    let venv = cache.join("twinreg/schemathesis/bin/schemathesis");
    assert!(
        venv.is_file(),
        "schemathesis is not installed ({} is missing, and it is not on PATH nor in \
         SCHEMATHESIS_BIN): run scripts/setup.sh --test, which installs it from PyPI",
        venv.display()
    );
    venv
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_description() {
    let bin = schemathesis();
    // An admin identity, so generated requests for any service are authorized and reach the
    // registries (403 is described, but would stop every write at the door).
    let env = Env::start_with(Options {
        extra_toml: "[authz]\nadmins = [\"schemathesis\"]\n".into(),
        ..Options::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let id = env.gw.issue(&ClientNames::cn("schemathesis"));
    let (ca, cert, key) = (
        dir.path().join("ca.pem"),
        dir.path().join("client.pem"),
        dir.path().join("client-key.pem"),
    );
    std::fs::write(&ca, &env.gw.ca.cert_pem).unwrap();
    std::fs::write(&cert, &id.cert_pem).unwrap();
    std::fs::write(&key, &id.key_pem).unwrap();
    let url = format!("https://127.0.0.1:{}", env.gw.addr.port());
    let out = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || {
            Command::new(bin)
                .arg("run")
                .arg(COMMITTED)
                .args(["--url", &url])
                .arg("--request-cert")
                .arg(&cert)
                .arg("--request-cert-key")
                .arg(&key)
                .arg("--tls-verify")
                .arg(&ca)
                .args(["--checks", "all"])
                .args(["--max-examples", "40"])
                .args(["--seed", "1"])
                .args(["--workers", "2"])
                .args(["--request-timeout", "20"])
                .current_dir(&dir)
                .env("NO_COLOR", "1")
                .env(
                    "SCHEMATHESIS_HOOKS",
                    concat!(
                        env!("CARGO_MANIFEST_DIR"),
                        "/tests/native/schemathesis_hooks.py"
                    ),
                )
                .output()
                .expect("running schemathesis")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // It did test every operation.
    assert!(
        stdout.contains("7 selected") || stdout.contains("7 total"),
        "{stdout}"
    );
}
