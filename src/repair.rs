//! The repairer: re-drives a write that a registry missed until it lands.
//!
//! One task per (registry, instance), retrying with exponential backoff and full jitter (so the
//! retries of many instances spread out instead of firing together), with no give-up while the
//! instance is alive. A newer write for the same instance supersedes a queued one (a late repair
//! never undoes a newer write), and a register repair is dropped once its instance stopped
//! heartbeating past its TTL.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::{Backoff, Jitter};
use crate::liveness::owned::{Copy, Owned};
use crate::metrics::{Metrics, RegistryLabels};
use crate::model::{Instance, InstanceKey};
use crate::registry::{Registry, RegistryKind, Revision};

/// Retries of one missed write: 200 ms doubling to 30 s, full jitter.
pub const BACKOFF: Backoff = Backoff::new(
    Duration::from_millis(200),
    Duration::from_secs(30),
    Jitter::Full,
);
/// Default cap on repair writes per second to one registry, so that thousands of instances
/// re-driven after an outage do not stampede a registry that just came back.
pub const DEFAULT_MAX_WRITES_PER_SECOND: u32 = 200;

/// `[repair]`, validated.
#[derive(Debug, Clone, Copy)]
pub struct RepairSettings {
    /// Cap on repair writes per second to each registry (recovery after an outage is paced).
    pub max_writes_per_second: u32,
}

/// A write to re-drive.
#[derive(Debug, Clone)]
pub enum RepairOp {
    Register(Instance),
    /// Remove the instance unless the registry holds a registration newer than the generation.
    Deregister(InstanceKey, u64),
    /// An expiry that did not land: removes the copy only where it is still at this revision.
    Expire(Instance, Revision),
}

impl RepairOp {
    fn key(&self) -> &InstanceKey {
        match self {
            Self::Register(i) | Self::Expire(i, _) => &i.key,
            Self::Deregister(k, _) => k,
        }
    }
}

/// A registry the repairer writes to: its deadline and its write-rate limit.
struct Target {
    /// The registry's index among the coordinator's members.
    member: usize,
    registry: Arc<dyn Registry>,
    deadline: Duration,
    limiter: DefaultDirectRateLimiter,
}

pub struct Repairer {
    targets: Vec<Arc<Target>>,
    owned: Arc<Owned>,
    metrics: Arc<Metrics>,
    /// (registry, instance) → (ticket of the current repair, when the registry first missed it).
    pending: Mutex<HashMap<(RegistryKind, InstanceKey), (u64, tokio::time::Instant)>>,
    tickets: AtomicU64,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Repairer {
    /// `max_writes_per_second` bounds repair writes to each registry.
    pub fn new(
        registries: Vec<(Arc<dyn Registry>, Duration)>,
        max_writes_per_second: u32,
        owned: Arc<Owned>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let rate = std::num::NonZeroU32::new(max_writes_per_second.max(1)).expect("at least 1");
        let targets = registries
            .into_iter()
            .enumerate()
            .map(|(member, (registry, deadline))| {
                Arc::new(Target {
                    member,
                    registry,
                    deadline,
                    limiter: RateLimiter::direct(Quota::per_second(rate)),
                })
            })
            .collect();
        Arc::new(Self {
            targets,
            owned,
            metrics,
            pending: Mutex::default(),
            tickets: AtomicU64::new(1),
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
        })
    }

    /// Number of writes still being re-driven.
    pub fn pending(&self) -> usize {
        self.pending.lock().expect("not poisoned").len()
    }

    /// Number of writes still being re-driven into `kind` (the status page's repair backlog).
    pub fn pending_for(&self, kind: RegistryKind) -> usize {
        self.pending
            .lock()
            .expect("not poisoned")
            .keys()
            .filter(|(k, _)| *k == kind)
            .count()
    }

    /// Cancels any queued repair of `key` on `kind` (a newer write reached it directly).
    pub fn settle(&self, kind: RegistryKind, key: &InstanceKey) {
        let mut p = self.pending.lock().expect("not poisoned");
        if p.remove(&(kind, key.clone())).is_some() {
            self.gauge(kind).dec();
        }
    }

    /// Queues `op` for `kind`, superseding any earlier repair of the same instance there.
    pub fn submit(self: &Arc<Self>, kind: RegistryKind, op: RepairOp) {
        if self.tracker.is_closed() {
            tracing::warn!(registry = %kind, instance = %op.key(), "shutting down: repair not queued");
            return;
        }
        let Some(target) = self
            .targets
            .iter()
            .find(|t| t.registry.kind() == kind)
            .cloned()
        else {
            return;
        };
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        {
            let mut p = self.pending.lock().expect("not poisoned");
            match p.entry((kind, op.key().clone())) {
                // Superseded: the registry has been missing the instance since the first miss.
                std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().0 = ticket,
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert((ticket, tokio::time::Instant::now()));
                    self.gauge(kind).inc();
                }
            }
        }
        let this = self.clone();
        self.tracker
            .spawn(async move { this.drive(target, op, ticket).await });
    }

    fn gauge(&self, kind: RegistryKind) -> prometheus_client::metrics::gauge::Gauge {
        self.metrics
            .repairs_pending
            .get_or_create_owned(&RegistryLabels {
                registry: kind.as_str(),
            })
    }

    fn current(&self, kind: RegistryKind, key: &InstanceKey, ticket: u64) -> bool {
        self.pending
            .lock()
            .expect("not poisoned")
            .get(&(kind, key.clone()))
            .is_some_and(|(t, _)| *t == ticket)
    }

    /// How long the oldest pending repair to `kind` has been waiting (zero when none).
    pub fn oldest(&self, kind: RegistryKind) -> Duration {
        self.pending
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|(_, (_, since))| since.elapsed())
            .max()
            .unwrap_or_default()
    }

    async fn drive(self: Arc<Self>, target: Arc<Target>, op: RepairOp, ticket: u64) {
        let registry = &target.registry;
        let kind = registry.kind();
        let key = op.key().clone();
        let mut attempt = 0u32;
        loop {
            let delay = BACKOFF.delay(attempt);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.cancel.cancelled() => return,
            }
            attempt = attempt.saturating_add(1);
            if !self.current(kind, &key, ticket) {
                return;
            }
            if let RepairOp::Register(i) = &op
                && !self.owned.is_alive(&i.key, i.generation)
            {
                tracing::info!(registry = %kind, instance = %key, "instance no longer alive at this generation: repair dropped");
                self.settle_ticket(kind, &key, ticket);
                return;
            }
            // Bounded write rate per registry: a registry that just came back is not stampeded.
            tokio::select! {
                _ = target.limiter.until_ready() => {}
                _ = self.cancel.cancelled() => return,
            }
            let result = tokio::time::timeout(target.deadline, async {
                match &op {
                    RepairOp::Register(i) => {
                        let w = registry.register(i).await?;
                        if !self.owned.is_alive(&i.key, i.generation) {
                            // Deregistered or expired while the write was on its way: the copy
                            // it left is undone (fenced: a newer registration stays).
                            tracing::info!(registry = %kind, instance = %key, "a repair landed after the instance went away; removing it again");
                            registry.deregister(&i.key, i.generation).await?;
                            return Ok(());
                        }
                        self.owned
                            .set_copy(&i.key, i.generation, target.member, Copy::from(w));
                        Ok(())
                    }
                    RepairOp::Deregister(k, g) => registry.deregister(k, *g).await.map(drop),
                    RepairOp::Expire(i, rev) => registry
                        .expire(std::slice::from_ref(&(i.clone(), *rev)))
                        .await
                        .map(drop),
                }
            })
            .await;
            match result {
                Ok(Ok(())) => {
                    tracing::info!(registry = %kind, instance = %key, attempts = attempt, "repair landed");
                    self.metrics
                        .repairs_done
                        .get_or_create(&RegistryLabels {
                            registry: kind.as_str(),
                        })
                        .inc();
                    self.settle_ticket(kind, &key, ticket);
                    return;
                }
                Ok(Err(e)) => {
                    tracing::debug!(registry = %kind, instance = %key, attempt, error = %e, "repair attempt failed");
                }
                Err(_) => {
                    tracing::debug!(registry = %kind, instance = %key, attempt, "repair attempt timed out");
                }
            }
        }
    }

    fn settle_ticket(&self, kind: RegistryKind, key: &InstanceKey, ticket: u64) {
        if self.current(kind, key, ticket) {
            self.settle(kind, key);
        }
    }

    /// Stops taking repairs, gives pending ones up to `grace` to land, then cancels the rest.
    pub async fn shutdown(&self, grace: Duration) {
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                pending = self.pending(),
                "shutdown grace over: abandoning pending repairs"
            );
        }
        self.cancel.cancel();
        self.tracker.wait().await;
    }
}
