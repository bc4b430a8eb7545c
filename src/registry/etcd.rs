//! The etcd adapter (primary registry).
//!
//! An instance is the key `{prefix}/{service}/{id}` attached to a lease of `ttl_seconds`. The value
//! is JSON holding the record's fields plus `Op`, `Addr` and `Metadata`, so etcd's own gRPC name
//! resolver reads it as an endpoint of target `{prefix}/{service}`. A heartbeat looks the lease up
//! from the key (so any replica can serve it) and renews it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp, TxnOpResponse,
};
use serde::{Deserialize, Serialize};

use crate::config::EtcdConfig;
use crate::error::RegistryError;
use crate::model::{
    DEFAULT_TTL_SECONDS, Instance, InstanceId, InstanceKey, MAX_TTL_SECONDS, MIN_TTL_SECONDS,
    ServiceName,
};
use crate::pool::{Connect, WarmPool};
use crate::registry::{Liveness, Registry, RegistryKind};

const KIND: RegistryKind = RegistryKind::Etcd;
/// HTTP/2 PING interval and timeout on etcd channels: a dead or blackholed member is noticed in
/// seconds, and idle connections are kept open through NATs and load balancers.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP keepalive, below the common 350 s NAT idle timeout.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The JSON value stored under each key.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    service: String,
    id: String,
    address: String,
    port: u16,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    meta: BTreeMap<String, String>,
    #[serde(default = "default_ttl")]
    ttl_seconds: u32,
    #[serde(default)]
    generation: u64,
    /// etcd naming `endpoints.Update`: 0 = Add.
    #[serde(rename = "Op", default)]
    op: u8,
    #[serde(rename = "Addr", default)]
    addr: String,
    #[serde(rename = "Metadata", default)]
    metadata: serde_json::Value,
}

fn default_ttl() -> u32 {
    DEFAULT_TTL_SECONDS
}

impl Record {
    fn from_instance(i: &Instance) -> Self {
        let addr = match i.address.parse::<IpAddr>() {
            Ok(ip) => std::net::SocketAddr::new(ip, i.port).to_string(),
            Err(_) => format!("{}:{}", i.address, i.port),
        };
        Record {
            service: i.key.service.to_string(),
            id: i.key.id.to_string(),
            address: i.address.clone(),
            port: i.port,
            tags: i.tags.clone(),
            meta: i.meta.clone(),
            ttl_seconds: i.ttl_seconds,
            generation: i.generation,
            op: 0,
            addr,
            metadata: serde_json::to_value(&i.meta).unwrap_or_default(),
        }
    }

    /// Decodes a value another tool may have written; garbage gives `None`, never a panic.
    fn decode(key: &InstanceKey, value: &[u8]) -> Option<Instance> {
        let r: Record = serde_json::from_slice(value).ok()?;
        if r.service != key.service.as_str() || r.id != key.id.as_str() {
            return None;
        }
        if r.address.is_empty() || r.port == 0 {
            return None;
        }
        let ttl = if (MIN_TTL_SECONDS..=MAX_TTL_SECONDS).contains(&r.ttl_seconds) {
            r.ttl_seconds
        } else {
            DEFAULT_TTL_SECONDS
        };
        Some(Instance {
            key: key.clone(),
            address: r.address,
            port: r.port,
            tags: r.tags,
            meta: r.meta,
            ttl_seconds: ttl,
            generation: r.generation,
        })
    }
}

/// Connects one etcd client (one HTTP/2 channel over all endpoints) and proves it.
pub struct EtcdConnect {
    endpoints: Vec<String>,
    options: ConnectOptions,
    probe_key: String,
}

impl Connect for EtcdConnect {
    type Client = Client;

    async fn connect(&self) -> Result<Client, String> {
        let mut client = Client::connect(&self.endpoints, Some(self.options.clone()))
            .await
            .map_err(|e| describe(&e))?;
        probe(&mut client, &self.probe_key)
            .await
            .map_err(|e| describe(&e))?;
        Ok(client)
    }
}

async fn probe(client: &mut Client, probe_key: &str) -> Result<(), etcd_client::Error> {
    client
        .get(
            probe_key,
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_keys_only()
                    .with_limit(1),
            ),
        )
        .await
        .map(drop)
}

/// Tombstones live beside the instances, under a name no service can have (it starts with '.').
const TOMBSTONE_DIR: &str = ".tombstones";

/// How often a compare-and-swap is retried when another writer changed the key in between.
const CAS_ATTEMPTS: usize = 5;

/// How long a deregistration is remembered (its tombstone's lease): longer than an instance can
/// linger in Consul after a missed delete (its TTL, `deregister_critical_after`, the reaper), so
/// the anti-entropy sweep removes such a leftover instead of copying it back.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(3600);

/// What the key holds now: enough to fence by generation and to compare-and-swap.
struct Stored {
    generation: u64,
    mod_revision: i64,
    lease: i64,
}

/// The record and the tombstone of one instance, read together.
struct Current {
    record: Option<Stored>,
    /// `(generation, mod_revision, lease)` of the last deregistration, while remembered.
    tombstone: Option<(u64, i64, i64)>,
}

impl Current {
    /// The newest generation this instance has seen here, live or deleted.
    fn newest(&self) -> u64 {
        let r = self.record.as_ref().map_or(0, |s| s.generation);
        let t = self.tombstone.map_or(0, |(g, _, _)| g);
        r.max(t)
    }

    /// The transaction guards "record and tombstone are as we read them".
    fn unchanged(&self, key: &str, tomb: &str) -> [Compare; 2] {
        let rec = match &self.record {
            Some(s) => Compare::mod_revision(key, CompareOp::Equal, s.mod_revision),
            None => Compare::create_revision(key, CompareOp::Equal, 0),
        };
        let t = match self.tombstone {
            Some((_, rev, _)) => Compare::mod_revision(tomb, CompareOp::Equal, rev),
            None => Compare::create_revision(tomb, CompareOp::Equal, 0),
        };
        [rec, t]
    }
}

/// After a transaction replaced the record and/or the tombstone, their old leases hold nothing:
/// revoke them (all but `kept`, the lease the transaction wrote with).
async fn revoke_replaced(client: &mut Client, replaced: &Current, kept: i64) {
    let old_record = replaced.record.as_ref().map(|s| s.lease);
    let old_tomb = replaced.tombstone.map(|(_, _, l)| l);
    for old in [old_record, old_tomb].into_iter().flatten() {
        if old != 0 && old != kept {
            revoke_quietly(client, old).await;
        }
    }
}

async fn revoke_quietly(client: &mut Client, lease: i64) {
    // Failure only means the lease expires on its own.
    if let Err(e) = client.lease_revoke(lease).await {
        tracing::debug!(lease, error = %describe(&e), "revoking an etcd lease failed");
    }
}

/// The anti-entropy sweeper's election key, beside the services (no service name starts with '.').
const LEADER_KEY: &str = ".sweeper";

pub struct Etcd {
    prefix: String,
    /// Attempts per operation: one per endpoint, at least two.
    attempts: usize,
    /// The lease of this replica's sweeper leadership, while it holds it.
    leadership: std::sync::Mutex<Option<i64>>,
    pool: Arc<WarmPool<EtcdConnect>>,
}

impl Etcd {
    pub fn new(cfg: &EtcdConfig) -> Result<(Self, Arc<WarmPool<EtcdConnect>>), String> {
        let mut options = ConnectOptions::new()
            .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
            .with_keep_alive_while_idle(true)
            .with_tcp_keepalive(TCP_KEEPALIVE)
            .with_connect_timeout(CONNECT_TIMEOUT);
        if let (Some(user), Some(pass)) = (&cfg.username, &cfg.password) {
            options = options.with_user(user.clone(), pass.expose().to_owned());
        }
        if cfg.endpoints.iter().any(|e| e.starts_with("https://")) {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &cfg.ca {
                let pem =
                    std::fs::read(ca).map_err(|e| format!("etcd.ca {}: {e}", ca.display()))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            if let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) {
                let c = std::fs::read(cert)
                    .map_err(|e| format!("etcd.cert {}: {e}", cert.display()))?;
                let k =
                    std::fs::read(key).map_err(|e| format!("etcd.key {}: {e}", key.display()))?;
                tls = tls.identity(Identity::from_pem(c, k));
            }
            options = options.with_tls(tls);
        }
        let connect = EtcdConnect {
            endpoints: cfg.endpoints.clone(),
            options,
            probe_key: format!("{}/", cfg.prefix),
        };
        let pool = WarmPool::new(KIND, connect, cfg.pool_size);
        Ok((
            Self {
                prefix: cfg.prefix.clone(),
                attempts: cfg.endpoints.len().max(2),
                leadership: std::sync::Mutex::new(None),
                pool: pool.clone(),
            },
            pool,
        ))
    }

    /// Runs `op` again, up to once per configured endpoint, while it fails to reach a member.
    async fn failover<T, F, Fut>(&self, op: F) -> Result<T, RegistryError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Err(e) if e.unreachable && attempt < self.attempts => {
                    tracing::debug!(attempt, error = %e, "etcd member unreachable; trying another");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn key(&self, key: &InstanceKey) -> String {
        format!("{}/{}/{}", self.prefix, key.service, key.id)
    }

    async fn client(&self) -> Result<Client, RegistryError> {
        self.pool.client().await
    }

    fn tombstone_key(&self, key: &InstanceKey) -> String {
        format!("{}/{TOMBSTONE_DIR}/{}/{}", self.prefix, key.service, key.id)
    }

    /// Reads the record (generation, revision, lease; garbage counts as generation 0) and the
    /// tombstone in one transaction.
    async fn current(
        &self,
        client: &mut Client,
        key: &InstanceKey,
    ) -> Result<Current, RegistryError> {
        let txn = Txn::new().and_then([
            TxnOp::get(self.key(key), None),
            TxnOp::get(self.tombstone_key(key), None),
        ]);
        let resp = client.txn(txn).await.map_err(to_err)?;
        let mut gets = resp.op_responses().into_iter().filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        });
        let (Some(rec), Some(tomb)) = (gets.next(), gets.next()) else {
            return Err(RegistryError::unavailable(
                KIND,
                "etcd: malformed transaction answer",
            ));
        };
        Ok(Current {
            record: rec.kvs().first().map(|kv| Stored {
                generation: Record::decode(key, kv.value()).map_or(0, |i| i.generation),
                mod_revision: kv.mod_revision(),
                lease: kv.lease(),
            }),
            tombstone: tomb.kvs().first().map(|kv| {
                let g = std::str::from_utf8(kv.value())
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                (g, kv.mod_revision(), kv.lease())
            }),
        })
    }

    /// Deregistrations remembered for `service`: id → generation.
    async fn tombstones_in(
        &self,
        service: &ServiceName,
    ) -> Result<BTreeMap<InstanceId, u64>, RegistryError> {
        let mut client = self.client().await?;
        let dir = format!("{}/{TOMBSTONE_DIR}/{service}/", self.prefix);
        let resp = client
            .get(dir.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(to_err)?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let id = std::str::from_utf8(kv.key().strip_prefix(dir.as_bytes())?).ok()?;
                let g = std::str::from_utf8(kv.value()).ok()?.trim().parse().ok()?;
                Some((InstanceId::parse(id).ok()?, g))
            })
            .collect())
    }

    async fn lease_of(
        &self,
        client: &mut Client,
        key: &InstanceKey,
    ) -> Result<Option<i64>, RegistryError> {
        let resp = client
            .get(self.key(key), Some(GetOptions::new().with_keys_only()))
            .await
            .map_err(to_err)?;
        Ok(resp.kvs().first().map(|kv| kv.lease()))
    }
}

/// The operations, each one attempt; [`Registry`] wraps them with fail-over.
impl Etcd {
    async fn register_once(&self, instance: &Instance) -> Result<(), RegistryError> {
        let mut client = self.client().await?;
        let key = self.key(&instance.key);
        let tomb = self.tombstone_key(&instance.key);
        let value = serde_json::to_vec(&Record::from_instance(instance))
            .map_err(|e| RegistryError::rejected(KIND, format!("encoding the record: {e}")))?;
        // Read the current state and grant the new lease concurrently: one round trip.
        let mut reader = client.clone();
        let mut granter = client.clone();
        let (mut current, lease) =
            tokio::try_join!(self.current(&mut reader, &instance.key), async {
                let ttl = i64::from(instance.ttl_seconds);
                Ok(granter.lease_grant(ttl, None).await.map_err(to_err)?.id())
            },)?;
        for _ in 0..CAS_ATTEMPTS {
            if current.newest() > instance.generation {
                // A newer write or delete is already there: this one is obsolete.
                tracing::debug!(instance = %instance.key, "etcd holds a newer generation; write fenced");
                revoke_quietly(&mut client, lease).await;
                return Ok(());
            }
            let put = TxnOp::put(
                key.as_str(),
                value.clone(),
                Some(PutOptions::new().with_lease(lease)),
            );
            let mut ops = vec![put];
            if current.tombstone.is_some() {
                ops.push(TxnOp::delete(tomb.as_str(), None));
            }
            let txn = Txn::new()
                .when(current.unchanged(&key, &tomb))
                .and_then(ops);
            if client.txn(txn).await.map_err(to_err)?.succeeded() {
                // The key moved to the new lease and the tombstone is gone.
                revoke_replaced(&mut client, &current, lease).await;
                return Ok(());
            }
            current = self.current(&mut client, &instance.key).await?;
        }
        revoke_quietly(&mut client, lease).await;
        Err(RegistryError::unavailable(
            KIND,
            "etcd: the key kept changing under concurrent writes; retry",
        ))
    }

    async fn heartbeat_once(&self, key: &InstanceKey) -> Result<Liveness, RegistryError> {
        let mut client = self.client().await?;
        let Some(lease) = self.lease_of(&mut client, key).await? else {
            return Ok(Liveness::Unknown);
        };
        if lease == 0 {
            // A key without a lease never expires: not one twinreg wrote. Treat as lost so the
            // heartbeat rewrites it with a lease.
            return Ok(Liveness::Unknown);
        }
        let (mut keeper, mut stream) = client.lease_keep_alive(lease).await.map_err(to_err)?;
        keeper.keep_alive().await.map_err(to_err)?;
        match stream.message().await.map_err(to_err)? {
            Some(resp) if resp.ttl() > 0 => Ok(Liveness::Renewed),
            Some(_) => Ok(Liveness::Unknown),
            None => Err(RegistryError::unavailable(
                KIND,
                "lease keepalive stream closed before answering",
            )),
        }
    }

    /// Deletes the record and leaves a tombstone (the deregistration's generation, on a lease of
    /// [`TOMBSTONE_TTL`]) in the same transaction, so the sweep can tell "deregistered" from
    /// "never arrived here".
    async fn deregister_once(
        &self,
        key: &InstanceKey,
        generation: u64,
    ) -> Result<bool, RegistryError> {
        let mut client = self.client().await?;
        let path = self.key(key);
        let tomb = self.tombstone_key(key);
        let mut reader = client.clone();
        let mut granter = client.clone();
        let (mut current, tomb_lease) = tokio::try_join!(self.current(&mut reader, key), async {
            let ttl = TOMBSTONE_TTL.as_secs() as i64;
            Ok(granter.lease_grant(ttl, None).await.map_err(to_err)?.id())
        })?;
        for _ in 0..CAS_ATTEMPTS {
            if current.newest() > generation {
                tracing::debug!(instance = %key, "etcd holds a newer registration; deregister fenced");
                revoke_quietly(&mut client, tomb_lease).await;
                return Ok(false);
            }
            let mut ops = vec![TxnOp::put(
                tomb.as_str(),
                generation.to_string(),
                Some(PutOptions::new().with_lease(tomb_lease)),
            )];
            if current.record.is_some() {
                ops.push(TxnOp::delete(path.as_str(), None));
            }
            let txn = Txn::new()
                .when(current.unchanged(&path, &tomb))
                .and_then(ops);
            if client.txn(txn).await.map_err(to_err)?.succeeded() {
                revoke_replaced(&mut client, &current, tomb_lease).await;
                return Ok(current.record.is_some());
            }
            current = self.current(&mut client, key).await?;
        }
        revoke_quietly(&mut client, tomb_lease).await;
        Err(RegistryError::unavailable(
            KIND,
            "etcd: the key kept changing under concurrent writes; retry",
        ))
    }

    async fn get_once(&self, key: &InstanceKey) -> Result<Option<Instance>, RegistryError> {
        let mut client = self.client().await?;
        let resp = client.get(self.key(key), None).await.map_err(to_err)?;
        Ok(resp
            .kvs()
            .first()
            .and_then(|kv| Record::decode(key, kv.value())))
    }

    async fn list_once(&self, service: &ServiceName) -> Result<Vec<Instance>, RegistryError> {
        let mut client = self.client().await?;
        let dir = format!("{}/{}/", self.prefix, service);
        let resp = client
            .get(dir.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(to_err)?;
        let mut out = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            let Some(id) = kv.key().strip_prefix(dir.as_bytes()) else {
                continue;
            };
            let key = std::str::from_utf8(id)
                .ok()
                .and_then(|id| InstanceId::parse(id).ok())
                .map(|id| InstanceKey {
                    service: service.clone(),
                    id,
                });
            match key.and_then(|k| Record::decode(&k, kv.value())) {
                Some(i) => out.push(i),
                None => tracing::warn!(
                    key = %String::from_utf8_lossy(kv.key()),
                    "skipping an etcd record twinreg cannot read"
                ),
            }
        }
        Ok(out)
    }

    async fn services_once(&self) -> Result<BTreeSet<ServiceName>, RegistryError> {
        let mut client = self.client().await?;
        let root = format!("{}/", self.prefix);
        let resp = client
            .get(
                root.as_str(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .map_err(to_err)?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let rest = kv.key().strip_prefix(root.as_bytes())?;
                let name = std::str::from_utf8(rest).ok()?.split('/').next()?;
                ServiceName::parse(name).ok()
            })
            .collect())
    }

    async fn probe_once(&self) -> Result<(), RegistryError> {
        let mut client = self.client().await?;
        probe(&mut client, &format!("{}/", self.prefix))
            .await
            .map_err(to_err)
    }

    async fn tombstones_once(
        &self,
        service: &ServiceName,
    ) -> Result<BTreeMap<InstanceId, u64>, RegistryError> {
        self.tombstones_in(service).await
    }

    /// A lease-based election on `{prefix}/.sweeper`: the holder keeps its lease alive on every
    /// call; if it stops calling (crashed, partitioned), the lease lapses and another takes over.
    async fn lead_once(&self, holder: &str, ttl: Duration) -> Result<bool, RegistryError> {
        let mut client = self.client().await?;
        let key = format!("{}/{LEADER_KEY}", self.prefix);
        let held = *self.leadership.lock().expect("not poisoned");
        if let Some(lease) = held {
            let (mut keeper, mut stream) = client.lease_keep_alive(lease).await.map_err(to_err)?;
            keeper.keep_alive().await.map_err(to_err)?;
            let alive = matches!(stream.message().await.map_err(to_err)?, Some(r) if r.ttl() > 0);
            if alive {
                let resp = client.get(key.as_str(), None).await.map_err(to_err)?;
                if resp.kvs().first().is_some_and(|kv| kv.lease() == lease) {
                    return Ok(true);
                }
            }
            *self.leadership.lock().expect("not poisoned") = None;
        }
        let lease = client
            .lease_grant(ttl.as_secs().max(1) as i64, None)
            .await
            .map_err(to_err)?
            .id();
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                holder,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        if client.txn(txn).await.map_err(to_err)?.succeeded() {
            *self.leadership.lock().expect("not poisoned") = Some(lease);
            Ok(true)
        } else {
            revoke_quietly(&mut client, lease).await;
            Ok(false)
        }
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

    async fn register(&self, instance: &Instance) -> Result<(), RegistryError> {
        self.failover(|| self.register_once(instance)).await
    }

    async fn heartbeat(&self, key: &InstanceKey) -> Result<Liveness, RegistryError> {
        self.failover(|| self.heartbeat_once(key)).await
    }

    async fn deregister(&self, key: &InstanceKey, generation: u64) -> Result<bool, RegistryError> {
        self.failover(|| self.deregister_once(key, generation))
            .await
    }

    async fn get(&self, key: &InstanceKey) -> Result<Option<Instance>, RegistryError> {
        self.failover(|| self.get_once(key)).await
    }

    async fn list(&self, service: &ServiceName) -> Result<Vec<Instance>, RegistryError> {
        self.failover(|| self.list_once(service)).await
    }

    async fn services(&self) -> Result<BTreeSet<ServiceName>, RegistryError> {
        self.failover(|| self.services_once()).await
    }

    async fn probe(&self) -> Result<(), RegistryError> {
        self.failover(|| self.probe_once()).await
    }

    async fn tombstones(
        &self,
        service: &ServiceName,
    ) -> Result<BTreeMap<InstanceId, u64>, RegistryError> {
        self.failover(|| self.tombstones_once(service)).await
    }

    async fn lead(&self, holder: &str, ttl: Duration) -> Result<bool, RegistryError> {
        self.failover(|| self.lead_once(holder, ttl)).await
    }
}

/// A message for an etcd error: the gRPC status message, never credentials.
fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            format!("etcd: {} ({:?})", s.message(), s.code())
        }
        other => format!("etcd: {other}"),
    }
}

fn to_err(e: etcd_client::Error) -> RegistryError {
    use tonic::Code;
    let msg = describe(&e);
    match &e {
        etcd_client::Error::GRpcStatus(s)
            if matches!(
                s.code(),
                Code::PermissionDenied
                    | Code::Unauthenticated
                    | Code::InvalidArgument
                    | Code::FailedPrecondition
            ) =>
        {
            RegistryError::rejected(KIND, msg)
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
            RegistryError::unreachable(KIND, msg)
        }
        etcd_client::Error::GRpcStatus(s) if s.code() == Code::Unavailable => {
            RegistryError::unreachable(KIND, msg)
        }
        _ => RegistryError::unavailable(KIND, msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> InstanceKey {
        InstanceKey::parse("payments", "pay-1").unwrap()
    }

    #[test]
    fn record_has_resolver_fields() {
        let i = Instance {
            key: key(),
            address: "::1".into(),
            port: 8080,
            tags: vec!["v2".into()],
            meta: [("zone".to_string(), "eu-1a".to_string())].into(),
            ttl_seconds: 30,
            generation: 7,
        };
        let v = serde_json::to_value(Record::from_instance(&i)).unwrap();
        assert_eq!(v["Op"], 0);
        assert_eq!(v["Addr"], "[::1]:8080");
        assert_eq!(v["Metadata"]["zone"], "eu-1a");
        assert_eq!(v["ttl_seconds"], 30);
        let back = Record::decode(&key(), &serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(back, i);
    }

    #[test]
    fn garbage_decodes_to_none() {
        for bad in [
            &b"not json"[..],
            b"{}",
            b"[1]",
            br#"{"service":"other","id":"pay-1","address":"h","port":1}"#,
        ] {
            assert!(Record::decode(&key(), bad).is_none());
        }
    }
}
