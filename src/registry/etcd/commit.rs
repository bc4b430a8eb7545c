//! Group commit of client registrations: concurrent registers share etcd transactions.
//!
//! A register queues its write and waits. One committer task takes what is queued (up to
//! [`BATCH`], one write per key) and sends it as one transaction of nested guarded puts (each
//! "put unless a tombstone is there", as [`super::txn`] does for one), with at most [`IN_FLIGHT`]
//! transactions outstanding. There is no timer: a batch leaves as soon as a slot is free, so a
//! lone register waits for nothing, and under load a batch is what queued during the previous
//! round trips. One consensus round then carries up to 50 registrations instead of one.
//!
//! A write whose guard failed (a tombstone: a deregistration a moment ago) comes back to its
//! caller, which takes the full fenced path.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::Etcd;
use super::connect::EtcdConn;
use super::txn::BATCH;
use crate::model::{Instance, InstanceKey};
use crate::registry::{RegistryError, Revision, Written};

/// Group transactions outstanding at once (beyond, writes wait in the queue and batch up).
pub(super) const IN_FLIGHT: usize = 4;

/// One queued registration and where its outcome goes: the revision it landed at, or `None`
/// when its guard failed.
pub(super) struct Pending {
    key: InstanceKey,
    ttl_seconds: u32,
    value: Vec<u8>,
    reply: oneshot::Sender<Result<Option<Revision>, RegistryError>>,
}

/// The queue's two ends; the committer takes the receiver when it starts.
pub(super) struct Queue {
    tx: mpsc::UnboundedSender<Pending>,
    rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Pending>>>,
}

impl Default for Queue {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
        }
    }
}

impl Etcd {
    /// A client's registration, through the group commit when its committer runs (otherwise,
    /// and if it stopped, on its own).
    pub(super) async fn register_grouped(
        &self,
        instance: &Instance,
    ) -> Result<Written, RegistryError> {
        let running = self.commit.rx.lock().expect("not poisoned").is_none();
        if running {
            let (reply, answer) = oneshot::channel();
            let pending = Pending {
                key: instance.key.clone(),
                ttl_seconds: instance.ttl_seconds,
                value: super::txn::encode(instance)?,
                reply,
            };
            if self.commit.tx.send(pending).is_ok() {
                match answer.await {
                    Ok(Ok(Some(rev))) => return Ok(Written::At(rev)),
                    // A tombstone is there: the fenced path decides.
                    Ok(Ok(None)) => {
                        return self.failover(|c| self.register_once(c, instance)).await;
                    }
                    Ok(Err(e)) => return Err(e),
                    // The committer stopped (shutting down): on our own.
                    Err(_) => {}
                }
            }
        }
        self.failover(|c| self.register_new_once(c, instance)).await
    }

    /// The committer: runs until `stop`.
    pub(super) async fn commit_registers(self: Arc<Self>, stop: CancellationToken) {
        let Some(mut rx) = self.commit.rx.lock().expect("not poisoned").take() else {
            return;
        };
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        // Writes of a key already in the batch being built wait for the next one (etcd refuses
        // two writes of one key in a transaction).
        let mut carried: VecDeque<Pending> = VecDeque::new();
        loop {
            let first = match carried.pop_front() {
                Some(p) => p,
                None => tokio::select! {
                    p = rx.recv() => match p { Some(p) => p, None => return },
                    _ = stop.cancelled() => return,
                },
            };
            let slot = tokio::select! {
                s = slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
                _ = stop.cancelled() => return,
            };
            let mut keys: HashSet<InstanceKey> = HashSet::from([first.key.clone()]);
            let mut batch = vec![first];
            let mut next_time = VecDeque::new();
            while batch.len() < BATCH {
                let Some(p) = carried.pop_front().or_else(|| rx.try_recv().ok()) else {
                    break;
                };
                if keys.insert(p.key.clone()) {
                    batch.push(p);
                } else {
                    next_time.push_back(p);
                }
            }
            next_time.append(&mut carried);
            carried = next_time;
            let me = self.clone();
            tokio::spawn(async move {
                let _slot = slot;
                me.commit(batch).await;
            });
        }
    }

    async fn commit(&self, batch: Vec<Pending>) {
        let result = self.failover(|c| self.commit_once(c, &batch)).await;
        match result {
            Ok(revs) => {
                for (p, rev) in batch.into_iter().zip(revs) {
                    let _ = p.reply.send(Ok(rev));
                }
            }
            Err(e) => {
                for p in batch {
                    let _ = p.reply.send(Err(e.clone()));
                }
            }
        }
    }

    async fn commit_once(
        &self,
        conn: EtcdConn,
        batch: &[Pending],
    ) -> Result<Vec<Option<Revision>>, RegistryError> {
        let mut items = Vec::with_capacity(batch.len());
        for p in batch {
            let lease = self.class_lease(&conn, p.ttl_seconds).await?;
            let key = self.key(&p.key);
            let tomb = self.tombstone_key(&p.key);
            items.push(Some(
                Txn::new()
                    .when([Compare::create_revision(tomb.as_str(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        key.as_str(),
                        p.value.clone(),
                        Some(PutOptions::new().with_lease(lease)),
                    )]),
            ));
        }
        self.nested(&conn, items).await
    }
}
