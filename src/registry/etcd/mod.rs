//! The etcd adapter (primary registry).
//!
//! An instance is the key `{prefix}/{service}/{id}`, attached to one of the few shared leases of
//! the replica that holds it ([`leases`]: one per TTL class, kept alive by the replica, never by
//! a client's heartbeat). The value is JSON holding the record's fields plus `Op`, `Addr` and
//! `Metadata`, so etcd's own gRPC name resolver reads it as an endpoint of target
//! `{prefix}/{service}`. Writes are guarded transactions ([`txn`]), client registrations
//! grouped into shared ones ([`commit`]); the replica follows the whole prefix with one watch
//! ([`follow`]).
//!
//! Connections: each pooled object is one HTTP/2 connection to one member (members are dealt out
//! round-robin), dialed by [`super::transport`] so TLS handshakes are counted, DNS is resolved at
//! every reconnect, and reconnects resume the TLS session.

mod commit;
mod connect;
mod errors;
mod follow;
mod keepalive;
mod leases;
mod members;
mod range;
mod record;
mod txn;
mod watch;

pub use connect::{EtcdConn, EtcdConnect};
pub use leases::{ANNOUNCE_TTL, LEASE_TTLS, lease_ttl};
pub(crate) use record::{KeyRead, Record, decode_kv};
pub use txn::TOMBSTONE_TTL;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::ConnectOptions;

use crate::metrics::Handshakes;
use crate::model::{Instance, InstanceId, InstanceKey, ServiceName};
use crate::pool::WarmPool;
use crate::registry::RegistryError;
use crate::registry::transport::Dialer;
use crate::registry::{
    ClusterMember, FeedSender, Followed, Held, Listed, ObservedSender, Registry, RegistryKind,
    Revision, SetupError, Written,
};
use crate::secret::Secret;
use crate::tls::{Certs, registry_client_config};
use connect::probe;
use errors::to_err;
use leases::Leases;
use record::decode_dir;
use txn::TOMBSTONE_DIR;

const KIND: RegistryKind = RegistryKind::Etcd;
/// HTTP/2 PING interval and timeout on etcd channels: a dead or blackholed member is noticed in
/// seconds, and idle connections are kept open through NATs and load balancers.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_PREFIX: &str = "/services";

/// `[etcd]`, validated.
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    /// `http://` or `https://` URLs of the members.
    pub endpoints: Vec<String>,
    /// Keys are `{prefix}/{service}/{id}`.
    pub prefix: String,
    /// Deadline of each etcd call.
    pub timeout: Duration,
    /// Warm HTTP/2 channels (at least one per member).
    pub pool_size: usize,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

/// The etcd adapter: its key layout, its warm pool, and its shared leases.
pub struct Etcd {
    prefix: String,
    /// This replica's id (its announcement's name).
    replica: String,
    /// Attempts per operation: one per endpoint, at least two.
    attempts: usize,
    /// Each configured endpoint as `host:port`, by its index (`EtcdConn::member`).
    authorities: Vec<String>,
    /// The lease of this replica's sweeper leadership, while it holds it.
    leadership: std::sync::Mutex<Option<i64>>,
    pool: Arc<WarmPool<EtcdConnect>>,
    leases: Leases,
    /// Client registrations waiting for their group transaction ([`commit`]).
    commit: commit::Queue,
}

impl Etcd {
    pub fn new(
        cfg: &EtcdSettings,
        handshakes: Handshakes,
        certs: &Certs,
        replica: &str,
    ) -> Result<(Self, Arc<WarmPool<EtcdConnect>>), SetupError> {
        let mut options = ConnectOptions::new();
        if let (Some(user), Some(pass)) = (&cfg.username, &cfg.password) {
            // etcd forgets a simple auth token unused for `--auth-token-ttl`, and a JWT lapses at
            // its TTL: authenticate again and retry, instead of failing every call on this
            // connection with "invalid auth token" until twinreg restarts.
            options = options
                .with_user(user.clone(), pass.expose().to_owned())
                .with_auto_token_refresh(true);
        }
        let tls = if cfg.endpoints.iter().any(|e| e.starts_with("https://")) {
            let cert_key = cfg.cert.as_deref().zip(cfg.key.as_deref());
            let counted = (handshakes.clone(), KIND);
            let mut tls =
                registry_client_config("etcd", cfg.ca.as_deref(), cert_key, counted, certs)?;
            tls.alpn_protocols = vec![b"h2".to_vec()];
            Some(Arc::new(tls))
        } else {
            None
        };
        let members = cfg
            .endpoints
            .iter()
            .map(|e| Dialer::new(KIND, e, tls.clone(), CONNECT_TIMEOUT, handshakes.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let authorities = members.iter().map(Dialer::authority).collect();
        // At least one connection per member, so fail-over always has somewhere to go.
        let size = cfg.pool_size.max(members.len());
        let connect = EtcdConnect {
            members,
            next: AtomicUsize::new(0),
            options,
            probe_key: format!("{}/", cfg.prefix),
        };
        let pool = WarmPool::new(KIND, connect, size);
        Ok((
            Self {
                prefix: cfg.prefix.clone(),
                replica: replica.to_owned(),
                attempts: cfg.endpoints.len().max(2),
                authorities,
                leadership: std::sync::Mutex::new(None),
                pool: pool.clone(),
                leases: Leases::default(),
                commit: commit::Queue::default(),
            },
            pool,
        ))
    }

    /// Runs `op` again, up to once per configured endpoint, while it fails to reach a member.
    /// Each retry goes to a connection to another member than the one that failed.
    async fn failover<T, F, Fut>(&self, op: F) -> Result<T, RegistryError>
    where
        F: Fn(EtcdConn) -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        let mut attempt = 1;
        let mut avoid = None;
        let mut lease_retried = false;
        loop {
            let conn = self
                .pool
                .client_where(|c: &EtcdConn| Some(c.member) != avoid)
                .await?;
            let member = conn.member;
            let epoch = self.leases.epoch();
            match op(conn).await {
                // A shared lease this replica cached is gone (the cluster was wiped or restored
                // from a backup): forget it, so the retry grants and announces a new one.
                Err(e) if e.message.contains("requested lease not found") && !lease_retried => {
                    tracing::warn!(error = %e, "etcd no longer knows a lease of this replica; granting a new one");
                    self.leases.forget_since(epoch).await;
                    lease_retried = true;
                }
                Err(e) if e.unreachable && attempt < self.attempts => {
                    tracing::debug!(attempt, error = %e, "etcd member unreachable; trying another");
                    attempt += 1;
                    avoid = Some(member);
                }
                other => return other,
            }
        }
    }

    fn key(&self, key: &InstanceKey) -> String {
        format!("{}/{}/{}", self.prefix, key.service, key.id)
    }

    fn tombstone_key(&self, key: &InstanceKey) -> String {
        format!("{}/{TOMBSTONE_DIR}/{}/{}", self.prefix, key.service, key.id)
    }

    /// Deregistrations remembered for `service`: id → generation.
    async fn tombstones_in(
        &self,
        conn: EtcdConn,
        service: &ServiceName,
    ) -> Result<BTreeMap<InstanceId, u64>, RegistryError> {
        let mut client = conn.client.clone();
        let dir = format!("{}/{TOMBSTONE_DIR}/{service}/", self.prefix);
        let kvs = range::read_dir(&mut client, &dir, false)
            .await
            .map_err(to_err)?;
        Ok(kvs
            .iter()
            .filter_map(|kv| {
                let id = std::str::from_utf8(kv.key().strip_prefix(dir.as_bytes())?).ok()?;
                let g = std::str::from_utf8(kv.value()).ok()?.trim().parse().ok()?;
                Some((InstanceId::parse(id).ok()?, g))
            })
            .collect())
    }
}

/// The reads, each one attempt; [`Registry`] wraps them with fail-over.
impl Etcd {
    async fn get_once(
        &self,
        conn: EtcdConn,
        key: &InstanceKey,
    ) -> Result<Option<Instance>, RegistryError> {
        let mut client = conn.client.clone();
        let resp = client.get(self.key(key), None).await.map_err(to_err)?;
        Ok(resp
            .kvs()
            .first()
            .and_then(|kv| Record::decode(key, kv.value())))
    }

    /// `keep` of every instance of `service`, decoded a page at a time.
    async fn list_once<T>(
        &self,
        conn: EtcdConn,
        service: &ServiceName,
        keep: impl Fn(Instance) -> T,
    ) -> Result<Vec<T>, RegistryError> {
        let mut client = conn.client.clone();
        let dir = format!("{}/{}/", self.prefix, service);
        let mut out = Vec::new();
        range::read_dir_pages(&mut client, &dir, false, |page| {
            out.extend(decode_dir(&dir, service, &page).into_iter().map(&keep))
        })
        .await
        .map_err(to_err)?;
        Ok(out)
    }

    async fn services_once(&self, conn: EtcdConn) -> Result<BTreeSet<ServiceName>, RegistryError> {
        let mut client = conn.client.clone();
        let root = format!("{}/", self.prefix);
        let mut names = BTreeSet::new();
        range::read_dir_pages(&mut client, &root, true, |page| {
            names.extend(page.iter().filter_map(|kv| {
                let rest = kv.key().strip_prefix(root.as_bytes())?;
                let name = std::str::from_utf8(rest).ok()?.split('/').next()?;
                ServiceName::parse(name).ok()
            }))
        })
        .await
        .map_err(to_err)?;
        Ok(names)
    }

    async fn probe_once(&self, conn: EtcdConn) -> Result<(), RegistryError> {
        let mut client = conn.client.clone();
        probe(&mut client, &format!("{}/", self.prefix))
            .await
            .map_err(to_err)
    }

    async fn tombstones_once(
        &self,
        conn: EtcdConn,
        service: &ServiceName,
    ) -> Result<BTreeMap<InstanceId, u64>, RegistryError> {
        self.tombstones_in(conn, service).await
    }
}

/// Every operation is retried on another etcd member when it failed to reach one (a dead member
/// of a multi-endpoint cluster keeps being offered by the balancer until its reconnects fail),
/// within the coordinator's deadline. Writes are compare-and-swap guarded, so a retry of a write
/// whose first attempt did land is harmless.
#[async_trait]
impl Registry for Etcd {
    fn kind(&self) -> RegistryKind {
        KIND
    }

    async fn register(&self, instance: &Instance) -> Result<Written, RegistryError> {
        self.failover(|c| self.register_once(c, instance)).await
    }

    async fn register_new(&self, instance: &Instance) -> Result<Written, RegistryError> {
        self.register_grouped(instance).await
    }

    async fn held(&self, key: &InstanceKey) -> Result<Option<Held>, RegistryError> {
        self.failover(|c| self.held_once(c, key)).await
    }

    async fn take_over(&self, copies: &[Held]) -> Result<Vec<Option<Revision>>, RegistryError> {
        self.failover(|c| self.take_over_once(c, copies)).await
    }

    async fn expire(&self, copies: &[(Instance, Revision)]) -> Result<Vec<bool>, RegistryError> {
        self.failover(|c| self.expire_once(c, copies)).await
    }

    fn start(
        self: Arc<Self>,
        _followed: Followed,
        out: ObservedSender,
        stop: tokio_util::sync::CancellationToken,
    ) {
        tokio::spawn(self.clone().keep_leases_alive(out.clone(), stop.clone()));
        tokio::spawn(self.clone().commit_registers(stop.clone()));
        tokio::spawn(self.follow(out, stop));
    }

    fn leases_held(&self) -> usize {
        self.leases.count()
    }

    async fn deregister(&self, key: &InstanceKey, generation: u64) -> Result<bool, RegistryError> {
        self.failover(|c| self.deregister_once(c, key, generation))
            .await
    }

    async fn get(&self, key: &InstanceKey) -> Result<Option<Instance>, RegistryError> {
        self.failover(|c| self.get_once(c, key)).await
    }

    async fn list(&self, service: &ServiceName) -> Result<Vec<Instance>, RegistryError> {
        self.failover(|c| self.list_once(c, service, |i| i)).await
    }

    async fn inventory(&self, service: &ServiceName) -> Result<Vec<Listed>, RegistryError> {
        self.failover(|c| self.list_once(c, service, |i| Listed::live(&i)))
            .await
    }

    async fn services(&self) -> Result<BTreeSet<ServiceName>, RegistryError> {
        self.failover(|c| self.services_once(c)).await
    }

    async fn probe(&self) -> Result<(), RegistryError> {
        self.failover(|c| self.probe_once(c)).await
    }

    async fn tombstones(
        &self,
        service: &ServiceName,
    ) -> Result<BTreeMap<InstanceId, u64>, RegistryError> {
        self.failover(|c| self.tombstones_once(c, service)).await
    }

    async fn lead(&self, holder: &str, ttl: Duration) -> Result<bool, RegistryError> {
        self.failover(|c| self.lead_once(c, holder, ttl)).await
    }

    async fn leader(&self) -> Result<Option<String>, RegistryError> {
        self.failover(|c| self.leader_once(c)).await
    }

    async fn cluster_members(&self, within: Duration) -> Result<Vec<ClusterMember>, RegistryError> {
        self.members_within(within).await
    }

    fn watch(self: Arc<Self>, service: ServiceName, every: Duration, out: FeedSender) {
        tokio::spawn(self.watch_loop(service, every, out));
    }
}
