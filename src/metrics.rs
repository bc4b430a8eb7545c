//! Prometheus metrics, served as text on the admin listener's `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::registry::{RegistryKind, RegistryState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub method: String,
    pub status: u16,
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

/// Every metric twinreg exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub registry_ops: Family<OutcomeLabels, Counter>,
    pub registry_latency: Family<OpLabels, Histogram>,
    pub registry_up: Family<RegistryLabels, Gauge>,
    pub repairs_pending: Family<RegistryLabels, Gauge>,
    pub breaker_state: Family<RegistryLabels, Gauge>,
    pub sweeper_leader: Gauge,
    pub disagreements: Gauge,
    pub repairs_done: Family<RegistryLabels, Counter>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("twinreg");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "Requests answered on the public listener, by route, method and status",
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
        })
    }

    pub fn observe_request(&self, route: &'static str, method: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method: method.to_owned(),
                status,
            })
            .inc();
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
