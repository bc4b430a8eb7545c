//! What a suite run does, decided before it starts: sizes (each from its flag, its environment
//! variable, or the full or `--quick` default), the steps in order with an estimate of each, and
//! the progress line with the time left.

use std::time::{Duration, Instant};

use clap::Args;

use super::SuiteArgs;

/// Sizes of the runs; each may be given as a flag or as the environment variable named beside
/// it (as `scripts/bench.sh` always took them).
#[derive(Args, Debug, Clone, Default)]
pub struct Sizes {
    /// Workers (connections) of the closed-loop runs.
    #[arg(long, env = "CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// Instances the closed-loop runs rotate over.
    #[arg(long, env = "INSTANCES")]
    pub instances: Option<u64>,
    /// Instances of the concurrency-1 runs (registered one by one before a heartbeat run).
    #[arg(long, env = "C1_INSTANCES")]
    pub c1_instances: Option<u64>,
    #[arg(long, env = "WARMUP", value_parser = humantime::parse_duration)]
    pub warmup: Option<Duration>,
    /// (b): heartbeat runs per round against the echo server and twinreg, alternating; the
    /// ratio is the median of each pair's (the shared cores' noise moves slower than a pair).
    #[arg(long, env = "HEARTBEAT_PAIRS")]
    pub heartbeat_pairs: Option<u32>,
    /// (e): instances heartbeating every PACED_INTERVAL, with a TTL of three intervals.
    #[arg(long, env = "PACED_INSTANCES")]
    pub paced_instances: Option<u64>,
    #[arg(long, env = "PACED_INTERVAL", value_parser = humantime::parse_duration)]
    pub paced_interval: Option<Duration>,
    #[arg(long, env = "PACED_DURATION", value_parser = humantime::parse_duration)]
    pub paced_duration: Option<Duration>,
    /// (f): registers against a frozen etcd before the measurement, so its breaker opens.
    #[arg(long, env = "FREEZE_OPEN", value_parser = humantime::parse_duration)]
    pub freeze_open: Option<Duration>,
    /// (g): instances with a TTL of three RSS_INTERVALs, each heartbeating once per interval;
    /// then the replica holding them is killed under their heartbeats, and they stop.
    #[arg(long, env = "RSS_INSTANCES")]
    pub rss_instances: Option<u64>,
    #[arg(long, env = "RSS_INTERVAL", value_parser = humantime::parse_duration)]
    pub rss_interval: Option<Duration>,
    #[arg(long, env = "RSS_DURATION", value_parser = humantime::parse_duration)]
    pub rss_duration: Option<Duration>,
    /// Longest wait for breakers to close and repairs to drain between scenarios.
    #[arg(long, env = "SETTLE_MAX", value_parser = humantime::parse_duration)]
    pub settle_max: Option<Duration>,
}

/// What each line of the report is held against.
pub mod targets {
    pub const REGISTER_OPS: &str = "≥ 1.0×";
    pub const HEARTBEAT_OPS: &str = "≥ 0.9×";
    pub const NONE: &str = "—";
    pub const C1_P50: &str = "≤ baseline + 1 ms";
    pub const STARTUP: &str = "≤ 1000 ms";
    pub const OPS_PER_HEARTBEAT: &str = "≤ 0.01 each";
    pub const FROZEN: &str = "≤ 1.5×";
    pub const RSS: &str = "≤ 150 MiB";
    pub const LEASES: &str = "≤ replicas × TTL classes";
    pub const LOST: &str = "0 lost, 0 deleted";
    pub const EXPIRY: &str = "p99 ≤ ttl + 2 s";
    pub const HANDSHAKES: &str = "0 after start-up";
}

/// The resolved sizes and the steps of one run.
pub struct Plan {
    pub rounds: u32,
    pub duration: Duration,
    pub concurrency: usize,
    pub instances: u64,
    pub c1_instances: u64,
    pub warmup: Duration,
    pub heartbeat_pairs: u32,
    pub paced_instances: u64,
    pub paced_interval: Duration,
    pub paced_duration: Duration,
    pub freeze_open: Duration,
    pub rss_instances: u64,
    pub rss_interval: Duration,
    pub rss_duration: Duration,
    pub settle_max: Duration,
    pub idle: Option<Duration>,
    pub dir: Option<std::path::PathBuf>,
    /// The command line that reproduces this run, environment included.
    pub command: String,
}

impl Plan {
    pub fn new(a: &SuiteArgs) -> Plan {
        let q = a.quick;
        let s = &a.sizes;
        Plan {
            rounds: a.rounds.unwrap_or(pick(q, 3, 1)),
            duration: a.duration.unwrap_or(pick(q, secs(10), secs(2))),
            concurrency: s.concurrency.unwrap_or(64),
            instances: s.instances.unwrap_or(1000),
            c1_instances: s.c1_instances.unwrap_or(100),
            warmup: s
                .warmup
                .unwrap_or(pick(q, secs(1), Duration::from_millis(500))),
            heartbeat_pairs: s.heartbeat_pairs.unwrap_or(pick(q, 2, 5)).max(1),
            paced_instances: s.paced_instances.unwrap_or(pick(q, 10_000, 1000)),
            paced_interval: s.paced_interval.unwrap_or(secs(2)),
            paced_duration: s.paced_duration.unwrap_or(pick(q, secs(60), secs(10))),
            freeze_open: s.freeze_open.unwrap_or(pick(q, secs(5), secs(3))),
            rss_instances: s.rss_instances.unwrap_or(pick(q, 100_000, 5000)),
            rss_interval: s.rss_interval.unwrap_or(pick(q, secs(10), secs(5))),
            rss_duration: s.rss_duration.unwrap_or(pick(q, secs(30), secs(6))),
            settle_max: s.settle_max.unwrap_or(pick(q, secs(300), secs(120))),
            idle: a.idle,
            dir: a.dir.clone(),
            command: command_line(),
        }
    }

    /// Every step with its estimated length, in the order the run takes them.
    pub fn steps(&self) -> Vec<(String, Duration)> {
        let closed = self.warmup + self.duration;
        // A concurrency-1 heartbeat run registers its instances one by one first.
        let c1 = closed + Duration::from_millis(5 * self.c1_instances);
        let mut steps = vec![("start the servers".to_owned(), secs(5))];
        for r in 1..=self.rounds {
            for what in ["register c64 baseline", "register c64 twinreg"] {
                steps.push((format!("round {r}/{}: {what}", self.rounds), closed));
            }
            for pair in 1..=self.heartbeat_pairs {
                for what in ["heartbeat c64 echo", "heartbeat c64 twinreg"] {
                    steps.push((
                        format!(
                            "round {r}/{}: {what} ({pair}/{})",
                            self.rounds, self.heartbeat_pairs
                        ),
                        closed,
                    ));
                }
            }
            for what in [
                "register c1 baseline",
                "register c1 twinreg",
                "heartbeat c1 baseline",
                "heartbeat c1 twinreg",
            ] {
                steps.push((format!("round {r}/{}: {what}", self.rounds), c1));
            }
        }
        steps.push(("start-up to /readyz".into(), secs(2)));
        steps.push((
            "register p99, etcd frozen".into(),
            2 * closed + self.freeze_open + secs(5),
        ));
        // Registering at ~1,000/s, then settling for two intervals, then the measurement.
        let paced_setup = secs(self.paced_instances / 1000 + 1) + 3 * self.paced_interval;
        steps.push((
            format!(
                "registry ops per heartbeat ({} instances)",
                self.paced_instances
            ),
            paced_setup + self.paced_duration,
        ));
        steps.push((
            format!("RSS with {} instances", self.rss_instances),
            secs(self.rss_instances / 1500 + 1) + self.rss_duration,
        ));
        // Heartbeats before the kill, after it (two TTLs), then up to a TTL and a grace for the
        // expiries.
        steps.push((
            format!("replica killed under {} instances", self.rss_instances),
            self.rss_interval * 2 + self.rss_interval * 12 + secs(15),
        ));
        if let Some(idle) = self.idle {
            steps.push((
                format!("idle {}", humantime::format_duration(idle)),
                idle + secs(5),
            ));
        }
        steps
    }
}

/// The full run's value, or the quick one's.
fn pick<T>(quick: bool, full: T, quick_value: T) -> T {
    if quick { quick_value } else { full }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// `scripts/bench.sh ...` as it was called, with the environment that changes what is measured.
fn command_line() -> String {
    let mut env = Vec::new();
    for v in [
        "ETCD_BIN",
        "CONSUL_BIN",
        "IDLE_SECONDS",
        "TWINREG_LOG",
        "CONCURRENCY",
        "INSTANCES",
        "C1_INSTANCES",
        "WARMUP",
        "PACED_INSTANCES",
        "PACED_INTERVAL",
        "PACED_DURATION",
        "FREEZE_OPEN",
        "RSS_INSTANCES",
        "RSS_INTERVAL",
        "RSS_DURATION",
        "SETTLE_MAX",
    ] {
        if let Ok(val) = std::env::var(v) {
            env.push(format!("{v}={val}"));
        }
    }
    let args: Vec<String> = std::env::args().skip(2).collect();
    let mut line = env;
    line.push("scripts/bench.sh".into());
    line.extend(args);
    line.join(" ")
}

/// Prints each step as it starts, with the time spent and an estimate of the time left: the
/// estimates still to go, scaled by how far the steps so far ran over or under theirs.
pub struct Progress {
    steps: Vec<(String, Duration)>,
    next: usize,
    started: Instant,
}

impl Progress {
    pub fn new(steps: Vec<(String, Duration)>) -> Self {
        Self {
            steps,
            next: 0,
            started: Instant::now(),
        }
    }

    /// Announces the step named `name` (the next one of the plan).
    pub fn step(&mut self, name: &str) {
        let total = self.steps.len();
        let i = self
            .steps
            .iter()
            .skip(self.next)
            .position(|(n, _)| n == name)
            .map_or(self.next, |p| self.next + p);
        let estimated_so_far: Duration = self.steps[..i.min(total)].iter().map(|(_, d)| *d).sum();
        let left: Duration = self.steps[i.min(total)..].iter().map(|(_, d)| *d).sum();
        let elapsed = self.started.elapsed();
        let scale = if estimated_so_far.is_zero() {
            1.0
        } else {
            (elapsed.as_secs_f64() / estimated_so_far.as_secs_f64()).clamp(0.5, 3.0)
        };
        let left = Duration::from_secs(left.mul_f64(scale).as_secs());
        eprintln!(
            "bench [{}/{total}] {name} · {} elapsed · about {} left",
            i + 1,
            humantime::format_duration(Duration::from_secs(elapsed.as_secs())),
            humantime::format_duration(left),
        );
        self.next = (i + 1).min(total);
    }
}
