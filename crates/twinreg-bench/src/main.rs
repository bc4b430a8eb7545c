//! `twinreg-bench`: the load generator and the benchmark suite behind `scripts/bench.sh`.
//!
//! - `suite` starts the servers, runs every measurement of BENCHMARKS.md and prints the report;
//! - `run` drives twinreg's REST API (or the echo server) over mutual TLS;
//! - `echo` is a do-nothing mTLS server, the ceiling of any front on this machine;
//! - `baseline` does the same registrations straight against etcd;
//! - `liveness` kills a replica under heartbeats and times the expiry of instances that stop.
//!
//! Each run prints exactly one JSON line on stdout (see `stats::Report`); progress goes to
//! stderr. The generator runs on a current-thread runtime by default: it shares the machine with
//! the servers it measures, so its own cost must stay small and the same for every target.

mod baseline;
mod client;
mod driver;
mod echo;
mod liveness;
mod run;
mod stats;
mod suite;
mod workload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::driver::{Schedule, Worker, drive};
use crate::stats::{Labels, Mode, Report};
use crate::workload::{Op, Request};

#[derive(Parser)]
#[command(
    name = "twinreg-bench",
    version,
    about = "Load generator for twinreg, an echo ceiling and an etcd baseline",
    // A later flag overrides an earlier one, so a script can append to a common command line.
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start etcd, Consul (or mini-consul), an echo server and twinreg replicas, run every
    /// measurement and print the report (what scripts/bench.sh runs).
    Suite(suite::SuiteArgs),
    /// Drive twinreg's REST API (or the echo server) over mutual TLS.
    Run(RunArgs),
    /// Serve a minimal mTLS HTTP server that answers every request at once.
    Echo(EchoArgs),
    /// Register and heartbeat straight against etcd, as a service without twinreg would.
    Baseline(BaselineArgs),
    /// Heartbeat registered instances through one replica, SIGKILL it, move the heartbeats to
    /// another, count the instances lost, then stop and time each instance's expiry.
    Liveness(liveness::LivenessArgs),
}

#[derive(Args)]
struct RunArgs {
    /// The target's public listener.
    #[arg(long, default_value = "https://127.0.0.1:8443")]
    url: String,
    /// CA bundle that verifies the server's certificate.
    #[arg(long)]
    ca: PathBuf,
    /// Client certificate (PEM); it must name the service for twinreg to allow writes.
    #[arg(long)]
    cert: PathBuf,
    /// The client certificate's private key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// Make every register a real change (alternate the port) instead of an identical upsert.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    change: bool,
    /// Answer a heartbeat's 404 (`unknown_instance`) by registering the instance again, as a
    /// real client must; the 404 still counts as an error.
    #[arg(long)]
    reregister: bool,
    /// The `target` field of the report.
    #[arg(long, default_value = "twinreg")]
    label: String,
    #[command(flatten)]
    load: Load,
}

#[derive(Args)]
struct BaselineArgs {
    /// etcd client URL.
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    etcd: String,
    /// etcd clients (HTTP/2 connections) the workers and instances are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// For an https:// etcd: the CA of its server certificate.
    #[arg(long, requires = "etcd_cert")]
    etcd_ca: Option<std::path::PathBuf>,
    /// For an https:// etcd that wants client certificates: ours (PEM) ...
    #[arg(long, requires = "etcd_key")]
    etcd_cert: Option<std::path::PathBuf>,
    /// ... and its key.
    #[arg(long, requires = "etcd_cert")]
    etcd_key: Option<std::path::PathBuf>,
    /// The `target` field of the report.
    #[arg(long, default_value = "baseline")]
    label: String,
    #[command(flatten)]
    load: Load,
}

/// What to send and when: shared by `run` and `baseline` so both get the same load.
#[derive(Args)]
struct Load {
    /// Service the instances belong to.
    #[arg(long, default_value = "bench")]
    service: String,
    #[arg(long, value_enum, default_value_t = Op::Register)]
    op: Op,
    /// Instances the requests rotate over (`bench-0` .. `bench-N-1`).
    #[arg(long, default_value_t = 1000)]
    instances: u64,
    /// Workers, each with its own connection and one request in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Length of the measurement.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Closed loop: load sent before the measurement starts, not recorded.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Pace the run instead of a closed loop: each instance is sent one request per interval,
    /// at most --concurrency in flight; every request is recorded (no warm-up).
    #[arg(long, value_parser = humantime::parse_duration)]
    interval: Option<Duration>,
    /// TTL of the registered instances, in seconds.
    #[arg(long, default_value_t = 30)]
    ttl: u32,
    /// Registering the instances before a heartbeat or mix run: `auto` does it when the op
    /// needs it, `skip` assumes an earlier run did, `only` registers them, reports that and
    /// stops.
    #[arg(long, value_enum, default_value_t = Setup::Auto)]
    setup: Setup,
    /// Runtime worker threads; 1 keeps the generator on one core.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Setup {
    Auto,
    Skip,
    Only,
}

#[derive(Args)]
struct EchoArgs {
    #[arg(long, default_value = "127.0.0.1:9443")]
    listen: SocketAddr,
    /// Server certificate chain (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// The server certificate's private key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// CAs that client certificates must chain to.
    #[arg(long)]
    client_ca: PathBuf,
    /// Runtime worker threads; by default one per core, as twinreg itself runs.
    #[arg(long)]
    threads: Option<usize>,
}

impl Load {
    /// Whether the instances are registered before the measurement.
    fn registers_first(&self) -> bool {
        match self.setup {
            Setup::Auto => self.op.needs_registered_instances(),
            Setup::Skip => false,
            Setup::Only => true,
        }
    }

    fn check(&self) -> Result<(), String> {
        if self.instances == 0 || self.concurrency == 0 || self.threads == 0 {
            return Err("--instances, --concurrency and --threads must be at least 1".into());
        }
        if self.interval.is_some_and(|i| i.is_zero()) {
            return Err("--interval must be more than zero".into());
        }
        Ok(())
    }
}

/// Registers the instances when asked to, then runs the measurement and reports it (or, with
/// `--setup only`, reports the registration).
async fn measure<W: Worker>(workers: Vec<W>, load: &Load, target: &str) -> Report {
    let mut workers = workers;
    let concurrency = workers.len();
    let instances = load.instances;
    if load.registers_first() {
        let setup = drive(
            workers,
            Schedule::Each { count: instances },
            Request::Register,
            "register (set-up)",
        )
        .await;
        if setup.recorder.errors() > 0 {
            eprintln!(
                "set-up: {} of {instances} registers failed",
                setup.recorder.errors()
            );
        }
        if load.setup == Setup::Only {
            let labels = Labels {
                target,
                op: Op::Register.name(),
                concurrency,
                instances,
            };
            return Report::new(labels, &Mode::Once, setup.recorder, setup.elapsed);
        }
        workers = setup.workers;
    }
    let (schedule, mode) = match load.interval {
        Some(interval) => (
            Schedule::Paced {
                interval,
                instances,
                duration: load.duration,
            },
            Mode::Paced {
                interval,
                instances,
            },
        ),
        None => (
            Schedule::Closed {
                warmup: load.warmup,
                duration: load.duration,
            },
            Mode::Closed,
        ),
    };
    let op = load.op;
    let done = drive(workers, schedule, move |t| op.pick(t, instances), op.name()).await;
    let labels = Labels {
        target,
        op: op.name(),
        concurrency,
        instances,
    };
    Report::new(labels, &mode, done.recorder, done.elapsed)
}

async fn run(args: RunArgs) -> Result<Report, String> {
    let load = &args.load;
    let target = client::Target::new(&args.url, &args.ca, &args.cert, &args.key)?;
    let work = Arc::new(run::Workload::new(
        &load.service,
        load.instances,
        load.ttl,
        args.change,
        args.reregister,
    ));
    let workers = run::workers(target, work.clone(), load.concurrency).await?;
    let report = measure(workers, load, &args.label).await;
    if work.reregistered() > 0 {
        eprintln!(
            "registered {} instances again after a heartbeat's 404",
            work.reregistered()
        );
    }
    Ok(report)
}

async fn baseline(args: BaselineArgs) -> Result<Report, String> {
    let load = &args.load;
    if load.setup == Setup::Skip && load.op.needs_registered_instances() {
        // The leases and their keep-alive streams live in this process only.
        return Err("baseline: --setup skip cannot heartbeat leases of another process".into());
    }
    let shared = baseline::Shared::new(
        &load.service,
        load.instances,
        load.ttl,
        load.op.needs_registered_instances(),
    );
    let workers = baseline::workers(
        &args.etcd,
        baseline::tls_options(
            args.etcd_ca.as_deref(),
            args.etcd_cert.as_deref().zip(args.etcd_key.as_deref()),
        )?,
        args.connections,
        load.concurrency,
        shared,
    )
    .await?;
    Ok(measure(workers, load, &args.label).await)
}

fn runtime(threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Suite(args) = cli.command {
        return match suite::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("twinreg-bench suite: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let threads = match &cli.command {
        Command::Run(a) => Some(a.load.threads),
        Command::Baseline(a) => Some(a.load.threads),
        Command::Echo(a) => a.threads,
        Command::Liveness(_) => Some(1),
        Command::Suite(_) => unreachable!("handled above"),
    };
    if let Command::Run(RunArgs { load, .. }) | Command::Baseline(BaselineArgs { load, .. }) =
        &cli.command
        && let Err(e) = load.check()
    {
        eprintln!("twinreg-bench: {e}");
        return ExitCode::from(2);
    }
    let rt = match runtime(threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("twinreg-bench: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Run(args) => run(args).await.map(|r| r.print()),
            Command::Baseline(args) => baseline(args).await.map(|r| r.print()),
            Command::Echo(args) => {
                echo::serve(args.listen, &args.cert, &args.key, &args.client_ca).await
            }
            Command::Liveness(args) => liveness::run(args).await.map(|v| println!("{v}")),
            Command::Suite(_) => unreachable!("handled above"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("twinreg-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
