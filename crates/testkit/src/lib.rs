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

/// A loopback port nothing listens on, below the kernel's ephemeral range. A port from that
/// range (what binding port 0 gives) can be taken as the source port of any outgoing connection
/// while the server meant to hold it is down: a test restarting etcd on its ports failed with
/// "address already in use" that way. Ports are handed out in turn from a random start, so the
/// test processes running at once rarely try the same one, and each is checked free.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let end = ephemeral_start().max(FIRST + 1_000);
    let span = end - FIRST;
    let _ = NEXT.compare_exchange(
        u32::MAX,
        rand::random::<u32>() % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let port = FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = u16::try_from(port).expect("below 65536");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {FIRST} and {end}");
}

/// The first port of the kernel's ephemeral range (`net.ipv4.ip_local_port_range`; Linux's
/// default 32768 when it cannot be read).
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
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
