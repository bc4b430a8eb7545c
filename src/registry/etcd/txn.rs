//! The guarded writes. A client's register is one transaction (put unless a tombstone is there);
//! a re-driven or restored write, and a deregistration, read the record and its tombstone, then
//! write in one transaction that holds only if both are still as read (compare-and-swap), fenced
//! by generation so an older write never undoes a newer one. Take-overs and expiries compare the
//! key's revision, so they touch only the very copy that was read or written; many of them go in
//! one transaction of nested ones (one per copy, each with its own guard).

use std::collections::HashSet;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use futures::StreamExt;

use super::connect::EtcdConn;
use super::errors::{describe, to_err};
use super::record::Record;
use super::{Etcd, KIND};
use crate::model::{Instance, InstanceKey};
use crate::registry::{Held, RegistryError, Revision, Written};

/// Tombstones live beside the instances, under a name no service can have (it starts with '.').
pub(super) const TOMBSTONE_DIR: &str = ".tombstones";

/// How often a compare-and-swap is retried when another writer changed the key in between.
pub(super) const CAS_ATTEMPTS: usize = 5;

/// How long a deregistration is remembered at least (its tombstone's lease): longer than an
/// instance can linger in Consul after a missed delete (`deregister_critical_after`, the reaper),
/// so the anti-entropy sweep removes such a leftover instead of copying it back.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(3600);

/// Copies per transaction of nested ones (etcd's `--max-txn-ops` defaults to 128; an expiry
/// is two operations).
pub(super) const BATCH: usize = 50;

/// Round trips of one batch in flight at once: etcd commits concurrent transactions in one raft
/// round (one fsync), where one at a time pays a round each: 100,000 expiries in sequence were
/// 2,000 commits back to back, slower than they came due on a loaded machine.
pub(super) const PIPELINE: usize = 4;

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
    mod_revision: i64,
    drained: bool,
}

/// The record and the tombstone as read.
pub(super) struct Current {
    record: Option<Stored>,
    /// (generation, mod_revision)
    tombstone: Option<(u64, i64)>,
}

impl Current {
    fn newest(&self) -> u64 {
        let r = self.record.as_ref().map_or(0, |s| s.generation);
        let t = self.tombstone.map_or(0, |(g, _)| g);
        r.max(t)
    }

    /// Compares that hold only while both keys are as read.
    fn unchanged(&self, key: &str, tomb: &str) -> [Compare; 2] {
        let rec = match &self.record {
            Some(s) => Compare::mod_revision(key, CompareOp::Equal, s.mod_revision),
            None => Compare::create_revision(key, CompareOp::Equal, 0),
        };
        let t = match self.tombstone {
            Some((_, rev)) => Compare::mod_revision(tomb, CompareOp::Equal, rev),
            None => Compare::create_revision(tomb, CompareOp::Equal, 0),
        };
        [rec, t]
    }
}

/// Revokes a lease, logging (not failing) when that does not work: it expires in any case.
pub(super) async fn revoke_quietly(client: &mut Client, lease: i64) {
    if let Err(e) = client.lease_revoke(lease).await {
        tracing::debug!(lease, error = %describe(&e), "revoking an etcd lease failed");
    }
}

pub(super) fn encode(instance: &Instance) -> Result<Vec<u8>, RegistryError> {
    serde_json::to_vec(&Record::from_instance(instance))
        .map_err(|e| RegistryError::rejected(KIND, format!("encoding the record: {e}")))
}

fn revision_of(resp: &etcd_client::TxnResponse) -> Revision {
    resp.header().map_or(0, |h| h.revision())
}

fn kept_changing() -> RegistryError {
    RegistryError::unavailable(
        KIND,
        "etcd: the key kept changing under concurrent writes; retry",
    )
}

impl Etcd {
    /// The record's generation and revision, and the tombstone's, read in one transaction.
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
                let stored = Record::decode(key, kv.value());
                Stored {
                    generation: stored.as_ref().map_or(0, |i| i.generation),
                    mod_revision: kv.mod_revision(),
                    drained: stored.is_some_and(|i| i.drained),
                }
            }),
            tombstone: tomb.kvs().first().map(|kv| {
                let g = std::str::from_utf8(kv.value())
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                (g, kv.mod_revision())
            }),
        })
    }

    /// A client's registration: its generation is newer than anything stored, so only a
    /// tombstone (which may be newer: a deregistration through another replica a moment ago)
    /// needs the full fenced path. One transaction otherwise.
    pub(super) async fn register_new_once(
        &self,
        conn: EtcdConn,
        instance: &Instance,
    ) -> Result<Written, RegistryError> {
        if instance.drained {
            // A drain must delete a live record first: the read path does that.
            return self.register_once(conn, instance).await;
        }
        let lease = self.class_lease(&conn, instance.ttl_seconds).await?;
        let mut client = conn.client.clone();
        let key = self.key(&instance.key);
        let tomb = self.tombstone_key(&instance.key);
        let txn = Txn::new()
            .when([Compare::create_revision(tomb.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                encode(instance)?,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let resp = client.txn(txn).await.map_err(to_err)?;
        if resp.succeeded() {
            return Ok(Written::At(revision_of(&resp)));
        }
        self.register_once(conn, instance).await
    }

    /// Writes the record on this replica's lease unless a newer generation (record or
    /// tombstone) is stored; removes an older tombstone in the same transaction. A drained
    /// record replacing a live one is written after deleting it (a guarded transaction each):
    /// etcd's resolver drops an endpoint only on a delete, and would keep serving the address
    /// over a put it cannot read (see [`super::record`]).
    pub(super) async fn register_once(
        &self,
        conn: EtcdConn,
        instance: &Instance,
    ) -> Result<Written, RegistryError> {
        let lease = self.class_lease(&conn, instance.ttl_seconds).await?;
        let mut client = conn.client.clone();
        let key = self.key(&instance.key);
        let tomb = self.tombstone_key(&instance.key);
        let value = encode(instance)?;
        let mut current = self
            .current(&mut client, &instance.key, Read::Local)
            .await?;
        for _ in 0..CAS_ATTEMPTS {
            if current.newest() > instance.generation {
                tracing::debug!(instance = %instance.key, "etcd holds a newer generation; write fenced");
                return Ok(Written::Fenced);
            }
            if instance.drained && current.record.as_ref().is_some_and(|r| !r.drained) {
                let txn = Txn::new()
                    .when(current.unchanged(&key, &tomb))
                    .and_then([TxnOp::delete(key.as_str(), None)]);
                client.txn(txn).await.map_err(to_err)?;
                current = self
                    .current(&mut client, &instance.key, Read::Latest)
                    .await?;
                continue;
            }
            let mut ops = vec![TxnOp::put(
                key.as_str(),
                value.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )];
            if current.tombstone.is_some() {
                ops.push(TxnOp::delete(tomb.as_str(), None));
            }
            let txn = Txn::new()
                .when(current.unchanged(&key, &tomb))
                .and_then(ops);
            let resp = client.txn(txn).await.map_err(to_err)?;
            if resp.succeeded() {
                return Ok(Written::At(revision_of(&resp)));
            }
            current = self
                .current(&mut client, &instance.key, Read::Latest)
                .await?;
        }
        Err(kept_changing())
    }

    /// Removes the record unless a newer generation is stored, leaving a tombstone of
    /// `generation`; whether a record was removed.
    pub(super) async fn deregister_once(
        &self,
        conn: EtcdConn,
        key: &InstanceKey,
        generation: u64,
    ) -> Result<bool, RegistryError> {
        let tomb_lease = self.tombstone_lease(&conn).await?;
        let mut client = conn.client.clone();
        let path = self.key(key);
        let tomb = self.tombstone_key(key);
        let mut current = self.current(&mut client, key, Read::Local).await?;
        for _ in 0..CAS_ATTEMPTS {
            if current.newest() > generation {
                tracing::debug!(instance = %key, "etcd holds a newer registration; deregister fenced");
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
                return Ok(current.record.is_some());
            }
            current = self.current(&mut client, key, Read::Latest).await?;
        }
        Err(kept_changing())
    }

    /// The copy of one instance (linearizable), with its revision and holder.
    pub(super) async fn held_once(
        &self,
        conn: EtcdConn,
        key: &InstanceKey,
    ) -> Result<Option<Held>, RegistryError> {
        let mut client = conn.client.clone();
        let resp = client.get(self.key(key), None).await.map_err(to_err)?;
        Ok(resp.kvs().first().and_then(|kv| {
            Some(Held {
                instance: Record::decode(key, kv.value())?,
                revision: kv.mod_revision(),
                holder: self.holder(kv.lease()),
                live: true,
            })
        }))
    }

    /// Runs one nested transaction per item, [`BATCH`] per round trip and up to [`PIPELINE`]
    /// round trips at once; each item's outcome (whether its guard held) and the revision its
    /// writes landed at. On an error some round trips may have committed: every item's guard
    /// compares a revision or a tombstone, so running them again changes nothing twice.
    pub(super) async fn nested(
        &self,
        conn: &EtcdConn,
        items: Vec<Option<Txn>>,
    ) -> Result<Vec<Option<Revision>>, RegistryError> {
        let mut chunks = Vec::with_capacity(items.len().div_ceil(BATCH));
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            chunks.push(items.by_ref().take(BATCH).collect::<Vec<_>>());
        }
        let rounds = futures::stream::iter(chunks)
            .map(|chunk| {
                let mut client = conn.client.clone();
                async move {
                    let slots: Vec<bool> = chunk.iter().map(Option::is_some).collect();
                    let ops: Vec<TxnOp> = chunk.into_iter().flatten().map(TxnOp::txn).collect();
                    if ops.is_empty() {
                        return Ok(vec![None; slots.len()]);
                    }
                    let resp = client.txn(Txn::new().and_then(ops)).await.map_err(to_err)?;
                    let rev = revision_of(&resp);
                    let mut answers = resp.op_responses().into_iter().map(|r| match r {
                        TxnOpResponse::Txn(t) => t.succeeded(),
                        _ => false,
                    });
                    Ok(slots
                        .into_iter()
                        .map(|present| (present && answers.next().unwrap_or(false)).then_some(rev))
                        .collect::<Vec<_>>())
                }
            })
            .buffered(PIPELINE)
            .collect::<Vec<Result<Vec<Option<Revision>>, RegistryError>>>()
            .await;
        let mut out = Vec::with_capacity(rounds.len() * BATCH);
        for round in rounds {
            out.extend(round?);
        }
        Ok(out)
    }

    /// Moves each copy onto this replica's lease where it is still at the revision read.
    pub(super) async fn take_over_once(
        &self,
        conn: EtcdConn,
        copies: &[Held],
    ) -> Result<Vec<Option<Revision>>, RegistryError> {
        let mut seen = HashSet::new();
        let mut items = Vec::with_capacity(copies.len());
        for c in copies {
            if c.revision == 0 || !seen.insert(&c.instance.key) {
                items.push(None);
                continue;
            }
            let lease = self.class_lease(&conn, c.instance.ttl_seconds).await?;
            let key = self.key(&c.instance.key);
            items.push(Some(
                Txn::new()
                    .when([Compare::mod_revision(
                        key.as_str(),
                        CompareOp::Equal,
                        c.revision,
                    )])
                    .and_then([TxnOp::put(
                        key.as_str(),
                        encode(&c.instance)?,
                        Some(PutOptions::new().with_lease(lease)),
                    )]),
            ));
        }
        self.nested(&conn, items).await
    }

    /// Deletes each copy still at the revision this replica wrote, leaving a tombstone of the
    /// instance's generation (so a late write of that generation stays fenced).
    pub(super) async fn expire_once(
        &self,
        conn: EtcdConn,
        copies: &[(Instance, Revision)],
    ) -> Result<Vec<bool>, RegistryError> {
        let tomb_lease = self.tombstone_lease(&conn).await?;
        let mut seen = HashSet::new();
        let items = copies
            .iter()
            .map(|(i, rev)| {
                if *rev == 0 || !seen.insert(&i.key) {
                    return None;
                }
                let key = self.key(&i.key);
                let tomb = self.tombstone_key(&i.key);
                Some(
                    Txn::new()
                        .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, *rev)])
                        .and_then([
                            TxnOp::delete(key.as_str(), None),
                            // One above the instance's generation: a late write of the
                            // expired registration itself (a repair) stays fenced.
                            TxnOp::put(
                                tomb.as_str(),
                                (i.generation + 1).to_string(),
                                Some(PutOptions::new().with_lease(tomb_lease)),
                            ),
                        ]),
                )
            })
            .collect();
        Ok(self
            .nested(&conn, items)
            .await?
            .into_iter()
            .map(|r| r.is_some())
            .collect())
    }
}
