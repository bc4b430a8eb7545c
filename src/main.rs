//! The `twinreg` command: `serve`, `check-config`, `certs dev`, `certs compose`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use twinreg::config::Config;

/// `EX_USAGE` from sysexits.h: the configuration is wrong.
const EXIT_CONFIG: u8 = 64;
/// `EX_SOFTWARE`: the server stopped with an error.
const EXIT_RUNTIME: u8 = 70;

#[derive(Parser)]
#[command(
    name = "twinreg",
    version,
    about = "Service registration written to etcd and Consul at once"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST API (mTLS) and the admin endpoints.
    Serve {
        #[arg(long, short, env = "TWINREG_CONFIG")]
        config: PathBuf,
        /// Log as JSON lines instead of text.
        #[arg(long, env = "TWINREG_LOG_JSON")]
        log_json: bool,
    },
    /// Validate a configuration file; prints every problem and exits non-zero if there is one.
    CheckConfig {
        #[arg(long, short, env = "TWINREG_CONFIG")]
        config: PathBuf,
    },
    /// Print the REST API's OpenAPI 3.1 description (what the admin listener serves at
    /// /openapi.json, and docs/openapi.json).
    Openapi,
    /// Certificate helpers.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Write a development CA, a server certificate for localhost/127.0.0.1 and client
    /// certificates (CN = NAME) as PEM files.
    Dev {
        #[arg(long)]
        out: PathBuf,
        /// A client certificate to issue; repeatable.
        #[arg(long = "client", value_name = "NAME")]
        clients: Vec<String>,
    },
    /// Write a CA and every certificate docker-compose.yml needs (etcd members, Consul, the
    /// twinreg replicas and their registry client certificates, example clients) as PEM files.
    /// Keeps a directory that already holds a set unless --force.
    Compose {
        #[arg(long)]
        out: PathBuf,
        /// Issue a new CA and every certificate even when OUT already holds a set.
        #[arg(long)]
        force: bool,
    },
}

/// Logs go to stderr through a writer thread: request threads format a line and hand it over
/// instead of making a write system call each (a tenth of a heartbeat's cost otherwise). Lines
/// are never dropped: a full buffer makes the logger wait. The guard flushes on exit.
fn init_tracing(json: bool) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = EnvFilter::try_from_env("TWINREG_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    guard
}

fn load(config: &Path) -> Result<twinreg::config::Settings, ExitCode> {
    match Config::load(config).and_then(Config::validate) {
        Ok(s) => Ok(s),
        Err(errors) => {
            eprintln!("twinreg: configuration {} is invalid:", config.display());
            eprint!("{errors}");
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

/// mimalloc rather than glibc's malloc: per-thread heaps, no lock or consolidation on the
/// request path (glibc's allocator was a sixth of a heartbeat's CPU; docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Openapi => {
            print!("{}", twinreg::api::openapi::json());
            ExitCode::SUCCESS
        }
        Command::CheckConfig { config } => match load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Certs {
            command: CertsCommand::Dev { out, clients },
        } => match twinreg::certs::write_dev(&out, &clients) {
            Ok(files) => {
                for f in files {
                    println!("wrote {}", f.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("twinreg: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Certs {
            command: CertsCommand::Compose { out, force },
        } => match twinreg::certs::write_compose(&out, force) {
            Ok(twinreg::certs::ComposeOutcome::Written(files)) => {
                for f in files {
                    println!("wrote {}", f.display());
                }
                ExitCode::SUCCESS
            }
            Ok(twinreg::certs::ComposeOutcome::Kept) => {
                println!(
                    "kept the certificates in {} (its {} exists; --force issues new ones)",
                    out.display(),
                    twinreg::certs::compose::CA
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("twinreg: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { config, log_json } => {
            let _logs = init_tracing(log_json);
            let settings = match load(&config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let runtime = tokio::runtime::Runtime::new().expect("starting the tokio runtime");
            runtime.block_on(async move {
                let listeners = match twinreg::Listeners::bind(&settings).await {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!(
                            "twinreg: cannot bind {} / {}: {e}",
                            settings.server.listen, settings.server.admin_listen
                        );
                        return ExitCode::from(EXIT_RUNTIME);
                    }
                };
                match twinreg::run(settings, listeners, twinreg::shutdown::signal()).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("twinreg: {e}");
                        ExitCode::from(EXIT_RUNTIME)
                    }
                }
            })
        }
    }
}
