//! Leases: the lease each instance's key was last seen on (a hint, so a heartbeat renews it
//! without first reading the key), the heartbeat that renews it over the connection's keepalive
//! stream, and the sweeper election held on a lease of its own.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};

use super::Etcd;
use super::connect::EtcdConn;
use super::errors::to_err;
use super::txn::revoke_quietly;
use crate::model::{InstanceKey, MAX_TTL_SECONDS};
use crate::registry::Liveness;
use crate::registry::RegistryError;

/// The lease each instance's key was last seen on, so a heartbeat renews it without first reading
/// the key. Only a hint: every heartbeat checks it against the key. An entry unused for longer
/// than the longest TTL is dropped (its lease has expired by then).
#[derive(Default)]
pub(super) struct LeaseHints {
    map: std::sync::Mutex<HashMap<InstanceKey, (i64, Instant)>>,
    swept: std::sync::Mutex<Option<Instant>>,
}

const HINT_LIFETIME: Duration = Duration::from_secs(MAX_TTL_SECONDS as u64);

impl LeaseHints {
    pub(super) fn get(&self, key: &InstanceKey) -> Option<i64> {
        self.map
            .lock()
            .expect("not poisoned")
            .get(key)
            .map(|&(lease, _)| lease)
    }

    pub(super) fn set(&self, key: &InstanceKey, lease: i64) {
        let now = Instant::now();
        let mut map = self.map.lock().expect("not poisoned");
        match map.get_mut(key) {
            Some(entry) => *entry = (lease, now),
            None => {
                map.insert(key.clone(), (lease, now));
            }
        }
    }

    pub(super) fn forget(&self, key: &InstanceKey) {
        self.map.lock().expect("not poisoned").remove(key);
    }

    /// Drops stale entries, at most once a minute (called from the frequent probe).
    pub(super) fn sweep(&self) {
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
pub(super) const LEADER_KEY: &str = ".sweeper";

impl Etcd {
    pub(super) async fn heartbeat_once(
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
}
