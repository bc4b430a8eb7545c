//! The client examples in `examples/` (Python and Go, standard library only), each run as a child
//! process against a live gateway: it registers, long-polls a peer service and prints each change,
//! keeps itself alive past its TTL by heartbeating, registers again when the gateway forgets it,
//! and deregisters on SIGTERM.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;
use tokio::sync::mpsc;
use twinreg::certs::ClientNames;

use crate::{Env, path};
use testkit::{eventually, find_binary, signal};

/// The example's own service and instance; its certificate's CN names the service.
const SERVICE: &str = "orders";
const ID: &str = "ord-1";
const PEER: &str = "billing";
const TTL: u64 = 5;
const LINE_WAIT: Duration = Duration::from_secs(30);

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
    let go = require("GO_BIN", "go", "golang-go");
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go");
    let bin = out.join("twinreg-client");
    let result = Command::new(go)
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/go"))
        .env("GOCACHE", cache.join("cache"))
        .env("GOPATH", cache.join("path"))
        .env("GOFLAGS", "")
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .output()
        .expect("running go build");
    assert!(
        result.status.success(),
        "go build of examples/go failed ({}):\n{}",
        result.status,
        String::from_utf8_lossy(&result.stderr)
    );
    bin
}

/// Writes the gateway's CA and a client certificate and key for [`SERVICE`] into `dir`.
fn write_certs(env: &Env, dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let id = env.gw.issue(&ClientNames::cn(SERVICE));
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join(format!("{SERVICE}.pem")),
        dir.join(format!("{SERVICE}-key.pem")),
    );
    std::fs::write(&ca, &env.gw.ca.cert_pem).unwrap();
    std::fs::write(&cert, &id.cert_pem).unwrap();
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key)
            .unwrap()
            .write_all(id.key_pem.as_bytes())
            .unwrap();
    }
    (ca, cert, key)
}

/// A running example: stdout lines arrive on a channel as they are printed; both streams are
/// kept for failure messages.
struct Running {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Lines read but not matched yet: the watch and the registration run concurrently, so
    /// their lines come in either order.
    unmatched: VecDeque<String>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the example");
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let out = BufReader::new(child.stdout.take().unwrap());
        let seen = stdout.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                seen.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let kept = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                kept.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Running {
            child,
            lines,
            unmatched: VecDeque::new(),
            stdout,
            stderr,
        }
    }

    fn transcript(&self) -> String {
        format!(
            "--- example stdout ---\n{}\n--- example stderr ---\n{}",
            self.stdout.lock().unwrap().join("\n"),
            self.stderr.lock().unwrap()
        )
    }

    /// The first stdout line not matched yet that satisfies `pred`, waiting for it if need be
    /// (at most [`LINE_WAIT`]); the lines before it stay available to later calls.
    async fn expect_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        if let Some(i) = self.unmatched.iter().position(|l| pred(l)) {
            return self.unmatched.remove(i).unwrap();
        }
        let deadline = tokio::time::Instant::now() + LINE_WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) if pred(&line) => return line,
                Ok(Some(line)) => self.unmatched.push_back(line),
                Ok(None) => panic!(
                    "the example closed its output before printing {what}\n{}",
                    self.transcript()
                ),
                Err(_) => panic!(
                    "timed out after {LINE_WAIT:?} waiting for the example to print {what}\n{}",
                    self.transcript()
                ),
            }
        }
    }

    /// Every line not matched yet, without waiting.
    fn drain(&mut self) -> Vec<String> {
        let mut out: Vec<String> = self.unmatched.drain(..).collect();
        while let Ok(line) = self.lines.try_recv() {
            out.push(line);
        }
        out
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the example exited early ({status})\n{}", self.transcript());
        }
    }

    async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = &mut self.child;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "the example did not exit within {limit:?} of SIGTERM\n{}",
                    self.transcript()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `peer billing: 2 instances [bill-1 10.0.0.5:8080, bill-2 10.0.0.6:8081] index=N`, N > 0.
fn is_peer_line(line: &str, listing: &str) -> bool {
    line.strip_prefix(&format!("peer {PEER}: {listing} index="))
        .and_then(|n| n.parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

/// Both registries hold the example's instance (read directly, not through the gateway).
async fn wait_registered_in_both(env: &Env, what: &str) {
    eventually(Duration::from_secs(10), what, || async {
        let (value, lease) = env.etcd_record(SERVICE, ID).await?;
        let consul = env.consul_service(SERVICE, ID).await?;
        assert_eq!(value["address"], "127.0.0.1");
        assert_eq!(value["port"], 9000);
        assert_eq!(value["ttl_seconds"], TTL);
        assert_eq!(value["tags"], json!(["example"]));
        assert_eq!(value["meta"], json!({"lang": "any"}));
        assert_ne!(lease, 0);
        assert_eq!(consul["Port"], 9000);
        Some(())
    })
    .await;
}

/// The whole scenario, for an example started by `cmd` (flags and variables are added here).
async fn exercise(mut cmd: Command) {
    let env = Env::start().await;
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = write_certs(&env, certs.path());

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
    let mut ex = Running::spawn(cmd);

    ex.expect_line("its registered line", |l| {
        l.starts_with(&format!("registered {SERVICE}/{ID} ttl={TTL}s "))
    })
    .await;
    wait_registered_in_both(&env, "the example's instance in etcd and Consul").await;

    // The peer as it was at start, then a second peer instance: printed by the long poll.
    ex.expect_line("the peer's first instance", |l| {
        is_peer_line(l, "1 instances [bill-1 10.0.0.5:8080]")
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
        is_peer_line(
            l,
            "2 instances [bill-1 10.0.0.5:8080, bill-2 10.0.0.6:8081]",
        )
    })
    .await;

    // Heartbeats keep it alive well past its TTL, without needing to register again.
    tokio::time::sleep(Duration::from_secs(TTL + 3)).await;
    ex.assert_running();
    let (_, lease) = env
        .etcd_record(SERVICE, ID)
        .await
        .unwrap_or_else(|| panic!("lapsed in etcd despite heartbeats\n{}", ex.transcript()));
    let remaining = env
        .etcd
        .client()
        .await
        .lease_time_to_live(lease, None)
        .await
        .unwrap()
        .ttl();
    assert!(
        remaining > 0,
        "etcd lease not renewed ({remaining})\n{}",
        ex.transcript()
    );
    assert!(
        env.consul_service(SERVICE, ID).await.is_some(),
        "gone from Consul\n{}",
        ex.transcript()
    );
    let check = env
        .consul
        .agent_checks()
        .await
        .remove(&format!("service:{SERVICE}.{ID}"))
        .expect("the instance's TTL check in Consul");
    assert_eq!(check["Status"], "passing", "{check}\n{}", ex.transcript());
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
    let again: Vec<String> = ex
        .drain()
        .into_iter()
        .filter(|l| l.starts_with("registered "))
        .collect();
    assert!(
        again.is_empty(),
        "kept alive by re-registering, not by heartbeats: {again:?}\n{}",
        ex.transcript()
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
    wait_registered_in_both(&env, "the instance back in etcd and Consul").await;

    // SIGTERM: it deregisters, says so, and exits 0; the instance is gone from both registries.
    signal(ex.child.id(), Signal::SIGTERM);
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
