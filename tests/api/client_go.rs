//! The Go client library (clients/go, module twinreg.dev/go) against a live gateway, through its
//! command twinreg-keepalive: a refused request reports twinreg's code and field, KeepAlive
//! registers, registers again when the gateway forgets the instance, and deregisters on SIGTERM;
//! the gRPC Watch (generated stubs in clients/go/twinregv1) sees a peer appear. Built offline in
//! GOPATH mode against Debian's grpc-go and protobuf sources.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use testkit::find_binary;
use twinreg::certs::ClientNames;

use crate::{Env, path};

const DEBIAN_GOPATH: &str = "/usr/share/gocode";

fn build(out: &Path) -> PathBuf {
    let go = find_binary("GO_BIN", "go").unwrap_or_else(|| {
        panic!("`go` is not on PATH (nor set in GO_BIN): run scripts/setup.sh --test, which installs Debian's golang-go")
    });
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
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go");
    for args in [
        vec!["vet", "./..."],
        vec![
            "build",
            "-o",
            bin.to_str().unwrap(),
            "./cmd/twinreg-keepalive",
        ],
    ] {
        let result = Command::new(&go)
            .args(&args)
            .current_dir(src.join("go"))
            .env("GO111MODULE", "off")
            .env(
                "GOPATH",
                format!("{}:{DEBIAN_GOPATH}", gopath.to_str().unwrap()),
            )
            .env("GOCACHE", cache.join("cache"))
            .env("GOFLAGS", "")
            .env("GOPROXY", "off")
            .env("GOTOOLCHAIN", "local")
            .env("CGO_ENABLED", "0")
            .output()
            .expect("running go");
        assert!(
            result.status.success(),
            "go {args:?} of clients/go failed ({}):\n{}{}",
            result.status,
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        );
    }
    bin
}

struct Program {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Program {
    /// Waits (20 s at most) for a line starting with `prefix`; the lines before it are kept.
    fn expect(&mut self, prefix: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => panic!("no line {prefix:?}; printed so far: {:?}", self.seen),
            }
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for a line without holding up the runtime's other tasks (the gateway runs in it).
fn expect(p: &mut Program, prefix: &str) -> String {
    tokio::task::block_in_place(|| p.expect(prefix))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_go_library_keeps_an_instance_alive_reports_refusals_and_watches_over_grpc() {
    let out = tempfile::tempdir().unwrap();
    let bin = tokio::task::spawn_blocking({
        let out = out.path().to_owned();
        move || build(&out)
    })
    .await
    .unwrap();
    let env = Env::start().await;
    let id = env.gw.issue(&ClientNames::cn("orders"));
    let dir = out.path();
    std::fs::write(dir.join("ca.pem"), &env.gw.ca.cert_pem).unwrap();
    std::fs::write(dir.join("orders.pem"), &id.cert_pem).unwrap();
    std::fs::write(dir.join("orders-key.pem"), &id.key_pem).unwrap();
    let mut child = Command::new(&bin)
        .arg(format!("-url=https://127.0.0.1:{}", env.gw.addr.port()))
        .arg(format!("-cert={}", dir.join("orders.pem").display()))
        .arg(format!("-key={}", dir.join("orders-key.pem").display()))
        .arg(format!("-ca={}", dir.join("ca.pem").display()))
        .args([
            "-service=orders",
            "-id=ord-1",
            "-address=127.0.0.1",
            "-port=9000",
        ])
        .args(["-ttl=5", "-peer=billing", "-check"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting twinreg-keepalive");
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut p = Program {
        child,
        lines,
        seen: Vec::new(),
    };

    // A refusal carries twinreg's code and field, not a bare status.
    assert_eq!(expect(&mut p, "error").trim(), "error invalid_request port");
    assert_eq!(expect(&mut p, "error").trim(), "error forbidden");
    expect(&mut p, "registered orders/ord-1");
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
    let event = expect(&mut p, "event billing ADDED");
    assert!(event.contains("bill-1"), "{event}");

    // Forgotten behind its back: the next heartbeat's 404 makes it register again.
    let r = env
        .gw
        .client("orders")
        .delete(&path("orders", "ord-1"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    expect(&mut p, "registered orders/ord-1");

    // SIGTERM: deregistered, exit 0.
    kill(Pid::from_raw(p.child.id() as i32), Signal::SIGTERM).unwrap();
    expect(&mut p, "deregistered orders/ord-1");
    let status = tokio::task::block_in_place(|| p.child.wait()).unwrap();
    assert!(status.success(), "{status}");
    let listed = env
        .gw
        .client("orders")
        .get("/v1/services/orders/instances")
        .await;
    assert_eq!(listed.json["instances"], json!([]), "{}", listed.text);
}
