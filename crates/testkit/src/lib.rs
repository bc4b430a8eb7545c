//! What twinreg's end-to-end tests share: real servers on free loopback ports, with certificates
//! generated at test time, and the helpers to drive and judge them.
//!
//! - [`process`]: the one way a test runs a server process (output kept, freeze, thaw, kill,
//!   killed on drop); [`binaries`]: the workspace's own binaries, built and found through cargo.
//! - [`etcd`], [`cluster`] (three members), [`consul`] (real when on PATH / `CONSUL_BIN`, else
//!   mini-consul): the registries. [`gateway`]: twinreg in-process on port 0; [`serve`]: the
//!   twinreg binary as a process.
//! - [`client`] (REST over mutual TLS), [`grpc`] (the tonic client), [`proxy`] (a loopback fault
//!   proxy that delays, cuts and blackholes a link).
//! - [`fleet`] (instances heartbeating through faults, each answer judged) and [`truth`] (what
//!   etcd and Consul really hold, read directly), for the resilience scenarios.
//! - [`compose`]: readers of the deployment files (docker-compose.yml, HAProxy, HCL, certificates).
//! - [`eventually`], [`metric`], [`free_port`], [`find_binary`].

pub mod binaries;
pub mod client;
pub mod cluster;
pub mod compose;
pub mod consul;
pub mod etcd;
pub mod etcd_auth;
pub mod fleet;
pub mod gateway;
pub mod grpc;
pub mod process;
pub mod proxy;
pub mod secrets;
pub mod serve;
pub mod truth;

pub use process::signal;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

/// A free loopback port (bound then released; good enough on a test machine).
/// A directory for a registry's data, in memory (`/dev/shm`) where the machine has it: etcd
/// fsyncs its log on every write, and with many suites starting etcds at once beside a busy
/// build, fsyncs on disk kept etcd from answering for over a minute. (Data survives a SIGKILL of
/// the process either way; nothing here outlives the machine.)
pub fn data_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    let in_memory = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("twinreg-test-")
            .tempdir_in(shm)
            .ok()
    } else {
        None
    };
    match in_memory {
        Some(d) => d,
        None => tempfile::tempdir().expect("a temporary directory"),
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("binding a loopback port")
        .local_addr()
        .unwrap()
        .port()
}

/// Finds a binary from an env var or PATH.
pub fn find_binary(env: &str, name: &str) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
        panic!("{env}={} does not point to a file", p.display());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Polls `f` until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The sum of every sample of metric `name` whose labels include all of `labels`, from
/// Prometheus text.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Replaces a file the way deploy tools do: write beside it, then rename over it.
pub fn replace_file(path: &std::path::Path, content: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
