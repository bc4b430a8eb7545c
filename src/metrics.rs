//! Prometheus metrics, served as text on the admin listener's `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{
    EncodeLabel, EncodeLabelSet, EncodeMetric, LabelSetEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::{Atomic, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::{MetricType, TypedMetric};
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

/// The content type of [`Metrics::encode`]'s text: the OpenMetrics text format (it ends with
/// `# EOF`, and counters are typed without their `_total`), which Prometheus negotiates.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A request answered on the public listener. `status` is the HTTP status of the answer; a
/// gRPC call also has its gRPC status code, by name, in `grpc_code` (REST answers have none,
/// and the label is left out rather than empty).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct RequestLabels {
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
    pub grpc_code: Option<&'static str>,
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("route", self.route).encode(encoder.encode_label())?;
        ("method", self.method).encode(encoder.encode_label())?;
        ("status", self.status).encode(encoder.encode_label())?;
        if let Some(code) = self.grpc_code {
            ("grpc_code", code).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
    pub commit: &'static str,
}

/// Upper bounds (seconds) of the request latency buckets: 0.5 ms to 10 s, with the latency
/// objective's 0.5 s among them (deploy/prometheus/twinreg-rules.yml, `TwinregSlowRequests`).
pub const REQUEST_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram spread over [`SLOTS`] cache lines like a [`Spread`] counter: every
/// heartbeat is observed, and one shared set of buckets would be written by both cores at
/// the rate of the heartbeats. Clones share the buckets (a [`Family`] hands out clones).
#[derive(Clone, Debug, Default)]
pub struct SpreadHistogram(Arc<[HistogramSlot; SLOTS]>);

/// One thread's buckets (the last one `+Inf`) and sum, in nanoseconds.
#[derive(Debug, Default)]
#[repr(align(128))]
struct HistogramSlot {
    counts: [AtomicU64; REQUEST_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl SpreadHistogram {
    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let bucket = REQUEST_BUCKETS
            .iter()
            .position(|upper| secs <= *upper)
            .unwrap_or(REQUEST_BUCKETS.len());
        let slot = &self.0[slot()];
        slot.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        slot.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl TypedMetric for SpreadHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for SpreadHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut counts = [0u64; REQUEST_BUCKETS.len() + 1];
        let mut sum_nanos = 0u64;
        for slot in self.0.iter() {
            for (total, c) in counts.iter_mut().zip(&slot.counts) {
                *total += c.load(Ordering::Relaxed);
            }
            sum_nanos = sum_nanos.wrapping_add(slot.sum_nanos.load(Ordering::Relaxed));
        }
        let buckets: Vec<(f64, u64)> = REQUEST_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(counts)
            .collect();
        encoder.encode_histogram::<NoLabelSet>(
            sum_nanos as f64 / 1e9,
            counts.iter().sum(),
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The label set of a method, fixed: an unusual method is counted as OTHER, not as a new
/// series.
fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::PUT => "PUT",
        http::Method::POST => "POST",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::PATCH => "PATCH",
        http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// A gRPC status code's canonical name, as `grpc_code`.
pub fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// What [`Metrics::observe_request`] records of one answer.
pub struct Answered {
    pub route: &'static str,
    pub status: u16,
    /// The gRPC status code's name, for gRPC calls.
    pub grpc_code: Option<&'static str>,
    /// From the request's arrival to its answer, when that is the request's latency (not for
    /// long polls and Watch streams, which wait by design).
    pub took: Option<Duration>,
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
    request_latency: Family<RouteLabels, SpreadHistogram>,
    /// The owner's heartbeat's series, looked up once.
    heartbeat_latency: SpreadHistogram,
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
            "Requests answered on the public listener, by route, method and HTTP status; gRPC calls (routes grpc.<Method>) also by grpc_code, the gRPC status code's name",
            requests.clone(),
        );
        let request_latency = Family::<RouteLabels, SpreadHistogram>::default();
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its answer on the public listener, by route and method (long polls and Watch streams are not timed)",
            request_latency.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        registry.register(
            "build_info",
            "1, with the version and commit of the twinreg binary serving",
            build.clone(),
        );
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: env!("TWINREG_COMMIT"),
            })
            .set(1);
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
            grpc_code: None,
        });
        let heartbeat_latency = request_latency.get_or_create_owned(&RouteLabels {
            route: "heartbeat",
            method: "PUT",
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
            request_latency,
            heartbeat_latency,
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

    /// Counts an answer on the public listener and, where it has one, times it.
    pub fn observe_request(&self, method: &http::Method, a: Answered) {
        if a.status == 200 && a.route == "heartbeat" && method == http::Method::PUT {
            self.heartbeats_ok.inc();
            if let Some(took) = a.took {
                self.heartbeat_latency.observe(took);
            }
            return;
        }
        let method = method_label(method);
        self.requests
            .get_or_create(&RequestLabels {
                route: a.route,
                method,
                status: a.status,
                grpc_code: a.grpc_code,
            })
            .inc();
        if let Some(took) = a.took {
            self.request_latency
                .get_or_create(&RouteLabels {
                    route: a.route,
                    method,
                })
                .observe(took);
        }
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
                        m.observe_request(
                            &http::Method::PUT,
                            Answered {
                                route: "heartbeat",
                                status: 200,
                                grpc_code: None,
                                took: Some(Duration::from_micros(700)),
                            },
                        );
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
        // Every heartbeat timed, in the 1 ms bucket, from every thread's slot.
        assert_eq!(
            line("twinreg_request_duration_seconds_count{"),
            "twinreg_request_duration_seconds_count{route=\"heartbeat\",method=\"PUT\"} 6000"
        );
        assert_eq!(
            line(
                "twinreg_request_duration_seconds_bucket{le=\"0.0005\",route=\"heartbeat\",method=\"PUT\"}"
            ),
            "twinreg_request_duration_seconds_bucket{le=\"0.0005\",route=\"heartbeat\",method=\"PUT\"} 0"
        );
        assert_eq!(
            line(
                "twinreg_request_duration_seconds_bucket{le=\"0.001\",route=\"heartbeat\",method=\"PUT\"}"
            ),
            "twinreg_request_duration_seconds_bucket{le=\"0.001\",route=\"heartbeat\",method=\"PUT\"} 6000"
        );
        let sum: f64 = line("twinreg_request_duration_seconds_sum{")
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 4.2).abs() < 1e-6, "6000 x 0.7 ms: {sum}");
    }

    #[test]
    fn grpc_answers_carry_their_code_by_name_and_rest_answers_none() {
        let m = Metrics::new();
        let answer = |route, status, grpc_code, took| Answered {
            route,
            status,
            grpc_code,
            took,
        };
        m.observe_request(
            &http::Method::POST,
            answer(
                "grpc.Register",
                200,
                Some(grpc_code_name(tonic::Code::Unavailable)),
                Some(Duration::from_secs(2)),
            ),
        );
        m.observe_request(
            &http::Method::POST,
            answer("grpc.Watch", 200, Some("OK"), None),
        );
        m.observe_request(
            &http::Method::DELETE,
            answer("instance", 503, None, Some(Duration::from_millis(30))),
        );
        let text = m.encode();
        for want in [
            "twinreg_http_requests_total{route=\"grpc.Register\",method=\"POST\",status=\"200\",grpc_code=\"UNAVAILABLE\"} 1",
            "twinreg_http_requests_total{route=\"grpc.Watch\",method=\"POST\",status=\"200\",grpc_code=\"OK\"} 1",
            "twinreg_http_requests_total{route=\"instance\",method=\"DELETE\",status=\"503\"} 1",
            "twinreg_request_duration_seconds_bucket{le=\"1.0\",route=\"grpc.Register\",method=\"POST\"} 0",
            "twinreg_request_duration_seconds_bucket{le=\"2.5\",route=\"grpc.Register\",method=\"POST\"} 1",
            "twinreg_request_duration_seconds_bucket{le=\"+Inf\",route=\"instance\",method=\"DELETE\"} 1",
            "twinreg_build_info{version=\"",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
        // A stream is counted, not timed.
        assert!(
            !text.contains("twinreg_request_duration_seconds_count{route=\"grpc.Watch\""),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "OpenMetrics text: {text}");
    }
}
