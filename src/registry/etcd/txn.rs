//! The guarded writes: a register or deregister reads the record and its tombstone, then writes in
//! one transaction that holds only if both are still as read (compare-and-swap), fenced by
//! generation so an older write never undoes a newer one.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};

use super::connect::EtcdConn;
use super::errors::{describe, to_err};
use super::record::Record;
use super::{Etcd, KIND};
use crate::model::{Instance, InstanceKey};
use crate::registry::RegistryError;

/// Tombstones live beside the instances, under a name no service can have (it starts with '.').
pub(super) const TOMBSTONE_DIR: &str = ".tombstones";

/// How often a compare-and-swap is retried when another writer changed the key in between.
pub(super) const CAS_ATTEMPTS: usize = 5;

/// How long a deregistration is remembered (its tombstone's lease): longer than an instance can
/// linger in Consul after a missed delete (its TTL, `deregister_critical_after`, the reaper), so
/// the anti-entropy sweep removes such a leftover instead of copying it back.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(3600);

/// How fresh a read must be.
#[derive(Clone, Copy)]
pub(super) enum Read {
    /// From the member's own state (serializable): may lag the leader by a moment.
    Local,
    /// Linearizable: everything committed before the read.
    Latest,
}

/// What the key holds now: enough to fence by generation and to compare-and-swap.
pub(super) struct Stored {
    generation: u64,
    /// The record's TTL: its lease is reused by a re-registration with the same TTL.
    ttl_seconds: u32,
    mod_revision: i64,
    lease: i64,
}

/// The record and the tombstone of one instance, read together.
pub(super) struct Current {
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
pub(super) fn revoke_replaced(client: &Client, replaced: &Current, kept: i64) {
    let old_record = replaced.record.as_ref().map(|s| s.lease);
    let old_tomb = replaced.tombstone.map(|(_, _, l)| l);
    for old in [old_record, old_tomb].into_iter().flatten() {
        if old != 0 && old != kept {
            revoke_replaced_lease(client, old);
        }
    }
}

/// Revokes a lease that holds nothing any more, in the background.
pub(super) fn revoke_replaced_lease(client: &Client, lease: i64) {
    let mut client = client.clone();
    tokio::spawn(async move { revoke_quietly(&mut client, lease).await });
}

pub(super) async fn revoke_quietly(client: &mut Client, lease: i64) {
    // Failure only means the lease expires on its own.
    if let Err(e) = client.lease_revoke(lease).await {
        tracing::debug!(lease, error = %describe(&e), "revoking an etcd lease failed");
    }
}

impl Etcd {
    /// Reads the record (generation, revision, lease; garbage counts as generation 0) and the
    /// tombstone in one transaction.
    ///
    /// `Read::Local` is a serializable read (no consensus round): enough for a first attempt,
    /// since the write that follows is guarded by the revisions read, and a stale read only
    /// makes the guard fail; retries read with `Read::Latest`.
    pub(super) async fn current(
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

    pub(super) async fn register_once(
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

    /// Deletes the record and leaves a tombstone (the deregistration's generation, on a lease of
    /// [`TOMBSTONE_TTL`]) in the same transaction, so the sweep can tell "deregistered" from
    /// "never arrived here".
    pub(super) async fn deregister_once(
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
}
