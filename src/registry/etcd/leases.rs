//! Leases: the few shared leases this replica attaches its keys to (one per TTL class), the
//! announcement that tells other replicas which leases are this replica's, the rotating lease
//! tombstones ride on, and the sweeper election held on a lease of its own.
//!
//! - A key rides on the lease of its class ([`lease_ttl`]): at most [`LEASE_TTLS`]`.len()` leases
//!   per replica, whatever the number of instances. They are kept alive every [`KEEPALIVE_EVERY`]
//!   while the replica runs, so a key never depends on its client's heartbeats: twinreg expires
//!   an instance itself. When the replica dies they lapse within their TTL, which is therefore
//!   the slack by which an instance can outlive its `ttl_seconds` when no replica is left.
//! - The announcement `{prefix}/.replicas/{replica}` (on a lease of [`ANNOUNCE_TTL`], kept alive
//!   with the others) lists those leases. A lease is announced before the first key is written
//!   on it, so a key whose lease no live replica announces was left by a replica that died.
//! - When a replica dies, the survivors keep its data leases alive for [`BRIDGE_FOR`] (a
//!   handful of keepalives, whatever the number of keys on them) while they move its keys onto
//!   their own leases, so no key lapses while the take-over works through a large share (a
//!   hundred thousand guarded writes take longer than the few seconds a 10 s lease has left).
//!   A key nobody took over in that time lapses with the lease, as it would have at once; if
//!   every replica is gone, nobody bridges and everything lapses within its class TTL.
//! - Tombstones share one lease per [`TOMBSTONE_ROTATE`], of `TOMBSTONE_TTL + TOMBSTONE_ROTATE`,
//!   never kept alive: a tombstone lives between one and one and a third hours.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Etcd;
use super::connect::EtcdConn;
use super::errors::{describe, to_err};
use super::txn::{TOMBSTONE_TTL, revoke_quietly};
use crate::registry::{Observed, ObservedSender, RegistryError};

/// The TTLs of the shared leases, one lease per class and replica.
pub const LEASE_TTLS: [u32; 7] = [8, 10, 15, 20, 30, 45, 60];
/// The TTL of a replica's announcement: how soon the others notice it died.
pub const ANNOUNCE_TTL: i64 = 3;
/// How often every lease of the replica is kept alive.
pub const KEEPALIVE_EVERY: Duration = Duration::from_secs(1);
/// How long survivors keep a dead replica's data leases alive while they take its keys over.
pub const BRIDGE_FOR: Duration = Duration::from_secs(120);
/// How often tombstones move to a new lease.
pub const TOMBSTONE_ROTATE: Duration = Duration::from_secs(1200);
/// Where replicas announce themselves, beside the services (no service name starts with '.').
pub(super) const REPLICAS_DIR: &str = ".replicas";

/// The TTL of the lease an instance of `ttl_seconds` rides on: the largest class not above a
/// third of its TTL, and at least the smallest class. So an instance outlives its TTL by at most
/// max(8 s, ttl/3), and at most 60 s, when every replica died.
pub fn lease_ttl(ttl_seconds: u32) -> u32 {
    let third = ttl_seconds / 3;
    LEASE_TTLS
        .iter()
        .copied()
        .filter(|c| *c <= third)
        .max()
        .unwrap_or(LEASE_TTLS[0])
}

/// What a replica announces.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Announcement {
    pub replica: String,
    /// Its data leases, by class TTL.
    pub leases: BTreeMap<u32, i64>,
}

/// This replica's leases.
#[derive(Default)]
pub(super) struct Leases {
    state: tokio::sync::Mutex<Own>,
    /// A copy of the data lease IDs for quick reads (holder checks).
    ids: std::sync::RwLock<BTreeMap<u32, i64>>,
    /// Other replicas' leases as announced: lease → replica.
    pub(super) peers: std::sync::RwLock<HashMap<i64, String>>,
    /// Dead replicas' data leases kept alive while their keys are taken over: lease → until.
    bridged: std::sync::Mutex<HashMap<i64, Instant>>,
    /// Bumped each time the leases are forgotten, so that of many calls failing on the same
    /// lost lease only the first makes new ones (see [`Leases::forget_since`]).
    epoch: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Own {
    announce: Option<i64>,
    tombstone: Option<(i64, Instant)>,
}

impl Leases {
    /// Whether `lease` is one of this replica's data leases.
    pub(super) fn is_mine(&self, lease: i64) -> bool {
        lease != 0
            && self
                .ids
                .read()
                .expect("not poisoned")
                .values()
                .any(|l| *l == lease)
    }

    /// Forgets every data lease and the tombstones' lease (etcd lost them); the announcement is
    /// put again, with the next lease granted.
    /// The current epoch: taken before a call, handed to [`Leases::forget_since`] if it fails
    /// on a lease etcd no longer knows.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Forgets every lease unless that was already done since `epoch`: calls in flight on a lost
    /// lease all fail, and were each to forget, every one would drop the new leases the one
    /// before it had just made (their keys left to lapse with them).
    pub(super) async fn forget_since(&self, epoch: u64) {
        let mut own = self.state.lock().await;
        if self.epoch() != epoch {
            return;
        }
        own.tombstone = None;
        own.announce = None;
        self.ids.write().expect("not poisoned").clear();
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    pub(super) fn count(&self) -> usize {
        self.ids.read().expect("not poisoned").len()
    }

    /// Keeps `leases` (a dead replica's) alive for [`BRIDGE_FOR`] from now, along with this
    /// replica's own.
    pub(super) fn bridge(&self, leases: impl IntoIterator<Item = i64>) {
        let until = Instant::now() + BRIDGE_FOR;
        let mut bridged = self.bridged.lock().expect("not poisoned");
        for l in leases {
            if l != 0 && !self.is_mine(l) {
                bridged.entry(l).or_insert(until);
            }
        }
    }

    /// The bridged leases still due a keepalive (those past their time are dropped).
    fn bridged_now(&self) -> Vec<i64> {
        let now = Instant::now();
        let mut bridged = self.bridged.lock().expect("not poisoned");
        bridged.retain(|_, until| *until > now);
        bridged.keys().copied().collect()
    }

    /// Stops bridging `lease` (etcd no longer knows it).
    fn unbridge(&self, lease: i64) {
        self.bridged.lock().expect("not poisoned").remove(&lease);
    }

    /// The replica that announced `lease`, if a live one did.
    pub(super) fn peer(&self, lease: i64) -> Option<String> {
        self.peers
            .read()
            .expect("not poisoned")
            .get(&lease)
            .cloned()
    }
}

impl Etcd {
    fn announcement_key(&self) -> String {
        format!("{}/{REPLICAS_DIR}/{}", self.prefix, self.replica)
    }

    /// The lease for keys of `ttl_seconds`, granted and announced first when there is none yet.
    pub(super) async fn class_lease(
        &self,
        conn: &EtcdConn,
        ttl_seconds: u32,
    ) -> Result<i64, RegistryError> {
        let class = lease_ttl(ttl_seconds);
        if let Some(l) = self.leases.ids.read().expect("not poisoned").get(&class) {
            return Ok(*l);
        }
        let mut own = self.leases.state.lock().await;
        if let Some(l) = self.leases.ids.read().expect("not poisoned").get(&class) {
            return Ok(*l);
        }
        let mut client = conn.client.clone();
        let lease = client
            .lease_grant(i64::from(class), None)
            .await
            .map_err(to_err)?
            .id();
        let mut ids = self.leases.ids.read().expect("not poisoned").clone();
        ids.insert(class, lease);
        // Announced before any key rides on it.
        self.announce(conn, &mut own, &ids).await?;
        *self.leases.ids.write().expect("not poisoned") = ids;
        Ok(lease)
    }

    /// Puts this replica's announcement listing `ids`, on its announcement lease (granted when
    /// there is none or it lapsed).
    async fn announce(
        &self,
        conn: &EtcdConn,
        own: &mut Own,
        ids: &BTreeMap<u32, i64>,
    ) -> Result<(), RegistryError> {
        let mut client = conn.client.clone();
        let lease = match own.announce {
            Some(l) => l,
            None => {
                let l = client
                    .lease_grant(ANNOUNCE_TTL, None)
                    .await
                    .map_err(to_err)?
                    .id();
                own.announce = Some(l);
                l
            }
        };
        let value = serde_json::to_vec(&Announcement {
            replica: self.replica.clone(),
            leases: ids.clone(),
        })
        .expect("an announcement serializes");
        let put = client
            .put(
                self.announcement_key(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await;
        if let Err(e) = put {
            // Most likely the announcement lease lapsed: grant a new one next time.
            own.announce = None;
            return Err(to_err(e));
        }
        Ok(())
    }

    /// The lease tombstones written now ride on.
    pub(super) async fn tombstone_lease(&self, conn: &EtcdConn) -> Result<i64, RegistryError> {
        let mut own = self.leases.state.lock().await;
        if let Some((l, at)) = own.tombstone
            && at.elapsed() < TOMBSTONE_ROTATE
        {
            return Ok(l);
        }
        let ttl = (TOMBSTONE_TTL + TOMBSTONE_ROTATE).as_secs() as i64;
        let mut client = conn.client.clone();
        let l = client.lease_grant(ttl, None).await.map_err(to_err)?.id();
        own.tombstone = Some((l, Instant::now()));
        Ok(l)
    }

    /// Keeps the data leases and the announcement alive every [`KEEPALIVE_EVERY`] until `stop`,
    /// then revokes the announcement (the others take over at once on a clean shutdown). A
    /// data lease etcd no longer knows (a long partition, a wiped cluster) is dropped, and every
    /// copy reported lost: the next write grants and announces a new one.
    pub(super) async fn keep_leases_alive(
        self: Arc<Self>,
        out: ObservedSender,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(KEEPALIVE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => break,
            }
            let Ok(conn) = self.pool.client().await else {
                continue;
            };
            let ids = self.leases.ids.read().expect("not poisoned").clone();
            let mut lost = Vec::new();
            for (class, lease) in &ids {
                if renew(&conn, *lease).await == Some(0) {
                    lost.push(*class);
                }
            }
            for lease in self.leases.bridged_now() {
                if renew(&conn, lease).await == Some(0) {
                    self.leases.unbridge(lease);
                }
            }
            let mut own = self.leases.state.lock().await;
            let announce_lost = match own.announce {
                Some(l) => renew(&conn, l).await == Some(0),
                None => !ids.is_empty(),
            };
            if lost.is_empty() && !announce_lost {
                continue;
            }
            let mut ids = self.leases.ids.read().expect("not poisoned").clone();
            for c in &lost {
                ids.remove(c);
            }
            if announce_lost {
                own.announce = None;
            }
            if let Err(e) = self.announce(&conn, &mut own, &ids).await {
                tracing::debug!(error = %e, "etcd: announcing this replica failed; retrying");
            }
            *self.leases.ids.write().expect("not poisoned") = ids;
            drop(own);
            if !lost.is_empty() {
                tracing::warn!(classes = ?lost, "etcd lost shared leases of this replica; writing every copy again");
                if !out.send(Observed::LostAll).await {
                    return;
                }
            }
        }
        let own = self.leases.state.lock().await;
        if let (Some(l), Ok(conn)) = (own.announce, self.pool.client().await) {
            let mut client = conn.client.clone();
            if let Err(e) = client.lease_revoke(l).await {
                tracing::debug!(error = %describe(&e), "etcd: withdrawing this replica's announcement failed");
            }
        }
    }
}

/// Renews `lease` once, bounded by two keepalive periods: its new TTL (0 when etcd no longer
/// knows it), or `None` when the renewal failed or timed out (logged; the next round retries).
async fn renew(conn: &EtcdConn, lease: i64) -> Option<i64> {
    match tokio::time::timeout(
        KEEPALIVE_EVERY * 2,
        conn.keepalive.keep_alive(&conn.client, lease),
    )
    .await
    {
        Ok(Ok(ttl)) => Some(ttl),
        Ok(Err(e)) => {
            tracing::debug!(lease, error = %e, "etcd: keeping a lease alive failed");
            None
        }
        Err(_) => {
            tracing::debug!(lease, "etcd: keeping a lease alive timed out");
            None
        }
    }
}

/// The anti-entropy sweeper's election key, beside the services (no service name starts with '.').
pub(super) const LEADER_KEY: &str = ".sweeper";

impl Etcd {
    /// A lease-based election on `{prefix}/.sweeper`: the holder keeps its lease alive on every
    /// call; if it stops calling (crashed, partitioned), the lease lapses and another takes over.
    pub(super) async fn lead_once(
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

    /// The sweeper leadership's holder, read from its key.
    pub(super) async fn leader_once(
        &self,
        conn: EtcdConn,
    ) -> Result<Option<String>, RegistryError> {
        let mut client = conn.client.clone();
        let key = format!("{}/{LEADER_KEY}", self.prefix);
        let resp = client.get(key.as_str(), None).await.map_err(to_err)?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }
}
