//! The etcd adapter (primary registry).
//!
//! An instance is the key `{prefix}/{service}/{id}` attached to a lease of `ttl_seconds`. The value
//! is JSON holding the record's fields plus `Op`, `Addr` and `Metadata`, so etcd's own gRPC name
//! resolver reads it as an endpoint of target `{prefix}/{service}`. A heartbeat renews the lease
//! over the connection's long-lived keepalive stream ([`keepalive`]) while checking that the key
//! is still there; the lease ID comes from this replica's memory or, on a miss, from the key (so
//! any replica can serve any heartbeat).
//!
//! Connections: each pooled object is one HTTP/2 connection to one member (members are dealt out
//! round-robin), dialed by [`super::transport`] so TLS handshakes are counted, DNS is resolved at
//! every reconnect, and reconnects resume the TLS session.

mod keepalive;
mod watch;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use serde::{Deserialize, Serialize};

use crate::config::EtcdConfig;
use crate::error::RegistryError;
use crate::metrics::Handshakes;
use crate::model::{
    DEFAULT_TTL_SECONDS, Instance, InstanceId, InstanceKey, MAX_TTL_SECONDS, MIN_TTL_SECONDS,
    ServiceName,
};
use crate::pool::{Connect, WarmPool};
use crate::registry::transport::Dialer;
use crate::registry::{FeedSender, Liveness, Registry, RegistryKind};
use crate::tls::{Certs, registry_client_config};
use keepalive::KeepAliveMux;

const KIND: RegistryKind = RegistryKind::Etcd;
/// HTTP/2 PING interval and timeout on etcd channels: a dead or blackholed member is noticed in
/// seconds, and idle connections are kept open through NATs and load balancers.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The JSON value stored under each key.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Record {
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
    pub(crate) fn from_instance(i: &Instance) -> Self {
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

/// One pooled connection: an HTTP/2 channel to one member, and its keepalive stream.
#[derive(Clone)]
pub struct EtcdConn {
    client: Client,
    keepalive: Arc<KeepAliveMux>,
    /// Index of the member in `etcd.endpoints`.
    member: usize,
}

/// Connects one pooled object to the next member in turn, and proves it with a round trip (so
/// the TLS handshake is done before the first request).
pub struct EtcdConnect {
    members: Vec<Dialer>,
    next: AtomicUsize,
    options: ConnectOptions,
    probe_key: String,
}

impl Connect for EtcdConnect {
    type Client = EtcdConn;

    async fn connect(&self) -> Result<EtcdConn, String> {
        let member = self.next.fetch_add(1, Ordering::Relaxed) % self.members.len();
        let dialer = self.members[member].clone();
        let authority = dialer.authority();
        // The dialer does TLS itself (to count handshakes), so tonic sees a plain http:// URI.
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|e| format!("etcd endpoint {authority}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true)
            .connect_with_connector_lazy(dialer.connector());
        let mut client = Client::from_channel(
            etcd_client::Channel::Tonic(channel),
            Some(self.options.clone()),
        )
        .await
        .map_err(|e| format!("{authority}: {}", describe(&e)))?;
        probe(&mut client, &self.probe_key)
            .await
            .map_err(|e| format!("{authority}: {}", describe(&e)))?;
        Ok(EtcdConn {
            client,
            keepalive: Arc::default(),
            member,
        })
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

/// How fresh a read must be.
#[derive(Clone, Copy)]
enum Read {
    /// From the member's own state (serializable): may lag the leader by a moment.
    Local,
    /// Linearizable: everything committed before the read.
    Latest,
}

/// What the key holds now: enough to fence by generation and to compare-and-swap.
struct Stored {
    generation: u64,
    /// The record's TTL: its lease is reused by a re-registration with the same TTL.
    ttl_seconds: u32,
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
/// revoke them (all but `kept`, the lease the transaction wrote with). In the background: the
/// write is done, and the answer need not wait for a third consensus round to tidy up.
fn revoke_replaced(client: &Client, replaced: &Current, kept: i64) {
    let old_record = replaced.record.as_ref().map(|s| s.lease);
    let old_tomb = replaced.tombstone.map(|(_, _, l)| l);
    for old in [old_record, old_tomb].into_iter().flatten() {
        if old != 0 && old != kept {
            revoke_replaced_lease(client, old);
        }
    }
}

/// Revokes a lease that holds nothing any more, in the background.
fn revoke_replaced_lease(client: &Client, lease: i64) {
    let mut client = client.clone();
    tokio::spawn(async move { revoke_quietly(&mut client, lease).await });
}

async fn revoke_quietly(client: &mut Client, lease: i64) {
    // Failure only means the lease expires on its own.
    if let Err(e) = client.lease_revoke(lease).await {
        tracing::debug!(lease, error = %describe(&e), "revoking an etcd lease failed");
    }
}

/// The lease each instance's key was last seen on, so a heartbeat renews it without first reading
/// the key. Only a hint: every heartbeat checks it against the key. An entry unused for longer
/// than the longest TTL is dropped (its lease has expired by then).
#[derive(Default)]
struct LeaseHints {
    map: std::sync::Mutex<HashMap<InstanceKey, (i64, Instant)>>,
    swept: std::sync::Mutex<Option<Instant>>,
}

const HINT_LIFETIME: Duration = Duration::from_secs(MAX_TTL_SECONDS as u64);

impl LeaseHints {
    fn get(&self, key: &InstanceKey) -> Option<i64> {
        self.map
            .lock()
            .expect("not poisoned")
            .get(key)
            .map(|&(lease, _)| lease)
    }

    fn set(&self, key: &InstanceKey, lease: i64) {
        let now = Instant::now();
        let mut map = self.map.lock().expect("not poisoned");
        match map.get_mut(key) {
            Some(entry) => *entry = (lease, now),
            None => {
                map.insert(key.clone(), (lease, now));
            }
        }
    }

    fn forget(&self, key: &InstanceKey) {
        self.map.lock().expect("not poisoned").remove(key);
    }

    /// Drops stale entries, at most once a minute (called from the frequent probe).
    fn sweep(&self) {
        let now = Instant::now();
        let mut swept = self.swept.lock().expect("not poisoned");
        if swept.is_some_and(|t| now.duration_since(t) < Duration::from_secs(60)) {
            return;
        }
        *swept = Some(now);
        drop(swept);
        self.map
            .lock()
            .expect("not poisoned")
            .retain(|_, (_, used)| now.duration_since(*used) < HINT_LIFETIME);
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
    leases: LeaseHints,
}

impl Etcd {
    pub fn new(
        cfg: &EtcdConfig,
        handshakes: Handshakes,
        certs: &Certs,
    ) -> Result<(Self, Arc<WarmPool<EtcdConnect>>), String> {
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
                registry_client_config("etcd", cfg.ca.as_deref(), cert_key, counted, certs)
                    .map_err(|e| e.to_string())?;
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
                attempts: cfg.endpoints.len().max(2),
                leadership: std::sync::Mutex::new(None),
                pool: pool.clone(),
                leases: LeaseHints::default(),
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
        loop {
            let conn = self
                .pool
                .client_where(|c: &EtcdConn| Some(c.member) != avoid)
                .await?;
            let member = conn.member;
            match op(conn).await {
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

    /// Reads the record (generation, revision, lease; garbage counts as generation 0) and the
    /// tombstone in one transaction.
    ///
    /// `Read::Local` is a serializable read (no consensus round): enough for a first attempt,
    /// since the write that follows is guarded by the revisions read, and a stale read only
    /// makes the guard fail; retries read with `Read::Latest`.
    async fn current(
        &self,
        client: &mut Client,
        key: &InstanceKey,
        read: Read,
    ) -> Result<Current, RegistryError> {
        let opts = || match read {
            Read::Local => Some(GetOptions::new().with_serializable()),
            Read::Latest => None,
        };
        let txn = Txn::new().and_then([
            TxnOp::get(self.key(key), opts()),
            TxnOp::get(self.tombstone_key(key), opts()),
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
            record: rec.kvs().first().map(|kv| {
                let decoded = Record::decode(key, kv.value());
                Stored {
                    generation: decoded.as_ref().map_or(0, |i| i.generation),
                    ttl_seconds: decoded.as_ref().map_or(0, |i| i.ttl_seconds),
                    mod_revision: kv.mod_revision(),
                    lease: kv.lease(),
                }
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
        conn: EtcdConn,
        service: &ServiceName,
    ) -> Result<BTreeMap<InstanceId, u64>, RegistryError> {
        let mut client = conn.client.clone();
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
}

/// The operations, each one attempt; [`Registry`] wraps them with fail-over.
impl Etcd {
    async fn register_once(
        &self,
        conn: EtcdConn,
        instance: &Instance,
    ) -> Result<(), RegistryError> {
        let mut client = conn.client.clone();
        let key = self.key(&instance.key);
        let tomb = self.tombstone_key(&instance.key);
        let value = serde_json::to_vec(&Record::from_instance(instance))
            .map_err(|e| RegistryError::rejected(KIND, format!("encoding the record: {e}")))?;
        let ttl = i64::from(instance.ttl_seconds);
        // A re-registration keeps the instance's live lease when its TTL is unchanged: the write
        // is then one consensus round (the put; the renewal rides the keepalive stream) instead
        // of three (grant, put, revoke). For an instance this replica has no lease for, the new
        // lease is granted while the current state is read: one round trip.
        let (mut current, mut granted) = if self.leases.get(&instance.key).is_some() {
            (
                self.current(&mut client, &instance.key, Read::Local)
                    .await?,
                None,
            )
        } else {
            let mut reader = client.clone();
            let mut granter = client.clone();
            let (current, lease) = tokio::try_join!(
                self.current(&mut reader, &instance.key, Read::Local),
                async { Ok(granter.lease_grant(ttl, None).await.map_err(to_err)?.id()) }
            )?;
            (current, Some(lease))
        };
        let mut may_reuse = true;
        for _ in 0..CAS_ATTEMPTS {
            if current.newest() > instance.generation {
                // A newer write or delete is already there: this one is obsolete.
                tracing::debug!(instance = %instance.key, "etcd holds a newer generation; write fenced");
                if let Some(lease) = granted {
                    revoke_quietly(&mut client, lease).await;
                }
                return Ok(());
            }
            let reuse = current
                .record
                .as_ref()
                .filter(|s| may_reuse && s.lease != 0 && s.ttl_seconds == instance.ttl_seconds)
                .map(|s| s.lease);
            let lease = match (reuse, granted) {
                (Some(lease), _) | (None, Some(lease)) => lease,
                (None, None) => {
                    let lease = client.lease_grant(ttl, None).await.map_err(to_err)?.id();
                    granted = Some(lease);
                    lease
                }
            };
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
            let mut writer = client.clone();
            let written = async { writer.txn(txn).await.map_err(to_err) };
            let outcome = match reuse {
                Some(lease) => {
                    let renewed = conn.keepalive.keep_alive(&conn.client, lease);
                    match tokio::join!(written, renewed) {
                        (Ok(w), Ok(ttl_left)) if ttl_left > 0 => Ok(w.succeeded()),
                        // The lease lapsed under us (the put then fails too): take a new one.
                        (Ok(_), Ok(_)) | (Err(_), Ok(_)) => Err(()),
                        (Err(e), Err(_)) | (Ok(_), Err(e)) => return Err(e),
                    }
                }
                None => Ok(written.await?.succeeded()),
            };
            match outcome {
                Ok(true) => {
                    self.leases.set(&instance.key, lease);
                    revoke_replaced(&client, &current, lease);
                    if let Some(unused) = granted.filter(|g| *g != lease) {
                        revoke_replaced_lease(&client, unused);
                    }
                    return Ok(());
                }
                Ok(false) => {}
                Err(()) => may_reuse = false,
            }
            current = self
                .current(&mut client, &instance.key, Read::Latest)
                .await?;
        }
        if let Some(lease) = granted {
            revoke_quietly(&mut client, lease).await;
        }
        Err(RegistryError::unavailable(
            KIND,
            "etcd: the key kept changing under concurrent writes; retry",
        ))
    }

    async fn heartbeat_once(
        &self,
        conn: EtcdConn,
        key: &InstanceKey,
    ) -> Result<Liveness, RegistryError> {
        let path = self.key(key);
        let known = self.leases.get(key);
        let (on_key, renewed) = match known {
            // Renew the remembered lease and check the key in the same round trip.
            Some(lease) => {
                let (on_key, ttl) = tokio::try_join!(
                    self.lease_on_key(&conn, &path),
                    conn.keepalive.keep_alive(&conn.client, lease),
                )?;
                (on_key, Some((lease, ttl)))
            }
            None => (self.lease_on_key(&conn, &path).await?, None),
        };
        let lease = match on_key {
            // A key without a lease never expires: not one twinreg wrote. Treat it as lost so
            // the heartbeat rewrites it with a lease.
            None | Some(0) => {
                self.leases.forget(key);
                return Ok(Liveness::Unknown);
            }
            Some(lease) => lease,
        };
        let ttl = match renewed {
            Some((renewed, ttl)) if renewed == lease => ttl,
            // First heartbeat here, or the key moved to another lease (re-registered through
            // another replica): renew the lease the key is on.
            _ => conn.keepalive.keep_alive(&conn.client, lease).await?,
        };
        if ttl > 0 {
            self.leases.set(key, lease);
            Ok(Liveness::Renewed)
        } else {
            self.leases.forget(key);
            Ok(Liveness::Unknown)
        }
    }

    /// The lease of the key, `None` when there is no key. A serializable read (no consensus
    /// round); only a miss is confirmed with a linearizable one, so a member lagging behind a
    /// just-made registration never makes a heartbeat rewrite it.
    async fn lease_on_key(
        &self,
        conn: &EtcdConn,
        path: &str,
    ) -> Result<Option<i64>, RegistryError> {
        let mut client = conn.client.clone();
        let fast = GetOptions::new().with_keys_only().with_serializable();
        let resp = client.get(path, Some(fast)).await.map_err(to_err)?;
        if let Some(kv) = resp.kvs().first() {
            return Ok(Some(kv.lease()));
        }
        let sure = GetOptions::new().with_keys_only();
        let resp = client.get(path, Some(sure)).await.map_err(to_err)?;
        Ok(resp.kvs().first().map(|kv| kv.lease()))
    }

    /// Deletes the record and leaves a tombstone (the deregistration's generation, on a lease of
    /// [`TOMBSTONE_TTL`]) in the same transaction, so the sweep can tell "deregistered" from
    /// "never arrived here".
    async fn deregister_once(
        &self,
        conn: EtcdConn,
        key: &InstanceKey,
        generation: u64,
    ) -> Result<bool, RegistryError> {
        let mut client = conn.client.clone();
        let path = self.key(key);
        let tomb = self.tombstone_key(key);
        let mut reader = client.clone();
        let mut granter = client.clone();
        let (mut current, tomb_lease) =
            tokio::try_join!(self.current(&mut reader, key, Read::Local), async {
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
                self.leases.forget(key);
                revoke_replaced(&client, &current, tomb_lease);
                return Ok(current.record.is_some());
            }
            current = self.current(&mut client, key, Read::Latest).await?;
        }
        revoke_quietly(&mut client, tomb_lease).await;
        Err(RegistryError::unavailable(
            KIND,
            "etcd: the key kept changing under concurrent writes; retry",
        ))
    }

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

    async fn list_once(
        &self,
        conn: EtcdConn,
        service: &ServiceName,
    ) -> Result<Vec<Instance>, RegistryError> {
        let mut client = conn.client.clone();
        let dir = format!("{}/{}/", self.prefix, service);
        let resp = client
            .get(dir.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(to_err)?;
        Ok(decode_dir(&dir, service, resp.kvs()))
    }

    async fn services_once(&self, conn: EtcdConn) -> Result<BTreeSet<ServiceName>, RegistryError> {
        let mut client = conn.client.clone();
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

    async fn probe_once(&self, conn: EtcdConn) -> Result<(), RegistryError> {
        self.leases.sweep();
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

    /// A lease-based election on `{prefix}/.sweeper`: the holder keeps its lease alive on every
    /// call; if it stops calling (crashed, partitioned), the lease lapses and another takes over.
    async fn lead_once(
        &self,
        conn: EtcdConn,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, RegistryError> {
        let mut client = conn.client.clone();
        let key = format!("{}/{LEADER_KEY}", self.prefix);
        let held = *self.leadership.lock().expect("not poisoned");
        if let Some(lease) = held {
            if conn.keepalive.keep_alive(&conn.client, lease).await? > 0 {
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
        self.failover(|c| self.register_once(c, instance)).await
    }

    async fn heartbeat(&self, key: &InstanceKey) -> Result<Liveness, RegistryError> {
        self.failover(|c| self.heartbeat_once(c, key)).await
    }

    async fn deregister(&self, key: &InstanceKey, generation: u64) -> Result<bool, RegistryError> {
        self.failover(|c| self.deregister_once(c, key, generation))
            .await
    }

    async fn get(&self, key: &InstanceKey) -> Result<Option<Instance>, RegistryError> {
        self.failover(|c| self.get_once(c, key)).await
    }

    async fn list(&self, service: &ServiceName) -> Result<Vec<Instance>, RegistryError> {
        self.failover(|c| self.list_once(c, service)).await
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

    fn watch(self: Arc<Self>, service: ServiceName, every: Duration, out: FeedSender) {
        tokio::spawn(self.watch_loop(service, every, out));
    }
}

/// What a key under a service's directory holds.
pub(crate) enum KeyRead {
    /// A twinreg instance.
    Instance(Instance),
    /// An instance key whose value twinreg cannot read (written by another tool).
    Garbage(InstanceId),
}

/// Reads one key of the directory `dir` (`{prefix}/{service}/`); `None` for a key that cannot be
/// an instance of `service` (outside the directory, or an id the API would refuse).
pub(crate) fn decode_kv(
    dir: &str,
    service: &ServiceName,
    key: &[u8],
    value: &[u8],
) -> Option<KeyRead> {
    let id = key.strip_prefix(dir.as_bytes())?;
    let id = InstanceId::parse(std::str::from_utf8(id).ok()?).ok()?;
    let key = InstanceKey {
        service: service.clone(),
        id,
    };
    Some(match Record::decode(&key, value) {
        Some(i) => KeyRead::Instance(i),
        None => KeyRead::Garbage(key.id),
    })
}

/// The instances among a directory's keys; unreadable records are logged and skipped.
fn decode_dir(dir: &str, service: &ServiceName, kvs: &[etcd_client::KeyValue]) -> Vec<Instance> {
    let mut out = Vec::with_capacity(kvs.len());
    for kv in kvs {
        match decode_kv(dir, service, kv.key(), kv.value()) {
            Some(KeyRead::Instance(i)) => out.push(i),
            _ => tracing::warn!(
                key = %String::from_utf8_lossy(kv.key()),
                "skipping an etcd record twinreg cannot read"
            ),
        }
    }
    out
}

/// A message for an etcd error: the gRPC status message, never credentials; a refusal of the
/// credentials or of a permission says what to check.
fn describe(e: &etcd_client::Error) -> String {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            let hint = match s.code() {
                Code::Unauthenticated => AUTH_HINT,
                Code::InvalidArgument if s.message().contains("authentication failed") => AUTH_HINT,
                Code::PermissionDenied => PERMISSION_HINT,
                _ => "",
            };
            format!("etcd: {} ({:?}){hint}", s.message(), s.code())
        }
        other => format!("etcd: {other}"),
    }
}

const AUTH_HINT: &str = "; check etcd.username and etcd.password (TWINREG_ETCD__PASSWORD)";
const PERMISSION_HINT: &str = "; the etcd user's role must grant readwrite on the key prefix \
                               etcd.prefix + '/' (see docs/credentials.md)";

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
    fn refusals_say_what_to_check() {
        let status = |s: tonic::Status| describe(&etcd_client::Error::GRpcStatus(s));
        let wrong = status(tonic::Status::invalid_argument(
            "etcdserver: authentication failed, invalid user ID or password",
        ));
        assert!(
            wrong.contains("check etcd.username and etcd.password"),
            "{wrong}"
        );
        let expired = status(tonic::Status::unauthenticated(
            "etcdserver: invalid auth token",
        ));
        assert!(expired.contains("check etcd.username"), "{expired}");
        let denied = status(tonic::Status::permission_denied(
            "etcdserver: permission denied",
        ));
        assert!(denied.contains("readwrite on the key prefix"), "{denied}");
        let other = status(tonic::Status::invalid_argument(
            "etcdserver: too many operations",
        ));
        assert!(!other.contains("check"), "{other}");
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
