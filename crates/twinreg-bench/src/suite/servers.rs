//! The servers a suite run measures, each a child process on loopback ports of its own, logging
//! into the run's directory, and stopped (thawed first) when the run ends, however it ends.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::SuiteError;

/// The ports a run uses: none collides with `scripts/dev.sh` or another test.
pub const ETCD_PORT: u16 = 23790;
pub const ETCD_PEER_PORT: u16 = 23800;
/// etcd's `/metrics` in plain HTTP (`--listen-metrics-urls`), read to count the requests it
/// serves.
pub const ETCD_METRICS_PORT: u16 = 23810;
pub const CONSUL_PORT: u16 = 18500;
pub const ECHO_PORT: u16 = 19443;
/// twinreg replicas: (public, admin).
pub const A: (u16, u16) = (18443, 19090);
pub const B: (u16, u16) = (18444, 19091);
pub const C: (u16, u16) = (18445, 19092);

pub fn all_ports() -> Vec<u16> {
    vec![
        ETCD_PORT,
        ETCD_PEER_PORT,
        ETCD_METRICS_PORT,
        CONSUL_PORT,
        ECHO_PORT,
        A.0,
        A.1,
        B.0,
        B.1,
        C.0,
        C.1,
    ]
}

/// Refuses to start when a port is taken (an earlier run still going?).
pub fn check_ports_free() -> Result<(), SuiteError> {
    for p in all_ports() {
        if std::net::TcpStream::connect(("127.0.0.1", p)).is_ok() {
            return Err(SuiteError::Setup(format!(
                "port {p} is in use (an earlier bench still running?)"
            )));
        }
    }
    Ok(())
}

/// One server process, killed (and thawed first if frozen) on drop.
pub struct Server {
    child: Child,
    frozen: bool,
}

impl Server {
    pub fn spawn(name: &str, mut cmd: Command, logs: &Path) -> Result<Server, SuiteError> {
        let log = File::create(logs.join(format!("{name}.log")))
            .map_err(|e| SuiteError::Setup(format!("creating {name}.log: {e}")))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .map_err(|e| SuiteError::Setup(e.to_string()))?,
            )
            .stderr(log)
            .spawn()
            .map_err(|e| {
                SuiteError::Setup(format!("starting {name} ({:?}): {e}", cmd.get_program()))
            })?;
        Ok(Server {
            child,
            frozen: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status();
    }

    /// SIGSTOP: it keeps its sockets but answers nothing.
    pub fn freeze(&mut self) {
        self.signal("-STOP");
        self.frozen = true;
    }

    pub fn thaw(&mut self) {
        self.signal("-CONT");
        self.frozen = false;
    }

    /// The kernel's resident-set size and its peak, in MiB.
    pub fn rss_mib(&self) -> Option<(f64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let kib = |field: &str| -> Option<f64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        Some((kib("VmRSS:")? / 1024.0, kib("VmHWM:")? / 1024.0))
    }

    pub fn stop(mut self) {
        self.end();
    }

    fn end(&mut self) {
        if self.frozen {
            self.thaw();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.end();
    }
}

/// Waits until `url` answers 2xx (curl, for the mutual-TLS ones), for at most `limit`.
pub fn wait_ready(
    url: &str,
    curl_args: &[String],
    what: &str,
    logs: &Path,
    limit: Duration,
) -> Result<Duration, SuiteError> {
    let start = Instant::now();
    while start.elapsed() < limit {
        let ok = Command::new("curl")
            .args(["-fsS", "--max-time", "2", "-o", "/dev/null"])
            .args(curl_args)
            .arg(url)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(SuiteError::Setup(format!(
        "{what} did not come up within {limit:?}; see {}",
        logs.join(format!("{what}.log")).display()
    )))
}

/// A binary from `env`, else on PATH.
pub fn find(env: &str, name: &str) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// A binary of this workspace, built beside this one (`cargo build --release` builds all three).
pub fn sibling(name: &str) -> Result<PathBuf, SuiteError> {
    let me = std::env::current_exe().map_err(|e| SuiteError::Setup(e.to_string()))?;
    let p = me.with_file_name(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(SuiteError::Setup(format!(
            "{} is not built; run `cargo build --release --workspace` (scripts/bench.sh does)",
            p.display()
        )))
    }
}
