//! The repairer: re-drives a write that a registry missed until it lands.
//!
//! One queue per registry, not a task per repair: each pending repair is an entry keyed by its
//! instance, ordered by when its next attempt is due, and one worker per registry takes due
//! entries (at most [`MAX_IN_FLIGHT`] writes at once, paced by the registry's repair write rate).
//! A backlog of 100,000 instances after an outage is 100,000 map entries and one timer, not
//! 100,000 sleeping tasks. Retries back off exponentially with full jitter (so the retries of
//! many instances spread out instead of firing together), with no give-up while the instance is
//! alive. A newer write for the same instance supersedes a queued one (a late repair never undoes
//! a newer write), and a register repair is dropped once its instance stopped heartbeating past
//! its TTL.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::{Backoff, Jitter};
use crate::liveness::owned::{Copy, Owned};
use crate::metrics::{Metrics, RegistryLabels};
use crate::model::{Instance, InstanceKey};
use crate::registry::{Registry, RegistryError, RegistryKind, Revision};

/// Retries of one missed write: 200 ms doubling to 30 s, full jitter.
pub const BACKOFF: Backoff = Backoff::new(
    Duration::from_millis(200),
    Duration::from_secs(30),
    Jitter::Full,
);
/// Default cap on repair writes per second to one registry, so that thousands of instances
/// re-driven after an outage do not stampede a registry that just came back.
pub const DEFAULT_MAX_WRITES_PER_SECOND: u32 = 200;
/// Repair writes to one registry in flight at once: enough that a slow registry (each write
/// waiting out its deadline) still gets the paced rate, few enough to bound what a backlog holds.
pub const MAX_IN_FLIGHT: usize = 32;

/// `[repair]`, validated.
#[derive(Debug, Clone, Copy)]
pub struct RepairSettings {
    /// Cap on repair writes per second to each registry (recovery after an outage is paced).
    pub max_writes_per_second: u32,
}

/// A write to re-drive.
#[derive(Debug, Clone)]
pub enum RepairOp {
    /// Write the owned instance of this generation again. The record is read from the owned set
    /// when the write runs (a backlog of 100,000 holds keys, not 100,000 more records), and a
    /// repair of an instance no longer owned and alive at that generation is dropped.
    Register(InstanceKey, u64),
    /// Remove the instance unless the registry holds a registration newer than the generation.
    Deregister(InstanceKey, u64),
    /// An expiry that did not land: removes the copy only where it is still at this revision.
    Expire(Instance, Revision),
}

impl RepairOp {
    fn key(&self) -> &InstanceKey {
        match self {
            Self::Expire(i, _) => &i.key,
            Self::Register(k, _) | Self::Deregister(k, _) => k,
        }
    }
}

/// One pending repair.
struct Entry {
    op: RepairOp,
    /// Changes whenever the entry is submitted again: an attempt that finds another ticket on
    /// its entry was superseded, and its outcome is not booked.
    ticket: u64,
    /// Attempts made so far (the backoff's exponent).
    attempt: u32,
    /// When the registry first missed the instance (kept across supersessions).
    since: Instant,
    /// When the next attempt is due; `None` while an attempt is in flight.
    due: Option<Instant>,
}

/// The pending repairs of one registry.
#[derive(Default)]
struct Queue {
    entries: HashMap<InstanceKey, Entry>,
    /// (due, ticket) → instance: the order in which entries come due.
    due: BTreeMap<(Instant, u64), InstanceKey>,
}

impl Queue {
    /// Schedules `key`'s entry for `at`.
    fn schedule(&mut self, key: &InstanceKey, at: Instant) {
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        let ticket = e.ticket;
        if let Some(old) = e.due.replace(at) {
            self.due.remove(&(old, ticket));
        }
        self.due.insert((at, ticket), key.clone());
    }

    /// Removes `key`'s entry; true when there was one.
    fn remove(&mut self, key: &InstanceKey) -> bool {
        let Some(e) = self.entries.remove(key) else {
            return false;
        };
        if let Some(at) = e.due {
            self.due.remove(&(at, e.ticket));
        }
        true
    }

    /// The next entry due by `now`, marked in flight: its op and ticket.
    fn take_due(&mut self, now: Instant) -> Option<(RepairOp, u64)> {
        let (&(at, ticket), _) = self.due.first_key_value()?;
        if at > now {
            return None;
        }
        let key = self.due.remove(&(at, ticket)).expect("just seen");
        let e = self.entries.get_mut(&key).expect("a due entry exists");
        e.due = None;
        Some((e.op.clone(), ticket))
    }

    fn next_due(&self) -> Option<Instant> {
        self.due.first_key_value().map(|(&(at, _), _)| at)
    }
}

/// A registry the repairer writes to: its deadline, its write-rate limit and its queue.
struct Target {
    /// The registry's index among the coordinator's members.
    member: usize,
    registry: Arc<dyn Registry>,
    deadline: Duration,
    limiter: DefaultDirectRateLimiter,
    queue: Mutex<Queue>,
    /// Rung when an entry is queued (or the repairer shuts down).
    wake: Notify,
    /// Whether this registry's worker was started (at the first repair).
    started: std::sync::atomic::AtomicBool,
}

/// What became of one attempt.
enum Attempt {
    Landed,
    /// A register repair of an instance no longer alive at its generation: nothing to write.
    Gone,
    Failed(String),
}

pub struct Repairer {
    targets: Vec<Arc<Target>>,
    owned: Arc<Owned>,
    metrics: Arc<Metrics>,
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
                    queue: Mutex::default(),
                    wake: Notify::new(),
                    started: std::sync::atomic::AtomicBool::new(false),
                })
            })
            .collect();
        Arc::new(Self {
            targets,
            owned,
            metrics,
            tickets: AtomicU64::new(1),
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
        })
    }

    fn target(&self, kind: RegistryKind) -> Option<&Arc<Target>> {
        self.targets.iter().find(|t| t.registry.kind() == kind)
    }

    /// Number of writes still being re-driven.
    pub fn pending(&self) -> usize {
        self.targets
            .iter()
            .map(|t| t.queue.lock().expect("not poisoned").entries.len())
            .sum()
    }

    /// Number of writes still being re-driven into `kind` (the status page's repair backlog).
    pub fn pending_for(&self, kind: RegistryKind) -> usize {
        self.target(kind)
            .map_or(0, |t| t.queue.lock().expect("not poisoned").entries.len())
    }

    /// Cancels any queued repair of `key` on `kind` (a newer write reached it directly).
    pub fn settle(&self, kind: RegistryKind, key: &InstanceKey) {
        let Some(t) = self.target(kind) else {
            return;
        };
        if t.queue.lock().expect("not poisoned").remove(key) {
            self.gauge(kind).dec();
        }
    }

    /// Queues `op` for `kind`, superseding any earlier repair of the same instance there.
    pub fn submit(self: &Arc<Self>, kind: RegistryKind, op: RepairOp) {
        if self.tracker.is_closed() {
            tracing::warn!(registry = %kind, instance = %op.key(), "shutting down: repair not queued");
            return;
        }
        let Some(target) = self.target(kind).cloned() else {
            return;
        };
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let key = op.key().clone();
        {
            let mut guard = target.queue.lock().expect("not poisoned");
            let q = &mut *guard;
            match q.entries.get_mut(&key) {
                // Superseded: the registry has been missing the instance since the first miss.
                Some(e) => {
                    if let Some(at) = e.due.take() {
                        q.due.remove(&(at, e.ticket));
                    }
                    e.op = op;
                    e.ticket = ticket;
                    e.attempt = 0;
                }
                None => {
                    q.entries.insert(
                        key.clone(),
                        Entry {
                            op,
                            ticket,
                            attempt: 0,
                            since: now,
                            due: None,
                        },
                    );
                    self.gauge(kind).inc();
                }
            }
            q.schedule(&key, now + BACKOFF.delay(0));
        }
        if !target.started.swap(true, Ordering::AcqRel) {
            let this = self.clone();
            let worker = target.clone();
            self.tracker.spawn(async move { this.work(worker).await });
        }
        target.wake.notify_one();
    }

    fn gauge(&self, kind: RegistryKind) -> prometheus_client::metrics::gauge::Gauge {
        self.metrics
            .repairs_pending
            .get_or_create_owned(&RegistryLabels {
                registry: kind.as_str(),
            })
    }

    /// How long the oldest pending repair to `kind` has been waiting (zero when none).
    pub fn oldest(&self, kind: RegistryKind) -> Duration {
        self.target(kind)
            .and_then(|t| {
                t.queue
                    .lock()
                    .expect("not poisoned")
                    .entries
                    .values()
                    .map(|e| e.since.elapsed())
                    .max()
            })
            .unwrap_or_default()
    }

    /// One registry's worker: starts due entries (at most [`MAX_IN_FLIGHT`] at once), books
    /// their outcomes, and sleeps until the next one is due or a new one is queued. Ends when
    /// the repairer shuts down and nothing is left, or when it is cancelled.
    async fn work(self: Arc<Self>, target: Arc<Target>) {
        let mut flying = FuturesUnordered::new();
        loop {
            let next_due = {
                let mut q = target.queue.lock().expect("not poisoned");
                while flying.len() < MAX_IN_FLIGHT {
                    let Some((op, ticket)) = q.take_due(Instant::now()) else {
                        break;
                    };
                    flying.push(self.attempt(&target, op, ticket));
                }
                if self.tracker.is_closed() && q.entries.is_empty() && flying.is_empty() {
                    return;
                }
                q.next_due()
            };
            // With every slot taken, a due entry waits for a slot, not for its time.
            let room = flying.len() < MAX_IN_FLIGHT;
            let sleep = async move {
                match next_due {
                    Some(at) if room => tokio::time::sleep_until(at).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                Some((key, ticket, outcome)) = flying.next(), if !flying.is_empty() => {
                    self.book(&target, key, ticket, outcome);
                }
                _ = sleep => {}
                _ = target.wake.notified() => {}
            }
        }
    }

    /// One attempt of `op`, paced by the registry's repair write rate and bounded by its deadline.
    async fn attempt(
        &self,
        target: &Target,
        op: RepairOp,
        ticket: u64,
    ) -> (InstanceKey, u64, Attempt) {
        let key = op.key().clone();
        let record = match &op {
            RepairOp::Register(k, generation) => match self.owned.alive_record(k, *generation) {
                Some(i) => Some(i),
                None => return (key, ticket, Attempt::Gone),
            },
            _ => None,
        };
        // Bounded write rate per registry: a registry that just came back is not stampeded.
        target.limiter.until_ready().await;
        let registry = &target.registry;
        let kind = registry.kind();
        let result = tokio::time::timeout(target.deadline, async {
            match &op {
                RepairOp::Register(..) => {
                    let i = record.as_ref().expect("read above");
                    let w = registry.register(i).await?;
                    if !self.owned.is_alive(&i.key, i.generation) {
                        // Deregistered or expired while the write was on its way: the copy it
                        // left is undone (fenced: a newer registration stays).
                        tracing::info!(registry = %kind, instance = %key, "a repair landed after the instance went away; removing it again");
                        registry.deregister(&i.key, i.generation).await?;
                        return Ok::<(), RegistryError>(());
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
        let outcome = match result {
            Ok(Ok(())) => Attempt::Landed,
            Ok(Err(e)) => Attempt::Failed(e.to_string()),
            Err(_) => Attempt::Failed(format!("timed out after {:?}", target.deadline)),
        };
        (key, ticket, outcome)
    }

    /// Books an attempt's outcome on its entry, unless a newer submission superseded it (or a
    /// direct write settled it) meanwhile.
    fn book(&self, target: &Target, key: InstanceKey, ticket: u64, outcome: Attempt) {
        let kind = target.registry.kind();
        let mut q = target.queue.lock().expect("not poisoned");
        let Some(e) = q.entries.get_mut(&key) else {
            return;
        };
        if e.ticket != ticket {
            return;
        }
        e.attempt = e.attempt.saturating_add(1);
        let attempts = e.attempt;
        match outcome {
            Attempt::Landed => {
                q.remove(&key);
                drop(q);
                tracing::info!(registry = %kind, instance = %key, attempts, "repair landed");
                self.metrics
                    .repairs_done
                    .get_or_create(&RegistryLabels {
                        registry: kind.as_str(),
                    })
                    .inc();
                self.gauge(kind).dec();
            }
            Attempt::Gone => {
                q.remove(&key);
                drop(q);
                tracing::info!(registry = %kind, instance = %key, "instance no longer alive at this generation: repair dropped");
                self.gauge(kind).dec();
            }
            Attempt::Failed(error) => {
                q.schedule(&key, Instant::now() + BACKOFF.delay(attempts));
                drop(q);
                tracing::debug!(registry = %kind, instance = %key, attempt = attempts, %error, "repair attempt failed");
            }
        }
    }

    /// Stops taking repairs, gives pending ones up to `grace` to land, then cancels the rest.
    pub async fn shutdown(&self, grace: Duration) {
        self.tracker.close();
        for t in &self.targets {
            t.wake.notify_one();
        }
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
