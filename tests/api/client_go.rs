//! The Go client library (clients/go, module twinreg.dev/go) against a live gateway, through its
//! command twinreg-keepalive: a refused request reports twinreg's code and field, KeepAlive
//! registers, registers again when the gateway forgets the instance, and deregisters on SIGTERM;
//! the gRPC Watch (generated stubs in clients/go/twinregv1) sees a peer appear. Built offline in
//! GOPATH mode against Debian's grpc-go and protobuf sources.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;
use testkit::signal;

use crate::child::{Child, go, write_certs};
use crate::{Env, path};

const DEBIAN_GOPATH: &str = "/usr/share/gocode";

/// `go vet`s clients/go and builds its command into `out`.
fn build(out: &Path) -> PathBuf {
    let grpc = Path::new(DEBIAN_GOPATH).join("src/google.golang.org/grpc");
    assert!(
        grpc.is_dir(),
        "{} is missing: the Go client builds against Debian's golang-google-grpc-dev; run \
         scripts/setup.sh --test",
        grpc.display()
    );
    // GOPATH mode: the module's import path, twinreg.dev/go, is a link to clients/go.
    let gopath = out.join("gopath");
    let src = gopath.join("src/twinreg.dev");
    std::fs::create_dir_all(&src).unwrap();
    std::os::unix::fs::symlink(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/go"),
        src.join("go"),
    )
    .unwrap();
    let bin = out.join("twinreg-keepalive");
    let gopath = format!("{}:{DEBIAN_GOPATH}", gopath.display());
    let module = src.join("go");
    go(&["vet", "./..."], &module, Some(&gopath));
    let target = [
        "build",
        "-o",
        bin.to_str().unwrap(),
        "./cmd/twinreg-keepalive",
    ];
    go(&target, &module, Some(&gopath));
    bin
}

#[tokio::test]
async fn the_go_library_keeps_an_instance_alive_reports_refusals_and_watches_over_grpc() {
    let out = tempfile::tempdir().unwrap();
    let bin = tokio::task::spawn_blocking({
        let out = out.path().to_owned();
        move || build(&out)
    })
    .await
    .unwrap();
    let env = Env::start().await;
    let (ca, cert, key) = write_certs(&env, out.path(), "orders");
    let mut cmd = Command::new(&bin);
    cmd.arg(format!("-url=https://127.0.0.1:{}", env.gw.addr.port()))
        .arg(format!("-cert={}", cert.display()))
        .arg(format!("-key={}", key.display()))
        .arg(format!("-ca={}", ca.display()))
        .args([
            "-service=orders",
            "-id=ord-1",
            "-address=127.0.0.1",
            "-port=9000",
        ])
        .args(["-ttl=5", "-peer=billing", "-check"]);
    let mut p = Child::spawn("the Go client", cmd);

    // A refusal carries twinreg's code and field, not a bare status.
    let error = |l: &str| l.starts_with("error ");
    assert_eq!(
        p.expect_line("an error", error).await,
        "error invalid_request port"
    );
    assert_eq!(
        p.expect_line("an error", error).await.trim(),
        "error forbidden"
    );
    p.expect("registered orders/ord-1").await;
    let listed = env
        .gw
        .client("orders")
        .get("/v1/services/orders/instances")
        .await;
    assert_eq!(
        listed.json["instances"][0]["id"], "ord-1",
        "{}",
        listed.text
    );

    // The gRPC watch sees the peer appear.
    let r = env
        .gw
        .client("billing")
        .put_json(
            &path("billing", "bill-1"),
            &json!({"address": "127.0.0.2", "port": 9100}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let event = p
        .expect_line("the peer's ADDED", |l| l.starts_with("event billing ADDED"))
        .await;
    assert!(event.contains(" bill-1 "), "{event}");

    // Forgotten behind its back: the next heartbeat's 404 makes it register again.
    let r = env
        .gw
        .client("orders")
        .delete(&path("orders", "ord-1"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    p.expect("registered orders/ord-1").await;

    // SIGTERM: deregistered, exit 0.
    signal(p.id(), Signal::SIGTERM);
    p.expect("deregistered orders/ord-1").await;
    let status = p.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}\n{}", p.transcript());
    let listed = env
        .gw
        .client("orders")
        .get("/v1/services/orders/instances")
        .await;
    assert_eq!(listed.json["instances"], json!([]), "{}", listed.text);
}
