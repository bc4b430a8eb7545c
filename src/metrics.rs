//! Prometheus metrics, served as text on the admin listener's `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{Atomic, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::registry::{RegistryKind, RegistryState};

/// A counter's value spread over [`SLOTS`] cache lines, each thread adding to its own and a
/// scrape summing them: counters every heartbeat adds to would otherwise be one cache line the
/// cores hand back and forth at the rate of the heartbeats.
#[derive(Debug, Default)]
pub struct Spread([Slot; SLOTS]);

/// One slot of a [`Spread`], alone in its cache line (two lines: adjacent lines are fetched
/// together).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Slot(AtomicU64);

/// Slots per counter: threads beyond that share one (still correct, just shared).
const SLOTS: usize = 4;

/// The calling thread's slot, handed out in turn as threads first count.
fn slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SLOTS;
    }
    MINE.with(|s| *s)
}

impl Atomic<u64> for Spread {
    fn inc(&self) -> u64 {
        self.inc_by(1)
    }

    fn inc_by(&self, v: u64) -> u64 {
        self.0[slot()].0.fetch_add(v, Ordering::Relaxed)
    }

    fn get(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

/// A counter on the heartbeat's path (see [`Spread`]).
pub type HotCounter = Counter<u64, Spread>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub registry: &'static str,
    /// `full` or `resumed` (TLS session resumption).
    pub kind: &'static str,
}

/// TLS handshakes twinreg made to reach a registry. In steady state it stays flat: connections
/// are opened and warmed at start-up and kept open by keepalives.
#[derive(Clone, Debug, Default)]
pub struct Handshakes(Family<HandshakeLabels, Counter>);

impl Handshakes {
    pub fn record(&self, registry: RegistryKind, kind: Option<rustls::HandshakeKind>) {
        let kind = match kind {
            Some(rustls::HandshakeKind::Resumed) => "resumed",
            _ => "full",
        };
        self.0
            .get_or_create(&HandshakeLabels {
                registry: registry.as_str(),
                kind,
            })
            .inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub registry: &'static str,
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub registry: &'static str,
    pub op: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryLabels {
    pub registry: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub registry: &'static str,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabels {
    pub cert: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub outcome: &'static str,
}

/// Every metric twinreg exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, HotCounter>,
    pub registry_ops: Family<OutcomeLabels, Counter>,
    pub registry_latency: Family<OpLabels, Histogram>,
    pub registry_up: Family<RegistryLabels, Gauge>,
    pub repairs_pending: Family<RegistryLabels, Gauge>,
    pub breaker_state: Family<RegistryLabels, Gauge>,
    pub sweeper_leader: Gauge,
    pub disagreements: Gauge,
    pub repairs_done: Family<RegistryLabels, Counter>,
    pub handshakes: Handshakes,
    /// `twinreg_heartbeats_coalesced_total`, per registry, looked up once.
    coalesced_by_registry: [HotCounter; 2],
    /// `twinreg_http_requests_total` of heartbeats answered 200 (most of the traffic), looked
    /// up once.
    heartbeats_ok: HotCounter,
    /// Watch streams and long polls being served.
    pub watchers: Gauge,
    watch_upstreams: Family<RegistryLabels, Gauge>,
    certificate_expiry: Family<CertLabels, Gauge>,
    certificate_reloads: Family<ReloadLabels, Counter>,
    instances: Family<RegistryLabels, Gauge>,
    /// Connections open on the public listener.
    pub connections_open: Gauge,
    connections_refused: Family<ReasonLabels, Counter>,
    /// Requests answered 429 because their identity was over its rate.
    pub rate_limited: Counter,
    repair_oldest: Family<RegistryLabels, Gauge>,
    pool_connections: Family<PoolLabels, Gauge>,
    owned_instances: Gauge,
    leases_held: Family<RegistryLabels, Gauge>,
    expired: Counter,
    takeovers: Counter,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("twinreg");
        let requests = Family::<RequestLabels, HotCounter>::default();
        registry.register(
            "http_requests",
            "Requests answered on the public listener, by route, method and status (HTTP status; for gRPC routes, named grpc.<Method>, the gRPC status code)",
            requests.clone(),
        );
        let registry_ops = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "registry_operations",
            "Registry operations by registry, operation and outcome (ok, error, timeout, rejected)",
            registry_ops.clone(),
        );
        let registry_latency = Family::<OpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "registry_operation_duration_seconds",
            "Latency of registry operations, including timeouts",
            registry_latency.clone(),
        );
        let registry_up = Family::<RegistryLabels, Gauge>::default();
        registry.register(
            "registry_up",
            "1 when the registry answered its last call, 0 when it failed, -1 before its first answer",
            registry_up.clone(),
        );
        let repairs_pending = Family::<RegistryLabels, Gauge>::default();
        registry.register(
            "repairs_pending",
            "Writes a registry missed that are being re-driven in the background",
            repairs_pending.clone(),
        );
        let breaker_state = Family::<RegistryLabels, Gauge>::default();
        registry.register(
            "breaker_state",
            "Circuit breaker per registry: 0 closed, 1 half-open (probing), 2 open (calls skip it)",
            breaker_state.clone(),
        );
        let sweeper_leader = Gauge::default();
        registry.register(
            "sweeper_leader",
            "1 while this replica holds the anti-entropy sweeper election",
            sweeper_leader.clone(),
        );
        let disagreements = Gauge::default();
        registry.register(
            "registry_disagreements",
            "Instances the last anti-entropy sweep found the registries disagreeing on (and fixed)",
            disagreements.clone(),
        );
        let repairs_done = Family::<RegistryLabels, Counter>::default();
        registry.register(
            "repairs_completed",
            "Missed writes that a registry finally accepted",
            repairs_done.clone(),
        );
        let handshakes = Handshakes::default();
        registry.register(
            "registry_tls_handshakes",
            "TLS handshakes made to reach a registry, by kind (full or resumed); flat in steady state",
            handshakes.0.clone(),
        );
        let heartbeats_coalesced = Family::<RegistryLabels, HotCounter>::default();
        registry.register(
            "heartbeats_coalesced",
            "Heartbeats answered from memory, without a call to the registry (every heartbeat to the replica that owns the instance)",
            heartbeats_coalesced.clone(),
        );
        // Counted on the hot path: the series are looked up once, here.
        let heartbeats_ok = requests.get_or_create_owned(&RequestLabels {
            route: "heartbeat",
            method: "PUT",
            status: 200,
        });
        let coalesced_by_registry = [RegistryKind::Etcd, RegistryKind::Consul].map(|r| {
            heartbeats_coalesced.get_or_create_owned(&RegistryLabels {
                registry: r.as_str(),
            })
        });
        let watchers = Gauge::default();
        registry.register(
            "watchers",
            "Watch streams and REST long polls being served by this replica",
            watchers.clone(),
        );
        let watch_upstreams = Family::<RegistryLabels, Gauge>::default();
        registry.register(
            "watch_upstreams",
            "Upstream watches open to each registry: one per watched service, however many watch it",
            watch_upstreams.clone(),
        );
        let certificate_expiry = Family::<CertLabels, Gauge>::default();
        registry.register(
            "certificate_expiry_seconds",
            "notAfter (Unix seconds) of the earliest certificate in each file in use: server, client_ca, etcd_client, etcd_ca, consul_client, consul_ca",
            certificate_expiry.clone(),
        );
        let certificate_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "certificate_reloads",
            "Certificate reloads (SIGHUP or a changed file) by outcome: ok, or rejected (the old certificates stay)",
            certificate_reloads.clone(),
        );
        let instances = Family::<RegistryLabels, Gauge>::default();
        registry.register(
            "instances",
            "Live instances each registry held at the last anti-entropy sweep (exported by the replica that sweeps)",
            instances.clone(),
        );
        let repair_oldest = Family::<RegistryLabels, Gauge>::default();
        registry.register(
            "repair_oldest_seconds",
            "Age of the oldest write still being re-driven to each registry (0 when none)",
            repair_oldest.clone(),
        );
        let pool_connections = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "pool_connections",
            "Registry connections by state: open (in the pool), idle (open and not lent out), waiting (callers queued for one), max",
            pool_connections.clone(),
        );
        let owned_instances = Gauge::default();
        registry.register(
            "owned_instances",
            "Instances this replica owns: it answers their heartbeats from memory and expires them when they stop",
            owned_instances.clone(),
        );
        let leases_held = Family::<RegistryLabels, Gauge>::default();
        registry.register(
            "leases_held",
            "Shared leases this replica holds in the registry (etcd: one per TTL class in use), whatever the number of instances",
            leases_held.clone(),
        );
        let expired = Counter::default();
        registry.register(
            "instances_expired",
            "Instances this replica removed from the registries because their heartbeats stopped",
            expired.clone(),
        );
        let takeovers = Counter::default();
        registry.register(
            "instances_taken_over",
            "Instances this replica took over from another one (a heartbeat that moved here, or a replica that went away)",
            takeovers.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Connections open on the public listener",
            connections_open.clone(),
        );
        let connections_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed before their TLS handshake by a limit: max_connections or max_connections_per_ip",
            connections_refused.clone(),
        );
        let rate_limited = Counter::default();
        registry.register(
            "rate_limited",
            "Requests answered 429 (gRPC RESOURCE_EXHAUSTED) because their identity was over limits.requests_per_second",
            rate_limited.clone(),
        );
        for reason in ["max_connections", "max_connections_per_ip"] {
            drop(connections_refused.get_or_create(&ReasonLabels { reason }));
        }
        // Series that start at zero rather than appear on their first event, so `rate()` and
        // `increase()` see the whole story and dashboards show 0, not "no data".
        for outcome in ["ok", "rejected"] {
            drop(certificate_reloads.get_or_create(&ReloadLabels { outcome }));
        }
        for r in [RegistryKind::Etcd, RegistryKind::Consul] {
            let registry = r.as_str();
            drop(repairs_pending.get_or_create(&RegistryLabels { registry }));
            drop(repairs_done.get_or_create(&RegistryLabels { registry }));
            drop(repair_oldest.get_or_create(&RegistryLabels { registry }));
            drop(watch_upstreams.get_or_create(&RegistryLabels { registry }));
            for kind in ["full", "resumed"] {
                drop(
                    handshakes
                        .0
                        .get_or_create(&HandshakeLabels { registry, kind }),
                );
            }
        }
        Arc::new(Self {
            registry,
            requests,
            registry_ops,
            registry_latency,
            registry_up,
            repairs_pending,
            breaker_state,
            sweeper_leader,
            disagreements,
            repairs_done,
            handshakes,
            coalesced_by_registry,
            heartbeats_ok,
            watchers,
            watch_upstreams,
            certificate_expiry,
            certificate_reloads,
            instances,
            connections_open,
            connections_refused,
            rate_limited,
            repair_oldest,
            pool_connections,
            owned_instances,
            leases_held,
            expired,
            takeovers,
        })
    }

    pub fn observe_request(&self, route: &'static str, method: &http::Method, status: u16) {
        if status == 200 && route == "heartbeat" && method == http::Method::PUT {
            self.heartbeats_ok.inc();
            return;
        }
        // A fixed label set: an unusual method is counted as OTHER, not as a new series.
        let method = match *method {
            http::Method::GET => "GET",
            http::Method::PUT => "PUT",
            http::Method::POST => "POST",
            http::Method::DELETE => "DELETE",
            http::Method::HEAD => "HEAD",
            http::Method::PATCH => "PATCH",
            http::Method::OPTIONS => "OPTIONS",
            _ => "OTHER",
        };
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method,
                status,
            })
            .inc();
    }

    pub fn set_owned(&self, n: usize) {
        self.owned_instances.set(n as i64);
    }

    pub fn set_leases(&self, registry: RegistryKind, n: usize) {
        self.leases_held
            .get_or_create(&RegistryLabels {
                registry: registry.as_str(),
            })
            .set(n as i64);
    }

    pub fn expired(&self, n: usize) {
        self.expired.inc_by(n as u64);
    }

    pub fn took_over(&self, n: usize) {
        self.takeovers.inc_by(n as u64);
    }

    pub fn coalesced(&self, registry: RegistryKind) {
        let i = match registry {
            RegistryKind::Etcd => 0,
            RegistryKind::Consul => 1,
        };
        self.coalesced_by_registry[i].inc();
    }

    pub fn observe_op(
        &self,
        registry: RegistryKind,
        op: &'static str,
        outcome: &'static str,
        took: Duration,
    ) {
        let registry = registry.as_str();
        self.registry_ops
            .get_or_create(&OutcomeLabels {
                registry,
                op,
                outcome,
            })
            .inc();
        self.registry_latency
            .get_or_create(&OpLabels { registry, op })
            .observe(took.as_secs_f64());
    }

    pub fn set_state(&self, registry: RegistryKind, state: RegistryState) {
        let v = match state {
            RegistryState::Connecting => -1,
            RegistryState::Up => 1,
            RegistryState::Down => 0,
        };
        self.registry_up
            .get_or_create(&RegistryLabels {
                registry: registry.as_str(),
            })
            .set(v);
    }

    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn set_instances(&self, registry: RegistryKind, n: usize) {
        self.instances
            .get_or_create(&RegistryLabels {
                registry: registry.as_str(),
            })
            .set(n as i64);
    }

    pub fn set_repair_oldest(&self, registry: RegistryKind, age: Duration) {
        self.repair_oldest
            .get_or_create(&RegistryLabels {
                registry: registry.as_str(),
            })
            .set(age.as_secs() as i64);
    }

    pub fn set_pool(&self, registry: RegistryKind, state: &'static str, n: usize) {
        self.pool_connections
            .get_or_create(&PoolLabels {
                registry: registry.as_str(),
                state,
            })
            .set(n as i64);
    }

    pub fn set_certificate_expiry(&self, cert: &'static str, not_after: i64) {
        self.certificate_expiry
            .get_or_create(&CertLabels { cert })
            .set(not_after);
    }

    pub fn certificate_reload(&self, outcome: &'static str) {
        self.certificate_reloads
            .get_or_create(&ReloadLabels { outcome })
            .inc();
    }

    /// The gauge of upstream watches open to `registry`.
    pub fn watch_upstreams(&self, registry: RegistryKind) -> Gauge {
        self.watch_upstreams.get_or_create_owned(&RegistryLabels {
            registry: registry.as_str(),
        })
    }

    pub fn set_breaker(&self, registry: RegistryKind, state: crate::breaker::BreakerState) {
        self.breaker_state
            .get_or_create(&RegistryLabels {
                registry: registry.as_str(),
            })
            .set(state.metric());
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spread_counter_sums_what_every_thread_added() {
        let m = Metrics::new();
        std::thread::scope(|s| {
            for _ in 0..6 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        m.observe_request("heartbeat", &http::Method::PUT, 200);
                        m.coalesced(RegistryKind::Consul);
                    }
                });
            }
        });
        let text = m.encode();
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("{prefix} in {text}"))
                .to_owned()
        };
        assert!(
            line("twinreg_http_requests_total{").ends_with(" 6000"),
            "{text}"
        );
        assert_eq!(
            line("twinreg_heartbeats_coalesced_total{registry=\"consul\"}"),
            "twinreg_heartbeats_coalesced_total{registry=\"consul\"} 6000"
        );
        assert!(
            text.contains("# TYPE twinreg_http_requests counter"),
            "{text}"
        );
    }
}
