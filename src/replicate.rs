//! The coordinator: the one place that writes to both registries.
//!
//! Every operation goes to all registries concurrently, each bounded by its own deadline, so a
//! hung registry can never hold a response past it. Success on either registry is success; a
//! registry that missed a write is handed to the [`Repairer`]. The outcome of each registry is
//! reported back so the client can see what happened where.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use serde::Serialize;
use serde::ser::SerializeMap;
use tokio::time::Instant;

use crate::breaker::{Admit, Breaker, Caller};
use crate::cache::RecordCache;
use crate::merge::{Sourced, merge};
use crate::metrics::Metrics;
use crate::model::{Instance, InstanceKey, ServiceName, next_generation};
use crate::registry::{Health, Liveness, Registry, RegistryKind, RegistryState};
use crate::registry::{RegistryError, RegistryErrorKind};
use crate::repair::{RepairOp, Repairer};

/// `[heartbeat]`, validated: `Some(fraction)` of an instance's TTL within which a copy this
/// replica refreshed is not refreshed again (coalescing); `None` when off.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeartbeatSettings {
    pub coalesce: Option<f64>,
}

/// Coalescing may skip refreshes for at most half a TTL: the lease always keeps half its life.
pub const MAX_COALESCE_FRACTION: f64 = 0.5;

/// One registry as the coordinator sees it.
pub struct Member {
    pub registry: Arc<dyn Registry>,
    pub deadline: Duration,
    pub health: Health,
    pub breaker: Breaker,
}

/// What one registry did with one operation.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub registry: RegistryKind,
    pub latency: Duration,
    pub error: Option<String>,
    /// A heartbeat found the instance missing here and wrote it back.
    pub restored: bool,
    /// A heartbeat needed no call: this registry's copy was refreshed moments ago.
    pub coalesced: bool,
}

impl Serialize for Outcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("ok", &self.error.is_none())?;
        match &self.error {
            None => m.serialize_entry("latency_ms", &(self.latency.as_millis() as u64))?,
            Some(e) => m.serialize_entry("error", e)?,
        }
        if self.restored {
            m.serialize_entry("restored", &true)?;
        }
        if self.coalesced {
            m.serialize_entry("coalesced", &true)?;
        }
        m.end()
    }
}

/// Members whose answer is already known (`.0[i]`), and that answer.
type Known<'a, T> = (&'a [bool], fn() -> T);

/// One member's answer to a fanned-out call.
struct Reply<T> {
    kind: RegistryKind,
    result: Result<T, RegistryError>,
    took: Duration,
    /// Answered without a call (see [`Coordinator::heartbeat`]).
    coalesced: bool,
}

impl<T> Reply<T> {
    fn outcome(&self) -> Outcome {
        Outcome {
            registry: self.kind,
            latency: self.took,
            error: self.result.as_ref().err().map(|e| e.to_string()),
            restored: false,
            coalesced: self.coalesced,
        }
    }
}

fn outcomes<T>(replies: &[Reply<T>]) -> Outcomes {
    Outcomes(replies.iter().map(Reply::outcome).collect())
}

/// The per-registry outcomes of one operation, serialized as `{"etcd": {...}, "consul": {...}}`.
#[derive(Debug, Clone, Default)]
pub struct Outcomes(pub Vec<Outcome>);

impl Serialize for Outcomes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for o in &self.0 {
            m.serialize_entry(o.registry.as_str(), o)?;
        }
        m.end()
    }
}

impl Outcomes {
    pub fn degraded(&self) -> bool {
        self.0.iter().any(|o| o.error.is_some())
    }

    /// One line for the request log: `etcd=ok/3ms consul=error/1500ms: timed out after 1500 ms`.
    pub fn log_line(&self) -> String {
        let mut out = String::new();
        for o in &self.0 {
            if !out.is_empty() {
                out.push(' ');
            }
            let ms = o.latency.as_millis();
            match &o.error {
                None if o.coalesced => out.push_str(&format!("{}=coalesced", o.registry)),
                None if o.restored => out.push_str(&format!("{}=restored/{ms}ms", o.registry)),
                None => out.push_str(&format!("{}=ok/{ms}ms", o.registry)),
                Some(e) => out.push_str(&format!("{}=error/{ms}ms: {e}", o.registry)),
            }
        }
        out
    }
}

/// Why an operation could not be answered with success.
#[derive(Debug)]
pub enum Failure {
    /// No registry accepted or answered.
    Unavailable(Outcomes),
    /// Every registry that answered does not know the instance.
    UnknownInstance(Outcomes),
}

/// A register, heartbeat or deregister that succeeded on at least one registry.
#[derive(Debug)]
pub struct WriteReport {
    pub outcomes: Outcomes,
    /// Deregister only: some registry held the instance.
    pub existed: bool,
}

/// The merged view of one service.
#[derive(Debug)]
pub struct ServiceView {
    pub instances: Vec<Sourced>,
    pub outcomes: Outcomes,
}

pub struct Coordinator {
    members: Vec<Member>,
    /// Heartbeat coalescing: `Some(fraction)` of the TTL within which a refreshed copy is not
    /// refreshed again; `None` when off.
    coalesce: Option<f64>,
    cache: Arc<RecordCache>,
    metrics: Arc<Metrics>,
    repair: Arc<Repairer>,
}

impl Coordinator {
    /// `members[0]` is the primary: its record wins where registries disagree. `repair_rate`
    /// bounds the repairer's writes per second to each registry.
    pub fn new(members: Vec<Member>, repair_rate: u32, metrics: Arc<Metrics>) -> Arc<Self> {
        Self::with_coalescing(members, repair_rate, metrics, None)
    }

    /// [`Self::new`] with heartbeat coalescing within `coalesce` × TTL (see [`Self::heartbeat`]).
    pub fn with_coalescing(
        members: Vec<Member>,
        repair_rate: u32,
        metrics: Arc<Metrics>,
        coalesce: Option<f64>,
    ) -> Arc<Self> {
        assert!(
            members.len() <= crate::cache::MAX_REGISTRIES,
            "twinreg writes at most two registries"
        );
        let cache = Arc::new(RecordCache::default());
        let repair = Repairer::new(
            members
                .iter()
                .map(|m| (m.registry.clone(), m.deadline))
                .collect(),
            repair_rate,
            cache.clone(),
            metrics.clone(),
        );
        for m in &members {
            metrics.set_state(m.registry.kind(), RegistryState::Connecting);
            metrics.set_breaker(m.registry.kind(), m.breaker.state());
        }
        Arc::new(Self {
            members,
            coalesce,
            cache,
            metrics,
            repair,
        })
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn repairer(&self) -> &Arc<Repairer> {
        &self.repair
    }

    pub fn cache(&self) -> &RecordCache {
        &self.cache
    }

    /// Remembers when member `m`'s copy was refreshed, for coalescing; nothing when it is off.
    fn note_refresh(&self, key: &InstanceKey, m: usize, at: Option<Instant>) {
        if self.coalesce.is_some() {
            self.cache.refreshed(key, m, at);
        }
    }

    /// Runs `op` on one member within its deadline, recording latency, outcome and health.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        m: &Member,
        op: &'static str,
        f: F,
    ) -> (Result<T, RegistryError>, Duration)
    where
        F: FnOnce(Arc<dyn Registry>) -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        self.call_as(m, op, false, f).await
    }

    /// [`Self::call`], with `last_resort` forcing the call through an open breaker.
    async fn call_as<T, F, Fut>(
        &self,
        m: &Member,
        op: &'static str,
        last_resort: bool,
        f: F,
    ) -> (Result<T, RegistryError>, Duration)
    where
        F: FnOnce(Arc<dyn Registry>) -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let kind = m.registry.kind();
        // A breaker refuses client calls while open, unless every other registry is out too
        // (its breaker open, or its last call failed): then trying beats failing for sure.
        let others_out = self
            .members
            .iter()
            .filter(|o| !std::ptr::eq(*o, m))
            .all(|o| {
                o.breaker.state() != crate::breaker::BreakerState::Closed
                    || o.health.get() == RegistryState::Down
            });
        let caller = match op {
            "probe" => Caller::Probe,
            _ if last_resort || others_out => Caller::LastResort,
            _ => Caller::Request,
        };
        let admit = m.breaker.admit(caller);
        if let Admit::No(wait) = admit {
            self.metrics
                .observe_op(kind, op, "breaker_open", Duration::ZERO);
            let msg = format!(
                "circuit open after repeated failures (last: {}); next probe in {} ms",
                m.breaker.last_failure(),
                wait.as_millis()
            );
            return (Err(RegistryError::circuit_open(kind, msg)), Duration::ZERO);
        }
        let start = Instant::now();
        let result = match tokio::time::timeout(m.deadline, f(m.registry.clone())).await {
            Ok(r) => r,
            Err(_) => Err(RegistryError::timeout(kind, m.deadline)),
        };
        let took = start.elapsed();
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => match e.kind {
                RegistryErrorKind::Timeout => "timeout",
                RegistryErrorKind::Rejected => "rejected",
                RegistryErrorKind::Unavailable => "error",
                RegistryErrorKind::CircuitOpen => "breaker_open",
            },
        };
        self.metrics.observe_op(kind, op, outcome, took);
        let healthy = result.as_ref().map_or_else(|e| !e.retryable(), |_| true);
        if let Err(e) = &result
            && !healthy
        {
            m.breaker.note_failure(&e.message);
        }
        if let Some(state) = m.breaker.record(admit, healthy) {
            tracing::warn!(registry = %kind, state = ?state, "circuit breaker changed state");
            self.metrics.set_breaker(kind, state);
        }
        let before = m.health.get();
        m.health.observe(&result);
        let after = m.health.get();
        if before != after {
            self.metrics.set_state(kind, after);
        }
        (result, took)
    }

    /// Runs `f` on every member concurrently, each within its own deadline.
    async fn fan_out<T, F, Fut>(&self, op: &'static str, f: F) -> Vec<Reply<T>>
    where
        F: Fn(Arc<dyn Registry>) -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        self.fan_out_skipping(op, None, f).await
    }

    /// [`Self::fan_out`], except that members marked in `skip.0` are not called and answer
    /// `skip.1()` at once (their answer is already known).
    async fn fan_out_skipping<T, F, Fut>(
        &self,
        op: &'static str,
        skip: Option<Known<'_, T>>,
        f: F,
    ) -> Vec<Reply<T>>
    where
        F: Fn(Arc<dyn Registry>) -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let f = &f;
        let mut replies = join_all(self.members.iter().enumerate().map(|(i, m)| async move {
            if let Some((mask, known)) = skip
                && mask[i]
            {
                self.metrics.coalesced(m.registry.kind());
                return Reply {
                    kind: m.registry.kind(),
                    result: Ok(known()),
                    took: Duration::ZERO,
                    coalesced: true,
                };
            }
            let (result, took) = self.call(m, op, f).await;
            Reply {
                kind: m.registry.kind(),
                result,
                took,
                coalesced: false,
            }
        }))
        .await;
        // Every registry failed, and some were skipped by an open breaker (it may have recovered
        // since its last probe): give those one last-resort try rather than fail for sure.
        let skipped =
            |r: &Reply<T>| matches!(&r.result, Err(e) if e.kind == RegistryErrorKind::CircuitOpen);
        if replies.iter().all(|r| r.result.is_err()) && replies.iter().any(skipped) {
            let retries = join_all(
                self.members
                    .iter()
                    .zip(&replies)
                    .filter(|(_, r)| skipped(r))
                    .map(|(m, _)| async move {
                        (m.registry.kind(), self.call_as(m, op, true, f).await)
                    }),
            )
            .await;
            for (kind, (result, took)) in retries {
                if let Some(r) = replies.iter_mut().find(|r| r.kind == kind) {
                    *r = Reply {
                        kind,
                        result,
                        took,
                        coalesced: false,
                    };
                }
            }
        }
        replies
    }

    pub async fn register(&self, instance: Instance) -> Result<WriteReport, Failure> {
        let started = Instant::now();
        let i = &instance;
        let replies = self
            .fan_out("register", |r| async move { r.register_new(i).await })
            .await;
        let outcomes = outcomes(&replies);
        if replies.iter().all(|r| r.result.is_err()) {
            return Err(Failure::Unavailable(outcomes));
        }
        self.cache.put(&instance);
        for (m, r) in replies.iter().enumerate() {
            let fresh = r.result.is_ok().then_some(started);
            self.note_refresh(&instance.key, m, fresh);
            match r.result {
                Ok(()) => self.repair.settle(r.kind, &instance.key),
                Err(_) => self
                    .repair
                    .submit(r.kind, RepairOp::Register(instance.clone())),
            }
        }
        Ok(WriteReport {
            outcomes,
            existed: false,
        })
    }

    /// Renews the instance in every registry. With coalescing on, a registry whose copy this
    /// replica refreshed less than `fraction × ttl` ago is not called: its lease or TTL check
    /// still has more than `1 - fraction` of its life (the fraction is at most 1/2), and the
    /// next heartbeat after the window renews it. Only a refresh this replica made or saw counts,
    /// and any failure or "unknown" forgets it, so the next heartbeat goes through.
    pub async fn heartbeat(&self, key: &InstanceKey) -> Result<WriteReport, Failure> {
        let started = Instant::now();
        let n = self.members.len();
        let fresh = match self.coalesce {
            Some(fraction) => self.cache.fresh(key, fraction, started, n),
            None => [false; crate::cache::MAX_REGISTRIES],
        };
        let replies = self
            .fan_out_skipping(
                "heartbeat",
                Some((&fresh[..n], || Liveness::Renewed)),
                |r| async move { r.heartbeat(key).await },
            )
            .await;
        if replies.iter().all(|r| r.coalesced) {
            return Ok(WriteReport {
                outcomes: outcomes(&replies),
                existed: true,
            });
        }
        for (m, r) in replies.iter().enumerate() {
            if !r.coalesced {
                let renewed = matches!(r.result, Ok(Liveness::Renewed));
                self.note_refresh(key, m, renewed.then_some(started));
            }
        }
        let mut outcomes = outcomes(&replies).0;
        let with = |want: Liveness| -> Vec<usize> {
            (0..replies.len())
                .filter(|&i| matches!(&replies[i].result, Ok(l) if *l == want))
                .collect()
        };
        let renewed = with(Liveness::Renewed);
        let unknown = with(Liveness::Unknown);
        if renewed.is_empty() && unknown.is_empty() {
            return Err(Failure::Unavailable(Outcomes(outcomes)));
        }
        let any_failed = renewed.len() + unknown.len() < replies.len();
        if renewed.is_empty() && !any_failed {
            // Every registry answered and none knows it: the client must register again.
            self.cache.remove(key);
            for o in &mut outcomes {
                o.error = Some("unknown instance".into());
            }
            return Err(Failure::UnknownInstance(Outcomes(outcomes)));
        }
        if unknown.is_empty() {
            self.cache.touch(key);
            return Ok(WriteReport {
                outcomes: Outcomes(outcomes),
                existed: true,
            });
        }
        // Some registry lost it. Restore from the freshest record: a registry that still holds
        // it (so any replica can do this), else this replica's cache.
        let mut record = None;
        for &i in &renewed {
            let (got, _) = self
                .call(&self.members[i], "get", |r| async move { r.get(key).await })
                .await;
            if let Ok(Some(found)) = got {
                record = Some(found);
                break;
            }
        }
        let Some(record) = record.or_else(|| self.cache.get(key)) else {
            if renewed.is_empty() {
                // Nobody that answered knows it and there is nothing to restore from. A registry
                // that did not answer may still hold it: "unknown" needs every registry's word.
                return Err(if any_failed {
                    Failure::Unavailable(Outcomes(outcomes))
                } else {
                    Failure::UnknownInstance(Outcomes(outcomes))
                });
            }
            for &i in &unknown {
                outcomes[i].error =
                    Some("instance missing here and no record to restore it from".into());
            }
            self.cache.touch(key);
            return Ok(WriteReport {
                outcomes: Outcomes(outcomes),
                existed: true,
            });
        };
        let mut restored_any = !renewed.is_empty();
        self.cache.put(&record);
        for &i in &unknown {
            let m = &self.members[i];
            let rec = &record;
            let restore_started = Instant::now();
            let (r, took) = self
                .call(m, "restore", |reg| async move { reg.register(rec).await })
                .await;
            let o = &mut outcomes[i];
            o.latency += took;
            o.error = r.as_ref().err().map(|e| e.to_string());
            o.restored = r.is_ok();
            self.note_refresh(key, i, r.is_ok().then_some(restore_started));
            if r.is_ok() {
                restored_any = true;
                self.repair.settle(m.registry.kind(), key);
                tracing::info!(registry = %m.registry.kind(), instance = %key, "heartbeat restored an instance the registry had lost");
            } else {
                self.repair
                    .submit(m.registry.kind(), RepairOp::Register(record.clone()));
            }
        }
        if !restored_any {
            return Err(Failure::Unavailable(Outcomes(outcomes)));
        }
        Ok(WriteReport {
            outcomes: Outcomes(outcomes),
            existed: true,
        })
    }

    pub async fn deregister(&self, key: &InstanceKey) -> Result<WriteReport, Failure> {
        // Fences this delete: a registration written after it (a newer generation) survives it,
        // in particular when this delete is re-driven late by the repairer.
        let generation = next_generation();
        let replies = self
            .fan_out("deregister", |r| async move {
                r.deregister(key, generation).await
            })
            .await;
        let outcomes = outcomes(&replies);
        if replies.iter().all(|r| r.result.is_err()) {
            return Err(Failure::Unavailable(outcomes));
        }
        self.cache.remove(key);
        let existed = replies.iter().any(|r| matches!(r.result, Ok(true)));
        for r in &replies {
            match r.result {
                Ok(_) => self.repair.settle(r.kind, key),
                Err(_) => self
                    .repair
                    .submit(r.kind, RepairOp::Deregister(key.clone(), generation)),
            }
        }
        Ok(WriteReport { outcomes, existed })
    }

    /// The union of all registries' live instances of `service`, one per id, the primary's
    /// record winning, each with the registries it was found in.
    pub async fn list(&self, service: &ServiceName) -> Result<ServiceView, Failure> {
        let replies = self
            .fan_out("list", |r| async move { r.list(service).await })
            .await;
        let outcomes = outcomes(&replies);
        if replies.iter().all(|r| r.result.is_err()) {
            return Err(Failure::Unavailable(outcomes));
        }
        let merged = merge(
            replies
                .into_iter()
                .map(|r| (r.kind, r.result.unwrap_or_default())),
        );
        Ok(ServiceView {
            instances: merged.into_values().collect(),
            outcomes,
        })
    }

    /// Names of services any registry holds, with their merged instance counts (services with
    /// no live instance are left out).
    pub async fn services(&self) -> Result<(Vec<(ServiceName, usize)>, Outcomes), Failure> {
        let replies = self
            .fan_out("services", |r| async move { r.services().await })
            .await;
        let outcomes = outcomes(&replies);
        if replies.iter().all(|r| r.result.is_err()) {
            return Err(Failure::Unavailable(outcomes));
        }
        let names: BTreeSet<ServiceName> = replies
            .into_iter()
            .flat_map(|r| r.result.unwrap_or_default())
            .collect();
        let counts = join_all(names.into_iter().map(|name| async move {
            let n = self.list(&name).await.map_or(0, |v| v.instances.len());
            (name, n)
        }))
        .await;
        Ok((
            counts.into_iter().filter(|(_, n)| *n > 0).collect(),
            outcomes,
        ))
    }

    /// Probes every registry once, updating health; true when at least one answered.
    pub async fn probe_all(&self) -> bool {
        let replies = self
            .fan_out("probe", |r| async move { r.probe().await })
            .await;
        replies.iter().any(|r| r.result.is_ok())
    }

    /// The registries, primary first (the watch hubs open their own upstream watches).
    pub fn registries(&self) -> Vec<Arc<dyn Registry>> {
        self.members.iter().map(|m| m.registry.clone()).collect()
    }

    /// True when at least one registry is up (`/readyz`).
    pub fn ready(&self) -> bool {
        self.members
            .iter()
            .any(|m| m.health.get() == RegistryState::Up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::Breaker;
    use crate::registry::memory::{Memory, Mode};

    const DEADLINE: Duration = Duration::from_millis(1500);

    fn coordinator(rate: u32) -> (Arc<Coordinator>, Arc<Memory>, Arc<Memory>) {
        coordinator_with(rate, None)
    }

    /// Two memory registries behind a coordinator coalescing within `coalesce` × TTL.
    fn coordinator_with(
        rate: u32,
        coalesce: Option<f64>,
    ) -> (Arc<Coordinator>, Arc<Memory>, Arc<Memory>) {
        let etcd = Arc::new(Memory::new(RegistryKind::Etcd));
        let consul = Arc::new(Memory::new(RegistryKind::Consul));
        let member = |r: Arc<Memory>| Member {
            registry: r,
            deadline: DEADLINE,
            health: Health::default(),
            breaker: Breaker::new(3, Duration::from_secs(2)),
        };
        let c = Coordinator::with_coalescing(
            vec![member(etcd.clone()), member(consul.clone())],
            rate,
            Metrics::new(),
            coalesce,
        );
        (c, etcd, consul)
    }

    fn instance(id: &str) -> Instance {
        Instance::for_test("payments", id)
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_registry_holds_no_answer_past_its_deadline_and_the_breaker_then_skips_it() {
        let (c, etcd, consul) = coordinator(100);
        etcd.set_mode(Mode::Hang);
        for i in 0..3 {
            let start = tokio::time::Instant::now();
            let r = c.register(instance(&format!("p{i}"))).await.unwrap();
            assert_eq!(
                start.elapsed(),
                DEADLINE,
                "bounded by the deadline, not more"
            );
            assert!(r.outcomes.degraded());
            assert_eq!(
                r.outcomes.0[0].error.as_deref(),
                Some("timed out after 1500 ms")
            );
        }
        let start = tokio::time::Instant::now();
        let r = c.register(instance("after")).await.unwrap();
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "the open breaker adds no latency"
        );
        let err = r.outcomes.0[0].error.as_deref().unwrap();
        assert!(err.starts_with("circuit open"), "{err}");
        assert!(
            err.contains("(last: timed out after 1500 ms)"),
            "the refusal says why the breaker opened: {err}"
        );
        assert!(consul.holds(&instance("after").key).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_registry_fails_an_open_breaker_gets_a_last_resort_try() {
        let (c, etcd, consul) = coordinator(100);
        etcd.set_mode(Mode::Down);
        for i in 0..3 {
            c.register(instance(&format!("p{i}"))).await.unwrap();
        }
        assert_eq!(
            c.members()[0].breaker.state(),
            crate::breaker::BreakerState::Open
        );
        // etcd is back but its breaker has not probed it yet; Consul dies in that window.
        etcd.set_mode(Mode::Up);
        consul.set_mode(Mode::Down);
        let i = instance("last");
        let r = c.register(i.clone()).await.unwrap();
        assert!(r.outcomes.0[0].error.is_none(), "{:?}", r.outcomes);
        assert_eq!(etcd.holds(&i.key).unwrap(), i);
        assert_eq!(
            c.members()[0].breaker.state(),
            crate::breaker::BreakerState::Closed
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_missed_write_is_re_driven_until_the_registry_accepts() {
        let (c, etcd, _consul) = coordinator(100);
        etcd.set_mode(Mode::Down);
        let i = instance("p");
        assert!(c.register(i.clone()).await.unwrap().outcomes.degraded());
        assert_eq!(c.repairer().pending(), 1);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(etcd.holds(&i.key).is_none());
        etcd.set_mode(Mode::Up);
        for _ in 0..120 {
            if etcd.holds(&i.key).is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            c.heartbeat(&i.key).await.unwrap();
        }
        assert_eq!(etcd.holds(&i.key).unwrap(), i);
        assert_eq!(c.repairer().pending(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_repair_is_dropped_once_the_instance_is_deregistered() {
        let (c, etcd, consul) = coordinator(100);
        etcd.set_mode(Mode::Down);
        let i = instance("p");
        c.register(i.clone()).await.unwrap();
        c.deregister(&i.key).await.unwrap();
        etcd.set_mode(Mode::Up);
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert!(
            etcd.holds(&i.key).is_none(),
            "a deregistered instance came back"
        );
        assert!(consul.holds(&i.key).is_none());
        assert_eq!(c.repairer().pending(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_restores_from_the_other_registry_and_404s_when_none_knows() {
        let (c, etcd, consul) = coordinator(100);
        let i = instance("p");
        c.register(i.clone()).await.unwrap();
        etcd.remove_behind_the_back(&i.key);
        let r = c.heartbeat(&i.key).await.unwrap();
        assert!(r.outcomes.0[0].restored);
        assert_eq!(etcd.holds(&i.key).unwrap(), i);
        etcd.remove_behind_the_back(&i.key);
        consul.remove_behind_the_back(&i.key);
        assert!(matches!(
            c.heartbeat(&i.key).await,
            Err(Failure::UnknownInstance(_))
        ));
        assert!(
            etcd.holds(&i.key).is_none(),
            "no resurrection from the cache"
        );
    }

    #[tokio::test]
    async fn unknown_here_and_unreachable_there_is_503_not_404() {
        // This replica never saw the instance (no cache entry): etcd says "unknown", Consul does
        // not answer. Consul may still hold it, so the client must not be told to re-register.
        let (c, _etcd, consul) = coordinator(100);
        consul.set_mode(Mode::Down);
        let key = instance("elsewhere").key;
        assert!(matches!(
            c.heartbeat(&key).await,
            Err(Failure::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn recovery_after_an_outage_is_paced() {
        let rate = 20;
        let (c, etcd, _consul) = coordinator(rate);
        etcd.set_mode(Mode::Down);
        let n = 60;
        for k in 0..n {
            c.register(instance(&format!("p{k}"))).await.unwrap();
        }
        etcd.set_mode(Mode::Up);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while etcd.writes.load(std::sync::atomic::Ordering::SeqCst) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "repairs did not land"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // No one-second window holds more than the rate plus the initial burst.
        let times = etcd.write_times();
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..]
                .iter()
                .take_while(|u| u.duration_since(*t) < Duration::from_secs(1))
                .count();
            assert!(
                in_window <= 2 * rate as usize,
                "{in_window} writes within one second"
            );
        }
    }

    /// Heartbeats every `every` for `span` (paused time), returning how many reached each
    /// registry and whether any was refused or failed.
    async fn beat(c: &Coordinator, key: &InstanceKey, every: Duration, span: Duration) -> usize {
        let mut sent = 0;
        let end = Instant::now() + span;
        while Instant::now() < end {
            tokio::time::sleep(every).await;
            let r = c.heartbeat(key).await.expect("heartbeat succeeds");
            assert!(!r.outcomes.degraded(), "{:?}", r.outcomes);
            sent += 1;
        }
        sent
    }

    #[tokio::test(start_paused = true)]
    async fn coalescing_skips_fresh_copies_and_never_leaves_a_lease_past_its_window() {
        let (c, etcd, consul) = coordinator_with(100, Some(1.0 / 3.0));
        let i = instance("p1"); // ttl 30 s: the window is 10 s
        c.register(i.clone()).await.unwrap();
        let calls = |m: &Memory| m.heartbeats.load(std::sync::atomic::Ordering::SeqCst);

        // Every 2 s for 60 s: only about one heartbeat in five reaches each registry.
        let sent = beat(&c, &i.key, Duration::from_secs(2), Duration::from_secs(60)).await;
        assert_eq!(sent, 30);
        for m in [&etcd, &consul] {
            let n = calls(m);
            assert!(
                (5..=7).contains(&n),
                "{n} of {sent} heartbeats reached a registry"
            );
        }

        // Whatever the client's interval, no registry goes longer than window + interval without
        // a renewal: the lease always keeps at least ttl - window - interval of its life.
        for every in [1, 3, 7, 9, 11, 25] {
            let every = Duration::from_secs(every);
            let before = calls(&etcd);
            let start = Instant::now();
            let sent = beat(&c, &i.key, every, Duration::from_secs(120)).await;
            let reached = calls(&etcd) - before;
            for m in [&etcd, &consul] {
                let mut times = m.renew_times();
                times.retain(|t| *t >= start);
                let mut last = start;
                for t in times {
                    assert!(
                        t - last <= Duration::from_secs(10) + every,
                        "interval {every:?}: {:?} without a renewal",
                        t - last
                    );
                    last = t;
                }
            }
            if every >= Duration::from_secs(10) {
                assert_eq!(
                    reached, sent,
                    "beyond the window every heartbeat goes through"
                );
            } else {
                assert!(reached < sent, "interval {every:?}: nothing was coalesced");
            }
        }

        // A failed call forgets the copy's freshness: the next heartbeat goes through at once.
        consul.set_mode(Mode::Down);
        tokio::time::sleep(Duration::from_secs(11)).await;
        let r = c.heartbeat(&i.key).await.unwrap();
        assert!(r.outcomes.degraded());
        consul.set_mode(Mode::Up);
        let before = calls(&consul);
        c.heartbeat(&i.key).await.unwrap();
        assert_eq!(
            calls(&consul),
            before + 1,
            "consul was not fresh: it must be called"
        );

        // A deregistered instance is never coalesced: its heartbeat is a 404.
        c.deregister(&i.key).await.unwrap();
        assert!(matches!(
            c.heartbeat(&i.key).await,
            Err(Failure::UnknownInstance(_))
        ));
    }
}
