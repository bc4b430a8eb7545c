//! The client examples in `examples/` (Python and Go, standard library only), each run as a child
//! process against a live gateway: it registers, long-polls a peer service and prints each change,
//! keeps itself alive past its TTL by heartbeating, registers again when the gateway forgets it,
//! and deregisters on SIGTERM.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;

use crate::child::{
    Child, Registration, go, kept_alive_past_ttl, wait_registered_in_both, with_index, write_certs,
};
use crate::{Env, path};
use testkit::{eventually, find_binary, signal};

/// The example's own service and instance; its certificate's CN names the service.
const SERVICE: &str = "orders";
const ID: &str = "ord-1";
const PEER: &str = "billing";
const TTL: u64 = 5;

/// The instance the example registers.
fn registration() -> Registration {
    Registration {
        service: SERVICE,
        id: ID,
        address: "127.0.0.1",
        port: 9000,
        ttl: TTL,
        tags: json!(["example"]),
        meta: json!({"lang": "any"}),
    }
}

#[tokio::test]
async fn python_example_registers_watches_heartbeats_and_deregisters() {
    let python = require("PYTHON3_BIN", "python3", "python3");
    let mut cmd = Command::new(python);
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python/twinreg_client.py"))
        .env("PYTHONDONTWRITEBYTECODE", "1");
    exercise(cmd).await;
}

#[tokio::test]
async fn go_example_registers_watches_heartbeats_and_deregisters() {
    let out = tempfile::tempdir().unwrap();
    let bin = build_go(out.path());
    exercise(Command::new(bin)).await;
}

/// The interpreter or tool an example needs; a missing one fails the test (never a silent skip).
fn require(env: &str, name: &str, package: &str) -> PathBuf {
    find_binary(env, name).unwrap_or_else(|| {
        panic!(
            "`{name}` is not on PATH (nor set in {env}); the client-example tests need it: \
             run scripts/setup.sh, which installs Debian's {package}"
        )
    })
}

/// `go build`s examples/go into `out`, offline, with its build cache under the target directory.
fn build_go(out: &Path) -> PathBuf {
    let bin = out.join("twinreg-client");
    go(
        &["build", "-o", bin.to_str().unwrap(), "."],
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/go"),
        None,
    );
    bin
}

/// The whole scenario, for an example started by `cmd` (flags and variables are added here).
async fn exercise(mut cmd: Command) {
    let env = Env::start().await;
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = write_certs(&env, certs.path(), SERVICE);

    // A peer instance, registered with the test's own client, before the example starts.
    let peer = env.gw.client(PEER);
    let r = peer
        .put_json(
            &path(PEER, "bill-1"),
            &json!({"address": "10.0.0.5", "port": 8080}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Most settings as flags, the TTL and the peer through the environment: both routes work.
    cmd.arg("--url")
        .arg(format!("https://127.0.0.1:{}", env.gw.addr.port()))
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg("--ca")
        .arg(&ca)
        .args(["--service", SERVICE, "--id", ID])
        .args(["--address", "127.0.0.1", "--port", "9000"])
        .args(["--tag", "example", "--meta", "lang=any"])
        .env("TWREG_TTL", TTL.to_string())
        .env("TWREG_WATCH", PEER);
    let mut ex = Child::spawn("the example", cmd);

    ex.expect_line("its registered line", |l| {
        l.starts_with(&format!("registered {SERVICE}/{ID} ttl={TTL}s "))
    })
    .await;
    wait_registered_in_both(
        &env,
        "the example's instance in etcd and Consul",
        &registration(),
    )
    .await;

    // The peer as it was at start, then a second peer instance: printed by the long poll.
    ex.expect_line("the peer's first instance", |l| {
        with_index(
            l,
            &format!("peer {PEER}: 1 instances [bill-1 10.0.0.5:8080]"),
        )
    })
    .await;
    let r = peer
        .put_json(
            &path(PEER, "bill-2"),
            &json!({"address": "10.0.0.6", "port": 8081}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    ex.expect_line("the peer's second instance", |l| {
        with_index(
            l,
            &format!("peer {PEER}: 2 instances [bill-1 10.0.0.5:8080, bill-2 10.0.0.6:8081]"),
        )
    })
    .await;

    // Heartbeats keep it alive well past its TTL, without needing to register again.
    kept_alive_past_ttl(&env, &mut ex, SERVICE, ID, TTL).await;
    let listed = env
        .gw
        .client(PEER)
        .get(&format!("/v1/services/{SERVICE}/instances"))
        .await;
    assert_eq!(
        listed.json["instances"][0]["sources"],
        json!(["etcd", "consul"]),
        "{}",
        listed.text
    );

    // Deregistered behind its back: the next heartbeat gets 404 unknown_instance and the example
    // registers again.
    let owner = env.gw.client(SERVICE);
    let r = owner.delete(&path(SERVICE, ID)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    ex.expect_line("a second registered line after the 404", |l| {
        l.starts_with(&format!("registered {SERVICE}/{ID} "))
    })
    .await;
    wait_registered_in_both(
        &env,
        "the instance back in etcd and Consul",
        &registration(),
    )
    .await;

    // SIGTERM: it deregisters, says so, and exits 0; the instance is gone from both registries.
    signal(ex.id(), Signal::SIGTERM);
    let status = ex.wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "exit status {status}\n{}",
        ex.transcript()
    );
    ex.expect_line("its deregistered line", |l| {
        l == format!("deregistered {SERVICE}/{ID} existed=true")
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "the instance gone from etcd and Consul",
        || async {
            (env.etcd_record(SERVICE, ID).await.is_none()
                && env.consul_service(SERVICE, ID).await.is_none())
            .then_some(())
        },
    )
    .await;

    // No key material in anything it printed.
    let all = ex.transcript();
    assert!(
        !all.contains("PRIVATE KEY"),
        "key material in output\n{all}"
    );
}
