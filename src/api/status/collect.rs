//! What the status page shows, gathered: each registry's state, breaker, a probe and its repair
//! backlog; each etcd member with its own status; the service table (live instances per registry,
//! read directly and bounded in time); the certificates' expiry; and the banner's verdict. These
//! types are what `/status.json` returns.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use futures::future::join_all;
use serde::Serialize;
use serde::ser::SerializeMap;
use tokio::time::Instant;

use super::{
    CERT_WARN_DAYS, MAX_IDS, PROBE_TIMEOUT, READ_CONCURRENCY, READ_TIMEOUT, TABLE_BUDGET, TABLE_TTL,
};
use crate::breaker::BreakerState;
use crate::liveness::owned::Owned;
use crate::merge::{Sourced, merge};
use crate::model::{Instance, ServiceName};
use crate::registry::RegistryError;
use crate::registry::{ClusterMember, Registry, RegistryKind, RegistryState};

/// The state the banner shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Overall {
    /// Every registry answers and no breaker is open.
    Ready,
    /// At least one registry answers, another does not (or its breaker is not closed).
    Degraded,
    /// No registry answers: writes fail with 503.
    Unavailable,
    /// Shutdown started: `/readyz` answers 503.
    Draining,
}

impl Overall {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Degraded => "degraded",
            Self::Unavailable => "unavailable",
            Self::Draining => "draining",
        }
    }
}

/// Everything the page shows (and `/status.json` returns).
#[derive(Debug, Serialize)]
pub struct Status {
    pub state: Overall,
    pub summary: String,
    /// This replica's id (host name or listen address and a random suffix, new at each start):
    /// the one other replicas' logs and the sweep leadership name.
    pub replica: String,
    /// Who runs the anti-entropy sweep.
    pub sweep: SweepStatus,
    /// RFC 3339, UTC.
    pub generated_at: String,
    pub registries: Vec<RegistryStatus>,
    /// Each member of the etcd cluster, by name: empty when they could not be read (then
    /// `etcd_members_error` says why).
    pub etcd_members: Vec<ClusterMember>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_members_error: Option<String>,
    /// Writes being re-driven into any registry.
    pub repairs_pending: usize,
    #[serde(serialize_with = "through_arc")]
    pub services: Arc<Table>,
    pub certificates: Vec<CertStatus>,
}

fn through_arc<S: serde::Serializer>(t: &Arc<Table>, s: S) -> Result<S::Ok, S::Error> {
    t.as_ref().serialize(s)
}

#[derive(Debug, Serialize)]
pub struct RegistryStatus {
    pub name: RegistryKind,
    /// `primary` (its record wins) or `backup`.
    pub role: &'static str,
    /// The state the probe loop and client calls last saw (as `/readyz` reports it).
    pub state: RegistryState,
    pub breaker: BreakerState,
    /// A probe made while rendering.
    pub probe: Probe,
    /// Writes being re-driven into this registry.
    pub repairs_pending: usize,
    /// How long the oldest of them has waited, in seconds (0 when none).
    pub repair_oldest_seconds: f64,
}

/// The anti-entropy sweep's leadership (one replica sweeps at a time, elected in etcd).
#[derive(Debug, Serialize)]
pub struct SweepStatus {
    /// Whether the sweep is on in this replica's configuration (`anti_entropy.enabled`).
    pub enabled: bool,
    /// Whether this replica holds the leadership.
    pub here: bool,
    /// The holder (`twinreg-<replica id>`), as read from etcd while rendering; `null` when
    /// nobody holds it or it could not be read (then `error` says why).
    pub leader: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Probe {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CertStatus {
    pub label: &'static str,
    /// `notAfter`, Unix seconds, and as RFC 3339 (UTC).
    pub not_after: i64,
    pub expires: String,
    /// Whole days left; negative once expired.
    pub days_left: i64,
    /// Fewer than [`CERT_WARN_DAYS`] days left.
    pub warning: bool,
}

/// One value per registry, primary first; serialized as `{"etcd": ..., "consul": ...}`.
#[derive(Debug, Clone)]
pub struct PerRegistry<T>(pub Vec<(RegistryKind, T)>);

impl<T> Default for PerRegistry<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T> PerRegistry<T> {
    pub fn get(&self, kind: RegistryKind) -> Option<&T> {
        self.0.iter().find(|(k, _)| *k == kind).map(|(_, v)| v)
    }
}

impl<T: Serialize> Serialize for PerRegistry<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k.as_str(), v)?;
        }
        m.end()
    }
}

/// Instance counts per service in each registry.
#[derive(Debug, Serialize)]
pub struct Table {
    /// RFC 3339, UTC.
    pub computed_at: String,
    #[serde(skip)]
    pub(super) computed: Instant,
    pub cached_for_seconds: u64,
    /// Service names found in any registry; rows are kept for the first `limit` of them.
    pub services_seen: usize,
    pub limit: usize,
    pub truncated: bool,
    /// Registries whose service names could not be read, and why.
    pub unreadable: PerRegistry<String>,
    /// Rows whose registries disagree.
    pub disagreements: usize,
    /// Services with a live instance somewhere (or that could not be read everywhere), by name.
    pub rows: Vec<Row>,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub service: String,
    /// Live instances in each registry; `null` where it could not be read.
    pub counts: PerRegistry<Option<usize>>,
    /// Distinct ids across the registries read.
    pub merged: usize,
    /// Every registry was read for this service.
    pub complete: bool,
    /// Some id is held by one registry and not another (only said when `complete`).
    pub disagree: bool,
    /// The ids only this registry holds, for registries holding any.
    pub only_in: PerRegistry<OnlyIn>,
    /// Why a registry could not be read for this service.
    pub errors: PerRegistry<String>,
}

#[cfg(test)]
impl Table {
    /// A table as [`compute`] would make it, for tests of the page.
    pub fn for_test(computed_at: &str, rows: Vec<Row>, unreadable: PerRegistry<String>) -> Table {
        Table {
            computed_at: computed_at.into(),
            computed: Instant::now(),
            cached_for_seconds: 5,
            services_seen: rows.len(),
            limit: 500,
            truncated: false,
            unreadable,
            disagreements: rows.iter().filter(|r| r.disagree).count(),
            rows,
        }
    }
}

/// Ids one registry holds and another does not.
#[derive(Debug, Default, Serialize)]
pub struct OnlyIn {
    pub count: usize,
    /// The first [`MAX_IDS`] of them, by id.
    pub ids: Vec<String>,
}

pub(super) fn overall(draining: bool, registries: &[RegistryStatus]) -> (Overall, String) {
    if draining {
        return (
            Overall::Draining,
            "Shutdown started: /readyz answers 503 so the load balancer drains this replica."
                .into(),
        );
    }
    let up: Vec<&str> = registries
        .iter()
        .filter(|r| r.state == RegistryState::Up)
        .map(|r| r.name.as_str())
        .collect();
    let (healthy, troubled): (Vec<&RegistryStatus>, Vec<&RegistryStatus>) = registries
        .iter()
        .partition(|r| r.state == RegistryState::Up && r.breaker == BreakerState::Closed);
    let what: Vec<String> = troubled
        .iter()
        .map(|r| match r.state {
            RegistryState::Up => format!("{}: breaker {}", r.name, breaker_text(r.breaker)),
            s => format!("{} {}", r.name, state_text(s)),
        })
        .collect();
    if up.is_empty() {
        let why = if what.is_empty() {
            "no registry configured".to_owned()
        } else {
            what.join(", ")
        };
        return (
            Overall::Unavailable,
            format!("No registry answers ({why}): writes fail with 503 until one is back."),
        );
    }
    if troubled.is_empty() {
        return (Overall::Ready, "Every registry answers.".into());
    }
    let through = if healthy.is_empty() {
        up.join(" and ")
    } else {
        let names: Vec<&str> = healthy.iter().map(|r| r.name.as_str()).collect();
        names.join(" and ")
    };
    let missed = match troubled.as_slice() {
        [one] => format!("what {} misses is repaired once it is back", one.name),
        _ => "what they miss is repaired once they are back".to_owned(),
    };
    (
        Overall::Degraded,
        format!(
            "{}. Writes succeed through {through}; {missed}.",
            capitalize(&what.join(", "))
        ),
    )
}

pub(super) async fn probe(registry: Arc<dyn Registry>) -> Probe {
    let start = Instant::now();
    let result = tokio::time::timeout(PROBE_TIMEOUT, registry.probe()).await;
    let took = start.elapsed();
    match result {
        Ok(Ok(())) => Probe {
            ok: true,
            latency_ms: Some((took.as_secs_f64() * 10_000.0).round() / 10.0),
            error: None,
        },
        Ok(Err(e)) => Probe {
            ok: false,
            latency_ms: None,
            error: Some(e.to_string()),
        },
        Err(_) => Probe {
            ok: false,
            latency_ms: None,
            error: Some(format!("no answer within {} ms", PROBE_TIMEOUT.as_millis())),
        },
    }
}

/// The members of `etcd`'s cluster, each with its own status, read within [`PROBE_TIMEOUT`]
/// (a member that does not answer by then is listed as unreachable); or why they could not be
/// listed. None without etcd.
pub(super) async fn cluster(
    etcd: Option<Arc<dyn Registry>>,
) -> (Vec<ClusterMember>, Option<String>) {
    /// The adapter gives up after [`PROBE_TIMEOUT`] by itself; this bounds one that would not.
    const GRACE: Duration = Duration::from_millis(100);
    let Some(etcd) = etcd else {
        return (Vec::new(), None);
    };
    match tokio::time::timeout(PROBE_TIMEOUT + GRACE, etcd.cluster_members(PROBE_TIMEOUT)).await {
        Ok(Ok(members)) => (members, None),
        Ok(Err(e)) => (Vec::new(), Some(e.to_string())),
        Err(_) => (
            Vec::new(),
            Some(format!("not read within {} ms", PROBE_TIMEOUT.as_millis())),
        ),
    }
}

/// Why a registry's part of the table could not be read, as the page shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Unread(pub String);

/// Runs one read within [`READ_TIMEOUT`] and what is left of the table's budget.
async fn read<T>(
    deadline: Instant,
    f: impl Future<Output = Result<T, RegistryError>>,
) -> Result<T, Unread> {
    let budget = || {
        Unread(format!(
            "not read: the table's {} s budget ran out",
            TABLE_BUDGET.as_secs()
        ))
    };
    let now = Instant::now();
    if now >= deadline {
        return Err(budget());
    }
    let until = deadline.min(now + READ_TIMEOUT);
    match tokio::time::timeout_at(until, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Unread(e.to_string())),
        Err(_) if until == deadline => Err(budget()),
        Err(_) => Err(Unread(format!(
            "timed out after {} ms",
            READ_TIMEOUT.as_millis()
        ))),
    }
}

/// One service's instances, drilled down from its row of the service table (`GET
/// /services/{service}` as a page, `GET /status/services/{service}` as JSON).
#[derive(Debug, Serialize)]
pub struct ServiceDetail {
    pub service: String,
    /// RFC 3339, UTC.
    pub generated_at: String,
    /// The replica answering: it knows the last heartbeat of the instances it owns only.
    pub replica: String,
    /// Registries that could not be read for this service, and why.
    pub errors: PerRegistry<Unread>,
    /// Every instance either registry holds, by id (the primary's record where they differ).
    pub instances: Vec<InstanceDetail>,
}

#[derive(Debug, Serialize)]
pub struct InstanceDetail {
    pub id: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub ttl_seconds: u32,
    /// The registries holding it.
    pub sources: Vec<RegistryKind>,
    /// Whether this replica owns it: answers its heartbeats and expires it when they stop.
    pub owned_here: bool,
    /// Seconds since its client was last heard from (register or heartbeat); only the owning
    /// replica knows, so `null` elsewhere.
    pub last_heartbeat_seconds_ago: Option<f64>,
    /// Out of native discovery (drained), still registered.
    pub drained: bool,
}

/// Reads `service` from every registry (each within [`READ_TIMEOUT`], all within
/// [`TABLE_BUDGET`]) and tells, per instance, what this replica knows of its heartbeats.
pub async fn service_detail(
    registries: &[Arc<dyn Registry>],
    owned: &Owned,
    service: &ServiceName,
) -> (PerRegistry<Unread>, Vec<InstanceDetail>) {
    let deadline = Instant::now() + TABLE_BUDGET;
    let reads = join_all(registries.iter().map(|r| read(deadline, r.list(service)))).await;
    let mut errors = PerRegistry::default();
    let mut sets = Vec::new();
    for (r, got) in registries.iter().zip(reads) {
        match got {
            Ok(set) => sets.push((r.kind(), set)),
            Err(e) => errors.0.push((r.kind(), e)),
        }
    }
    let instances = merge(sets)
        .into_values()
        .map(|Sourced { instance, sources }| {
            let heard = owned.heard(&instance.key);
            InstanceDetail {
                id: instance.key.id.to_string(),
                address: instance.address,
                port: instance.port,
                tags: instance.tags,
                ttl_seconds: instance.ttl_seconds,
                sources,
                owned_here: heard.is_some(),
                last_heartbeat_seconds_ago: heard
                    .map(|since| (since.as_secs_f64() * 10.0).round() / 10.0),
                drained: instance.drained,
            }
        })
        .collect();
    (errors, instances)
}

/// Reads each registry's service names, then the live instances of the first `limit` names in
/// every registry whose names could be read.
pub async fn compute(registries: &[Arc<dyn Registry>], limit: usize) -> Table {
    let deadline = Instant::now() + TABLE_BUDGET;
    let names = join_all(registries.iter().map(|r| read(deadline, r.services()))).await;
    let mut unreadable = PerRegistry::default();
    let mut all = BTreeSet::new();
    let mut readable = Vec::new();
    for (r, got) in registries.iter().zip(names) {
        match got {
            Ok(n) => {
                all.extend(n);
                readable.push(true);
            }
            Err(e) => {
                unreadable.0.push((r.kind(), e.0));
                readable.push(false);
            }
        }
    }
    let services_seen = all.len();
    let readable = &readable;
    let rows: Vec<Row> = futures::stream::iter(all.into_iter().take(limit))
        .map(|service| row(registries, readable, service, deadline))
        .buffered(READ_CONCURRENCY)
        .filter_map(|r| async move { r })
        .collect()
        .await;
    Table {
        computed_at: rfc3339(unix_now()),
        computed: Instant::now(),
        cached_for_seconds: TABLE_TTL.as_secs(),
        services_seen,
        limit,
        truncated: services_seen > limit,
        unreadable,
        disagreements: rows.iter().filter(|r| r.disagree).count(),
        rows,
    }
}

/// One registry's live instances of a service, why they could not be read, or `None` when its
/// service names could not be read (it is not asked again per service).
type Lists = Option<Result<Vec<Instance>, Unread>>;

/// One service's row; `None` when no registry holds a live instance of it and none failed.
async fn row(
    registries: &[Arc<dyn Registry>],
    readable: &[bool],
    service: ServiceName,
    deadline: Instant,
) -> Option<Row> {
    let service = &service;
    let sets: Vec<(RegistryKind, Lists)> =
        join_all(registries.iter().zip(readable).map(|(r, ok)| async move {
            let got = if *ok {
                Some(read(deadline, r.list(service)).await)
            } else {
                None
            };
            (r.kind(), got)
        }))
        .await;
    let errors = PerRegistry(
        sets.iter()
            .filter_map(|(k, s)| match s {
                Some(Err(e)) => Some((*k, e.0.clone())),
                _ => None,
            })
            .collect(),
    );
    let read: Vec<RegistryKind> = sets
        .iter()
        .filter(|(_, s)| matches!(s, Some(Ok(_))))
        .map(|(k, _)| *k)
        .collect();
    let complete = read.len() == sets.len();
    let merged = merge(sets.into_iter().filter_map(|(k, s)| Some((k, s?.ok()?))));
    if merged.is_empty() && errors.0.is_empty() {
        return None;
    }
    let counts = registries
        .iter()
        .map(|r| {
            let k = r.kind();
            let n = read
                .contains(&k)
                .then(|| merged.values().filter(|s| s.sources.contains(&k)).count());
            (k, n)
        })
        .collect();
    // Where every registry was read, an id some registry lacks is "only in" those holding it.
    let mut only_in: PerRegistry<OnlyIn> = PerRegistry::default();
    if complete {
        for (id, Sourced { sources, .. }) in &merged {
            if sources.len() == read.len() {
                continue;
            }
            for k in sources {
                let i = match only_in.0.iter().position(|(o, _)| o == k) {
                    Some(i) => i,
                    None => {
                        only_in.0.push((*k, OnlyIn::default()));
                        only_in.0.len() - 1
                    }
                };
                let entry = &mut only_in.0[i].1;
                entry.count += 1;
                if entry.ids.len() < MAX_IDS {
                    entry.ids.push(id.to_string());
                }
            }
        }
        // Primary first, as everywhere else.
        only_in
            .0
            .sort_by_key(|(k, _)| read.iter().position(|r| r == k));
    }
    Some(Row {
        service: service.as_str().to_owned(),
        counts: PerRegistry(counts),
        merged: merged.len(),
        complete,
        disagree: !only_in.0.is_empty(),
        only_in,
        errors,
    })
}

pub(super) fn cert_status(label: &'static str, not_after: i64, now: i64) -> CertStatus {
    let days_left = (not_after - now).div_euclid(86_400);
    CertStatus {
        label,
        not_after,
        expires: rfc3339(not_after),
        days_left,
        warning: days_left < CERT_WARN_DAYS,
    }
}

pub(super) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub(super) fn rfc3339(unix: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn state_text(s: RegistryState) -> &'static str {
    match s {
        RegistryState::Up => "up",
        RegistryState::Down => "down",
        RegistryState::Connecting => "connecting",
    }
}

fn breaker_text(b: BreakerState) -> &'static str {
    match b {
        BreakerState::Closed => "closed",
        BreakerState::HalfOpen => "half-open",
        BreakerState::Open => "open",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::memory::{Memory, Mode};

    fn instance(service: &str, id: &str) -> Instance {
        Instance::for_test(service, id)
    }

    #[tokio::test]
    async fn the_table_counts_each_registry_and_names_the_ids_only_one_holds() {
        let etcd = Arc::new(Memory::new(RegistryKind::Etcd));
        let consul = Arc::new(Memory::new(RegistryKind::Consul));
        for i in ["a", "b"] {
            etcd.register(&instance("payments", i)).await.unwrap();
            consul.register(&instance("payments", i)).await.unwrap();
        }
        consul
            .register(&instance("payments", "stray"))
            .await
            .unwrap();
        etcd.register(&instance("web", "w1")).await.unwrap();
        consul.register(&instance("web", "w1")).await.unwrap();
        let regs: Vec<Arc<dyn Registry>> = vec![etcd.clone(), consul.clone()];

        let t = compute(&regs, 10).await;
        assert_eq!(t.rows.len(), 2);
        assert_eq!(t.disagreements, 1);
        let p = &t.rows[0];
        assert_eq!(p.service, "payments");
        assert_eq!(p.counts.get(RegistryKind::Etcd), Some(&Some(2)));
        assert_eq!(p.counts.get(RegistryKind::Consul), Some(&Some(3)));
        assert_eq!(p.merged, 3);
        assert!(p.disagree && p.complete);
        let only = p.only_in.get(RegistryKind::Consul).unwrap();
        assert_eq!((only.count, &only.ids[..]), (1, &["stray".to_owned()][..]));
        assert!(p.only_in.get(RegistryKind::Etcd).is_none());
        assert!(!t.rows[1].disagree);

        let t = compute(&regs, 1).await;
        assert!(t.truncated);
        assert_eq!((t.services_seen, t.rows.len()), (2, 1));

        consul.set_mode(Mode::Down);
        let t = compute(&regs, 10).await;
        assert!(t.unreadable.get(RegistryKind::Consul).is_some());
        assert_eq!(t.disagreements, 0, "no verdict without both registries");
        assert!(t.rows.iter().all(|r| !r.complete));
        assert_eq!(t.rows[0].counts.get(RegistryKind::Consul), Some(&None));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_registry_costs_the_table_its_budget_and_no_more() {
        let etcd = Arc::new(Memory::new(RegistryKind::Etcd));
        let consul = Arc::new(Memory::new(RegistryKind::Consul));
        etcd.register(&instance("payments", "a")).await.unwrap();
        consul.set_mode(Mode::Hang);
        let regs: Vec<Arc<dyn Registry>> = vec![etcd, consul];
        let start = Instant::now();
        let t = compute(&regs, 10).await;
        assert!(start.elapsed() <= TABLE_BUDGET);
        assert_eq!(
            t.unreadable.get(RegistryKind::Consul).map(String::as_str),
            Some("timed out after 1000 ms")
        );
        assert_eq!(t.rows[0].counts.get(RegistryKind::Etcd), Some(&Some(1)));
    }

    #[test]
    fn the_banner_names_what_is_wrong() {
        let reg = |name: RegistryKind, state, breaker| RegistryStatus {
            name,
            role: "primary",
            state,
            breaker,
            probe: Probe {
                ok: true,
                latency_ms: Some(1.0),
                error: None,
            },
            repairs_pending: 0,
            repair_oldest_seconds: 0.0,
        };
        let up = |n| reg(n, RegistryState::Up, BreakerState::Closed);
        assert_eq!(
            overall(false, &[up(RegistryKind::Etcd), up(RegistryKind::Consul)]).0,
            Overall::Ready
        );
        let (s, why) = overall(
            false,
            &[
                up(RegistryKind::Etcd),
                reg(
                    RegistryKind::Consul,
                    RegistryState::Down,
                    BreakerState::Open,
                ),
            ],
        );
        assert_eq!(s, Overall::Degraded);
        assert_eq!(
            why,
            "Consul down. Writes succeed through etcd; what consul misses is repaired once it \
             is back."
        );
        let down = |n| reg(n, RegistryState::Down, BreakerState::Open);
        assert_eq!(
            overall(
                false,
                &[down(RegistryKind::Etcd), down(RegistryKind::Consul)]
            )
            .0,
            Overall::Unavailable
        );
        assert_eq!(
            overall(true, &[up(RegistryKind::Etcd)]).0,
            Overall::Draining
        );
        assert_eq!(cert_status("server", 10 * 86_400, 0).days_left, 10);
        assert!(cert_status("server", 10 * 86_400, 0).warning);
        assert_eq!(cert_status("server", -1, 0).days_left, -1);
    }
}
