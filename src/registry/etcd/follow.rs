//! Following the whole prefix: one etcd watch per replica on `{prefix}/`, so the replica hears at
//! once of a copy deleted or changed behind its back, of an instance another replica took over
//! or deregistered, and of a replica that went away.
//!
//! - Start, and after any break: one range read of the prefix at revision `R` (reported as a
//!   snapshot of everything, with the replicas' announcements read from it), then a watch from
//!   `R + 1`. Keys on a lease that no live replica announces are orphans (their replica died
//!   while this one was not watching, or before it started): reported for take-over.
//! - An instance key deleted in the same revision as its tombstone was put is a deregistration
//!   or an expiry; deleted alone, it vanished (its lease lapsed, someone deleted it).
//! - An announcement deleted: that replica is gone. Its leases are kept alive from here on (for
//!   a bounded time, [`super::leases::BRIDGE_FOR`]), and its keys are read and reported as
//!   orphans at once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, KeyValue, WatchOptions};
use tokio_util::sync::CancellationToken;

use super::leases::{Announcement, REPLICAS_DIR};
use super::record::Record;
use super::txn::TOMBSTONE_DIR;
use super::{Etcd, KIND, to_err};
use crate::model::{InstanceId, InstanceKey, ServiceName};
use crate::registry::{Held, Holder, Observed, ObservedSender, RegistryError, watch_backoff};

/// How often the watch asks for progress, to notice a stream that stopped answering.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What one key of the prefix is.
enum Kind {
    Instance(InstanceKey),
    Tombstone(InstanceKey),
    Replica(String),
    Other,
}

impl Etcd {
    /// Who holds a key on `lease`.
    pub(super) fn holder(&self, lease: i64) -> Holder {
        if lease == 0 {
            Holder::Other
        } else if self.leases.is_mine(lease) {
            Holder::Me
        } else {
            match self.leases.peer(lease) {
                Some(r) => Holder::Replica(r),
                None => Holder::Other,
            }
        }
    }

    fn classify(&self, key: &[u8]) -> Kind {
        let root = format!("{}/", self.prefix);
        let Some(rest) = key
            .strip_prefix(root.as_bytes())
            .and_then(|r| std::str::from_utf8(r).ok())
        else {
            return Kind::Other;
        };
        let parse = |svc: &str, id: &str| {
            Some(InstanceKey {
                service: ServiceName::parse(svc).ok()?,
                id: InstanceId::parse(id).ok()?,
            })
        };
        let mut parts = rest.splitn(3, '/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(REPLICAS_DIR), Some(r), None) => Kind::Replica(r.to_owned()),
            (Some(TOMBSTONE_DIR), Some(svc), Some(id)) => {
                parse(svc, id).map_or(Kind::Other, Kind::Tombstone)
            }
            (Some(svc), Some(id), None) if !svc.starts_with('.') => {
                parse(svc, id).map_or(Kind::Other, Kind::Instance)
            }
            _ => Kind::Other,
        }
    }

    fn held_of(&self, key: InstanceKey, kv: &KeyValue) -> Option<Held> {
        Some(Held {
            instance: Record::decode(&key, kv.value())?,
            revision: kv.mod_revision(),
            holder: self.holder(kv.lease()),
            live: true,
        })
    }

    fn learn_replica(&self, replica: &str, value: &[u8]) {
        let Ok(a) = serde_json::from_slice::<Announcement>(value) else {
            return;
        };
        if a.replica == self.replica {
            return;
        }
        let mut peers = self.leases.peers.write().expect("not poisoned");
        peers.retain(|_, r| r != replica);
        for lease in a.leases.values() {
            peers.insert(*lease, replica.to_owned());
        }
    }

    /// Forgets the replicas not among `announced` (gone while the follow was broken).
    fn forget_unannounced(&self, announced: &HashSet<String>) {
        self.leases
            .peers
            .write()
            .expect("not poisoned")
            .retain(|_, r| announced.contains(r));
    }

    /// Forgets a replica; the leases it had announced.
    fn forget_replica(&self, replica: &str) -> HashSet<i64> {
        let mut peers = self.leases.peers.write().expect("not poisoned");
        let gone: HashSet<i64> = peers
            .iter()
            .filter(|(_, r)| *r == replica)
            .map(|(l, _)| *l)
            .collect();
        peers.retain(|l, _| !gone.contains(l));
        gone
    }

    /// Follows the prefix until `stop`, reporting to `out`.
    pub(super) async fn follow(self: Arc<Self>, out: ObservedSender, stop: CancellationToken) {
        let mut attempt = 0u32;
        loop {
            let why = tokio::select! {
                e = self.follow_once(&out, &mut attempt) => e,
                _ = stop.cancelled() => return,
            };
            let Some(why) = why else { return };
            tracing::debug!(error = %why, "etcd follow broke; reading the prefix again");
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = tokio::time::sleep(watch_backoff(attempt)) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// One snapshot and the watch after it; `None` when nobody listens any more.
    async fn follow_once(&self, out: &ObservedSender, attempt: &mut u32) -> Option<RegistryError> {
        let conn = match self.pool.client().await {
            Ok(c) => c,
            Err(e) => return Some(e),
        };
        let mut client = conn.client.clone();
        let root = format!("{}/", self.prefix);
        // Announcements (`.replicas/`) tell whose lease each key is on. They come first: a
        // range is read in key order, and `.` sorts before every service name.
        let mut announced = Some(HashSet::new());
        let mut held = Vec::new();
        let mut orphans = Vec::new();
        let mut orphan_leases = HashSet::new();
        let read_at = tokio::time::Instant::now();
        let pages = super::range::read_dir_pages(&mut client, &root, false, |page| {
            for kv in &page {
                match self.classify(kv.key()) {
                    Kind::Replica(r) => {
                        self.learn_replica(&r, kv.value());
                        if let Some(a) = announced.as_mut() {
                            a.insert(r);
                        }
                    }
                    Kind::Instance(key) => {
                        if let Some(a) = announced.take() {
                            self.forget_unannounced(&a);
                        }
                        let Some(h) = self.held_of(key, kv) else {
                            continue;
                        };
                        if h.holder == Holder::Other && kv.lease() != 0 {
                            orphan_leases.insert(kv.lease());
                            orphans.push(h.clone());
                        }
                        held.push(h.brief());
                    }
                    _ => {}
                }
            }
        });
        let rev = match pages.await {
            Ok(r) => r,
            Err(e) => return Some(to_err(e)),
        };
        if let Some(a) = announced {
            self.forget_unannounced(&a);
        }
        if !out
            .send(Observed::Snapshot {
                service: None,
                held,
                read_at,
            })
            .await
        {
            return None;
        }
        // Kept alive while they are taken over (a lease etcd no longer knows is dropped).
        self.leases.bridge(orphan_leases);
        if !orphans.is_empty() && !out.send(Observed::Orphans(orphans)).await {
            return None;
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(rev + 1)
            .with_progress_notify();
        let (mut requests, mut stream) = match client.watch(root.as_str(), Some(options)).await {
            Ok(w) => w.split(),
            Err(e) => return Some(to_err(e)),
        };
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut last_heard = tokio::time::Instant::now();
        loop {
            let resp = tokio::select! {
                msg = stream.message() => match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => return Some(RegistryError::unreachable(KIND, "etcd: the follow watch was closed")),
                    Err(e) => return Some(to_err(e)),
                },
                _ = tick.tick() => {
                    if last_heard.elapsed() > PROGRESS_EVERY * 3 {
                        return Some(RegistryError::unreachable(KIND, "etcd: the follow watch stopped answering"));
                    }
                    if let Err(e) = requests.request_progress().await {
                        return Some(to_err(e));
                    }
                    continue;
                }
            };
            last_heard = tokio::time::Instant::now();
            *attempt = 0;
            if resp.compact_revision() > 0 || resp.canceled() {
                return Some(RegistryError::unavailable(
                    KIND,
                    "etcd: the follow watch was compacted or cancelled",
                ));
            }
            // Tombstones put in this answer: the deletes they came with are deregistrations.
            let tombstoned: HashSet<InstanceKey> = resp
                .events()
                .iter()
                .filter(|e| e.event_type() == EventType::Put)
                .filter_map(|e| match self.classify(e.kv()?.key()) {
                    Kind::Tombstone(k) => Some(k),
                    _ => None,
                })
                .collect();
            let mut dead: HashMap<String, HashSet<i64>> = HashMap::new();
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let item = match (event.event_type(), self.classify(kv.key())) {
                    (EventType::Put, Kind::Replica(r)) => {
                        self.learn_replica(&r, kv.value());
                        None
                    }
                    (EventType::Delete, Kind::Replica(r)) if r != self.replica => {
                        let leases = self.forget_replica(&r);
                        dead.insert(r, leases);
                        None
                    }
                    (EventType::Put, Kind::Instance(key)) => match self.held_of(key.clone(), kv) {
                        Some(h) => Some(Observed::Put(h)),
                        None => Some(Observed::Gone {
                            key,
                            deregistered: false,
                        }),
                    },
                    (EventType::Delete, Kind::Instance(key)) => {
                        let deregistered = tombstoned.contains(&key);
                        Some(Observed::Gone { key, deregistered })
                    }
                    _ => None,
                };
                if let Some(item) = item
                    && !out.send(item).await
                {
                    return None;
                }
            }
            for (replica, leases) in dead {
                tracing::info!(%replica, "twinreg replica gone from etcd; keeping its leases alive while taking its instances over");
                self.leases.bridge(leases.iter().copied());
                match self.keys_on(&leases).await {
                    Ok(orphans) if orphans.is_empty() => {}
                    Ok(orphans) => {
                        if !out.send(Observed::Orphans(orphans)).await {
                            return None;
                        }
                    }
                    Err(e) => return Some(e),
                }
            }
        }
    }

    /// The instance keys on any of `leases`.
    async fn keys_on(&self, leases: &HashSet<i64>) -> Result<Vec<Held>, RegistryError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let conn = self.pool.client().await?;
        let mut client = conn.client.clone();
        let root = format!("{}/", self.prefix);
        let mut held = Vec::new();
        super::range::read_dir_pages(&mut client, &root, false, |page| {
            held.extend(
                page.iter()
                    .filter(|kv| leases.contains(&kv.lease()))
                    .filter_map(|kv| match self.classify(kv.key()) {
                        Kind::Instance(key) => self.held_of(key, kv),
                        _ => None,
                    })
                    .map(|mut h| {
                        h.holder = Holder::Other;
                        h
                    }),
            )
        })
        .await
        .map_err(to_err)?;
        Ok(held)
    }
}
