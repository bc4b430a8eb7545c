//! `twinreg-bench liveness`: what shared liveness promises, measured on live servers.
//!
//! The instances (registered beforehand through `--url`) heartbeat at ttl/3 through that
//! replica; then the replica is SIGKILLed (`--kill-pid`) and the heartbeats move to
//! `--failover-url`, as a load balancer moves them. No instance may be lost: etcd, watched on
//! the service's prefix from the start, must show no DELETE of one, and every key must still be
//! there after `--after-kill` (longer than the dead replica's leases). Then the heartbeats stop,
//! and each instance's expiry (its key's DELETE) is timed against its own last acknowledged
//! heartbeat plus its TTL.
//!
//! Prints one JSON line: leases held in etcd at the start, the heartbeats and errors of each
//! phase, the instances lost, and the expiry lateness (p50, p99, max, min, in ms) with the
//! instances that never expired.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use serde_json::json;

use crate::client::Target;
use crate::driver::{Schedule, Worker, drive};
use crate::run::{HttpWorker, Workload, workers};
use crate::workload::{InstanceId, Request};

#[derive(Args)]
pub struct LivenessArgs {
    /// The replica the instances are registered on and heartbeat first.
    #[arg(long)]
    url: String,
    /// The replica the heartbeats move to once the first one is killed.
    #[arg(long)]
    failover_url: String,
    /// The first replica's process, SIGKILLed between the two phases (none: no kill, the
    /// heartbeats just move).
    #[arg(long)]
    kill_pid: Option<u32>,
    #[arg(long)]
    ca: PathBuf,
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    /// etcd client URL, and its TLS files.
    #[arg(long)]
    etcd: String,
    #[arg(long)]
    etcd_ca: Option<PathBuf>,
    #[arg(long)]
    etcd_cert: Option<PathBuf>,
    #[arg(long)]
    etcd_key: Option<PathBuf>,
    /// twinreg's `[etcd] prefix`.
    #[arg(long, default_value = "/services")]
    prefix: String,
    #[arg(long, default_value = "bench")]
    service: String,
    #[arg(long, default_value_t = 1000)]
    instances: u64,
    /// The instances' TTL; they heartbeat every ttl/3.
    #[arg(long, default_value_t = 30)]
    ttl: u32,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    before_kill: Duration,
    #[arg(long, default_value = "40s", value_parser = humantime::parse_duration)]
    after_kill: Duration,
    /// How long past an instance's TTL its expiry is waited for before it counts as never
    /// expired.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    expiry_grace: Duration,
}

/// Records, per instance, when its last heartbeat was acknowledged (ms since the start + 1; 0 is
/// never).
struct Timed {
    inner: HttpWorker,
    acks: Arc<Vec<AtomicU64>>,
    t0: Instant,
}

impl Worker for Timed {
    async fn call(&mut self, request: Request) -> Result<(), String> {
        let result = self.inner.call(request).await;
        if let (Ok(()), Request::Heartbeat(i)) = (&result, request)
            && let Some(slot) = usize::try_from(i).ok().and_then(|i| self.acks.get(i))
        {
            let ms = u64::try_from(self.t0.elapsed().as_millis()).unwrap_or(u64::MAX);
            slot.store(ms + 1, Ordering::Relaxed);
        }
        result
    }
}

/// DELETEs seen on the prefix: the first one of each key, in ms since the start.
#[derive(Default)]
struct Deletes {
    first: Mutex<HashMap<String, u64>>,
    total: AtomicU64,
}

async fn connect(a: &LivenessArgs) -> Result<Client, String> {
    let options = crate::baseline::tls_options(
        a.etcd_ca.as_deref(),
        a.etcd_cert.as_deref().zip(a.etcd_key.as_deref()),
    )?;
    Client::connect([a.etcd.as_str()], options)
        .await
        .map_err(|e| format!("connecting to etcd at {}: {e}", a.etcd))
}

async fn keys(client: &mut Client, prefix: &str) -> Result<i64, String> {
    let r = client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .map_err(|e| format!("counting keys: {e}"))?;
    Ok(r.count())
}

fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

pub async fn run(a: LivenessArgs) -> Result<serde_json::Value, String> {
    if a.instances == 0 || a.concurrency == 0 || a.ttl < 3 {
        return Err("--instances and --concurrency must be at least 1, --ttl at least 3".into());
    }
    let t0 = Instant::now();
    let ms = move || u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut etcd = connect(&a).await?;
    let prefix = format!("{}/{}/", a.prefix, a.service);
    let leases = etcd
        .leases()
        .await
        .map_err(|e| format!("listing leases: {e}"))?
        .leases()
        .len();
    let keys_at_start = keys(&mut etcd, &prefix).await?;

    let deletes = Arc::new(Deletes::default());
    let mut stream = etcd
        .watch(prefix.as_str(), Some(WatchOptions::new().with_prefix()))
        .await
        .map_err(|e| format!("watching {prefix}: {e}"))?;
    let seen = deletes.clone();
    let watching = tokio::spawn(async move {
        while let Ok(Some(resp)) = stream.message().await {
            let at = ms();
            for ev in resp.events() {
                if ev.event_type() != EventType::Delete {
                    continue;
                }
                let Some(kv) = ev.kv() else { continue };
                seen.total.fetch_add(1, Ordering::Relaxed);
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                seen.first
                    .lock()
                    .expect("not poisoned")
                    .entry(key)
                    .or_insert(at);
            }
        }
    });

    let acks: Arc<Vec<AtomicU64>> = Arc::new((0..a.instances).map(|_| AtomicU64::new(0)).collect());
    let work = Arc::new(Workload::new(&a.service, a.instances, a.ttl, true, false));
    let open = |url: &str| {
        let target = Target::new(url, &a.ca, &a.cert, &a.key);
        let work = work.clone();
        let acks = acks.clone();
        let concurrency = a.concurrency;
        async move {
            let ws = workers(target?, work, concurrency).await?;
            Ok::<_, String>(
                ws.into_iter()
                    .map(|inner| Timed {
                        inner,
                        acks: acks.clone(),
                        t0,
                    })
                    .collect::<Vec<_>>(),
            )
        }
    };
    let first = open(&a.url).await?;
    let second = open(&a.failover_url).await?;
    let interval = Duration::from_secs(u64::from(a.ttl)) / 3;
    let paced = |duration| Schedule::Paced {
        interval,
        instances: a.instances,
        duration,
    };

    let n = a.instances;
    let beat = move |t: u64| Request::Heartbeat(t % n);
    let before = drive(
        first,
        paced(a.before_kill),
        beat,
        "heartbeat, first replica",
    )
    .await;
    let killed_at = ms();
    if let Some(pid) = a.kill_pid {
        let status = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .map_err(|e| format!("kill -KILL {pid}: {e}"))?;
        if !status.success() {
            return Err(format!("kill -KILL {pid} failed: {status}"));
        }
        eprintln!("liveness: SIGKILLed process {pid}");
    }
    let after = drive(
        second,
        paced(a.after_kill),
        beat,
        "heartbeat, after the kill",
    )
    .await;
    let stopped_at = ms();
    let deleted_while_beating = deletes.total.load(Ordering::Relaxed);
    let keys_after = keys(&mut etcd, &prefix).await?;

    // The heartbeats have stopped: wait for every instance's expiry, or its deadline.
    let last_ack = acks
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    let ttl_ms = u64::from(a.ttl) * 1000;
    let deadline = last_ack + ttl_ms + u64::try_from(a.expiry_grace.as_millis()).unwrap_or(0);
    let expected = usize::try_from(a.instances).unwrap_or(usize::MAX);
    while ms() < deadline && deletes.first.lock().expect("not poisoned").len() < expected {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    watching.abort();
    let first_delete = deletes.first.lock().expect("not poisoned").clone();
    let mut lateness: Vec<i64> = Vec::with_capacity(expected);
    let mut never_expired = 0u64;
    let mut never_acked = 0u64;
    for (i, ack) in acks.iter().enumerate() {
        let ack = ack.load(Ordering::Relaxed);
        if ack == 0 {
            never_acked += 1;
            continue;
        }
        let key = format!("{prefix}{}", InstanceId(i as u64));
        match first_delete.get(&key) {
            Some(&at) => lateness.push(at as i64 - (ack - 1 + ttl_ms) as i64),
            None => never_expired += 1,
        }
    }
    lateness.sort_unstable();
    Ok(json!({
        "target": "liveness",
        "instances": a.instances,
        "ttl_seconds": a.ttl,
        "etcd_leases_at_start": leases,
        "keys_at_start": keys_at_start,
        "killed": a.kill_pid.is_some(),
        "killed_at_ms": killed_at,
        "heartbeats_before_kill": before.recorder.ops(),
        "errors_before_kill": before.recorder.errors(),
        "heartbeats_after_kill": after.recorder.ops(),
        "errors_after_kill": after.recorder.errors(),
        "error_sample": after.recorder.sample().iter().chain(before.recorder.sample()).take(3).collect::<Vec<_>>(),
        "stopped_at_ms": stopped_at,
        "deleted_while_heartbeating": deleted_while_beating,
        "keys_after_kill": keys_after,
        "lost": (i64::try_from(a.instances).unwrap_or(i64::MAX) - keys_after).max(0),
        "never_acked": never_acked,
        "expired": lateness.len(),
        "never_expired": never_expired,
        "expiry_late_ms_p50": percentile(&lateness, 50.0),
        "expiry_late_ms_p99": percentile(&lateness, 99.0),
        "expiry_late_ms_max": lateness.last(),
        "expiry_late_ms_min": lateness.first(),
    }))
}
