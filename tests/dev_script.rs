//! `scripts/dev.sh --smoke`, the README's first command in its checking form, run as a user runs
//! it: set-up, etcd, Consul (or mini-consul) and twinreg started, one instance registered with the
//! curl the script prints, read back from etcd and Consul, everything stopped.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Where the twinreg and mini-consul binaries are, built: the script is told to use them rather
/// than run its own `cargo build`.
fn bin_dir() -> &'static Path {
    let dir = testkit::binaries::twinreg().parent().unwrap();
    assert_eq!(
        testkit::binaries::mini_consul().parent(),
        Some(dir),
        "twinreg and mini-consul are built into different directories"
    );
    dir
}

#[test]
fn dev_script_smoke_registers_through_twinreg_and_finds_the_instance_in_both_registries() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin_dir = bin_dir();
    let mut cmd = Command::new(root.join("scripts/dev.sh"));
    cmd.arg("--smoke")
        .current_dir(root)
        .env("DEV_BIN_DIR", bin_dir);
    for var in [
        "ETCD_PORT",
        "ETCD_PEER_PORT",
        "CONSUL_PORT",
        "LISTEN_PORT",
        "ADMIN_PORT",
    ] {
        cmd.env(var, free_port().to_string());
    }
    let out = cmd.output().expect("running scripts/dev.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "dev.sh --smoke failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for step in [
        "dev: twinreg ready ",
        "\"registered\":true",
        "dev: read pay-1 back from etcd",
        "dev: read pay-1 back from Consul",
        "dev: smoke test passed",
    ] {
        assert!(stdout.contains(step), "{step:?} missing from:\n{stdout}");
    }
}

#[test]
fn dev_script_smoke_names_the_step_that_failed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin_dir = bin_dir();
    // etcd cannot start: its client port is taken by a listener this test holds.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let out = Command::new(root.join("scripts/dev.sh"))
        .arg("--smoke")
        .current_dir(root)
        .env("DEV_BIN_DIR", bin_dir)
        .env("ETCD_PORT", taken.local_addr().unwrap().port().to_string())
        .env("ETCD_PEER_PORT", free_port().to_string())
        .env("CONSUL_PORT", free_port().to_string())
        .env("LISTEN_PORT", free_port().to_string())
        .env("ADMIN_PORT", free_port().to_string())
        .output()
        .expect("running scripts/dev.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "dev.sh --smoke passed without etcd");
    assert!(
        stderr.contains("FAILED at step 'etcd on 127.0.0.1:"),
        "the failing step is not named:\n{stderr}"
    );
}
