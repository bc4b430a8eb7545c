//! The coordinator: the one place that writes to both registries.
//!
//! Every operation goes to all registries concurrently, each bounded by its own deadline, so a
//! hung registry can never hold a response past it. Success on either registry is success; a
//! registry that missed a write is handed to the [`Repairer`]. The outcome of each registry is
//! reported back so the client can see what happened where.
//!
//! Liveness is twinreg's: the replica that registered an instance, or took it over, owns it
//! ([`Owned`]). Its heartbeats touch that table only; the coordinator expires it when they stop
//! ([`Coordinator::expire_due`]), takes over what another replica held when a heartbeat comes
//! here instead, and acts on what the registries report of the copies it holds
//! ([`Coordinator::observed`]: a copy lost is written again, a copy taken over is let go).

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use serde::Serialize;
use serde::ser::SerializeMap;
use tokio::time::Instant;

use crate::breaker::{Admit, Breaker, Caller};
use crate::liveness::owned::{Copy, Owned, REGISTRIES, State};
use crate::merge::{Sourced, merge};
use crate::metrics::Metrics;
use crate::model::{Instance, InstanceKey, KeyParts, ServiceName, next_generation};
use crate::registry::{
    Brief, Health, Held, Holder, Observed, Registry, RegistryKind, RegistryState, Revision, Written,
};
use crate::registry::{RegistryError, RegistryErrorKind};
use crate::repair::{RepairOp, Repairer};

/// `[heartbeat]`, validated. `coalesce` is accepted for old configurations and has no effect:
/// a heartbeat to the owning replica costs the registries nothing whatever its rate.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeartbeatSettings {
    pub coalesce: Option<f64>,
}

/// The largest `heartbeat.coalesce` an old configuration may give (it is then ignored).
pub const MAX_COALESCE_FRACTION: f64 = 0.5;

/// Writes at once while copying adopted instances into the other registry.
const ADOPT_CONCURRENCY: usize = 16;
/// Heartbeats for instances this replica does not own that take them over at once (each reads
/// and writes both registries). The rest wait, and are answered from memory if the instance was
/// adopted meanwhile: after a replica dies, its clients' heartbeats arrive here before the
/// follow reports its instances, and must not all become registry round trips at once.
const TAKEOVER_CONCURRENCY: usize = 32;
/// How long a deregistration is remembered (see [`Coordinator::deregistered`]): longer than any
/// take-over by heartbeat can take (four registry calls, each within its deadline).
const DEREGISTERED_MEMORY: Duration = Duration::from_secs(60);

/// A replica id: `hint` (host name or listen address, made safe for keys and IDs) and 8 random
/// hex digits, new at every start.
pub fn new_replica_id(hint: &str) -> String {
    let safe: String = hint
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    format!("{safe}-{:08x}", rand::random::<u32>())
}

/// Whether a registry is known to be out (its last call failed, or its breaker is open): what an
/// owner's heartbeat answer reports without calling it.
fn out_of_service(m: &Member) -> bool {
    m.health.get() == RegistryState::Down || !m.breaker.is_closed()
}

/// One registry as the coordinator sees it.
pub struct Member {
    pub registry: Arc<dyn Registry>,
    pub deadline: Duration,
    pub health: Health,
    pub breaker: Breaker,
    /// Held while this registry removes one expiry tick's copies: a registry works on one tick
    /// at a time, and a slower registry's backlog queues behind itself, not in front of the
    /// other registry's next tick.
    pub expiring: tokio::sync::Mutex<()>,
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

/// One member's answer to a fanned-out call.
struct Reply<T> {
    kind: RegistryKind,
    result: Result<T, RegistryError>,
    took: Duration,
}

impl<T> Reply<T> {
    fn outcome(&self) -> Outcome {
        Outcome {
            registry: self.kind,
            latency: self.took,
            error: self.result.as_ref().err().map(|e| e.to_string()),
            restored: false,
            coalesced: false,
        }
    }
}

/// Each registry's outcome, those that answered saying `why` they do not hold the instance.
fn unknown_outcomes<T>(replies: &[Reply<T>], why: &str) -> Outcomes {
    Outcomes(
        replies
            .iter()
            .map(|r| {
                let mut o = r.outcome();
                o.error.get_or_insert_with(|| why.to_owned());
                o
            })
            .collect(),
    )
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

    /// Every registry's copy is in place and none was called: the owner's answer from memory.
    pub fn from_memory(&self) -> bool {
        self.0
            .iter()
            .all(|o| o.coalesced && o.error.is_none() && !o.restored && o.latency.is_zero())
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

/// A heartbeat to the owner of its instance (see [`Coordinator::owner_beat`]).
#[derive(Debug)]
pub enum OwnerBeat {
    /// Every copy in place, every registry answering: nothing to report but that.
    InPlace,
    /// Something is not: the full report.
    Report(Result<WriteReport, Failure>),
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
    /// This replica's id: what it announces in etcd and names its Consul service after.
    replica: String,
    owned: Arc<Owned>,
    metrics: Arc<Metrics>,
    repair: Arc<Repairer>,
    takeovers: tokio::sync::Semaphore,
    /// Woken whenever instances are adopted (see [`Self::adopt`]).
    adopted: tokio::sync::Notify,
    /// Instances deregistered lately through this replica: the deregistration's generation,
    /// and when. A take-over by heartbeat that reads a copy a
    /// deregistration has not removed yet (or removes while the take-over runs) must not make
    /// the instance owned: it would answer its heartbeats, and restore its copies, as if it had
    /// never been deregistered. A registration newer than the deregistration is not affected.
    deregistered: std::sync::Mutex<std::collections::HashMap<InstanceKey, (u64, Instant)>>,
}

impl Coordinator {
    /// `members[0]` is the primary: its record wins where registries disagree. `repair_rate`
    /// bounds the repairer's writes per second to each registry.
    pub fn new(members: Vec<Member>, repair_rate: u32, metrics: Arc<Metrics>) -> Arc<Self> {
        Self::for_replica(members, repair_rate, metrics, &new_replica_id("twinreg"))
    }

    /// [`Self::new`] for the replica named `replica` (the registries' adapters use the same).
    pub fn for_replica(
        members: Vec<Member>,
        repair_rate: u32,
        metrics: Arc<Metrics>,
        replica: &str,
    ) -> Arc<Self> {
        assert!(
            members.len() <= REGISTRIES,
            "twinreg writes at most two registries"
        );
        let owned = Arc::new(Owned::new());
        let repair = Repairer::new(
            members
                .iter()
                .map(|m| (m.registry.clone(), m.deadline))
                .collect(),
            repair_rate,
            owned.clone(),
            metrics.clone(),
        );
        for m in &members {
            metrics.set_state(m.registry.kind(), RegistryState::Connecting);
            metrics.set_breaker(m.registry.kind(), m.breaker.state());
        }
        Arc::new(Self {
            members,
            replica: replica.to_owned(),
            owned,
            metrics,
            repair,
            takeovers: tokio::sync::Semaphore::new(TAKEOVER_CONCURRENCY),
            adopted: tokio::sync::Notify::new(),
            deregistered: Default::default(),
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

    /// The instances this replica owns.
    pub fn owned(&self) -> &Arc<Owned> {
        &self.owned
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    fn member_of(&self, kind: RegistryKind) -> Option<usize> {
        self.members.iter().position(|m| m.registry.kind() == kind)
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
            .all(out_of_service);
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
        let f = &f;
        let mut replies = join_all(self.members.iter().map(|m| async move {
            let (result, took) = self.call(m, op, f).await;
            Reply {
                kind: m.registry.kind(),
                result,
                took,
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
                    *r = Reply { kind, result, took };
                }
            }
        }
        replies
    }

    /// Writes a client's registration to every registry at once; this replica owns the
    /// instance from then on (its heartbeats touch only memory here).
    pub async fn register(
        &self,
        instance: Instance,
        identity: &str,
    ) -> Result<WriteReport, Failure> {
        let i = &instance;
        let replies = self
            .fan_out("register", |r| async move { r.register_new(i).await })
            .await;
        self.own_written(instance, identity, replies)
    }

    /// Drains (`drained`: out of native discovery, still registered and heartbeating) or
    /// undrains an instance: its record, as this replica owns it or as the registries hold it
    /// (the primary's wins), written to every registry again with the flag and a new
    /// generation; this replica owns it from then on, as after a take-over. An instance no
    /// registry knows is [`Failure::UnknownInstance`].
    pub async fn drain(
        &self,
        key: &InstanceKey,
        drained: bool,
        identity: &str,
    ) -> Result<WriteReport, Failure> {
        let (record, owner) = match self.owned.get(key) {
            // A deregistration under way removed it from the owned set first: not drained.
            Some(state) if self.deregistration_of(&state.instance).is_some() => {
                return Err(Failure::UnknownInstance(Outcomes(Vec::new())));
            }
            // The instance's own identity keeps its request budget.
            Some(state) => (state.instance, state.identity.to_string()),
            None => {
                let replies = self
                    .fan_out("drain", |r| async move { r.held(key).await })
                    .await;
                (self.held_record(&replies)?, identity.to_string())
            }
        };
        let instance = Instance {
            drained,
            generation: next_generation(),
            ..record
        };
        let i = &instance;
        let replies = self
            .fan_out("drain", |r| async move { r.register(i).await })
            .await;
        self.own_written(instance, &owner, replies)
    }

    /// The record the registries hold of an instance this replica does not own, from their
    /// `held` answers: the primary's wins (a registry that did not answer may still hold it).
    /// Unavailable when none answered, or none that answered holds it and one did not answer;
    /// unknown when every registry says it does not, or the record is the leftover of a
    /// deregistration still on its way (or re-driven by the repairer).
    fn held_record(&self, replies: &[Reply<Option<Held>>]) -> Result<Instance, Failure> {
        if replies.iter().all(|r| r.result.is_err()) {
            return Err(Failure::Unavailable(outcomes(replies)));
        }
        let Some(record) = replies
            .iter()
            .find_map(|r| r.result.as_ref().ok().and_then(|h| h.clone()))
            .map(|h| h.instance)
        else {
            // Nobody holds it: each registry that answered says so in its outcome.
            let out = unknown_outcomes(replies, "unknown instance");
            return Err(if replies.iter().any(|r| r.result.is_err()) {
                Failure::Unavailable(out)
            } else {
                Failure::UnknownInstance(out)
            });
        };
        if self.deregistration_of(&record).is_some() {
            let out = unknown_outcomes(replies, "deregistered; register it again");
            return Err(Failure::UnknownInstance(out));
        }
        Ok(record)
    }

    /// After a client's write of `instance` (a registration, a drain): this replica owns it,
    /// holding the copies the registries accepted; the others are handed to the repairer.
    fn own_written(
        &self,
        instance: Instance,
        identity: &str,
        replies: Vec<Reply<Written>>,
    ) -> Result<WriteReport, Failure> {
        let outcomes = outcomes(&replies);
        if replies.iter().all(|r| r.result.is_err()) {
            return Err(Failure::Unavailable(outcomes));
        }
        let mut copies = [Copy::Missing; REGISTRIES];
        for (m, r) in replies.iter().enumerate() {
            if let Ok(w) = &r.result {
                copies[m] = Copy::from(*w);
            }
        }
        self.owned.insert(instance.clone(), identity, copies);
        for (m, r) in replies.iter().enumerate() {
            match r.result {
                Ok(_) => self.repair.settle(r.kind, &instance.key),
                Err(_) => self.restore(m, &instance),
            }
        }
        Ok(WriteReport {
            outcomes,
            existed: false,
        })
    }

    /// Hands registry `m`'s copy of an owned instance to the repairer, to be written again.
    fn restore(&self, m: usize, instance: &Instance) {
        self.owned
            .set_copy(&instance.key, instance.generation, m, Copy::Missing);
        self.repair.submit(
            self.members[m].registry.kind(),
            RepairOp::Register(instance.key.clone(), instance.generation),
        );
    }

    /// A heartbeat. To the replica that owns the instance, a memory write and nothing else: the
    /// answer says, per registry, whether this replica holds a copy there (`coalesced`: no call
    /// was needed), or that the copy is being written again. To any other replica: the copies
    /// are read, taken over in one guarded write each (restored where one is missing), and the
    /// instance is owned here from then on. 404 only when every registry answered that it does
    /// not know the instance.
    pub async fn heartbeat(
        &self,
        key: &InstanceKey,
        identity: &str,
    ) -> Result<WriteReport, Failure> {
        match self.owner_heartbeat(key, identity) {
            Some(answer) => answer,
            None => self.take_over_on_heartbeat(key, identity).await,
        }
    }

    /// A heartbeat to the instance's owner, answered from memory; `None` when it is not owned
    /// here.
    pub fn owner_heartbeat(
        &self,
        key: &dyn KeyParts,
        identity: &str,
    ) -> Option<Result<WriteReport, Failure>> {
        self.owned
            .touch(key, identity)
            .map(|copies| self.owner_answer(copies))
    }

    /// A heartbeat to the instance's owner (see [`Self::owner_heartbeat`]), without building
    /// a report in the common case: [`OwnerBeat::InPlace`] when every copy is in place and
    /// every registry answering (the answer [`Self::in_place_outcomes`] describes).
    /// `now` is when the heartbeat arrived (the edge's clock reading, not read again).
    pub fn owner_beat(
        &self,
        key: &dyn KeyParts,
        identity: &str,
        now: tokio::time::Instant,
    ) -> Option<OwnerBeat> {
        let copies = self.owned.touch_at(key, identity, now)?;
        let in_place = self.members.iter().enumerate().all(|(m, member)| {
            matches!(copies[m], Copy::Held(_) | Copy::Adopting) && !out_of_service(member)
        });
        if !in_place {
            return Some(OwnerBeat::Report(self.owner_answer(copies)));
        }
        for member in &self.members {
            self.metrics.coalesced(member.registry.kind());
        }
        Some(OwnerBeat::InPlace)
    }

    /// What the owner answers to a heartbeat when every copy is in place: each registry
    /// coalesced, none called.
    pub fn in_place_outcomes(&self) -> Outcomes {
        Outcomes(
            self.members
                .iter()
                .map(|member| Outcome {
                    registry: member.registry.kind(),
                    latency: Duration::ZERO,
                    error: None,
                    restored: false,
                    coalesced: true,
                })
                .collect(),
        )
    }

    /// The answer of the owner to a heartbeat, from what it knows of the copies.
    fn owner_answer(&self, copies: [Copy; REGISTRIES]) -> Result<WriteReport, Failure> {
        let outcomes: Vec<Outcome> = self
            .members
            .iter()
            .enumerate()
            .map(|(m, member)| {
                let kind = member.registry.kind();
                let error = match copies[m] {
                    // The registry failed its last call (or its breaker is open): the copy
                    // is kept there, but nothing can read it now.
                    Copy::Held(_) | Copy::Adopting if out_of_service(member) => Some(format!(
                        "{kind} is not answering (last failure: {}); twinreg keeps its copy and checks again every few seconds",
                        member.breaker.last_failure()
                    )),
                    Copy::Held(_) | Copy::Adopting => {
                        self.metrics.coalesced(kind);
                        None
                    }
                    Copy::Missing => Some(format!(
                        "{kind} does not hold the instance now; twinreg is writing it again"
                    )),
                };
                Outcome {
                    registry: kind,
                    latency: Duration::ZERO,
                    error,
                    restored: false,
                    coalesced: true,
                }
            })
            .collect();
        if outcomes.iter().all(|o| o.error.is_some()) {
            return Err(Failure::Unavailable(Outcomes(outcomes)));
        }
        Ok(WriteReport {
            outcomes: Outcomes(outcomes),
            existed: true,
        })
    }

    /// A heartbeat for an instance this replica does not own.
    async fn take_over_on_heartbeat(
        &self,
        key: &InstanceKey,
        identity: &str,
    ) -> Result<WriteReport, Failure> {
        // Waits for a turn, answering from memory as soon as the instance is adopted (or taken
        // over by an earlier heartbeat) meanwhile.
        let _permit = loop {
            let adopted = self.adopted.notified();
            tokio::pin!(adopted);
            adopted.as_mut().enable();
            if let Some(copies) = self.owned.touch(key, identity) {
                return self.owner_answer(copies);
            }
            tokio::select! {
                p = self.takeovers.acquire() => break p.expect("never closed"),
                _ = adopted => {}
            }
        };
        if let Some(copies) = self.owned.touch(key, identity) {
            return self.owner_answer(copies);
        }
        let started = Instant::now();
        let replies = self
            .fan_out("heartbeat", |r| async move { r.held(key).await })
            .await;
        let record = self.held_record(&replies)?;
        let mut copies = [Copy::Missing; REGISTRIES];
        let mut outs = Vec::with_capacity(self.members.len());
        let mut missing = Vec::new();
        let mut fenced = false;
        for (m, (member, reply)) in self.members.iter().zip(&replies).enumerate() {
            let mut outcome = reply.outcome();
            match &reply.result {
                Ok(Some(h)) if h.instance == record => {
                    let one = std::slice::from_ref(h);
                    let (r, _) = self
                        .call(member, "take_over", |reg| async move {
                            reg.take_over(one).await
                        })
                        .await;
                    match r.map(|v| v.first().copied().flatten()) {
                        Ok(Some(rev)) => copies[m] = Copy::Held(rev),
                        // Changed since it was read: write the record again, fenced.
                        Ok(None) => match self.write_again(member, &record).await {
                            Ok(Written::At(rev)) => copies[m] = Copy::Held(rev),
                            Ok(Written::Fenced) => fenced = true,
                            Err(e) => {
                                outcome.error = Some(e.to_string());
                                missing.push(m);
                            }
                        },
                        Err(e) => {
                            outcome.error = Some(e.to_string());
                            missing.push(m);
                        }
                    }
                }
                // Missing or different here: restored from the record.
                Ok(_) => match self.write_again(member, &record).await {
                    Ok(Written::At(rev)) => {
                        copies[m] = Copy::Held(rev);
                        outcome.restored = true;
                        tracing::info!(registry = %member.registry.kind(), instance = %key, "heartbeat restored an instance the registry had lost");
                    }
                    Ok(Written::Fenced) => fenced = true,
                    Err(e) => {
                        outcome.error = Some(e.to_string());
                        missing.push(m);
                    }
                },
                Err(_) => missing.push(m),
            }
            outcome.latency = started.elapsed();
            outs.push(outcome);
        }
        let outcomes = Outcomes(outs);
        if fenced {
            // A newer registration of the instance exists: its replica owns it.
            return Ok(WriteReport {
                outcomes,
                existed: true,
            });
        }
        if copies.iter().all(|c| *c == Copy::Missing) {
            return Err(Failure::Unavailable(outcomes));
        }
        if let Some(generation) = self.deregistration_of(&record) {
            // Deregistered while this take-over ran: the copies it wrote after the delete are
            // removed again (fenced: a newer registration stays), and the client is told to
            // register again.
            tracing::info!(instance = %key, "deregistered during a take-over by heartbeat; not taken over");
            for (m, c) in copies.iter().enumerate() {
                if matches!(c, Copy::Held(_)) {
                    self.repair.submit(
                        self.members[m].registry.kind(),
                        RepairOp::Deregister(key.clone(), generation),
                    );
                }
            }
            return Err(Failure::UnknownInstance(outcomes));
        }
        self.owned.insert(record.clone(), identity, copies);
        self.metrics.took_over(1);
        for m in missing {
            self.restore(m, &record);
        }
        Ok(WriteReport {
            outcomes,
            existed: true,
        })
    }

    async fn write_again(&self, m: &Member, record: &Instance) -> Result<Written, RegistryError> {
        self.call(m, "register", |r| async move { r.register(record).await })
            .await
            .0
    }

    /// Remembers that `key` was deregistered at `generation` (see [`Self::deregistered`]).
    fn note_deregistered(&self, key: &InstanceKey, generation: u64) {
        let now = Instant::now();
        let mut d = self.deregistered.lock().expect("not poisoned");
        if d.len() >= 4096 {
            d.retain(|_, (_, at)| now.duration_since(*at) < DEREGISTERED_MEMORY);
        }
        let g = d.get(key).map_or(generation, |(g, _)| generation.max(*g));
        d.insert(key.clone(), (g, now));
    }

    /// The generation `record` was deregistered at lately, if it was.
    fn deregistration_of(&self, record: &Instance) -> Option<u64> {
        let d = self.deregistered.lock().expect("not poisoned");
        let (g, at) = d.get(&record.key)?;
        (*g > record.generation && at.elapsed() < DEREGISTERED_MEMORY).then_some(*g)
    }

    pub async fn deregister(&self, key: &InstanceKey) -> Result<WriteReport, Failure> {
        // Fences this delete: a registration written after it (a newer generation) survives it,
        // in particular when this delete is re-driven late by the repairer.
        let generation = next_generation();
        self.note_deregistered(key, generation);
        // Not owned any more: neither expired nor restored by this replica from now on.
        self.owned.remove(key);
        let replies = self
            .fan_out("deregister", |r| async move {
                r.deregister(key, generation).await
            })
            .await;
        let outcomes = outcomes(&replies);
        if replies.iter().all(|r| r.result.is_err()) {
            return Err(Failure::Unavailable(outcomes));
        }
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

    /// Removes the instances whose heartbeats stopped before `now` from every registry, each
    /// only where this replica still holds the copy it wrote, in batches; what fails is handed
    /// to the repairer. How many expired.
    pub async fn expire_due(&self, now: Instant) -> usize {
        self.expire(self.owned.due(now)).await
    }

    /// Removes `due`, instances just taken out of the owned set because their heartbeats
    /// stopped, from every registry (see [`Self::expire_due`]). How many there were.
    pub async fn expire(&self, due: Vec<State>) -> usize {
        if due.is_empty() {
            return 0;
        }
        self.metrics.expired(due.len());
        let due = &due;
        join_all(self.members.iter().enumerate().map(|(m, member)| async move {
            let kind = member.registry.kind();
            let copies: Vec<(Instance, Revision)> = due
                .iter()
                .filter_map(|s| match s.copies[m] {
                    Copy::Held(rev) => Some((s.instance.clone(), rev)),
                    // Not this replica's copy (yet): nothing of its own to remove.
                    Copy::Missing | Copy::Adopting => {
                        self.repair.settle(kind, &s.instance.key);
                        None
                    }
                })
                .collect();
            let _lane = member.expiring.lock().await;
            let mut copies = copies.into_iter().peekable();
            while copies.peek().is_some() {
                // Owned here again since it came due (a late heartbeat took it back, its client
                // registered it again): the copy is this replica's live one now, not to remove.
                // Asked when the chunk's turn comes, however long the lane's backlog.
                let chunk: Vec<(Instance, Revision)> = copies
                    .by_ref()
                    .take(member.registry.batch())
                    .filter(|(i, _)| !self.owned.contains(&i.key))
                    .collect();
                if chunk.is_empty() {
                    continue;
                }
                let chunk = &chunk;
                let (r, _) = self
                    .call(member, "expire", |reg| async move { reg.expire(chunk).await })
                    .await;
                match r {
                    Ok(_) => {
                        for (i, _) in chunk {
                            self.repair.settle(kind, &i.key);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(registry = %kind, count = chunk.len(), error = %e, "expiring instances failed; the repairer retries");
                        for (i, rev) in chunk {
                            self.repair
                                .submit(kind, RepairOp::Expire(i.clone(), *rev));
                        }
                    }
                }
            }
        }))
        .await;
        tracing::info!(
            count = due.len(),
            "expired instances whose heartbeats stopped"
        );
        due.len()
    }

    /// Acts on what a registry reports of the copies (see [`Observed`]).
    pub async fn observed(self: &Arc<Self>, kind: RegistryKind, what: Observed) {
        let Some(m) = self.member_of(kind) else {
            return;
        };
        match what {
            Observed::Put(h) => self.observed_copy(m, &h.brief(), None),
            Observed::Gone { key, deregistered } => {
                let Some(state) = self.owned.get(&key) else {
                    return;
                };
                if deregistered {
                    // Deregistered through another replica (or expired by the holder).
                    tracing::debug!(registry = %kind, instance = %key, "deregistered elsewhere: no longer owned here");
                    self.owned.remove(&key);
                } else if matches!(state.copies[m], Copy::Held(_)) {
                    tracing::info!(registry = %kind, instance = %key, "a copy vanished behind twinreg's back; writing it again");
                    self.restore(m, &state.instance);
                }
            }
            Observed::Snapshot {
                service,
                held,
                read_at,
            } => {
                // Whole services of 100,000 copies come this way: nothing owned is cloned but
                // what must be written again.
                for h in &held {
                    self.observed_copy(m, h, Some(read_at));
                }
                let present: std::collections::HashSet<&InstanceKey> =
                    held.iter().map(|h| &h.key).collect();
                for instance in self
                    .owned
                    .held_but_absent(service.as_ref(), m, &present, read_at)
                {
                    tracing::info!(registry = %kind, instance = %instance.key, "a copy is missing; writing it again");
                    self.restore(m, &instance);
                }
            }
            Observed::LostAll => {
                for state in self.owned.all() {
                    self.restore(m, &state.instance);
                }
            }
            Observed::Orphans(orphans) => self.adopt(m, orphans),
        }
    }

    /// One copy as registry `m` holds it, against what this replica owns; `read_at` when it
    /// comes from an answer read then rather than from an event in the registry's order.
    fn observed_copy(&self, m: usize, h: &Brief, read_at: Option<Instant>) {
        let key = &h.key;
        let Some(standing) = self.owned.standing(key) else {
            return;
        };
        let mine = standing.generation;
        // A snapshot older than the copy's last change says nothing about it.
        let current = self.owned.answer_is_current(&standing, m, read_at);
        match &h.holder {
            Holder::Me if h.generation == mine => {
                let seen = Copy::Held(h.revision);
                if h.revision != 0 && current && standing.copies[m] != seen {
                    self.owned.set_copy(key, mine, m, seen);
                }
            }
            Holder::Me => {}
            // Ownership moves by the primary's guarded write: only its copy says who owns an
            // instance now. A backup's copy still naming another replica is one not rewritten
            // yet (this replica is adopting a dead one's instances, or took one over), and is
            // left to that rewrite.
            Holder::Replica(_) if m != 0 => {}
            Holder::Replica(other) if h.generation >= mine && current => {
                tracing::debug!(instance = %key, replica = %other, "taken over by another replica: no longer owned here");
                self.owned.remove(key);
            }
            // Changed behind twinreg's back (another tool, an older record): written again.
            _ => {
                if h.generation <= mine
                    && current
                    && matches!(standing.copies[m], Copy::Held(_))
                    && let Some(state) = self.owned.get(key)
                {
                    tracing::info!(instance = %key, "a copy changed behind twinreg's back; writing it again");
                    self.restore(m, &state.instance);
                }
            }
        }
    }

    /// Takes over the copies a replica that went away held in registry `m`, then writes them
    /// into the other registries under this replica too. They are owned here at once, before
    /// any write: their clients' heartbeats, arriving now that the load balancer moved them, are
    /// answered from memory (both registries still hold the copies; the dead replica's leases
    /// are kept alive meanwhile) instead of each becoming a take-over of its own. The writes run
    /// in the background, in batches. The take-over is guarded: where another replica was
    /// faster, the primary's watch reports its copy and this replica lets the instance go.
    fn adopt(self: &Arc<Self>, m: usize, orphans: Vec<Held>) {
        let orphans: Vec<Held> = orphans
            .into_iter()
            .filter(|h| !self.owned.contains(&h.instance.key))
            .collect();
        if orphans.is_empty() {
            return;
        }
        for h in &orphans {
            let mut copies = [Copy::Adopting; REGISTRIES];
            copies[m] = Copy::Held(h.revision);
            self.owned.insert(h.instance.clone(), "", copies);
        }
        self.adopted.notify_waiters();
        let c = self.clone();
        tokio::spawn(async move { c.take_over_adopted(m, orphans).await });
    }

    async fn take_over_adopted(&self, m: usize, orphans: Vec<Held>) {
        let member = &self.members[m];
        let kind = member.registry.kind();
        let mut adopted = Vec::new();
        for chunk in orphans.chunks(member.registry.batch()) {
            let (r, _) = self
                .call(member, "take_over", |reg| async move {
                    reg.take_over(chunk).await
                })
                .await;
            match r {
                Ok(revs) => {
                    // A copy changed since it was read (taken over by another replica,
                    // deregistered, rewritten) has no revision: the watch reports which.
                    for (h, rev) in chunk.iter().zip(revs) {
                        let i = &h.instance;
                        if let Some(rev) = rev {
                            self.owned
                                .set_copy(&i.key, i.generation, m, Copy::Held(rev));
                            adopted.push(i.clone());
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(registry = %kind, count = chunk.len(), error = %e, "taking over a gone replica's instances failed; the repairer writes them again");
                    for h in chunk {
                        self.restore(m, &h.instance);
                        adopted.push(h.instance.clone());
                    }
                }
            }
        }
        if adopted.is_empty() {
            return;
        }
        tracing::info!(
            count = adopted.len(),
            "took over the instances of a replica that went away"
        );
        self.metrics.took_over(adopted.len());
        let adopted = &adopted;
        join_all(
            self.members
                .iter()
                .enumerate()
                .filter(|(o, _)| *o != m)
                .map(|(o, other)| async move {
                    for chunk in adopted.chunks(ADOPT_CONCURRENCY) {
                        // Those expired or taken elsewhere meanwhile are not written again.
                        let chunk: Vec<&Instance> = chunk
                            .iter()
                            .filter(|i| self.owned.is_alive(&i.key, i.generation))
                            .collect();
                        let writes =
                            join_all(chunk.iter().map(|i| self.write_again(other, i))).await;
                        for (i, r) in chunk.iter().zip(writes) {
                            match r {
                                Ok(w) => {
                                    self.owned.set_copy(&i.key, i.generation, o, Copy::from(w))
                                }
                                Err(_) => self.restore(o, i),
                            }
                        }
                    }
                }),
        )
        .await;
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
    use std::sync::atomic::Ordering::SeqCst;

    const DEADLINE: Duration = Duration::from_millis(1500);
    const ME: &str = "payments";

    fn member(r: Arc<Memory>) -> Member {
        Member {
            registry: r,
            deadline: DEADLINE,
            health: Health::default(),
            breaker: Breaker::new(3, Duration::from_secs(2)),
            expiring: Default::default(),
        }
    }

    /// Two memory registries behind a coordinator.
    fn coordinator(rate: u32) -> (Arc<Coordinator>, Arc<Memory>, Arc<Memory>) {
        let etcd = Arc::new(Memory::new(RegistryKind::Etcd));
        let consul = Arc::new(Memory::new(RegistryKind::Consul));
        let c = Coordinator::new(
            vec![member(etcd.clone()), member(consul.clone())],
            rate,
            Metrics::new(),
        );
        (c, etcd, consul)
    }

    /// Another replica over the same registries.
    fn replica_of(etcd: &Arc<Memory>, consul: &Arc<Memory>) -> Arc<Coordinator> {
        Coordinator::new(
            vec![member(etcd.clone()), member(consul.clone())],
            100,
            Metrics::new(),
        )
    }

    /// Starts the followers and the expiry loop; they stop when the token is dropped/cancelled.
    fn live(c: &Arc<Coordinator>) -> tokio_util::sync::DropGuard {
        let stop = tokio_util::sync::CancellationToken::new();
        crate::liveness::start(c, &tokio_util::task::TaskTracker::new(), stop.clone());
        stop.drop_guard()
    }

    fn instance(id: &str) -> Instance {
        Instance::for_test("payments", id)
    }

    #[tokio::test(start_paused = true)]
    async fn a_snapshot_read_before_a_copy_was_written_does_not_call_it_missing() {
        let (c, _etcd, _consul) = coordinator(100);
        let i = instance("fresh");
        let without_it = |read_at| Observed::Snapshot {
            service: Some(i.key.service.clone()),
            held: Vec::new(),
            read_at,
        };
        // Consul's answer was read just before the register's write landed, and handled after.
        let before = Instant::now();
        tokio::time::sleep(Duration::from_millis(5)).await;
        c.register(i.clone(), ME).await.unwrap();
        c.observed(RegistryKind::Consul, without_it(before)).await;
        let r = c.heartbeat(&i.key, ME).await.unwrap();
        assert!(!r.outcomes.degraded(), "{:?}", r.outcomes);
        // An answer read after the write that lacks the copy: it really went away.
        tokio::time::sleep(Duration::from_millis(5)).await;
        c.observed(RegistryKind::Consul, without_it(Instant::now()))
            .await;
        let r = c.heartbeat(&i.key, ME).await.unwrap();
        let consul = r
            .outcomes
            .0
            .iter()
            .find(|o| o.registry == RegistryKind::Consul);
        assert!(
            consul.is_some_and(|o| o
                .error
                .as_deref()
                .is_some_and(|e| e.contains("does not hold"))),
            "{:?}",
            r.outcomes
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_registry_holds_no_answer_past_its_deadline_and_the_breaker_then_skips_it() {
        let (c, etcd, consul) = coordinator(100);
        etcd.set_mode(Mode::Hang);
        for i in 0..3 {
            let start = tokio::time::Instant::now();
            let r = c.register(instance(&format!("p{i}")), ME).await.unwrap();
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
        let r = c.register(instance("after"), ME).await.unwrap();
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
            c.register(instance(&format!("p{i}")), ME).await.unwrap();
        }
        assert_eq!(
            c.members()[0].breaker.state(),
            crate::breaker::BreakerState::Open
        );
        // etcd is back but its breaker has not probed it yet; Consul dies in that window.
        etcd.set_mode(Mode::Up);
        consul.set_mode(Mode::Down);
        let i = instance("last");
        let r = c.register(i.clone(), ME).await.unwrap();
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
        assert!(c.register(i.clone(), ME).await.unwrap().outcomes.degraded());
        assert_eq!(c.repairer().pending(), 1);
        // Meanwhile the heartbeat says etcd's copy is being written again.
        let r = c.heartbeat(&i.key, ME).await.unwrap();
        let err = r.outcomes.0[0].error.as_deref().unwrap();
        assert!(err.contains("writing it again"), "{err}");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(etcd.holds(&i.key).is_none());
        etcd.set_mode(Mode::Up);
        for _ in 0..120 {
            if etcd.holds(&i.key).is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            c.heartbeat(&i.key, ME).await.unwrap();
        }
        assert_eq!(etcd.holds(&i.key).unwrap(), i);
        assert_eq!(c.repairer().pending(), 0);
        // Once the probe (the server runs one every 2 s) has seen etcd answer again.
        c.probe_all().await;
        let r = c.heartbeat(&i.key, ME).await.unwrap();
        assert!(
            !r.outcomes.degraded(),
            "the landed repair is seen: {:?}",
            r.outcomes
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_repair_is_dropped_once_the_instance_is_deregistered() {
        let (c, etcd, consul) = coordinator(100);
        etcd.set_mode(Mode::Down);
        let i = instance("p");
        c.register(i.clone(), ME).await.unwrap();
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
    async fn heartbeats_to_the_owner_touch_no_registry() {
        let (c, etcd, consul) = coordinator(100);
        let i = instance("p");
        c.register(i.clone(), ME).await.unwrap();
        let before = (etcd.calls.load(SeqCst), consul.calls.load(SeqCst));
        for _ in 0..1000 {
            let r = c.heartbeat(&i.key, ME).await.unwrap();
            assert!(!r.outcomes.degraded());
            assert!(r.outcomes.0.iter().all(|o| o.coalesced));
        }
        assert_eq!(
            (etcd.calls.load(SeqCst), consul.calls.load(SeqCst)),
            before,
            "a heartbeat to the owner made registry calls"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_lost_behind_the_back_is_restored_at_once() {
        let (c, etcd, consul) = coordinator(100);
        let _live = live(&c);
        let i = instance("p");
        c.register(i.clone(), ME).await.unwrap();
        etcd.remove_behind_the_back(&i.key);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            etcd.holds(&i.key).unwrap(),
            i,
            "not restored within a second"
        );
        assert_eq!(consul.holds(&i.key).unwrap(), i);
    }

    #[tokio::test(start_paused = true)]
    async fn an_instance_whose_heartbeats_stop_expires_within_its_ttl() {
        let (c, etcd, consul) = coordinator(100);
        let _live = live(&c);
        let (quiet, beating) = (instance("quiet"), instance("beating"));
        c.register(quiet.clone(), ME).await.unwrap();
        c.register(beating.clone(), ME).await.unwrap();
        let start = Instant::now();
        let mut gone_at = None;
        while start.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if start.elapsed().as_millis() % 10_000 < 250 {
                c.heartbeat(&beating.key, ME).await.unwrap();
            }
            if gone_at.is_none() && etcd.holds(&quiet.key).is_none() {
                gone_at = Some(start.elapsed());
            }
        }
        let at = gone_at.expect("the quiet instance expired");
        assert!(
            at >= Duration::from_secs(30) && at <= Duration::from_secs(31),
            "expired after {at:?} (TTL 30 s)"
        );
        assert!(consul.holds(&quiet.key).is_none());
        assert!(etcd.holds(&beating.key).is_some() && consul.holds(&beating.key).is_some());
        assert!(matches!(
            c.heartbeat(&quiet.key, ME).await,
            Err(Failure::UnknownInstance(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_registry_does_not_hold_back_the_other_registrys_next_expiries() {
        let (c, etcd, consul) = coordinator(100);
        let _live = live(&c);
        let first = instance("first");
        c.register(first.clone(), ME).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let next = instance("next");
        c.register(next.clone(), ME).await.unwrap();
        let registered = Instant::now();
        // Consul takes its deadline to fail each expiry of `first`; etcd's removal of `next`,
        // due one tick later, does not wait for it.
        consul.set_mode(Mode::HangWrites);
        let mut gone_after = None;
        while registered.elapsed() < Duration::from_secs(40) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if etcd.holds(&next.key).is_none() {
                gone_after = Some(registered.elapsed());
                break;
            }
        }
        let after = gone_after.expect("etcd's copy of the second instance expired");
        assert!(
            after <= Duration::from_secs(31),
            "etcd removed it {after:?} after its register (TTL 30 s): it waited on Consul"
        );
        assert!(etcd.holds(&first.key).is_none());
        assert!(
            consul.holds(&first.key).is_some() && consul.holds(&next.key).is_some(),
            "hung: Consul's copies are the repairer's"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_instance_taken_back_before_its_removal_turn_is_left_alone() {
        let (c, etcd, consul) = coordinator(100);
        let i = instance("late");
        c.register(i.clone(), ME).await.unwrap();
        tokio::time::sleep(Duration::from_secs(31)).await;
        // Due, out of the owned set, its removal queued behind a registry's backlog ...
        let due = c.owned().due(Instant::now());
        assert_eq!(due.len(), 1);
        // ... when its late heartbeat takes it back.
        let r = c.heartbeat(&i.key, ME).await.unwrap();
        assert!(!r.outcomes.degraded(), "{:?}", r.outcomes);
        assert!(c.owned().contains(&i.key));
        let before = (etcd.calls.load(SeqCst), consul.calls.load(SeqCst));
        c.expire(due).await;
        assert_eq!(
            (etcd.calls.load(SeqCst), consul.calls.load(SeqCst)),
            before,
            "no removal is sent for an instance owned here again (Consul's guard cannot tell the \
             taken-back copy from the expired one: same replica, same generation)"
        );
        assert!(etcd.holds(&i.key).is_some() && consul.holds(&i.key).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn ten_thousand_expiries_go_in_batches() {
        let (c, etcd, consul) = coordinator(100);
        for k in 0..10_000 {
            c.register(instance(&format!("p{k}")), ME).await.unwrap();
        }
        let before = (etcd.calls.load(SeqCst), consul.calls.load(SeqCst));
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(c.expire_due(Instant::now()).await, 10_000);
        assert!(etcd.is_empty() && consul.is_empty());
        let calls = (
            etcd.calls.load(SeqCst) - before.0,
            consul.calls.load(SeqCst) - before.1,
        );
        assert_eq!(
            calls,
            (20, 20),
            "10,000 expiries in batches of {}",
            etcd.batch()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_at_another_replica_takes_over_and_the_old_owner_cannot_expire_it() {
        let (a, etcd, consul) = coordinator(100);
        let b = replica_of(&etcd, &consul);
        let i = instance("p");
        a.register(i.clone(), ME).await.unwrap();
        let r = b.heartbeat(&i.key, ME).await.unwrap();
        assert!(!r.outcomes.degraded(), "{:?}", r.outcomes);
        assert!(b.owned().contains(&i.key));
        // The client now beats at B only; A's deadline passes.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_secs(10)).await;
            b.heartbeat(&i.key, ME).await.unwrap();
        }
        assert_eq!(
            a.expire_due(Instant::now()).await,
            1,
            "A gave up its own ownership"
        );
        assert_eq!(etcd.holds(&i.key).unwrap(), i, "A removed B's copy");
        assert_eq!(consul.holds(&i.key).unwrap(), i);
        assert_eq!(b.expire_due(Instant::now()).await, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_owner_lets_go_of_an_instance_another_replica_took_over() {
        let (a, etcd, _consul) = coordinator(100);
        let _live = live(&a);
        let i = instance("p");
        a.register(i.clone(), ME).await.unwrap();
        etcd.taken_over_by(&i, "other");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!a.owned().contains(&i.key));
    }

    /// What etcd's follow reports of the instances of a replica that went away.
    fn orphans_of(etcd: &Arc<Memory>, instances: &[Instance]) -> Vec<Held> {
        instances
            .iter()
            .map(|i| Held {
                instance: i.clone(),
                revision: etcd.revision_of(&i.key).expect("held"),
                holder: Holder::Other,
                live: true,
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_replicas_instances_are_answered_from_memory_once_reported() {
        let (a, etcd, consul) = coordinator(100);
        let fleet: Vec<Instance> = (0..100).map(|n| instance(&format!("i{n}"))).collect();
        for i in &fleet {
            a.register(i.clone(), ME).await.unwrap();
        }
        drop(a);
        let b = replica_of(&etcd, &consul);
        // The registries are slow to take the writes over: the answers must not wait on them.
        etcd.set_mode(Mode::Hang);
        consul.set_mode(Mode::Hang);
        b.observed(
            RegistryKind::Etcd,
            Observed::Orphans(orphans_of(&etcd, &fleet)),
        )
        .await;
        for i in &fleet {
            let r = tokio::time::timeout(Duration::from_millis(10), b.heartbeat(&i.key, ME))
                .await
                .expect("answered without waiting on a registry")
                .unwrap();
            assert!(!r.outcomes.degraded(), "{:?}", r.outcomes);
        }
        // Consul's copies still name the dead replica until rewritten: that does not make it
        // their owner again.
        b.observed(
            RegistryKind::Consul,
            Observed::Snapshot {
                service: Some(fleet[0].key.service.clone()),
                held: fleet
                    .iter()
                    .map(|i| Brief {
                        key: i.key.clone(),
                        generation: i.generation,
                        revision: 0,
                        holder: Holder::Replica("dead".into()),
                    })
                    .collect(),
                read_at: Instant::now(),
            },
        )
        .await;
        assert_eq!(b.owned().len(), fleet.len());
        // Once the registries answer, the copies are taken over and rewritten.
        etcd.set_mode(Mode::Up);
        consul.set_mode(Mode::Up);
        tokio::time::sleep(Duration::from_secs(5)).await;
        for i in &fleet {
            let s = b.owned().get(&i.key).expect("owned");
            assert!(
                s.copies
                    .iter()
                    .all(|c| matches!(c, Copy::Held(r) if *r > 0)),
                "{:?}",
                s.copies
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_waiting_to_take_over_are_answered_once_the_instances_are_adopted() {
        let (a, etcd, consul) = coordinator(100);
        let fleet: Vec<Instance> = (0..200).map(|n| instance(&format!("i{n}"))).collect();
        for i in &fleet {
            a.register(i.clone(), ME).await.unwrap();
        }
        drop(a);
        let orphans = orphans_of(&etcd, &fleet);
        let b = replica_of(&etcd, &consul);
        etcd.set_mode(Mode::Hang);
        consul.set_mode(Mode::Hang);
        // Heartbeats reach B before the follow reports the dead replica's instances.
        let beats: Vec<_> = fleet
            .iter()
            .map(|i| {
                let (b, key) = (b.clone(), i.key.clone());
                tokio::spawn(async move { b.heartbeat(&key, ME).await.is_ok() })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        b.observed(RegistryKind::Etcd, Observed::Orphans(orphans))
            .await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut answered = 0;
        for beat in beats {
            if beat.is_finished() && beat.await.unwrap() {
                answered += 1;
            }
        }
        // Only those already reading the registries wait for them.
        assert_eq!(answered, fleet.len() - TAKEOVER_CONCURRENCY);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deregistration_during_a_take_over_by_heartbeat_is_not_undone() {
        let (a, etcd, consul) = coordinator(100);
        let b = replica_of(&etcd, &consul);
        let i = instance("p");
        a.register(i.clone(), ME).await.unwrap();
        // B takes the instance over in etcd; its Consul write hangs, and meanwhile the
        // instance is deregistered through B too: etcd's copy goes, Consul's delete hangs too.
        consul.set_mode(Mode::HangWrites);
        let beat = {
            let (b, key) = (b.clone(), i.key.clone());
            tokio::spawn(async move { b.heartbeat(&key, ME).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(etcd.holds(&i.key).is_some(), "B took the etcd copy over");
        let dereg = {
            let (b, key) = (b.clone(), i.key.clone());
            tokio::spawn(async move { b.deregister(&key).await.is_ok() })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        // What B's etcd watch reports at once.
        assert!(etcd.holds(&i.key).is_none());
        let answer = beat.await.unwrap();
        assert!(dereg.await.unwrap());
        assert!(
            matches!(answer, Err(Failure::UnknownInstance(_))),
            "{answer:?}"
        );
        assert!(
            !b.owned().contains(&i.key),
            "B owns a deregistered instance"
        );
        consul.set_mode(Mode::Up);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(consul.holds(&i.key).is_none(), "left in Consul");
        assert!(matches!(
            b.heartbeat(&i.key, ME).await,
            Err(Failure::UnknownInstance(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_does_not_take_over_what_a_deregistration_is_still_removing() {
        let (a, etcd, consul) = coordinator(100);
        let b = replica_of(&etcd, &consul);
        let i = instance("p");
        a.register(i.clone(), ME).await.unwrap();
        // Deregistered through A: etcd's copy goes at once, Consul's delete hangs.
        consul.set_mode(Mode::HangWrites);
        let dereg = {
            let (a, key) = (a.clone(), i.key.clone());
            tokio::spawn(async move { a.deregister(&key).await.is_ok() })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(etcd.holds(&i.key).is_none());
        // A heartbeat reaching A now finds Consul's copy still there: it is a leftover.
        let answer = tokio::time::timeout(Duration::from_millis(100), a.heartbeat(&i.key, ME))
            .await
            .expect("answered without writing");
        assert!(
            matches!(answer, Err(Failure::UnknownInstance(_))),
            "{answer:?}"
        );
        assert!(!a.owned().contains(&i.key));
        consul.set_mode(Mode::Up);
        assert!(dereg.await.unwrap());
        // A registration after the deregistration is taken over as usual.
        let again = instance("p");
        a.register(again.clone(), ME).await.unwrap();
        assert!(b.heartbeat(&again.key, ME).await.is_ok());
        assert!(b.owned().contains(&again.key));
    }

    #[tokio::test]
    async fn unknown_here_and_unreachable_there_is_503_not_404() {
        // This replica never saw the instance: etcd says "unknown", Consul does not answer.
        // Consul may still hold it, so the client must not be told to re-register.
        let (c, _etcd, consul) = coordinator(100);
        consul.set_mode(Mode::Down);
        let key = instance("elsewhere").key;
        assert!(matches!(
            c.heartbeat(&key, ME).await,
            Err(Failure::Unavailable(_))
        ));
        consul.set_mode(Mode::Up);
        assert!(matches!(
            c.heartbeat(&key, ME).await,
            Err(Failure::UnknownInstance(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_taking_over_restores_a_missing_copy() {
        let (a, etcd, consul) = coordinator(100);
        let i = instance("p");
        a.register(i.clone(), ME).await.unwrap();
        consul.remove_behind_the_back(&i.key);
        let b = replica_of(&etcd, &consul);
        let r = b.heartbeat(&i.key, ME).await.unwrap();
        assert!(r.outcomes.0[1].restored, "{:?}", r.outcomes);
        assert_eq!(consul.holds(&i.key).unwrap(), i);
    }

    #[tokio::test(start_paused = true)]
    async fn a_backlog_of_repairs_is_queue_entries_not_tasks() {
        let (c, etcd, _consul) = coordinator(1000);
        etcd.set_mode(Mode::Down);
        c.register(instance("first"), ME).await.unwrap();
        let tasks = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        let n = 1000;
        for k in 0..n {
            c.register(instance(&format!("p{k}")), ME).await.unwrap();
        }
        assert_eq!(c.repairer().pending(), n + 1);
        let now = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        assert!(
            now <= tasks,
            "{n} more repairs took {} more tasks",
            now - tasks
        );
        etcd.set_mode(Mode::Up);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(c.repairer().pending(), 0, "the backlog did not drain");
        for k in 0..n {
            let key = instance(&format!("p{k}")).key;
            assert!(etcd.holds(&key).is_some(), "p{k} was not repaired");
        }
    }

    #[tokio::test]
    async fn recovery_after_an_outage_is_paced() {
        let rate = 20;
        let (c, etcd, _consul) = coordinator(rate);
        etcd.set_mode(Mode::Down);
        let n = 60;
        for k in 0..n {
            c.register(instance(&format!("p{k}")), ME).await.unwrap();
        }
        etcd.set_mode(Mode::Up);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while etcd.writes.load(SeqCst) < n {
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
}
