//! A client program run against a live gateway (the examples, the client libraries' drivers, the
//! native-discovery programs): its stdout lines arrive as they are printed, both streams are kept
//! for failure messages, and it is killed when dropped. Also the client certificate files such a
//! program reads.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use twinreg::certs::ClientNames;

use crate::Env;

/// How long a line may take to come.
pub const LINE_WAIT: Duration = Duration::from_secs(30);

pub struct Child {
    /// What the program is, for messages ("the example", "the Go driver").
    name: &'static str,
    child: std::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Lines read but not matched yet: a program's threads print concurrently, so lines come in
    /// either order.
    unmatched: VecDeque<String>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Child {
    pub fn spawn(name: &'static str, mut cmd: Command) -> Child {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
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
        Child {
            name,
            child,
            lines,
            unmatched: VecDeque::new(),
            stdout,
            stderr,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn transcript(&self) -> String {
        format!(
            "--- {name} stdout ---\n{}\n--- {name} stderr ---\n{}",
            self.stdout.lock().unwrap().join("\n"),
            self.stderr.lock().unwrap(),
            name = self.name
        )
    }

    /// The first stdout line not matched yet that satisfies `pred`, waiting for it if need be
    /// (at most [`LINE_WAIT`]); the lines before it stay available to later calls.
    pub async fn expect_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        if let Some(i) = self.unmatched.iter().position(|l| pred(l)) {
            return self.unmatched.remove(i).unwrap();
        }
        let deadline = tokio::time::Instant::now() + LINE_WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) if pred(&line) => return line,
                Ok(Some(line)) => self.unmatched.push_back(line),
                Ok(None) => panic!(
                    "{} closed its output before printing {what}\n{}",
                    self.name,
                    self.transcript()
                ),
                Err(_) => panic!(
                    "timed out after {LINE_WAIT:?} waiting for {} to print {what}\n{}",
                    self.name,
                    self.transcript()
                ),
            }
        }
    }

    /// The exact line `want`.
    pub async fn expect(&mut self, want: &str) {
        self.expect_line(&format!("`{want}`"), |l| l == want).await;
    }

    /// The line starting with `prefix`, which must be exactly `expected`.
    pub async fn expect_exact(&mut self, prefix: &str, expected: &str) {
        let line = self
            .expect_line(&format!("a `{prefix}` line"), |l| l.starts_with(prefix))
            .await;
        assert_eq!(line, expected, "{}", self.transcript());
    }

    /// Every line not matched yet, without waiting.
    pub fn drain(&mut self) -> Vec<String> {
        let mut out: Vec<String> = self.unmatched.drain(..).collect();
        while let Ok(line) = self.lines.try_recv() {
            out.push(line);
        }
        out
    }

    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "{} exited early ({status})\n{}",
                self.name,
                self.transcript()
            );
        }
    }

    /// Its exit status, within `limit` (of a SIGTERM).
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "{} did not exit within {limit:?} of SIGTERM\n{}",
                    self.name,
                    self.transcript()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A client's keep-alive loop holds its instance well past its TTL: `ttl + 3` seconds on, the
/// program still runs, its etcd key's lease was renewed and its Consul check passes, and it did
/// not register again meanwhile (no line starting `registered `). The lines printed meanwhile.
pub async fn kept_alive_past_ttl(
    env: &Env,
    ex: &mut Child,
    service: &str,
    id: &str,
    ttl: u64,
) -> Vec<String> {
    tokio::time::sleep(Duration::from_secs(ttl + 3)).await;
    ex.assert_running();
    let (_, lease) = env
        .etcd_record(service, id)
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
    let check = env
        .consul
        .agent_checks()
        .await
        .remove(&format!("service:{service}.{id}"))
        .expect("the instance's check in Consul");
    assert_eq!(check["Status"], "passing", "{check}\n{}", ex.transcript());
    let seen = ex.drain();
    let again: Vec<&String> = seen
        .iter()
        .filter(|l| l.starts_with("registered "))
        .collect();
    assert!(
        again.is_empty(),
        "kept alive by registering again, not by heartbeats: {again:?}\n{}",
        ex.transcript()
    );
    seen
}

/// Writes the gateway's CA (`ca.pem`) and a client certificate (`{service}.pem`) and key
/// (`{service}-key.pem`, mode 0600) whose CN is `service` into `dir`: (ca, cert, key).
pub fn write_certs(env: &Env, dir: &Path, service: &str) -> (PathBuf, PathBuf, PathBuf) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let id = env.gw.issue(&ClientNames::cn(service));
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join(format!("{service}.pem")),
        dir.join(format!("{service}-key.pem")),
    );
    std::fs::write(&ca, &env.gw.ca.cert_pem).unwrap();
    std::fs::write(&cert, &id.cert_pem).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key)
        .unwrap()
        .write_all(id.key_pem.as_bytes())
        .unwrap();
    (ca, cert, key)
}

/// `go` with the environment of an offline build: no module downloads, the local toolchain, a
/// build cache under the target directory, no cgo; GOPATH mode with `gopath` when given.
pub fn go(args: &[&str], dir: &Path, gopath: Option<&str>) -> std::process::Output {
    let go = testkit::find_binary("GO_BIN", "go").unwrap_or_else(|| {
        panic!(
            "`go` is not on PATH (nor set in GO_BIN): run scripts/setup.sh --test, which \
             installs Debian's golang-go"
        )
    });
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go");
    let mut cmd = Command::new(go);
    cmd.args(args)
        .current_dir(dir)
        .env("GOCACHE", cache.join("cache"))
        .env("GOFLAGS", "")
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0");
    match gopath {
        Some(p) => cmd.env("GO111MODULE", "off").env("GOPATH", p),
        None => cmd.env("GOPATH", cache.join("path")),
    };
    let out = cmd.output().expect("running go");
    assert!(
        out.status.success(),
        "go {args:?} in {} failed ({}):\n{}{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `<prefix> index=N` with N > 0: a client program's line about a list it read.
pub fn with_index(line: &str, prefix: &str) -> bool {
    line.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix(" index="))
        .and_then(|n| n.parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

/// The instance a client program registers, as both registries must hold it.
pub struct Registration {
    pub service: &'static str,
    pub id: &'static str,
    pub address: &'static str,
    pub port: u16,
    pub ttl: u64,
    pub tags: Value,
    pub meta: Value,
}

/// Waits until both registries hold `r` as the program registered it (read directly, not
/// through the gateway).
pub async fn wait_registered_in_both(env: &Env, what: &str, r: &Registration) {
    testkit::eventually(Duration::from_secs(10), what, || async {
        let (value, lease) = env.etcd_record(r.service, r.id).await?;
        let consul = env.consul_service(r.service, r.id).await?;
        assert_eq!(value["address"], r.address);
        assert_eq!(value["port"], r.port);
        assert_eq!(value["ttl_seconds"], r.ttl);
        assert_eq!(value["tags"], r.tags);
        assert_eq!(value["meta"], r.meta);
        assert_ne!(lease, 0);
        assert_eq!(consul["Port"], r.port);
        Some(())
    })
    .await;
}
