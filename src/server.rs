//! Wiring and lifecycle: builds the registries, the coordinator and the front, serves both
//! listeners, and drains on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::antientropy::Sweeper;
use crate::api::{self, AppState};
use crate::authz::{Authorizer, Peer};
use crate::breaker::{Breaker, BreakerSettings};
use crate::config::Settings;
use crate::conn_guard::{self, Deadlines, Progress, Watched};
use crate::limits::{Connections, Requests};
use crate::metrics::Metrics;
use crate::registry::consul::Consul;
use crate::registry::etcd::Etcd;
use crate::registry::{Health, Registry, RegistryKind};
use crate::replicate::{Coordinator, Member};
use crate::tls::{Certs, ServerTls};
use crate::watch::Watches;

/// A client that has not finished its TLS handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 PING interval and timeout towards clients.
pub const CLIENT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const CLIENT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often registries are probed for `/readyz` and the `registry_up` metric.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// `[server]`, validated.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// The public mutual-TLS listener (REST and gRPC).
    pub listen: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics` and the status page, plain HTTP.
    pub admin_listen: SocketAddr,
    /// After the drain delay, the time in-flight requests and pending repairs get.
    pub shutdown_grace: Duration,
    /// After SIGTERM, how long `/readyz` answers 503 while connections are still accepted.
    pub drain_delay: Duration,
}

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8443";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::from_secs(2);

/// The two bound sockets. Bind them first (port 0 works) so a caller knows the addresses.
pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(settings: &Settings) -> std::io::Result<Self> {
        Ok(Self {
            public: TcpListener::bind(settings.server.listen).await?,
            admin: TcpListener::bind(settings.server.admin_listen).await?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Registry(#[from] crate::registry::SetupError),
    #[error("admin listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves until `shutdown` resolves, then drains: `/readyz` turns 503 at once, new connections
/// are still accepted for `server.drain_delay`, then in-flight requests and pending repairs get
/// `server.shutdown_grace` each, then connections close.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let metrics = Metrics::new();
    let certs = Certs::new(metrics.clone());
    let tls = ServerTls::load(&settings.tls, &certs)?;
    let replica = crate::replicate::new_replica_id(&public_addr_hint(&settings));
    tracing::info!(%replica, "this replica's id (its etcd announcement and Consul service)");
    let (etcd, etcd_pool) =
        Etcd::new(&settings.etcd, metrics.handshakes.clone(), &certs, &replica)?;
    let (consul, consul_pool) = Consul::new(
        &settings.consul,
        metrics.handshakes.clone(),
        &certs,
        &replica,
    )?;
    let members = vec![
        member(Arc::new(etcd), settings.etcd.timeout, settings.breaker),
        member(Arc::new(consul), settings.consul.timeout, settings.breaker),
    ];
    if settings.heartbeat.coalesce.is_some() {
        tracing::warn!(
            "heartbeat.coalesce is deprecated and has no effect: heartbeats to the replica that owns an instance never reach the registries"
        );
    }
    let coordinator = Coordinator::for_replica(
        members,
        settings.repair.max_writes_per_second,
        metrics.clone(),
        &replica,
    );
    let stop = CancellationToken::new();
    let watches = Watches::new(
        coordinator.registries(),
        settings.watch.clone(),
        metrics.clone(),
        stop.clone(),
    );
    let state = AppState::new(crate::api::Shared {
        coordinator: coordinator.clone(),
        authz: Authorizer::new(&settings.authz),
        metrics: metrics.clone(),
        shutdown: stop.clone(),
        watches,
        certs: certs.clone(),
        limits: Arc::new(settings.limits.clone()),
        requests: Requests::new(&settings.limits, metrics.clone()),
        heartbeat_answer: Default::default(),
        sweep_enabled: settings.anti_entropy.enabled,
    });
    let connections = Connections::new(&settings.limits, metrics.clone());

    let background = TaskTracker::new();
    crate::liveness::start(&coordinator, &background, stop.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    {
        let (c, rx, pool) = (coordinator.clone(), stop_rx.clone(), etcd_pool.clone());
        background.spawn(async move {
            pool.warm_up(rx).await;
            c.probe_all().await;
        });
        let (c, rx, pool) = (coordinator.clone(), stop_rx.clone(), consul_pool.clone());
        background.spawn(async move {
            pool.warm_up(rx).await;
            c.probe_all().await;
        });
        let pools: Vec<PoolStatus> = vec![
            (RegistryKind::Etcd, Box::new(move || etcd_pool.status())),
            (RegistryKind::Consul, Box::new(move || consul_pool.status())),
        ];
        background.spawn(probe_loop(coordinator.clone(), pools, stop.clone()));
        let requests = state.requests.clone();
        let stop_shrink = stop.clone();
        background.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = tick.tick() => requests.shrink(),
                    _ = stop_shrink.cancelled() => return,
                }
            }
        });
        background.spawn(
            certs
                .clone()
                .watch(settings.tls.reload_interval, stop.clone()),
        );
        if settings.anti_entropy.enabled {
            let holder = format!("twinreg-{replica}");
            let sweeper = Sweeper::new(
                coordinator.clone(),
                settings.anti_entropy.interval,
                holder,
                settings.repair.max_writes_per_second,
            );
            background.spawn(sweeper.run(stop.clone()));
        }
    }

    let admin = axum::serve(listeners.admin, api::admin::router(state.clone()))
        .with_graceful_shutdown({
            // The admin listener outlives the drain: the load balancer must keep reading 503s.
            let mut closed = stop_rx.clone();
            async move {
                let _ = closed.wait_for(|c| *c).await;
            }
        });
    let admin_task = tokio::spawn(async move { admin.await });

    let public_addr = listeners.public.local_addr()?;
    tracing::info!(listen = %public_addr, "twinreg serving");
    // Connections: tracked for the drain, closed gracefully when `closing` is cancelled.
    let conns = TaskTracker::new();
    let closing = CancellationToken::new();
    let (grpc, health) = api::grpc::router(state.clone()).await;
    background.spawn(api::grpc::health_loop(
        health,
        coordinator.clone(),
        stop.clone(),
    ));
    let router = Front {
        rest: api::http::router(state.clone()),
        grpc,
        peer: None,
        progress: Arc::default(),
    };
    // On shutdown, /readyz turns 503 at once, but connections are still accepted for
    // `drain_delay` so the load balancer sees the replica unready before it stops answering.
    let drain_delay = settings.server.drain_delay;
    let serve_until = {
        let stop = stop.clone();
        async move {
            shutdown.await;
            tracing::info!(
                drain_delay_ms = drain_delay.as_millis() as u64,
                "shutdown: /readyz now 503"
            );
            stop.cancel();
            tokio::time::sleep(drain_delay).await;
        }
    };
    tokio::pin!(serve_until);
    let deadlines = Deadlines {
        header_read_timeout: state.limits.header_read_timeout,
        idle_timeout: state.limits.idle_timeout,
    };
    loop {
        tokio::select! {
            _ = &mut serve_until => break,
            accepted = listeners.public.accept() => {
                let (tcp, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Caps first, before any TLS work: a flood from one address cannot take every slot.
                let admitted = match connections.admit(remote.ip()) {
                    Ok(a) => a,
                    Err(why) => {
                        tracing::debug!(%remote, limit = why.as_str(), "connection refused by a limit");
                        drop(tcp);
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let limits = state.limits.clone();
                // The current TLS config: a reload affects the next handshake, not this one's.
                let acceptor = TlsAcceptor::from(tls.current());
                let router = router.clone();
                let closing = closing.clone();
                conns.spawn(async move {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%remote, "TLS handshake timed out");
                            return;
                        }
                    };
                    let peer = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| Peer::from_der(c))
                        .map(Arc::new);
                    // Prior knowledge of HTTP/2 is seen in the first bytes (conn_guard).
                    let progress = Arc::new(Progress::default());
                    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                        progress.h2();
                    }
                    let svc = Front { peer, progress: progress.clone(), ..router };
                    let _admitted = admitted;
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    // HTTP/1's header and idle deadlines are conn_guard's, one timer per
                    // connection; hyper's header timer would arm one per request.
                    // PINGs on idle HTTP/2 connections: a long-lived watch stream stays open
                    // through NATs and load balancers, and a vanished client is noticed.
                    builder
                        .http2()
                        .timer(TokioTimer::new())
                        .max_concurrent_streams(limits.max_concurrent_streams)
                        .keep_alive_interval(Some(CLIENT_KEEPALIVE_INTERVAL))
                        .keep_alive_timeout(CLIENT_KEEPALIVE_TIMEOUT);
                    let conn = builder
                        .serve_connection(TokioIo::new(Watched::new(tls, progress.clone())), svc)
                        .into_owned();
                    if let Err(e) = conn_guard::serve(conn, progress, deadlines, closing).await {
                        tracing::debug!(%remote, error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }

    // Drain: in-flight requests, then pending repairs.
    tracing::info!("shutdown: listener closed, draining connections");
    let _ = stop_tx.send(true);
    drop(listeners.public);
    let grace = settings.server.shutdown_grace;
    closing.cancel();
    conns.close();
    if tokio::time::timeout(grace, conns.wait()).await.is_err() {
        tracing::warn!("shutdown grace over: closing remaining connections");
    }
    coordinator.repairer().shutdown(grace).await;
    background.close();
    background.wait().await;
    let _ = admin_task.await;
    tracing::info!("shutdown complete");
    Ok(())
}

/// The public listener's service, one per connection: gRPC calls (`content-type:
/// application/grpc...`) go to the gRPC services, everything else to the REST router, each
/// with the caller read from the connection's client certificate.
#[derive(Clone)]
struct Front {
    rest: api::layers::Edge<api::http::Rest>,
    grpc: api::layers::Edge<api::grpc::GrpcEdge>,
    peer: Option<Arc<Peer>>,
    /// The connection's progress, for its deadlines (conn_guard).
    progress: Arc<Progress>,
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

// hyper's own `Service` (`&self`): a tower service would be cloned for every request, and the
// routers' shared counters touched from every core each time.
impl hyper::service::Service<Request<Incoming>> for Front {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = api::layers::Answer;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.progress.head();
        if is_grpc(&req) {
            self.grpc.serve(req, self.peer.as_ref())
        } else {
            self.rest.serve(req, self.peer.as_ref())
        }
    }
}

/// Something that tells replicas apart in the sweeper election and its logs.
fn public_addr_hint(settings: &Settings) -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| settings.server.listen.to_string())
}

fn member(registry: Arc<dyn Registry>, deadline: Duration, breaker: BreakerSettings) -> Member {
    Member {
        registry,
        deadline,
        health: Health::default(),
        breaker: Breaker::new(breaker.consecutive_failures, breaker.open_for),
        expiring: Default::default(),
    }
}

/// A registry's pool status, for the `twinreg_pool_connections` gauges.
type PoolStatus = (
    RegistryKind,
    Box<dyn Fn() -> deadpool::Status + Send + Sync>,
);

/// Probes the registries and refreshes the gauges read at scrape time (repair age, pools).
async fn probe_loop(
    coordinator: Arc<Coordinator>,
    pools: Vec<PoolStatus>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        coordinator.probe_all().await;
        let metrics = coordinator.metrics();
        for (kind, status) in &pools {
            let s = status();
            metrics.set_pool(*kind, "open", s.size);
            metrics.set_pool(*kind, "idle", s.available);
            metrics.set_pool(*kind, "waiting", s.waiting);
            metrics.set_pool(*kind, "max", s.max_size);
            metrics.set_repair_oldest(*kind, coordinator.repairer().oldest(*kind));
        }
    }
}
