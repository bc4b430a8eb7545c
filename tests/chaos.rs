//! A chaos run: simulated instances register, heartbeat and sometimes deregister through twinreg
//! while the registries are killed, frozen, wiped and restarted at random. At the end every
//! instance still alive must be in both registries and nothing deregistered may remain.
//!
//! Small in CI (`cargo test --test chaos`); `scripts/chaos.sh` runs it longer and larger through
//! `CHAOS_INSTANCES`, `CHAOS_SECONDS` and `CHAOS_SEED`. Loopback only, bounded in time and count.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::sync::Mutex;

use testkit::consul::Consul;
use testkit::etcd::Etcd;
use testkit::gateway::{Gateway, Options};

const TTL: u64 = 6;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the run knows about each instance id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Alive,
    Deregistered,
}

#[derive(Default)]
struct Stats {
    fates: BTreeMap<String, Fate>,
    worst_register: Duration,
    registers: u64,
    heartbeats: u64,
    unavailable: u64,
    faults: Vec<&'static str>,
    /// The first few 503 answers, to tell what the registries said.
    unavailable_samples: Vec<String>,
}

impl Stats {
    fn unavailable(&mut self, what: &str, body: &str) {
        self.unavailable += 1;
        if self.unavailable_samples.len() < 5 {
            self.unavailable_samples.push(format!("{what}: {body}"));
        }
    }
}

/// Registers until some registry accepts, retrying 503s.
async fn register(
    c: &testkit::client::TestClient,
    path: &str,
    body: &serde_json::Value,
    stats: &Mutex<Stats>,
) {
    loop {
        let start = Instant::now();
        let r = c.put_json(path, body).await;
        let took = start.elapsed();
        let mut s = stats.lock().await;
        if r.status == 200 {
            s.registers += 1;
            s.worst_register = s.worst_register.max(took);
            return;
        }
        assert_eq!(r.status, 503, "register: {}", r.text);
        s.unavailable("register", &r.text);
        drop(s);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One simulated instance slot: registers an id, heartbeats it at ttl/3, and now and then (while
/// faults run) deregisters it and registers a fresh id, so registers happen during faults too.
async fn instance_loop(
    gw: Arc<Gateway>,
    slot: usize,
    seed: u64,
    deregister_chance: f64,
    stats: Arc<Mutex<Stats>>,
    running: Arc<AtomicBool>,
) {
    let c = gw.client("payments");
    let body = json!({"address": "10.1.0.1", "port": 8080, "ttl_seconds": TTL});
    let mut rng = StdRng::seed_from_u64(seed);
    for round in 0.. {
        let id = format!("s{slot}r{round}");
        let path = format!("/v1/services/payments/instances/{id}");
        register(&c, &path, &body, &stats).await;
        stats.lock().await.fates.insert(id.clone(), Fate::Alive);
        loop {
            tokio::time::sleep(Duration::from_secs(TTL / 3)).await;
            if running.load(Ordering::SeqCst) && rng.random_bool(deregister_chance) {
                // Deregister until a registry confirms it; then this id is done.
                loop {
                    let r = c.delete(&path).await;
                    if r.status == 200 {
                        stats
                            .lock()
                            .await
                            .fates
                            .insert(id.clone(), Fate::Deregistered);
                        break;
                    }
                    assert_eq!(r.status, 503, "deregister: {}", r.text);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                break;
            }
            let r = c.put(&format!("{path}/heartbeat")).await;
            match r.status {
                200 => stats.lock().await.heartbeats += 1,
                404 => register(&c, &path, &body, &stats).await,
                503 => stats.lock().await.unavailable("heartbeat", &r.text),
                other => panic!("heartbeat answered {other}: {}", r.text),
            }
        }
    }
}

/// One random fault, held for a random 1–3 s, then healed.
async fn inject(rng: &mut StdRng, etcd: &mut Etcd, consul: &mut Consul) -> &'static str {
    let hold = Duration::from_millis(rng.random_range(1000..3000));
    match rng.random_range(0..5) {
        0 => {
            etcd.kill();
            tokio::time::sleep(hold).await;
            etcd.restart().await;
            "etcd killed"
        }
        1 => {
            testkit::signal(etcd.pid(), Signal::SIGSTOP);
            tokio::time::sleep(hold).await;
            testkit::signal(etcd.pid(), Signal::SIGCONT);
            "etcd frozen"
        }
        2 => {
            etcd.kill();
            std::fs::remove_dir_all(etcd.dir.path().join("data")).ok();
            tokio::time::sleep(hold).await;
            etcd.restart().await;
            "etcd wiped"
        }
        3 => {
            consul.kill();
            tokio::time::sleep(hold).await;
            consul.restart().await;
            "consul killed (restarts empty)"
        }
        _ => {
            testkit::signal(consul.pid(), Signal::SIGSTOP);
            tokio::time::sleep(hold).await;
            testkit::signal(consul.pid(), Signal::SIGCONT);
            "consul frozen"
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_loses_nothing_and_leaves_no_zombies() {
    let n = env_or("CHAOS_INSTANCES", 12) as usize;
    let seconds = env_or("CHAOS_SECONDS", 25);
    let seed = env_or("CHAOS_SEED", rand::random::<u32>() as u64);
    eprintln!("chaos: {n} instances, {seconds} s of faults, seed {seed}");

    let (mut etcd, mut consul) = tokio::join!(Etcd::start(), Consul::start());
    let opts = Options {
        timeout_ms: Some(1000),
        extra_toml: "[anti_entropy]\ninterval = \"2s\"\n[breaker]\nopen_for = \"500ms\"\n".into(),
        ..Default::default()
    };
    let gw = Arc::new(Gateway::start_with(&etcd, &consul, opts).await);
    let stats = Arc::new(Mutex::new(Stats::default()));
    let running = Arc::new(AtomicBool::new(true));
    let mut tasks = Vec::new();
    // About a third of the slots deregister (and re-register as a new id) once per run.
    let beats = (seconds / (TTL / 3)).max(1) as f64;
    let deregister_chance = (0.35 / beats).min(0.05);
    for i in 0..n {
        tasks.push(tokio::spawn(instance_loop(
            gw.clone(),
            i,
            seed.wrapping_add(i as u64),
            deregister_chance,
            stats.clone(),
            running.clone(),
        )));
    }

    let mut rng = StdRng::seed_from_u64(seed);
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        let fault = inject(&mut rng, &mut etcd, &mut consul).await;
        stats.lock().await.faults.push(fault);
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..2000))).await;
    }
    // Faults over: instances keep heartbeating while the registries converge.
    running.store(false, Ordering::SeqCst);

    let key_of = |id: &str| format!("/services/payments/{id}");
    let settle = Instant::now();
    let (lost, zombies) = loop {
        let fates = stats.lock().await.fates.clone();
        let in_etcd: Vec<String> = etcd
            .dump("/services/payments/")
            .await
            .into_iter()
            .map(|(k, _, _)| k)
            .collect();
        let in_consul = consul.agent_services().await;
        let mut lost = 0;
        let mut zombies = 0;
        let mut where_ = Vec::new();
        for (id, fate) in &fates {
            let e = in_etcd.contains(&key_of(id));
            let c = in_consul.contains_key(&format!("payments.{id}"));
            match fate {
                Fate::Alive if !(e && c) => {
                    lost += 1;
                    where_.push(format!("{id} lost (etcd {e}, consul {c})"));
                }
                Fate::Deregistered if e || c => {
                    zombies += 1;
                    where_.push(format!("{id} deregistered but left (etcd {e}, consul {c})"));
                }
                _ => {}
            }
        }
        if !where_.is_empty() && settle.elapsed() > Duration::from_secs(85) {
            eprintln!("chaos: not converged: {where_:?}");
        }
        if (lost == 0 && zombies == 0) || settle.elapsed() > Duration::from_secs(90) {
            break (lost, zombies);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let converged_in = settle.elapsed();
    for t in tasks {
        t.abort();
    }
    let s = stats.lock().await;
    let alive = s.fates.values().filter(|f| **f == Fate::Alive).count();
    let deregistered = s.fates.len() - alive;
    println!(
        "chaos report: instances={n} seconds={seconds} seed={seed} faults={} registers={} heartbeats={} \
         unavailable_answers={} alive={alive} deregistered={deregistered} lost={lost} zombies={zombies} \
         worst_register_ms={} converged_after_ms={}",
        s.faults.len(),
        s.registers,
        s.heartbeats,
        s.unavailable,
        s.worst_register.as_millis(),
        converged_in.as_millis(),
    );
    println!("chaos faults: {:?}", s.faults);
    for sample in &s.unavailable_samples {
        println!("chaos 503: {sample}");
    }
    assert_eq!(
        lost, 0,
        "live instances missing from a registry after the run"
    );
    assert_eq!(
        zombies, 0,
        "deregistered instances still registered after the run"
    );
}
