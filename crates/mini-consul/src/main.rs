//! mini-consul: a Consul-API-compatible test server, used by twinreg's tests when no real
//! `consul` binary is available. It reproduces, with Consul's documented semantics, the part of
//! Consul's HTTP API twinreg uses (see `docs/consul.md`): agent service register/deregister,
//! service maintenance mode, TTL checks with expiry and DeregisterCriticalServiceAfter,
//! `/v1/health/service`, `/v1/health/checks` and `/v1/catalog/services` with blocking queries, ACL
//! tokens, and TLS with verified client certificates. One process, all state in memory: a restart
//! starts empty, like `consul agent -dev`.
//!
//! Layout (one module per concern):
//! - `main.rs` — command line, start-up, signals.
//! - `server.rs` — TCP/TLS listener, HTTP/1.1 + h2 connections, graceful stop.
//! - `tls.rs` — rustls server config (ring provider, ALPN, client-certificate verification).
//! - `http.rs` — routing like Go's ServeMux, Consul's shared rules (405/`Allow`, 404, errors).
//! - `agent.rs` — `/v1/agent/...` endpoints (register, deregister, maintenance, checks,
//!   services).
//! - `catalog.rs` — `/v1/health/service/:name`, `/v1/health/checks/:name` and
//!   `/v1/catalog/services`.
//! - `decode.rs` — decoding service definitions and check types like Consul's Go code.
//! - `register.rs` — validating them and building the registered service and checks.
//! - `model.rs` — services, checks and their definitions.
//! - `store.rs` — the catalog's contents and its raft-like indexes.
//! - `state.rs` — the operations on them (register, TTL updates, expiry, reaping) and change
//!   notification.
//! - `checks.rs` — TTL expiry, the reaper, HTTP/TCP probes.
//! - `blocking.rs` — `?index=&wait=` blocking queries and `X-Consul-Index`.
//! - `acl.rs` — token resolution and permission errors.
//! - `views.rs` — the JSON shapes Consul answers with.
//! - `filter.rs` — the `?filter=` expression subset.
//! - `json.rs` — Go-compatible JSON decoding (strict, case-insensitive) and encoding.
//! - `duration.rs` — Go's duration syntax.

mod acl;
mod agent;
mod blocking;
mod catalog;
mod checks;
mod decode;
mod duration;
mod filter;
mod http;
mod json;
mod metrics;
mod model;
mod register;
mod server;
mod state;
mod store;
mod tls;
mod views;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rand::Rng;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

/// A Consul-API-compatible test server (agent + catalog + health, in memory).
#[derive(Parser, Debug)]
#[command(name = "mini-consul", version)]
struct Cli {
    /// Address to listen on, e.g. 127.0.0.1:8500 (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Serve HTTPS with this PEM certificate (chain).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this PEM CA.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Turn ACLs on (default deny) with this management token.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "MINI_CONSUL_ACL_TOKEN",
        hide_env_values = true
    )]
    acl_token: Option<String>,
    /// The node name reported in the catalog.
    #[arg(long, value_name = "NAME", default_value = "mini-consul")]
    node_name: String,
    /// How often the reaper runs (Consul: 30s).
    #[arg(long, hide = true, default_value = "30s", value_parser = humantime::parse_duration)]
    reap_interval: Duration,
}

fn uuid() -> String {
    let b: [u8; 16] = rand::rng().random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

async fn run(cli: Cli) -> Result<(), String> {
    tls::install_provider();
    let acceptor = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key, cli.tls_client_ca.as_deref())?),
        _ => None,
    };
    let state = state::State::new(model::Config {
        node_name: cli.node_name.clone(),
        node_id: uuid(),
        datacenter: "dc1".into(),
        acl_token: cli.acl_token.clone().filter(|t| !t.is_empty()),
    });
    // Handlers are installed before the listening line, so a prompt SIGTERM still stops cleanly.
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    tokio::spawn(checks::ttl_loop(state.clone()));
    tokio::spawn(checks::reap_loop(state.clone(), cli.reap_interval));

    let listener = TcpListener::bind(cli.listen)
        .await
        .map_err(|e| format!("listening on {}: {e}", cli.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "mini-consul listening on {addr}")
        .and_then(|()| out.flush())
        .map_err(|e| e.to_string())?;
    drop(out);
    tracing::info!(%addr, tls = acceptor.is_some(), acl = state.cfg.acl_token.is_some(), "mini-consul started");
    server::run(listener, acceptor, state, shutdown).await;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mini-consul: {e}");
            ExitCode::FAILURE
        }
    }
}
