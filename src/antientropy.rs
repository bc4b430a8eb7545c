//! Anti-entropy: a periodic, paced sweep that makes the registries agree.
//!
//! For every service it reads each registry's live instances and each registry's tombstones
//! (deregistrations still remembered; etcd keeps them), then per instance:
//! - the newest deregistration is newer than every live copy → remove the leftovers (a delete a
//!   registry missed);
//! - otherwise, when this replica owns the instance at the newest generation → write its record
//!   into every registry that lacks it or holds an older generation (a write a registry missed, a
//!   wiped data directory, a restarted Consul agent). An instance another replica owns (or wrote
//!   a newer generation of) is left to that replica, which follows both registries and restores
//!   its copies itself: a write from here would move the copy onto this replica's lease and out
//!   of its owner's hands.
//!
//! Of each copy only its id, generation and liveness are kept ([`Listed`]); the record written
//! is the one this replica owns, so a sweep of a service of 100,000 instances holds no record.
//!
//! Writes go through the coordinator (deadlines, breakers, metrics) and are generation-fenced,
//! so a sweep racing a client's newer write cannot undo it. With several replicas only the holder
//! of an etcd lease election sweeps. The election lives in etcd alone, on purpose: a sweep needs
//! both registries up to compare them, so when etcd is down there is nothing to sweep, and
//! heartbeats keep restoring instances into Consul meanwhile.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

use crate::model::{Instance, InstanceId, InstanceKey, ServiceName};
use crate::registry::Listed;
use crate::replicate::Coordinator;

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// `[anti_entropy]`, validated.
#[derive(Debug, Clone, Copy)]
pub struct SweepSettings {
    pub enabled: bool,
    /// Time between sweeps.
    pub interval: Duration,
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub services: usize,
    pub restored: usize,
    pub removed: usize,
}

pub struct Sweeper {
    coordinator: Arc<Coordinator>,
    interval: Duration,
    holder: String,
    limiter: DefaultDirectRateLimiter,
}

impl Sweeper {
    /// `holder` names this replica in the election; `max_writes_per_second` paces the sweep.
    pub fn new(
        coordinator: Arc<Coordinator>,
        interval: Duration,
        holder: String,
        max_writes_per_second: u32,
    ) -> Self {
        let rate = NonZeroU32::new(max_writes_per_second.max(1)).expect("at least 1");
        Self {
            coordinator,
            interval,
            holder,
            limiter: RateLimiter::direct(Quota::per_second(rate)),
        }
    }

    /// Sweeps every `interval` while this replica leads, until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The election lease outlives a few missed ticks, not more.
        let lease_ttl = (self.interval * 3).max(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let primary = &self.coordinator.members()[0];
            let leading = primary
                .registry
                .lead(&self.holder, lease_ttl)
                .await
                .unwrap_or(false);
            self.coordinator
                .metrics()
                .sweeper_leader
                .set(i64::from(leading));
            if !leading {
                continue;
            }
            tokio::select! {
                report = self.sweep() => {
                    if let Some(r) = report.filter(|r| r.restored + r.removed > 0) {
                        tracing::info!(services = r.services, restored = r.restored, removed = r.removed, "anti-entropy sweep repaired the registries");
                    }
                }
                _ = stop.cancelled() => return,
            }
        }
    }

    /// One pass over every service. `None` when the registries could not all be read.
    pub async fn sweep(&self) -> Option<SweepReport> {
        let members = self.coordinator.members();
        let names = join_all(members.iter().map(|m| m.registry.services())).await;
        let mut all = std::collections::BTreeSet::new();
        for n in names {
            all.extend(n.ok()?);
        }
        let mut report = SweepReport::default();
        let mut live = vec![0usize; members.len()];
        for service in all {
            report.services += 1;
            let (restored, removed, counts) = self.sweep_service(&service).await?;
            report.restored += restored;
            report.removed += removed;
            for (total, n) in live.iter_mut().zip(counts) {
                *total += n;
            }
        }
        let metrics = self.coordinator.metrics();
        metrics
            .disagreements
            .set((report.restored + report.removed) as i64);
        for (m, n) in members.iter().zip(live) {
            metrics.set_instances(m.registry.kind(), n);
        }
        Some(report)
    }

    /// Restored and removed copies, and the live instances each registry held when read.
    async fn sweep_service(&self, service: &ServiceName) -> Option<(usize, usize, Vec<usize>)> {
        let members = self.coordinator.members();
        let held = join_all(members.iter().map(|m| m.registry.inventory(service))).await;
        let tombs = join_all(members.iter().map(|m| m.registry.tombstones(service))).await;
        // Sweeping needs every registry's view: a registry that did not answer is skipped as a
        // whole rather than mistaken for one that lost everything.
        let held: Vec<Vec<Listed>> = held.into_iter().collect::<Result<_, _>>().ok()?;
        let live: Vec<usize> = held
            .iter()
            .map(|l| l.iter().filter(|c| c.live).count())
            .collect();
        let mut deleted: BTreeMap<InstanceId, u64> = BTreeMap::new();
        for t in tombs {
            for (id, g) in t.ok()? {
                let e = deleted.entry(id).or_default();
                *e = (*e).max(g);
            }
        }
        // id → each registry's copy: its generation, and whether it is live there.
        type Copies = Vec<Option<(u64, bool)>>;
        let mut by_id: BTreeMap<InstanceId, Copies> = BTreeMap::new();
        for (m, list) in held.into_iter().enumerate() {
            for c in list {
                by_id
                    .entry(c.id)
                    .or_insert_with(|| vec![None; members.len()])[m] = Some((c.generation, c.live));
            }
        }
        let (mut restored, mut removed) = (0, 0);
        for (id, copies) in by_id {
            let key = InstanceKey {
                service: service.clone(),
                id: id.clone(),
            };
            let newest_any = copies.iter().flatten().map(|c| c.0).max().unwrap_or(0);
            if let Some(&tomb) = deleted.get(&id)
                && tomb >= newest_any
            {
                // Deregistered after every copy was written: remove the leftovers, live or not.
                for (m, c) in copies.iter().enumerate() {
                    if c.is_some() && self.write(m, Write::Remove(&key, tomb)).await {
                        removed += 1;
                    }
                }
                continue;
            }
            // Copy the newest live record where it is missing, older, or not live: the record
            // this replica owns, when that is the newest (a newer one is another replica's).
            let Some(newest) = copies.iter().flatten().filter(|c| c.1).map(|c| c.0).max() else {
                continue;
            };
            let Some(owned) = self
                .coordinator
                .owned()
                .get(&key)
                .filter(|s| s.instance.generation == newest)
            else {
                continue;
            };
            for (m, c) in copies.iter().enumerate() {
                let stale = c.is_none_or(|(generation, live)| !live || generation < newest);
                if stale && self.write(m, Write::Put(&owned.instance)).await {
                    restored += 1;
                }
            }
        }
        Some((restored, removed, live))
    }

    async fn write(&self, member: usize, w: Write<'_>) -> bool {
        self.limiter.until_ready().await;
        let m = &self.coordinator.members()[member];
        let (r, _) = match w {
            Write::Put(i) => {
                self.coordinator
                    .call(
                        m,
                        "sweep",
                        |reg| async move { reg.register(i).await.map(drop) },
                    )
                    .await
            }
            Write::Remove(k, g) => {
                self.coordinator
                    .call(m, "sweep", |reg| async move {
                        reg.deregister(k, g).await.map(drop)
                    })
                    .await
            }
        };
        r.is_ok()
    }
}

enum Write<'a> {
    Put(&'a Instance),
    Remove(&'a InstanceKey, u64),
}
