//! `twinreg-bench suite`: the benchmark behind BENCHMARKS.md. It starts etcd and Consul (a real
//! `consul` from `CONSUL_BIN`, else mini-consul) over mutual TLS, a do-nothing mTLS echo server
//! and twinreg replicas on loopback, then measures what twinreg costs against what a service pays
//! without it, on this machine:
//!
//! - (a) register throughput at concurrency 64: etcd directly (baseline) against twinreg;
//! - (b) heartbeat throughput at concurrency 64: the echo server (the ceiling of any front here)
//!   against twinreg (replica A);
//! - (c) p50 latency at concurrency 1, register and heartbeat: baseline against twinreg A;
//! - (d) start-up time to `/readyz`; (e) requests etcd and Consul serve per client heartbeat,
//!   from their own metrics, clients heartbeating at ttl/3 through B;
//! - (f) register p99 while etcd is frozen; (g) RSS and etcd leases with many instances (B);
//! - (i) B SIGKILLed under those instances' heartbeats (`liveness`): instances lost, then each
//!   expiry timed once they all stop;
//! - (h) TLS handshakes to the registries after start-up, after the runs, after an idle gap.
//!
//! (a)–(c) alternate the targets within each round and report the median over the rounds, so a
//! noisy neighbour hits both sides of a ratio alike. Each measurement is a child process of this
//! binary (`run`, `baseline`), so the load generator keeps its own core and runtime. Progress, with
//! an estimate of the time left, goes to stderr; the report (a Markdown table) to stdout.

mod measure;
mod plan;
mod servers;

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

pub use plan::Sizes;

/// Why a suite run stopped.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    #[error("{0}")]
    Setup(String),
    #[error("{0}")]
    Measure(String),
}

#[derive(Args, Debug, Clone)]
pub struct SuiteArgs {
    /// Rounds of (a)–(c); the report gives their medians.
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Length of each closed-loop run, e.g. `10s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// One round of 2 s runs and small instance counts: a smoke run of a couple of minutes.
    #[arg(long)]
    pub quick: bool,
    /// Idle this long before the last handshake count (e.g. `10m`); skipped when unset.
    #[arg(long, env = "IDLE_SECONDS", value_parser = parse_idle)]
    pub idle: Option<Duration>,
    /// Where the run's logs, configuration and raw results go (default: a new temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[command(flatten)]
    pub sizes: Sizes,
}

/// `600` (seconds, as `IDLE_SECONDS` has always been given) or a duration such as `10m`.
fn parse_idle(v: &str) -> Result<Duration, String> {
    match v.parse::<u64>() {
        Ok(s) => Ok(Duration::from_secs(s)),
        Err(_) => humantime::parse_duration(v).map_err(|e| e.to_string()),
    }
}

/// Runs the suite and prints its report.
pub fn run(args: SuiteArgs) -> Result<(), SuiteError> {
    let plan = plan::Plan::new(&args);
    let report = measure::Run::start(&plan)?.all()?;
    println!("{report}");
    Ok(())
}
