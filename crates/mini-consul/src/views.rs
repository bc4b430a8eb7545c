//! The JSON shapes of Consul's answers, with Consul's field order (Go encodes struct fields in
//! declaration order and map keys sorted) and its defaults (`Tags` `[]`, agent `Meta` `{}`).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::{Check, Config, PASSING, Service};
use crate::store::Inner;

#[derive(Serialize, Default, Clone)]
pub struct Empty {}

#[derive(Serialize, Clone)]
#[serde(rename_all = "PascalCase")]
pub struct Address {
    pub address: String,
    pub port: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Weights {
    pub passing: i64,
    pub warning: i64,
}

/// `api.AgentService`, as `/v1/agent/services` and `/v1/agent/service/:id` return it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentService {
    #[serde(rename = "ID")]
    pub id: String,
    pub service: String,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub port: i64,
    pub address: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub socket_path: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tagged_addresses: BTreeMap<String, Address>,
    pub weights: Weights,
    pub enable_tag_override: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub content_hash: String,
    pub datacenter: String,
}

fn tagged(s: &Service) -> BTreeMap<String, Address> {
    s.tagged_addresses
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                Address {
                    address: v.address.clone(),
                    port: v.port,
                },
            )
        })
        .collect()
}

pub fn agent_service(s: &Service, cfg: &Config) -> AgentService {
    AgentService {
        id: s.id.clone(),
        service: s.name.clone(),
        tags: s.tags.clone(),
        meta: s.meta.clone().unwrap_or_default(),
        port: s.port,
        address: s.address.clone(),
        socket_path: s.socket_path.clone(),
        tagged_addresses: tagged(s),
        weights: Weights {
            passing: s.weights.0,
            warning: s.weights.1,
        },
        enable_tag_override: s.enable_tag_override,
        content_hash: String::new(),
        datacenter: cfg.datacenter.clone(),
    }
}

/// `ContentHash`: a 64-bit hash of the service as returned, in hex (Consul uses hashstructure;
/// the value differs, the contract — changes whenever the service does — is the same).
pub fn content_hash(svc: &AgentService) -> String {
    let bytes = serde_json::to_vec(svc).expect("serializing to memory cannot fail");
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:x}")
}

/// `structs.HealthCheck`.
#[derive(Serialize, Clone)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheck {
    pub node: String,
    #[serde(rename = "CheckID")]
    pub check_id: String,
    pub name: String,
    pub status: String,
    pub notes: String,
    pub output: String,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    pub service_name: String,
    pub service_tags: Vec<String>,
    #[serde(rename = "Type")]
    pub kind: String,
    pub interval: String,
    pub timeout: String,
    pub exposed_port: i64,
    pub definition: Empty,
    pub create_index: u64,
    pub modify_index: u64,
}

/// A check as the agent (`catalog == false`: no raft indexes) or the catalog reports it.
pub fn health_check(c: &Check, inner: &Inner, cfg: &Config, catalog: bool) -> HealthCheck {
    let svc = inner.services.get(&c.service_id);
    let dur = |ns: i64| {
        if ns == 0 {
            String::new()
        } else {
            crate::duration::format(ns)
        }
    };
    HealthCheck {
        node: cfg.node_name.clone(),
        check_id: c.spec.id.clone(),
        name: c.spec.name.clone(),
        status: c.status.clone(),
        notes: c.spec.notes.clone(),
        output: c.output.clone(),
        service_id: c.service_id.clone(),
        service_name: svc.map(|s| s.name.clone()).unwrap_or_default(),
        service_tags: svc.map(|s| s.tags.clone()).unwrap_or_default(),
        kind: c.spec.type_name().to_owned(),
        interval: dur(c.spec.interval),
        timeout: dur(c.spec.timeout),
        exposed_port: 0,
        definition: Empty {},
        create_index: if catalog { c.create_index } else { 0 },
        modify_index: if catalog { c.modify_index } else { 0 },
    }
}

/// The node's own `serfHealth` check.
pub fn serf_health(inner: &Inner, cfg: &Config) -> HealthCheck {
    HealthCheck {
        node: cfg.node_name.clone(),
        check_id: "serfHealth".into(),
        name: "Serf Health Status".into(),
        status: PASSING.into(),
        notes: String::new(),
        output: "Agent alive and reachable".into(),
        service_id: String::new(),
        service_name: String::new(),
        service_tags: Vec::new(),
        kind: String::new(),
        interval: String::new(),
        timeout: String::new(),
        exposed_port: 0,
        definition: Empty {},
        create_index: inner.node_index,
        modify_index: inner.node_index,
    }
}

/// `structs.Node`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Node {
    #[serde(rename = "ID")]
    pub id: String,
    pub node: String,
    pub address: String,
    pub datacenter: String,
    pub tagged_addresses: BTreeMap<String, String>,
    pub meta: BTreeMap<String, String>,
    pub create_index: u64,
    pub modify_index: u64,
}

pub fn node(inner: &Inner, cfg: &Config) -> Node {
    let lan = |k: &str| (k.to_owned(), "127.0.0.1".to_owned());
    Node {
        id: cfg.node_id.clone(),
        node: cfg.node_name.clone(),
        address: "127.0.0.1".into(),
        datacenter: cfg.datacenter.clone(),
        tagged_addresses: [lan("lan"), lan("lan_ipv4"), lan("wan"), lan("wan_ipv4")].into(),
        meta: [("consul-network-segment".to_owned(), String::new())].into(),
        create_index: inner.node_index,
        modify_index: inner.node_index,
    }
}

#[derive(Serialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Proxy {
    pub mode: String,
    pub mesh_gateway: Empty,
    pub expose: Empty,
}

/// `structs.NodeService`, the catalog's copy of a service.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeService {
    #[serde(rename = "ID")]
    pub id: String,
    pub service: String,
    pub tags: Vec<String>,
    pub address: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tagged_addresses: BTreeMap<String, Address>,
    pub meta: Option<BTreeMap<String, String>>,
    pub port: i64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub socket_path: String,
    pub weights: Weights,
    pub enable_tag_override: bool,
    pub proxy: Proxy,
    pub connect: Empty,
    pub create_index: u64,
    pub modify_index: u64,
}

fn node_service(s: &Service) -> NodeService {
    NodeService {
        id: s.id.clone(),
        service: s.name.clone(),
        tags: s.tags.clone(),
        address: s.address.clone(),
        tagged_addresses: tagged(s),
        meta: s.meta.clone(),
        port: s.port,
        socket_path: s.socket_path.clone(),
        weights: Weights {
            passing: s.weights.0,
            warning: s.weights.1,
        },
        enable_tag_override: s.enable_tag_override,
        proxy: Proxy::default(),
        connect: Empty {},
        create_index: s.create_index,
        modify_index: s.modify_index,
    }
}

/// The `consul` service the server registers for itself.
fn consul_service(inner: &Inner) -> NodeService {
    let meta = [
        ("non_voter", "false"),
        ("raft_version", "3"),
        ("read_replica", "false"),
        ("serf_protocol_current", "2"),
        ("serf_protocol_max", "5"),
        ("serf_protocol_min", "1"),
    ];
    NodeService {
        id: "consul".into(),
        service: "consul".into(),
        tags: Vec::new(),
        address: String::new(),
        tagged_addresses: BTreeMap::new(),
        meta: Some(
            meta.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        port: 8300,
        socket_path: String::new(),
        weights: Weights {
            passing: 1,
            warning: 1,
        },
        enable_tag_override: false,
        proxy: Proxy::default(),
        connect: Empty {},
        create_index: inner.node_index,
        modify_index: inner.node_index,
    }
}

/// `structs.CheckServiceNode`, one entry of `/v1/health/service/:service`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthEntry {
    pub node: Node,
    pub service: NodeService,
    pub checks: Vec<HealthCheck>,
}

/// The instances of a service (name matched case-insensitively), node checks first.
pub fn health_entries(inner: &Inner, cfg: &Config, name: &str) -> Vec<HealthEntry> {
    let mut out = Vec::new();
    if name.eq_ignore_ascii_case("consul") {
        out.push(HealthEntry {
            node: node(inner, cfg),
            service: consul_service(inner),
            checks: vec![serf_health(inner, cfg)],
        });
    }
    for s in inner
        .services
        .values()
        .filter(|s| s.name.eq_ignore_ascii_case(name))
    {
        let mut checks = vec![serf_health(inner, cfg)];
        checks.extend(
            inner
                .checks_of(&s.id)
                .map(|c| health_check(c, inner, cfg, true)),
        );
        out.push(HealthEntry {
            node: node(inner, cfg),
            service: node_service(s),
            checks,
        });
    }
    out
}

/// The checks of the instances of a service (name matched case-insensitively), as the catalog
/// reports them; the node's checks are not the service's.
pub fn service_checks(inner: &Inner, cfg: &Config, name: &str) -> Vec<HealthCheck> {
    inner
        .services
        .values()
        .filter(|s| s.name.eq_ignore_ascii_case(name))
        .flat_map(|s| inner.checks_of(&s.id))
        .map(|c| health_check(c, inner, cfg, true))
        .collect()
}

/// What `?filter` on `/v1/catalog/services` sees: one `structs.ServiceNode` per instance.
pub fn service_nodes(inner: &Inner, cfg: &Config) -> Vec<(String, Vec<String>, serde_json::Value)> {
    let mut all = vec![consul_service(inner)];
    all.extend(inner.services.values().map(node_service));
    all.into_iter()
        .map(|s| {
            let value = serde_json::json!({
                "ID": cfg.node_id, "Node": cfg.node_name, "Address": "127.0.0.1",
                "Datacenter": cfg.datacenter, "ServiceID": s.id, "ServiceName": s.service,
                "ServiceTags": s.tags, "ServiceAddress": s.address, "ServiceMeta": s.meta,
                "ServicePort": s.port, "ServiceEnableTagOverride": s.enable_tag_override,
            });
            (s.service, s.tags, value)
        })
        .collect()
}
