//! The data model: services, checks and their definitions, as the agent holds them.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio::time::Instant;

pub const PASSING: &str = "passing";
pub const WARNING: &str = "warning";
pub const CRITICAL: &str = "critical";

/// A service's maintenance check is this prefix and the service ID (Consul's
/// `structs.ServiceMaintPrefix`).
pub const SERVICE_MAINT_PREFIX: &str = "_service_maintenance:";

/// The maintenance check's notes when no reason is given (Consul's `defaultServiceMaintReason`).
pub const DEFAULT_SERVICE_MAINT_REASON: &str = "Maintenance mode is enabled for this service, but no reason was provided. This is a default message.";

/// Settings fixed at start-up.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    pub node_id: String,
    pub datacenter: String,
    /// The management token; `None` turns ACLs off.
    pub acl_token: Option<String>,
}

/// A tagged address (`{"Address": ..., "Port": ...}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedAddress {
    pub address: String,
    pub port: i64,
}

/// A service registered with the agent (and synced to the catalog).
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub address: String,
    pub tagged_addresses: BTreeMap<String, TaggedAddress>,
    /// `None` when the registration had no `Meta` (the catalog then answers `null`).
    pub meta: Option<BTreeMap<String, String>>,
    pub port: i64,
    pub socket_path: String,
    pub weights: (i64, i64),
    pub enable_tag_override: bool,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Service {
    pub fn same_definition(&self, other: &Service) -> bool {
        let strip = |s: &Service| Service {
            create_index: 0,
            modify_index: 0,
            ..s.clone()
        };
        strip(self) == strip(other)
    }
}

/// What a check does.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// Updated by the client; expires to critical after `ttl`.
    Ttl,
    /// An HTTP request every interval.
    Http {
        url: String,
        method: String,
        header: BTreeMap<String, Vec<String>>,
        body: String,
    },
    /// A TCP connect every interval.
    Tcp { address: String },
    /// The aggregate status of another service's checks (`AliasService`, `AliasNode` as given),
    /// kept up to date by the state whenever that service or its checks change.
    Alias { service: String, node: String },
    /// The check the maintenance endpoint adds (`_service_maintenance:<id>`): nothing runs it,
    /// it is critical until the endpoint removes it.
    Maintenance,
}

impl Probe {
    /// Whether the check runs a probe task (HTTP and TCP checks).
    pub fn is_probe(&self) -> bool {
        matches!(self, Probe::Http { .. } | Probe::Tcp { .. })
    }
}

/// A check as registered.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckSpec {
    pub id: String,
    pub name: String,
    pub notes: String,
    /// The initial status, when given.
    pub status: Option<String>,
    pub probe: Probe,
    /// Nanoseconds, Go style; zero when unset.
    pub ttl: i64,
    pub interval: i64,
    pub timeout: i64,
    /// Already raised to the 1-minute minimum.
    pub deregister_after: Option<Duration>,
    pub output_max_size: usize,
}

impl CheckSpec {
    /// Consul's check type name.
    pub fn type_name(&self) -> &'static str {
        match self.probe {
            Probe::Ttl => "ttl",
            Probe::Http { .. } => "http",
            Probe::Tcp { .. } => "tcp",
            Probe::Alias { .. } => "alias",
            Probe::Maintenance => "maintenance",
        }
    }
}

/// A check's live state.
#[derive(Debug)]
pub struct Check {
    pub spec: CheckSpec,
    pub service_id: String,
    pub status: String,
    pub output: String,
    /// The last output a client set (for `TTL expired (last output before timeout follows)`).
    pub last_output: String,
    pub ttl_deadline: Option<Instant>,
    pub critical_since: Option<Instant>,
    pub create_index: u64,
    pub modify_index: u64,
    /// Distinguishes this incarnation from a replaced one (stale probe results are dropped).
    pub generation: u64,
    pub runner: Option<AbortHandle>,
}

impl Check {
    /// Whether the catalog would see a difference between the two.
    pub fn same_catalog_view(&self, other: &Check) -> bool {
        let key = |c: &Check| {
            (
                c.spec.name.clone(),
                c.spec.notes.clone(),
                c.status.clone(),
                c.output.clone(),
                c.service_id.clone(),
                c.spec.type_name(),
                c.spec.interval,
                c.spec.timeout,
            )
        };
        key(self) == key(other)
    }

    /// Sets status and output as an update from a client or a probe; true when it changed.
    pub fn set(&mut self, status: &str, output: String, now: Instant) -> bool {
        if status == CRITICAL {
            self.critical_since.get_or_insert(now);
        } else {
            self.critical_since = None;
        }
        let changed = self.status != status || self.output != output;
        self.status = status.to_owned();
        self.output = output;
        changed
    }
}

/// Cuts output like Consul: `<first n bytes> ... (captured n of total bytes)`.
pub fn truncate_output(output: &str, max: usize) -> String {
    if output.len() <= max {
        return output.to_owned();
    }
    let head = String::from_utf8_lossy(&output.as_bytes()[..max]);
    format!("{head} ... (captured {max} of {} bytes)", output.len())
}
